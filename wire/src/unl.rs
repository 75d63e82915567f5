//! Universal Node Locators (UNLs): PyP2P's version-2 format, encoded and decoded exactly.
//!
//! A UNL is the string one user hands another so that the second can open a direct connection to
//! the first: it says where the node listens, how it is reachable and which mailbox (node id) to
//! ask for a reverse connection.
//!
//! This module is PyP2P's version 2; [`v3`] is ours (signed by the node's key, several
//! addresses, IPv6, servers), and [`v3::AnyUnl`] reads either.
//!
//! # Format
//!
//! 34 payload bytes, then a 4-byte checksum, all in standard base64 with padding (52 characters):
//!
//! | offset | size | field | encoding |
//! |---|---|---|---|
//! | 0 | 1 | version | always `2` |
//! | 1 | 20 | node id | raw bytes, NUL-padded; all NULs = no node id |
//! | 21 | 1 | node type | ASCII `p` passive, `a` active, `s` simultaneous |
//! | 22 | 1 | NAT type | ASCII `m` random, `g` preserving, `e` reuse, `a` delta, `n` unknown |
//! | 23 | 1 | forwarding type | ASCII `f` forwarded, `m` manual, `U` UPnP, `N` NAT-PMP |
//! | 24 | 2 | listen port | u16 little-endian |
//! | 26 | 4 | WAN IPv4 | the address as a u32, little-endian (octets reversed) |
//! | 30 | 4 | LAN IPv4 | the address as a u32, little-endian (octets reversed) |
//! | 34 | 4 | checksum | first 4 bytes of `sha256(sha256(payload))` |
//!
//! This is Python's `struct.pack("<B20sBBBHII", ...)`. PyP2P writes the NAT types *delta* and
//! *unknown* as `a` and `n` but its own decoder rejects them (its lookup table only has `m`, `g`,
//! `e`); this decoder accepts all five, so every UNL PyP2P can produce is readable here.
//!
//! Decoding is strict so that [`Display`](std::fmt::Display) gives back exactly the string that
//! was parsed: the text must be canonical padded base64 (surrounding whitespace is ignored), and
//! every field must hold a known value. Lengths are checked before anything is decoded.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use wire::unl::{Forwarding, NatType, Unl};
//! use wire::rendezvous::NodeType;
//!
//! let text = "AnRBam11OG1IUEhGVkRKOHQ3cEs4c2dtRMWDYbvALwOowOEG0lc=";
//! let unl: Unl = text.parse()?;
//! assert_eq!(unl.node_id.unwrap().to_string(), "tAjmu8mHPHFVDJ8t7pK8");
//! assert_eq!(unl.node_type, NodeType::Simultaneous);
//! assert_eq!(unl.nat_type, NatType::Preserving);
//! assert_eq!(unl.forwarding, Forwarding::Manual);
//! assert_eq!(unl.port, 50500);
//! assert_eq!(unl.wan_ip, Ipv4Addr::new(192, 187, 97, 131));
//! assert_eq!(unl.lan_ip, Ipv4Addr::new(192, 168, 3, 47));
//! assert_eq!(unl.to_string(), text);
//! # Ok::<(), wire::unl::UnlError>(())
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

pub use crate::rendezvous::NodeType;

/// The only UNL version there is (PyP2P's `UNL.version`).
pub const UNL_VERSION: u8 = 2;
/// Bytes of the payload before the checksum.
pub const UNL_PAYLOAD_BYTES: usize = 34;
/// Bytes of the checksum (a truncated double SHA-256 of the payload).
pub const UNL_CHECKSUM_BYTES: usize = 4;
/// Bytes of a whole decoded UNL.
pub const UNL_BYTES: usize = UNL_PAYLOAD_BYTES + UNL_CHECKSUM_BYTES;
/// Characters of a UNL in base64 (with one `=` of padding).
pub const UNL_TEXT_CHARS: usize = UNL_BYTES.div_ceil(3) * 4;
/// Bytes of a node id inside a UNL.
pub const NODE_ID_BYTES: usize = 20;

/// A UNL field whose byte can hold an unknown value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnlField {
    /// The format version (byte 0).
    Version,
    /// The node type (byte 21).
    NodeType,
    /// The NAT type (byte 22).
    NatType,
    /// The forwarding type (byte 23).
    Forwarding,
}

impl fmt::Display for UnlField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnlField::Version => "version",
            UnlField::NodeType => "node type",
            UnlField::NatType => "NAT type",
            UnlField::Forwarding => "forwarding type",
        })
    }
}

/// Why a string is not a valid UNL (or a node id).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnlError {
    /// The text is not 52 characters long (checked before decoding anything).
    #[error("UNL has {chars} characters, expected {UNL_TEXT_CHARS} (base64 of {UNL_BYTES} bytes)")]
    BadTextLength {
        /// Characters (bytes) of the trimmed text.
        chars: usize,
    },
    /// The text is not canonical padded standard base64.
    #[error("UNL is not valid base64: {detail}")]
    BadBase64 {
        /// What the base64 decoder objected to.
        detail: String,
    },
    /// The base64 decodes to the wrong number of bytes.
    #[error("UNL decodes to {bytes} bytes, expected {UNL_BYTES}")]
    BadLength {
        /// Decoded bytes.
        bytes: usize,
    },
    /// The checksum does not match the payload: the UNL was mistyped or cut.
    #[error(
        "UNL checksum mismatch: it carries {}, its payload hashes to {} (mistyped or truncated?)",
        hex(found),
        hex(expected)
    )]
    BadChecksum {
        /// The checksum in the UNL.
        found: [u8; UNL_CHECKSUM_BYTES],
        /// The checksum of its payload.
        expected: [u8; UNL_CHECKSUM_BYTES],
    },
    /// A field holds a value this format does not define.
    #[error("UNL {field} has unknown value {value} ({:?})", char::from(*value))]
    UnknownValue {
        /// Which field.
        field: UnlField,
        /// The byte found.
        value: u8,
    },
    /// A node id given as text is empty, too long or contains a NUL.
    #[error("bad node id: {detail}")]
    BadNodeId {
        /// What is wrong with it.
        detail: String,
    },
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A node id as carried in a UNL: 20 raw bytes, NUL-padded, never all NULs.
///
/// PyP2P's ids are 20 random letters and digits. Its mailbox (`dht_msg`) calls a node by the
/// lowercase hex of these 20 bytes: see [`NodeId::mailbox_id`].
///
/// ```
/// use wire::unl::NodeId;
///
/// let id: NodeId = "tAjmu8mHPHFVDJ8t7pK8".parse()?;
/// assert_eq!(id.to_string(), "tAjmu8mHPHFVDJ8t7pK8");
/// assert_eq!(id.mailbox_id(), "74416a6d75386d4850484656444a387437704b38");
/// let short: NodeId = "bob".parse()?;
/// assert_eq!(short.as_bytes(), b"bob"); // the NUL padding is not part of the id
/// # Ok::<(), wire::unl::UnlError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; NODE_ID_BYTES]);

impl NodeId {
    /// The id with these raw bytes, or `None` when they are all NUL (which means "no id").
    pub fn from_bytes(bytes: [u8; NODE_ID_BYTES]) -> Option<NodeId> {
        bytes.iter().any(|&b| b != 0).then_some(NodeId(bytes))
    }

    /// The 20 bytes as they appear in a UNL, padding included.
    pub fn raw(&self) -> &[u8; NODE_ID_BYTES] {
        &self.0
    }

    /// The id without its trailing NUL padding.
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        &self.0[..end]
    }

    /// The name of this node's mailbox on a `dht-msg` server: the lowercase hex of all 20 raw
    /// bytes, as PyP2P's client computes it (`binascii.hexlify(node_id)`).
    pub fn mailbox_id(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId(\"{self}\")")
    }
}

impl fmt::Display for NodeId {
    /// The id without padding; bytes that are not printable ASCII are shown escaped (`\xNN`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_bytes().escape_ascii())
    }
}

impl FromStr for NodeId {
    type Err = UnlError;

    /// 1 to 20 bytes of text without NUL; shorter ids are NUL-padded.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text.as_bytes();
        if bytes.is_empty() || bytes.len() > NODE_ID_BYTES {
            return Err(UnlError::BadNodeId {
                detail: format!(
                    "{} bytes, expected 1..={NODE_ID_BYTES}: {text:?}",
                    bytes.len()
                ),
            });
        }
        if bytes.contains(&0) {
            return Err(UnlError::BadNodeId {
                detail: format!("contains a NUL byte: {text:?}"),
            });
        }
        let mut raw = [0u8; NODE_ID_BYTES];
        raw[..bytes.len()].copy_from_slice(bytes);
        Ok(NodeId(raw))
    }
}

/// How a node's NAT maps ports, as PyP2P detects it (see PROTOCOL.md, "NAT type detection").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatType {
    /// `m`: mapped ports are unpredictable.
    Random,
    /// `g`: the mapped port equals the local port.
    Preserving,
    /// `e`: a mapping is reused for every destination.
    Reuse,
    /// `a`: successive mappings differ by a constant (PyP2P writes it but cannot read it back).
    Delta,
    /// `n`: not determined (PyP2P writes it but cannot read it back).
    Unknown,
}

impl NatType {
    /// Every NAT type, for tests and pickers.
    pub const ALL: [NatType; 5] = [
        NatType::Random,
        NatType::Preserving,
        NatType::Reuse,
        NatType::Delta,
        NatType::Unknown,
    ];

    /// The wire byte (the last letter of PyP2P's name for it).
    pub fn byte(self) -> u8 {
        match self {
            NatType::Random => b'm',
            NatType::Preserving => b'g',
            NatType::Reuse => b'e',
            NatType::Delta => b'a',
            NatType::Unknown => b'n',
        }
    }

    /// The type for a wire byte.
    pub fn from_byte(byte: u8) -> Option<NatType> {
        NatType::ALL.into_iter().find(|t| t.byte() == byte)
    }
}

/// How a node's listening port was made reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forwarding {
    /// `f`: reachable (a forwarding check succeeded, or no NAT).
    Forwarded,
    /// `m`: nothing was mapped automatically (the user may have forwarded the port by hand).
    Manual,
    /// `U`: mapped with UPnP.
    Upnp,
    /// `N`: mapped with NAT-PMP.
    NatPmp,
}

impl Forwarding {
    /// Every forwarding type.
    pub const ALL: [Forwarding; 4] = [
        Forwarding::Forwarded,
        Forwarding::Manual,
        Forwarding::Upnp,
        Forwarding::NatPmp,
    ];

    /// The wire byte.
    pub fn byte(self) -> u8 {
        match self {
            Forwarding::Forwarded => b'f',
            Forwarding::Manual => b'm',
            Forwarding::Upnp => b'U',
            Forwarding::NatPmp => b'N',
        }
    }

    /// The type for a wire byte.
    pub fn from_byte(byte: u8) -> Option<Forwarding> {
        Forwarding::ALL.into_iter().find(|t| t.byte() == byte)
    }
}

fn node_type_byte(node_type: NodeType) -> u8 {
    match node_type {
        NodeType::Passive => b'p',
        NodeType::Active => b'a',
        NodeType::Simultaneous => b's',
    }
}

fn node_type_from_byte(byte: u8) -> Option<NodeType> {
    match byte {
        b'p' => Some(NodeType::Passive),
        b'a' => Some(NodeType::Active),
        b's' => Some(NodeType::Simultaneous),
        _ => None,
    }
}

/// A decoded UNL (version 2). [`FromStr`] and [`Display`](fmt::Display) round-trip exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Unl {
    /// The node's mailbox id, if it has one.
    pub node_id: Option<NodeId>,
    /// Whether it accepts connections (passive), only dials (active) or can be punched to
    /// (simultaneous).
    pub node_type: NodeType,
    /// How its NAT maps ports.
    pub nat_type: NatType,
    /// How its listening port was made reachable.
    pub forwarding: Forwarding,
    /// The port it listens on (0: none).
    pub port: u16,
    /// Its public address.
    pub wan_ip: Ipv4Addr,
    /// Its address on its own LAN (used when both ends share a WAN address).
    pub lan_ip: Ipv4Addr,
}

impl Unl {
    /// The 38 bytes behind the base64: payload, then checksum.
    pub fn to_bytes(&self) -> [u8; UNL_BYTES] {
        let mut out = [0u8; UNL_BYTES];
        out[0] = UNL_VERSION;
        out[1..21].copy_from_slice(&self.node_id.map_or([0; NODE_ID_BYTES], |id| id.0));
        out[21] = node_type_byte(self.node_type);
        out[22] = self.nat_type.byte();
        out[23] = self.forwarding.byte();
        out[24..26].copy_from_slice(&self.port.to_le_bytes());
        out[26..30].copy_from_slice(&u32::from(self.wan_ip).to_le_bytes());
        out[30..34].copy_from_slice(&u32::from(self.lan_ip).to_le_bytes());
        let sum = checksum(&out[..UNL_PAYLOAD_BYTES]);
        out[UNL_PAYLOAD_BYTES..].copy_from_slice(&sum);
        out
    }

    /// Decodes the 38 bytes behind the base64, checking length, checksum and every field.
    pub fn from_bytes(bytes: &[u8]) -> Result<Unl, UnlError> {
        if bytes.len() != UNL_BYTES {
            return Err(UnlError::BadLength { bytes: bytes.len() });
        }
        let (payload, found) = bytes.split_at(UNL_PAYLOAD_BYTES);
        let expected = checksum(payload);
        if found != expected {
            let mut found_arr = [0u8; UNL_CHECKSUM_BYTES];
            found_arr.copy_from_slice(found);
            return Err(UnlError::BadChecksum {
                found: found_arr,
                expected,
            });
        }
        let unknown = |field, value| UnlError::UnknownValue { field, value };
        if payload[0] != UNL_VERSION {
            return Err(unknown(UnlField::Version, payload[0]));
        }
        let mut id = [0u8; NODE_ID_BYTES];
        id.copy_from_slice(&payload[1..21]);
        let node_type =
            node_type_from_byte(payload[21]).ok_or(unknown(UnlField::NodeType, payload[21]))?;
        let nat_type =
            NatType::from_byte(payload[22]).ok_or(unknown(UnlField::NatType, payload[22]))?;
        let forwarding =
            Forwarding::from_byte(payload[23]).ok_or(unknown(UnlField::Forwarding, payload[23]))?;
        let u32_at = |at: usize| {
            u32::from_le_bytes([
                payload[at],
                payload[at + 1],
                payload[at + 2],
                payload[at + 3],
            ])
        };
        Ok(Unl {
            node_id: NodeId::from_bytes(id),
            node_type,
            nat_type,
            forwarding,
            port: u16::from_le_bytes([payload[24], payload[25]]),
            wan_ip: Ipv4Addr::from(u32_at(26)),
            lan_ip: Ipv4Addr::from(u32_at(30)),
        })
    }

    /// PyP2P's "master" order: it reads both base64 strings as big-endian integers and the
    /// larger one dials when either side could. Equal-length strings make that a byte-wise
    /// comparison. `Ordering::Greater` means `self` is the master.
    pub fn master_cmp(&self, other: &Unl) -> Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

fn checksum(payload: &[u8]) -> [u8; UNL_CHECKSUM_BYTES] {
    let digest = Sha256::digest(Sha256::digest(payload));
    let mut out = [0u8; UNL_CHECKSUM_BYTES];
    out.copy_from_slice(&digest[..UNL_CHECKSUM_BYTES]);
    out
}

impl fmt::Display for Unl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; UNL_TEXT_CHARS];
        match BASE64.encode_slice(self.to_bytes(), &mut text) {
            // Base64 output is ASCII.
            Ok(n) => f.write_str(std::str::from_utf8(&text[..n]).map_err(|_| fmt::Error)?),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl FromStr for Unl {
    type Err = UnlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim_ascii();
        if text.len() != UNL_TEXT_CHARS {
            return Err(UnlError::BadTextLength { chars: text.len() });
        }
        // One spare byte, so that an unpadded 52-character string (39 bytes) is reported as a
        // bad length rather than as a decoder buffer error.
        let mut bytes = [0u8; UNL_BYTES + 1];
        let n = BASE64
            .decode_slice(text, &mut bytes)
            .map_err(|e| UnlError::BadBase64 {
                detail: base64_detail(&e),
            })?;
        Unl::from_bytes(&bytes[..n])
    }
}

fn base64_detail(error: &base64::DecodeSliceError) -> String {
    use base64::{DecodeError, DecodeSliceError};
    match error {
        DecodeSliceError::DecodeError(DecodeError::InvalidByte(offset, byte)) => format!(
            "invalid character {:?} at offset {offset}",
            char::from(*byte)
        ),
        DecodeSliceError::DecodeError(DecodeError::InvalidLastSymbol {
            offset, symbol, ..
        }) => {
            format!(
                "non-canonical last symbol {:?} at offset {offset}",
                char::from(*symbol)
            )
        }
        DecodeSliceError::DecodeError(DecodeError::InvalidLength(len)) => {
            format!("invalid length {len} (in base64 symbols)")
        }
        DecodeSliceError::DecodeError(DecodeError::InvalidPadding) => "invalid padding".into(),
        DecodeSliceError::OutputSliceTooSmall => {
            format!("decodes to more than {} bytes", UNL_BYTES + 1)
        }
    }
}

pub mod v3;

#[cfg(test)]
mod tests;
