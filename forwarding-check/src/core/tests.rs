//! Virtual-time tests of the core.
