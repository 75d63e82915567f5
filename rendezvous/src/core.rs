//! The rendezvous server's protocol logic, sans-IO.
//!
//! [`Core`] never touches a socket or reads a clock. The driver feeds it connection events with
//! the current time ([`Core::handle_open`], [`Core::handle_data`], [`Core::handle_eof`],
//! [`Core::handle_failed`], [`Core::handle_closed`], [`Core::handle_timeout`]) and carries out
//! what it asks for, drained from [`Core::poll_action`]: write a connection's pending output,
//! close it, and for the relay mode (see [`relay`]) resume reading a paused connection or shut
//! down its write side. Before each read it asks [`Core::read_budget`] how much it may read.
//!
//! Registrations are keyed by (observed IP, port) rather than PyP2P's IP alone, so several nodes
//! behind one NAT can register; a bare `CLEAR` still removes everything its IP registered.
//!
//! This file holds the state, the driving calls and the per-connection line handling; the
//! rules live in child modules, each an `impl Core` of one concern: `registry` (passive
//! registrations, `BOOTSTRAP`, `CLEAR`, expiry), `punch` (simultaneous nodes, `CANDIDATE`,
//! `ACCEPT`/`FIGHT`) and [`relay`] (the relay mode).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use passive::{Passives, family_slot};
use rand::SeedableRng;
use rand::rngs::SmallRng;
pub use relay::{RELAY_LINGER, RelayError, TokenBucket};
use relay::{RelayState, Relays};
pub use server_kit::FAMILIES;
use server_kit::{Admission, Slab};
pub use server_kit::{ConnId, Refusal};
pub use shared::{RemoteState, Update};
use tracing::debug;
use wire::line::{LineError, LineFramer};
use wire::rendezvous::{Family, NtpTime, Proto, Request, Response};

use crate::config::Config;

pub mod relay;
pub mod shared;
mod stats;

use stats::verb_index;
pub use stats::{BackendStats, LimitHits, Stats, VERBS};

/// Work the driver must carry out, drained with [`Core::poll_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write [`Core::pending_output`] of this connection.
    Flush(ConnId),
    /// Write what is pending (best effort), close the socket, then call [`Core::handle_closed`].
    Close(ConnId),
    /// Read this relayed connection again, to `WouldBlock` or until [`Core::read_budget`] says
    /// 0: it was paused (flow control or rate limit) and gets no new readiness event for the
    /// bytes already waiting in the kernel.
    Read(ConnId),
    /// Everything its partner sent was written and the partner sent EOF: shut down the write
    /// side of this relayed connection (forwards the FIN). It stays open for reading.
    ShutdownWrite(ConnId),
}

/// A registration's identity: the observed IP and the port the node announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct NodeKey {
    ip: IpAddr,
    port: u16,
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", SocketAddr::new(self.ip, self.port))
    }
}

#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    framer: LineFramer,
    out: Vec<u8>,
    last_line_at: Instant,
    bad_lines: u32,
    /// This connection is the persistent link of this simultaneous registration.
    simultaneous: Option<NodeKey>,
    /// This connection waits for `FIGHT` from these simultaneous nodes.
    candidacies: Vec<NodeKey>,
    closing: bool,
    /// Complete lines received (`RELAY` is only accepted as the first).
    lines: u32,
    relay: RelayState,
}

#[derive(Debug)]
struct Simultaneous {
    port: u16,
    refreshed_at: Instant,
    conn: Option<ConnId>,
    candidates: Vec<Candidate>,
}

/// Who is waiting for a `FIGHT`: a connection here, or one on another instance of a shared
/// backend (named by that instance and its serial number for the candidacy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CandRef {
    Local(ConnId),
    Remote { inst: u64, serial: u64 },
}

#[derive(Debug)]
struct Candidate {
    conn: CandRef,
    ip: IpAddr,
    ports: Vec<u16>,
    proto: Proto,
    created_at: Instant,
    challenged: bool,
}

/// The rendezvous server's state machine. See the module docs for the driving contract.
#[derive(Debug)]
pub struct Core {
    config: Config,
    conns: Slab<Conn>,
    admission: Admission,
    /// Passive registrations, by family for uniform random sampling.
    passive: Passives,
    /// Registered passive ports by IP (ordered: an IPv6 /64 is a range, for the per-IP cap).
    passive_ports_by_ip: BTreeMap<IpAddr, Vec<u16>>,
    simultaneous: BTreeMap<IpAddr, Vec<Simultaneous>>,
    simultaneous_count: usize,
    actions: VecDeque<Action>,
    rng: SmallRng,
    next_sweep: Instant,
    sweep_interval: Duration,
    clock_base: (Instant, SystemTime),
    stats: Stats,
    relays: Relays,
    /// The latest time passed in (for durations in logs written from paths without a `now`).
    now: Instant,
    /// Set when this is one instance of several on a shared backend.
    shared: Option<shared::Shared>,
}

impl Core {
    /// A server with no connections. `now` and `wall` are the same moment on the monotonic and
    /// the wall clock; the wall clock is only used to check `ACCEPT` times.
    pub fn new(config: Config, now: Instant, wall: SystemTime) -> Self {
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        let sweep_interval = [
            Duration::from_secs(1),
            config.idle_timeout / 4,
            config.candidate_lifetime / 4,
            config.node_lifetime / 4,
            config.relay_wait_timeout / 4,
            config.relay_idle_timeout / 4,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(10));
        Core {
            admission: Admission::new(config.max_connections, config.max_connections_per_ip),
            config,
            conns: Slab::default(),
            passive: Passives::default(),
            passive_ports_by_ip: BTreeMap::new(),
            simultaneous: BTreeMap::new(),
            simultaneous_count: 0,
            actions: VecDeque::new(),
            rng,
            next_sweep: now + sweep_interval,
            sweep_interval,
            clock_base: (now, wall),
            stats: Stats::default(),
            relays: Relays::default(),
            now,
            shared: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters as of now.
    pub fn stats(&self) -> Stats {
        let (remote_registrations, instances) = self.shared_counts();
        Stats {
            backend: BackendStats {
                remote_registrations,
                instances,
                ..self.stats.backend
            },
            passive: self.passive.len(),
            passive_by_family: self.passive.counts(),
            simultaneous: self.simultaneous_count,
            relay_waiting: self.relays.waiting(),
            relay_active: self.relays.active(),
            relay_paired: self.relays.paired,
            relay_refused: self.relays.refused,
            relay_bytes: self.relays.bytes,
            relay_queued_bytes: self.relays.queued(),
            relay_queued_peak: self.relays.queued_peak(),
            accepted: self.admission.accepted(),
            refused: self.admission.refused(),
            refused_by_reason: self.admission.refused_by_reason().map(|(_, n)| n),
            open: self.admission.open(),
            ..self.stats
        }
    }

    /// A new client connected from `peer`. On refusal the driver should send
    /// `ERROR <refusal>` if it can and close the socket; nothing is kept for it.
    pub fn handle_open(&mut self, now: Instant, peer: SocketAddr) -> Result<ConnId, Refusal> {
        self.tick(now);
        self.admission.admit(peer.ip())?;
        self.stats.accepted_by_family[family_slot(peer.ip())] += 1;
        let conn = Conn {
            peer,
            framer: LineFramer::new(self.config.max_line_bytes),
            out: Vec::new(),
            last_line_at: now,
            bad_lines: 0,
            simultaneous: None,
            candidacies: Vec::new(),
            closing: false,
            lines: 0,
            relay: RelayState::None,
        };
        let id = self.conns.insert(conn);
        debug!(conn = id.0, %peer, "connection opened");
        Ok(id)
    }

    /// Bytes arrived on a connection. For a relayed connection, see also
    /// [`handle_relay_read`](Self::handle_relay_read).
    pub fn handle_data(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        self.tick(now);
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        match conn.relay {
            RelayState::None => {}
            RelayState::Waiting { .. } => return self.relay_early_data(id, data),
            RelayState::Active { .. } => return self.handle_relay_read(now, id, data, 0),
        }
        conn.framer.push(data);
        loop {
            let Some(conn) = self.live_conn(id) else {
                return;
            };
            let item = match conn.framer.next_str() {
                None => return,
                Some(Ok(line)) => Ok(line.parse::<Request>()),
                Some(Err(e)) => Err(e),
            };
            conn.last_line_at = now;
            conn.lines = conn.lines.saturating_add(1);
            match item {
                Ok(Ok(request)) => {
                    self.stats.lines += 1;
                    self.stats.requests[verb_index(&request)] += 1;
                    self.handle_request(now, id, request);
                }
                Ok(Err(parse_error)) => self.bad_line(id, &parse_error),
                Err(e @ LineError::NotUtf8 { .. }) => self.bad_line(id, &e),
                Err(e @ LineError::TooLong { .. }) => {
                    self.stats.bad_lines += 1;
                    self.stats.limit_hits.line_too_long += 1;
                    self.send(id, &Response::error(&e));
                    self.close(id, "line over the cap");
                    return;
                }
            }
        }
    }

    /// The peer closed its side (a read returned 0). A relayed connection stays open until
    /// its partner is done too (the FIN is forwarded); any other is closed.
    pub fn handle_eof(&mut self, now: Instant, id: ConnId) {
        self.tick(now);
        if !self.relay_eof(now, id) {
            self.close(id, "closed by peer");
        }
    }

    /// A read or write on the connection failed (`why` says how): it is dead.
    pub fn handle_failed(&mut self, now: Instant, id: ConnId, why: &dyn fmt::Display) {
        self.tick(now);
        let why = why.to_string();
        if !self.relay_failed(now, id, &why) {
            self.close(id, &format!("failed: {why}"));
        }
    }

    /// The server is stopping: every session ends, every connection is closed.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.tick(now);
        self.relay_shutdown();
        for id in self.open_connections() {
            self.close(id, "server shutting down");
        }
    }

    /// The driver has closed the socket of a connection it was told to close; its id may be
    /// reused from now on.
    pub fn handle_closed(&mut self, id: ConnId) {
        self.conns.remove(id);
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Instant {
        [self.relays.next_timer(), self.shared_timeout()]
            .into_iter()
            .flatten()
            .fold(self.next_sweep, Instant::min)
    }

    /// Time passed: resume rate-limited relays, expire registrations, candidates and relay
    /// waits, close idle connections and relay sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        self.relay_timers(now);
        self.shared_timers(now);
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + self.sweep_interval;
        self.expire(now);
        self.relay_expire(now);
    }

    fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Bytes waiting to be written to a connection (for a relayed one: the next contiguous
    /// part of its queue; write, [`consume_output`](Self::consume_output), ask again).
    pub fn pending_output(&self, id: ConnId) -> &[u8] {
        if let Some(queued) = self.relay_output(id) {
            return queued;
        }
        self.conns.get(id).map_or(&[], |conn| &conn.out)
    }

    /// The driver wrote the first `n` bytes of [`pending_output`](Self::pending_output).
    pub fn consume_output(&mut self, now: Instant, id: ConnId, n: usize) {
        self.tick(now);
        if self.relay_consumed(now, id, n) {
            return;
        }
        if let Some(conn) = self.conns.get_mut(id) {
            conn.out.drain(..n.min(conn.out.len()));
            if conn.out.is_empty() && conn.out.capacity() > 4096 {
                conn.out = Vec::new();
            }
        }
    }

    /// Every open connection, for shutdown.
    pub fn open_connections(&self) -> Vec<ConnId> {
        self.conns.ids()
    }

    fn live_conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        match self.conns.get_mut(id) {
            Some(conn) if !conn.closing => Some(conn),
            _ => None,
        }
    }

    fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.conns.get(id).map(|conn| conn.peer)
    }

    fn unix_now(&self, now: Instant) -> f64 {
        let wall = self.clock_base.1 + now.saturating_duration_since(self.clock_base.0);
        wall.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    fn handle_request(&mut self, now: Instant, id: ConnId, request: Request) {
        let Some(peer) = self.peer(id) else { return };
        // Any line from a simultaneous node's persistent connection shows it is alive.
        if let Some(conn) = self.conns.get(id)
            && let Some(key) = conn.simultaneous
            && let Some(node) = self.simultaneous_mut(key)
        {
            node.refreshed_at = now;
        }
        match request {
            Request::Bootstrap { count, own_port } => {
                let count = usize::from(count);
                self.reply_bootstrap(now, id, peer.ip(), Family::Ipv4, count, own_port);
            }
            Request::BootstrapFamily {
                family,
                count,
                own_port,
            } => {
                let count = usize::from(count);
                self.reply_bootstrap(now, id, peer.ip(), family, count, own_port);
            }
            Request::PassiveReady { port, .. } => self.register_passive(now, id, peer, port),
            Request::SimultaneousReady { port, .. } => {
                self.register_simultaneous(now, id, peer, port);
            }
            Request::SourceTcp { .. } => {
                self.send(id, &Response::RemoteTcp { port: peer.port() });
            }
            Request::SourceAddr => {
                let time = NtpTime::new(self.unix_now(now));
                match time {
                    Some(time) => self.send(id, &Response::RemoteAddr { addr: peer, time }),
                    None => self.refuse(id, "SOURCE ADDR: the server's clock is before 1970"),
                }
            }
            Request::Candidate { node, proto, ports } => {
                self.add_candidate(now, id, peer, node, proto, ports);
            }
            Request::Accept {
                client_ip,
                ports,
                proto,
                ntp_time,
            } => self.accept(now, id, peer, client_ip, ports, proto, ntp_time),
            Request::Clear { port } => self.clear(peer.ip(), port),
            Request::Quit => self.close(id, "QUIT"),
            Request::Relay { token } => {
                let line = self.conns.get(id).map_or(0, |c| c.lines);
                self.relay_request(now, id, peer, token, line);
            }
        }
    }

    fn bad_line(&mut self, id: ConnId, reason: &dyn fmt::Display) {
        self.stats.bad_lines += 1;
        self.send(id, &Response::error(reason));
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        conn.bad_lines += 1;
        if conn.bad_lines >= self.config.max_bad_lines {
            self.stats.limit_hits.bad_lines += 1;
            self.close(id, "too many malformed lines");
        }
    }

    fn refuse(&mut self, id: ConnId, reason: &str) {
        self.stats.bad_lines += 1;
        self.send(id, &Response::Error(reason.to_string()));
    }

    /// Queues a reply; a client whose unread replies pass the cap is disconnected.
    fn send(&mut self, id: ConnId, response: &Response) {
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        let before = conn.out.len();
        // Writing into a Vec cannot fail.
        let _ = write!(conn.out, "{response}\r\n");
        self.queued(id, before);
    }

    /// Queues an already encoded reply line (terminator included).
    fn send_bytes(&mut self, id: ConnId, line: &[u8]) {
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        let before = conn.out.len();
        conn.out.extend_from_slice(line);
        self.queued(id, before);
    }

    /// After appending to a connection's output (which held `before` bytes): enforce the
    /// output cap and ask the driver to flush.
    fn queued(&mut self, id: ConnId, before: usize) {
        let limit = self.config.max_output_bytes;
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        if conn.out.len() > limit {
            conn.out.truncate(before);
            self.stats.limit_hits.output_cap += 1;
            self.close(id, "not reading its replies (output cap reached)");
            return;
        }
        if before == 0 {
            self.actions.push_back(Action::Flush(id));
        }
    }

    /// Detaches a connection from every table and asks the driver to close it.
    fn close(&mut self, id: ConnId, reason: &str) {
        if self.live_conn(id).is_none() || self.relay_detach(id, reason) {
            // Gone already, or relayed: ending its session closed it.
            return;
        }
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        conn.closing = true;
        let peer = conn.peer;
        let simultaneous = conn.simultaneous.take();
        let candidacies = std::mem::take(&mut conn.candidacies);
        debug!(conn = id.0, %peer, reason, "connection closing");
        if let Some(key) = simultaneous
            && let Some(node) = self.simultaneous_mut(key)
            && node.conn == Some(id)
        {
            node.conn = None;
        }
        for key in candidacies {
            if let Some(node) = self.simultaneous_mut(key) {
                node.candidates.retain(|c| c.conn != CandRef::Local(id));
            }
        }
        self.admission.release(peer.ip());
        self.actions.push_back(Action::Close(id));
    }
}

mod passive;
mod punch;
mod registry;
#[cfg(test)]
mod tests;
