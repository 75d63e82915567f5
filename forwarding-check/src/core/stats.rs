//! The forwarding check's counters (logs, tests, the metrics endpoint).

/// Counters for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused by a connection limit.
    pub refused: u64,
    /// Connections open now.
    pub open: usize,
    /// Complete request heads received.
    pub requests: u64,
    /// Requests (or attempts) answered with a 4xx other than 429.
    pub bad_requests: u64,
    /// Checks refused by the per-IP rate limit (429).
    pub rate_limited: u64,
    /// Requests refused because the server was busy (503).
    pub busy: u64,
    /// Dial-backs started.
    pub checks: u64,
    /// Dial-backs that connected.
    pub checks_open: u64,
    /// Dial-backs in progress now.
    pub checks_in_flight: usize,
    /// Finished dial-backs by result, indexed like [`CHECK_RESULTS`].
    pub check_results: [u64; 5],
    /// Connections refused, by reason: the global cap, the per-IP cap.
    pub refused_by_reason: [u64; 2],
    /// Connections accepted since start, by the client's address family (indexed like
    /// [`server_kit::FAMILIES`]; an IPv4 client of the dual-stack socket counts as IPv4).
    pub accepted_by_family: [u64; 2],
    /// Dial-backs started, by address family (a dial-back is always in the caller's family).
    pub checks_by_family: [u64; 2],
}

/// How dial-backs end, as metric label values, in the order of [`Stats::check_results`].
pub const CHECK_RESULTS: [&str; 5] = ["open", "refused", "timed_out", "unreachable", "error"];
