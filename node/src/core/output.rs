//! What the core and its driver say to each other: [`Output`] (what the driver is asked to
//! do), [`Event`] (what the application hears about), and the small types they carry
//! ([`Direction`], [`Job`]); also the two values that travel the other way: [`QueryReply`]
//! (a rendezvous request's answer) and [`LineVerdict`] (what to do with a received line).
//!
//! Data only: this module knows nothing of [`Core`](super::Core), so the driver, the tests and
//! every part of the core can name these types without depending on each other.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::connect::{ConnectOutcome, Method};
use crate::ids::{ConnId, ConnectId, QueryId, RelayId, SessionId};
use wire::key::PublicKey;
use wire::nat::NatMapping;
use wire::rendezvous::{NodeType, RelayToken};

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The peer connected to us.
    Inbound,
    /// We connected to the peer.
    Outbound,
}

/// How a new connection to a peer starts (the core decides, the driver carries it out before
/// it reports the connection open): plain lines, or the Noise handshake (`crate::secure`).
///
/// The dialer begins the handshake; on a punched connection the candidate (the side reported
/// outbound); on a relayed one the side that was asked (so that the asker, which reports the
/// connection, learns the other key with the asked side's `IAM` right behind it). The other
/// side answers, or sniffs the first bytes when it cannot know (an accepted connection may be
/// a PyP2P peer in plain text). `expect`: the key the peer must
/// prove (from its v3 UNL or its signed request); a different key fails the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain lines at once (a PyP2P peer, a v2 UNL, or plain-text dials).
    Plain,
    /// Send the first handshake message.
    Initiate {
        /// The key the peer must prove, when known.
        expect: Option<PublicKey>,
    },
    /// Answer the peer's handshake.
    Respond {
        /// The key the peer must prove, when known.
        expect: Option<PublicKey>,
    },
    /// Read the first bytes: our handshake (then answer it) or plain lines.
    Sniff,
}

/// What the checks of a reverse-connect or relay request found (see `core/asked.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestCheck {
    /// Acted on: a signed request that passed every check, or an unsigned one the mailbox
    /// vouched for.
    Accepted,
    /// Not a request that can be read.
    Malformed,
    /// Unsigned, and the mailbox did not vouch that the sender owns the node id in it.
    Unproven,
    /// A signature does not verify: forged, changed, or signed by another key than the one
    /// in its UNL.
    Forged,
    /// Signed for another node.
    NotForUs,
    /// Dated outside the time window (too old, or in the future).
    Stale,
    /// Seen before (or older than the replay cache can vouch for).
    Replayed,
    /// Over the sender's or the target IP's rate limit.
    RateLimited,
    /// Refused for another reason (nothing to dial, a relay we do not use, a failed relay).
    Refused,
}

impl RequestCheck {
    /// A short name (for metrics labels and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            RequestCheck::Accepted => "accepted",
            RequestCheck::Malformed => "malformed",
            RequestCheck::Unproven => "unproven",
            RequestCheck::Forged => "forged",
            RequestCheck::NotForUs => "not_for_us",
            RequestCheck::Stale => "stale",
            RequestCheck::Replayed => "replayed",
            RequestCheck::RateLimited => "rate_limited",
            RequestCheck::Refused => "refused",
        }
    }
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
    /// A reverse-connect or relay request arrived in our mailbox.
    ReverseRequested {
        /// The sender's node id (`-`: unproven).
        from: String,
        /// Where we dial (when acted on).
        addr: Option<SocketAddr>,
        /// Why it was refused (`None`: we dial).
        refused: Option<String>,
        /// Whether it was signed (`REVERSE3`/`RELAY3`) rather than PyP2P's unsigned form.
        signed: bool,
        /// What the checks found.
        check: RequestCheck,
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
        from: IpAddr,
        /// The ports it predicted for itself (we dial these).
        their_ports: Vec<u16>,
        /// The ports we predicted for ourselves (it dials these).
        our_ports: Vec<u16>,
        /// How long until the meeting.
        meeting_in: Duration,
        /// Why it was refused (`None`: answered with `ACCEPT`).
        refused: Option<String>,
    },
    /// A relayed connection is moving to a direct path to the same node (the application
    /// keeps the same connection; see `Core::upgrade_to`). Reported when the direct path is
    /// proven; [`Event::PathSwitched`] follows when the old path is drained.
    Upgraded {
        /// The connect that asked for it (on the asking side).
        id: Option<ConnectId>,
        /// The connection (its id does not change).
        conn: ConnId,
        /// How the direct path was opened.
        method: Method,
        /// The direct path's peer address.
        addr: SocketAddr,
        /// Milliseconds from the connect's start (on the asking side).
        ms: Option<u64>,
    },
    /// A connection finished moving to its new path: the old one is closed.
    PathSwitched {
        /// The connection.
        conn: ConnId,
        /// Lines the peer wrote on the old path that never arrived (0 unless the old path
        /// broke before its end).
        lost: u64,
    },
    /// A node with role `auto` chose its role (see `Core::enable_auto`), or changed it.
    RoleChosen {
        /// The role now.
        role: NodeType,
        /// Why, in words (what was established).
        reason: String,
    },
    /// The rendezvous saw us come from a new WAN address.
    WanAddress {
        /// The address now.
        ip: IpAddr,
        /// The server that saw it.
        server: SocketAddr,
        /// The address before (`None`: the first one learned).
        previous: Option<IpAddr>,
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
    /// Open a TCP connection; report with [`Core::handle_open`](super::Core::handle_open) or [`Core::handle_dial_failed`](super::Core::handle_dial_failed).
    Dial {
        /// Where to.
        addr: SocketAddr,
        /// How the connection starts.
        security: Security,
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
    /// Hand `line`, an origin-signed broadcast whose signature verified, to the application
    /// as received on `conn`, with the key that wrote it (see [`crate::broadcast`]).
    DeliverSigned {
        /// The connection it arrived on.
        conn: ConnId,
        /// The line.
        line: String,
        /// Who wrote it.
        signer: PublicKey,
    },
    /// Connect to `server` from a fresh local port, send `lines`, then (if `want_reply`) read
    /// one reply line; report with [`Core::handle_query_done`](super::Core::handle_query_done).
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
    /// [`Core::handle_mailbox_open`](super::Core::handle_mailbox_open) / [`Core::handle_mailbox_closed`](super::Core::handle_mailbox_closed), and its lines with
    /// [`Core::handle_mailbox_line`](super::Core::handle_mailbox_line).
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
    /// dials can share it. Report with [`Core::handle_session_open`](super::Core::handle_session_open) /
    /// [`Core::handle_session_closed`](super::Core::handle_session_closed), and lines with [`Core::handle_session_line`](super::Core::handle_session_line).
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
    /// [`Core::handle_open`](super::Core::handle_open) (with `direction`) or [`Core::handle_dial_failed`](super::Core::handle_dial_failed).
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
        /// `true`: a fresh SYN now, replacing a dial to `addr` still under way (a
        /// retransmission sooner than the kernel's 1 s, where no simultaneous open can be
        /// in progress); `false`: skipped while a dial to `addr` is under way (its SYN
        /// already opened our NAT, and its handshake may be in progress).
        fresh: bool,
        /// How the connection starts (the candidate initiates, the node sniffs).
        security: Security,
    },
    /// A birthday punch from behind a NAT that maps ports at random (see
    /// `core/punch/birthday.rs`): from `at`, open `count` sockets from fresh local ports to
    /// `addr`, spread over `pace`. The first that connects is the dial's result (reported
    /// with [`Core::handle_open`](super::Core::handle_open) as `addr`, outbound) and the
    /// others close at once; when none has within `timeout` of `at`, report
    /// [`Core::handle_dial_failed`](super::Core::handle_dial_failed) for `addr`.
    /// [`Output::CancelDials`] naming `addr` stops it.
    BirthdayDial {
        /// Where to.
        addr: SocketAddr,
        /// Sockets to open.
        count: u32,
        /// When to start.
        at: Instant,
        /// How long the burst takes.
        pace: Duration,
        /// How long after `at` the sockets may take to connect.
        timeout: Duration,
        /// How the connection starts.
        security: Security,
    },
    /// The guessing side of a birthday punch: from `at`, connect from local port
    /// `from_port` (bound with `SO_REUSEADDR` + `SO_REUSEPORT`) to `count` distinct random
    /// ports of `ip` (1024..=65535), spread over `pace`. Each that connects is a connection
    /// (reported with [`Core::handle_open`](super::Core::handle_open), `direction`); the rest
    /// close `timeout` after `at`, or at [`Output::CancelSpray`]. Failures are not reported.
    BirthdaySpray {
        /// The other side's address.
        ip: IpAddr,
        /// The local port to send from.
        from_port: u16,
        /// Guesses.
        count: u32,
        /// When to start.
        at: Instant,
        /// How long the burst takes.
        pace: Duration,
        /// How long after `at` the sockets may take to connect.
        timeout: Duration,
        /// How to report the connections.
        direction: Direction,
    },
    /// Close the unconnected sockets of the birthday spray towards `ip`.
    CancelSpray {
        /// The other side's address.
        ip: IpAddr,
    },
    /// Stop dials to these addresses that have not connected yet (pending punch dials
    /// included); they are not reported back.
    CancelDials {
        /// The addresses.
        addrs: Vec<SocketAddr>,
    },
    /// Open a relayed connection: connect to the rendezvous `server`, send `RELAY <token>`,
    /// wait for `RELAY OK`; then it is a connection like any other. Report with
    /// [`Core::handle_relay_open`](super::Core::handle_relay_open) or [`Core::handle_relay_failed`](super::Core::handle_relay_failed).
    RelayDial {
        /// The relay.
        relay: RelayId,
        /// The rendezvous server relaying.
        server: SocketAddr,
        /// The token both ends send.
        token: RelayToken,
        /// How the relayed connection starts (the asker initiates, the asked side answers).
        security: Security,
    },
    /// Move connection `session` onto the stream of connection `path` (see `switch.rs`):
    /// `session`'s id keeps reading and writing, on `path`'s stream; its old stream goes on
    /// under a new id (for the lines still on their way) until the core closes it; `path` is
    /// no connection of its own any more (no event, not listed). Write
    /// `P2P/1 SWITCH <lines written on the old stream>` as the last line of the old stream
    /// and the first of the new, then report with
    /// [`Core::handle_switched`](super::Core::handle_switched) (or
    /// [`Core::handle_switch_failed`](super::Core::handle_switch_failed)).
    SwitchPath {
        /// The connection the application has.
        session: ConnId,
        /// The connection whose stream becomes its path.
        path: ConnId,
    },
    /// A clock sample from a rendezvous server: add `offset` seconds to the shared clock
    /// (the `unix_now` given to the core) to get the server's clock; measured over a request
    /// that took `rtt` (the shorter, the better the sample).
    ClockSample {
        /// The server.
        server: SocketAddr,
        /// Seconds to add to the shared clock.
        offset: f64,
        /// The round trip the sample was measured over.
        rtt: Duration,
    },
    /// Something for the application.
    Event(Event),
}

/// What to do with a line received from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineVerdict {
    /// A plain application line: deliver it as is.
    Deliver,
    /// A control line, handled by the core (see [`Core::poll_output`](super::Core::poll_output)).
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
