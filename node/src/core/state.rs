//! The tables the core keeps, as data: a peer's record, a rendezvous request in flight, the
//! repeating jobs' schedules, a connect by UNL in progress (with its punch try), the relay and
//! reverse-connect bookkeeping, the mailbox client and the simultaneous registration.
//!
//! Data only, like [`super::output`]: the behaviour lives in the `impl Core` blocks of the
//! sibling modules, which all read and write these through [`Core`](super::Core)'s fields.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::output::{Direction, Job};
use crate::connect::{Method, Try};
use crate::ids::{ConnId, ConnectId, RelayId, SessionId};
use wire::key::PublicKey;
use wire::mailbox::KeyRegistration;
use wire::overlay::{Nonce, PeerId};
use wire::rendezvous::NodeType;
use wire::unl::{NodeId, Unl};

// ---- the overlay and the rendezvous jobs ----

/// An open connection, as the overlay knows it.
#[derive(Debug)]
pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    pub(super) direction: Direction,
    /// From the peer's HELLO (PyP2P peers never send one).
    pub(super) id: Option<PeerId>,
    /// Where the peer accepts connections (from HELLO; for outbound peers, `addr`).
    pub(super) listen: Option<SocketAddr>,
    /// Its UNL node id, from its `IAM`.
    pub(super) node: Option<NodeId>,
    /// Its `IAM` arrived.
    pub(super) iam: bool,
    /// The key the connection's handshake proved (`None`: a plain-text connection).
    pub(super) key: Option<PublicKey>,
    /// Lines received on it so far (a path switch tells how many the peer sent).
    pub(super) lines_in: u64,
}

/// A rendezvous request in flight.
#[derive(Debug)]
pub(super) struct PendingQuery {
    pub(super) job: Job,
    /// Index into the server list of the server asked.
    pub(super) server: usize,
    /// Servers asked so far for this job, including this one.
    pub(super) tried: usize,
    pub(super) errors: Vec<(SocketAddr, String)>,
}

/// A repeating job (bootstrap or advertise): wanted, running, when next.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    pub(super) enabled: bool,
    pub(super) in_flight: bool,
    pub(super) last_started: Option<Instant>,
    pub(super) next_at: Option<Instant>,
}

// ---- connects by UNL, relays and reverse connects ----

/// One connect in progress.
#[derive(Debug)]
pub(super) struct Attempt {
    /// The target's UNL (the v2 form of a v3 one: what the plan and the punch read).
    pub(super) target: Unl,
    /// The target's signed UNL when it gave one: its key is who the connection must reach
    /// (the handshake proves it), and it is encrypted; `None`: a PyP2P peer, plain text.
    pub(super) signed: Option<wire::unl::v3::UnlV3>,
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    pub(super) nonce: Nonce,
    pub(super) tries: Vec<Try>,
    /// When the second wave (reverse connect and hole punch, whichever are planned) starts;
    /// `None` once started or when neither is planned.
    pub(super) reverse_at: Option<Instant>,
    /// The reverse try fails at this time unless they dialed us.
    pub(super) reverse_deadline: Option<Instant>,
    /// The punch starts with the connect (not in the second wave).
    pub(super) punch_now: bool,
    /// The relayed connection reported to the application while the direct tries go on
    /// (see `upgrade.rs`).
    pub(super) session: Option<ConnId>,
    /// The punch try, once started.
    pub(super) punch: Option<PunchTry>,
    /// A relay is planned (it starts when every other try has failed, or at `relay_at`).
    pub(super) relay_planned: bool,
    pub(super) relay_at: Option<Instant>,
    /// The relayed connection being opened.
    pub(super) relay: Option<RelayId>,
    /// 0 for a connect the application asked for; n for the n-th try again to move a relayed
    /// session to a direct path (see `upgrade.rs`).
    pub(super) retry: u32,
    /// The IPv4 tries held back while the IPv6 try has its head start (see `ipv6.rs`).
    pub(super) v4_wave: Option<V4Wave>,
    /// Our reverse-connect request is in their mailbox already (the IPv6 try posts it at
    /// once; the reverse try then only waits for their dial).
    pub(super) request_posted: bool,
}

/// IPv4 tries that start when the IPv6 try's head start is over, or at once when it fails.
#[derive(Debug)]
pub(super) struct V4Wave {
    pub(super) at: Instant,
    /// LAN and direct addresses to dial.
    pub(super) dials: Vec<SocketAddr>,
    /// The punch starts with them.
    pub(super) punch: bool,
}

impl Attempt {
    /// A connect to `target` that starts at `now`, with nothing planned yet.
    pub(super) fn new(
        target: Unl,
        signed: Option<wire::unl::v3::UnlV3>,
        now: Instant,
        deadline: Instant,
        nonce: Nonce,
    ) -> Self {
        Attempt {
            target,
            signed,
            started: now,
            deadline,
            nonce,
            tries: Vec::new(),
            reverse_at: None,
            reverse_deadline: None,
            punch_now: false,
            session: None,
            punch: None,
            relay_planned: false,
            relay_at: None,
            relay: None,
            retry: 0,
            v4_wave: None,
            request_posted: false,
        }
    }

    /// The key the connection must prove (the target's, from its v3 UNL).
    pub(super) fn key(&self) -> Option<PublicKey> {
        self.signed.as_ref().map(|u| *u.key())
    }

    /// The target as the user gave it (v3 text, or v2).
    pub(super) fn target_text(&self) -> String {
        self.signed
            .as_ref()
            .map_or_else(|| self.target.to_string(), ToString::to_string)
    }
}

/// A relayed session whose move to a direct path is tried again at `at` (see `upgrade.rs`).
#[derive(Debug)]
pub(super) struct UpgradeRetry {
    pub(super) at: Instant,
    pub(super) target: Unl,
    pub(super) signed: Option<wire::unl::v3::UnlV3>,
    /// Which try again this is (1, 2, ...).
    pub(super) retry: u32,
}

/// Which end of a relayed connection we are.
#[derive(Debug, Clone, Copy)]
pub(super) enum RelayRole {
    /// We asked for it (connect `ConnectId`).
    Asker(ConnectId),
    /// `node` asked us (signed by `key`, when the request was); we open with `nonce`.
    Asked {
        node: NodeId,
        nonce: Nonce,
        key: Option<PublicKey>,
    },
}

/// A reverse connect we make because someone asked.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReverseDial {
    pub(super) node: NodeId,
    pub(super) nonce: Nonce,
    /// The key that signed the request (the connection must prove it); `None`: an unsigned
    /// PyP2P request, answered in plain text.
    pub(super) key: Option<PublicKey>,
}

/// What a request on the mailbox connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Awaiting {
    /// `CHALLENGE` (signed registration); an `ERROR` means a server without it.
    Challenge,
    /// `REGISTER_KEY <key> <signature>`.
    RegisterKey,
    /// `REGISTER <id> <secret>`: the fallback for a server without signed registration.
    Register,
    Subscribe,
    Put(Option<(ConnectId, Method)>),
    Ack,
    Ping,
}

/// Where the mailbox connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MailboxState {
    /// Not connected; reconnect at the given time.
    Down(Instant),
    Connecting,
    /// Connected, registering/subscribing.
    Opening,
    Up,
}

/// The persistent connection to our dht-msg mailbox.
#[derive(Debug)]
pub(super) struct MailboxClient {
    pub(super) server: SocketAddr,
    /// The secret of the `REGISTER <id> <secret>` fallback.
    pub(super) secret: String,
    /// The signed registration under way on this connection.
    pub(super) registration: Option<KeyRegistration>,
    /// Whether the fallback to `REGISTER <id> <secret>` was logged (once per client).
    pub(super) fallback_logged: bool,
    pub(super) state: MailboxState,
    pub(super) retry: Duration,
    /// Requests sent and not yet answered, in order.
    pub(super) awaiting: VecDeque<Awaiting>,
    /// PUTs waiting for the connection.
    pub(super) queued: VecDeque<(String, Option<(ConnectId, Method)>)>,
    pub(super) next_ping: Option<Instant>,
}

// ---- moving a session to another path ----

/// A session moving from its old path (a relayed connection) to a new one (a direct
/// connection to the same node), see `switch.rs`.
#[derive(Debug)]
pub(super) struct Switching {
    /// The session's address before the move (restored if the new path dies first).
    pub(super) old_addr: SocketAddr,
    /// The new path, until the driver has moved it under the session's id.
    pub(super) pending: Option<ConnId>,
    /// The old path's id once the driver moved it aside (before: the session's own id).
    pub(super) old: Option<ConnId>,
    /// Lines received on the old path, since the session opened.
    pub(super) received_old: u64,
    /// The peer's `SWITCH` arrived on the old path: nothing more comes there.
    pub(super) old_done: bool,
    /// The old path closed.
    pub(super) old_closed: bool,
    /// The peer's `SWITCH` on the new path: how many lines it wrote on the old one.
    pub(super) peer_sent_old: Option<u64>,
    /// Lines from the new path after the peer's `SWITCH`, until the old path is done.
    pub(super) held: VecDeque<String>,
}

// ---- finding out about ourselves ----

/// Where an auto node's role decision is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AutoState {
    /// A NAT detection runs.
    Detecting,
    /// The last detection failed; try again at this time.
    Retry(Instant),
    /// Decided (until the WAN address changes).
    Done,
}

/// A node that chooses its own role (see `discovery`).
#[derive(Debug)]
pub(super) struct AutoRole {
    pub(super) state: AutoState,
    /// The next retry delay after a failed detection.
    pub(super) retry: Duration,
    /// The role last announced (`None`: not chosen yet).
    pub(super) chosen: Option<NodeType>,
    /// Why the last detection failed: each server and its error (empty once one succeeds).
    pub(super) failures: Vec<(SocketAddr, String)>,
}

// ---- hole punching ----

/// What a session is for.
#[derive(Debug, Clone)]
pub(super) enum SessionRole {
    /// Our registration as a simultaneous node.
    Registration,
    /// Our candidacy for connect `id`.
    Candidacy(ConnectId),
    /// A port probe before answering a challenge from `client` (who predicted `ports`).
    Probe { client: IpAddr, ports: Vec<u16> },
}

/// Where the simultaneous registration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RegistrationState {
    /// Not connected; reconnect at the given time.
    Down(Instant),
    /// Connecting, or waiting for the first `REMOTE TCP`.
    Opening,
    /// `SIMULTANEOUS READY` sent.
    Up,
}

/// The persistent registration of a simultaneous node.
#[derive(Debug)]
pub(super) struct Registration {
    /// Index of the rendezvous server in use.
    pub(super) server: usize,
    pub(super) session: Option<SessionId>,
    pub(super) state: RegistrationState,
    pub(super) retry: Duration,
    /// The external port of our listening port, as the server sees it.
    pub(super) external_port: Option<u16>,
    /// The last measured round trip.
    pub(super) rtt: Option<Duration>,
    /// When the unanswered `SOURCE TCP` was sent.
    pub(super) ping_sent: VecDeque<Instant>,
    pub(super) next_ping: Option<Instant>,
}

/// The punch try of one connect (candidate side).
// One flag per fact of the try, each read on its own.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Default)]
pub(super) struct PunchTry {
    /// The rendezvous server coordinating it.
    pub(super) server: Option<SocketAddr>,
    /// The candidacy session while it is open (`None` when the candidacy runs on our own
    /// simultaneous registration, see `via_registration`).
    pub(super) session: Option<SessionId>,
    /// The candidacy was sent on our registration (we dial from our listening port).
    pub(super) via_registration: bool,
    /// A birthday punch: our NAT maps ports at random (`CANDIDATE ... TCP 0`, a burst of
    /// sockets at the meeting).
    pub(super) birthday: bool,
    /// The local port we dial from (bound by the session, or our listening port).
    pub(super) local_port: Option<u16>,
    /// When our address question was sent on the candidacy session.
    pub(super) ping_sent: Option<Instant>,
    /// The ports we predicted for ourselves.
    pub(super) our_ports: Vec<u16>,
    /// The address dialed at once, before `FIGHT` (their UNL's address and port).
    pub(super) eager: Option<SocketAddr>,
    /// Whether `FIGHT` arrived.
    pub(super) fought: bool,
    /// Whether one of its dials opened (a connection waits for the peer's `IAM`).
    pub(super) opened: bool,
    /// The meeting time `FIGHT` named.
    pub(super) meeting: Option<Instant>,
    /// Every address dialed (the eager one and `FIGHT`'s).
    pub(super) dials: Vec<SocketAddr>,
    /// The addresses `FIGHT` named (dialed at the meeting).
    pub(super) fight: Vec<SocketAddr>,
    /// `FIGHT` dials not yet failed.
    pub(super) pending: usize,
    /// The try fails at this time unless a connection opened.
    pub(super) deadline: Option<Instant>,
}
