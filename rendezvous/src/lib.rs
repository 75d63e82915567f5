//! The rendezvous server: bootstrap lists, advertisement, NAT mapping probes and hole-punch
//! coordination, speaking PyP2P's line protocol (see `wire::rendezvous`).
//!
//! ```text
//!   rendezvous (Core + Config + main) ──▶ server-kit (the mio driver) ──▶ wire (the protocol)
//!
//!   sockets ──readiness──▶ server_kit::Server ──handle_*(now, ..)──▶ Core (sans-IO)
//!          ◀──write/close/splice──            ◀──poll_action()────
//! ```
//! [`core::Core`] holds every rule and takes time as an argument, so it is tested in virtual
//! time; [`Server`] is the server kit's mio loop (one thread, no thread per connection) driving
//! it through the kit's `ServerCore` contract (the glue is in `serve.rs`), so accepting,
//! reading, flushing, limits on reads and graceful closing are the kit's. The relay uses the
//! kit's read budgets (flow control and rate limit pause reading) and its splice path (bytes
//! written straight to the partner when nothing is queued for it).
//!
//! IPv6: one `[::]` socket serves both families. An IPv6 client learns its global address
//! with `SOURCE ADDR` (`REMOTE ADDR 2001:db8:1::2 40312 1700000000.25`); registrations made
//! over IPv6 are handed out only by `BOOTSTRAP <IPV6|ANY> <n>` (never by PyP2P's
//! `BOOTSTRAP <n>`), as `p:[2001:db8:1::2]:50500`; a `CANDIDATE` punches within its own family;
//! the relay pairs peers of either family. The grammar: `wire::rendezvous`.
//!
//! ```no_run
//! use rendezvous::{Config, Server};
//!
//! let server = Server::bind("[::]:8000".parse().unwrap(), Config::default())?;
//! let stop = server.shutdown_handle(); // call stop.shutdown() from another thread
//! server.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod cli;
pub mod config;
pub mod core;
mod metrics;
pub mod serve;
pub mod shared;

pub use config::Config;
pub use server_kit::ShutdownHandle;

/// A rendezvous server bound to a listener, ready to [`run`](Server::run).
pub type Server = server_kit::Server<serve::Rendezvous>;
/// A rendezvous server running on its own thread; stopped and joined on drop.
pub type RunningServer = server_kit::RunningServer<serve::Rendezvous>;
/// The server's [`core::Stats`] as of its last turn, readable from other threads.
pub type LiveStats = server_kit::LiveStats<core::Stats>;
