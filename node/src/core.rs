//! The node's sans-IO core: overlay, flooding, rendezvous jobs (bootstrap, advertise, NAT
//! detection), connects by UNL (direct, reverse, hole punch, relay) and the mailbox client.
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
//!
//! ## Layout
//!
//! [`Core`] is one state machine. Its struct is defined here; its behaviour is spread over one
//! `impl Core` block per concern:
//!
//! | module | what it holds |
//! |---|---|
//! | `output` | [`Output`], [`Event`], [`Direction`], [`Job`], [`QueryReply`], [`LineVerdict`] (data) |
//! | `config` | [`CoreConfig`] (data) |
//! | `state` | the tables in `Core`'s fields: peers, requests, connects, mailbox, registration (data) |
//! | `overlay` | connections, `HELLO`, control lines, the inbound caps, flooding broadcasts |
//! | `jobs` | bootstrap, advertise, clear, NAT detection: schedules, failover, replies |
//! | `limits` | `Budget`: rate limits in all and per sender, with a burst (data and rules) |
//! | `discovery` | our WAN address, clock samples and (role `auto`) the role, from the rendezvous |
//! | `unl_connect` | the connect-by-UNL state machine: plan, waves, deadlines, outcome |
//! | `iam` | `IAM` on every connection; which connect a connection belongs to |
//! | `ipv6` | connects over IPv6 first (our dial from the listening port, their dial asked for: a simultaneous open through both firewalls), IPv4 after a head start |
//! | `reverse` | reverse connects and relays, asking |
//! | `asked` | reverse-connect and relay requests from our mailbox: signed ones checked, PyP2P's unsigned ones vouched for |
//! | `mailbox` | the dht-msg mailbox client |
//! | `switch` | moving a live session to another path (`P2P/1 SWITCH`), line order kept |
//! | `upgrade` | relay first: a relayed connect reported at once, its direct tries going on; a missed punch tried again on the live session |
//! | `punch` | hole punching: rendezvous sessions and timers; `punch/simultaneous` (registration, challenges) and `punch/candidate` (candidacy, dials at the meeting) |
//!
//! Imports go one way: the data modules (`output`, `config`, `state`) know nothing of `Core`;
//! this file imports only them; every behaviour module imports this file (for `Core`) and the
//! data modules, and none imports another behaviour module (they call each other's methods
//! through `Core`; `punch/*` take the punch limits from `punch`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::identity::Identity;
use wire::nat::NatMapping;
use wire::overlay::{Nonce, PeerId, SeenCache};
use wire::rendezvous::NodeType;
use wire::unl::{NodeId, Unl};

mod asked;
mod config;
mod discovery;
mod iam;
mod ipv6;
mod jobs;
mod limits;
mod mailbox;
mod output;
mod overlay;
mod punch;
mod reverse;
mod state;
mod switch;
mod unl_connect;
mod upgrade;

pub use crate::ids::{ConnId, QueryId, RelayId, SessionId};
pub use config::{CoreConfig, DEFAULT_KEEPALIVE, DEFAULT_PUNCH_SOCKETS, UPGRADE_RETRY_FIRST};
pub use ipv6::IPV6_HEAD_START;
pub use output::{Direction, Event, Job, LineVerdict, Output, QueryReply, RequestCheck, Security};

use crate::ids::ConnectId;
use limits::Budget;
use state::{
    Attempt, AutoRole, MailboxClient, Peer, PendingQuery, Registration, RelayRole, ReverseDial,
    Schedule, SessionRole, Switching, UpgradeRetry,
};

/// How far a signed request's time may be from ours (either way).
pub const REQUEST_WINDOW: Duration = Duration::from_mins(2);
/// Signed requests remembered at most to refuse replays (about 100 bytes each).
const REPLAY_CAPACITY: usize = 8192;

/// The sans-IO node (see the module docs).
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    /// Our key pair: `me` and `node_id` are derived from it; it signs our requests.
    identity: Identity,
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
    /// Our UNL node id (derived from our key).
    node_id: NodeId,
    /// The UNL we hand out (set by the driver), in its v2 form.
    local_unl: Option<Unl>,
    /// The same, signed (v3), when the driver gave one.
    local_unl3: Option<wire::unl::v3::UnlV3>,
    mailbox: Option<MailboxClient>,
    attempts: HashMap<ConnectId, Attempt>,
    next_attempt: u64,
    /// Dials made for a connect.
    attempt_dials: HashMap<SocketAddr, ConnectId>,
    /// Open connections made for a connect, waiting for the peer's `IAM`.
    conn_attempt: HashMap<ConnId, ConnectId>,
    /// Reverse connects we make because someone asked, by the address dialed.
    reverse_dials: HashMap<SocketAddr, ReverseDial>,
    /// Reverse-connect connections we dialed: the node id the peer must show (and the key
    /// its connection must have proved, when the request was signed).
    conn_expect: HashMap<ConnId, (NodeId, Option<wire::key::PublicKey>)>,
    /// How often we act on reverse-connect and relay requests (per sender node, counted
    /// once per connect).
    reverse_budget: Budget<NodeId, (NodeId, Nonce)>,
    /// The same per IP we are asked to reach (many keys cannot aim us at one victim).
    reverse_ip_budget: Budget<std::net::IpAddr, Nonce>,
    /// Signed requests seen within their time window (a replay is refused).
    replay: wire::signal::ReplayCache,
    /// The wall clock: Unix milliseconds at an instant (set by the driver).
    clock: Option<(Instant, u64)>,
    /// Our NAT mapping, from the last NAT detection (used to predict punch ports).
    nat_mapping: Option<NatMapping>,
    /// `(local, observed)` address of the running NAT detection's first probe, when the
    /// server told the address (no NAT when they are equal).
    nat_probe_ips: Option<(std::net::IpAddr, std::net::IpAddr)>,
    /// The role decision of a node that chooses its own (see `discovery`).
    auto: Option<AutoRole>,
    /// The driver proved our port reachable (`set_reachability` to passive).
    proven_passive: bool,
    /// Our WAN address as the rendezvous last saw it.
    observed_ip: Option<std::net::IpAddr>,
    /// Servers that answered `SOURCE ADDR` with an error (asked `SOURCE TCP` instead).
    no_source_addr: HashSet<SocketAddr>,
    /// The last round trip measured to a rendezvous (a candidacy, a registration ping).
    last_rtt: Option<Duration>,
    /// Servers that answered `SOURCE ADDR` (asked it on sessions too).
    source_addr_ok: HashSet<SocketAddr>,
    /// Line sessions with rendezvous servers.
    sessions: HashMap<SessionId, SessionRole>,
    next_session: u64,
    /// Our registration as a simultaneous node (when enabled).
    registration: Option<Registration>,
    /// Connects whose `CANDIDATE` went out on our registration and await `PREDICTION SET`
    /// (or an error), in order.
    registration_candidacies: VecDeque<ConnectId>,
    /// Dials we make as the simultaneous node answering a challenge, by address: the
    /// challenge they belong to (the others are cancelled when one connects) and its meeting.
    challenge_dials: HashMap<SocketAddr, (u64, Instant)>,
    next_challenge: u64,
    /// How often we answer hole-punch challenges (per candidate IP).
    punch_budget: Budget<std::net::IpAddr, ()>,
    /// Relayed connections being opened.
    relays: HashMap<RelayId, RelayRole>,
    next_relay: u64,
    /// Connections that run through a relay.
    relayed: HashSet<ConnId>,
    /// Sessions moving to another path, by the session's id (see `switch.rs`).
    switching: HashMap<ConnId, Switching>,
    /// Relayed sessions whose move to a direct path is tried again, by the session's id
    /// (see `upgrade.rs`).
    upgrade_retries: HashMap<ConnId, UpgradeRetry>,
    /// Birthday sprays running, by the candidate's IP, until when (see `punch/birthday.rs`).
    sprays: HashMap<std::net::IpAddr, Instant>,
    /// Direct paths whose peer sent `SWITCH` before their relayed session was proven here:
    /// the node, and the lines held (the `SWITCH` first).
    pending_follows: HashMap<ConnId, (NodeId, Vec<String>)>,
    /// Relayed connections whose peer already sent `SWITCH` there (it moved first).
    early_switches: HashSet<ConnId>,
    /// Sessions that moved off the relay to a direct path (see `switch.rs`): never closed
    /// as a duplicate of another connection to the same peer.
    moved: HashSet<ConnId>,
    /// Connections a connect reported to the application (its outcome's `conn`): of two
    /// connections this side dialed to one peer, the duplicate rule keeps the reported one.
    reported: HashSet<ConnId>,
}

impl Core {
    /// A core with no connections.
    pub fn new(config: CoreConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        // The overlay id used to be drawn first: draw it still, so every later random choice
        // of a seeded core stays what it was.
        let _: u64 = rng.random();
        let identity = config
            .identity
            .clone()
            .unwrap_or_else(|| Identity::from_seed(config.seed));
        let me = identity.peer_id();
        let node_id = identity.node_id();
        let reverse_budget = Budget::new(config.max_reverse_per_minute);
        let reverse_ip_budget = Budget::new(config.max_reverse_per_minute);
        let punch_budget = Budget::new(config.max_punch_per_minute);
        Core {
            seen: SeenCache::new(config.seen_capacity, config.seen_lifetime),
            config,
            identity,
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
            local_unl3: None,
            mailbox: None,
            attempts: HashMap::new(),
            next_attempt: 0,
            attempt_dials: HashMap::new(),
            conn_attempt: HashMap::new(),
            reverse_dials: HashMap::new(),
            conn_expect: HashMap::new(),
            reverse_budget,
            reverse_ip_budget,
            replay: wire::signal::ReplayCache::new(REPLAY_CAPACITY, REQUEST_WINDOW),
            clock: None,
            nat_mapping: None,
            nat_probe_ips: None,
            auto: None,
            proven_passive: false,
            observed_ip: None,
            no_source_addr: HashSet::new(),
            source_addr_ok: HashSet::new(),
            last_rtt: None,
            sessions: HashMap::new(),
            next_session: 0,
            registration: None,
            registration_candidacies: VecDeque::new(),
            challenge_dials: HashMap::new(),
            next_challenge: 0,
            punch_budget,
            relays: HashMap::new(),
            next_relay: 0,
            relayed: HashSet::new(),
            switching: HashMap::new(),
            upgrade_retries: HashMap::new(),
            early_switches: HashSet::new(),
            moved: HashSet::new(),
            reported: HashSet::new(),
            pending_follows: HashMap::new(),
            sprays: HashMap::new(),
        }
    }

    /// Our id in the overlay (derived from our key).
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// Our key pair.
    pub fn identity(&self) -> &Identity {
        &self.identity
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
        self.proven_passive = node_type == NodeType::Passive;
        if self.proven_passive && self.role_pending() {
            self.choose_role(
                NodeType::Passive,
                "our port is proven reachable from outside (reachability probe)".to_owned(),
            );
        }
    }

    /// The port we tell others to dial: the public port if one is set, else the listen port
    /// (0 when not listening).
    pub fn advertised_port(&self) -> u16 {
        if self.config.listen_port == 0 {
            return 0;
        }
        self.config.public_port.unwrap_or(self.config.listen_port)
    }

    /// The next action for the driver, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// A line the driver was told to deliver itself ([`LineVerdict::Deliver`]): when lines
    /// the core delivers ([`Output::Deliver`], e.g. a moved session's held lines) wait in the
    /// output queue, `line` must come after them: it is queued behind them (returns true)
    /// instead of going to the application at once.
    pub fn deliver_behind_queued(&mut self, conn: ConnId, line: &str) -> bool {
        let delivers =
            |o: &Output| matches!(o, Output::Deliver { .. } | Output::DeliverSigned { .. });
        if self.out.is_empty() || !self.out.iter().any(delivers) {
            return false;
        }
        self.out.push_back(Output::Deliver {
            conn,
            line: line.to_owned(),
        });
        true
    }

    /// When [`Core::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.jobs_next_timer(),
            self.connect_next_timer(),
            self.mailbox_next_timer(),
            self.punch_next_timer(),
            self.auto_next_timer(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs due timers: connects by UNL, the mailbox, hole punching, re-bootstrap while below
    /// `max_outbound`, re-advertise, and forgets old broadcast ids.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.connect_timers(now);
        self.mailbox_timers(now);
        self.punch_handle_timeout(now);
        self.auto_handle_timeout(now);
        self.jobs_handle_timeout(now);
        self.seen.expire(now);
    }
}

/// Milliseconds, saturating (for try timings).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Stands for "no particular server" in error lists.
fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

#[cfg(test)]
mod tests;
