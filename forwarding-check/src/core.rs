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
//! [`route`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use node::http::{Request, Response};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::rate::{Limited, RateLimiter, caller_key};

/// How long a connection whose response is written waits for the client to close.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often rate-limit state of callers whose buckets are full again is dropped.
const FORGET_INTERVAL: Duration = Duration::from_secs(10);
/// Output buffers larger than this are released when emptied.
const RETAINED_OUTPUT_BYTES: usize = 4096;

/// PyP2P's `is_port_forwarded` answers, byte for byte (PyP2P looks for `yes` in the body).
pub const PYP2P_YES: &str = r#"{"result": "yes"}"#;
/// See [`PYP2P_YES`].
pub const PYP2P_NO: &str = r#"{"result": "no"}"#;

/// The body of `GET /`: what this server answers.
pub const USAGE: &str = "forwarding-check: tells you your WAN IP and whether a TCP port on it \
is reachable from here.\n\
\n\
GET /v1/wan-ip                 -> {\"wan_ip\":\"<your ip>\"}\n\
GET /v1/check?port=P           -> {\"ip\":\"<your ip>\",\"port\":P,\"proto\":\"TCP\",\"open\":true|false,\"ms\":N}\n\
GET /net.php?action=get_wan_ip -> <your ip>   (PyP2P)\n\
GET /net.php?action=is_port_forwarded&port=P&proto=TCP -> {\"result\": \"yes\"|\"no\"}   (PyP2P)\n\
\n\
Only TCP. The server connects back to the address your request comes from, never to another.\n";

/// Identifies one client connection while it is open. Ids are reused after
/// [`Core::handle_closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

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

/// Why a new connection was refused; [`Refusal::response`] is what to send before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    ServerFull {
        /// The configured limit.
        limit: usize,
    },
    /// `max_connections_per_ip` reached for this caller.
    TooManyFromIp {
        /// The caller's IP.
        ip: IpAddr,
        /// The configured limit.
        limit: usize,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ServerFull { limit } => {
                write!(f, "server full ({limit} connections), try again shortly")
            }
            Refusal::TooManyFromIp { ip, limit } => {
                write!(f, "too many connections from {ip} (limit {limit})")
            }
        }
    }
}

impl Refusal {
    /// 503 for a full server (not the caller's fault), 429 for too many from one IP.
    pub fn response(&self) -> Response {
        let status = match self {
            Refusal::ServerFull { .. } => 503,
            Refusal::TooManyFromIp { .. } => 429,
        };
        Response::text(status, format!("{self}\n")).with_header("Retry-After", "1")
    }
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused by a connection limit.
    pub refused: u64,
    /// Connections open now.
    pub open: usize,
    /// Complete request heads received.
    pub requests: u64,
    /// Requests (or attempts) answered with a 4xx other than 429.
    pub bad_requests: u64,
    /// Checks refused by the per-IP rate limit (429).
    pub rate_limited: u64,
    /// Requests refused because the server was busy (503).
    pub busy: u64,
    /// Dial-backs started.
    pub checks: u64,
    /// Dial-backs that connected.
    pub checks_open: u64,
    /// Dial-backs in progress now.
    pub checks_in_flight: usize,
}

/// How a request wants its answers: PyP2P's plain bodies or our JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `text/plain` errors; PyP2P's `{"result": "yes"}` for a check.
    Text,
    /// `application/json` everywhere, errors as `{"error":"..."}`.
    Json,
}

/// What a request asks for, decided by [`route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Answer at once with this.
    Reply(Response),
    /// Dial back the caller's observed IP on `port` (TCP), answer in `style`.
    Check {
        /// The port to try.
        port: u16,
        /// How to answer.
        style: Style,
    },
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
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    per_ip: HashMap<IpAddr, usize>,
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
            config,
            conns: Vec::new(),
            free: Vec::new(),
            per_ip: HashMap::new(),
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
            ..self.stats
        }
    }

    /// A client connected from `peer`. On refusal the driver should send
    /// [`Refusal::response`] if it can and close the socket; nothing is kept for it.
    pub fn handle_open(&mut self, now: Instant, peer: SocketAddr) -> Result<ConnId, Refusal> {
        let ip = peer.ip().to_canonical();
        let key = caller_key(ip);
        if self.stats.open >= self.config.max_connections {
            self.stats.refused += 1;
            return Err(Refusal::ServerFull {
                limit: self.config.max_connections,
            });
        }
        let from_ip = self.per_ip.entry(key).or_insert(0);
        if *from_ip >= self.config.max_connections_per_ip {
            self.stats.refused += 1;
            return Err(Refusal::TooManyFromIp {
                ip,
                limit: self.config.max_connections_per_ip,
            });
        }
        *from_ip += 1;
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
        let id = if let Some(slot) = self.free.pop() {
            self.conns[slot] = Some(conn);
            ConnId(slot)
        } else {
            self.conns.push(Some(conn));
            ConnId(self.conns.len() - 1)
        };
        self.stats.accepted += 1;
        self.stats.open += 1;
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
        let Some(conn) = self.conns.get_mut(id.0).and_then(Option::take) else {
            return;
        };
        if let Phase::Checking(check) = conn.phase
            && self.checks.remove(&check).is_some()
        {
            self.actions.push_back(Action::CancelDial(check));
        }
        if let Some(n) = self.per_ip.get_mut(&conn.key) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&conn.key);
            }
        }
        self.free.push(id.0);
        self.stats.open -= 1;
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
        for i in 0..self.conns.len() {
            self.close(ConnId(i), "server shutting down");
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
        match self.conns.get(id.0) {
            Some(Some(conn)) => &conn.out,
            _ => &[],
        }
    }

    /// Every open connection.
    pub fn open_connections(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|_| ConnId(i)))
            .collect()
    }

    fn live_conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        match self.conns.get_mut(id.0) {
            Some(Some(conn)) if !conn.closing => Some(conn),
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
        let (ip, key) = (conn.ip, conn.key);
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
        let addr = SocketAddr::new(ip, port);
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
        self.actions.push_back(Action::Dial { check, addr });
    }

    fn finish_check(&mut self, now: Instant, check: CheckId, c: &Check, outcome: DialOutcome) {
        let ms =
            u64::try_from(now.saturating_duration_since(c.started).as_millis()).unwrap_or(u64::MAX);
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
            self.conns.get(c.conn.0),
            Some(Some(conn)) if conn.phase == Phase::Checking(check)
        );
        if still_waiting {
            self.respond(now, c.conn, &response);
        }
    }
}

#[derive(Serialize)]
struct CheckReply {
    ip: IpAddr,
    port: u16,
    proto: &'static str,
    open: bool,
    ms: u64,
}

#[derive(Serialize)]
struct WanIpReply {
    wan_ip: IpAddr,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    error: &'a str,
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"encoding: {e}\"}}"))
}

/// An error response in the request's style.
fn error(style: Style, status: u16, message: &str) -> Response {
    match style {
        Style::Text => Response::text(status, format!("{message}\n")),
        Style::Json => Response::json(status, to_json(&ErrorReply { error: message })),
    }
}

/// Decides what a request asks for. `ip` is the caller's observed IP, the only address a
/// check ever dials.
///
/// Every endpoint is `GET` (else 405) and takes only its own parameters; a parameter that
/// could name an address (`ip`, `host`, `addr`, `target`, ... or any value that parses as an
/// IP address) is refused with 400, as is any other unknown or repeated parameter.
///
/// ```
/// use forwarding_check::core::{route, Route, Style};
/// use node::http::Request;
///
/// let ip = "203.0.113.9".parse().unwrap();
/// let req = Request::parse(b"GET /v1/check?port=8080 HTTP/1.1\r\n\r\n", 8192).unwrap();
/// assert_eq!(route(&req, ip), Route::Check { port: 8080, style: Style::Json });
///
/// let req = Request::parse(b"GET /v1/check?port=22&ip=10.0.0.1 HTTP/1.1\r\n\r\n", 8192).unwrap();
/// let Route::Reply(response) = route(&req, ip) else { panic!() };
/// assert_eq!(response.status, 400);
/// ```
pub fn route(request: &Request, ip: IpAddr) -> Route {
    let style = if request.path.starts_with("/v1/") {
        Style::Json
    } else {
        Style::Text
    };
    match route_inner(request, ip, style) {
        Ok(route) => route,
        Err(response) => Route::Reply(response),
    }
}

fn route_inner(request: &Request, ip: IpAddr, style: Style) -> Result<Route, Response> {
    if request.method != "GET" {
        let msg = format!(
            "method {} not allowed: every endpoint is GET",
            request.method
        );
        return Err(error(style, 405, &msg).with_header("Allow", "GET"));
    }
    match request.path.as_str() {
        "/" => {
            only_params(request, &[], ip, style)?;
            Ok(Route::Reply(Response::text(200, USAGE)))
        }
        "/v1/wan-ip" => {
            only_params(request, &[], ip, style)?;
            Ok(Route::Reply(Response::json(
                200,
                to_json(&WanIpReply { wan_ip: ip }),
            )))
        }
        "/v1/check" => {
            only_params(request, &["port", "proto"], ip, style)?;
            let port = port_param(request, style)?;
            Ok(Route::Check { port, style })
        }
        "/net.php" => match request.query_param("action") {
            Some("get_wan_ip") => {
                only_params(request, &["action"], ip, style)?;
                Ok(Route::Reply(Response::text(200, ip.to_string())))
            }
            Some("is_port_forwarded") => {
                only_params(request, &["action", "port", "proto"], ip, style)?;
                let port = port_param(request, style)?;
                Ok(Route::Check { port, style })
            }
            Some(other) => Err(error(
                style,
                400,
                &format!(
                    "unknown action {other:?}: use action=get_wan_ip or \
                     action=is_port_forwarded&port=P&proto=TCP"
                ),
            )),
            None => Err(error(
                style,
                400,
                "missing parameter `action` (get_wan_ip or is_port_forwarded)",
            )),
        },
        other => Err(error(
            style,
            404,
            &format!(
                "no such endpoint: {other:?}; try /v1/wan-ip, /v1/check?port=P, \
                 /net.php?action=get_wan_ip or /net.php?action=is_port_forwarded&port=P&proto=TCP"
            ),
        )),
    }
}

/// Refuses unknown, repeated and address-naming parameters.
fn only_params(
    request: &Request,
    allowed: &[&str],
    ip: IpAddr,
    style: Style,
) -> Result<(), Response> {
    for (i, (name, value)) in request.query.iter().enumerate() {
        if allowed.contains(&name.as_str()) {
            if request.query[..i].iter().any(|(n, _)| n == name) {
                let msg = format!("parameter `{name}` given more than once");
                return Err(error(style, 400, &msg));
            }
            continue;
        }
        if names_an_address(name, value) {
            let msg = format!(
                "refused: this server only ever connects back to the address your request \
                 comes from ({ip}); it never dials an address named in the request \
                 (parameter `{name}`)"
            );
            return Err(error(style, 400, &msg));
        }
        let msg = if allowed.is_empty() {
            format!("unknown parameter `{name}`: this endpoint takes no parameters")
        } else {
            format!(
                "unknown parameter `{name}`: this endpoint takes {}",
                allowed.join(", ")
            )
        };
        return Err(error(style, 400, &msg));
    }
    Ok(())
}

fn names_an_address(name: &str, value: &str) -> bool {
    const WORDS: [&str; 10] = [
        "ip", "host", "addr", "target", "dest", "dst", "remote", "server", "url", "peer",
    ];
    let name = name.to_ascii_lowercase();
    WORDS.iter().any(|w| name.contains(w))
        || name == "to"
        || value.parse::<IpAddr>().is_ok()
        || value.parse::<SocketAddr>().is_ok()
}

/// `port` (required, 1..=65535) and `proto` (optional, TCP only).
fn port_param(request: &Request, style: Style) -> Result<u16, Response> {
    match request.query_param("proto") {
        None => {}
        Some(p) if p.eq_ignore_ascii_case("tcp") => {}
        Some(p) if p.eq_ignore_ascii_case("udp") => {
            return Err(error(
                style,
                400,
                "proto=UDP is not supported: a UDP probe cannot tell an open port from one that \
                 silently drops packets, so only TCP is checked",
            ));
        }
        Some(p) => {
            let msg = format!("parameter `proto` must be TCP, got {p:?}");
            return Err(error(style, 400, &msg));
        }
    }
    let Some(text) = request.query_param("port") else {
        return Err(error(
            style,
            400,
            "missing parameter `port` (the TCP port to check, 1..=65535)",
        ));
    };
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0 && text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            let msg = format!("parameter `port` must be a TCP port in 1..=65535, got {text:?}");
            error(style, 400, &msg)
        })
}

#[cfg(test)]
mod tests;
