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
//! One port serves two protocols: the first bytes of a connection decide ([`node::http::sniff`]).
//! An HTTP request gets one response and the connection closes; anything else is the line
//! protocol of [`crate::wire`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use node::http::{self, HttpError, Sniff};
use node::proto::line::{LineError, LineFramer};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

use crate::config::Config;
use crate::wire::{self, Delivery, MessageId, NodeId, Reply, Request, Secret};

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

/// Identifies one client connection while it is open. Ids are reused after
/// [`Core::handle_closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// Work the driver must carry out, drained with [`Core::poll_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write [`Core::pending_output`] of this connection.
    Flush(ConnId),
    /// Write what is pending (best effort), close the socket, then call [`Core::handle_closed`].
    Close(ConnId),
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

/// Counters for logs, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused by a limit.
    pub refused: u64,
    /// Connections open now.
    pub open: usize,
    /// Well-formed protocol lines handled.
    pub lines: u64,
    /// Lines and HTTP requests answered with an error.
    pub bad_lines: u64,
    /// HTTP requests handled.
    pub http_requests: u64,
    /// Messages accepted.
    pub puts: u64,
    /// `MSG` lines pushed to subscribers.
    pub pushed: u64,
    /// Messages deleted by their owner (`ACK`, or HTTP `list` with `list_pop=1`).
    pub deleted: u64,
    /// Messages dropped because their TTL passed.
    pub expired: u64,
    /// Mailboxes now.
    pub mailboxes: usize,
    /// Messages stored now.
    pub messages: usize,
    /// Bytes charged against `max_stored_bytes` now.
    pub stored_bytes: usize,
}

/// A mailbox as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRecord {
    /// Its name.
    pub node_id: NodeId,
    /// `sha256(salt ‖ len(node_id) ‖ node_id ‖ secret)`.
    pub secret_hash: [u8; 32],
    /// When its owner was last seen (Unix time, milliseconds).
    pub last_seen_unix_ms: u64,
    /// PyP2P's `network_id` (for `find_neighbours`).
    pub network_id: String,
    /// The address its owner last registered from (for `find_neighbours`).
    pub ip: Option<IpAddr>,
    /// The port its owner announced over HTTP (0 if none).
    pub port: u16,
}

/// A message as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Its id.
    pub id: MessageId,
    /// The recipient mailbox.
    pub to: NodeId,
    /// The proven sender, if any.
    pub from: Option<NodeId>,
    /// The message.
    pub body: String,
    /// When it expires (Unix time, milliseconds).
    pub expires_unix_ms: u64,
}

/// A change the driver must persist, drained with [`Core::poll_store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace a mailbox.
    PutMailbox(MailboxRecord),
    /// Remove a mailbox (its messages are removed with their own ops).
    DeleteMailbox(NodeId),
    /// Insert a message.
    PutMessage(MessageRecord),
    /// Remove a message.
    DeleteMessage(MessageId),
}

/// What [`Core::restore`] kept and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Mailboxes restored.
    pub mailboxes: usize,
    /// Messages restored.
    pub messages: usize,
    /// Records dropped because they expired while the server was down (or were orphans).
    pub dropped: usize,
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
    mode: Mode,
    out: Vec<u8>,
    last_activity: Instant,
    bad_lines: u32,
    /// The mailbox this connection proved it owns (`REGISTER`).
    owner: Option<NodeId>,
    /// Set while it receives its mailbox's messages as they arrive (`SUBSCRIBE`).
    subscription: Option<Subscription>,
    /// No more input is handled; close once the output is written.
    close_when_drained: bool,
    /// A `Close` action has been issued.
    closing: bool,
}

/// Push progress of one subscribed connection.
#[derive(Debug, Clone, Copy, Default)]
struct Subscription {
    /// Messages of the mailbox up to this id were pushed on this subscription.
    pushed_upto: u64,
    /// Pushing stopped at the high-water mark; it resumes as the client reads.
    paused: bool,
}

#[derive(Debug)]
struct Mailbox {
    secret_hash: [u8; 32],
    /// Ids of its pending messages, oldest first.
    messages: BTreeSet<u64>,
    bytes: usize,
    subscriber: Option<ConnId>,
    waiters: Vec<ConnId>,
    last_seen: Instant,
    persisted_seen: Instant,
    network_id: String,
    ip: Option<IpAddr>,
    port: u16,
}

#[derive(Debug)]
struct Message {
    to: NodeId,
    from: Option<NodeId>,
    body: Box<str>,
    expires_at: Instant,
}

impl Message {
    fn delivery(&self, id: u64) -> Delivery {
        Delivery {
            id: MessageId(id),
            from: self.from.clone(),
            body: self.body.to_string(),
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: u32) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.at = now;
    }

    /// Takes a token, or says how long until one is available.
    fn take(&mut self, now: Instant, rate: f64, burst: u32) -> Result<(), Duration> {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate > 0.0 {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate).min(1e9),
            ))
        } else {
            Err(Duration::MAX)
        }
    }

    fn has_token(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        self.refill(now, rate, burst);
        self.tokens >= 1.0
    }

    fn is_full(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        self.refill(now, rate, burst);
        self.tokens >= f64::from(burst)
    }
}

#[derive(Debug, Clone, Copy)]
struct IpBuckets {
    put: Bucket,
    register: Bucket,
}

fn retry_text(wait: Duration) -> String {
    if wait == Duration::MAX {
        "never (rate 0)".to_string()
    } else {
        format!("in {:.1} s", wait.as_secs_f64().max(0.1))
    }
}

/// The mailbox server's state machine. See the module docs for the driving contract.
#[derive(Debug)]
pub struct Core {
    config: Config,
    salt: [u8; 32],
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    per_ip: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, IpBuckets>,
    mailboxes: HashMap<NodeId, Mailbox>,
    /// Every stored message by id. TTLs are equal, so id order is expiry order.
    messages: BTreeMap<u64, Message>,
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
            config,
            salt,
            conns: Vec::new(),
            free: Vec::new(),
            per_ip: HashMap::new(),
            buckets: HashMap::new(),
            mailboxes: HashMap::new(),
            messages: BTreeMap::new(),
            next_message_id: 1,
            stored_bytes: 0,
            waiting: BTreeSet::new(),
            actions: VecDeque::new(),
            store_ops: Vec::new(),
            persist,
            next_sweep: now + sweep_interval,
            next_mailbox_sweep: now + mailbox_sweep,
            sweep_interval,
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
            ..self.stats
        }
    }

    /// Loads persisted state (at start-up, before any connection). Records that expired while
    /// the server was down are dropped, and their deletion is queued for the store. Limits are
    /// not applied: nothing that was accepted is dropped because a limit was lowered. New
    /// message ids start at `next_message_id` (or after the largest restored id).
    pub fn restore(
        &mut self,
        now: Instant,
        mailboxes: Vec<MailboxRecord>,
        mut messages: Vec<MessageRecord>,
        next_message_id: u64,
    ) -> Restored {
        let mut restored = Restored::default();
        self.next_message_id = self.next_message_id.max(next_message_id);
        let now_ms = self.unix_ms(now);
        for record in mailboxes {
            let seen_ms_ago = now_ms.saturating_sub(record.last_seen_unix_ms);
            if Duration::from_millis(seen_ms_ago) >= self.config.mailbox_ttl {
                restored.dropped += 1;
                self.queue_store(StoreOp::DeleteMailbox(record.node_id));
                continue;
            }
            let last_seen = now
                .checked_sub(Duration::from_millis(seen_ms_ago))
                .unwrap_or(now);
            self.stored_bytes += mailbox_cost(&record.node_id, &record.network_id);
            self.mailboxes.insert(
                record.node_id,
                Mailbox {
                    secret_hash: record.secret_hash,
                    messages: BTreeSet::new(),
                    bytes: 0,
                    subscriber: None,
                    waiters: Vec::new(),
                    last_seen,
                    persisted_seen: last_seen,
                    network_id: record.network_id,
                    ip: record.ip,
                    port: record.port,
                },
            );
            restored.mailboxes += 1;
        }
        messages.sort_by_key(|m| m.id);
        for record in messages {
            let id = record.id.0;
            self.next_message_id = self.next_message_id.max(id.saturating_add(1));
            let Some(mailbox) = self.mailboxes.get_mut(&record.to) else {
                restored.dropped += 1;
                self.queue_store(StoreOp::DeleteMessage(record.id));
                continue;
            };
            if record.expires_unix_ms <= now_ms {
                restored.dropped += 1;
                self.queue_store(StoreOp::DeleteMessage(record.id));
                continue;
            }
            let expires_at = now + Duration::from_millis(record.expires_unix_ms - now_ms);
            let len = record.body.len();
            mailbox.messages.insert(id);
            mailbox.bytes += len;
            self.stored_bytes += len + MESSAGE_OVERHEAD_BYTES;
            self.messages.insert(
                id,
                Message {
                    to: record.to,
                    from: record.from,
                    body: record.body.into_boxed_str(),
                    expires_at,
                },
            );
            restored.messages += 1;
        }
        restored
    }

    /// A new client connected from `peer`. On refusal the driver should send
    /// `ERROR <refusal>` if it can and close the socket; nothing is kept for it.
    pub fn handle_open(&mut self, now: Instant, peer: SocketAddr) -> Result<ConnId, Refusal> {
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
            mode: Mode::Sniffing(Vec::new()),
            out: Vec::new(),
            last_activity: now,
            bad_lines: 0,
            owner: None,
            subscription: None,
            close_when_drained: false,
            closing: false,
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
        if let Some(slot) = self.conns.get_mut(id.0)
            && slot.take().is_some()
        {
            self.free.push(id.0);
        }
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
        match self.conns.get(id.0) {
            Some(Some(conn)) => &conn.out,
            _ => &[],
        }
    }

    /// The driver wrote the first `n` bytes of [`pending_output`](Self::pending_output).
    pub fn consume_output(&mut self, id: ConnId, n: usize) {
        let Some(Some(conn)) = self.conns.get_mut(id.0) else {
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
        let Some(Some(conn)) = self.conns.get_mut(id.0) else {
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
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|_| ConnId(i)))
            .collect()
    }

    // ----- connections -------------------------------------------------------------------

    /// A connection whose input is still handled.
    fn live_conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        match self.conns.get_mut(id.0) {
            Some(Some(conn)) if !conn.closing && !conn.close_when_drained => Some(conn),
            _ => None,
        }
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.0).and_then(Option::as_ref)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.0).and_then(Option::as_mut)
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
        if let Some(count) = self.per_ip.get_mut(&peer.ip()) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&peer.ip());
            }
        }
        self.stats.open -= 1;
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
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.as_ref()?;
                let waiting = matches!(c.mode, Mode::HttpWaiting { .. });
                let idle = now.saturating_duration_since(c.last_activity) >= idle_timeout;
                (!c.closing && !waiting && idle).then_some(ConnId(i))
            })
            .collect();
        for id in idle {
            self.close(id, "idle timeout");
        }
    }

    // ----- time ----------------------------------------------------------------------------

    fn unix_ms(&self, now: Instant) -> u64 {
        let wall = self.clock_base.1 + now.saturating_duration_since(self.clock_base.0);
        wall.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn unix_ms_at(&self, now: Instant, at: Instant) -> u64 {
        let base = self.unix_ms(now);
        let delta = u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(0);
        base.saturating_add(delta)
    }

    // ----- persistence ---------------------------------------------------------------------

    fn queue_store(&mut self, op: StoreOp) {
        if self.persist {
            self.store_ops.push(op);
        }
    }

    fn persist_mailbox(&mut self, now: Instant, node_id: &NodeId) {
        if !self.persist {
            return;
        }
        let Some(mailbox) = self.mailboxes.get_mut(node_id) else {
            return;
        };
        mailbox.persisted_seen = mailbox.last_seen;
        let last_seen = mailbox.last_seen;
        let record = MailboxRecord {
            node_id: node_id.clone(),
            secret_hash: mailbox.secret_hash,
            last_seen_unix_ms: 0,
            network_id: mailbox.network_id.clone(),
            ip: mailbox.ip,
            port: mailbox.port,
        };
        let last_seen_unix_ms = self.unix_ms(now).saturating_sub(
            u64::try_from(now.saturating_duration_since(last_seen).as_millis()).unwrap_or(0),
        );
        self.store_ops.push(StoreOp::PutMailbox(MailboxRecord {
            last_seen_unix_ms,
            ..record
        }));
    }

    /// The owner was seen: postpone its mailbox's expiry.
    fn touch(&mut self, now: Instant, node_id: &NodeId) {
        let Some(mailbox) = self.mailboxes.get_mut(node_id) else {
            return;
        };
        mailbox.last_seen = now;
        if now.saturating_duration_since(mailbox.persisted_seen) >= TOUCH_PERSIST_INTERVAL {
            self.persist_mailbox(now, node_id);
        }
    }

    // ----- the mailbox rules, shared by both protocols ------------------------------------------

    fn hash_secret(&self, node_id: &NodeId, secret: &Secret) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.salt);
        // The id's length keeps (id, secret) pairs from colliding by shifting bytes across.
        hasher.update([u8::try_from(node_id.as_str().len()).unwrap_or(u8::MAX)]);
        hasher.update(node_id.as_str().as_bytes());
        hasher.update(secret.expose().as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(&hasher.finalize());
        out
    }

    fn buckets(&mut self, now: Instant, ip: IpAddr) -> &mut IpBuckets {
        let put_burst = self.config.put_burst_per_ip;
        let register_burst = self.config.register_burst_per_ip;
        self.buckets.entry(ip).or_insert_with(|| IpBuckets {
            put: Bucket::full(put_burst, now),
            register: Bucket::full(register_burst, now),
        })
    }

    fn take_register_token(&mut self, now: Instant, ip: IpAddr, verb: &str) -> Result<(), Denied> {
        let (rate, burst) = (
            self.config.register_rate_per_ip,
            self.config.register_burst_per_ip,
        );
        self.buckets(now, ip)
            .register
            .take(now, rate, burst)
            .map_err(|wait| {
                Denied::new(
                    429,
                    format!(
                        "{verb}: too many registrations or wrong secrets from {ip}, retry {}",
                        retry_text(wait)
                    ),
                )
            })
    }

    /// Checks a secret. Failed checks use up the IP's registration budget, so secrets cannot
    /// be guessed quickly; once it is spent, even correct secrets wait.
    fn authenticate(
        &mut self,
        now: Instant,
        ip: IpAddr,
        node_id: &NodeId,
        secret: &Secret,
        verb: &str,
    ) -> Result<(), Denied> {
        let (rate, burst) = (
            self.config.register_rate_per_ip,
            self.config.register_burst_per_ip,
        );
        if !self.buckets(now, ip).register.has_token(now, rate, burst) {
            return Err(Denied::new(
                429,
                format!("{verb}: too many wrong secrets from {ip}, retry later"),
            ));
        }
        let hash = self.hash_secret(node_id, secret);
        let Some(mailbox) = self.mailboxes.get(node_id) else {
            return Err(Denied::new(
                404,
                format!("{verb}: no mailbox {node_id} (REGISTER it first)"),
            ));
        };
        if !constant_time_eq(&mailbox.secret_hash, &hash) {
            self.take_register_token(now, ip, verb)?;
            return Err(Denied::new(
                403,
                format!("{verb}: wrong secret for mailbox {node_id}"),
            ));
        }
        self.touch(now, node_id);
        Ok(())
    }

    /// Creates a mailbox, or proves ownership of an existing one. Returns true if created.
    fn register(
        &mut self,
        now: Instant,
        ip: IpAddr,
        node_id: &NodeId,
        secret: &Secret,
        http: Option<(&str, u16)>,
    ) -> Result<bool, Denied> {
        if self.mailboxes.contains_key(node_id) {
            self.authenticate(now, ip, node_id, secret, "REGISTER")?;
            if let Some(mailbox) = self.mailboxes.get_mut(node_id) {
                let changed = http.is_some_and(|(network, port)| {
                    mailbox.network_id != network || mailbox.port != port
                }) || mailbox.ip != Some(ip);
                mailbox.ip = Some(ip);
                if let Some((network, port)) = http {
                    network.clone_into(&mut mailbox.network_id);
                    mailbox.port = port;
                }
                if changed {
                    self.persist_mailbox(now, node_id);
                }
            }
            return Ok(false);
        }
        if self.mailboxes.len() >= self.config.max_mailboxes {
            return Err(Denied::new(
                503,
                format!(
                    "REGISTER: server holds the most mailboxes it may ({}), try later",
                    self.config.max_mailboxes
                ),
            ));
        }
        let (network_id, port) = http.unwrap_or(("default", 0));
        let cost = mailbox_cost(node_id, network_id);
        if self.stored_bytes + cost > self.config.max_stored_bytes {
            return Err(Denied::new(
                503,
                format!(
                    "REGISTER: server storage full ({} of {} bytes), try later",
                    self.stored_bytes, self.config.max_stored_bytes
                ),
            ));
        }
        self.take_register_token(now, ip, "REGISTER")?;
        let secret_hash = self.hash_secret(node_id, secret);
        self.stored_bytes += cost;
        self.mailboxes.insert(
            node_id.clone(),
            Mailbox {
                secret_hash,
                messages: BTreeSet::new(),
                bytes: 0,
                subscriber: None,
                waiters: Vec::new(),
                last_seen: now,
                persisted_seen: now,
                network_id: network_id.to_string(),
                ip: Some(ip),
                port,
            },
        );
        self.persist_mailbox(now, node_id);
        info!(mailbox = %node_id, %ip, "mailbox registered");
        Ok(true)
    }

    /// Stores a message and delivers it to a subscriber or a waiting HTTP `list` at once.
    fn put(
        &mut self,
        now: Instant,
        ip: IpAddr,
        to: &NodeId,
        from: Option<NodeId>,
        body: &str,
    ) -> Result<MessageId, Denied> {
        let (rate, burst) = (self.config.put_rate_per_ip, self.config.put_burst_per_ip);
        if let Err(wait) = self.buckets(now, ip).put.take(now, rate, burst) {
            return Err(Denied::new(
                429,
                format!(
                    "PUT: too many messages from {ip} (limit {rate}/s, burst {burst}), retry {}",
                    retry_text(wait)
                ),
            ));
        }
        let max_message = self.config.max_message_bytes;
        if body.len() > max_message {
            return Err(Denied::new(
                413,
                format!("PUT: message is {} bytes (limit {max_message})", body.len()),
            ));
        }
        if let Err(e) = wire::check_body(body) {
            return Err(Denied::new(400, format!("PUT: {e}")));
        }
        let (max_count, max_bytes) = (
            self.config.max_messages_per_mailbox,
            self.config.max_mailbox_bytes,
        );
        let Some(mailbox) = self.mailboxes.get(to) else {
            return Err(Denied::new(404, format!("PUT: no mailbox {to}")));
        };
        if mailbox.messages.len() >= max_count {
            return Err(Denied::new(
                507,
                format!(
                    "PUT: mailbox {to} is full ({} messages, limit {max_count}); \
                     its owner must read and ACK first",
                    mailbox.messages.len()
                ),
            ));
        }
        if mailbox.bytes + body.len() > max_bytes {
            return Err(Denied::new(
                507,
                format!(
                    "PUT: mailbox {to} is full ({} bytes held + {} would pass the limit {max_bytes})",
                    mailbox.bytes,
                    body.len()
                ),
            ));
        }
        let cost = body.len() + MESSAGE_OVERHEAD_BYTES;
        if self.stored_bytes + cost > self.config.max_stored_bytes {
            return Err(Denied::new(
                507,
                format!(
                    "PUT: server storage full ({} of {} bytes), try later",
                    self.stored_bytes, self.config.max_stored_bytes
                ),
            ));
        }
        let id = self.next_message_id;
        self.next_message_id += 1;
        let expires_at = now + self.config.message_ttl;
        let message = Message {
            to: to.clone(),
            from,
            body: body.into(),
            expires_at,
        };
        if self.persist {
            let expires_unix_ms = self.unix_ms_at(now, expires_at);
            self.store_ops.push(StoreOp::PutMessage(MessageRecord {
                id: MessageId(id),
                to: to.clone(),
                from: message.from.clone(),
                body: body.to_string(),
                expires_unix_ms,
            }));
        }
        self.messages.insert(id, message);
        self.stored_bytes += cost;
        self.stats.puts += 1;
        let Some(mailbox) = self.mailboxes.get_mut(to) else {
            return Ok(MessageId(id));
        };
        mailbox.messages.insert(id);
        mailbox.bytes += body.len();
        let subscriber = mailbox.subscriber;
        let waiters = std::mem::take(&mut mailbox.waiters);
        if let Some(subscriber) = subscriber {
            self.push_pending(subscriber);
        }
        for waiter in waiters {
            self.answer_waiter(now, waiter);
        }
        Ok(MessageId(id))
    }

    fn pending(&self, node_id: &NodeId) -> Vec<Delivery> {
        self.mailboxes
            .get(node_id)
            .map_or_else(Vec::new, |mailbox| {
                mailbox
                    .messages
                    .iter()
                    .filter_map(|id| self.messages.get(id).map(|m| m.delivery(*id)))
                    .collect()
            })
    }

    /// Deletes one message (acknowledged, popped or expired).
    fn remove_message(&mut self, id: u64) -> Option<Message> {
        let message = self.messages.remove(&id)?;
        if let Some(mailbox) = self.mailboxes.get_mut(&message.to) {
            mailbox.messages.remove(&id);
            mailbox.bytes -= message.body.len();
        }
        self.stored_bytes -= message.body.len() + MESSAGE_OVERHEAD_BYTES;
        self.queue_store(StoreOp::DeleteMessage(MessageId(id)));
        Some(message)
    }

    fn expire_messages(&mut self, now: Instant) {
        while let Some((&id, message)) = self.messages.first_key_value() {
            if message.expires_at > now {
                break;
            }
            debug!(message = id, mailbox = %message.to, "message expired");
            self.remove_message(id);
            self.stats.expired += 1;
        }
    }

    fn expire_mailboxes(&mut self, now: Instant) {
        let ttl = self.config.mailbox_ttl;
        let expired: Vec<NodeId> = self
            .mailboxes
            .iter()
            .filter(|(_, m)| {
                m.subscriber.is_none()
                    && m.waiters.is_empty()
                    && now.saturating_duration_since(m.last_seen) >= ttl
            })
            .map(|(id, _)| id.clone())
            .collect();
        for node_id in expired {
            let Some(mailbox) = self.mailboxes.remove(&node_id) else {
                continue;
            };
            for id in &mailbox.messages {
                if let Some(message) = self.messages.remove(id) {
                    self.stored_bytes -= message.body.len() + MESSAGE_OVERHEAD_BYTES;
                    self.queue_store(StoreOp::DeleteMessage(MessageId(*id)));
                    self.stats.expired += 1;
                }
            }
            self.stored_bytes -= mailbox_cost(&node_id, &mailbox.network_id);
            info!(mailbox = %node_id, "mailbox expired (owner not seen for the mailbox TTL)");
            self.queue_store(StoreOp::DeleteMailbox(node_id));
        }
    }

    fn prune_buckets(&mut self, now: Instant) {
        let c = &self.config;
        let (put_rate, put_burst) = (c.put_rate_per_ip, c.put_burst_per_ip);
        let (reg_rate, reg_burst) = (c.register_rate_per_ip, c.register_burst_per_ip);
        let per_ip = &self.per_ip;
        self.buckets.retain(|ip, b| {
            per_ip.contains_key(ip)
                || !(b.put.is_full(now, put_rate, put_burst)
                    && b.register.is_full(now, reg_rate, reg_burst))
        });
    }

    // ----- line protocol -------------------------------------------------------------------

    fn line_input(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(conn) = self.live_conn(id) else {
                return;
            };
            let Mode::Line(framer) = &mut conn.mode else {
                return;
            };
            let item = match framer.next_str() {
                None => return,
                Some(Ok(line)) => Ok(line.parse::<Request>()),
                Some(Err(e)) => Err(e),
            };
            conn.last_activity = now;
            match item {
                Ok(Ok(request)) => {
                    self.stats.lines += 1;
                    self.handle_request(now, id, request);
                }
                Ok(Err(parse_error)) => self.bad_line(id, &parse_error),
                Err(e @ LineError::NotUtf8 { .. }) => self.bad_line(id, &e),
                Err(e @ LineError::TooLong { .. }) => {
                    self.stats.bad_lines += 1;
                    self.send(id, &Reply::error(&e));
                    self.finish(id);
                    return;
                }
            }
        }
    }

    fn refuse(&mut self, id: ConnId, denied: &Denied) {
        self.stats.bad_lines += 1;
        self.send(id, &Reply::error(&denied.reason));
    }

    fn owner(&self, id: ConnId) -> Option<NodeId> {
        self.conn(id).and_then(|c| c.owner.clone())
    }

    fn handle_request(&mut self, now: Instant, id: ConnId, request: Request) {
        let Some(peer) = self.conn(id).map(|c| c.peer) else {
            return;
        };
        let owner = self.owner(id);
        if let Some(owner) = &owner {
            self.touch(now, owner);
        }
        let need_owner = |verb: &str| {
            Denied::new(
                403,
                format!("{verb}: this connection has not proven a mailbox (REGISTER first)"),
            )
        };
        match request {
            Request::Register { node_id, secret } => {
                match self.register(now, peer.ip(), &node_id, &secret, None) {
                    Ok(created) => {
                        if owner.as_ref() != Some(&node_id) {
                            self.unsubscribe(id);
                        }
                        if let Some(conn) = self.conn_mut(id) {
                            conn.owner = Some(node_id.clone());
                        }
                        self.send(id, &Reply::Registered { node_id, created });
                    }
                    Err(denied) => self.refuse(id, &denied),
                }
            }
            Request::Subscribe => match owner {
                Some(owner) => self.subscribe(id, &owner),
                None => self.refuse(id, &need_owner("SUBSCRIBE")),
            },
            Request::Put { to, body } => match self.put(now, peer.ip(), &to, owner, &body) {
                Ok(message_id) => {
                    self.send(id, &Reply::Stored { id: message_id });
                }
                Err(denied) => self.refuse(id, &denied),
            },
            Request::List => match owner {
                Some(owner) => {
                    let pending = self.pending(&owner);
                    let count = pending.len();
                    for delivery in pending {
                        if !self.send(id, &Reply::Msg(delivery)) {
                            return;
                        }
                    }
                    self.send(id, &Reply::Listed { count });
                }
                None => self.refuse(id, &need_owner("LIST")),
            },
            Request::Ack { id: message_id } => {
                let Some(owner) = owner else {
                    self.refuse(id, &need_owner("ACK"));
                    return;
                };
                let mine = self
                    .messages
                    .get(&message_id.0)
                    .is_some_and(|m| m.to == owner);
                if mine {
                    self.remove_message(message_id.0);
                    self.stats.deleted += 1;
                    self.send(id, &Reply::Acked { id: message_id });
                } else {
                    let denied = Denied::new(
                        404,
                        format!("ACK: no message {message_id} in mailbox {owner}"),
                    );
                    self.refuse(id, &denied);
                }
            }
            Request::Ping => {
                self.send(id, &Reply::Pong);
            }
            Request::Quit => self.finish(id),
        }
    }

    fn subscribe(&mut self, id: ConnId, owner: &NodeId) {
        let Some(mailbox) = self.mailboxes.get_mut(owner) else {
            return;
        };
        let previous = mailbox.subscriber.replace(id);
        if let Some(previous) = previous
            && previous != id
        {
            if let Some(conn) = self.conn_mut(previous) {
                conn.subscription = None;
            }
            self.send(
                previous,
                &Reply::error(&format!(
                    "SUBSCRIBE: mailbox {owner} was taken over by a newer subscription"
                )),
            );
        }
        let pending = self.mailboxes.get(owner).map_or(0, |m| m.messages.len());
        if let Some(conn) = self.conn_mut(id) {
            conn.subscription = Some(Subscription::default());
        }
        self.send(id, &Reply::Subscribed { pending });
        self.push_pending(id);
    }

    /// Pushes the subscriber's messages it has not been sent yet, oldest first, until its
    /// unread output reaches half the output cap; [`consume_output`](Self::consume_output)
    /// resumes once the client has read most of it. So a slow reader is never disconnected for
    /// its own mailbox, and memory per subscriber stays bounded.
    fn push_pending(&mut self, id: ConnId) {
        let high_water = self.config.max_output_bytes / 2;
        let Some(conn) = self.conn(id) else {
            return;
        };
        let Some(sub) = conn.subscription else {
            return;
        };
        if sub.paused || conn.closing {
            return;
        }
        let (Some(owner), from) = (conn.owner.clone(), sub.pushed_upto) else {
            return;
        };
        let Some(mailbox) = self.mailboxes.get(&owner) else {
            return;
        };
        let mut lines = Vec::new();
        let mut upto = from;
        let mut paused = false;
        let mut queued = conn.out.len();
        for &mid in mailbox.messages.range(from.saturating_add(1)..) {
            let Some(message) = self.messages.get(&mid) else {
                continue;
            };
            let mut line = Vec::with_capacity(message.body.len() + 96);
            let _ = write!(line, "{}\r\n", message.delivery(mid));
            if queued > 0 && queued + line.len() > high_water {
                paused = true;
                break;
            }
            queued += line.len();
            upto = mid;
            lines.push(line);
        }
        if let Some(conn) = self.conn_mut(id) {
            conn.subscription = Some(Subscription {
                pushed_upto: upto,
                paused,
            });
        }
        for line in lines {
            if !self.queue(id, &line) {
                return;
            }
            self.stats.pushed += 1;
        }
    }

    fn unsubscribe(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.subscription.take().is_none() {
            return;
        }
        if let Some(owner) = conn.owner.clone()
            && let Some(mailbox) = self.mailboxes.get_mut(&owner)
            && mailbox.subscriber == Some(id)
        {
            mailbox.subscriber = None;
        }
    }

    // ----- HTTP API --------------------------------------------------------------------------

    fn http_input(&mut self, now: Instant, id: ConnId) {
        let max_head = self.config.max_http_head_bytes();
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        let Mode::Http(buf) = &mut conn.mode else {
            return;
        };
        let parsed = http::Request::parse(buf, max_head);
        if matches!(parsed, Err(HttpError::Partial { .. })) {
            return;
        }
        conn.mode = Mode::Done;
        conn.last_activity = now;
        self.stats.http_requests += 1;
        match parsed {
            Ok(request) => self.handle_http(now, id, &request),
            Err(e) => {
                self.stats.bad_lines += 1;
                let status = e.status().unwrap_or(400);
                self.respond(id, &failure(status, &e.to_string()));
            }
        }
    }

    /// Queues a complete HTTP response and closes once it is written.
    fn respond(&mut self, id: ConnId, response: &http::Response) {
        let bytes = response.render();
        if let Some(conn) = self.conn_mut(id) {
            conn.mode = Mode::Done;
        }
        // An HTTP answer may exceed the line-protocol output cap (a long list); it is one
        // bounded response, so it is queued whole.
        if let Some(conn) = self.conn_mut(id)
            && !conn.closing
        {
            let was_empty = conn.out.is_empty();
            conn.out.extend_from_slice(&bytes);
            if was_empty {
                self.actions.push_back(Action::Flush(id));
            }
        }
        self.finish(id);
    }

    fn handle_http(&mut self, now: Instant, id: ConnId, request: &http::Request) {
        let Some(peer) = self.conn(id).map(|c| c.peer) else {
            return;
        };
        if request.path != HTTP_PATH {
            self.stats.bad_lines += 1;
            let text = format!("not found: this server only serves {HTTP_PATH}\n");
            self.respond(id, &http::Response::text(404, text));
            return;
        }
        if request.method != "GET" {
            self.stats.bad_lines += 1;
            let text = format!("method {} not allowed: use GET\n", request.method);
            self.respond(
                id,
                &http::Response::text(405, text).with_header("Allow", "GET"),
            );
            return;
        }
        let call = request.query_param("call").unwrap_or_default();
        let outcome = match call {
            "register" => self.http_register(now, peer.ip(), request),
            "put" => self.http_put(now, peer.ip(), request),
            "list" => self.http_list(now, id, peer.ip(), request),
            "find_neighbours" => self.http_find_neighbours(now, peer.ip(), request),
            "last_alive" => self
                .http_owner(now, peer.ip(), request, "last_alive")
                .map(|_| Some(success())),
            other => Err(Denied::new(
                400,
                format!(
                    "unknown call {other:?}: expected register, put, list, find_neighbours or last_alive"
                ),
            )),
        };
        match outcome {
            Ok(Some(response)) => self.respond(id, &response),
            // A long poll: answered later.
            Ok(None) => {}
            Err(denied) => {
                self.stats.bad_lines += 1;
                self.respond(id, &failure(denied.status, &denied.reason));
            }
        }
    }

    /// The `node_id` and `password` parameters, checked.
    fn http_credentials(request: &http::Request, verb: &str) -> Result<(NodeId, Secret), Denied> {
        let node_id = param::<NodeId>(request, "node_id", verb)?;
        let secret = param::<Secret>(request, "password", verb)?;
        Ok((node_id, secret))
    }

    fn http_owner(
        &mut self,
        now: Instant,
        ip: IpAddr,
        request: &http::Request,
        verb: &str,
    ) -> Result<NodeId, Denied> {
        let (node_id, secret) = Self::http_credentials(request, verb)?;
        self.authenticate(now, ip, &node_id, &secret, verb)?;
        Ok(node_id)
    }

    fn http_register(
        &mut self,
        now: Instant,
        ip: IpAddr,
        request: &http::Request,
    ) -> Result<Option<http::Response>, Denied> {
        let (node_id, secret) = Self::http_credentials(request, "register")?;
        let network_id = request.query_param("network_id").unwrap_or("default");
        if network_id.len() > MAX_NETWORK_ID_BYTES {
            return Err(Denied::new(
                400,
                format!(
                    "register: network_id is {} bytes (limit {MAX_NETWORK_ID_BYTES})",
                    network_id.len()
                ),
            ));
        }
        let port = match request.query_param("port") {
            None | Some("") => 0,
            Some(text) => text.parse::<u16>().map_err(|_| {
                Denied::new(
                    400,
                    format!("register: port must be an integer in 0..=65535, got {text:?}"),
                )
            })?,
        };
        self.register(now, ip, &node_id, &secret, Some((network_id, port)))?;
        Ok(Some(success()))
    }

    /// PyP2P's `put`: the recipient is `dest_node_id`, or `node_id` when there is no
    /// `dest_node_id` (what PyP2P's client sends). With `dest_node_id`, a `node_id` and
    /// `password` that check out make `node_id` the proven sender; a wrong password fails.
    fn http_put(
        &mut self,
        now: Instant,
        ip: IpAddr,
        request: &http::Request,
    ) -> Result<Option<http::Response>, Denied> {
        let (to, from) = match request.query_param("dest_node_id") {
            Some(dest) if !dest.is_empty() => {
                let to = parse_param::<NodeId>(dest, "dest_node_id", "put")?;
                let from = match request.query_param("password") {
                    Some(p) if !p.is_empty() => Some(self.http_owner(now, ip, request, "put")?),
                    _ => None,
                };
                (to, from)
            }
            _ => (param::<NodeId>(request, "node_id", "put")?, None),
        };
        let body = request.query_param("msg").unwrap_or_default();
        if body.is_empty() {
            return Err(Denied::new(400, "put: missing parameter msg".into()));
        }
        self.put(now, ip, &to, from, body)?;
        Ok(Some(success()))
    }

    fn http_list(
        &mut self,
        now: Instant,
        id: ConnId,
        ip: IpAddr,
        request: &http::Request,
    ) -> Result<Option<http::Response>, Denied> {
        let node_id = self.http_owner(now, ip, request, "list")?;
        let pop = request.query_param("list_pop") != Some("0");
        let wait = match request.query_param("wait") {
            None | Some("") => Duration::ZERO,
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(1e9)))
                .ok_or_else(|| {
                    Denied::new(
                        400,
                        format!("list: wait must be a number of seconds, got {text:?}"),
                    )
                })?
                .min(self.config.max_list_wait),
        };
        let has_messages = self
            .mailboxes
            .get(&node_id)
            .is_some_and(|m| !m.messages.is_empty());
        if has_messages || wait.is_zero() {
            return Ok(Some(self.list_response(&node_id, pop)));
        }
        let deadline = now + wait;
        if let Some(conn) = self.conn_mut(id) {
            conn.mode = Mode::HttpWaiting {
                node_id: node_id.clone(),
                pop,
                deadline,
            };
        }
        self.waiting.insert((deadline, id));
        if let Some(mailbox) = self.mailboxes.get_mut(&node_id) {
            mailbox.waiters.push(id);
        }
        Ok(None)
    }

    /// The JSON array of pending messages; with `pop`, they are deleted.
    fn list_response(&mut self, node_id: &NodeId, pop: bool) -> http::Response {
        let pending = self.pending(node_id);
        if pop {
            for delivery in &pending {
                self.remove_message(delivery.id.0);
                self.stats.deleted += 1;
            }
        }
        let bodies: Vec<&str> = pending.iter().map(|d| d.body.as_str()).collect();
        let json = serde_json::to_string(&bodies).unwrap_or_else(|_| "[]".to_string());
        http::Response::json(200, json)
    }

    fn answer_waiter(&mut self, _now: Instant, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Mode::HttpWaiting {
            node_id,
            pop,
            deadline,
        } = &conn.mode
        else {
            return;
        };
        let (node_id, pop, deadline) = (node_id.clone(), *pop, *deadline);
        conn.mode = Mode::Done;
        self.waiting.remove(&(deadline, id));
        if let Some(mailbox) = self.mailboxes.get_mut(&node_id) {
            mailbox.waiters.retain(|&w| w != id);
        }
        let response = self.list_response(&node_id, pop);
        self.respond(id, &response);
    }

    fn http_find_neighbours(
        &mut self,
        now: Instant,
        ip: IpAddr,
        request: &http::Request,
    ) -> Result<Option<http::Response>, Denied> {
        let node_id = self.http_owner(now, ip, request, "find_neighbours")?;
        let network_id = request.query_param("network_id").unwrap_or("default");
        let mut fresh: Vec<(&NodeId, &Mailbox)> = self
            .mailboxes
            .iter()
            .filter(|(id, m)| {
                **id != node_id
                    && m.network_id == network_id
                    && m.ip.is_some()
                    && now.saturating_duration_since(m.last_seen) < NEIGHBOUR_FRESHNESS
            })
            .collect();
        fresh.sort_by(|a, b| b.1.last_seen.cmp(&a.1.last_seen).then(a.0.cmp(b.0)));
        let neighbours: Vec<serde_json::Value> = fresh
            .into_iter()
            .take(MAX_NEIGHBOURS)
            .map(|(id, m)| {
                serde_json::json!({
                    "ip": m.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    "port": m.port,
                    "id": id.as_str(),
                    "can_test": 0,
                })
            })
            .collect();
        let json = serde_json::Value::Array(neighbours).to_string();
        Ok(Some(http::Response::json(200, json)))
    }
}

fn success() -> http::Response {
    http::Response::text(200, "success")
}

/// PyP2P's clients expect the body `failure`; the reason goes in a header and the status.
fn failure(status: u16, reason: &str) -> http::Response {
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(wire::MAX_ERROR_BYTES)
        .collect();
    http::Response::text(status, "failure").with_header("X-Dht-Msg-Error", &reason)
}

fn param<T>(request: &http::Request, name: &str, verb: &str) -> Result<T, Denied>
where
    T: std::str::FromStr<Err = wire::WireError>,
{
    match request.query_param(name) {
        Some(value) if !value.is_empty() => parse_param(value, name, verb),
        _ => Err(Denied::new(
            400,
            format!("{verb}: missing parameter {name}"),
        )),
    }
}

fn parse_param<T>(value: &str, name: &str, verb: &str) -> Result<T, Denied>
where
    T: std::str::FromStr<Err = wire::WireError>,
{
    value
        .parse()
        .map_err(|e| Denied::new(400, format!("{verb}: {name}: {e}")))
}

fn mailbox_cost(node_id: &NodeId, network_id: &str) -> usize {
    MAILBOX_OVERHEAD_BYTES + node_id.as_str().len() + network_id.len()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
