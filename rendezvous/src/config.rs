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
    /// Whether `RELAY` is served (`--no-relay` turns it off).
    pub relay_enabled: bool,
    /// Relay sessions plus waiting relay connections at once.
    pub max_relays: usize,
    /// Relay connections (waiting or in a session) from one IP at once.
    pub max_relays_per_ip: usize,
    /// How long a `RELAY` waits for its peer before `ERROR relay: nobody joined ...`.
    pub relay_wait_timeout: Duration,
    /// A relay session in which no byte moved either way for this long is closed.
    pub relay_idle_timeout: Duration,
    /// Bytes per second per direction of a relay session (a token bucket; reads pause, bytes
    /// are never dropped). `None`: unlimited.
    pub relay_rate: Option<u64>,
    /// Bytes queued for one side of a session before the other side is no longer read (flow
    /// control: memory per session stays bounded by twice this).
    pub relay_buffer_bytes: usize,
    /// Bytes a client may send after its `RELAY` line before the pairing; they are forwarded
    /// after `RELAY OK`. More closes it with an error.
    pub relay_early_bytes: usize,
    /// A Redis URL (`redis://HOST:PORT`, `redis+unix:///PATH`) shared with other instances
    /// (see [`crate::shared`]); `None`: this instance alone, everything in memory.
    pub backend: Option<String>,
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
            relay_enabled: true,
            max_relays: 1024,
            max_relays_per_ip: 8,
            relay_wait_timeout: Duration::from_secs(30),
            relay_idle_timeout: Duration::from_mins(10),
            relay_rate: Some(1024 * 1024),
            relay_buffer_bytes: 256 * 1024,
            relay_early_bytes: 64 * 1024,
            backend: None,
        }
    }
}

/// Parses a byte count such as `65536`, `64KiB`, `1MiB`, `2MB`, `1GiB` (an optional `/s` is
/// ignored, so `1MiB/s` reads as a rate). Binary (`KiB`, `MiB`, `GiB`) and decimal (`KB`, `MB`,
/// `GB`) units; `B` or no unit means bytes.
///
/// ```
/// use rendezvous::config::parse_bytes;
///
/// assert_eq!(parse_bytes("1MiB/s"), Ok(1_048_576));
/// assert_eq!(parse_bytes("256KiB"), Ok(262_144));
/// assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
/// assert_eq!(parse_bytes("0"), Ok(0));
/// assert!(parse_bytes("fast").is_err());
/// ```
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let body = trimmed.strip_suffix("/s").unwrap_or(trimmed);
    let split = body
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(body.len());
    let (number, unit) = body.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("bad byte count {text:?}: expected e.g. 65536, 64KiB, 1MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "bad byte unit {other:?} in {text:?}: use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("byte count {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_with_units() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes(" 10 "), Ok(10));
        assert_eq!(parse_bytes("10B"), Ok(10));
        assert_eq!(parse_bytes("3KiB"), Ok(3072));
        assert_eq!(parse_bytes("3 KB"), Ok(3000));
        assert_eq!(parse_bytes("1GiB/s"), Ok(1 << 30));
        assert!(parse_bytes("1.5MiB").unwrap_err().contains("unit"));
        assert!(parse_bytes("MiB").unwrap_err().contains("bad byte count"));
        assert!(parse_bytes("5 TiB").unwrap_err().contains("unit \"TiB\""));
        assert!(
            parse_bytes("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
