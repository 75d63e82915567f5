//! Unit tests of the core in virtual time.
