//! The forwarding-check server's logic, sans-IO.
//!
//! [`Core`] never touches a socket or reads a clock. The driver feeds it connection events with
//! the current time ([`Core::handle_open`], [`Core::handle_data`], [`Core::handle_eof`],
//! [`Core::handle_written`], [`Core::handle_reset`], [`Core::handle_closed`]), the outcome of
//! each dial-back it was asked for ([`Core::handle_dial_result`]) and the passing of time
//! ([`Core::handle_timeout`] at [`Core::poll_timeout`]), and carries out what it asks for,
//! drained from [`Core::poll_action`]: write a connection's pending output, half-close it,
//! close it, start a dial-back, or abandon one.
//!
//! One request per connection: each response carries `Connection: close`. After the response
//! is written the connection is half-closed and lingers (reading and discarding) until the
//! client closes or [`LINGER_TIMEOUT`] passes, so that a client whose extra bytes are still in
//! flight receives the response instead of a reset.
//!
//! The dial-back address is always the connection's observed source IP; the request can only
//! choose the port. Parameters that could name another address are refused (see
//! [`route`], in the child module `route` with the response bodies).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use server_kit::{Admission, Slab};
pub use server_kit::{ConnId, Refusal};
use tracing::{debug, info, warn};
use wire::http::{Request, Response};

use crate::config::Config;
use crate::rate::{Limited, RateLimiter, caller_key};
use route::{CheckReply, error, to_json};
pub use route::{Route, Style, USAGE, route};

/// How long a connection whose response is written waits for the client to close: the kit's
/// linger, which this core applies itself (it half-closes after the answer and waits in its
/// own timer), so the kit then closes at once.
pub const LINGER_TIMEOUT: Duration = server_kit::LINGER;
/// How often rate-limit state of callers whose buckets are full again is dropped.
const FORGET_INTERVAL: Duration = Duration::from_secs(10);
/// Output buffers larger than this are released when emptied.
const RETAINED_OUTPUT_BYTES: usize = 4096;

/// PyP2P's `is_port_forwarded` answers, byte for byte (PyP2P looks for `yes` in the body).
pub const PYP2P_YES: &str = r#"{"result": "yes"}"#;
/// See [`PYP2P_YES`].
pub const PYP2P_NO: &str = r#"{"result": "no"}"#;

/// Identifies one dial-back. Never reused while the core lives (it counts up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckId(pub usize);

/// Work the driver must carry out, drained with [`Core::poll_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write [`Core::pending_output`] of this connection, reporting progress with
    /// [`Core::handle_written`].
    Flush(ConnId),
    /// Everything is written: shut down the sending side (FIN), keep reading.
    ShutdownWrite(ConnId),
    /// Write what is pending (best effort), close the socket, then call
    /// [`Core::handle_closed`].
    Close(ConnId),
    /// Start a non-blocking TCP connect to `addr` and report with
    /// [`Core::handle_dial_result`]. The core enforces the deadline itself.
    Dial {
        /// Which check.
        check: CheckId,
        /// Always the caller's observed IP, with the port it asked about.
        addr: SocketAddr,
    },
    /// Drop the socket of this dial-back (deadline passed or its client went away); do not
    /// report it.
    CancelDial(CheckId),
}

/// How a dial-back ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialOutcome {
    /// The TCP handshake completed: the port is reachable.
    Connected,
    /// The caller's side answered with a reset: nothing listens there (or a NAT said no).
    Refused,
    /// No handshake before the deadline (set by the core itself, never by the driver).
    TimedOut,
    /// The network said no (host or network unreachable, ...): the port is not reachable.
    Unreachable(String),
    /// The server could not even try (out of sockets, ...): the answer is "don't know", 503.
    LocalError(String),
}

impl DialOutcome {
    fn word(&self) -> &str {
        match self {
            DialOutcome::Connected => "connected",
            DialOutcome::Refused => "refused",
            DialOutcome::TimedOut => "timed out",
            DialOutcome::Unreachable(e) | DialOutcome::LocalError(e) => e,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the request head.
    Head,
    /// Waiting for this dial-back.
    Checking(CheckId),
    /// Writing the response.
    Responding,
    /// Response written and write side shut down; waiting for the client to close.
    Lingering,
}

#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    /// The observed IP in canonical form (an IPv4-mapped IPv6 address as IPv4).
    ip: IpAddr,
    /// What limits count it under.
    key: IpAddr,
    head: Vec<u8>,
    out: Vec<u8>,
    phase: Phase,
    deadline: Option<Instant>,
    peer_eof: bool,
    closing: bool,
}

#[derive(Debug)]
struct Check {
    conn: ConnId,
    addr: SocketAddr,
    style: Style,
    started: Instant,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Conn(ConnId),
    Check(CheckId),
}

/// The forwarding-check state machine. See the module docs for the driving contract.
#[derive(Debug)]
pub struct Core {
    config: Config,
    conns: Slab<Conn>,
    admission: Admission,
    checks: HashMap<CheckId, Check>,
    next_check: usize,
    limiter: RateLimiter,
    /// Deadlines; an entry is stale (ignored) unless its conn or check still has that deadline.
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    next_forget: Instant,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Core {
    /// A server with no connections, at time `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        let limiter = RateLimiter::new(
            config.checks_per_minute,
            config.check_burst,
            config.max_tracked_ips,
        );
        Core {
            admission: Admission::new(config.max_connections, config.max_connections_per_ip),
            config,
            conns: Slab::default(),
            checks: HashMap::new(),
            next_check: 0,
            limiter,
            timers: BinaryHeap::new(),
            next_forget: now + FORGET_INTERVAL,
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters as of now.
    pub fn stats(&self) -> Stats {
        Stats {
            checks_in_flight: self.checks.len(),
            accepted: self.admission.accepted(),
            refused: self.admission.refused(),
            refused_by_reason: self.admission.refused_by_reason().map(|(_, n)| n),
            open: self.admission.open(),
            ..self.stats
        }
    }

    /// A client connected from `peer`. On refusal the driver should send
    /// [`Refusal::response`] if it can and close the socket; nothing is kept for it.
    pub fn handle_open(&mut self, now: Instant, peer: SocketAddr) -> Result<ConnId, Refusal> {
        let ip = peer.ip().to_canonical();
        let key = caller_key(ip);
        self.admission.admit(ip)?;
        self.stats.accepted_by_family[server_kit::family_index(ip)] += 1;
        let conn = Conn {
            peer,
            ip,
            key,
            head: Vec::new(),
            out: Vec::new(),
            phase: Phase::Head,
            deadline: None,
            peer_eof: false,
            closing: false,
        };
        let id = self.conns.insert(conn);
        self.set_deadline(id, now + self.config.idle_timeout);
        debug!(conn = id.0, %peer, "connection opened");
        Ok(id)
    }

    /// Bytes arrived on a connection. Bytes after the request head are ignored.
    pub fn handle_data(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let max = self.config.max_head_bytes;
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        if conn.phase != Phase::Head {
            return;
        }
        let room = max.saturating_sub(conn.head.len());
        let taken = &data[..data.len().min(room)];
        conn.head.extend_from_slice(taken);
        // A head can only end with a newline: parsing again only when one arrives keeps a
        // client that trickles single bytes from costing a full re-parse per byte.
        if !taken.contains(&b'\n') && conn.head.len() < max {
            return;
        }
        match Request::parse(&conn.head, max) {
            Err(e) if e.is_partial() => {}
            Err(e) => {
                self.stats.bad_requests += 1;
                debug!(conn = id.0, "bad request head: {e}");
                let status = e.status().unwrap_or(400);
                self.respond(now, id, &error(Style::Text, status, &e.to_string()));
            }
            Ok(request) => {
                conn.head = Vec::new();
                self.stats.requests += 1;
                self.handle_request(now, id, &request);
            }
        }
    }

    /// The client shut down its sending side (read returned 0). A pending check still
    /// completes and is answered.
    pub fn handle_eof(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        conn.peer_eof = true;
        match conn.phase {
            Phase::Head if conn.head.is_empty() => self.close(id, "closed without a request"),
            Phase::Head => {
                self.stats.bad_requests += 1;
                let msg = "connection closed before the request head was complete";
                self.respond(now, id, &error(Style::Text, 400, msg));
            }
            Phase::Checking(_) | Phase::Responding => {}
            Phase::Lingering => self.close(id, "closed by client"),
        }
    }

    /// The socket failed (read or write error): close it without further ado.
    pub fn handle_reset(&mut self, id: ConnId, why: &str) {
        self.close(id, why);
    }

    /// The driver wrote the first `n` bytes of [`pending_output`](Self::pending_output).
    pub fn handle_written(&mut self, now: Instant, id: ConnId, n: usize) {
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        conn.out.drain(..n.min(conn.out.len()));
        if !conn.out.is_empty() || conn.phase != Phase::Responding {
            return;
        }
        if conn.out.capacity() > RETAINED_OUTPUT_BYTES {
            conn.out = Vec::new();
        }
        if conn.peer_eof {
            self.close(id, "response sent");
        } else {
            conn.phase = Phase::Lingering;
            self.actions.push_back(Action::ShutdownWrite(id));
            self.set_deadline(id, now + LINGER_TIMEOUT);
        }
    }

    /// The driver has closed the socket of a connection it was told to close; its id may be
    /// reused from now on.
    pub fn handle_closed(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(id) else {
            return;
        };
        if let Phase::Checking(check) = conn.phase
            && self.checks.remove(&check).is_some()
        {
            self.actions.push_back(Action::CancelDial(check));
        }
        self.admission.release(conn.ip);
        debug!(conn = id.0, peer = %conn.peer, "connection closed");
    }

    /// A dial-back the core asked for ended. Late reports (after the deadline) are ignored.
    pub fn handle_dial_result(&mut self, now: Instant, check: CheckId, outcome: DialOutcome) {
        if let Some(c) = self.checks.remove(&check) {
            self.finish_check(now, check, &c, outcome);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called (it may be called
    /// earlier or more often).
    pub fn poll_timeout(&self) -> Instant {
        match self.timers.peek() {
            Some(Reverse((t, _))) => (*t).min(self.next_forget),
            None => self.next_forget,
        }
    }

    /// Time passed: give up on slow dial-backs, close idle and lingering connections.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Conn(id) => self.conn_deadline(now, id, at),
                Timer::Check(check) => {
                    if self.checks.get(&check).is_some_and(|c| c.deadline == at)
                        && let Some(c) = self.checks.remove(&check)
                    {
                        self.actions.push_back(Action::CancelDial(check));
                        self.finish_check(now, check, &c, DialOutcome::TimedOut);
                    }
                }
            }
        }
        if now >= self.next_forget {
            self.limiter.forget_full(now);
            self.next_forget = now + FORGET_INTERVAL;
        }
    }

    /// Close everything: every connection (pending output flushed best effort) and every
    /// dial-back. For shutdown.
    pub fn handle_shutdown(&mut self) {
        for id in self.conns.ids() {
            self.close(id, "server shutting down");
        }
        let mut checks: Vec<CheckId> = self.checks.drain().map(|(id, _)| id).collect();
        checks.sort_unstable();
        self.actions
            .extend(checks.into_iter().map(Action::CancelDial));
    }

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Bytes waiting to be written to a connection.
    pub fn pending_output(&self, id: ConnId) -> &[u8] {
        self.conns.get(id).map_or(&[], |conn| &conn.out)
    }

    /// Every open connection.
    pub fn open_connections(&self) -> Vec<ConnId> {
        self.conns.ids()
    }

    fn live_conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        match self.conns.get_mut(id) {
            Some(conn) if !conn.closing => Some(conn),
            _ => None,
        }
    }

    fn set_deadline(&mut self, id: ConnId, at: Instant) {
        if let Some(conn) = self.live_conn(id) {
            conn.deadline = Some(at);
            self.timers.push(Reverse((at, Timer::Conn(id))));
        }
    }

    fn conn_deadline(&mut self, now: Instant, id: ConnId, at: Instant) {
        let idle = self.config.idle_timeout;
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        if conn.deadline != Some(at) {
            return;
        }
        conn.deadline = None;
        match conn.phase {
            Phase::Head if conn.head.is_empty() => self.close(id, "idle, no request"),
            Phase::Head => {
                self.stats.bad_requests += 1;
                let msg = format!("request head not complete after {} ms", idle.as_millis());
                self.respond(now, id, &error(Style::Text, 408, &msg));
            }
            Phase::Responding => self.close(id, "client did not read the response"),
            Phase::Lingering => self.close(id, "linger time over"),
            Phase::Checking(_) => {}
        }
    }

    /// Queues a complete response; the connection closes after it.
    fn respond(&mut self, now: Instant, id: ConnId, response: &Response) {
        let idle = self.config.idle_timeout;
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        conn.out = response.render();
        conn.phase = Phase::Responding;
        self.actions.push_back(Action::Flush(id));
        self.set_deadline(id, now + idle);
    }

    fn close(&mut self, id: ConnId, why: &str) {
        if let Some(conn) = self.live_conn(id) {
            conn.closing = true;
            debug!(conn = id.0, peer = %conn.peer, "closing: {why}");
            self.actions.push_back(Action::Close(id));
        }
    }

    fn handle_request(&mut self, now: Instant, id: ConnId, request: &Request) {
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        let ip = conn.ip;
        let peer = conn.peer;
        match route(request, ip) {
            Route::Reply(response) => {
                debug!(conn = id.0, %peer, method = %request.method, target = %request.target,
                    status = response.status, "request");
                if (400..500).contains(&response.status) {
                    self.stats.bad_requests += 1;
                }
                self.respond(now, id, &response);
            }
            Route::Check { port, style } => {
                debug!(conn = id.0, %peer, target = %request.target, "check requested");
                self.start_check(now, id, port, style);
            }
        }
    }

    fn start_check(&mut self, now: Instant, id: ConnId, port: u16, style: Style) {
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        let (ip, key, peer) = (conn.ip, conn.key, conn.peer);
        let limit = self.config.max_concurrent_checks;
        if self.checks.len() >= limit {
            self.stats.busy += 1;
            let msg =
                format!("server busy: {limit} port checks already in progress; retry in a second");
            let reply = error(style, 503, &msg).with_header("Retry-After", "1");
            return self.respond(now, id, &reply);
        }
        match self.limiter.take(now, ip) {
            Ok(()) => {}
            Err(Limited::Rate { retry_after }) => {
                self.stats.rate_limited += 1;
                let secs = retry_after.as_millis().div_ceil(1000).max(1);
                let msg = format!(
                    "rate limit: at most {} port checks per minute from one IP (bursts of {}); \
                     {key} may check again in {secs} s",
                    self.config.checks_per_minute, self.config.check_burst,
                );
                debug!(conn = id.0, %ip, "rate limited");
                let reply = error(style, 429, &msg).with_header("Retry-After", &secs.to_string());
                return self.respond(now, id, &reply);
            }
            Err(Limited::TableFull { limit }) => {
                self.stats.busy += 1;
                let msg = format!(
                    "server busy: rate-limit table full ({limit} callers); retry in a minute"
                );
                let reply = error(style, 503, &msg).with_header("Retry-After", "60");
                return self.respond(now, id, &reply);
            }
        }
        let check = CheckId(self.next_check);
        self.next_check = self.next_check.wrapping_add(1);
        // The caller's own address, in its own family; a link-local IPv6 caller keeps its
        // interface (scope id), without which its address cannot be dialed.
        let addr = match (ip, peer) {
            (IpAddr::V6(v6), SocketAddr::V6(p)) => {
                SocketAddr::V6(SocketAddrV6::new(v6, port, 0, p.scope_id()))
            }
            _ => SocketAddr::new(ip, port),
        };
        let deadline = now + self.config.connect_timeout;
        self.checks.insert(
            check,
            Check {
                conn: id,
                addr,
                style,
                started: now,
                deadline,
            },
        );
        self.timers.push(Reverse((deadline, Timer::Check(check))));
        if let Some(conn) = self.live_conn(id) {
            conn.phase = Phase::Checking(check);
            conn.deadline = None;
        }
        self.stats.checks += 1;
        self.stats.checks_by_family[server_kit::family_index(ip)] += 1;
        self.actions.push_back(Action::Dial { check, addr });
    }

    fn finish_check(&mut self, now: Instant, check: CheckId, c: &Check, outcome: DialOutcome) {
        let ms =
            u64::try_from(now.saturating_duration_since(c.started).as_millis()).unwrap_or(u64::MAX);
        self.stats.check_results[match outcome {
            DialOutcome::Connected => 0,
            DialOutcome::Refused => 1,
            DialOutcome::TimedOut => 2,
            DialOutcome::Unreachable(_) => 3,
            DialOutcome::LocalError(_) => 4,
        }] += 1;
        let response = if let DialOutcome::LocalError(e) = outcome {
            warn!(check = check.0, addr = %c.addr, "could not run the check: {e}");
            self.stats.busy += 1;
            error(c.style, 503, &format!("could not run the check: {e}"))
                .with_header("Retry-After", "1")
        } else {
            let open = outcome == DialOutcome::Connected;
            if open {
                self.stats.checks_open += 1;
            }
            info!(ip = %c.addr.ip(), port = c.addr.port(), open, ms, result = %outcome.word(),
                "port check");
            match c.style {
                Style::Text => Response::json(200, if open { PYP2P_YES } else { PYP2P_NO }),
                Style::Json => Response::json(
                    200,
                    to_json(&CheckReply {
                        ip: c.addr.ip(),
                        port: c.addr.port(),
                        proto: "TCP",
                        open,
                        ms,
                    }),
                ),
            }
        };
        let still_waiting = matches!(
            self.conns.get(c.conn),
            Some(conn) if conn.phase == Phase::Checking(check)
        );
        if still_waiting {
            self.respond(now, c.conn, &response);
        }
    }
}

mod route;
mod stats;

pub use stats::{CHECK_RESULTS, Stats};
#[cfg(test)]
mod tests;
