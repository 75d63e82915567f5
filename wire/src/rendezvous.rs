//! The rendezvous server's line protocol (PyP2P-compatible), as typed requests and responses.
//!
//! Every message implements [`FromStr`](std::str::FromStr) and [`Display`](std::fmt::Display);
//! `parse(display(x)) == x` holds for every value (tested with proptest). Display never writes
//! the line terminator: senders append `\r\n`.
//!
//! | client → server | server → client |
//! |---|---|
//! | `BOOTSTRAP <n> [<own port>]` | `NODES p:<ip>:<port> ... ` (IPv4 nodes only) or `NODES EMPTY` |
//! | `BOOTSTRAP <IPV4\|IPV6\|ANY> <n> [<own port>]` | `NODES p:<ip>:<port> p:[<ipv6>]:<port> ... ` or `NODES EMPTY` |
//! | `PASSIVE READY <port> <max_inbound>` | (nothing) |
//! | `SIMULTANEOUS READY <port> <max_inbound>` | later `CHALLENGE` / `RECONNECT` |
//! | `SOURCE TCP [anything]` | `REMOTE TCP <port>` |
//! | `SOURCE ADDR` | `REMOTE ADDR <ip> <port> <unix time>` |
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
//! - `SOURCE ADDR` asks for the observed address and the server's clock:
//!   `REMOTE ADDR <ip> <port> <unix time>`, `<ip>` in its usual text form without brackets
//!   (IPv6 in RFC 5952's compressed lowercase form), `<unix time>` seconds since the epoch as
//!   a decimal number: `REMOTE ADDR 203.0.113.7 40312 1700000000.25`,
//!   `REMOTE ADDR 2001:db8:1::2 40312 1700000000.25`. Over IPv6 it is how a node learns the
//!   global IPv6 address the internet sees (no NAT66: usually its own).
//!
//! # IPv6
//!
//! The server takes IPv6 clients on the same port (`[::]`). PyP2P is IPv4-only and asks
//! with the old verbs, so nothing it can receive ever names an IPv6 address:
//! - A registration (`PASSIVE READY`, `SIMULTANEOUS READY`) is keyed by the observed address,
//!   so one made over IPv6 registers the node's IPv6 address. A dual-stack node registers
//!   once over each family (the server never takes an address it did not observe).
//! - PyP2P's `BOOTSTRAP <n>` returns IPv4 nodes only. `BOOTSTRAP <family> <n> [<own port>]`
//!   ([`Family`]: `IPV4`, `IPV6` or `ANY`; our nodes send it) returns nodes of that family,
//!   IPv6 entries as `p:[2001:db8::1]:5000` (bracketed, so the last colon is the port's).
//!   The asker excluded is its registration at the address it asks from; a dual-stack node
//!   drops its other family's entry itself.
//! - A `CANDIDATE` may only name a simultaneous node of its own family (`ERROR CANDIDATE: ...
//!   is IPv6 ...` otherwise): a hole punch is between two addresses of one family, and a
//!   PyP2P node (IPv4) is never challenged by an IPv6 candidate.
//! - The relay pairs the two peers of a token whatever their families.
//! - Per-IP limits count an IPv6 client by its /64.
//! - `RELAY <token>` (the relay mode, for two nodes that cannot reach each other directly): sent
//!   as the first line of a fresh connection by both peers with the same [`RelayToken`] (64
//!   lowercase hex characters, 32 random bytes both learnt through another channel). The first
//!   is parked and told `RELAY WAITING`; when the second arrives both are told `RELAY OK`, and
//!   from the byte after that line on each connection is a raw byte pipe to the other (no lines,
//!   any bytes). Refusals are `ERROR relay: <reason>` followed by a close.
//!
//! Files: this one (limits, [`ParseError`]), `fields` (the values messages carry), `words` (the
//! word-level parsing they share), `request` and `response` (the two message types).

use thiserror::Error;

/// Most nodes one `BOOTSTRAP` may ask for (PyP2P's limit).
pub const MAX_BOOTSTRAP: u8 = 100;
/// Most predicted ports one `CANDIDATE`/`ACCEPT`/`CHALLENGE`/`FIGHT` may carry.
pub const MAX_PREDICTED_PORTS: usize = 32;

/// The port a candidate predicts for itself when its NAT maps ports at random (our
/// extension, in `CANDIDATE` and `CHALLENGE`): the node then guesses the candidate's ports
/// (a birthday punch) instead of dialing one. PyP2P never sends it.
pub const RANDOM_PORT: u16 = 0;
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

mod fields;
mod request;
mod response;
#[cfg(test)]
mod tests;
mod words;

pub use fields::{Family, NodeEntry, NodeTarget, NodeType, NtpTime, Proto, RelayToken};
pub use request::Request;
pub use response::Response;
