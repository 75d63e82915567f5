//! The rendezvous server.
