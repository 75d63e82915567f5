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
//!
//! This file: the types, pairing, limits, timeouts and the end of a session; `pipe` (a child
//! module) is the byte path (budgets, queues, FINs, failures), `bucket` the [`TokenBucket`].

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, info};
use wire::rendezvous::{RelayToken, Response};

use super::{Action, ConnId, Core};
pub use bucket::TokenBucket;

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

    /// Relay connections from `ip` (from its IPv6 /64: [`server_kit::caller_key`]).
    fn held_by(&self, ip: IpAddr) -> usize {
        self.per_ip
            .get(&server_kit::caller_key(ip))
            .copied()
            .unwrap_or(0)
    }

    fn ip_up(&mut self, ip: IpAddr) {
        *self.per_ip.entry(server_kit::caller_key(ip)).or_insert(0) += 1;
    }

    fn ip_down(&mut self, ip: IpAddr) {
        let key = server_kit::caller_key(ip);
        if let Some(n) = self.per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&key);
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
        if self.relays.held_by(peer.ip()) >= limit {
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
        let hits = &mut self.stats.limit_hits;
        match why {
            RelayError::ServerFull { .. } => hits.relay_server_full += 1,
            RelayError::TooManyFromIp { .. } => hits.relay_per_ip += 1,
            RelayError::EarlyDataOverCap { .. } => hits.relay_early_data += 1,
            RelayError::WaitTimeout { .. } => hits.relay_wait_timeout += 1,
            _ => {}
        }
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
        let Some(conn_b) = self.conns.get_mut(b) else {
            return;
        };
        let early_b = conn_b.framer.take_buffered();
        let out_b = std::mem::take(&mut conn_b.out);
        let Some(conn_a) = self.conns.get_mut(a) else {
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
            if let Some(conn) = self.conns.get_mut(id) {
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
        match self.conns.get(id) {
            Some(conn) if !conn.closing => match conn.relay {
                RelayState::Active { session, side } => Some((session, side)),
                _ => None,
            },
            _ => None,
        }
    }

    /// How many bytes the driver may read from `id` now: `usize::MAX` for a line connection
    /// The relay part of the sweep: waits, idle sessions, lingering sessions.
    pub(super) fn relay_expire(&mut self, now: Instant) {
        let wait = self.config.relay_wait_timeout;
        let expired: Vec<ConnId> = self
            .relays
            .waiting
            .values()
            .copied()
            .filter(|id| match self.conns.get(*id) {
                Some(conn) => match conn.relay {
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
            if let Some(conn) = self.conns.get_mut(id) {
                conn.relay = RelayState::None;
            }
            self.close(id, reason);
        }
    }

    /// Called when a connection is being closed: removes it from the relay tables. Returns
    /// true if it was relayed (its session ended, which closed it and its partner).
    pub(super) fn relay_detach(&mut self, id: ConnId, reason: &str) -> bool {
        let Some(conn) = self.conns.get_mut(id) else {
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

mod bucket;
mod pipe;
#[cfg(test)]
mod tests;
