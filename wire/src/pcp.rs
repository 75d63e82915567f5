//! PCP, the Port Control Protocol (RFC 6887): MAP and ANNOUNCE requests and responses, sans-IO.
//!
//! A PCP client asks its gateway (UDP port [`SERVER_PORT`], 5351, the port NAT-PMP uses) to map
//! an external port to one of its own ports for a lifetime, or, for an IPv6 host behind a
//! stateful firewall, to open an inbound pinhole to it. The same request renews the mapping
//! (same nonce); a lifetime of 0 deletes it. This module encodes and parses the messages and
//! checks an answer against the request it answers; sending, retrying and timing belong to the
//! caller (the node's `reach::pcp`).
//!
//! Every field is big-endian; every address is 16 bytes, an IPv4 address written as an
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 6887 §5; see [`encode_address`]):
//!
//! ```text
//! request header (24 bytes, §7.1)           response header (24 bytes, §7.2)
//!   0      version = 2                        0      version = 2
//!   1      R = 0 | opcode (7 bits)            1      R = 1 | opcode
//!   2..4   reserved                           2      reserved
//!   4..8   requested lifetime (s)             3      result code
//!   8..24  client's IP address                4..8   lifetime (s): granted, or how long
//!                                                    an error stands
//!                                             8..12  epoch time (s since the server's state began)
//!                                             12..24 reserved
//! MAP opcode data (36 bytes, §11.1 and §11.2, request and response alike)
//!   0..12  mapping nonce (random; the same for renewals and deletion)
//!   12     protocol (6 TCP, 17 UDP, 0 all)     13..16 reserved
//!   16..18 internal port                      18..20 external port (suggested / assigned)
//!   20..36 external address (suggested / assigned; all zeros: no preference)
//! options (§7.3): code (1), reserved (1), data length (2), data padded to a multiple of 4
//! ```
//!
//! ANNOUNCE (opcode 0, §14.1) is a bare header: a client sends it to learn whether the gateway
//! speaks PCP at all. A NAT-PMP-only gateway answers any PCP request with its own
//! "unsupported version" (version 0, §9): [`Response::parse`] reports it as
//! [`PcpError::NatPmpServer`], which tells the client to fall back to NAT-PMP on the same port.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use wire::pcp::{MapRequest, Nonce, Protocol, Request, Response, ResponseBody, ResultCode};
//!
//! let request = MapRequest::new(
//!     IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)), Nonce([7; 12]), Protocol::TCP, 50500, 3600,
//! );
//! let bytes = Request::Map(request.clone()).encode();
//! assert_eq!(bytes.len(), 60);
//! assert_eq!(&bytes[8..24], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 2]);
//!
//! // The gateway's answer: TCP 50500 on 11.0.0.101 for 3600 s.
//! let answer = Response {
//!     result: ResultCode::Success,
//!     lifetime_secs: 3600,
//!     epoch_secs: 77,
//!     body: ResponseBody::Map(request.answer(50500, IpAddr::V4(Ipv4Addr::new(11, 0, 0, 101)))),
//! };
//! let parsed = Response::parse(&answer.encode())?;
//! let grant = request.grant(&parsed)?;
//! assert_eq!(grant.external.to_string(), "11.0.0.101:50500");
//! assert_eq!(grant.lifetime_secs, 3600);
//! # Ok::<(), wire::pcp::PcpError>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use thiserror::Error;

mod codec;
mod result;
#[cfg(test)]
mod tests;

pub use result::ResultCode;

/// The UDP port a PCP (and NAT-PMP) server listens on.
pub const SERVER_PORT: u16 = 5351;
/// The PCP version this module speaks (RFC 6887).
pub const VERSION: u8 = 2;
/// The version of NAT-PMP (RFC 6886), which shares the port.
pub const NATPMP_VERSION: u8 = 0;
/// Bytes of the common request and response header.
pub const HEADER_BYTES: usize = 24;
/// Bytes of the MAP opcode data.
pub const MAP_BYTES: usize = 36;
/// Longest PCP message (RFC 6887 §7): longer datagrams are refused before anything is read.
pub const MAX_MESSAGE_BYTES: usize = 1100;
/// Most options one message may carry here (RFC 6887 sets no number; three are defined, and
/// a message of [`MAX_MESSAGE_BYTES`] could hold 260 empty ones): more is refused before any
/// is stored.
pub const MAX_OPTIONS: usize = 16;
/// Bytes of a mapping nonce.
pub const NONCE_BYTES: usize = 12;

/// Errors from parsing PCP messages or from checking an answer against its request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PcpError {
    /// Shorter than the header (or than the opcode's data).
    #[error("PCP message of {len} bytes is too short ({what} needs {min})")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// What did not fit.
        what: &'static str,
        /// Bytes it needs.
        min: usize,
    },
    /// Longer than [`MAX_MESSAGE_BYTES`].
    #[error("PCP message of {len} bytes is too long (limit {MAX_MESSAGE_BYTES})")]
    TooLong {
        /// Bytes received.
        len: usize,
    },
    /// Not a multiple of 4 bytes (RFC 6887 §7).
    #[error("PCP message of {len} bytes is not a multiple of 4 bytes")]
    Unaligned {
        /// Bytes received.
        len: usize,
    },
    /// A NAT-PMP answer (version 0): the server speaks NAT-PMP only, not PCP.
    #[error(
        "the server speaks NAT-PMP (it answered with version 0, result code {result_code}), not PCP"
    )]
    NatPmpServer {
        /// NAT-PMP's result code (1: unsupported version), 0 when the datagram was too short
        /// to hold one.
        result_code: u16,
    },
    /// A version other than 2 (or 0, above).
    #[error("PCP version {0} is not supported (only version {VERSION})")]
    Version(u8),
    /// A request where a response was expected, or the reverse.
    #[error("expected a PCP {expected}, got a {got} (R bit)")]
    Direction {
        /// What was expected: `request` or `response`.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// An opcode other than ANNOUNCE (0) and MAP (1).
    #[error("PCP opcode {0} is not supported (ANNOUNCE 0 and MAP 1 are)")]
    Opcode(u8),
    /// An option header or its data runs past the end of the message.
    #[error("PCP option {code} at byte {at} runs past the end of the {len}-byte message")]
    OptionTruncated {
        /// The option code (0 when even the header did not fit).
        code: u8,
        /// Where it starts.
        at: usize,
        /// The message length.
        len: usize,
    },
    /// A known option with the wrong data length.
    #[error("PCP option {name} ({code}) has {len} data bytes, expected {expected}")]
    OptionLength {
        /// Its name.
        name: &'static str,
        /// Its code.
        code: u8,
        /// The length it gave.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// More than [`MAX_OPTIONS`] options.
    #[error("PCP message carries more than {MAX_OPTIONS} options")]
    TooManyOptions,
    /// An answer that is not for this request (another opcode, nonce, protocol or port): RFC
    /// 6887 says to ignore it and keep waiting.
    #[error("PCP answer is not for this request: {field} is {got}, expected {expected}")]
    Mismatch {
        /// Which field: `opcode`, `nonce`, `protocol`, `internal port`.
        field: &'static str,
        /// What the request said.
        expected: String,
        /// What the answer said.
        got: String,
    },
    /// The server refused, with a result code other than SUCCESS.
    #[error("the PCP server refused: {result}; it says this stands for {lifetime_secs} s")]
    Refused {
        /// Its result code.
        result: ResultCode,
        /// How long the server says the error stands (RFC 6887 §7.2).
        lifetime_secs: u32,
    },
    /// SUCCESS without a usable mapping (a lifetime or external port of 0 for a request that
    /// asked for a mapping).
    #[error("the PCP server answered SUCCESS but granted {what}: no mapping")]
    Empty {
        /// What it granted (`0 s`, `external port 0`).
        what: String,
    },
}

impl PcpError {
    /// Whether the datagram is not an answer to the request at all (to be ignored while
    /// waiting for the real one), as opposed to an answer that says no.
    pub fn is_not_an_answer(&self) -> bool {
        matches!(
            self,
            PcpError::TooShort { .. }
                | PcpError::TooLong { .. }
                | PcpError::Unaligned { .. }
                | PcpError::Direction { .. }
                | PcpError::Mismatch { .. }
                | PcpError::OptionTruncated { .. }
                | PcpError::OptionLength { .. }
                | PcpError::TooManyOptions
                | PcpError::Opcode(_)
        )
    }
}

/// A mapping nonce: 96 random bits that name a mapping to the server; renewing or deleting it
/// takes the same nonce (RFC 6887 §11.1). Shown as 24 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Nonce(pub [u8; NONCE_BYTES]);

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({self})")
    }
}

/// An IP protocol number (IANA): what a mapping forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    /// Every protocol (only with internal port 0).
    pub const ALL: Protocol = Protocol(0);
    /// TCP.
    pub const TCP: Protocol = Protocol(6);
    /// UDP.
    pub const UDP: Protocol = Protocol(17);
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Protocol::ALL => f.write_str("all protocols"),
            Protocol::TCP => f.write_str("TCP"),
            Protocol::UDP => f.write_str("UDP"),
            Protocol(n) => write!(f, "protocol {n}"),
        }
    }
}

/// A PCP option (RFC 6887 §7.3, §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcpOption {
    /// `THIRD_PARTY` (1): the mapping is for this internal address, not the sender's.
    ThirdParty(IpAddr),
    /// `PREFER_FAILURE` (2): fail rather than give another external port or address.
    PreferFailure,
    /// `FILTER` (3): only this remote prefix and port may use the mapping (port 0: any).
    Filter {
        /// Prefix length of `remote` (in IPv6 terms: 96 + n for an IPv4 /n).
        prefix_len: u8,
        /// The remote port, 0 for any.
        remote_port: u16,
        /// The remote prefix.
        remote: IpAddr,
    },
    /// Any other option, kept as it came (codes below 128 are mandatory to understand).
    Other {
        /// Its code.
        code: u8,
        /// Its data, without padding.
        data: Vec<u8>,
    },
}

impl PcpOption {
    /// The option's code.
    pub fn code(&self) -> u8 {
        match self {
            PcpOption::ThirdParty(_) => 1,
            PcpOption::PreferFailure => 2,
            PcpOption::Filter { .. } => 3,
            PcpOption::Other { code, .. } => *code,
        }
    }
}

/// A MAP request (RFC 6887 §11.1): the header's lifetime and client address, and the MAP
/// data, whose external port and address are wishes here (0 and the unspecified address
/// leave the choice to the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRequest {
    /// Requested lifetime in seconds; 0 deletes the mapping.
    pub lifetime_secs: u32,
    /// The client's own address, as it sends the request (the server checks it against the
    /// packet's source: [`ResultCode::AddressMismatch`]).
    pub client: IpAddr,
    /// The nonce (the same for renewals and deletion), protocol, internal port, suggested
    /// external port and address (for an IPv4 mapping `0.0.0.0` is "any"), and options (at
    /// most [`MAX_OPTIONS`]).
    pub map: MapData,
}

impl MapRequest {
    /// A request to map `protocol` `internal_port` of `client` for `lifetime_secs`, the same
    /// external port suggested, any external address, no options.
    pub fn new(
        client: IpAddr,
        nonce: Nonce,
        protocol: Protocol,
        internal_port: u16,
        lifetime_secs: u32,
    ) -> MapRequest {
        let any = match client {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        MapRequest {
            lifetime_secs,
            client,
            map: MapData {
                nonce,
                protocol,
                internal_port,
                external_port: internal_port,
                external_ip: any,
                options: Vec::new(),
            },
        }
    }

    /// The MAP data of an answer to this request that assigns `external_port` on
    /// `external_ip` (for servers and tests).
    pub fn answer(&self, external_port: u16, external_ip: IpAddr) -> MapData {
        MapData {
            external_port,
            external_ip,
            options: Vec::new(),
            ..self.map.clone()
        }
    }

    /// Whether `response` answers this request (MAP, same nonce, protocol and internal port),
    /// whatever its result; `Err` says which field differs.
    pub fn check_answer(&self, response: &Response) -> Result<(), PcpError> {
        let ResponseBody::Map(m) = &response.body else {
            return Err(mismatch("opcode", "MAP", "ANNOUNCE"));
        };
        let asked = &self.map;
        if m.nonce != asked.nonce {
            return Err(mismatch("nonce", asked.nonce, m.nonce));
        }
        if m.protocol != asked.protocol {
            return Err(mismatch("protocol", asked.protocol, m.protocol));
        }
        // A server may answer an "all protocols" request without echoing a port.
        if m.internal_port != asked.internal_port && asked.protocol != Protocol::ALL {
            return Err(mismatch(
                "internal port",
                asked.internal_port,
                m.internal_port,
            ));
        }
        Ok(())
    }

    /// What `response` grants this request: the external address and port and the lifetime
    /// (0 for a deletion). Not an answer ([`PcpError::Mismatch`]), a refusal
    /// ([`PcpError::Refused`], every result code but SUCCESS) or an empty grant
    /// ([`PcpError::Empty`]) is an error.
    pub fn grant(&self, response: &Response) -> Result<Grant, PcpError> {
        self.check_answer(response)?;
        let ResponseBody::Map(m) = &response.body else {
            return Err(mismatch("opcode", "MAP", "ANNOUNCE"));
        };
        if response.result != ResultCode::Success {
            return Err(PcpError::Refused {
                result: response.result,
                lifetime_secs: response.lifetime_secs,
            });
        }
        let deleting = self.lifetime_secs == 0;
        if !deleting && response.lifetime_secs == 0 {
            return Err(PcpError::Empty {
                what: "a lifetime of 0 s".to_owned(),
            });
        }
        let ported = matches!(self.map.protocol, Protocol::TCP | Protocol::UDP);
        if !deleting && ported && m.external_port == 0 {
            return Err(PcpError::Empty {
                what: "external port 0".to_owned(),
            });
        }
        Ok(Grant {
            external: SocketAddr::new(m.external_ip, m.external_port),
            lifetime_secs: response.lifetime_secs,
            epoch_secs: response.epoch_secs,
        })
    }
}

fn mismatch(field: &'static str, expected: impl fmt::Display, got: impl fmt::Display) -> PcpError {
    PcpError::Mismatch {
        field,
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// What a server granted a [`MapRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The external address and port peers use (for an IPv6 pinhole: the internal address
    /// and port themselves, no translation).
    pub external: SocketAddr,
    /// The lifetime granted, in seconds (may differ from the one asked; 0 after a deletion).
    pub lifetime_secs: u32,
    /// The server's epoch time (see [`epoch_is_continuous`]).
    pub epoch_secs: u32,
}

/// A PCP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// ANNOUNCE (§14.1): does the server speak PCP? (lifetime 0, no data.)
    Announce {
        /// The client's own address.
        client: IpAddr,
    },
    /// MAP (§11.1).
    Map(MapRequest),
}

/// The MAP data (§11.1, §11.2), the same in a request and its answer: the answer echoes the
/// nonce, protocol and internal port and says which external port and address it assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapData {
    /// The mapping's nonce.
    pub nonce: Nonce,
    /// What to forward.
    pub protocol: Protocol,
    /// The client's port.
    pub internal_port: u16,
    /// The external port suggested (request) or assigned (response).
    pub external_port: u16,
    /// The external address suggested (request) or assigned (response).
    pub external_ip: IpAddr,
    /// The options sent (request) or acted on (response).
    pub options: Vec<PcpOption>,
}

/// What follows a response's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// An ANNOUNCE answer (nothing more).
    Announce,
    /// A MAP answer.
    Map(MapData),
}

/// A PCP response (§7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The result.
    pub result: ResultCode,
    /// On success the lifetime granted; on an error how long the error stands.
    pub lifetime_secs: u32,
    /// The server's epoch time.
    pub epoch_secs: u32,
    /// ANNOUNCE or MAP data.
    pub body: ResponseBody,
}

/// How an address travels in PCP: IPv6 as is, IPv4 as the IPv4-mapped IPv6 address
/// `::ffff:a.b.c.d` (RFC 6887 §5; `0.0.0.0` becomes `::ffff:0.0.0.0`, "any IPv4 address").
///
/// ```
/// use std::net::IpAddr;
/// use wire::pcp::{decode_address, encode_address};
/// let v4: IpAddr = "192.0.2.1".parse().unwrap();
/// let bytes = encode_address(v4);
/// assert_eq!(bytes[10..], [0xff, 0xff, 192, 0, 2, 1]);
/// assert_eq!(decode_address(bytes), v4);
/// let v6: IpAddr = "2001:db8::1".parse().unwrap();
/// assert_eq!(decode_address(encode_address(v6)), v6);
/// ```
pub fn encode_address(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address in 16 PCP bytes: an IPv4-mapped address is the IPv4 address, anything else
/// IPv6 (see [`encode_address`]).
pub fn decode_address(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Whether a server kept its state between two answers (RFC 6887 §8.5): `earlier` and `later`
/// are (the client's clock when the answer came, the epoch time in it). A server that
/// restarted or lost its mappings has an epoch that went back (by more than 1 s), or advanced
/// much more or less than the client's clock (by more than 2 s plus a sixteenth); then every
/// mapping must be made again.
///
/// ```
/// use std::time::Duration;
/// use wire::pcp::epoch_is_continuous;
/// let s = Duration::from_secs;
/// assert!(epoch_is_continuous((s(100), 5000), (s(160), 5060)));
/// assert!(epoch_is_continuous((s(100), 5000), (s(100), 4999)), "1 s back is tolerated");
/// assert!(!epoch_is_continuous((s(100), 5000), (s(160), 12)), "the server restarted");
/// assert!(!epoch_is_continuous((s(100), 5000), (s(160), 5010)), "it lost 50 s");
/// ```
pub fn epoch_is_continuous(earlier: (Duration, u32), later: (Duration, u32)) -> bool {
    let (client_then, server_then) = earlier;
    let (client_now, server_now) = later;
    if u64::from(server_now) + 1 < u64::from(server_then) {
        return false;
    }
    let client_delta = client_now.saturating_sub(client_then).as_secs();
    let server_delta = u64::from(server_now.saturating_sub(server_then));
    !(client_delta + 2 < server_delta - server_delta / 16
        || server_delta + 2 < client_delta - client_delta / 16)
}
