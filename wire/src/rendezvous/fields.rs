//! The fields the rendezvous messages carry: [`Proto`], [`NodeType`], [`NodeEntry`],
//! [`Family`], [`NodeTarget`], [`NtpTime`] and [`RelayToken`].

use std::fmt::{self, Display, Formatter};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::{ParseError, RELAY_TOKEN_BYTES, RELAY_TOKEN_HEX_CHARS};

/// Transport named in hole-punching messages. Only TCP is used; UDP is parsed for PyP2P parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `TCP`
    Tcp,
    /// `UDP`
    Udp,
}

impl Display for Proto {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// A node's role, as the single letter PyP2P uses in `NODES` entries and UNLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeType {
    /// `p`: accepts inbound connections.
    Passive,
    /// `a`: outbound connections only.
    Active,
    /// `s`: reachable by TCP simultaneous open.
    Simultaneous,
}

impl NodeType {
    /// The wire letter.
    pub fn letter(self) -> char {
        match self {
            NodeType::Passive => 'p',
            NodeType::Active => 'a',
            NodeType::Simultaneous => 's',
        }
    }

    /// The type for a wire letter.
    pub fn from_letter(letter: char) -> Option<Self> {
        match letter {
            'p' => Some(NodeType::Passive),
            'a' => Some(NodeType::Active),
            's' => Some(NodeType::Simultaneous),
            _ => None,
        }
    }
}

/// The role's name: `passive`, `active` or `simultaneous`.
impl Display for NodeType {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeType::Passive => "passive",
            NodeType::Active => "active",
            NodeType::Simultaneous => "simultaneous",
        })
    }
}

/// One entry of a `NODES` reply: `<type>:<ip>:<port>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeEntry {
    /// The node's role (the server only returns passive nodes).
    pub node_type: NodeType,
    /// Where to connect.
    pub addr: SocketAddr,
}

/// `p:192.0.2.1:5000` for IPv4 (PyP2P's form); `p:[2001:db8::1]:5000` for IPv6, which only
/// `BOOTSTRAP <family> ...` replies carry (see [`Family`]).
impl Display for NodeEntry {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let letter = self.node_type.letter();
        match self.addr.ip() {
            IpAddr::V4(ip) => write!(f, "{letter}:{ip}:{}", self.addr.port()),
            IpAddr::V6(ip) => write!(f, "{letter}:[{ip}]:{}", self.addr.port()),
        }
    }
}

impl FromStr for NodeEntry {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::BadNodeEntry(s.to_string());
        let (letter, rest) = s.split_once(':').ok_or_else(bad)?;
        let mut letters = letter.chars();
        let node_type = match (letters.next(), letters.next()) {
            (Some(c), None) => NodeType::from_letter(c).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        // `[v6]:port` (what we send), or a bare address: rsplit, since an IPv6 address
        // contains colons itself (`p:::1:8000`, accepted from older servers).
        let (ip, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let ip: IpAddr = match ip.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            Some(v6) => IpAddr::V6(v6.parse().map_err(|_| bad())?),
            None => ip.parse().map_err(|_| bad())?,
        };
        // Digits only: `str::parse` would also take a sign (`+80`).
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        Ok(NodeEntry {
            node_type,
            addr: SocketAddr::new(ip, port),
        })
    }
}

/// Which address families a `BOOTSTRAP <family> <n> [<own port>]` (our extension) asks for.
///
/// PyP2P's `BOOTSTRAP <n>` is answered with IPv4 nodes only, so a PyP2P client never sees an
/// IPv6 entry; our nodes ask with a family word and get `p:[2001:db8::1]:5000` entries too.
///
/// ```
/// use wire::rendezvous::{Family, Request};
///
/// let ask = Request::BootstrapFamily { family: Family::Any, count: 8, own_port: None };
/// assert_eq!(ask.to_string(), "BOOTSTRAP ANY 8");
/// assert!(Family::Ipv6.admits("2001:db8::1".parse().unwrap()));
/// assert!(!Family::Ipv6.admits("192.0.2.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `IPV4`: IPv4 nodes only (what PyP2P's `BOOTSTRAP <n>` gets).
    Ipv4,
    /// `IPV6`: IPv6 nodes only.
    Ipv6,
    /// `ANY`: both.
    Any,
}

impl Family {
    /// Every family word, as the wire spells it.
    pub const WORDS: [&'static str; 3] = ["IPV4", "IPV6", "ANY"];

    /// The wire word.
    pub fn word(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPV4",
            Family::Ipv6 => "IPV6",
            Family::Any => "ANY",
        }
    }

    /// The family of a wire word (exact, uppercase).
    pub fn from_word(word: &str) -> Option<Family> {
        match word {
            "IPV4" => Some(Family::Ipv4),
            "IPV6" => Some(Family::Ipv6),
            "ANY" => Some(Family::Any),
            _ => None,
        }
    }

    /// The family of one address (an IPv4-mapped IPv6 address is IPv4).
    pub fn of(ip: IpAddr) -> Family {
        match ip.to_canonical() {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// Whether a node at `ip` belongs in a reply for this family.
    pub fn admits(self, ip: IpAddr) -> bool {
        self == Family::Any || Family::of(ip) == self
    }
}

impl Display for Family {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// Which simultaneous node a `CANDIDATE` targets: an IP (PyP2P; the newest registration at that IP)
/// or `ip:port` (one registration when several share an IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeTarget {
    /// Any node at this IP (the most recently registered one).
    Ip(IpAddr),
    /// The node registered at exactly this address.
    Addr(SocketAddr),
}

impl NodeTarget {
    /// The target's IP.
    pub fn ip(self) -> IpAddr {
        match self {
            NodeTarget::Ip(ip) => ip,
            NodeTarget::Addr(addr) => addr.ip(),
        }
    }
}

impl Display for NodeTarget {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            NodeTarget::Ip(ip) => write!(f, "{ip}"),
            NodeTarget::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// A timestamp in seconds since the Unix epoch, as PyP2P's `ACCEPT`/`FIGHT` carry it.
///
/// Always finite and non-negative; formatted with Rust's shortest round-trip float notation.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct NtpTime(f64);

impl NtpTime {
    /// A timestamp, if `secs` is finite and non-negative.
    pub fn new(secs: f64) -> Option<Self> {
        (secs.is_finite() && secs >= 0.0).then_some(NtpTime(secs))
    }

    /// Seconds since the Unix epoch.
    pub fn secs(self) -> f64 {
        self.0
    }
}

impl Display for NtpTime {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The shared secret two peers present with `RELAY <token>` to be spliced together: 32 bytes,
/// 64 lowercase hex characters on the wire.
///
/// Anyone who knows a token can join its relay, so make it random (e.g. `rand::random()`) and
/// give it only to the peer. `Debug` shows only the first 8 characters, so logs do not leak it.
///
/// ```
/// use wire::rendezvous::{ParseError, RelayToken};
///
/// let token = RelayToken::from_bytes([0xab; 32]);
/// let text = token.to_string();
/// assert_eq!(text, "ab".repeat(32));
/// assert_eq!(text.parse::<RelayToken>(), Ok(token));
/// assert!(matches!("AB".repeat(32).parse::<RelayToken>(), Err(ParseError::TokenUppercase { .. })));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayToken([u8; RELAY_TOKEN_BYTES]);

impl RelayToken {
    /// The token made of these bytes.
    pub const fn from_bytes(bytes: [u8; RELAY_TOKEN_BYTES]) -> Self {
        RelayToken(bytes)
    }

    /// Its bytes.
    pub const fn as_bytes(&self) -> &[u8; RELAY_TOKEN_BYTES] {
        &self.0
    }

    /// The first 8 hex characters, enough to tell tokens apart in a log.
    pub fn short(&self) -> String {
        let [a, b, c, d, ..] = self.0;
        format!("{a:02x}{b:02x}{c:02x}{d:02x}")
    }
}

impl fmt::Debug for RelayToken {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "RelayToken({}...)", self.short())
    }
}

impl Display for RelayToken {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for RelayToken {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let len = s.chars().count();
        if len != RELAY_TOKEN_HEX_CHARS {
            return Err(ParseError::TokenLength {
                len,
                expected: RELAY_TOKEN_HEX_CHARS,
            });
        }
        let mut bytes = [0u8; RELAY_TOKEN_BYTES];
        for (position, found) in s.chars().enumerate() {
            let digit = match found {
                '0'..='9' | 'a'..='f' => found.to_digit(16),
                'A'..='F' => return Err(ParseError::TokenUppercase { position, found }),
                _ => None,
            };
            let Some(nibble) = digit.and_then(|d| u8::try_from(d).ok()) else {
                return Err(ParseError::TokenNotHex { position, found });
            };
            bytes[position / 2] |= if position % 2 == 0 {
                nibble << 4
            } else {
                nibble
            };
        }
        Ok(RelayToken(bytes))
    }
}
