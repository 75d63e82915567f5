//! Limits and lifetimes of a rendezvous server, with the defaults `--help` documents.

use std::time::Duration;

/// Everything tunable about a rendezvous server. `Config::default()` is what `rendezvous` runs
/// with when no flag is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Open connections at once; more are answered `ERROR server full` and closed.
    pub max_connections: usize,
    /// Open connections from one IP at once.
    pub max_connections_per_ip: usize,
    /// Passive plus simultaneous registrations one IP may hold (PyP2P: 1; we allow several
    /// nodes behind one NAT, but not unbounded).
    pub max_registrations_per_ip: usize,
    /// Pending hole-punch candidates per simultaneous node (PyP2P: 100).
    pub max_candidates_per_node: usize,
    /// How long a registration lives without being renewed (PyP2P: 24 h).
    pub node_lifetime: Duration,
    /// How long a `CANDIDATE` waits for its `ACCEPT` (PyP2P: 120 s). A simultaneous node whose
    /// registration is older than this when a candidate arrives is sent `RECONNECT`.
    pub candidate_lifetime: Duration,
    /// A connection that is neither a connected simultaneous node nor a waiting candidate is
    /// closed after this long without a complete line.
    pub idle_timeout: Duration,
    /// Longest line accepted, in bytes; a longer one closes the connection.
    pub max_line_bytes: usize,
    /// Replies buffered for a client that does not read; past this it is disconnected.
    pub max_output_bytes: usize,
    /// Malformed lines tolerated per connection (each answered with `ERROR`) before closing it.
    pub max_bad_lines: u32,
    /// How far an `ACCEPT` time may be from the server's clock (PyP2P: 600 s).
    pub ntp_tolerance: Duration,
    /// Seed for the bootstrap sampler; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: 18_000,
            max_connections_per_ip: 256,
            max_registrations_per_ip: 64,
            max_candidates_per_node: 100,
            node_lifetime: Duration::from_hours(24),
            candidate_lifetime: Duration::from_mins(2),
            idle_timeout: Duration::from_mins(2),
            max_line_bytes: 4096,
            max_output_bytes: 64 * 1024,
            max_bad_lines: 16,
            ntp_tolerance: Duration::from_mins(10),
            seed: None,
        }
    }
}
