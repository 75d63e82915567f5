//! Test support for the servers' tests (feature `testkit`, for dev-dependencies): run a server
//! binary on a port it picks itself ([`ServerProcess`]), and plain blocking clients on chosen
//! loopback addresses ([`LineClient`], [`connect_from`], [`exchange`]), so that a test can play
//! several clients' IPs and per-IP limits apply as in the wild.
//!
//! The helpers panic on failure, as test helpers do.

mod client;
mod process;

pub use client::{
    IO_DEADLINE, LineClient, connect_from, exchange, ipv6_loopback_or_skip, loopback_pair,
};
pub use process::{START_TIMEOUT, ServerProcess};
