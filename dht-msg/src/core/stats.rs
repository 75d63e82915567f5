//! The mailbox server's counters ([`Stats`]) and the label values of its metrics.

use wire::mailbox::Request;

use super::KEY_REFUSALS;

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
    /// Connections refused, by reason: the global cap, the per-IP cap.
    pub refused_by_reason: [u64; 2],
    /// Line-protocol requests handled, by verb (indexed like [`LINE_VERBS`]).
    pub line_requests: [u64; LINE_VERBS.len()],
    /// Mailboxes created since start.
    pub registered: u64,
    /// Requests refused, by reason (indexed like [`REFUSALS`]).
    pub refusals: [u64; REFUSALS.len()],
    /// Connections closed by a limit: a line over the cap, too many malformed lines, output
    /// not read (the cap), idle timeout.
    pub closed_by_limit: [u64; CLOSING_LIMITS.len()],
    /// What the shared backend did (all 0 for the embedded one).
    pub backend: BackendStats,
    /// Connections accepted since start, by the client's address family (indexed like
    /// [`server_kit::FAMILIES`]; an IPv4 client of the dual-stack socket counts as IPv4).
    pub accepted_by_family: [u64; 2],
    /// Successful registrations (new and existing mailboxes), by kind (indexed like
    /// [`REGISTRATION_KINDS`]): a secret (`REGISTER`, HTTP `register`) or a key
    /// (`REGISTER_KEY`).
    pub registrations: [u64; REGISTRATION_KINDS.len()],
    /// Signed registrations refused, and secrets refused for a key's mailbox, by reason
    /// (indexed like [`KEY_REFUSALS`]).
    pub key_refusals: [u64; KEY_REFUSALS.len()],
}

/// How a mailbox was opened, as metric label values, in the order of [`Stats::registrations`].
pub const REGISTRATION_KINDS: [&str; 2] = ["secret", "key"];

/// The line-protocol verbs, as metric label values, in the order of [`Stats::line_requests`].
pub const LINE_VERBS: [&str; 9] = [
    "REGISTER",
    "CHALLENGE",
    "REGISTER_KEY",
    "SUBSCRIBE",
    "PUT",
    "LIST",
    "ACK",
    "PING",
    "QUIT",
];

/// Why requests are refused, as metric label values, in the order of [`Stats::refusals`]:
/// by the HTTP status the refusal maps to.
pub const REFUSALS: [&str; 6] = [
    "bad_request",
    "wrong_secret",
    "no_mailbox",
    "too_large",
    "rate_limited",
    "full",
];

/// Limits that close a connection, as metric label values, in the order of
/// [`Stats::closed_by_limit`].
pub const CLOSING_LIMITS: [&str; 4] = [
    "max_line_bytes",
    "max_bad_lines",
    "max_output_bytes",
    "idle_timeout",
];

/// What a shared backend (Redis) did, for the metrics; all 0 without one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Batches written (one round trip each: every change of one loop turn at once).
    pub commits: u64,
    /// Changes written in those batches.
    pub ops_written: u64,
    /// Changes received from other instances and applied here.
    pub ops_received: u64,
}

pub(super) fn verb_index(request: &Request) -> usize {
    match request {
        Request::Register { .. } => 0,
        Request::Challenge => 1,
        Request::RegisterKey(_) => 2,
        Request::Subscribe => 3,
        Request::Put { .. } => 4,
        Request::List => 5,
        Request::Ack { .. } => 6,
        Request::Ping => 7,
        Request::Quit => 8,
    }
}
