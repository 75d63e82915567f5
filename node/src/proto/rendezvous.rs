//! The rendezvous server's line protocol (PyP2P-compatible), as typed requests and responses.
//!
//! Every message implements [`FromStr`] and [`Display`]; `parse(display(x)) == x` holds for every
//! value (tested with proptest). Display never writes the line terminator: senders append `\r\n`.
//!
//! | client → server | server → client |
//! |---|---|
//! | `BOOTSTRAP <n> [<own port>]` | `NODES p:<ip>:<port> ... ` or `NODES EMPTY` |
//! | `PASSIVE READY <port> <max_inbound>` | (nothing) |
//! | `SIMULTANEOUS READY <port> <max_inbound>` | later `CHALLENGE` / `RECONNECT` |
//! | `SOURCE TCP [anything]` | `REMOTE TCP <port>` |
//! | `CANDIDATE <node> TCP <p1 p2 ...>` | `PREDICTION SET`, later `FIGHT` |
//! | `ACCEPT <client_ip> <q1 q2 ...> TCP <ntp_time>` | (the candidate gets `FIGHT`) |
//! | `CLEAR [<port>]` | (nothing) |
//! | `QUIT` | (the server closes) |
//! | `RELAY <token>` (first line only) | `RELAY WAITING`, then `RELAY OK` and a raw byte pipe |
//! | anything malformed | `ERROR <reason>` (our addition: PyP2P answers with silence) |
//!
//! Extensions over PyP2P, all optional so PyP2P peers are unaffected:
//! - `BOOTSTRAP <n> <own port>` lets a node behind a shared IP (or on loopback) exclude only its
//!   own registration instead of every node at its IP.
//! - `CANDIDATE <ip>:<port>` names one simultaneous node when several share an IP.
//! - `CLEAR <port>` removes one registration instead of everything from the caller's IP.
//! - `ERROR <reason>` answers bad input.
//! - `RELAY <token>` (the relay mode, for two nodes that cannot reach each other directly): sent
//!   as the first line of a fresh connection by both peers with the same [`RelayToken`] (64
//!   lowercase hex characters, 32 random bytes both learnt through another channel). The first
//!   is parked and told `RELAY WAITING`; when the second arrives both are told `RELAY OK`, and
//!   from the byte after that line on each connection is a raw byte pipe to the other (no lines,
//!   any bytes). Refusals are `ERROR relay: <reason>` followed by a close.

use std::fmt::{self, Display, Formatter, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use thiserror::Error;

/// Most nodes one `BOOTSTRAP` may ask for (PyP2P's limit).
pub const MAX_BOOTSTRAP: u8 = 100;
/// Most predicted ports one `CANDIDATE`/`ACCEPT`/`CHALLENGE`/`FIGHT` may carry.
pub const MAX_PREDICTED_PORTS: usize = 32;
/// Longest free-form text (`SOURCE TCP <text>`, `ERROR <text>`) accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Bytes in a [`RelayToken`].
pub const RELAY_TOKEN_BYTES: usize = 32;
/// Characters of a [`RelayToken`] on the wire (lowercase hex).
pub const RELAY_TOKEN_HEX_CHARS: usize = 2 * RELAY_TOKEN_BYTES;

/// Why a line is not a valid message. Each names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The line is empty or only spaces.
    #[error("empty line")]
    Empty,
    /// The first word(s) name no known message.
    #[error("unknown command: {0:?}")]
    UnknownCommand(String),
    /// A required argument is absent.
    #[error("{command}: missing argument <{argument}>")]
    MissingArgument {
        /// The message being parsed.
        command: &'static str,
        /// The missing argument's name.
        argument: &'static str,
    },
    /// More arguments than the message takes.
    #[error("{command}: unexpected extra argument {extra:?}")]
    ExtraArgument {
        /// The message being parsed.
        command: &'static str,
        /// The first unexpected word.
        extra: String,
    },
    /// An argument that must be a number is not one, or is out of range.
    #[error("{command}: <{argument}> must be an integer in {min}..={max}, got {value:?}")]
    BadNumber {
        /// The message being parsed.
        command: &'static str,
        /// The argument's name.
        argument: &'static str,
        /// What was sent.
        value: String,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// An argument that must be an IP address (or `ip:port`) is not one.
    #[error("{command}: <{argument}> must be an IP address, got {value:?}")]
    BadAddress {
        /// The message being parsed.
        command: &'static str,
        /// The argument's name.
        argument: &'static str,
        /// What was sent.
        value: String,
    },
    /// The protocol word is neither `TCP` nor `UDP`.
    #[error("{command}: protocol must be TCP or UDP, got {value:?}")]
    BadProtocol {
        /// The message being parsed.
        command: &'static str,
        /// What was sent.
        value: String,
    },
    /// A port list is empty or longer than [`MAX_PREDICTED_PORTS`].
    #[error("{command}: expected 1..={max} ports, got {count}")]
    PortCount {
        /// The message being parsed.
        command: &'static str,
        /// How many were sent.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// An NTP timestamp is not a finite, non-negative number.
    #[error("{command}: <ntp_time> must be a non-negative decimal number, got {value:?}")]
    BadTime {
        /// The message being parsed.
        command: &'static str,
        /// What was sent.
        value: String,
    },
    /// A `NODES` entry is not `<type>:<ip>:<port>`.
    #[error("NODES: bad entry {0:?} (expected <p|a|s>:<ip>:<port>)")]
    BadNodeEntry(String),
    /// A relay token that is not 64 characters long.
    #[error("RELAY: <token> must be {expected} lowercase hex characters, got {len}")]
    TokenLength {
        /// Characters sent (counted as `char`s).
        len: usize,
        /// [`RELAY_TOKEN_HEX_CHARS`].
        expected: usize,
    },
    /// A relay token character that is not a hex digit.
    #[error("RELAY: <token> must be lowercase hex, got {found:?} at position {position}")]
    TokenNotHex {
        /// Index of the character (0-based).
        position: usize,
        /// The character.
        found: char,
    },
    /// A relay token with an uppercase hex digit (tokens are compared as text, so one spelling).
    #[error("RELAY: <token> must be lowercase hex, got uppercase {found:?} at position {position}")]
    TokenUppercase {
        /// Index of the character (0-based).
        position: usize,
        /// The character.
        found: char,
    },
    /// Free text longer than [`MAX_TEXT_BYTES`] or containing a line break.
    #[error("{command}: text must be at most {max} bytes without line breaks, got {len} bytes")]
    BadText {
        /// The message being parsed.
        command: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
}

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

/// One entry of a `NODES` reply: `<type>:<ip>:<port>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeEntry {
    /// The node's role (the server only returns passive nodes).
    pub node_type: NodeType,
    /// Where to connect.
    pub addr: SocketAddr,
}

impl Display for NodeEntry {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.node_type.letter(),
            self.addr.ip(),
            self.addr.port()
        )
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
        // rsplit: an IPv6 address contains colons itself.
        let (ip, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
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
/// use node::proto::rendezvous::{ParseError, RelayToken};
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

/// A message a client sends to the rendezvous server.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `BOOTSTRAP <n> [<own port>]`: ask for up to `n` random passive nodes.
    Bootstrap {
        /// How many (1..=100).
        count: u8,
        /// The asker's own passive port, so only that registration is excluded (extension).
        own_port: Option<u16>,
    },
    /// `PASSIVE READY <port> <max_inbound>`: register as a passive node at (observed IP, port).
    PassiveReady {
        /// Listening port.
        port: u16,
        /// How many inbound connections the node accepts.
        max_inbound: u32,
    },
    /// `SIMULTANEOUS READY <port> <max_inbound>`: register this connection as a simultaneous node.
    SimultaneousReady {
        /// Listening port (PyP2P sends 0).
        port: u16,
        /// How many inbound connections the node accepts.
        max_inbound: u32,
    },
    /// `SOURCE TCP [text]`: ask which source port the server sees.
    SourceTcp {
        /// Whatever followed (PyP2P sends its local port); echoed nowhere.
        text: Option<String>,
    },
    /// `CANDIDATE <node> <proto> <ports>`: ask a simultaneous node for a hole punch.
    Candidate {
        /// The simultaneous node.
        node: NodeTarget,
        /// Transport.
        proto: Proto,
        /// Our predicted external ports.
        ports: Vec<u16>,
    },
    /// `ACCEPT <client_ip> <ports> <proto> <ntp_time>`: a simultaneous node accepts a challenge.
    Accept {
        /// The candidate's IP, as the `CHALLENGE` named it.
        client_ip: IpAddr,
        /// The node's predicted external ports.
        ports: Vec<u16>,
        /// Transport.
        proto: Proto,
        /// When both sides should connect.
        ntp_time: NtpTime,
    },
    /// `CLEAR [<port>]`: remove the caller's registrations (all at its IP, or the one at `port`).
    Clear {
        /// Narrow the removal to this registered port (extension).
        port: Option<u16>,
    },
    /// `QUIT`: ask the server to close the connection.
    Quit,
    /// `RELAY <token>` (extension): splice this connection with the other one that presents the
    /// same token. Only valid as the first line of a connection.
    Relay {
        /// The shared token.
        token: RelayToken,
    },
}

/// A message the rendezvous server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `NODES <entry> <entry> ... ` (trailing space, as PyP2P) or `NODES EMPTY`.
    Nodes(Vec<NodeEntry>),
    /// `REMOTE TCP <port>`: the source port the server observed.
    RemoteTcp {
        /// Observed source port.
        port: u16,
    },
    /// `PREDICTION SET`: the candidate was stored.
    PredictionSet,
    /// `CHALLENGE <client_ip> <ports> <proto>`: to a simultaneous node, a candidate wants to punch.
    Challenge {
        /// The candidate's observed IP.
        client_ip: IpAddr,
        /// The candidate's predicted ports.
        ports: Vec<u16>,
        /// Transport.
        proto: Proto,
    },
    /// `FIGHT <node_ip> <ports> <proto> <ntp_time>`: to a candidate, connect now-ish.
    Fight {
        /// The simultaneous node's observed IP.
        node_ip: IpAddr,
        /// Its predicted ports.
        ports: Vec<u16>,
        /// Transport.
        proto: Proto,
        /// When both sides connect.
        ntp_time: NtpTime,
    },
    /// `RECONNECT`: to a simultaneous node whose registration is stale; it should re-register.
    Reconnect,
    /// `ERROR <reason>`: the last line was rejected (extension; PyP2P stays silent).
    Error(String),
    /// `RELAY WAITING` (extension): parked until the peer presents the same token.
    RelayWaiting,
    /// `RELAY OK` (extension): paired; every byte after this line comes from the peer.
    RelayOk,
}

/// Splits a line into words (runs of ASCII spaces or tabs).
struct Words<'a> {
    command: &'static str,
    iter: std::str::SplitAsciiWhitespace<'a>,
}

impl<'a> Words<'a> {
    fn new(command: &'static str, rest: &'a str) -> Self {
        Words {
            command,
            iter: rest.split_ascii_whitespace(),
        }
    }

    fn next(&mut self, argument: &'static str) -> Result<&'a str, ParseError> {
        self.iter.next().ok_or(ParseError::MissingArgument {
            command: self.command,
            argument,
        })
    }

    fn number<T>(&mut self, argument: &'static str, min: u64, max: u64) -> Result<T, ParseError>
    where
        T: TryFrom<u64>,
    {
        let word = self.next(argument)?;
        parse_number(self.command, argument, word, min, max)
    }

    fn optional_number<T>(
        &mut self,
        argument: &'static str,
        min: u64,
        max: u64,
    ) -> Result<Option<T>, ParseError>
    where
        T: TryFrom<u64>,
    {
        match self.iter.next() {
            None => Ok(None),
            Some(word) => parse_number(self.command, argument, word, min, max).map(Some),
        }
    }

    fn ip(&mut self, argument: &'static str) -> Result<IpAddr, ParseError> {
        let word = self.next(argument)?;
        word.parse().map_err(|_| ParseError::BadAddress {
            command: self.command,
            argument,
            value: word.to_string(),
        })
    }

    fn proto(&mut self) -> Result<Proto, ParseError> {
        let word = self.next("proto")?;
        parse_proto(self.command, word)
    }

    fn time(&mut self) -> Result<NtpTime, ParseError> {
        let word = self.next("ntp_time")?;
        parse_time(self.command, word)
    }

    fn end(mut self) -> Result<(), ParseError> {
        match self.iter.next() {
            None => Ok(()),
            Some(extra) => Err(ParseError::ExtraArgument {
                command: self.command,
                extra: extra.to_string(),
            }),
        }
    }
}

fn parse_number<T: TryFrom<u64>>(
    command: &'static str,
    argument: &'static str,
    word: &str,
    min: u64,
    max: u64,
) -> Result<T, ParseError> {
    let bad = || ParseError::BadNumber {
        command,
        argument,
        value: word.to_string(),
        min,
        max,
    };
    // Digits only: Rust's parser would also take a leading '+'.
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = word.parse().map_err(|_| bad())?;
    if n < min || n > max {
        return Err(bad());
    }
    T::try_from(n).map_err(|_| bad())
}

fn parse_proto(command: &'static str, word: &str) -> Result<Proto, ParseError> {
    match word {
        "TCP" => Ok(Proto::Tcp),
        "UDP" => Ok(Proto::Udp),
        _ => Err(ParseError::BadProtocol {
            command,
            value: word.to_string(),
        }),
    }
}

fn parse_time(command: &'static str, word: &str) -> Result<NtpTime, ParseError> {
    let bad = || ParseError::BadTime {
        command,
        value: word.to_string(),
    };
    // PyP2P sends `[0-9]+(.[0-9]+)?`, and Rust's float Display never writes an exponent.
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    word.parse::<f64>()
        .ok()
        .and_then(NtpTime::new)
        .ok_or_else(bad)
}

fn parse_port_word(command: &'static str, word: &str) -> Result<u16, ParseError> {
    parse_number(command, "port", word, 1, u64::from(u16::MAX))
}

fn check_port_count(command: &'static str, count: usize) -> Result<(), ParseError> {
    if count == 0 || count > MAX_PREDICTED_PORTS {
        return Err(ParseError::PortCount {
            command,
            count,
            max: MAX_PREDICTED_PORTS,
        });
    }
    Ok(())
}

/// Ports up to (not including) a protocol word, then the protocol: `<p1 p2 ...> TCP`.
fn ports_then_proto(words: &mut Words<'_>) -> Result<(Vec<u16>, Proto), ParseError> {
    let mut ports = Vec::new();
    loop {
        let word = words.next("proto")?;
        if word.bytes().all(|b| b.is_ascii_digit()) {
            if ports.len() == MAX_PREDICTED_PORTS {
                return Err(ParseError::PortCount {
                    command: words.command,
                    count: ports.len() + 1,
                    max: MAX_PREDICTED_PORTS,
                });
            }
            ports.push(parse_port_word(words.command, word)?);
        } else {
            let proto = parse_proto(words.command, word)?;
            check_port_count(words.command, ports.len())?;
            return Ok((ports, proto));
        }
    }
}

fn check_text(command: &'static str, text: &str) -> Result<(), ParseError> {
    if text.len() > MAX_TEXT_BYTES || text.contains(['\r', '\n']) {
        return Err(ParseError::BadText {
            command,
            len: text.len(),
            max: MAX_TEXT_BYTES,
        });
    }
    Ok(())
}

/// Splits off a command made of one or two fixed words, returning the rest of the line.
fn strip_command<'a>(line: &'a str, command: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(command)?;
    if rest.is_empty() || rest.starts_with([' ', '\t']) {
        Some(rest)
    } else {
        None
    }
}

fn write_ports(f: &mut Formatter<'_>, ports: &[u16]) -> fmt::Result {
    for (i, port) in ports.iter().enumerate() {
        if i > 0 {
            f.write_char(' ')?;
        }
        write!(f, "{port}")?;
    }
    Ok(())
}

impl FromStr for Request {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Self, ParseError> {
        let line = line.trim_start_matches([' ', '\t']);
        if line.trim_end().is_empty() {
            return Err(ParseError::Empty);
        }
        if let Some(rest) = strip_command(line, "BOOTSTRAP") {
            let mut w = Words::new("BOOTSTRAP", rest);
            let count = w.number("n", 1, u64::from(MAX_BOOTSTRAP))?;
            let own_port = w.optional_number("own_port", 1, u64::from(u16::MAX))?;
            w.end()?;
            return Ok(Request::Bootstrap { count, own_port });
        }
        for (command, simultaneous) in [("PASSIVE READY", false), ("SIMULTANEOUS READY", true)] {
            if let Some(rest) = strip_command(line, command) {
                let mut w = Words::new(command, rest);
                let port = w.number("port", 0, u64::from(u16::MAX))?;
                let max_inbound = w.number("max_inbound", 0, u64::from(u32::MAX))?;
                w.end()?;
                return Ok(if simultaneous {
                    Request::SimultaneousReady { port, max_inbound }
                } else {
                    Request::PassiveReady { port, max_inbound }
                });
            }
        }
        if let Some(rest) = strip_command(line, "SOURCE TCP") {
            // PyP2P matches `^SOURCE TCP` and ignores the rest; keep it verbatim.
            let text = match rest.strip_prefix(' ') {
                None if rest.is_empty() => None,
                None => Some(rest.to_string()),
                Some(text) => Some(text.to_string()),
            };
            if let Some(text) = &text {
                check_text("SOURCE TCP", text)?;
            }
            return Ok(Request::SourceTcp { text });
        }
        if let Some(rest) = strip_command(line, "CANDIDATE") {
            let mut w = Words::new("CANDIDATE", rest);
            let word = w.next("node_ip")?;
            let node = if let Ok(addr) = word.parse::<SocketAddr>() {
                NodeTarget::Addr(addr)
            } else if let Ok(ip) = word.parse::<IpAddr>() {
                NodeTarget::Ip(ip)
            } else {
                return Err(ParseError::BadAddress {
                    command: "CANDIDATE",
                    argument: "node_ip",
                    value: word.to_string(),
                });
            };
            let proto = w.proto()?;
            let mut ports = Vec::new();
            for word in w.iter.by_ref() {
                if ports.len() == MAX_PREDICTED_PORTS {
                    return Err(ParseError::PortCount {
                        command: "CANDIDATE",
                        count: ports.len() + 1,
                        max: MAX_PREDICTED_PORTS,
                    });
                }
                ports.push(parse_port_word("CANDIDATE", word)?);
            }
            check_port_count("CANDIDATE", ports.len())?;
            return Ok(Request::Candidate { node, proto, ports });
        }
        if let Some(rest) = strip_command(line, "ACCEPT") {
            let mut w = Words::new("ACCEPT", rest);
            let client_ip = w.ip("client_ip")?;
            let (ports, proto) = ports_then_proto(&mut w)?;
            let ntp_time = w.time()?;
            w.end()?;
            return Ok(Request::Accept {
                client_ip,
                ports,
                proto,
                ntp_time,
            });
        }
        if let Some(rest) = strip_command(line, "CLEAR") {
            let mut w = Words::new("CLEAR", rest);
            let port = w.optional_number("port", 0, u64::from(u16::MAX))?;
            w.end()?;
            return Ok(Request::Clear { port });
        }
        if let Some(rest) = strip_command(line, "QUIT") {
            Words::new("QUIT", rest).end()?;
            return Ok(Request::Quit);
        }
        if let Some(rest) = strip_command(line, "RELAY") {
            let mut w = Words::new("RELAY", rest);
            let token = w.next("token")?.parse()?;
            w.end()?;
            return Ok(Request::Relay { token });
        }
        Err(ParseError::UnknownCommand(first_words(line)))
    }
}

/// The start of an unknown line, short enough to quote in an error.
fn first_words(line: &str) -> String {
    let mut end = line.len().min(32);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

impl Display for Request {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Request::Bootstrap { count, own_port } => {
                write!(f, "BOOTSTRAP {count}")?;
                if let Some(port) = own_port {
                    write!(f, " {port}")?;
                }
                Ok(())
            }
            Request::PassiveReady { port, max_inbound } => {
                write!(f, "PASSIVE READY {port} {max_inbound}")
            }
            Request::SimultaneousReady { port, max_inbound } => {
                write!(f, "SIMULTANEOUS READY {port} {max_inbound}")
            }
            Request::SourceTcp { text: None } => f.write_str("SOURCE TCP"),
            Request::SourceTcp { text: Some(text) } => write!(f, "SOURCE TCP {text}"),
            Request::Candidate { node, proto, ports } => {
                write!(f, "CANDIDATE {node} {proto} ")?;
                write_ports(f, ports)
            }
            Request::Accept {
                client_ip,
                ports,
                proto,
                ntp_time,
            } => {
                write!(f, "ACCEPT {client_ip} ")?;
                write_ports(f, ports)?;
                write!(f, " {proto} {ntp_time}")
            }
            Request::Clear { port: None } => f.write_str("CLEAR"),
            Request::Clear { port: Some(port) } => write!(f, "CLEAR {port}"),
            Request::Quit => f.write_str("QUIT"),
            Request::Relay { token } => write!(f, "RELAY {token}"),
        }
    }
}

impl FromStr for Response {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Self, ParseError> {
        let line = line.trim_start_matches([' ', '\t']);
        if line.trim_end().is_empty() {
            return Err(ParseError::Empty);
        }
        if let Some(rest) = strip_command(line, "NODES") {
            let mut entries = Vec::new();
            let mut words = rest.split_ascii_whitespace().peekable();
            if words.peek() == Some(&"EMPTY") {
                words.next();
                if let Some(extra) = words.next() {
                    return Err(ParseError::ExtraArgument {
                        command: "NODES",
                        extra: extra.to_string(),
                    });
                }
                return Ok(Response::Nodes(entries));
            }
            for word in words {
                if entries.len() == usize::from(MAX_BOOTSTRAP) {
                    return Err(ParseError::ExtraArgument {
                        command: "NODES",
                        extra: word.to_string(),
                    });
                }
                entries.push(word.parse()?);
            }
            if entries.is_empty() {
                return Err(ParseError::MissingArgument {
                    command: "NODES",
                    argument: "entry",
                });
            }
            return Ok(Response::Nodes(entries));
        }
        if let Some(rest) = strip_command(line, "REMOTE TCP") {
            let mut w = Words::new("REMOTE TCP", rest);
            let port = w.number("port", 0, u64::from(u16::MAX))?;
            w.end()?;
            return Ok(Response::RemoteTcp { port });
        }
        if let Some(rest) = strip_command(line, "PREDICTION SET") {
            Words::new("PREDICTION SET", rest).end()?;
            return Ok(Response::PredictionSet);
        }
        if let Some(rest) = strip_command(line, "CHALLENGE") {
            let mut w = Words::new("CHALLENGE", rest);
            let client_ip = w.ip("client_ip")?;
            let (ports, proto) = ports_then_proto(&mut w)?;
            w.end()?;
            return Ok(Response::Challenge {
                client_ip,
                ports,
                proto,
            });
        }
        if let Some(rest) = strip_command(line, "FIGHT") {
            let mut w = Words::new("FIGHT", rest);
            let node_ip = w.ip("node_ip")?;
            let (ports, proto) = ports_then_proto(&mut w)?;
            let ntp_time = w.time()?;
            w.end()?;
            return Ok(Response::Fight {
                node_ip,
                ports,
                proto,
                ntp_time,
            });
        }
        if let Some(rest) = strip_command(line, "RECONNECT") {
            Words::new("RECONNECT", rest).end()?;
            return Ok(Response::Reconnect);
        }
        if let Some(rest) = strip_command(line, "RELAY WAITING") {
            Words::new("RELAY WAITING", rest).end()?;
            return Ok(Response::RelayWaiting);
        }
        if let Some(rest) = strip_command(line, "RELAY OK") {
            Words::new("RELAY OK", rest).end()?;
            return Ok(Response::RelayOk);
        }
        if let Some(rest) = strip_command(line, "ERROR") {
            let text = rest.strip_prefix(' ').unwrap_or(rest);
            check_text("ERROR", text)?;
            return Ok(Response::Error(text.to_string()));
        }
        Err(ParseError::UnknownCommand(first_words(line)))
    }
}

impl Display for Response {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Response::Nodes(entries) if entries.is_empty() => f.write_str("NODES EMPTY"),
            Response::Nodes(entries) => {
                f.write_str("NODES ")?;
                for entry in entries {
                    // PyP2P writes a space after every entry, the last one included.
                    write!(f, "{entry} ")?;
                }
                Ok(())
            }
            Response::RemoteTcp { port } => write!(f, "REMOTE TCP {port}"),
            Response::PredictionSet => f.write_str("PREDICTION SET"),
            Response::Challenge {
                client_ip,
                ports,
                proto,
            } => {
                write!(f, "CHALLENGE {client_ip} ")?;
                write_ports(f, ports)?;
                write!(f, " {proto}")
            }
            Response::Fight {
                node_ip,
                ports,
                proto,
                ntp_time,
            } => {
                write!(f, "FIGHT {node_ip} ")?;
                write_ports(f, ports)?;
                write!(f, " {proto} {ntp_time}")
            }
            Response::Reconnect => f.write_str("RECONNECT"),
            Response::Error(text) => write!(f, "ERROR {text}"),
            Response::RelayWaiting => f.write_str("RELAY WAITING"),
            Response::RelayOk => f.write_str("RELAY OK"),
        }
    }
}

impl Response {
    /// An `ERROR` reply for a parse failure, its text kept within [`MAX_TEXT_BYTES`] and on
    /// one line (the error quotes client input, which may be anything).
    pub fn error(reason: &dyn Display) -> Response {
        let mut text: String = reason
            .to_string()
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if text.len() > MAX_TEXT_BYTES {
            let mut end = MAX_TEXT_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Response::Error(text)
    }
}

#[cfg(test)]
mod tests;
