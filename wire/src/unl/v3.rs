//! UNL version 3: a self-certifying locator, signed by the node's Ed25519 key.
//!
//! A v3 UNL carries the node's public key (its node id is derived from it, see
//! [`crate::key`]), the addresses it can be reached at (several, IPv4 and IPv6, each with its
//! port, each marked WAN or LAN), its role, NAT and forwarding kinds, the rendezvous/relay and
//! mailbox servers it uses, a sequence number, and a signature over all of it. Whoever reads
//! it can check that the key's owner wrote it, and then check in the handshake that the node
//! at the other end of a connection holds that key.
//!
//! # Text
//!
//! `unl3.` then the bytes below in unpadded base64url: one line, no `/`, `+`, `=` or `:`, so it
//! survives shells, URLs and the `:`-separated mailbox requests. A v2 UNL is 52 characters of
//! standard base64 ending in `=` and never starts with `unl3.`: [`AnyUnl`] reads either.
//!
//! # Bytes (integers big-endian)
//!
//! | size | field | encoding |
//! |---|---|---|
//! | 1 | version | `3` |
//! | 32 | public key | Ed25519 |
//! | 8 | sequence | u64; by convention Unix milliseconds when signed: a newer UNL has a larger one |
//! | 1 | node type | ASCII `p` passive, `a` active, `s` simultaneous (as v2) |
//! | 1 | NAT type | ASCII `m` random, `g` preserving, `e` reuse, `a` delta, `n` unknown (as v2) |
//! | 1 | forwarding | ASCII `f` forwarded, `m` manual, `U` UPnP, `N` NAT-PMP (as v2) |
//! | 1 | address count | 0..=[`MAX_ADDRS`] |
//! | 8 or 20 each | address | scope (`w` WAN, `l` LAN), family (`4` or `6`), 4 or 16 address bytes, port u16 |
//! | 1 | rendezvous count | 0..=[`MAX_SERVERS`] |
//! | each | endpoint | `4` + 4 bytes + port, `6` + 16 bytes + port, or `d` + name length (1..=[`MAX_HOST_BYTES`]) + name + port |
//! | 1 | mailbox count | 0..=[`MAX_SERVERS`] |
//! | each | endpoint | as above |
//! | 64 | signature | Ed25519 by the key above, context [`crate::key::Context::Unl`], over every byte before it |
//!
//! There is no checksum: the signature covers every byte before it and a changed signature
//! does not verify, so any mistyped character is caught. The decoder caps the text length
//! before decoding and every count before allocating, refuses trailing bytes, and refuses a
//! bad signature with the key it names.
//!
//! ```
//! use std::net::SocketAddr;
//! use wire::key::SigningKey;
//! use wire::unl::v3::{AnyUnl, Scope, UnlAddr, UnlBody, UnlV3};
//!
//! let secret = SigningKey::from_bytes(&[1; 32]);
//! let mut body = UnlBody::new(1_700_000_000_000);
//! body.addrs.push(UnlAddr { scope: Scope::Wan, addr: "203.0.113.5:50500".parse()? });
//! let unl = UnlV3::sign(body, &secret)?;
//! let text = unl.to_string();
//! assert!(text.starts_with("unl3.") && !text.contains(['/', '+', '=', ':']));
//! let back: UnlV3 = text.parse()?;
//! assert_eq!(back, unl);
//! assert_eq!(back.node_id(), back.key().node_id());
//! assert!(matches!(text.parse::<AnyUnl>()?, AnyUnl::V3(_)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use thiserror::Error;

use super::{Forwarding, NatType, NodeId, NodeType, Unl, node_type_byte, node_type_from_byte};
use crate::key::{
    self, Context, KeyError, PUBLIC_KEY_BYTES, PublicKey, SIGNATURE_BYTES, SigningKey,
};

/// The version byte.
pub const UNL_V3_VERSION: u8 = 3;
/// What the text form starts with.
pub const UNL_V3_PREFIX: &str = "unl3.";
/// Most addresses in one UNL.
pub const MAX_ADDRS: usize = 8;
/// Most servers in each server list.
pub const MAX_SERVERS: usize = 4;
/// Longest server host name, in bytes (a DNS name).
pub const MAX_HOST_BYTES: usize = 253;
/// Bytes before the first address.
const FIXED_BYTES: usize = 1 + PUBLIC_KEY_BYTES + 8 + 3 + 1;
/// Largest endpoint encoding (a name of the longest length).
const MAX_ENDPOINT_BYTES: usize = 1 + 1 + MAX_HOST_BYTES + 2;
/// Largest encoded UNL.
pub const MAX_UNL_V3_BYTES: usize =
    FIXED_BYTES + MAX_ADDRS * 20 + 2 + 2 * MAX_SERVERS * MAX_ENDPOINT_BYTES + SIGNATURE_BYTES;
/// Longest text form (prefix plus unpadded base64url of the largest encoding).
pub const MAX_UNL_V3_TEXT_CHARS: usize = UNL_V3_PREFIX.len() + (MAX_UNL_V3_BYTES * 4).div_ceil(3);

/// Why a v3 UNL is refused. Each names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnlV3Error {
    /// The text does not start with `unl3.`.
    #[error("not a v3 UNL: it does not start with {UNL_V3_PREFIX:?}")]
    NoPrefix,
    /// The text is longer than any valid UNL (checked before decoding).
    #[error("UNL v3 text has {chars} characters (limit {MAX_UNL_V3_TEXT_CHARS})")]
    TooLong {
        /// Characters of the trimmed text.
        chars: usize,
    },
    /// The text after the prefix is not canonical unpadded base64url.
    #[error("UNL v3 is not valid base64url: {detail}")]
    BadBase64 {
        /// What the decoder objected to.
        detail: String,
    },
    /// The bytes end inside a field.
    #[error("UNL v3 is truncated: {field} needs {need} bytes at offset {at}, {have} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Its offset.
        at: usize,
        /// Bytes it needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// More bytes than the largest valid UNL (checked before decoding them).
    #[error("UNL v3 has {bytes} bytes (limit {MAX_UNL_V3_BYTES})")]
    TooManyBytes {
        /// How many.
        bytes: usize,
    },
    /// Bytes follow the signature.
    #[error("UNL v3 has {extra} bytes after its signature")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// A byte holds a value the format does not define.
    #[error("UNL v3 {field} has unknown value {value} ({:?})", char::from(*value))]
    UnknownValue {
        /// Which field.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// A list is longer than its cap.
    #[error("UNL v3 has {count} {field} (limit {limit})")]
    TooMany {
        /// Which list.
        field: &'static str,
        /// Its count.
        count: usize,
        /// The cap.
        limit: usize,
    },
    /// A server host name is empty, too long or has a character outside `[A-Za-z0-9.-]`.
    #[error(
        "UNL v3 server name {name:?} is not a host name (1..={MAX_HOST_BYTES} of [A-Za-z0-9.-])"
    )]
    BadHost {
        /// The name (lossy UTF-8, cut to 64 characters).
        name: String,
    },
    /// The public key is no usable Ed25519 key, or the signature does not verify with it.
    #[error("UNL v3: {0}")]
    Key(#[from] KeyError),
}

/// Whether an address is public (WAN) or on the node's own network (LAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `w`: reachable from the internet (observed, mapped or configured).
    Wan,
    /// `l`: the node's address on its own network (for peers behind the same NAT).
    Lan,
}

impl Scope {
    fn byte(self) -> u8 {
        match self {
            Scope::Wan => b'w',
            Scope::Lan => b'l',
        }
    }
}

/// One address a node can be reached at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnlAddr {
    /// WAN or LAN.
    pub scope: Scope,
    /// IP and port (IPv6 flow info and scope id are not carried).
    pub addr: SocketAddr,
}

/// A server a node uses: an address, or a host name with a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A host name (1..=253 bytes of `[A-Za-z0-9.-]`) and port.
    Host {
        /// The name.
        name: String,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(addr) => write!(f, "{addr}"),
            Endpoint::Host { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

/// Everything a v3 UNL says besides its key and signature. Build one, then sign it with
/// [`UnlV3::sign`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnlBody {
    /// Larger is newer (by convention Unix milliseconds when signed).
    pub seq: u64,
    /// Passive, active or simultaneous.
    pub node_type: NodeType,
    /// How its NAT maps ports.
    pub nat_type: NatType,
    /// How its listening port was made reachable.
    pub forwarding: Forwarding,
    /// Where it can be reached, best first (at most [`MAX_ADDRS`]).
    pub addrs: Vec<UnlAddr>,
    /// The rendezvous (and relay) servers it uses (at most [`MAX_SERVERS`]).
    pub rendezvous: Vec<Endpoint>,
    /// The mailbox (dht-msg) servers it reads (at most [`MAX_SERVERS`]).
    pub mailboxes: Vec<Endpoint>,
}

impl UnlBody {
    /// An active node with unknown NAT, nothing forwarded, no addresses and no servers.
    pub fn new(seq: u64) -> UnlBody {
        UnlBody {
            seq,
            node_type: NodeType::Active,
            nat_type: NatType::Unknown,
            forwarding: Forwarding::Manual,
            addrs: Vec::new(),
            rendezvous: Vec::new(),
            mailboxes: Vec::new(),
        }
    }

    fn check(&self) -> Result<(), UnlV3Error> {
        let too_many = |field, count, limit| UnlV3Error::TooMany {
            field,
            count,
            limit,
        };
        if self.addrs.len() > MAX_ADDRS {
            return Err(too_many("addresses", self.addrs.len(), MAX_ADDRS));
        }
        for (field, list) in [
            ("rendezvous servers", &self.rendezvous),
            ("mailbox servers", &self.mailboxes),
        ] {
            if list.len() > MAX_SERVERS {
                return Err(too_many(field, list.len(), MAX_SERVERS));
            }
            for endpoint in list {
                if let Endpoint::Host { name, .. } = endpoint {
                    check_host(name.as_bytes())?;
                }
            }
        }
        Ok(())
    }
}

/// A signed v3 UNL. Immutable: it is made by [`UnlV3::sign`] or decoded (which checks the
/// signature), so a value of this type always carries a valid signature by its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnlV3 {
    key: PublicKey,
    body: UnlBody,
    signature: [u8; SIGNATURE_BYTES],
}

impl UnlV3 {
    /// Signs `body` with `secret`; the UNL's key is `secret`'s public key. Refuses a body
    /// with too many addresses or servers or a bad host name.
    pub fn sign(body: UnlBody, secret: &SigningKey) -> Result<UnlV3, UnlV3Error> {
        body.check()?;
        let key = PublicKey::of(secret);
        let signed = signed_bytes(&key, &body);
        let signature = key::sign(secret, Context::Unl, &signed);
        Ok(UnlV3 {
            key,
            body,
            signature,
        })
    }

    /// The node's public key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The node id (derived from the key).
    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    /// Everything else it says.
    pub fn body(&self) -> &UnlBody {
        &self.body
    }

    /// The signature.
    pub fn signature(&self) -> &[u8; SIGNATURE_BYTES] {
        &self.signature
    }

    /// The encoded bytes (what the text form carries in base64url).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = signed_bytes(&self.key, &self.body);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and checks the bytes: lengths, counts, every field, then the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<UnlV3, UnlV3Error> {
        if bytes.len() > MAX_UNL_V3_BYTES {
            return Err(UnlV3Error::TooManyBytes { bytes: bytes.len() });
        }
        let mut r = Reader { bytes, at: 0 };
        let version = r.byte("version")?;
        if version != UNL_V3_VERSION {
            return Err(UnlV3Error::UnknownValue {
                field: "version",
                value: version,
            });
        }
        let key = PublicKey::from_bytes(&r.array::<PUBLIC_KEY_BYTES>("public key")?)?;
        let seq = u64::from_be_bytes(r.array::<8>("sequence")?);
        let node_type = r.known("node type", node_type_from_byte)?;
        let nat_type = r.known("NAT type", NatType::from_byte)?;
        let forwarding = r.known("forwarding type", Forwarding::from_byte)?;
        let count = r.count("addresses", MAX_ADDRS)?;
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let scope = r.known("address scope", |b| match b {
                b'w' => Some(Scope::Wan),
                b'l' => Some(Scope::Lan),
                _ => None,
            })?;
            let family = r.byte("address family")?;
            let addr = r.addr_after(family)?.ok_or(UnlV3Error::UnknownValue {
                field: "address family",
                value: family,
            })?;
            addrs.push(UnlAddr { scope, addr });
        }
        let rendezvous = r.endpoints("rendezvous servers")?;
        let mailboxes = r.endpoints("mailbox servers")?;
        let signed_len = r.at;
        let signature = r.array::<SIGNATURE_BYTES>("signature")?;
        if r.at != bytes.len() {
            return Err(UnlV3Error::TrailingBytes {
                extra: bytes.len() - r.at,
            });
        }
        key.verify(Context::Unl, &bytes[..signed_len], &signature)?;
        Ok(UnlV3 {
            key,
            body: UnlBody {
                seq,
                node_type,
                nat_type,
                forwarding,
                addrs,
                rendezvous,
                mailboxes,
            },
            signature,
        })
    }

    /// The v2 UNL for a PyP2P peer: the derived node id, role, NAT and forwarding, the first
    /// WAN IPv4 address and its port, and the first LAN IPv4 address (the WAN one when there
    /// is none; a LAN address stands in for a missing WAN one). A v2 UNL has one port: the
    /// first WAN IPv4 address's, else the first LAN one's, else 0.
    pub fn to_v2(&self) -> Unl {
        let v4 = |scope: Scope| {
            self.body.addrs.iter().find_map(|a| match a.addr {
                SocketAddr::V4(v4) if a.scope == scope => Some(v4),
                _ => None,
            })
        };
        let (wan, lan) = (v4(Scope::Wan), v4(Scope::Lan));
        let public = wan.or(lan);
        Unl {
            node_id: Some(self.node_id()),
            node_type: self.body.node_type,
            nat_type: self.body.nat_type,
            forwarding: self.body.forwarding,
            port: public.map_or(0, |a| a.port()),
            wan_ip: public.map_or(Ipv4Addr::UNSPECIFIED, |a| *a.ip()),
            lan_ip: lan.or(wan).map_or(Ipv4Addr::UNSPECIFIED, |a| *a.ip()),
        }
    }
}

/// The bytes the signature covers: everything but the signature.
fn signed_bytes(key: &PublicKey, body: &UnlBody) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(UNL_V3_VERSION);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&body.seq.to_be_bytes());
    out.push(node_type_byte(body.node_type));
    out.push(body.nat_type.byte());
    out.push(body.forwarding.byte());
    out.push(u8::try_from(body.addrs.len()).unwrap_or(u8::MAX));
    for a in &body.addrs {
        out.push(a.scope.byte());
        put_endpoint(&mut out, &Endpoint::Addr(a.addr));
    }
    for list in [&body.rendezvous, &body.mailboxes] {
        out.push(u8::try_from(list.len()).unwrap_or(u8::MAX));
        for endpoint in list {
            put_endpoint(&mut out, endpoint);
        }
    }
    out
}

fn put_endpoint(out: &mut Vec<u8>, endpoint: &Endpoint) {
    let port = match endpoint {
        Endpoint::Addr(SocketAddr::V4(a)) => {
            out.push(b'4');
            out.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Endpoint::Addr(SocketAddr::V6(a)) => {
            out.push(b'6');
            out.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Endpoint::Host { name, port } => {
            out.push(b'd');
            out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(name.as_bytes());
            *port
        }
    };
    out.extend_from_slice(&port.to_be_bytes());
}

fn check_host(name: &[u8]) -> Result<(), UnlV3Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_HOST_BYTES
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(UnlV3Error::BadHost {
            name: String::from_utf8_lossy(name).chars().take(64).collect(),
        })
    }
}

/// A cursor over the bytes that reports where a field was cut.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, need: usize) -> Result<&'a [u8], UnlV3Error> {
        let have = self.bytes.len() - self.at;
        if have < need {
            return Err(UnlV3Error::Truncated {
                field,
                at: self.at,
                need,
                have,
            });
        }
        let out = &self.bytes[self.at..self.at + need];
        self.at += need;
        Ok(out)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, UnlV3Error> {
        Ok(self.take(field, 1)?[0])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], UnlV3Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    fn known<T>(
        &mut self,
        field: &'static str,
        decode: impl Fn(u8) -> Option<T>,
    ) -> Result<T, UnlV3Error> {
        let value = self.byte(field)?;
        decode(value).ok_or(UnlV3Error::UnknownValue { field, value })
    }

    fn count(&mut self, field: &'static str, limit: usize) -> Result<usize, UnlV3Error> {
        let count = usize::from(self.byte(field)?);
        if count > limit {
            return Err(UnlV3Error::TooMany {
                field,
                count,
                limit,
            });
        }
        Ok(count)
    }

    fn port(&mut self) -> Result<u16, UnlV3Error> {
        Ok(u16::from_be_bytes(self.array::<2>("port")?))
    }

    /// An IP address and port after its family byte (`4` or `6`; `None` for another byte).
    fn addr_after(&mut self, family: u8) -> Result<Option<SocketAddr>, UnlV3Error> {
        let ip = match family {
            b'4' => IpAddr::V4(Ipv4Addr::from(self.array::<4>("IPv4 address")?)),
            b'6' => IpAddr::V6(Ipv6Addr::from(self.array::<16>("IPv6 address")?)),
            _ => return Ok(None),
        };
        Ok(Some(SocketAddr::new(ip, self.port()?)))
    }

    /// A server endpoint after its kind byte: an address, or `d` and a host name.
    fn endpoint_after(&mut self, kind: u8) -> Result<Endpoint, UnlV3Error> {
        if kind == b'd' {
            let len = usize::from(self.byte("host name length")?);
            let name = self.take("host name", len)?;
            check_host(name)?;
            let name = String::from_utf8_lossy(name).into_owned();
            return Ok(Endpoint::Host {
                name,
                port: self.port()?,
            });
        }
        match self.addr_after(kind)? {
            Some(addr) => Ok(Endpoint::Addr(addr)),
            None => Err(UnlV3Error::UnknownValue {
                field: "endpoint kind",
                value: kind,
            }),
        }
    }

    fn endpoints(&mut self, field: &'static str) -> Result<Vec<Endpoint>, UnlV3Error> {
        let count = self.count(field, MAX_SERVERS)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = self.byte("endpoint kind")?;
            out.push(self.endpoint_after(kind)?);
        }
        Ok(out)
    }
}

impl fmt::Display for UnlV3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(UNL_V3_PREFIX)?;
        f.write_str(&BASE64URL.encode(self.to_bytes()))
    }
}

impl FromStr for UnlV3 {
    type Err = UnlV3Error;

    /// `unl3.` and canonical unpadded base64url; surrounding whitespace is ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim_ascii();
        if text.len() > MAX_UNL_V3_TEXT_CHARS {
            return Err(UnlV3Error::TooLong { chars: text.len() });
        }
        let body = text
            .strip_prefix(UNL_V3_PREFIX)
            .ok_or(UnlV3Error::NoPrefix)?;
        let bytes = BASE64URL.decode(body).map_err(|e| UnlV3Error::BadBase64 {
            detail: e.to_string(),
        })?;
        UnlV3::from_bytes(&bytes)
    }
}

mod any;
pub use any::{AnyUnl, AnyUnlError};

#[cfg(test)]
mod tests;
