//! A peer-to-peer line-protocol node, and the wire types its servers share with it.
//!
//! ```text
//!   application ──for con in &mut net / net.broadcast / net.poll──▶ net::Net (mio driver)
//!                                                                    │  sockets, timers
//!                      handle_*(now, ..) ▲          ▼ poll_output()  │
//!                                   core::Core (sans-IO: overlay, seen-cache, bootstrap,
//!                                   advertise, failover, NAT detection; time passed in)
//!                                        │ uses
//!                                   proto::{line, rendezvous, overlay, nat}, unl, http
//! ```
//!
//! - [`net::Net`] is the node an application uses (see its module docs for the PyP2P-style
//!   loop). It owns the sockets and never looks at protocol verbs.
//! - [`core::Core`] decides everything and never touches a socket or a clock. **Drain
//!   contract:** after every `handle_*` call the driver drains `poll_output()` until `None`
//!   before waiting for I/O again; timers come out of `poll_timeout()` and go back in through
//!   `handle_timeout(now)`.
//! - [`reach`] finds out whether peers can reach the node (UPnP, NAT-PMP, the forwarding
//!   check): a sans-IO probe and lease keeper; the blocking UPnP/NAT-PMP/HTTP calls run on
//!   short-lived helper threads that report through a channel and wake the loop
//!   ([`Net::probe_reachability`]).
//! - [`proto`] holds the wire types shared with the servers (`rendezvous`, `forwarding-check`,
//!   `dht-msg` depend on this crate so client and server share one parser per wire type).

pub mod config;
pub mod connect;
pub mod core;
pub mod http;
pub mod net;
pub mod proto;
pub mod reach;
pub mod server;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod units;
pub mod unl;

pub use config::{Config, Role};
pub use net::{BootstrapReport, ConnectTarget, Connection, NatReport, Net, NetError, SendError};
