//! The forwarding-check server: tells a caller the IP address it is seen from (its WAN IP) and
//! whether a TCP port on that address accepts connections from outside, by connecting back to
//! it. Wire-compatible with PyP2P's `net.php`, plus JSON endpoints of our own.
//!
//! # Endpoints (all `GET`, one request per connection)
//!
//! | Request | Answer |
//! |---|---|
//! | `/v1/wan-ip` | `{"wan_ip":"203.0.113.9"}` |
//! | `/v1/check?port=P[&proto=TCP]` | `{"ip":"203.0.113.9","port":P,"proto":"TCP","open":true,"ms":12}` |
//! | `/net.php?action=get_wan_ip` | `203.0.113.9` (plain text, PyP2P) |
//! | `/net.php?action=is_port_forwarded&port=P&proto=TCP` | `{"result": "yes"}` or `{"result": "no"}` (PyP2P) |
//! | `/` | a short usage text |
//!
//! `open`/`yes` means a TCP handshake with the caller's observed IP on port P completed within
//! the connect timeout; the connection is closed at once without sending anything. A reset, an
//! ICMP unreachable or silence until the timeout all mean `false`/`no`. `ms` is how long the
//! dial-back took. If the server could not even try (out of sockets), the answer is 503, never
//! a false `no`.
//!
//! # Safety rules
//!
//! - It dials back **only the caller's observed source IP**, in the caller's family: an IPv6
//!   caller's own IPv6 address (with its interface, for a link-local one), an IPv4 caller's
//!   IPv4 address (also when it reached the `[::]` socket). The request chooses the port and
//!   nothing else: a parameter that could name an address (`ip=`, `host=`, `addr=`, `target=`,
//!   ..., or any value that is an IP address) is refused with 400, as is any unknown or
//!   repeated parameter. So it cannot be used to scan third parties. For the same reason
//!   `X-Forwarded-For` and friends are ignored (the caller controls them): run it directly on
//!   a public address, not behind a reverse proxy or load balancer, or every caller would be
//!   seen as the proxy.
//! - UDP is not supported (`proto=UDP` gets 400): a UDP probe cannot tell an open port from one
//!   that silently drops packets, and we will not pretend.
//! - Per-IP (IPv6: per /64) token bucket on checks (default 10 a minute, bursts of 5) → 429
//!   with `Retry-After`; a global cap on dial-backs in progress (default 64) and on connections
//!   (1024) → 503 (the server is busy; the caller did nothing wrong); connections per IP
//!   (default 8) → 429. One flooding client gets 429s while everyone else is served.
//! - Malformed requests get 400 with a message saying what was wrong; a request head over
//!   8 KiB gets 431; a client that sends no complete head within the idle timeout (10 s) gets
//!   408 (or is just closed if it sent nothing). Every answer closes the connection.
//!
//! # Design
//!
//! ```text
//!   sockets ──readiness──▶ driver (mio) ──handle_*(now, ..)──▶ Core (sans-IO)
//!   dial-backs ◀─connect── (one thread)  ◀──poll_action()────  route(), rate, timers
//! ```
//! [`core::Core`] holds every rule (routing, limits, deadlines) and takes time as an argument,
//! so it is tested in virtual time; HTTP heads are parsed by the shared `wire::http` helper
//! (on `httparse`). [`Server`] is the thin mio loop: it accepts and reads clients, and starts
//! each dial-back as a non-blocking mio `TcpStream::connect` registered for writability; the
//! completion (`take_error()`, then `peer_addr()`) is reported to the core. The connect
//! deadline is a core timer: when it fires the core answers `no` and tells the driver to drop
//! the socket. One thread serves thousands of clients and dial-backs at once; no thread per
//! check, no blocking connect.
//!
//! # Running it
//!
//! ```text
//! forwarding-check                                    # [::]:8080, IPv6 and IPv4, defaults as above
//! forwarding-check --listen 0.0.0.0:8080 --connect-timeout 1s --checks-per-minute 20
//! RUST_LOG=debug forwarding-check ...                 # one log line per connection event
//! curl 'http://server:8080/v1/check?port=50500'
//! ```
//! PyP2P's client gives up after 2 s, so for PyP2P nodes `--connect-timeout 1s` (what PyP2P's
//! own server used) answers `no` before they time out; the default, 2 s, suits our node.
//! Stop it with Ctrl-C or SIGTERM.
//!
//! ```no_run
//! use forwarding_check::{Config, Server};
//!
//! let server = Server::bind("[::]:8080".parse().unwrap(), Config::default())?;
//! let stop = server.shutdown_handle(); // call stop.shutdown() from another thread
//! server.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod cli;
pub mod config;
pub mod core;
mod metrics;
pub mod rate;
pub mod serve;

pub use config::Config;
pub use server_kit::ShutdownHandle;

/// A forwarding-check server bound to a listener, ready to [`run`](Server::run).
pub type Server = server_kit::Server<core::Core>;
/// A forwarding-check server running on its own thread; stopped and joined on drop.
pub type RunningServer = server_kit::RunningServer<core::Core>;
