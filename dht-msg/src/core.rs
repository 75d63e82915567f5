//! The mailbox server's logic, sans-IO.
//!
//! [`Core`] never touches a socket, a file or a clock. The driver feeds it connection events with
//! the current time ([`Core::handle_open`], [`Core::handle_data`], [`Core::handle_eof`],
//! [`Core::handle_closed`], [`Core::handle_timeout`]) and carries out what it asks for:
//! - [`Core::poll_store`]: changes to persist (only when the server has a data directory). The
//!   driver commits them *before* carrying out any action, so a client never sees `OK PUT`
//!   for a message that is not yet on disk.
//! - [`Core::poll_action`]: write a connection's pending output, or close it.
//!
//! One port serves two protocols: the first bytes of a connection decide ([`wire::http::sniff`]).
//! An HTTP request gets one response and the connection closes; anything else is the line
//! protocol of [`wire::mailbox`].
//!
//! This file holds the state and the driving calls; the rules live in child modules, each an
//! `impl Core` of one concern: `rules` (secrets, registration, `PUT` with its quotas,
//! delivery, expiry), `line` (the line protocol and pushes), `http_api` (PyP2P's HTTP API and
//! long polls), `records` (what is persisted, and `restore`), `rate` (per-IP token buckets).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use server_kit::{Admission, Slab};
pub use server_kit::{ConnId, Refusal};
use tracing::debug;
use wire::http::{self, Sniff};
use wire::line::LineFramer;
use wire::mailbox::{NodeId, Reply};
use wire::signal::RegisterChallenge;

use crate::config::Config;
pub use keys::{KEY_REFUSALS, USED_PROOFS_KEPT};
use rate::IpBuckets;
pub use records::{MailboxRecord, MessageRecord, Owner, Restored, StoreOp};
pub use stats::{BackendStats, CLOSING_LIMITS, LINE_VERBS, REFUSALS, REGISTRATION_KINDS, Stats};

/// The HTTP path PyP2P's clients call.
pub const HTTP_PATH: &str = "/dht_msg.php";
/// `find_neighbours` returns at most this many nodes (PyP2P: 5).
pub const MAX_NEIGHBOURS: usize = 5;
/// `find_neighbours` only returns nodes seen this recently.
pub const NEIGHBOUR_FRESHNESS: Duration = Duration::from_mins(15);
/// Longest HTTP `network_id`, in bytes.
pub const MAX_NETWORK_ID_BYTES: usize = 64;
/// Bytes charged against `max_stored_bytes` per message, on top of its body.
pub const MESSAGE_OVERHEAD_BYTES: usize = 160;
/// Bytes charged against `max_stored_bytes` per mailbox.
pub const MAILBOX_OVERHEAD_BYTES: usize = 320;
/// How often mailboxes are checked for expiry and idle rate-limit entries are dropped.
const MAILBOX_SWEEP_INTERVAL: Duration = Duration::from_mins(1);
/// A mailbox's "last seen" is written to disk at most this often (it only drives expiry).
const TOUCH_PERSIST_INTERVAL: Duration = Duration::from_hours(1);
/// Output buffers above this size are released when they empty.
const RETAINED_OUTPUT_BYTES: usize = 4096;

/// Work the driver must carry out, drained with [`Core::poll_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write [`Core::pending_output`] of this connection.
    Flush(ConnId),
    /// Write what is pending (best effort), close the socket, then call [`Core::handle_closed`].
    Close(ConnId),
}

/// Why an operation was refused, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Denied {
    status: u16,
    reason: String,
}

impl Denied {
    fn new(status: u16, reason: String) -> Denied {
        Denied { status, reason }
    }

    /// Its index in [`REFUSALS`].
    fn kind(&self) -> usize {
        match self.status {
            403 => 1,
            404 => 2,
            413 => 3,
            429 => 4,
            503 | 507 => 5,
            _ => 0,
        }
    }
}

#[derive(Debug)]
enum Mode {
    /// Too few bytes yet to tell HTTP from the line protocol.
    Sniffing(Vec<u8>),
    Line(LineFramer),
    /// Reading an HTTP request head.
    Http(Vec<u8>),
    /// An HTTP `list` waiting for a message (long poll).
    HttpWaiting {
        node_id: NodeId,
        pop: bool,
        deadline: Instant,
    },
    /// The answer is queued; the connection closes once it is written.
    Done,
}

#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    /// The server's address on this connection (what the client dialed): the server's name
    /// in a `CHALLENGE` when it has no `--name`.
    local: SocketAddr,
    /// The last `CHALLENGE` sent on this connection, until a `REGISTER_KEY` answers it.
    challenge: Option<RegisterChallenge>,
    mode: Mode,
    out: Vec<u8>,
    last_activity: Instant,
    bad_lines: u32,
    /// The mailbox this connection proved it owns (`REGISTER`, `REGISTER_KEY`).
    owner: Option<NodeId>,
    /// Set while it receives its mailbox's messages as they arrive (`SUBSCRIBE`).
    subscription: Option<Subscription>,
    /// No more input is handled; close once the output is written.
    close_when_drained: bool,
    /// A `Close` action has been issued.
    closing: bool,
}

/// Push progress of one subscribed connection.
#[derive(Debug, Clone, Default)]
struct Subscription {
    /// Messages of the mailbox already pushed on this subscription (ids are not in arrival
    /// order when several instances share a backend, so a set rather than a high mark; it
    /// holds at most a mailbox's worth).
    pushed: BTreeSet<u64>,
    /// Pushing stopped at the high-water mark; it resumes as the client reads.
    paused: bool,
}

/// The mailbox server's state machine. See the module docs for the driving contract.
#[derive(Debug)]
pub struct Core {
    config: Config,
    salt: [u8; 32],
    conns: Slab<Conn>,
    admission: Admission,
    /// Rate-limit buckets by [`server_kit::caller_key`].
    buckets: HashMap<IpAddr, IpBuckets>,
    mailboxes: HashMap<NodeId, Mailbox>,
    /// Every stored message by id.
    messages: BTreeMap<u64, Message>,
    /// Every stored message by expiry (ids are only in expiry order on one instance).
    expiry: BTreeSet<(Instant, u64)>,
    next_message_id: u64,
    stored_bytes: usize,
    /// HTTP long polls by deadline.
    waiting: BTreeSet<(Instant, ConnId)>,
    actions: VecDeque<Action>,
    store_ops: Vec<StoreOp>,
    persist: bool,
    next_sweep: Instant,
    next_mailbox_sweep: Instant,
    sweep_interval: Duration,
    clock_base: (Instant, SystemTime),
    stats: Stats,
    /// Signed registration: challenge nonces, per-key rate limits, proofs already used.
    keys: keys::KeyState,
}

impl Core {
    /// A server with no mailboxes. `salt` keys the secret hashes (keep it with the data);
    /// `now` and `wall` are the same moment on the monotonic and the wall clock (the wall clock
    /// only dates persisted records). With `persist`, changes are queued for
    /// [`poll_store`](Self::poll_store).
    pub fn new(
        config: Config,
        salt: [u8; 32],
        persist: bool,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let sweep_interval = [
            Duration::from_secs(1),
            config.idle_timeout / 4,
            config.message_ttl / 4,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(10));
        let mailbox_sweep = MAILBOX_SWEEP_INTERVAL
            .min(config.mailbox_ttl / 4)
            .max(Duration::from_millis(10));
        Core {
            admission: Admission::new(config.max_connections, config.max_connections_per_ip),
            config,
            salt,
            conns: Slab::default(),
            buckets: HashMap::new(),
            mailboxes: HashMap::new(),
            messages: BTreeMap::new(),
            expiry: BTreeSet::new(),
            next_message_id: 1,
            stored_bytes: 0,
            waiting: BTreeSet::new(),
            actions: VecDeque::new(),
            store_ops: Vec::new(),
            persist,
            next_sweep: now + sweep_interval,
            next_mailbox_sweep: now + mailbox_sweep,
            sweep_interval,
            keys: keys::KeyState::new(&salt, wall),
            clock_base: (now, wall),
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
            mailboxes: self.mailboxes.len(),
            messages: self.messages.len(),
            stored_bytes: self.stored_bytes,
            accepted: self.admission.accepted(),
            refused: self.admission.refused(),
            refused_by_reason: self.admission.refused_by_reason().map(|(_, n)| n),
            open: self.admission.open(),
            ..self.stats
        }
    }

    /// A new client connected from `peer` to `local` (the server's address it dialed). On
    /// refusal the driver should send `ERROR <refusal>` if it can and close the socket;
    /// nothing is kept for it.
    pub fn handle_open(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<ConnId, Refusal> {
        self.admission.admit(peer.ip())?;
        self.stats.accepted_by_family[server_kit::family_index(peer.ip())] += 1;
        let conn = Conn {
            peer,
            local,
            challenge: None,
            mode: Mode::Sniffing(Vec::new()),
            out: Vec::new(),
            last_activity: now,
            bad_lines: 0,
            owner: None,
            subscription: None,
            close_when_drained: false,
            closing: false,
        };
        let id = self.conns.insert(conn);
        debug!(conn = id.0, %peer, "connection opened");
        Ok(id)
    }

    /// Bytes arrived on a connection.
    pub fn handle_data(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let max_line = self.config.max_line_bytes();
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        match &mut conn.mode {
            Mode::Sniffing(buf) => {
                buf.extend_from_slice(data);
                let verdict = match http::sniff(buf) {
                    Sniff::NeedMore if buf.contains(&b'\n') => Sniff::NotHttp,
                    other => other,
                };
                match verdict {
                    Sniff::NeedMore => {}
                    Sniff::Http => {
                        let buf = std::mem::take(buf);
                        conn.mode = Mode::Http(buf);
                        self.http_input(now, id);
                    }
                    Sniff::NotHttp => {
                        let mut framer = LineFramer::new(max_line);
                        framer.push(buf);
                        conn.mode = Mode::Line(framer);
                        self.line_input(now, id);
                    }
                }
            }
            Mode::Line(framer) => {
                framer.push(data);
                self.line_input(now, id);
            }
            Mode::Http(buf) => {
                buf.extend_from_slice(data);
                self.http_input(now, id);
            }
            // A request body or pipelined bytes after the one request served: ignored.
            Mode::HttpWaiting { .. } | Mode::Done => {}
        }
    }

    /// The peer closed its side or the connection failed.
    pub fn handle_eof(&mut self, id: ConnId) {
        self.close(id, "closed by peer");
    }

    /// The driver has closed the socket of a connection it was told to close; its id may be
    /// reused from now on.
    pub fn handle_closed(&mut self, id: ConnId) {
        self.conns.remove(id);
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Instant {
        match self.waiting.first() {
            Some(&(deadline, _)) => deadline.min(self.next_sweep),
            None => self.next_sweep,
        }
    }

    /// Time passed: answer long polls that waited long enough, expire messages and mailboxes,
    /// close idle connections.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.waiting.first() {
            if deadline > now {
                break;
            }
            self.waiting.pop_first();
            self.answer_waiter(now, id);
        }
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + self.sweep_interval;
        self.expire_messages(now);
        self.close_idle(now);
        if now >= self.next_mailbox_sweep {
            self.next_mailbox_sweep = now
                + MAILBOX_SWEEP_INTERVAL
                    .min(self.config.mailbox_ttl / 4)
                    .max(Duration::from_millis(10));
            self.expire_mailboxes(now);
            self.prune_buckets(now);
            self.prune_key_buckets(now);
        }
    }

    /// The next thing the driver must do, if any. Drain [`poll_store`](Self::poll_store) first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Takes every change queued for the store since the last call (empty without persistence).
    pub fn poll_store(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.store_ops)
    }

    /// Bytes waiting to be written to a connection.
    pub fn pending_output(&self, id: ConnId) -> &[u8] {
        self.conns.get(id).map_or(&[], |conn| &conn.out)
    }

    /// The driver wrote the first `n` bytes of [`pending_output`](Self::pending_output).
    pub fn consume_output(&mut self, id: ConnId, n: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.out.drain(..n.min(conn.out.len()));
        if let Some(sub) = &mut conn.subscription
            && sub.paused
            && conn.out.len() <= self.config.max_output_bytes / 4
        {
            sub.paused = false;
            self.push_pending(id);
            return;
        }
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.out.is_empty() {
            if conn.out.capacity() > RETAINED_OUTPUT_BYTES {
                conn.out = Vec::new();
            }
            if conn.close_when_drained {
                self.close(id, "answered");
            }
        }
    }

    /// Every open connection, for shutdown.
    pub fn open_connections(&self) -> Vec<ConnId> {
        self.conns.ids()
    }

    // ----- connections -------------------------------------------------------------------

    /// A connection whose input is still handled.
    fn live_conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        match self.conns.get_mut(id) {
            Some(conn) if !conn.closing && !conn.close_when_drained => Some(conn),
            _ => None,
        }
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id)
    }

    /// Closes at once (the driver flushes what it can first).
    fn close(&mut self, id: ConnId, why: &str) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        let peer = conn.peer;
        let owner = conn.owner.take();
        let subscribed = conn.subscription.take().is_some();
        let waiting = match &conn.mode {
            Mode::HttpWaiting {
                node_id, deadline, ..
            } => Some((node_id.clone(), *deadline)),
            _ => None,
        };
        conn.mode = Mode::Done;
        if subscribed
            && let Some(owner) = &owner
            && let Some(mailbox) = self.mailboxes.get_mut(owner)
            && mailbox.subscriber == Some(id)
        {
            mailbox.subscriber = None;
        }
        if let Some((node_id, deadline)) = waiting {
            self.waiting.remove(&(deadline, id));
            if let Some(mailbox) = self.mailboxes.get_mut(&node_id) {
                mailbox.waiters.retain(|&w| w != id);
            }
        }
        self.admission.release(peer.ip());
        self.actions.push_back(Action::Close(id));
        debug!(conn = id.0, %peer, why, "connection closing");
    }

    /// Stops reading, and closes once the queued output is written.
    fn finish(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing || conn.close_when_drained {
            return;
        }
        conn.close_when_drained = true;
        if conn.out.is_empty() {
            self.close(id, "done");
        } else {
            self.actions.push_back(Action::Flush(id));
        }
    }

    /// Queues bytes for a connection; one that lets its unread output pass the cap is
    /// disconnected (what it was sent stays stored).
    fn queue(&mut self, id: ConnId, bytes: &[u8]) -> bool {
        let limit = self.config.max_output_bytes;
        let Some(conn) = self.conn_mut(id) else {
            return false;
        };
        if conn.closing {
            return false;
        }
        if conn.out.len() + bytes.len() > limit {
            self.stats.closed_by_limit[2] += 1;
            self.close(id, "not reading (output cap reached)");
            return false;
        }
        let was_empty = conn.out.is_empty();
        conn.out.extend_from_slice(bytes);
        if was_empty {
            self.actions.push_back(Action::Flush(id));
        }
        true
    }

    fn send(&mut self, id: ConnId, reply: &Reply) -> bool {
        let mut line = Vec::with_capacity(64);
        // Writing into a Vec cannot fail.
        let _ = write!(line, "{reply}\r\n");
        self.queue(id, &line)
    }

    fn bad_line(&mut self, id: ConnId, reason: &dyn fmt::Display) {
        self.stats.bad_lines += 1;
        self.send(id, &Reply::error(reason));
        let limit = self.config.max_bad_lines;
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        conn.bad_lines += 1;
        if conn.bad_lines >= limit {
            self.stats.closed_by_limit[1] += 1;
            self.send(
                id,
                &Reply::error(&format!("too many malformed lines ({limit}), closing")),
            );
            self.finish(id);
        }
    }

    fn close_idle(&mut self, now: Instant) {
        let idle_timeout = self.config.idle_timeout;
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(id, c)| {
                let waiting = matches!(c.mode, Mode::HttpWaiting { .. });
                let idle = now.saturating_duration_since(c.last_activity) >= idle_timeout;
                (!c.closing && !waiting && idle).then_some(id)
            })
            .collect();
        for id in idle {
            self.stats.closed_by_limit[3] += 1;
            self.close(id, "idle timeout");
        }
    }
}
mod http_api;
mod keys;
mod line;
mod mailbox;
use mailbox::{Mailbox, Message};
mod rate;
mod records;
mod remote;
mod rules;
mod stats;
#[cfg(test)]
mod tests;
