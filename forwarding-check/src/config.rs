//! Limits and lifetimes of a forwarding-check server, with the defaults `--help` documents.

use std::time::Duration;

/// Everything tunable about a forwarding-check server. `Config::default()` is what
/// `forwarding-check` runs with when no flag is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long a dial-back may take to connect before the port is reported closed.
    /// PyP2P's server used 1 s and its client gives up after 2 s in total, so PyP2P clients
    /// are best served with 1 s; ours wait longer.
    pub connect_timeout: Duration,
    /// Port checks one IP may start per minute, on average (token bucket refill rate). IPv6
    /// callers are counted per /64 prefix.
    pub checks_per_minute: u32,
    /// Port checks one IP may start back to back before the per-minute rate applies (token
    /// bucket size).
    pub check_burst: u32,
    /// Dial-backs in progress at once, over all callers; more are answered 503.
    pub max_concurrent_checks: usize,
    /// Client connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Client connections open at once from one IP (IPv6: one /64); more are answered 429.
    pub max_connections_per_ip: usize,
    /// A client has this long to send its complete request head, and then to read the
    /// response; otherwise the connection is closed.
    pub idle_timeout: Duration,
    /// Largest request head accepted (request line and headers); a larger one is answered 431.
    pub max_head_bytes: usize,
    /// IPs (or IPv6 /64s) whose rate-limit state is kept at once. An IP is forgotten as soon
    /// as its bucket is full again; if the table is full of active callers, new callers get
    /// 503 until room frees up.
    pub max_tracked_ips: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connect_timeout: Duration::from_secs(2),
            checks_per_minute: 10,
            check_burst: 5,
            max_concurrent_checks: 64,
            max_connections: 1024,
            max_connections_per_ip: 8,
            idle_timeout: Duration::from_secs(10),
            max_head_bytes: wire::http::DEFAULT_MAX_HEAD_BYTES,
            max_tracked_ips: 100_000,
        }
    }
}
