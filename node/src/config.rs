//! The node's settings: a serde-deserialisable [`Config`] (TOML or JSON) with a builder in code.
//!
//! ```
//! use node::Config;
//!
//! // In code:
//! let config = Config::new()
//!     .with_rendezvous("127.0.0.1:8000")
//!     .with_port(50500)
//!     .with_max_inbound(16);
//! assert_eq!(config.port, 50500);
//!
//! // From a file (durations as "30s", "5m", "250ms"):
//! let config: Config = toml::from_str(r#"
//!     rendezvous = ["rv1.example:8000", "rv2.example:8000"]
//!     node_type = "active"
//!     rebootstrap_interval = "30s"
//! "#).unwrap();
//! assert_eq!(config.rendezvous.len(), 2);
//! ```

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::identity::Identity;
use wire::line::DEFAULT_MAX_LINE_BYTES;

/// The node's role in the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Chooses one of the others from what the node establishes at start (the default):
    /// passive when a reachability probe proves its port reachable, simultaneous when the
    /// rendezvous shows its NAT's mapping is predictable (or that there is no NAT), active
    /// otherwise. See [`crate::core::Core::enable_auto`].
    Auto,
    /// Accepts inbound connections and advertises itself to the rendezvous (`PASSIVE READY`).
    /// Right when the port is reachable (no NAT, a forwarded port, or loopback/LAN use).
    Passive,
    /// Only dials out; never advertised. Right behind a NAT that forwards nothing and maps
    /// ports at random (symmetric), where neither hole punching nor inbound connections work.
    Active,
    /// Reachable by hole punching: keeps a registration with the rendezvous from its
    /// listening port (`SIMULTANEOUS READY`) and answers punch challenges. Right behind a NAT
    /// whose mapping is predictable (port-preserving or stepping: see `p2p-node nat-type`).
    Simultaneous,
}

/// Everything a [`crate::Net`] needs. Every field has a default; see each field.
// One switch per setting (listen, and each port-mapping protocol), as in the file format: an
// enum per bool would only add noise.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to accept connections on (default `::`: dual stack, IPv4 and IPv6 on one port,
    /// IPv4 only on a host without IPv6; the UNL v3 lists the host's global IPv6 addresses).
    /// `0.0.0.0` keeps to IPv4.
    pub bind: IpAddr,
    /// Port to accept connections on (default 0: any free port).
    pub port: u16,
    /// Whether to accept connections at all (default true).
    pub listen: bool,
    /// Rendezvous servers as `host:port`, tried in order; the one that answered last is tried
    /// first next time (default: none; a node without one can still connect by address).
    pub rendezvous: Vec<String>,
    /// The role: `auto` (the default: chosen from what the node establishes), or passive,
    /// simultaneous or active as given (see [`Role`]).
    pub node_type: Role,
    /// Inbound connections beyond this are closed at once (default 32).
    pub max_inbound: usize,
    /// Inbound connections from one IP beyond this are closed at once (default 8), so that
    /// one host cannot take every inbound slot.
    pub max_inbound_per_ip: usize,
    /// Bootstrap dials until this many outbound connections are open (default 8).
    pub max_outbound: usize,
    /// `n` in `BOOTSTRAP n`, 1..=100 (default 20).
    pub bootstrap_count: u8,
    /// While below `max_outbound`, bootstrap again this often (default 60 s).
    #[serde(with = "duration_text")]
    pub rebootstrap_interval: Duration,
    /// After the last connection drops, or a rendezvous request fails, try again this soon
    /// (default 5 s).
    #[serde(with = "duration_text")]
    pub alone_rebootstrap_delay: Duration,
    /// Once advertised, register again this often (default 5 min): the server forgets nodes
    /// after its node lifetime and when it restarts.
    #[serde(with = "duration_text")]
    pub readvertise_interval: Duration,
    /// Hops a broadcast travels (default 16).
    pub broadcast_ttl: u8,
    /// Broadcast ids remembered at most (default 100000, about 4 MiB).
    pub seen_capacity: usize,
    /// How long a broadcast id is remembered (default 10 min).
    #[serde(with = "duration_text")]
    pub seen_lifetime: Duration,
    /// A dial that has not connected after this fails (default 5 s).
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// A rendezvous request that has not been answered after this fails over to the next
    /// server (default 3 s).
    #[serde(with = "duration_text")]
    pub query_timeout: Duration,
    /// Longest line accepted from a peer; a longer one disconnects it (default 64 KiB).
    pub max_line_bytes: usize,
    /// Bytes queued for one peer at most; a peer that does not read is disconnected
    /// (default 16 MiB).
    pub max_output_bytes: usize,
    /// Dial peers known only by address (bootstrap, `--connect`, [`crate::Net::connect_addr`])
    /// in plain text (default false: encrypted, to whoever answers). For an overlay with
    /// PyP2P nodes in it; connects by UNL follow the UNL (v3 encrypted, v2 plain) and
    /// accepted connections are always sniffed (plain or encrypted, as the peer begins).
    pub plaintext_dials: bool,
    /// A new connection's handshake (or, accepted, its first bytes) must be done within this
    /// (default 10 s); a peer that stalls is dropped and frees its slot.
    #[serde(with = "duration_text")]
    pub handshake_timeout: Duration,
    /// Seed for shuffles and nonces (default: random). Without an [`identity`](Self::identity),
    /// a seeded node also derives its key from it ([`Identity::from_seed`]: for tests only).
    pub seed: Option<u64>,
    /// The node's key pair: its node id, mailbox name, overlay peer id and UNL all come from
    /// it (see [`crate::identity`]). Set it with [`Config::with_identity`] (the `p2p-node` CLI
    /// loads it from `--identity FILE`). Default: none, and the node makes an ephemeral one
    /// (a new node id every run; logged at start), or a seeded one when `seed` is set. Not
    /// read from a config file (a key does not belong in one).
    #[serde(skip)]
    pub identity: Option<Identity>,

    // --- Reachability (see `node::reach`) ---
    /// Forwarding-check server URL, e.g. `http://203.0.113.5:8080` (default: none, so a
    /// mapping cannot be proven and the node does not claim to be reachable because of it).
    pub forwarding_check: Option<String>,
    /// Try UPnP IGD port forwarding at start (default true).
    pub upnp: bool,
    /// Try NAT-PMP port forwarding at start (default true).
    pub natpmp: bool,
    /// Try PCP port forwarding at start (default true): RFC 6887, NAT-PMP's successor on the
    /// same port, tried before UPnP and NAT-PMP where the gateway speaks it.
    pub pcp: bool,
    /// A port forwarded by hand on the router to our listening port: advertised as is, and
    /// checked with the forwarding check when one is set (default: none).
    pub external_port: Option<u16>,
    /// Bound on the whole reachability probe at start: UPnP, NAT-PMP and PCP run in parallel
    /// within it, then the forwarding check (default 3 s).
    #[serde(with = "duration_text")]
    pub reach_timeout: Duration,
    /// Lease asked for a UPnP/NAT-PMP/PCP mapping; renewed at half-life, deleted on stop
    /// (default 1 h; never 0, which PyP2P used and some routers keep forever).
    #[serde(with = "duration_text")]
    pub mapping_lease: Duration,

    // --- Direct connect by UNL ---
    /// dht-msg mailbox server `host:port`, for reverse-connect requests (default: none).
    pub dht_msg: Option<String>,
    /// NTP server `host:port` used to time hole punching (default: none; never a public one).
    pub ntp: Option<String>,
    /// A connect by UNL that has not succeeded after this fails (default 10 s).
    #[serde(with = "duration_text")]
    pub unl_connect_timeout: Duration,
    /// Reverse-connect and relay requests from our mailbox acted on per minute at most, in
    /// all (default 120): each makes us dial. One sender gets a burst of a fifth of it and a
    /// tenth a minute after that; a connect's two requests count once.
    pub max_reverse_per_minute: usize,
    /// Hole-punch challenges answered per minute at most, in all (default 120): each makes a
    /// simultaneous node dial the candidate's address. One candidate IP gets a burst of a
    /// fifth of it and a tenth a minute after that.
    pub max_punch_per_minute: usize,
    /// Sockets (and SYNs) each side of a birthday punch uses at most (default 512): from
    /// behind a NAT that maps ports at random, towards a NAT that keeps one mapping per port.
    /// N = M = 512 meet about 98 % of the time; the sockets are held a few seconds at most.
    pub max_punch_sockets: u32,
    /// A connection that opened on the relay and whose punch failed tries the punch again
    /// this many times at most (default 4: after 1 s, 4 s, 16 s and 64 s); 0: never again.
    pub upgrade_retries: u32,
    /// How often idle long-lived connections show the NATs on their path that they are alive
    /// (default 30 s): the simultaneous registration and the mailbox connection send a
    /// request, peer connections TCP keep-alive probes. Keep it below the shortest TCP
    /// mapping timeout of the NATs on the path.
    #[serde(with = "duration_text")]
    pub keepalive: Duration,
    /// Our WAN address when known beforehand (default: learned from the forwarding check, else
    /// taken to be our LAN address).
    pub wan_ip: Option<std::net::Ipv4Addr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            port: 0,
            listen: true,
            rendezvous: Vec::new(),
            node_type: Role::Auto,
            max_inbound: 32,
            max_inbound_per_ip: 8,
            max_outbound: 8,
            bootstrap_count: 20,
            rebootstrap_interval: Duration::from_mins(1),
            alone_rebootstrap_delay: Duration::from_secs(5),
            readvertise_interval: Duration::from_mins(5),
            broadcast_ttl: 16,
            seen_capacity: 100_000,
            seen_lifetime: Duration::from_mins(10),
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(3),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_output_bytes: 16 * 1024 * 1024,
            plaintext_dials: false,
            handshake_timeout: Duration::from_secs(10),
            seed: None,
            identity: None,
            forwarding_check: None,
            upnp: true,
            natpmp: true,
            pcp: true,
            external_port: None,
            reach_timeout: Duration::from_secs(3),
            mapping_lease: Duration::from_hours(1),
            dht_msg: None,
            ntp: None,
            unl_connect_timeout: Duration::from_secs(10),
            max_reverse_per_minute: 120,
            max_punch_per_minute: 120,
            keepalive: crate::core::DEFAULT_KEEPALIVE,
            max_punch_sockets: crate::core::DEFAULT_PUNCH_SOCKETS,
            upgrade_retries: crate::core::CoreConfig::default().upgrade_retries,
            wan_ip: None,
        }
    }
}

impl Config {
    /// The defaults (same as [`Config::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rendezvous server (`host:port`).
    #[must_use]
    pub fn with_rendezvous(mut self, server: impl Into<String>) -> Self {
        self.rendezvous.push(server.into());
        self
    }

    /// Sets the address to accept connections on.
    #[must_use]
    pub fn with_bind(mut self, bind: IpAddr) -> Self {
        self.bind = bind;
        self
    }

    /// Sets the port to accept connections on (0: any).
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Accept connections or not.
    #[must_use]
    pub fn with_listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Sets the role.
    #[must_use]
    pub fn with_node_type(mut self, role: Role) -> Self {
        self.node_type = role;
        self
    }

    /// Sets the dht-msg mailbox server (`host:port`) used for reverse connects.
    #[must_use]
    pub fn with_dht_msg(mut self, server: impl Into<String>) -> Self {
        self.dht_msg = Some(server.into());
        self
    }

    /// Sets the forwarding-check server URL (`http://host:port`).
    #[must_use]
    pub fn with_forwarding_check(mut self, url: impl Into<String>) -> Self {
        self.forwarding_check = Some(url.into());
        self
    }

    /// Sets the inbound cap.
    #[must_use]
    pub fn with_max_inbound(mut self, n: usize) -> Self {
        self.max_inbound = n;
        self
    }

    /// Sets the inbound cap per peer IP.
    #[must_use]
    pub fn with_max_inbound_per_ip(mut self, n: usize) -> Self {
        self.max_inbound_per_ip = n;
        self
    }

    /// Sets how many outbound connections bootstrap aims for.
    #[must_use]
    pub fn with_max_outbound(mut self, n: usize) -> Self {
        self.max_outbound = n;
        self
    }

    /// Sets the re-bootstrap interval.
    #[must_use]
    pub fn with_rebootstrap_interval(mut self, every: Duration) -> Self {
        self.rebootstrap_interval = every;
        self
    }

    /// Sets the delay before bootstrapping again after losing every connection.
    #[must_use]
    pub fn with_alone_rebootstrap_delay(mut self, delay: Duration) -> Self {
        self.alone_rebootstrap_delay = delay;
        self
    }

    /// Sets the re-advertise interval.
    #[must_use]
    pub fn with_readvertise_interval(mut self, every: Duration) -> Self {
        self.readvertise_interval = every;
        self
    }

    /// Sets the broadcast hop limit.
    #[must_use]
    pub fn with_broadcast_ttl(mut self, ttl: u8) -> Self {
        self.broadcast_ttl = ttl;
        self
    }

    /// Sets the longest line accepted from a peer.
    #[must_use]
    pub fn with_max_line_bytes(mut self, n: usize) -> Self {
        self.max_line_bytes = n;
        self
    }

    /// Sets the per-peer output cap.
    #[must_use]
    pub fn with_max_output_bytes(mut self, n: usize) -> Self {
        self.max_output_bytes = n;
        self
    }

    /// Sets the rendezvous request timeout.
    #[must_use]
    pub fn with_query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Dials peers known only by address in plain text (see
    /// [`Config::plaintext_dials`](Config#structfield.plaintext_dials)).
    #[must_use]
    pub fn with_plaintext_dials(mut self, plain: bool) -> Self {
        self.plaintext_dials = plain;
        self
    }

    /// Sets how long a new connection's handshake may take.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the node's key pair (see [`crate::identity`]).
    #[must_use]
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Sets the seed for ids and shuffles.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// Durations as text: `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` (see [`wire::units`]).
mod duration_text {
    use super::{Deserialize, Deserializer, Duration, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        wire::units::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_toml_and_rejects_unknown_fields() {
        let config = Config::new()
            .with_rendezvous("127.0.0.1:8000")
            .with_node_type(Role::Active)
            .with_rebootstrap_interval(Duration::from_millis(1500));
        let text = toml::to_string(&config).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
        let err = toml::from_str::<Config>("max_inbund = 3").unwrap_err();
        assert!(err.to_string().contains("max_inbund"), "{err}");
        let err = toml::from_str::<Config>("seen_lifetime = \"ten\"").unwrap_err();
        assert!(err.to_string().contains("seen_lifetime"), "{err}");
    }
}
