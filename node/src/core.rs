//! The node's sans-IO core: overlay, flooding, bootstrap/advertise scheduling, NAT detection.
//!
//! [`Core`] never touches a socket or a clock. The driver ([`crate::net::Net`]) tells it what
//! happened (`handle_*`, each with `now`) and carries out what it asks for ([`Core::poll_output`]):
//! dial an address, send a line, close a connection, deliver a line to the application, or
//! make a short request to a rendezvous server ([`Output::Query`]). Timers come out of
//! [`Core::poll_timeout`] and go back in through [`Core::handle_timeout`].
//!
//! **Drain contract:** after any `handle_*` call or [`Core::broadcast`], the driver drains
//! [`Core::poll_output`] until it returns `None` before it waits for I/O again.
//!
//! Plain application lines take a shortcut: [`Core::handle_line`] returns
//! [`LineVerdict::Deliver`] and the driver hands the line to the application itself, so the hot
//! path allocates nothing here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::proto::nat::{self, NatMapping};
use crate::proto::overlay::{CONTROL_PREFIX, Control, MessageId, PeerId, SeenCache};
use crate::proto::rendezvous::{NodeType, Request, Response};
use crate::unl::{NODE_ID_BYTES, NodeId, Unl};

mod punch;
mod unl_connect;

use crate::connect::{ConnectId, ConnectOutcome};
use punch::{Registration, SessionRole};
use unl_connect::{Attempt, MailboxClient, RelayRole, ReverseDial};

/// A connection, numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A request to a rendezvous server, numbered by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryId(pub u64);

/// A line session with a rendezvous server (the persistent registration of a simultaneous
/// node, a hole-punch candidacy, a port probe), numbered by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A relayed connection being opened, numbered by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u64);

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The peer connected to us.
    Inbound,
    /// We connected to the peer.
    Outbound,
}

/// What a rendezvous request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// `BOOTSTRAP`: find passive nodes to connect to.
    Bootstrap,
    /// `PASSIVE READY`: register this node so others find it.
    Advertise,
    /// `CLEAR`: remove our registration.
    Clear,
    /// `SOURCE TCP` probe number `n` (0-based) of a NAT detection.
    NatProbe(u8),
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Job::Bootstrap => f.write_str("bootstrap"),
            Job::Advertise => f.write_str("advertise"),
            Job::Clear => f.write_str("clear"),
            Job::NatProbe(n) => write!(f, "NAT probe {}", n + 1),
        }
    }
}

/// Settings of the core (the driver's [`crate::Config`] fills them in).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Our role: passive nodes advertise themselves; active ones only dial out; simultaneous
    /// ones keep a registration with the rendezvous and answer hole-punch challenges (see
    /// [`Core::enable_simultaneous`]).
    pub node_type: NodeType,
    /// The port we accept connections on (0: none).
    pub listen_port: u16,
    /// The port others reach us on from outside when it differs from `listen_port` (a port
    /// forwarded by UPnP, NAT-PMP or by hand). Advertised, sent in `HELLO` and `CLEAR`.
    pub public_port: Option<u16>,
    /// Rendezvous servers, tried in order starting from the last one that answered.
    pub rendezvous: Vec<SocketAddr>,
    /// Inbound connections beyond this are closed at once.
    pub max_inbound: usize,
    /// Inbound connections from one IP beyond this are closed at once, so that one host
    /// cannot take every inbound slot (several nodes behind one NAT share an IP: not 1).
    pub max_inbound_per_ip: usize,
    /// Bootstrap dials until this many outbound connections are open or being opened.
    pub max_outbound: usize,
    /// `n` in `BOOTSTRAP n` (1..=100).
    pub bootstrap_count: u8,
    /// While below `max_outbound`, bootstrap again this often.
    pub rebootstrap_interval: Duration,
    /// When the last connection drops, bootstrap again this soon (but never more often).
    pub alone_rebootstrap_delay: Duration,
    /// Once advertised, register again this often (the server forgets after its node lifetime
    /// and after a restart).
    pub readvertise_interval: Duration,
    /// Hops a broadcast travels (1: only to direct neighbours).
    pub broadcast_ttl: u8,
    /// Broadcast ids remembered at most.
    pub seen_capacity: usize,
    /// How long a broadcast id is remembered.
    pub seen_lifetime: Duration,
    /// Seed for ids and shuffles (the driver passes OS randomness; tests pass a constant).
    pub seed: u64,
    /// A connect by UNL that has not succeeded after this fails.
    pub unl_connect_timeout: Duration,
    /// How long dials (LAN, direct) run alone before a reverse connect starts beside them.
    pub reverse_head_start: Duration,
    /// A reverse connect whose peer has not dialed us this long after the request was posted
    /// fails (so the relay can start): they may not be able to reach us after all.
    pub reverse_timeout: Duration,
    /// How long the second wave (reverse connect, hole punch) runs alone before a relay
    /// starts beside it (it starts at once when every other try has failed).
    pub relay_head_start: Duration,
    /// Reverse-connect and relay requests acted on per minute at most (others are refused).
    pub max_reverse_per_minute: usize,
    /// Hole-punch challenges answered per minute at most (each makes us dial the candidate).
    pub max_punch_per_minute: usize,
    /// A hole punch that has no connection this long after it started fails (and the relay,
    /// if possible, starts).
    pub punch_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            node_type: NodeType::Active,
            listen_port: 0,
            public_port: None,
            rendezvous: Vec::new(),
            max_inbound: 32,
            max_inbound_per_ip: 8,
            max_outbound: 8,
            bootstrap_count: 20,
            rebootstrap_interval: Duration::from_mins(1),
            alone_rebootstrap_delay: Duration::from_secs(5),
            readvertise_interval: Duration::from_mins(5),
            broadcast_ttl: 16,
            seen_capacity: 100_000,
            seen_lifetime: Duration::from_mins(10),
            seed: 0,
            unl_connect_timeout: Duration::from_secs(10),
            reverse_head_start: Duration::from_secs(1),
            reverse_timeout: Duration::from_secs(3),
            relay_head_start: Duration::from_secs(2),
            max_reverse_per_minute: 16,
            max_punch_per_minute: 16,
            punch_timeout: Duration::from_secs(3),
        }
    }
}

/// Something the application may want to know (drained by the driver into `Net::events`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection opened.
    Connected {
        /// The connection.
        conn: ConnId,
        /// The peer's address.
        addr: SocketAddr,
        /// Who dialed.
        direction: Direction,
    },
    /// A connection closed.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// The peer's address.
        addr: SocketAddr,
        /// Why, in words.
        reason: String,
    },
    /// A dial failed.
    DialFailed {
        /// Where to.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A bootstrap answered.
    Bootstrapped {
        /// The server that answered.
        server: SocketAddr,
        /// How many nodes it offered.
        offered: usize,
        /// How many of them we are dialing now.
        dialing: usize,
    },
    /// The server registered us as a passive node.
    Advertised {
        /// The server.
        server: SocketAddr,
        /// The source port it saw on the registering connection.
        observed_port: u16,
    },
    /// Our registration was removed.
    Cleared {
        /// The server.
        server: SocketAddr,
    },
    /// A NAT detection finished.
    NatDetected {
        /// The server asked.
        server: SocketAddr,
        /// The verdict.
        mapping: NatMapping,
        /// `(local port, observed port)` of each probe.
        probes: Vec<(u16, u16)>,
    },
    /// A connect by UNL finished (see [`crate::connect`]).
    ConnectDone(ConnectOutcome),
    /// The mailbox connection is registered and subscribed.
    MailboxUp {
        /// The dht-msg server.
        server: SocketAddr,
    },
    /// The mailbox connection failed or closed; it is retried with backoff.
    MailboxDown {
        /// The dht-msg server.
        server: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A reverse-connect request arrived in our mailbox.
    ReverseRequested {
        /// The sender's node id (`-`: unproven).
        from: String,
        /// Where we dial (when acted on).
        addr: Option<SocketAddr>,
        /// Why it was refused (`None`: we dial).
        refused: Option<String>,
    },
    /// Our simultaneous registration changed: registered (with the port the rendezvous sees
    /// for our listening port, and the round trip to it), or lost.
    Registration {
        /// The rendezvous server.
        server: SocketAddr,
        /// The external port of our listening port (`None`: not registered now).
        external_port: Option<u16>,
        /// The measured round trip to the server.
        rtt: Option<Duration>,
        /// Why it was lost (when it was).
        reason: Option<String>,
    },
    /// A hole-punch challenge arrived (we are the simultaneous node).
    Challenge {
        /// The candidate's IP.
        from: std::net::IpAddr,
        /// The ports it predicted for itself (we dial these).
        their_ports: Vec<u16>,
        /// The ports we predicted for ourselves (it dials these).
        our_ports: Vec<u16>,
        /// How long until the meeting.
        meeting_in: Duration,
        /// Why it was refused (`None`: answered with `ACCEPT`).
        refused: Option<String>,
    },
    /// Every rendezvous server failed for `job`.
    RendezvousFailed {
        /// What we tried to do.
        job: Job,
        /// Each server tried and what went wrong (empty: none configured).
        errors: Vec<(SocketAddr, String)>,
    },
}

/// What the core asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a TCP connection; report with [`Core::handle_open`] or [`Core::handle_dial_failed`].
    Dial {
        /// Where to.
        addr: SocketAddr,
    },
    /// Queue `line` (without terminator) on `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// The line.
        line: String,
    },
    /// Close `conn` (already forgotten by the core; do not report it back).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for the log.
        reason: String,
    },
    /// Hand `line` to the application as received on `conn`.
    Deliver {
        /// The connection it arrived on.
        conn: ConnId,
        /// The line.
        line: String,
    },
    /// Connect to `server` from a fresh local port, send `lines`, then (if `want_reply`) read
    /// one reply line; report with [`Core::handle_query_done`].
    Query {
        /// The request's id.
        id: QueryId,
        /// The rendezvous server.
        server: SocketAddr,
        /// Lines to send.
        lines: Vec<String>,
        /// Whether to wait for a reply line.
        want_reply: bool,
    },
    /// Open the persistent mailbox connection to `server`; report with
    /// [`Core::handle_mailbox_open`] / [`Core::handle_mailbox_closed`], and its lines with
    /// [`Core::handle_mailbox_line`].
    MailboxDial {
        /// The dht-msg server.
        server: SocketAddr,
    },
    /// Queue `line` on the mailbox connection.
    MailboxSend {
        /// The line.
        line: String,
    },
    /// Close the mailbox connection (already handled by the core; do not report it back).
    MailboxClose {
        /// Why, for the log.
        reason: String,
    },
    /// Open a line session to a rendezvous server; `bind_port`: `Some(p)` binds the local
    /// port `p` first (0: a fresh one) with `SO_REUSEADDR` and `SO_REUSEPORT`, so hole-punch
    /// dials can share it. Report with [`Core::handle_session_open`] /
    /// [`Core::handle_session_closed`], and lines with [`Core::handle_session_line`].
    SessionOpen {
        /// The session.
        session: SessionId,
        /// The rendezvous server.
        server: SocketAddr,
        /// The local port to bind (with reuse), if any.
        bind_port: Option<u16>,
    },
    /// Queue `line` on a session.
    SessionSend {
        /// The session.
        session: SessionId,
        /// The line.
        line: String,
    },
    /// Close a session (already forgotten by the core; do not report it back).
    SessionClose {
        /// The session.
        session: SessionId,
        /// Why, for the log.
        reason: String,
    },
    /// A hole-punch dial: at `at`, connect from local port `from_port` (bound with
    /// `SO_REUSEADDR` + `SO_REUSEPORT`) to `addr`; give up `timeout` later. Report with
    /// [`Core::handle_open`] (with `direction`) or [`Core::handle_dial_failed`].
    PunchDial {
        /// Where to.
        addr: SocketAddr,
        /// The local port to dial from.
        from_port: u16,
        /// When (the meeting time).
        at: Instant,
        /// How long the connect may take after `at`.
        timeout: Duration,
        /// How to report the connection: outbound for the candidate, inbound for the node
        /// (logically the candidate connected to it; both ends then agree who "dialed").
        direction: Direction,
    },
    /// Stop dials to these addresses that have not connected yet (pending punch dials
    /// included); they are not reported back.
    CancelDials {
        /// The addresses.
        addrs: Vec<SocketAddr>,
    },
    /// Open a relayed connection: connect to the rendezvous `server`, send `RELAY <token>`,
    /// wait for `RELAY OK`; then it is a connection like any other. Report with
    /// [`Core::handle_relay_open`] or [`Core::handle_relay_failed`].
    RelayDial {
        /// The relay.
        relay: RelayId,
        /// The rendezvous server relaying.
        server: SocketAddr,
        /// The token both ends send.
        token: crate::proto::rendezvous::RelayToken,
    },
    /// Something for the application.
    Event(Event),
}

/// What to do with a line received from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineVerdict {
    /// A plain application line: deliver it as is.
    Deliver,
    /// A control line, handled by the core (see [`Core::poll_output`]).
    Consumed,
}

/// The outcome of a rendezvous request, reported by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryReply {
    /// The local address the request was made from.
    pub local: SocketAddr,
    /// The first line the server sent back (`None` when no reply was wanted).
    pub line: Option<String>,
}

#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    direction: Direction,
    /// From the peer's HELLO (PyP2P peers never send one).
    id: Option<PeerId>,
    /// Where the peer accepts connections (from HELLO; for outbound peers, `addr`).
    listen: Option<SocketAddr>,
    /// Its UNL node id, from its `IAM`.
    node: Option<NodeId>,
}

#[derive(Debug)]
struct PendingQuery {
    job: Job,
    /// Index into the server list of the server asked.
    server: usize,
    /// Servers asked so far for this job, including this one.
    tried: usize,
    errors: Vec<(SocketAddr, String)>,
}

/// A repeating job (bootstrap or advertise): wanted, running, when next.
#[derive(Debug, Default)]
struct Schedule {
    enabled: bool,
    in_flight: bool,
    last_started: Option<Instant>,
    next_at: Option<Instant>,
}

/// The sans-IO node (see the module docs).
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    me: PeerId,
    rng: StdRng,
    conns: HashMap<ConnId, Peer>,
    by_peer: HashMap<PeerId, ConnId>,
    dialing: HashSet<SocketAddr>,
    /// Addresses that turned out to be ourselves.
    self_addrs: HashSet<SocketAddr>,
    seen: SeenCache,
    out: VecDeque<Output>,
    next_query: u64,
    queries: HashMap<QueryId, PendingQuery>,
    /// Index of the server that answered last (tried first).
    preferred: usize,
    bootstrap: Schedule,
    advertise: Schedule,
    /// `Some` while a NAT detection runs.
    nat_probes: Option<Vec<(u16, u16)>>,
    /// Our UNL node id (random, printable).
    node_id: NodeId,
    /// The UNL we hand out (set by the driver).
    local_unl: Option<Unl>,
    mailbox: Option<MailboxClient>,
    attempts: HashMap<ConnectId, Attempt>,
    next_attempt: u64,
    /// Dials made for a connect.
    attempt_dials: HashMap<SocketAddr, ConnectId>,
    /// Open connections made for a connect, waiting for the peer's `IAM`.
    conn_attempt: HashMap<ConnId, ConnectId>,
    /// Reverse connects we make because someone asked, by the address dialed.
    reverse_dials: HashMap<SocketAddr, ReverseDial>,
    /// Reverse-connect connections we dialed: the node id the peer must show.
    conn_expect: HashMap<ConnId, NodeId>,
    /// When we acted on recent reverse-connect requests (the rate limit's window).
    reverse_window: VecDeque<(Instant, NodeId)>,
    /// Our NAT mapping, from the last NAT detection (used to predict punch ports).
    nat_mapping: Option<NatMapping>,
    /// Line sessions with rendezvous servers.
    sessions: HashMap<SessionId, SessionRole>,
    next_session: u64,
    /// Our registration as a simultaneous node (when enabled).
    registration: Option<Registration>,
    /// Dials we make as the simultaneous node answering a challenge, by address: the
    /// challenge they belong to (the others are cancelled when one connects).
    challenge_dials: HashMap<SocketAddr, u64>,
    next_challenge: u64,
    /// When we answered recent challenges (the rate limit's window).
    punch_window: VecDeque<Instant>,
    /// Relayed connections being opened.
    relays: HashMap<RelayId, RelayRole>,
    next_relay: u64,
    /// Connections that run through a relay.
    relayed: HashSet<ConnId>,
}

impl Core {
    /// A core with no connections.
    pub fn new(config: CoreConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let me = PeerId(rng.random());
        // A separate generator, so that adding the node id changed no other random choice.
        let mut id_rng = StdRng::seed_from_u64(config.seed ^ 0x5eed_0f1d_u64);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut raw = [0u8; NODE_ID_BYTES];
        for b in &mut raw {
            *b = alphabet[id_rng.random_range(0..alphabet.len())];
        }
        let node_id = NodeId::from_bytes(raw).unwrap_or_else(|| unreachable!("printable bytes"));
        Core {
            seen: SeenCache::new(config.seen_capacity, config.seen_lifetime),
            config,
            me,
            rng,
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            dialing: HashSet::new(),
            self_addrs: HashSet::new(),
            out: VecDeque::new(),
            next_query: 0,
            queries: HashMap::new(),
            preferred: 0,
            bootstrap: Schedule::default(),
            advertise: Schedule::default(),
            nat_probes: None,
            node_id,
            local_unl: None,
            mailbox: None,
            attempts: HashMap::new(),
            next_attempt: 0,
            attempt_dials: HashMap::new(),
            conn_attempt: HashMap::new(),
            reverse_dials: HashMap::new(),
            conn_expect: HashMap::new(),
            reverse_window: VecDeque::new(),
            nat_mapping: None,
            sessions: HashMap::new(),
            next_session: 0,
            registration: None,
            challenge_dials: HashMap::new(),
            next_challenge: 0,
            punch_window: VecDeque::new(),
            relays: HashMap::new(),
            next_relay: 0,
            relayed: HashSet::new(),
        }
    }

    /// Our id in the overlay.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// The settings.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Sets the port we accept connections on (known once the driver has bound it).
    pub fn set_listen_port(&mut self, port: u16) {
        self.config.listen_port = port;
    }

    /// Sets our role and the port others reach us on (after a reachability check found, say,
    /// a UPnP-forwarded port). Takes effect at the next advertise, bootstrap and handshake.
    pub fn set_reachability(&mut self, node_type: NodeType, public_port: Option<u16>) {
        self.config.node_type = node_type;
        self.config.public_port = public_port;
    }

    /// The port we tell others to dial: the public port if one is set, else the listen port
    /// (0 when not listening).
    pub fn advertised_port(&self) -> u16 {
        if self.config.listen_port == 0 {
            return 0;
        }
        self.config.public_port.unwrap_or(self.config.listen_port)
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Who opened `conn` (for relayed and punched connections: who logically dialed).
    pub fn direction_of(&self, conn: ConnId) -> Option<Direction> {
        self.conns.get(&conn).map(|p| p.direction)
    }

    /// Whether `conn` runs through a relay.
    pub fn is_relayed(&self, conn: ConnId) -> bool {
        self.relayed.contains(&conn)
    }

    /// Open connections in `direction`.
    pub fn count(&self, direction: Direction) -> usize {
        self.conns
            .values()
            .filter(|p| p.direction == direction)
            .count()
    }

    /// Open inbound connections from `ip`.
    fn inbound_from(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.conns
            .values()
            .filter(|p| p.direction == Direction::Inbound && p.addr.ip().to_canonical() == ip)
            .count()
    }

    /// Whether `job` is still running (a request is out).
    pub fn is_running(&self, job: Job) -> bool {
        self.queries.values().any(|q| match (q.job, job) {
            (Job::NatProbe(_), Job::NatProbe(_)) => true,
            (a, b) => a == b,
        })
    }

    /// The next action for the driver, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Core::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.bootstrap.next_at,
            self.advertise.next_at,
            self.unl_timeout(),
            self.punch_next_timer(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs due timers: re-bootstrap while below `max_outbound`, re-advertise.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.unl_handle_timeout(now);
        self.punch_handle_timeout(now);
        if self.bootstrap.next_at.is_some_and(|t| t <= now) {
            self.bootstrap.next_at = None;
            if self.bootstrap.enabled && !self.bootstrap.in_flight {
                if self.outbound_wanted() > 0 {
                    self.start(Job::Bootstrap, now);
                } else {
                    self.bootstrap.next_at = Some(now + self.config.rebootstrap_interval);
                }
            }
        }
        if self.advertise.next_at.is_some_and(|t| t <= now) {
            self.advertise.next_at = None;
            if self.advertise.enabled && !self.advertise.in_flight {
                self.start(Job::Advertise, now);
            }
        }
        self.seen.expire(now);
    }

    /// Asks the rendezvous for nodes and dials them; from now on, bootstraps again whenever
    /// the node is below `max_outbound` (rate-limited by the intervals).
    pub fn bootstrap(&mut self, now: Instant) {
        self.bootstrap.enabled = true;
        if !self.bootstrap.in_flight {
            self.start(Job::Bootstrap, now);
        }
    }

    /// Registers this node as passive with the rendezvous, and again every
    /// `readvertise_interval`. A node that is not passive, or not listening, has nothing to
    /// advertise: it gets a [`Event::RendezvousFailed`] saying so.
    pub fn advertise(&mut self, now: Instant) {
        if self.config.node_type != NodeType::Passive || self.config.listen_port == 0 {
            let why = if self.config.listen_port == 0 {
                "this node does not listen for connections"
            } else {
                "only passive nodes advertise (this node is not passive)"
            };
            self.fail(now, Job::Advertise, vec![(unspecified(), why.to_owned())]);
            return;
        }
        self.advertise.enabled = true;
        if !self.advertise.in_flight {
            self.start(Job::Advertise, now);
        }
    }

    /// Stops re-bootstrapping and re-advertising; if we advertised, asks the server to forget
    /// us (`CLEAR <port>`). Returns whether a `CLEAR` was queued.
    pub fn stop(&mut self, now: Instant) -> bool {
        self.bootstrap = Schedule::default();
        let advertised = self.advertise.last_started.is_some();
        self.advertise = Schedule::default();
        if advertised {
            self.start(Job::Clear, now);
        }
        advertised
    }

    /// Starts a NAT mapping detection: [`nat::PROBES`] `SOURCE TCP` requests, one after another,
    /// each from a fresh local port, to one server. Ends with [`Event::NatDetected`] or
    /// [`Event::RendezvousFailed`].
    pub fn detect_nat(&mut self, now: Instant) {
        if self.nat_probes.is_some() {
            return;
        }
        self.nat_probes = Some(Vec::with_capacity(nat::PROBES));
        self.start(Job::NatProbe(0), now);
    }

    /// Floods `payload` to the whole overlay; returns its id. The origin does not deliver its
    /// own broadcast to itself.
    pub fn broadcast(&mut self, now: Instant, payload: &str) -> MessageId {
        let id = MessageId(self.rng.random());
        self.seen.insert(id, now);
        let line = Control::Broadcast {
            id,
            ttl: self.config.broadcast_ttl.max(1),
            payload: payload.to_owned(),
        }
        .to_string();
        let mut targets: Vec<ConnId> = self.conns.keys().copied().collect();
        targets.sort_unstable();
        for conn in targets {
            self.out.push_back(Output::Send {
                conn,
                line: line.clone(),
            });
        }
        id
    }

    /// Asks the driver to dial `addr` (an application's direct connect).
    pub fn dial(&mut self, addr: SocketAddr) {
        if self.dialing.insert(addr) {
            self.out.push_back(Output::Dial { addr });
        }
    }

    /// A connection opened. Inbound connections over `max_inbound` are closed at once
    /// (returns false).
    pub fn handle_open(
        &mut self,
        _now: Instant,
        conn: ConnId,
        addr: SocketAddr,
        direction: Direction,
    ) -> bool {
        if direction == Direction::Outbound {
            self.dialing.remove(&addr);
        } else if self.count(Direction::Inbound) >= self.config.max_inbound {
            self.out.push_back(Output::Close {
                conn,
                reason: format!(
                    "inbound limit reached ({} connections)",
                    self.config.max_inbound
                ),
            });
            return false;
        } else if self.inbound_from(addr.ip()) >= self.config.max_inbound_per_ip {
            self.out.push_back(Output::Close {
                conn,
                reason: format!(
                    "inbound limit per IP reached ({} connections from {})",
                    self.config.max_inbound_per_ip,
                    addr.ip().to_canonical()
                ),
            });
            return false;
        }
        self.conns.insert(
            conn,
            Peer {
                addr,
                direction,
                id: None,
                listen: (direction == Direction::Outbound).then_some(addr),
                node: None,
            },
        );
        self.unl_on_open(conn, addr, direction);
        self.out.push_back(Output::Send {
            conn,
            line: Control::Hello {
                peer: self.me,
                listen_port: self.advertised_port(),
            }
            .to_string(),
        });
        self.out.push_back(Output::Event(Event::Connected {
            conn,
            addr,
            direction,
        }));
        true
    }

    /// A dial did not connect.
    pub fn handle_dial_failed(&mut self, now: Instant, addr: SocketAddr, reason: &str) {
        self.dialing.remove(&addr);
        self.out.push_back(Output::Event(Event::DialFailed {
            addr,
            reason: reason.to_owned(),
        }));
        self.unl_on_dial_failed(now, addr, reason);
    }

    /// A connection closed (by the peer, an I/O error, or the driver). Unknown or already
    /// closed connections are ignored.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId, reason: &str) {
        let Some(peer) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(id) = peer.id
            && self.by_peer.get(&id) == Some(&conn)
        {
            self.by_peer.remove(&id);
        }
        self.out.push_back(Output::Event(Event::Disconnected {
            conn,
            addr: peer.addr,
            reason: reason.to_owned(),
        }));
        self.relayed.remove(&conn);
        self.unl_on_closed(now, conn, peer.addr, reason);
        self.after_loss(now);
    }

    /// A line arrived on `conn` (without terminator). Plain lines come back as
    /// [`LineVerdict::Deliver`]; control lines are handled here.
    pub fn handle_line(&mut self, now: Instant, conn: ConnId, line: &str) -> LineVerdict {
        if !line.starts_with(CONTROL_PREFIX) {
            return LineVerdict::Deliver;
        }
        match Control::parse(line) {
            None => LineVerdict::Deliver,
            Some(Err(e)) => {
                self.close(now, conn, &format!("protocol error: {e}"));
                LineVerdict::Consumed
            }
            Some(Ok(Control::Hello { peer, listen_port })) => {
                self.handle_hello(now, conn, peer, listen_port);
                if self.conns.contains_key(&conn) {
                    self.unl_on_hello(now, conn);
                }
                LineVerdict::Consumed
            }
            Some(Ok(Control::Iam { node, nonce })) => {
                self.handle_iam(now, conn, node, nonce);
                LineVerdict::Consumed
            }
            Some(Ok(Control::Broadcast { id, ttl, payload })) => {
                self.handle_broadcast(now, conn, id, ttl, payload);
                LineVerdict::Consumed
            }
        }
    }

    /// The rendezvous request `id` finished: `Ok` with what the server said, or `Err` with why
    /// it failed (refused, timed out, closed early).
    pub fn handle_query_done(
        &mut self,
        now: Instant,
        id: QueryId,
        result: Result<QueryReply, String>,
    ) {
        let Some(mut q) = self.queries.remove(&id) else {
            return;
        };
        let server = self.config.rendezvous[q.server];
        let outcome = result.and_then(|reply| self.interpret(now, q.job, server, &reply));
        match outcome {
            Ok(()) => {
                self.preferred = q.server;
            }
            Err(reason) => {
                q.errors.push((server, reason));
                let n = self.config.rendezvous.len();
                // A NAT detection must ask one server only; everything else fails over.
                if q.tried < n && !matches!(q.job, Job::NatProbe(_)) {
                    let next = (q.server + 1) % n;
                    self.issue(q.job, next, q.tried + 1, q.errors);
                } else {
                    self.fail(now, q.job, q.errors);
                }
            }
        }
    }

    fn interpret(
        &mut self,
        now: Instant,
        job: Job,
        server: SocketAddr,
        reply: &QueryReply,
    ) -> Result<(), String> {
        let response = match (&reply.line, job) {
            (None, Job::Clear) => None,
            (None, _) => return Err("the server closed without answering".to_owned()),
            (Some(line), _) => Some(
                line.parse::<Response>()
                    .map_err(|e| format!("unexpected reply {line:?}: {e}"))?,
            ),
        };
        if let Some(Response::Error(reason)) = &response {
            return Err(format!("the server said: {reason}"));
        }
        match (job, response) {
            (Job::Bootstrap, Some(Response::Nodes(nodes))) => {
                self.bootstrap.in_flight = false;
                self.bootstrap.next_at = Some(now + self.config.rebootstrap_interval);
                let offered = nodes.len();
                let mut addrs: Vec<SocketAddr> = nodes
                    .into_iter()
                    .filter(|n| n.node_type == NodeType::Passive)
                    .map(|n| n.addr)
                    .filter(|a| !self.is_known(*a))
                    .collect();
                addrs.shuffle(&mut self.rng);
                addrs.truncate(self.outbound_wanted());
                let dialing = addrs.len();
                for addr in addrs {
                    self.dial(addr);
                }
                self.out.push_back(Output::Event(Event::Bootstrapped {
                    server,
                    offered,
                    dialing,
                }));
                Ok(())
            }
            (Job::Advertise, Some(Response::RemoteTcp { port })) => {
                self.advertise.in_flight = false;
                self.advertise.next_at = Some(now + self.config.readvertise_interval);
                self.out.push_back(Output::Event(Event::Advertised {
                    server,
                    observed_port: port,
                }));
                Ok(())
            }
            (Job::Clear, _) => {
                self.out.push_back(Output::Event(Event::Cleared { server }));
                Ok(())
            }
            (Job::NatProbe(n), Some(Response::RemoteTcp { port })) => {
                let probes = self.nat_probes.get_or_insert_with(Vec::new);
                probes.push((reply.local.port(), port));
                if probes.len() < nat::PROBES {
                    let index = self.config.rendezvous.iter().position(|s| *s == server);
                    self.issue(Job::NatProbe(n + 1), index.unwrap_or(0), 1, Vec::new());
                } else {
                    let probes = self.nat_probes.take().unwrap_or_default();
                    let mapping = nat::classify(&probes).unwrap_or(NatMapping::Random);
                    self.nat_mapping = Some(mapping);
                    self.out.push_back(Output::Event(Event::NatDetected {
                        server,
                        mapping,
                        probes,
                    }));
                }
                Ok(())
            }
            (_, Some(other)) => Err(format!("unexpected reply {other}")),
            (_, None) => Err("no reply".to_owned()),
        }
    }

    fn handle_hello(&mut self, now: Instant, conn: ConnId, peer: PeerId, listen_port: u16) {
        let Some(p) = self.conns.get(&conn) else {
            return;
        };
        if p.id.is_some() {
            self.close(now, conn, "protocol error: a second HELLO");
            return;
        }
        if peer == self.me {
            if p.direction == Direction::Outbound {
                self.self_addrs.insert(p.addr);
            }
            self.close(now, conn, "connection to self");
            return;
        }
        let direction = p.direction;
        let ip = p.addr.ip();
        if let Some(&other) = self.by_peer.get(&peer)
            && other != conn
        {
            // Two connections to one peer. Both ends keep the one dialed by the smaller id,
            // so they agree on the survivor without talking; same direction: keep the older.
            let other_dir = self.conns.get(&other).map(|o| o.direction);
            let dialer = |d: Direction| {
                if d == Direction::Outbound {
                    self.me
                } else {
                    peer
                }
            };
            let keep_new = match other_dir {
                Some(od) if od != direction => dialer(direction) < dialer(od),
                _ => false,
            };
            let (loser, winner) = if keep_new {
                (other, conn)
            } else {
                (conn, other)
            };
            self.close(now, loser, &format!("duplicate connection to peer {peer}"));
            if loser == conn {
                return;
            }
            self.by_peer.insert(peer, winner);
        }
        if let Some(p) = self.conns.get_mut(&conn) {
            p.id = Some(peer);
            if listen_port != 0 {
                p.listen = Some(SocketAddr::new(ip, listen_port));
            }
        }
        self.by_peer.insert(peer, conn);
    }

    fn handle_broadcast(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: MessageId,
        ttl: u8,
        payload: String,
    ) {
        if !self.seen.insert(id, now) {
            return;
        }
        if ttl > 1 {
            let line = Control::Broadcast {
                id,
                ttl: ttl - 1,
                payload: payload.clone(),
            }
            .to_string();
            let mut targets: Vec<ConnId> =
                self.conns.keys().copied().filter(|c| *c != conn).collect();
            targets.sort_unstable();
            for target in targets {
                self.out.push_back(Output::Send {
                    conn: target,
                    line: line.clone(),
                });
            }
        }
        self.out.push_back(Output::Deliver {
            conn,
            line: payload,
        });
    }

    /// Closes a connection the core decided to drop.
    fn close(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.out.push_back(Output::Close {
            conn,
            reason: reason.to_owned(),
        });
        self.handle_closed(now, conn, reason);
    }

    /// After a connection is lost: when nothing is left, bootstrap again soon.
    fn after_loss(&mut self, now: Instant) {
        if !self.bootstrap.enabled || !self.conns.is_empty() || self.bootstrap.in_flight {
            return;
        }
        let earliest = self
            .bootstrap
            .last_started
            .map_or(now, |t| t + self.config.alone_rebootstrap_delay)
            .max(now);
        let at = self.bootstrap.next_at.map_or(earliest, |t| t.min(earliest));
        self.bootstrap.next_at = Some(at);
    }

    /// How many more outbound connections bootstrap should open.
    fn outbound_wanted(&self) -> usize {
        self.config
            .max_outbound
            .saturating_sub(self.count(Direction::Outbound) + self.dialing.len())
    }

    /// Whether `addr` is ourselves, being dialed, or a peer we are connected to.
    fn is_known(&self, addr: SocketAddr) -> bool {
        self.self_addrs.contains(&addr)
            || self.dialing.contains(&addr)
            || self.conns.values().any(|p| p.listen == Some(addr))
    }

    fn start(&mut self, job: Job, now: Instant) {
        match job {
            Job::Bootstrap => {
                self.bootstrap.in_flight = true;
                self.bootstrap.last_started = Some(now);
            }
            Job::Advertise => {
                self.advertise.in_flight = true;
                self.advertise.last_started = Some(now);
            }
            Job::Clear | Job::NatProbe(_) => {}
        }
        if self.config.rendezvous.is_empty() {
            self.fail(
                now,
                job,
                vec![(unspecified(), "no rendezvous server configured".to_owned())],
            );
            return;
        }
        let first = self.preferred % self.config.rendezvous.len();
        self.issue(job, first, 1, Vec::new());
    }

    fn issue(&mut self, job: Job, server: usize, tried: usize, errors: Vec<(SocketAddr, String)>) {
        let lines: Vec<String> = match job {
            Job::Bootstrap => vec![
                Request::Bootstrap {
                    count: self.config.bootstrap_count.clamp(1, 100),
                    own_port: (self.config.node_type == NodeType::Passive
                        && self.config.listen_port != 0)
                        .then_some(self.advertised_port()),
                }
                .to_string(),
            ],
            // PASSIVE READY has no reply; the SOURCE TCP after it proves the server read it.
            Job::Advertise => vec![
                Request::PassiveReady {
                    port: self.advertised_port(),
                    max_inbound: u32::try_from(self.config.max_inbound).unwrap_or(u32::MAX),
                }
                .to_string(),
                Request::SourceTcp { text: None }.to_string(),
            ],
            Job::Clear => vec![
                Request::Clear {
                    port: Some(self.advertised_port()),
                }
                .to_string(),
                Request::Quit.to_string(),
            ],
            Job::NatProbe(_) => vec![Request::SourceTcp { text: None }.to_string()],
        };
        let id = QueryId(self.next_query);
        self.next_query += 1;
        self.queries.insert(
            id,
            PendingQuery {
                job,
                server,
                tried,
                errors,
            },
        );
        self.out.push_back(Output::Query {
            id,
            server: self.config.rendezvous[server],
            lines,
            want_reply: job != Job::Clear,
        });
    }

    fn fail(&mut self, now: Instant, job: Job, errors: Vec<(SocketAddr, String)>) {
        match job {
            Job::Bootstrap => {
                self.bootstrap.in_flight = false;
                let retry = now + self.config.alone_rebootstrap_delay;
                if self.bootstrap.enabled {
                    self.bootstrap.next_at = Some(retry);
                }
                // The rendezvous may be down or restarting and forget us: register again as
                // soon as it answers (the advertise retries until it does).
                if self.advertise.enabled && !self.advertise.in_flight {
                    self.advertise.next_at =
                        Some(self.advertise.next_at.map_or(retry, |t| t.min(retry)));
                }
            }
            Job::Advertise => {
                self.advertise.in_flight = false;
                if self.advertise.enabled {
                    self.advertise.next_at = Some(now + self.config.alone_rebootstrap_delay);
                }
            }
            Job::NatProbe(_) => self.nat_probes = None,
            Job::Clear => {}
        }
        self.out
            .push_back(Output::Event(Event::RendezvousFailed { job, errors }));
    }
}

/// Stands for "no particular server" in error lists.
fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

#[cfg(test)]
mod tests;
