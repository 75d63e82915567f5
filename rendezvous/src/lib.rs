//! The rendezvous server: bootstrap lists, advertisement, NAT mapping probes and hole-punch
//! coordination, speaking PyP2P's line protocol (see `node::proto::rendezvous`).
//!
//! ```text
//!   sockets ──readiness──▶ driver (mio) ──handle_*(now, ..)──▶ Core (sans-IO)
//!          ◀──write/close──              ◀──poll_action()────
//! ```
//! [`core::Core`] holds every rule and takes time as an argument, so it is tested in virtual
//! time; [`Server`] is the thin mio loop (one thread, no thread per connection).
//!
//! ```no_run
//! use rendezvous::{Config, Server};
//!
//! let server = Server::bind("0.0.0.0:8000".parse().unwrap(), Config::default())?;
//! let stop = server.shutdown_handle(); // call stop.shutdown() from another thread
//! server.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod config;
pub mod core;
mod driver;

pub use config::Config;
pub use driver::{LiveStats, RunningServer, Server};
pub use node::server::ShutdownHandle;
