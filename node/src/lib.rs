//! A peer-to-peer line-protocol node, and the wire types its servers share with it.
//!
//! ```text
//!   application ──for con in &mut net / net.broadcast / net.poll──▶ net::Net (mio driver)
//!                                                                    │  sockets, timers
//!                      handle_*(now, ..) ▲          ▼ poll_output()  │
//!                                   core::Core (sans-IO: overlay, seen-cache, bootstrap,
//!                                   advertise, failover, NAT detection; time passed in)
//!                                        │ uses
//!                                   the `wire` crate: line, rendezvous, overlay, nat, punch, unl
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
//! - The wire types live in the `wire` crate (re-exported as [`wire`]), which the servers share
//!   with the node (client and server use one parser per wire type); the servers do not depend
//!   on this crate.
//!
//! ## Module order
//!
//! Each module uses only the ones below it (no import cycles, also inside each module):
//!
//! ```text
//!   bin/p2p-node      main ─▶ reach_cmd, unl_cmd ─▶ flags          (and bin/p2p-node-bench)
//!   net               behaviour modules (turn, peers, dial, sessions, relay, clock, events,
//!                     blocking, identity, reachability) ─▶ net.rs (Net) ─▶ data modules
//!                     (connection, error, outcomes, inflight, links)
//!   config            Config, Role
//!   reach             driver ─▶ probe (─▶ probe/{gateways, checks, finish}), lease,
//!                     gateway, check ─▶ report
//!   core              behaviour modules (overlay, jobs, unl_connect, iam, reverse, mailbox,
//!                     punch ─▶ punch/{simultaneous, candidate}) ─▶ core.rs (Core) ─▶ data
//!                     modules (state ─▶ output, config)
//!   connect           the connect-by-UNL vocabulary (ConnectOutcome, Method, requests)
//!   broadcast         origin-signed broadcast lines (the codec)
//!   secure            the Noise handshake (sans-IO) ─▶ the encrypted line channel
//!   identity          the node's key pair and its key file
//!   ids               ConnId, ConnectId, QueryId, SessionId, RelayId
//!   wire (its own crate)   framer, every wire type, UNL, HTTP helper, units, read rule
//! ```
//!
//! A module that spreads one struct over several files (`core`, `net`, `reach::probe`) keeps
//! the struct in its own file, the data its fields hold in data modules that know nothing of
//! it, and its behaviour in one `impl` block per concern; the behaviour modules import the
//! struct's file and the data modules, never each other (`core::punch`'s two sides take the
//! punch limits from `punch`, their parent).

pub mod broadcast;
pub mod config;
pub mod connect;
pub mod core;
pub mod identity;
pub mod ids;
pub mod ipv6;
pub mod metrics;
pub mod net;
pub mod reach;
pub mod secure;

/// The wire crate (framer, wire types, UNL codec), re-exported so applications need not
/// depend on it separately to name the types in this crate's API.
pub use wire;

pub use config::{Config, Role};
pub use net::{
    BootstrapReport, ConnectTarget, Connection, NatReport, Net, NetError, ReadyReport, Received,
    SendError,
};
