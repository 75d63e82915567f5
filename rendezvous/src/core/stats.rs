//! The rendezvous server's counters (logs, benchmarks, the metrics endpoint): [`Stats`], with
//! its [`LimitHits`] and [`BackendStats`].

use wire::rendezvous::Request;

/// Counters for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused by a limit.
    pub refused: u64,
    /// Connections refused, by reason: the global cap, the per-IP cap.
    pub refused_by_reason: [u64; 2],
    /// Connections open now.
    pub open: usize,
    /// Well-formed lines handled.
    pub lines: u64,
    /// Lines answered with `ERROR`.
    pub bad_lines: u64,
    /// Passive registrations now.
    pub passive: usize,
    /// Passive registrations now, by address family (indexed like [`FAMILIES`](server_kit::FAMILIES)).
    pub passive_by_family: [usize; 2],
    /// Connections accepted since start, by the client's address family (indexed like
    /// [`FAMILIES`](server_kit::FAMILIES); an IPv4 client of a dual-stack socket counts as IPv4).
    pub accepted_by_family: [u64; 2],
    /// New registrations (passive and simultaneous) since start, by address family.
    pub registered_by_family: [u64; 2],
    /// `CANDIDATE`s refused because they named a node of the other address family.
    pub cross_family_refused: u64,
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
    /// Requests handled, by verb (indexed like [`VERBS`]).
    pub requests: [u64; VERBS.len()],
    /// New passive registrations since start (renewals not counted).
    pub registered_passive: u64,
    /// New simultaneous registrations since start.
    pub registered_simultaneous: u64,
    /// `CHALLENGE` lines sent to simultaneous nodes (a candidate's punch request relayed).
    pub challenges: u64,
    /// `FIGHT` lines sent to candidates (a node accepted: the punch starts).
    pub fights: u64,
    /// `RECONNECT` lines sent to stale simultaneous nodes.
    pub reconnects: u64,
    /// Times a limit refused or closed something, by limit.
    pub limit_hits: LimitHits,
    /// What the shared backend did (all 0 for the embedded one).
    pub backend: BackendStats,
}

/// The request verbs, as metric label values, in the order of [`Stats::requests`].
pub const VERBS: [&str; 11] = [
    "BOOTSTRAP",
    "BOOTSTRAP_FAMILY",
    "PASSIVE_READY",
    "SIMULTANEOUS_READY",
    "SOURCE_TCP",
    "SOURCE_ADDR",
    "CANDIDATE",
    "ACCEPT",
    "CLEAR",
    "QUIT",
    "RELAY",
];

/// The index of a request's verb in [`VERBS`].
pub(super) fn verb_index(request: &Request) -> usize {
    match request {
        Request::Bootstrap { .. } => 0,
        Request::BootstrapFamily { .. } => 1,
        Request::PassiveReady { .. } => 2,
        Request::SimultaneousReady { .. } => 3,
        Request::SourceTcp { .. } => 4,
        Request::SourceAddr => 5,
        Request::Candidate { .. } => 6,
        Request::Accept { .. } => 7,
        Request::Clear { .. } => 8,
        Request::Quit => 9,
        Request::Relay { .. } => 10,
    }
}

/// How often each limit refused or closed something since start (the `limit` label of
/// `rendezvous_limit_hits_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitHits {
    /// A registration refused: `max_registrations_per_ip`.
    pub registrations_per_ip: u64,
    /// A `CANDIDATE` refused: `max_candidates_per_node`.
    pub candidates_per_node: u64,
    /// A client closed for not reading its replies: `max_output_bytes`.
    pub output_cap: u64,
    /// A client closed for a line over `max_line_bytes`.
    pub line_too_long: u64,
    /// A client closed after `max_bad_lines` malformed lines.
    pub bad_lines: u64,
    /// A client closed after `idle_timeout` without a line.
    pub idle_timeout: u64,
    /// A `RELAY` refused: `max_relays`.
    pub relay_server_full: u64,
    /// A `RELAY` refused: `max_relays_per_ip`.
    pub relay_per_ip: u64,
    /// A waiting relay client closed for sending more than `relay_early_bytes`.
    pub relay_early_data: u64,
    /// A waiting relay client whose peer never came: `relay_wait_timeout`.
    pub relay_wait_timeout: u64,
}

/// What a shared backend (Redis) did, for the metrics; all 0 without one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Updates sent to the backend (registrations, removals, forwarded punch requests).
    pub published: u64,
    /// Updates received from other instances.
    pub received: u64,
    /// Simultaneous nodes connected to other instances that this one knows of now.
    pub remote_registrations: usize,
    /// Other instances seen alive now.
    pub instances: usize,
    /// Punch requests forwarded to, or answered from, another instance.
    pub forwarded: u64,
}
