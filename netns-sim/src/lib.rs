//! netns-sim: placeholder until the lab lands.
