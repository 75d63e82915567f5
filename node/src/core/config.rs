//! The core's settings ([`CoreConfig`]); the driver fills them in from [`crate::Config`].

use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::Identity;
use wire::rendezvous::NodeType;

/// The default of [`CoreConfig::max_punch_sockets`] (and of `--max-punch-sockets`).
pub const DEFAULT_PUNCH_SOCKETS: u32 = 512;

/// The default of [`CoreConfig::keepalive`] (and of the node's `--keepalive`).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

/// The wait before the first try again to move a relayed connection to a direct path (see
/// [`CoreConfig::upgrade_retries`]).
pub const UPGRADE_RETRY_FIRST: Duration = Duration::from_secs(1);

/// Settings of the core (the driver's [`crate::Config`] fills them in).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Our role: passive nodes advertise themselves; active ones only dial out; simultaneous
    /// ones keep a registration with the rendezvous and answer hole-punch challenges (see
    /// [`Core::enable_simultaneous`](super::Core::enable_simultaneous)).
    pub node_type: NodeType,
    /// The port we accept connections on (0: none).
    pub listen_port: u16,
    /// The port others reach us on from outside when it differs from `listen_port` (a port
    /// forwarded by UPnP, NAT-PMP or by hand). Advertised, sent in `HELLO` and `CLEAR`.
    pub public_port: Option<u16>,
    /// Rendezvous servers, tried in order starting from the last one that answered.
    pub rendezvous: Vec<SocketAddr>,
    /// Inbound connections beyond this are closed at once.
    pub max_inbound: usize,
    /// Inbound connections from one IP beyond this are closed at once, so that one host
    /// cannot take every inbound slot (several nodes behind one NAT share an IP: not 1).
    pub max_inbound_per_ip: usize,
    /// Bootstrap dials until this many outbound connections are open or being opened.
    pub max_outbound: usize,
    /// `n` in `BOOTSTRAP n` (1..=100).
    pub bootstrap_count: u8,
    /// While below `max_outbound`, bootstrap again this often.
    pub rebootstrap_interval: Duration,
    /// When the last connection drops, bootstrap again this soon (but never more often).
    pub alone_rebootstrap_delay: Duration,
    /// Once advertised, register again this often (the server forgets after its node lifetime
    /// and after a restart).
    pub readvertise_interval: Duration,
    /// Hops a broadcast travels (1: only to direct neighbours).
    pub broadcast_ttl: u8,
    /// Broadcast ids remembered at most.
    pub seen_capacity: usize,
    /// How long a broadcast id is remembered.
    pub seen_lifetime: Duration,
    /// Seed for shuffles and nonces (the driver passes OS randomness; tests pass a constant).
    pub seed: u64,
    /// Dial peers known only by address (bootstrap, `Net::connect_addr`) in plain text
    /// instead of encrypted: for an overlay with PyP2P nodes in it. Connects by UNL follow
    /// the UNL (v3 encrypted, v2 plain); inbound connections are always sniffed.
    pub plaintext_dials: bool,
    /// Our key pair (node id, overlay id, signatures); `None`: derived from `seed`
    /// ([`Identity::from_seed`], for tests).
    pub identity: Option<Identity>,
    /// A connect by UNL that has not succeeded after this fails.
    pub unl_connect_timeout: Duration,
    /// A reverse connect whose peer has not dialed us this long after the request was posted
    /// fails (so the relay can start): they may not be able to reach us after all.
    pub reverse_timeout: Duration,
    /// Reverse-connect and relay requests acted on per minute at most (others are refused).
    pub max_reverse_per_minute: usize,
    /// Hole-punch challenges answered per minute at most (each makes us dial the candidate).
    pub max_punch_per_minute: usize,
    /// A hole punch that has no connection this long after it started fails (and the relay,
    /// if possible, starts).
    pub punch_timeout: Duration,
    /// Sockets (and SYNs) each side of a birthday punch uses at most: the easy side's
    /// guesses, the hard side's mappings (see `core/punch/birthday.rs`).
    pub max_punch_sockets: u32,
    /// A relayed connection whose direct tries all failed tries the punch again this many
    /// times at most, after [`UPGRADE_RETRY_FIRST`], then 4× longer each time (1 s, 4 s, 16 s,
    /// 64 s by default): a birthday punch misses about one time in fifty, and a lost packet
    /// can end any punch. 0: a relayed connection stays relayed after its first tries.
    pub upgrade_retries: u32,
    /// How often an idle long-lived connection shows the NATs on its path that it is alive:
    /// the simultaneous registration and the mailbox connection send a request, peer
    /// connections TCP keep-alive probes (set by the driver). Below the shortest mapping
    /// timeout on the path (RFC 5382 asks NATs for at least 2 h 4 min; many use minutes).
    pub keepalive: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            node_type: NodeType::Active,
            listen_port: 0,
            public_port: None,
            rendezvous: Vec::new(),
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
            seed: 0,
            identity: None,
            plaintext_dials: false,
            unl_connect_timeout: Duration::from_secs(10),
            reverse_timeout: Duration::from_secs(3),
            max_reverse_per_minute: 120,
            max_punch_per_minute: 120,
            punch_timeout: Duration::from_secs(3),
            keepalive: DEFAULT_KEEPALIVE,
            max_punch_sockets: DEFAULT_PUNCH_SOCKETS,
            upgrade_retries: 4,
        }
    }
}
