//! The relay mode, sans-IO: two connections that present the same `RELAY <token>` are spliced
//! into one byte pipe each way.
//!
//! What lives here: pairing (a table of waiting tokens), the limits (`--max-relays`,
//! `--max-relays-per-ip`, `--no-relay`), the wait, idle and linger timeouts, the per-direction
//! queues with their flow-control cap, and the [`TokenBucket`] that enforces `--relay-rate`. The
//! driver only moves bytes: it asks [`Core::read_budget`] how much it may read from a socket,
//! hands what it read to [`Core::handle_data`] (or writes it straight to the partner first when
//! [`Core::relay_direct_target`] allows, then reports both with [`Core::handle_relay_read`]),
//! writes [`Core::pending_output`], and carries out [`Action::Read`] (resume a paused source:
//! it gets no new readiness edge) and [`Action::ShutdownWrite`] (forward a FIN).
//!
//! One direction of a session (a pipe) goes through these states:
//! ```text
//! reading ──(queue at the cap / bucket empty)──▶ paused ──(queue ≤ cap/2 / tokens back)──▶ reading
//! reading ──(EOF or failure of the source)──▶ source done ──(queue flushed)──▶ destination shut down
//! any     ──(destination failed)──▶ sink (what is read is dropped; the source is read to EOF)
//! ```
//! A session ends when both directions are finished (both sides read to EOF or dead, both
//! destinations shut down or dead), when nothing moved for `relay_idle_timeout`, or
//! [`RELAY_LINGER`] after a side failed if the other side does not close.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use node::proto::rendezvous::{RelayToken, Response};
use thiserror::Error;
use tracing::{debug, info};

use super::{Action, ConnId, Core};

/// After one side of a session failed, how long the other side may take to close before the
/// session is torn down anyway. Until then its bytes are read and dropped, so that closing it
/// does not send a reset that could overtake what was forwarded to it.
pub const RELAY_LINGER: Duration = Duration::from_secs(5);
/// The smallest token-bucket burst, so that a low `--relay-rate` still moves reasonable chunks.
pub const MIN_RELAY_BURST_BYTES: u64 = 16 * 1024;
/// Queues that empty give their memory back when they grew beyond this.
const RETAINED_QUEUE_BYTES: usize = 16 * 1024;

/// Why a `RELAY` request was refused or a waiting relay connection closed. Sent as
/// `ERROR relay: <this>` before the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RelayError {
    /// The server runs with `--no-relay`.
    #[error("relay disabled on this server")]
    Disabled,
    /// `RELAY` came after other lines on the connection.
    #[error("RELAY must be the first line on a connection (this was line {line})")]
    NotFirstLine {
        /// Which line (1-based) it was.
        line: u32,
    },
    /// Two connections already use this token.
    #[error("token already in use")]
    TokenInUse,
    /// `max_relays` waiting plus active sessions reached.
    #[error("server full ({limit} relays), try later")]
    ServerFull {
        /// The configured limit.
        limit: usize,
    },
    /// `max_relays_per_ip` relay connections (waiting or active) from this IP.
    #[error("too many relays from {ip} (limit {limit})")]
    TooManyFromIp {
        /// The client's IP.
        ip: IpAddr,
        /// The configured limit.
        limit: usize,
    },
    /// No second connection presented the token in time.
    #[error("nobody joined within {waited:?}")]
    WaitTimeout {
        /// The configured wait.
        waited: Duration,
    },
    /// The client sent more bytes before the pairing than the server keeps for it.
    #[error("{len} bytes sent before the pairing (limit {limit})")]
    EarlyDataOverCap {
        /// Bytes received so far.
        len: usize,
        /// The cap.
        limit: usize,
    },
    /// The server is stopping.
    #[error("server shutting down")]
    ShuttingDown,
}

/// A token bucket: `rate` bytes per second, at most `burst` saved up. Pure arithmetic with the
/// time passed in; it never loses or invents a byte: over any interval `t`, at most
/// `burst + rate * t` bytes are granted.
///
/// ```
/// use std::time::{Duration, Instant};
/// use rendezvous::core::TokenBucket;
///
/// let t0 = Instant::now();
/// let mut bucket = TokenBucket::new(1000, 500, t0); // 1000 B/s, starts full
/// assert_eq!(bucket.available(t0), 500);
/// bucket.take(500);
/// assert_eq!(bucket.available(t0 + Duration::from_millis(100)), 100);
/// assert_eq!(bucket.ready_at(300), t0 + Duration::from_millis(300));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    /// The moment `tokens` is exact for (fractions of a byte earned since are not lost: this
    /// only advances by the time that earned whole bytes).
    updated: Instant,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket. `rate` and `burst` are raised to at least 1.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1);
        TokenBucket {
            rate: rate.max(1),
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Most bytes saved up.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Bytes that may be taken at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens
    }

    /// Takes `n` bytes (at most what is there; call [`available`](Self::available) first).
    pub fn take(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n);
    }

    /// The earliest moment [`available`](Self::available) reaches `want` (capped at the
    /// burst). At or before the last refill when it is there already.
    pub fn ready_at(&self, want: u64) -> Instant {
        let want = want.min(self.burst);
        if self.tokens >= want {
            return self.updated;
        }
        let missing = u128::from(want - self.tokens);
        let nanos = (missing * NANOS_PER_SEC).div_ceil(u128::from(self.rate));
        self.updated + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        let earned = elapsed * u128::from(self.rate) / NANOS_PER_SEC;
        let room = u128::from(self.burst - self.tokens);
        if earned >= room {
            self.tokens = self.burst;
            self.updated = now;
        } else if earned > 0 {
            // earned < room <= burst, so it fits in u64.
            self.tokens += u64::try_from(earned).unwrap_or(0);
            // The time those whole bytes took, rounded up: never more than `elapsed`, and the
            // remainder (a fraction of a byte) stays to be earned.
            let spent = (earned * NANOS_PER_SEC).div_ceil(u128::from(self.rate));
            self.updated += Duration::from_nanos(u64::try_from(spent).unwrap_or(u64::MAX));
        }
    }
}

/// Why a source is not being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pause {
    /// The destination's queue is at the cap: resume when it drains to half.
    Flow,
    /// The rate limit: resume at this time.
    Rate(Instant),
}

/// One direction of a session: bytes read from the source, waiting to be written to the
/// destination.
#[derive(Debug)]
pub(super) struct Pipe {
    queue: VecDeque<u8>,
    bucket: Option<TokenBucket>,
    /// Payload bytes read from the source.
    read: u64,
    /// The source sent EOF or failed: nothing more is read from it.
    source_done: bool,
    /// The destination failed: bytes read from the source are dropped.
    sink: bool,
    /// The destination's write side was shut down (the source's FIN forwarded).
    shut: bool,
    /// The source is not being read; an [`Action::Read`] is owed when it may be again.
    paused: Option<Pause>,
}

impl Pipe {
    fn new(queue: VecDeque<u8>, bucket: Option<TokenBucket>) -> Pipe {
        Pipe {
            queue,
            bucket,
            read: 0,
            source_done: false,
            sink: false,
            shut: false,
            paused: None,
        }
    }

    fn finished(&self) -> bool {
        self.source_done && (self.sink || self.shut)
    }
}

/// A connection's part in the relay.
#[derive(Debug)]
pub(super) enum RelayState {
    /// A line-protocol connection.
    None,
    /// Sent `RELAY <token>`; waits for the peer.
    Waiting {
        token: RelayToken,
        /// Bytes sent after the `RELAY` line, forwarded after `RELAY OK`.
        early: Vec<u8>,
        since: Instant,
    },
    /// Spliced: side `side` (0 or 1) of session `session`.
    Active { session: u64, side: usize },
}

/// Two spliced connections.
#[derive(Debug)]
pub(super) struct Session {
    token: RelayToken,
    conns: [ConnId; 2],
    peers: [SocketAddr; 2],
    /// `pipes[i]` carries what is read from `conns[i]` to `conns[1 - i]`.
    pipes: [Pipe; 2],
    started_at: Instant,
    last_activity: Instant,
    /// Set when a side failed: the session ends by then even if the other side never closes.
    linger_until: Option<Instant>,
    /// What first ended a direction, for the log.
    first_end: Option<String>,
}

/// The relay tables of a [`Core`].
#[derive(Debug, Default)]
pub(super) struct Relays {
    waiting: HashMap<RelayToken, ConnId>,
    sessions: HashMap<u64, Session>,
    active_tokens: HashSet<RelayToken>,
    /// Relay connections (waiting or active) per IP.
    per_ip: HashMap<IpAddr, usize>,
    /// Rate-limited sources to resume, by time.
    timers: BTreeSet<(Instant, ConnId)>,
    next_session: u64,
    /// Bytes held: early bytes of waiting connections plus every pipe's queue.
    queued: usize,
    queued_peak: usize,
    pub(super) paired: u64,
    pub(super) refused: u64,
    pub(super) bytes: u64,
}

impl Relays {
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn active(&self) -> usize {
        self.sessions.len()
    }

    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    pub(super) fn queued_peak(&self) -> usize {
        self.queued_peak
    }

    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    fn add_queued(&mut self, n: usize) {
        self.queued += n;
        self.queued_peak = self.queued_peak.max(self.queued);
    }

    fn ip_up(&mut self, ip: IpAddr) {
        *self.per_ip.entry(ip).or_insert(0) += 1;
    }

    fn ip_down(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// `a: <peer>` for logs.
struct Side<'a>(&'a SocketAddr);

impl fmt::Display for Side<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Core {
    /// `RELAY <token>` arrived as line number `line` of connection `id`.
    pub(super) fn relay_request(
        &mut self,
        now: Instant,
        id: ConnId,
        peer: SocketAddr,
        token: RelayToken,
        line: u32,
    ) {
        if !self.config.relay_enabled {
            return self.relay_refuse(id, &RelayError::Disabled);
        }
        if line != 1 {
            return self.relay_refuse(id, &RelayError::NotFirstLine { line });
        }
        if self.relays.active_tokens.contains(&token) {
            return self.relay_refuse(id, &RelayError::TokenInUse);
        }
        let limit = self.config.max_relays_per_ip;
        if self.relays.per_ip.get(&peer.ip()).copied().unwrap_or(0) >= limit {
            let ip = peer.ip();
            return self.relay_refuse(id, &RelayError::TooManyFromIp { ip, limit });
        }
        if let Some(&waiter) = self.relays.waiting.get(&token) {
            // Joining a waiting token adds no entry to the global count.
            self.pair(now, waiter, id, peer, token);
            return;
        }
        let limit = self.config.max_relays;
        if self.relays.waiting.len() + self.relays.sessions.len() >= limit {
            return self.relay_refuse(id, &RelayError::ServerFull { limit });
        }
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        let early = shrunk(conn.framer.take_buffered());
        let early_len = early.len();
        conn.relay = RelayState::Waiting {
            token,
            early,
            since: now,
        };
        self.relays.waiting.insert(token, id);
        self.relays.ip_up(peer.ip());
        self.relays.add_queued(early_len);
        debug!(conn = id.0, %peer, token = token.short(), "relay waiting");
        self.send(id, &Response::RelayWaiting);
        self.check_early_cap(id);
    }

    /// Sends `ERROR relay: <why>` and closes the connection.
    pub(super) fn relay_refuse(&mut self, id: ConnId, why: &RelayError) {
        self.relays.refused += 1;
        self.send(id, &Response::Error(format!("relay: {why}")));
        let reason = why.to_string();
        self.close(id, &reason);
    }

    /// Bytes after the `RELAY` line of a waiting connection: kept for the partner, up to a cap.
    pub(super) fn relay_early_data(&mut self, id: ConnId, data: &[u8]) {
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        if let RelayState::Waiting { early, .. } = &mut conn.relay {
            early.extend_from_slice(data);
            self.relays.add_queued(data.len());
            self.check_early_cap(id);
        }
    }

    fn check_early_cap(&mut self, id: ConnId) {
        let limit = self.config.relay_early_bytes;
        if let Some(conn) = self.live_conn(id)
            && let RelayState::Waiting { early, .. } = &conn.relay
            && early.len() > limit
        {
            let len = early.len();
            self.relay_refuse(id, &RelayError::EarlyDataOverCap { len, limit });
        }
    }

    /// Splices waiting connection `a` with `b`, which just presented the same token.
    fn pair(&mut self, now: Instant, a: ConnId, b: ConnId, b_peer: SocketAddr, token: RelayToken) {
        let ok = format!("{}\r\n", Response::RelayOk).into_bytes();
        let Some(Some(conn_b)) = self.conns.get_mut(b.0) else {
            return;
        };
        let early_b = conn_b.framer.take_buffered();
        let out_b = std::mem::take(&mut conn_b.out);
        let Some(Some(conn_a)) = self.conns.get_mut(a.0) else {
            return;
        };
        let a_peer = conn_a.peer;
        let early_a = match std::mem::replace(&mut conn_a.relay, RelayState::None) {
            RelayState::Waiting { early, .. } => early,
            _ => Vec::new(),
        };
        let out_a = std::mem::take(&mut conn_a.out);
        self.relays.waiting.remove(&token);
        // What each side is sent first: whatever line output it had not taken yet (its
        // `RELAY WAITING`), `RELAY OK`, then what the other side sent early.
        let mut to_b = VecDeque::with_capacity(out_b.len() + ok.len() + early_a.len());
        to_b.extend(out_b.iter().chain(&ok).chain(&early_a));
        let mut to_a = VecDeque::with_capacity(out_a.len() + ok.len() + early_b.len());
        to_a.extend(out_a.iter().chain(&ok).chain(&early_b));
        // Early bytes already count in `queued`: b's are new, plus the server's own lines.
        self.relays
            .add_queued(to_a.len() + to_b.len() - early_a.len());
        let mut buckets = [self.new_bucket(now), self.new_bucket(now)];
        for (bucket, early) in buckets.iter_mut().zip([&early_a, &early_b]) {
            if let Some(bucket) = bucket {
                bucket.take(early.len() as u64);
            }
        }
        let [bucket_a, bucket_b] = buckets;
        let mut pipe_a = Pipe::new(to_b, bucket_a);
        pipe_a.read = early_a.len() as u64;
        let mut pipe_b = Pipe::new(to_a, bucket_b);
        pipe_b.read = early_b.len() as u64;
        self.relays.bytes += (early_a.len() + early_b.len()) as u64;
        let sid = self.relays.next_session;
        self.relays.next_session += 1;
        self.relays.sessions.insert(
            sid,
            Session {
                token,
                conns: [a, b],
                peers: [a_peer, b_peer],
                pipes: [pipe_a, pipe_b],
                started_at: now,
                last_activity: now,
                linger_until: None,
                first_end: None,
            },
        );
        self.relays.active_tokens.insert(token);
        self.relays.ip_up(b_peer.ip());
        self.relays.paired += 1;
        for (side, id) in [a, b].into_iter().enumerate() {
            if let Some(Some(conn)) = self.conns.get_mut(id.0) {
                conn.relay = RelayState::Active { session: sid, side };
            }
            self.actions.push_back(Action::Flush(id));
        }
        info!(
            a = %a_peer,
            b = %b_peer,
            token = token.short(),
            "relay paired"
        );
    }

    fn new_bucket(&self, now: Instant) -> Option<TokenBucket> {
        let rate = self.config.relay_rate?;
        Some(TokenBucket::new(
            rate,
            (rate / 4).max(MIN_RELAY_BURST_BYTES),
            now,
        ))
    }

    /// The session and side of an active relay connection.
    fn side_of(&self, id: ConnId) -> Option<(u64, usize)> {
        match self.conns.get(id.0) {
            Some(Some(conn)) if !conn.closing => match conn.relay {
                RelayState::Active { session, side } => Some((session, side)),
                _ => None,
            },
            _ => None,
        }
    }

    /// How many bytes the driver may read from `id` now: `usize::MAX` for a line connection
    /// (use your buffer's size), 0 for a connection that must not be read (closed or closing;
    /// relayed and its partner's queue is full, its rate budget is spent, or it sent EOF). A paused connection
    /// gets an [`Action::Read`] when it may be read again.
    pub fn read_budget(&mut self, now: Instant, id: ConnId) -> usize {
        if self.live_conn(id).is_none() {
            return 0;
        }
        let Some((sid, side)) = self.side_of(id) else {
            return usize::MAX;
        };
        let cap = self.config.relay_buffer_bytes;
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return usize::MAX;
        };
        let pipe = &mut session.pipes[side];
        if pipe.source_done {
            return 0;
        }
        if pipe.sink {
            return usize::MAX;
        }
        let room = cap.saturating_sub(pipe.queue.len());
        if room == 0 {
            pipe.paused = Some(Pause::Flow);
            return 0;
        }
        let Some(bucket) = &mut pipe.bucket else {
            return room;
        };
        let tokens = bucket.available(now);
        if tokens == 0 {
            let at = bucket.ready_at(bucket.burst() / 4);
            pipe.paused = Some(Pause::Rate(at));
            self.relays.timers.insert((at, id));
            return 0;
        }
        usize::try_from(tokens).map_or(room, |t| t.min(room))
    }

    /// Where bytes read from `id` may be written straight away, skipping the queue: the
    /// partner, when `id` is relayed and nothing is queued for the partner. Report what was
    /// written with [`handle_relay_read`](Self::handle_relay_read).
    pub fn relay_direct_target(&self, id: ConnId) -> Option<ConnId> {
        let (sid, side) = self.side_of(id)?;
        let session = self.relays.sessions.get(&sid)?;
        let pipe = &session.pipes[side];
        (pipe.queue.is_empty() && !pipe.sink && !pipe.shut).then_some(session.conns[1 - side])
    }

    /// `data` was read from relayed connection `src`, and its first `written` bytes were
    /// already written to the partner (see [`relay_direct_target`](Self::relay_direct_target));
    /// the rest is queued for it. [`handle_data`](Self::handle_data) is this with `written` 0.
    pub fn handle_relay_read(&mut self, now: Instant, src: ConnId, data: &[u8], written: usize) {
        let Some((sid, side)) = self.side_of(src) else {
            return;
        };
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return;
        };
        session.last_activity = now;
        let dst = session.conns[1 - side];
        let pipe = &mut session.pipes[side];
        pipe.read += data.len() as u64;
        if let Some(bucket) = &mut pipe.bucket {
            bucket.take(data.len() as u64);
        }
        if pipe.sink {
            return;
        }
        self.relays.bytes += data.len() as u64;
        let rest = &data[written.min(data.len())..];
        if rest.is_empty() {
            return;
        }
        let was_empty = pipe.queue.is_empty();
        pipe.queue.extend(rest);
        self.relays.add_queued(rest.len());
        if was_empty {
            self.actions.push_back(Action::Flush(dst));
        }
    }

    /// The bytes queued for relayed connection `id`.
    pub(super) fn relay_output(&self, id: ConnId) -> Option<&[u8]> {
        let (sid, side) = self.side_of(id)?;
        let pipe = &self.relays.sessions.get(&sid)?.pipes[1 - side];
        Some(if pipe.sink {
            &[]
        } else {
            pipe.queue.as_slices().0
        })
    }

    /// `n` bytes queued for relayed connection `id` were written. Returns false if `id` is not
    /// relayed.
    pub(super) fn relay_consumed(&mut self, now: Instant, id: ConnId, n: usize) -> bool {
        let Some((sid, side)) = self.side_of(id) else {
            return false;
        };
        let half = self.config.relay_buffer_bytes / 2;
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return false;
        };
        let src = session.conns[1 - side];
        let pipe = &mut session.pipes[1 - side];
        let n = n.min(pipe.queue.len());
        pipe.queue.drain(..n);
        self.relays.queued -= n;
        if n > 0 {
            session.last_activity = now;
        }
        if pipe.queue.is_empty() && pipe.queue.capacity() > RETAINED_QUEUE_BYTES {
            pipe.queue = VecDeque::new();
        }
        if pipe.paused == Some(Pause::Flow) && pipe.queue.len() <= half {
            pipe.paused = None;
            self.actions.push_back(Action::Read(src));
        }
        self.forward_fin(sid, 1 - side);
        true
    }

    /// If direction `dir` of session `sid` has nothing left to send and its source is done,
    /// shuts the destination's write side; ends the session when everything is finished.
    fn forward_fin(&mut self, sid: u64, dir: usize) {
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return;
        };
        let dst = session.conns[1 - dir];
        let pipe = &mut session.pipes[dir];
        if pipe.source_done && !pipe.sink && !pipe.shut && pipe.queue.is_empty() {
            pipe.shut = true;
            self.actions.push_back(Action::ShutdownWrite(dst));
        }
        if session.pipes.iter().all(Pipe::finished) {
            let reason = session
                .first_end
                .clone()
                .unwrap_or_else(|| "both sides closed".to_string());
            self.end_session(sid, &reason);
        }
    }

    /// Relayed connection `id` sent EOF: forward it once what it sent is written.
    pub(super) fn relay_eof(&mut self, now: Instant, id: ConnId) -> bool {
        let Some((sid, side)) = self.side_of(id) else {
            return false;
        };
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return false;
        };
        session.last_activity = now;
        let peer = session.peers[side];
        session
            .first_end
            .get_or_insert_with(|| format!("{} closed", Side(&peer)));
        let pipe = &mut session.pipes[side];
        pipe.source_done = true;
        self.unpause(sid, side);
        debug!(conn = id.0, %peer, "relay side sent EOF");
        self.forward_fin(sid, side);
        true
    }

    /// Relayed connection `id` failed (read or write error): drop what is queued for it,
    /// forward what it sent, and read its partner to EOF (or [`RELAY_LINGER`]).
    pub(super) fn relay_failed(&mut self, now: Instant, id: ConnId, why: &str) -> bool {
        let Some((sid, side)) = self.side_of(id) else {
            return false;
        };
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return false;
        };
        let peer = session.peers[side];
        let partner = session.conns[1 - side];
        session
            .first_end
            .get_or_insert_with(|| format!("{} failed: {why}", Side(&peer)));
        session.linger_until.get_or_insert(now + RELAY_LINGER);
        let from = &mut session.pipes[side];
        from.source_done = true;
        let to = &mut session.pipes[1 - side];
        to.sink = true;
        let dropped = to.queue.len();
        to.queue = VecDeque::new();
        let resume = to.paused.take().is_some() && !to.source_done;
        self.relays.queued -= dropped;
        self.unpause(sid, side);
        if resume {
            self.actions.push_back(Action::Read(partner));
        }
        debug!(conn = id.0, %peer, why, "relay side failed");
        self.forward_fin(sid, side);
        self.forward_fin(sid, 1 - side);
        true
    }

    /// Forgets that direction `dir`'s source was paused (and its timer).
    fn unpause(&mut self, sid: u64, dir: usize) {
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return;
        };
        let src = session.conns[dir];
        if let Some(Pause::Rate(at)) = session.pipes[dir].paused.take() {
            self.relays.timers.remove(&(at, src));
        }
    }

    /// Fires due rate-limit timers: paused sources get an [`Action::Read`].
    pub(super) fn relay_timers(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.relays.timers.first() {
            if at > now {
                return;
            }
            self.relays.timers.pop_first();
            let Some((sid, side)) = self.side_of(id) else {
                continue;
            };
            if let Some(session) = self.relays.sessions.get_mut(&sid) {
                let pipe = &mut session.pipes[side];
                if pipe.paused == Some(Pause::Rate(at)) {
                    pipe.paused = None;
                    self.actions.push_back(Action::Read(id));
                }
            }
        }
    }

    /// The relay part of the sweep: waits, idle sessions, lingering sessions.
    pub(super) fn relay_expire(&mut self, now: Instant) {
        let wait = self.config.relay_wait_timeout;
        let expired: Vec<ConnId> = self
            .relays
            .waiting
            .values()
            .copied()
            .filter(|id| match self.conns.get(id.0) {
                Some(Some(conn)) => match conn.relay {
                    RelayState::Waiting { since, .. } => {
                        now.saturating_duration_since(since) >= wait
                    }
                    _ => false,
                },
                _ => false,
            })
            .collect();
        for id in expired {
            self.relay_refuse(id, &RelayError::WaitTimeout { waited: wait });
        }
        let idle = self.config.relay_idle_timeout;
        let ended: Vec<(u64, String)> = self
            .relays
            .sessions
            .iter()
            .filter_map(|(&sid, s)| {
                if now.saturating_duration_since(s.last_activity) >= idle {
                    Some((sid, format!("idle for {idle:?}")))
                } else if s.linger_until.is_some_and(|t| now >= t) {
                    let first = s.first_end.as_deref().unwrap_or("a side failed");
                    Some((
                        sid,
                        format!("{first}; the other side did not close within {RELAY_LINGER:?}"),
                    ))
                } else {
                    None
                }
            })
            .collect();
        for (sid, reason) in ended {
            self.end_session(sid, &reason);
        }
    }

    /// Removes a session, logs it, and closes both connections.
    fn end_session(&mut self, sid: u64, reason: &str) {
        let now = self.now;
        let Some(session) = self.relays.sessions.remove(&sid) else {
            return;
        };
        self.relays.active_tokens.remove(&session.token);
        for (side, pipe) in session.pipes.iter().enumerate() {
            self.relays.queued -= pipe.queue.len();
            if let Some(Pause::Rate(at)) = pipe.paused {
                self.relays.timers.remove(&(at, session.conns[side]));
            }
        }
        for peer in &session.peers {
            self.relays.ip_down(peer.ip());
        }
        info!(
            a = %session.peers[0],
            b = %session.peers[1],
            a_to_b = session.pipes[0].read,
            b_to_a = session.pipes[1].read,
            secs = format!("{:.3}", now.saturating_duration_since(session.started_at).as_secs_f64()),
            token = session.token.short(),
            reason,
            "relay session ended"
        );
        for id in session.conns {
            if let Some(Some(conn)) = self.conns.get_mut(id.0) {
                conn.relay = RelayState::None;
            }
            self.close(id, reason);
        }
    }

    /// Called when a connection is being closed: removes it from the relay tables. Returns
    /// true if it was relayed (its session ended, which closed it and its partner).
    pub(super) fn relay_detach(&mut self, id: ConnId, reason: &str) -> bool {
        let Some(Some(conn)) = self.conns.get_mut(id.0) else {
            return false;
        };
        let peer = conn.peer;
        match std::mem::replace(&mut conn.relay, RelayState::None) {
            RelayState::None => false,
            RelayState::Waiting { token, early, .. } => {
                if self.relays.waiting.get(&token) == Some(&id) {
                    self.relays.waiting.remove(&token);
                }
                self.relays.queued -= early.len();
                self.relays.ip_down(peer.ip());
                debug!(conn = id.0, %peer, reason, "relay wait ended");
                false
            }
            RelayState::Active { session, .. } => {
                self.end_session(session, reason);
                true
            }
        }
    }

    /// Ends every session and refuses every waiting connection (server shutdown).
    pub(super) fn relay_shutdown(&mut self) {
        let waiting: Vec<ConnId> = self.relays.waiting.values().copied().collect();
        for id in waiting {
            self.relay_refuse(id, &RelayError::ShuttingDown);
        }
        let sessions: Vec<u64> = self.relays.sessions.keys().copied().collect();
        for sid in sessions {
            self.end_session(sid, "server shutting down");
        }
    }
}

/// `buf`, or an unallocated vector when it is empty.
fn shrunk(buf: Vec<u8>) -> Vec<u8> {
    if buf.is_empty() { Vec::new() } else { buf }
}

#[cfg(test)]
mod tests;
