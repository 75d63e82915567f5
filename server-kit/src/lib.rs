//! One mio driver for every server of the p2p toolkit. A server is a sans-IO core (its rules,
//! with time passed in) plus its configuration; this crate owns the sockets.
//!
//! ```text
//!        rendezvous      dht-msg      forwarding-check      (each: Core + Config + main)
//!             └─────────────┼─────────────┘
//!                    server-kit (this crate)          node (apart: servers never link it)
//!                           └───────────┬───────────────┘
//!                                     wire (framer, every wire type, HTTP helper, units)
//! ```
//!
//! ```text
//!   sockets ──readiness──▶ Server<C> (mio, one thread) ──handle_*(now, ..)──▶ C: ServerCore
//!          ◀──write/close/dial──                        ◀──poll_output()────  (sans-IO)
//! ```
//!
//! - [`ServerCore`] is the contract, including the **drain contract**: after feeding inputs
//!   the driver drains [`ServerCore::poll_output`] until `None`; time comes out of
//!   [`ServerCore::poll_timeout`] and goes in through [`ServerCore::handle_timeout`]; each turn
//!   runs inputs, then timers, then [`ServerCore::commit`], then outputs. Output bytes stay in
//!   the core ([`ServerCore::pending_output`] / [`ServerCore::handle_written`]), so a core
//!   keeps its own caps and back-pressure.
//! - [`Server`] is the loop; its docs list what it guarantees every core: accepting with
//!   back-off when file descriptors run out, a per-connection read share per turn, flushing,
//!   graceful **linger-then-close** (a client reads the last reply, an error line or a 431,
//!   instead of a reset), outbound dials, and shutdown.
//! - [`Admission`] (global and per-IP connection caps, with one [`Refusal`] wording) and
//!   [`Slab`] (connection ids) are the sans-IO bookkeeping every core embeds, so its limits
//!   are tested in virtual time with the rest of its rules.
//! - Both address families: [`bind_listener`] makes `[::]:PORT` one socket for IPv6 and IPv4
//!   clients; the driver hands every core a client's address in [`canonical`] form (an IPv4
//!   client is `a.b.c.d`, never `::ffff:a.b.c.d`), and per-IP limits count an IPv6 client by
//!   its /64 ([`caller_key`], the default of [`Admission`]).
//! - [`metrics`] renders Prometheus metrics and serves `GET /metrics` on a port of its own
//!   ([`run_with_metrics`]); each server's counters implement [`metrics::Metrics`].
//! - [`run`] is a binary's `main` after flag parsing (SIGINT/SIGTERM stop it gracefully),
//!   [`RunningServer`] runs one on a thread for tests and benches, and `testkit` (feature
//!   `testkit`) has the loopback clients and the `ServerProcess` the servers' tests share.
//!
//! Why a crate of its own rather than a module of `wire`: `wire` is sans-IO and the node
//! depends on it; the kit brings mio, signal handling and logging set-up that the node's
//! library has no use for.
//!
//! ```no_run
//! # fn demo<C: server_kit::Service>(config: C::Config) -> std::io::Result<()> {
//! // A server binary's main, after parsing its flags into `config`:
//! server_kit::init_logging();
//! server_kit::run::<C>("0.0.0.0:8000".parse().unwrap(), config)?;
//! # Ok(()) }
//! ```

mod conns;
mod core;
mod driver;
mod listen;
pub mod metrics;
#[cfg(feature = "redis")]
pub mod redis;
mod run;
mod running;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use conns::{Admission, Refusal, Slab};
pub use core::{ConnId, DialId, Output, ServerCore, Service, Wake};
pub use driver::{LINGER, MAX_LINGERING, Server, is_fd_exhaustion};
pub use listen::{FAMILIES, LISTEN_BACKLOG, bind_listener, caller_key, canonical, family_index};
pub use run::{bind, init_logging, metrics_source, run, run_with_metrics, serve_until_signalled};
pub use running::{LiveStats, RunningServer, ShutdownHandle};
