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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use node::proto::line::{LineError, LineFramer};
use node::proto::rendezvous::{NodeEntry, NodeTarget, NodeType, NtpTime, Proto, Request, Response};
use rand::SeedableRng;
use rand::rngs::SmallRng;
pub use relay::{RELAY_LINGER, RelayError, TokenBucket};
use relay::{RelayState, Relays};
use tracing::{debug, info};

use crate::config::Config;

pub mod relay;

/// Identifies one client connection while it is open. Ids are reused after
/// [`Core::handle_closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub usize);

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

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    ServerFull {
        /// The configured limit.
        limit: usize,
    },
    /// `max_connections_per_ip` reached for this IP.
    TooManyFromIp {
        /// The client's IP.
        ip: IpAddr,
        /// The configured limit.
        limit: usize,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ServerFull { limit } => {
                write!(f, "server full ({limit} connections), try later")
            }
            Refusal::TooManyFromIp { ip, limit } => {
                write!(f, "too many connections from {ip} (limit {limit})")
            }
        }
    }
}

/// Counters for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused by a limit.
    pub refused: u64,
    /// Connections open now.
    pub open: usize,
    /// Well-formed lines handled.
    pub lines: u64,
    /// Lines answered with `ERROR`.
    pub bad_lines: u64,
    /// Passive registrations now.
    pub passive: usize,
    /// Simultaneous registrations now.
    pub simultaneous: usize,
    /// Relay connections parked, waiting for their peer's `RELAY`.
    pub relay_waiting: usize,
    /// Relay sessions (two spliced connections) now.
    pub relay_active: usize,
    /// Relay sessions paired since start.
    pub relay_paired: u64,
    /// `RELAY` requests refused, and waits that timed out.
    pub relay_refused: u64,
    /// Payload bytes forwarded by the relay since start (both directions).
    pub relay_bytes: u64,
    /// Bytes the relay holds now: queued for a peer, or sent before the pairing.
    pub relay_queued_bytes: usize,
    /// The most `relay_queued_bytes` has been since start.
    pub relay_queued_peak: usize,
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
struct Passive {
    key: NodeKey,
    registered_at: Instant,
    /// This entry as it appears in a `NODES` reply (`p:<ip>:<port> `), rendered once at
    /// registration so that a `BOOTSTRAP` reply is a copy of bytes, not formatting.
    wire: Box<[u8]>,
}

#[derive(Debug)]
struct Simultaneous {
    port: u16,
    refreshed_at: Instant,
    conn: Option<ConnId>,
    candidates: Vec<Candidate>,
}

#[derive(Debug)]
struct Candidate {
    conn: ConnId,
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
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    per_ip: HashMap<IpAddr, usize>,
    /// Passive registrations, in a vector for uniform random sampling.
    passive: Vec<Passive>,
    passive_index: HashMap<NodeKey, usize>,
    passive_ports_by_ip: HashMap<IpAddr, Vec<u16>>,
    simultaneous: HashMap<IpAddr, Vec<Simultaneous>>,
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
            config,
            conns: Vec::new(),
            free: Vec::new(),
            per_ip: HashMap::new(),
            passive: Vec::new(),
            passive_index: HashMap::new(),
            passive_ports_by_ip: HashMap::new(),
            simultaneous: HashMap::new(),
            simultaneous_count: 0,
            actions: VecDeque::new(),
            rng,
            next_sweep: now + sweep_interval,
            sweep_interval,
            clock_base: (now, wall),
            stats: Stats::default(),
            relays: Relays::default(),
            now,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters as of now.
    pub fn stats(&self) -> Stats {
        Stats {
            passive: self.passive.len(),
            simultaneous: self.simultaneous_count,
            relay_waiting: self.relays.waiting(),
            relay_active: self.relays.active(),
            relay_paired: self.relays.paired,
            relay_refused: self.relays.refused,
            relay_bytes: self.relays.bytes,
            relay_queued_bytes: self.relays.queued(),
            relay_queued_peak: self.relays.queued_peak(),
            ..self.stats
        }
    }

    /// A new client connected from `peer`. On refusal the driver should send
    /// `ERROR <refusal>` if it can and close the socket; nothing is kept for it.
    pub fn handle_open(&mut self, now: Instant, peer: SocketAddr) -> Result<ConnId, Refusal> {
        self.tick(now);
        if self.stats.open >= self.config.max_connections {
            self.stats.refused += 1;
            return Err(Refusal::ServerFull {
                limit: self.config.max_connections,
            });
        }
        let from_ip = self.per_ip.entry(peer.ip()).or_insert(0);
        if *from_ip >= self.config.max_connections_per_ip {
            self.stats.refused += 1;
            return Err(Refusal::TooManyFromIp {
                ip: peer.ip(),
                limit: self.config.max_connections_per_ip,
            });
        }
        *from_ip += 1;
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
        let id = if let Some(slot) = self.free.pop() {
            self.conns[slot] = Some(conn);
            slot
        } else {
            self.conns.push(Some(conn));
            self.conns.len() - 1
        };
        self.stats.accepted += 1;
        self.stats.open += 1;
        debug!(conn = id, %peer, "connection opened");
        Ok(ConnId(id))
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
                    self.handle_request(now, id, request);
                }
                Ok(Err(parse_error)) => self.bad_line(id, &parse_error),
                Err(e @ LineError::NotUtf8 { .. }) => self.bad_line(id, &e),
                Err(e @ LineError::TooLong { .. }) => {
                    self.stats.bad_lines += 1;
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
        if let Some(slot) = self.conns.get_mut(id.0)
            && slot.take().is_some()
        {
            self.free.push(id.0);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Instant {
        match self.relays.next_timer() {
            Some(at) => at.min(self.next_sweep),
            None => self.next_sweep,
        }
    }

    /// Time passed: resume rate-limited relays, expire registrations, candidates and relay
    /// waits, close idle connections and relay sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        self.relay_timers(now);
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
        match self.conns.get(id.0) {
            Some(Some(conn)) => &conn.out,
            _ => &[],
        }
    }

    /// The driver wrote the first `n` bytes of [`pending_output`](Self::pending_output).
    pub fn consume_output(&mut self, now: Instant, id: ConnId, n: usize) {
        self.tick(now);
        if self.relay_consumed(now, id, n) {
            return;
        }
        if let Some(Some(conn)) = self.conns.get_mut(id.0) {
            conn.out.drain(..n.min(conn.out.len()));
            if conn.out.is_empty() && conn.out.capacity() > 4096 {
                conn.out = Vec::new();
            }
        }
    }

    /// Every open connection, for shutdown.
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

    fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        match self.conns.get(id.0) {
            Some(Some(conn)) => Some(conn.peer),
            _ => None,
        }
    }

    fn unix_now(&self, now: Instant) -> f64 {
        let wall = self.clock_base.1 + now.saturating_duration_since(self.clock_base.0);
        wall.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    fn handle_request(&mut self, now: Instant, id: ConnId, request: Request) {
        let Some(peer) = self.peer(id) else { return };
        // Any line from a simultaneous node's persistent connection shows it is alive.
        if let Some(Some(conn)) = self.conns.get(id.0)
            && let Some(key) = conn.simultaneous
            && let Some(node) = self.simultaneous_mut(key)
        {
            node.refreshed_at = now;
        }
        match request {
            Request::Bootstrap { count, own_port } => {
                self.reply_bootstrap(now, id, peer.ip(), usize::from(count), own_port);
            }
            Request::PassiveReady { port, .. } => self.register_passive(now, id, peer, port),
            Request::SimultaneousReady { port, .. } => {
                self.register_simultaneous(now, id, peer, port);
            }
            Request::SourceTcp { .. } => {
                self.send(id, &Response::RemoteTcp { port: peer.port() });
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
                let line = self.conns[id.0].as_ref().map_or(0, |c| c.lines);
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
                node.candidates.retain(|c| c.conn != id);
            }
        }
        if let Some(n) = self.per_ip.get_mut(&peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&peer.ip());
            }
        }
        self.stats.open -= 1;
        self.actions.push_back(Action::Close(id));
    }

    fn registrations_at(&self, ip: IpAddr) -> usize {
        self.passive_ports_by_ip.get(&ip).map_or(0, Vec::len)
            + self.simultaneous.get(&ip).map_or(0, Vec::len)
    }

    /// Answers `BOOTSTRAP` with up to `count` random passive nodes, never the asker: without
    /// `own_port` the asker is everyone at its IP (PyP2P), with it only that registration.
    ///
    /// The hot path of the server: the reply is assembled from pre-rendered entries straight
    /// into the output buffer. Its bytes are exactly `Response::Nodes(..)`'s `Display`.
    fn reply_bootstrap(
        &mut self,
        now: Instant,
        id: ConnId,
        asker: IpAddr,
        count: usize,
        own_port: Option<u16>,
    ) {
        let excluded_bound = self.passive_ports_by_ip.get(&asker).map_or(0, Vec::len);
        let k = (count + excluded_bound).min(self.passive.len());
        let lifetime = self.config.node_lifetime;
        let picks = rand::seq::index::sample(&mut self.rng, self.passive.len(), k);
        let mut reply = Vec::with_capacity(8 + count * 24);
        reply.extend_from_slice(b"NODES ");
        let mut found = 0;
        for i in picks {
            let p = &self.passive[i];
            let is_asker = p.key.ip == asker && own_port.is_none_or(|o| o == p.key.port);
            if is_asker || now.saturating_duration_since(p.registered_at) >= lifetime {
                continue;
            }
            reply.extend_from_slice(&p.wire);
            found += 1;
            if found == count {
                break;
            }
        }
        if found == 0 {
            reply.truncate(0);
            reply.extend_from_slice(b"NODES EMPTY");
        }
        reply.extend_from_slice(b"\r\n");
        self.send_bytes(id, &reply);
    }

    fn register_passive(&mut self, now: Instant, id: ConnId, peer: SocketAddr, port: u16) {
        if port == 0 {
            self.refuse(id, "PASSIVE READY: port must be in 1..=65535, got 0");
            return;
        }
        let key = NodeKey {
            ip: peer.ip(),
            port,
        };
        if let Some(&i) = self.passive_index.get(&key) {
            self.passive[i].registered_at = now;
            return;
        }
        if self.registrations_at(key.ip) >= self.config.max_registrations_per_ip {
            let text = format!(
                "PASSIVE READY: too many registrations from {} (limit {})",
                key.ip, self.config.max_registrations_per_ip
            );
            self.refuse(id, &text);
            return;
        }
        self.passive_index.insert(key, self.passive.len());
        let wire = format!(
            "{} ",
            NodeEntry {
                node_type: NodeType::Passive,
                addr: SocketAddr::new(key.ip, key.port),
            }
        );
        self.passive.push(Passive {
            key,
            registered_at: now,
            wire: wire.into_bytes().into_boxed_slice(),
        });
        self.passive_ports_by_ip
            .entry(key.ip)
            .or_default()
            .push(key.port);
        debug!(node = %key, "passive node registered");
    }

    fn remove_passive(&mut self, key: NodeKey) {
        let Some(i) = self.passive_index.remove(&key) else {
            return;
        };
        self.passive.swap_remove(i);
        if let Some(moved) = self.passive.get(i) {
            self.passive_index.insert(moved.key, i);
        }
        if let Some(ports) = self.passive_ports_by_ip.get_mut(&key.ip) {
            ports.retain(|&p| p != key.port);
            if ports.is_empty() {
                self.passive_ports_by_ip.remove(&key.ip);
            }
        }
        debug!(node = %key, "passive node removed");
    }

    fn simultaneous_mut(&mut self, key: NodeKey) -> Option<&mut Simultaneous> {
        self.simultaneous
            .get_mut(&key.ip)?
            .iter_mut()
            .find(|n| n.port == key.port)
    }

    fn register_simultaneous(&mut self, now: Instant, id: ConnId, peer: SocketAddr, port: u16) {
        let key = NodeKey {
            ip: peer.ip(),
            port,
        };
        let previous = self.conns[id.0].as_ref().and_then(|c| c.simultaneous);
        if let Some(old) = previous
            && old != key
            && let Some(node) = self.simultaneous_mut(old)
        {
            node.conn = None;
        }
        let replaced_conn = if let Some(node) = self.simultaneous_mut(key) {
            node.refreshed_at = now;
            node.conn.replace(id)
        } else {
            if self.registrations_at(key.ip) >= self.config.max_registrations_per_ip {
                let text = format!(
                    "SIMULTANEOUS READY: too many registrations from {} (limit {})",
                    key.ip, self.config.max_registrations_per_ip
                );
                self.refuse(id, &text);
                return;
            }
            self.simultaneous
                .entry(key.ip)
                .or_default()
                .push(Simultaneous {
                    port,
                    refreshed_at: now,
                    conn: Some(id),
                    candidates: Vec::new(),
                });
            self.simultaneous_count += 1;
            debug!(node = %key, "simultaneous node registered");
            None
        };
        if let Some(old) = replaced_conn
            && old != id
            && let Some(Some(conn)) = self.conns.get_mut(old.0)
        {
            conn.simultaneous = None;
        }
        if let Some(Some(conn)) = self.conns.get_mut(id.0) {
            conn.simultaneous = Some(key);
        }
        // Candidates that arrived while the node was stale or away are challenged now.
        self.challenge_pending(key, id);
    }

    fn challenge_pending(&mut self, key: NodeKey, node_conn: ConnId) {
        let Some(node) = self.simultaneous_mut(key) else {
            return;
        };
        let mut challenges = Vec::new();
        for candidate in node.candidates.iter_mut().filter(|c| !c.challenged) {
            candidate.challenged = true;
            challenges.push(Response::Challenge {
                client_ip: candidate.ip,
                ports: candidate.ports.clone(),
                proto: candidate.proto,
            });
        }
        for challenge in challenges {
            self.send(node_conn, &challenge);
        }
    }

    /// The connected registration a `CANDIDATE` names: by exact address, or the most recently
    /// refreshed connected one at an IP.
    fn find_target(&self, target: NodeTarget) -> Option<NodeKey> {
        let nodes = self.simultaneous.get(&target.ip())?;
        let node = match target {
            NodeTarget::Addr(addr) => nodes.iter().find(|n| n.port == addr.port()),
            NodeTarget::Ip(_) => nodes
                .iter()
                .filter(|n| n.conn.is_some())
                .max_by_key(|n| n.refreshed_at)
                .or_else(|| nodes.iter().max_by_key(|n| n.refreshed_at)),
        }?;
        Some(NodeKey {
            ip: target.ip(),
            port: node.port,
        })
    }

    fn add_candidate(
        &mut self,
        now: Instant,
        id: ConnId,
        peer: SocketAddr,
        target: NodeTarget,
        proto: Proto,
        ports: Vec<u16>,
    ) {
        let Some(key) = self.find_target(target) else {
            self.refuse(
                id,
                &format!("CANDIDATE: no simultaneous node registered at {target}"),
            );
            return;
        };
        let max_candidates = self.config.max_candidates_per_node;
        let candidate_lifetime = self.config.candidate_lifetime;
        let Some(node) = self.simultaneous_mut(key) else {
            return;
        };
        let Some(node_conn) = node.conn else {
            self.refuse(
                id,
                &format!("CANDIDATE: simultaneous node {key} is not connected"),
            );
            return;
        };
        if node_conn == id {
            self.refuse(id, "CANDIDATE: a node cannot be its own candidate");
            return;
        }
        // One pending candidate per client IP, as PyP2P: a newer one replaces it.
        let mut replaced = None;
        if let Some(i) = node.candidates.iter().position(|c| c.ip == peer.ip()) {
            replaced = Some(node.candidates.remove(i).conn);
        }
        if node.candidates.len() >= max_candidates {
            self.refuse(
                id,
                &format!(
                    "CANDIDATE: too many pending candidates for {key} (limit {max_candidates})"
                ),
            );
            return;
        }
        let stale = now.saturating_duration_since(node.refreshed_at) > candidate_lifetime;
        node.candidates.push(Candidate {
            conn: id,
            ip: peer.ip(),
            ports: ports.clone(),
            proto,
            created_at: now,
            challenged: !stale,
        });
        if let Some(old) = replaced
            && old != id
            && let Some(Some(conn)) = self.conns.get_mut(old.0)
        {
            conn.candidacies.retain(|&k| k != key);
        }
        if let Some(Some(conn)) = self.conns.get_mut(id.0)
            && !conn.candidacies.contains(&key)
        {
            conn.candidacies.push(key);
        }
        self.send(id, &Response::PredictionSet);
        if stale {
            // PyP2P: the node's NAT mapping may be gone; it re-registers, then gets the challenge.
            self.send(node_conn, &Response::Reconnect);
        } else {
            self.send(
                node_conn,
                &Response::Challenge {
                    client_ip: peer.ip(),
                    ports,
                    proto,
                },
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        now: Instant,
        id: ConnId,
        peer: SocketAddr,
        client_ip: IpAddr,
        ports: Vec<u16>,
        proto: Proto,
        ntp_time: NtpTime,
    ) {
        let own = self.conns[id.0].as_ref().and_then(|c| c.simultaneous);
        let key = own.or_else(|| self.find_target(NodeTarget::Ip(peer.ip())));
        let Some(key) = key else {
            self.refuse(id, "ACCEPT: you are not a registered simultaneous node");
            return;
        };
        let server_time = self.unix_now(now);
        let tolerance = self.config.ntp_tolerance.as_secs_f64();
        if (ntp_time.secs() - server_time).abs() > tolerance {
            self.refuse(
                id,
                &format!(
                    "ACCEPT: ntp_time {ntp_time} is more than {tolerance} s from server time {server_time:.3}"
                ),
            );
            return;
        }
        let Some(node) = self.simultaneous_mut(key) else {
            return;
        };
        let Some(i) = node.candidates.iter().rposition(|c| c.ip == client_ip) else {
            self.refuse(
                id,
                &format!("ACCEPT: no pending candidate from {client_ip}"),
            );
            return;
        };
        let candidate = node.candidates.remove(i);
        if let Some(Some(conn)) = self.conns.get_mut(candidate.conn.0) {
            conn.candidacies.retain(|&k| k != key);
        }
        info!(node = %key, candidate = %client_ip, "hole punch accepted, sending FIGHT");
        self.send(
            candidate.conn,
            &Response::Fight {
                node_ip: key.ip,
                ports,
                proto,
                ntp_time,
            },
        );
    }

    fn clear(&mut self, ip: IpAddr, port: Option<u16>) {
        let passive_ports: Vec<u16> = match port {
            Some(p) => vec![p],
            None => self
                .passive_ports_by_ip
                .get(&ip)
                .cloned()
                .unwrap_or_default(),
        };
        for p in passive_ports {
            self.remove_passive(NodeKey { ip, port: p });
        }
        let Some(nodes) = self.simultaneous.get_mut(&ip) else {
            return;
        };
        let mut removed = Vec::new();
        let mut i = 0;
        while i < nodes.len() {
            if port.is_none_or(|p| p == nodes[i].port) {
                removed.push(nodes.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if nodes.is_empty() {
            self.simultaneous.remove(&ip);
        }
        for node in removed {
            self.forget_simultaneous(
                NodeKey {
                    ip,
                    port: node.port,
                },
                node,
            );
        }
    }

    /// Unlinks connections from a simultaneous registration that was just removed.
    fn forget_simultaneous(&mut self, key: NodeKey, node: Simultaneous) {
        self.simultaneous_count -= 1;
        if let Some(conn_id) = node.conn
            && let Some(Some(conn)) = self.conns.get_mut(conn_id.0)
            && conn.simultaneous == Some(key)
        {
            conn.simultaneous = None;
        }
        for candidate in node.candidates {
            if let Some(Some(conn)) = self.conns.get_mut(candidate.conn.0) {
                conn.candidacies.retain(|&k| k != key);
            }
        }
        debug!(node = %key, "simultaneous node removed");
    }

    fn expire(&mut self, now: Instant) {
        let node_lifetime = self.config.node_lifetime;
        let candidate_lifetime = self.config.candidate_lifetime;
        let expired: Vec<NodeKey> = self
            .passive
            .iter()
            .filter(|p| now.saturating_duration_since(p.registered_at) >= node_lifetime)
            .map(|p| p.key)
            .collect();
        for key in expired {
            self.remove_passive(key);
        }

        let mut gone_nodes = Vec::new();
        let mut gone_candidacies = Vec::new();
        self.simultaneous.retain(|&ip, nodes| {
            let mut i = 0;
            while i < nodes.len() {
                let node = &mut nodes[i];
                let key = NodeKey {
                    ip,
                    port: node.port,
                };
                node.candidates.retain(|c| {
                    let keep = now.saturating_duration_since(c.created_at) <= candidate_lifetime;
                    if !keep {
                        gone_candidacies.push((c.conn, key));
                    }
                    keep
                });
                if now.saturating_duration_since(node.refreshed_at) >= node_lifetime {
                    gone_nodes.push((key, nodes.swap_remove(i)));
                } else {
                    i += 1;
                }
            }
            !nodes.is_empty()
        });
        for (conn_id, key) in gone_candidacies {
            if let Some(Some(conn)) = self.conns.get_mut(conn_id.0) {
                conn.candidacies.retain(|&k| k != key);
            }
        }
        for (key, node) in gone_nodes {
            self.forget_simultaneous(key, node);
        }

        let idle_timeout = self.config.idle_timeout;
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.as_ref()?;
                // Relay connections have their own timeouts (wait, relay idle).
                let held = c.simultaneous.is_some()
                    || !c.candidacies.is_empty()
                    || !matches!(c.relay, RelayState::None);
                let idle = now.saturating_duration_since(c.last_line_at) >= idle_timeout;
                (!c.closing && !held && idle).then_some(ConnId(i))
            })
            .collect();
        for id in idle {
            self.close(id, "idle timeout");
        }
    }
}

#[cfg(test)]
mod tests;
