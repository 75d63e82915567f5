//! A peer-to-peer line-protocol node, and the wire types its servers share with it.
//!
//! This first part holds the sans-IO protocol core in [`proto`]: the bounded line framer and the
//! rendezvous server's messages (PyP2P-compatible). The servers (`rendezvous`, and later
//! `forwarding-check` and `dht-msg`) depend on this crate so that client and server share one
//! parser for every wire type.

pub mod config;
pub mod core;
pub mod http;
pub mod net;
pub mod proto;
pub mod units;
pub mod unl;

pub use config::{Config, Role};
pub use net::{BootstrapReport, Connection, NatReport, Net, NetError, SendError};
