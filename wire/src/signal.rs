//! Signed signalling: reverse-connect and relay requests signed by the sender's key, the cache
//! that refuses a replayed one, and the proof that a node owns its mailbox.
//!
//! # Requests
//!
//! A node asks another, through the other's mailbox, to dial it (`REVERSE3`) or to meet it at a
//! relay (`RELAY3`). The request carries the sender's v3 UNL (so its key), the recipient's node
//! id, a timestamp and a random nonce, and a signature by the UNL's key over all of it:
//!
//! ```text
//! REVERSE3 <UNL v3> <to: 40 hex> <unix ms> <nonce: 64 hex> <signature: 86 base64url>
//! RELAY3 <UNL v3> <to: 40 hex> <unix ms> <nonce: 64 hex> <relay ip:port> <signature>
//! ```
//!
//! Parsing checks the UNL's own signature and the request's (so a [`SignedRequest`] value is
//! always signed by the key in its UNL); [`SignedRequest::check`] then refuses a request for
//! another node, a stale or future one, and a replay ([`ReplayCache`]). The recipient in the
//! signed bytes stops a request from being re-posted to a third node; the nonce is what the
//! connection then proves, as today's `REVERSE_CONNECT` nonce.
//!
//! # Mailbox registration
//!
//! The server sends `CHALLENGE <server name> <nonce: 64 hex>`; the node answers
//! `REGISTER_KEY <public key> <signature>`, a signature over the server name, the nonce and its
//! key ([`RegisterProof`]). The server learns the mailbox name from the key (no secret is
//! stored, none can leak) and refuses a proof for another challenge. The server name is signed
//! so that a proof one server obtained cannot be replayed to another; a node checks that the
//! name is the server it dialed before it signs.
//!
//! ```
//! use std::time::Duration;
//! use wire::key::SigningKey;
//! use wire::overlay::Nonce;
//! use wire::signal::{ReplayCache, RequestKind, SignedRequest};
//! use wire::unl::v3::{UnlBody, UnlV3};
//!
//! let (alice, bob) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
//! let alice_unl = UnlV3::sign(UnlBody::new(1), &alice)?;
//! let bob_id = wire::key::PublicKey::of(&bob).node_id();
//! let now_ms = 1_700_000_000_000;
//! let req = SignedRequest::sign(RequestKind::Reverse, alice_unl, bob_id, now_ms, Nonce([9; 32]), &alice)?;
//! let received: SignedRequest = req.to_string().parse()?;
//! let mut cache = ReplayCache::new(1000, Duration::from_secs(120));
//! assert!(received.check(&bob_id, now_ms + 50, &mut cache).is_ok());
//! assert!(received.check(&bob_id, now_ms + 60, &mut cache).is_err()); // a replay
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::key::{self, Context, KeyError, PublicKey, SIGNATURE_BYTES, SigningKey};
use crate::mailbox;
use crate::overlay::{Nonce, parse_hex_bytes};
use crate::unl::v3::{UnlV3, UnlV3Error};
use crate::unl::{NODE_ID_BYTES, NodeId};

/// First word of a signed reverse-connect request.
pub const REVERSE_PREFIX: &str = "REVERSE3";
/// First word of a signed relay request.
pub const RELAY_PREFIX: &str = "RELAY3";
/// First word of a mailbox server's challenge.
pub const CHALLENGE_PREFIX: &str = "CHALLENGE";
/// First word of a node's registration proof.
pub const REGISTER_KEY_PREFIX: &str = "REGISTER_KEY";
/// Longest server name in a challenge (`host:port` or `[v6]:port`).
pub const MAX_SERVER_NAME_BYTES: usize = 261;

/// Why a signed message is refused. Each names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignalError {
    /// The text is not the message it should be.
    #[error("malformed {kind}: bad or missing {field}")]
    Malformed {
        /// Which message.
        kind: &'static str,
        /// Which field.
        field: &'static str,
    },
    /// The enclosed UNL is not a valid v3 UNL.
    #[error("bad UNL in request: {0}")]
    Unl(#[from] UnlV3Error),
    /// A key or signature check failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The secret key given to sign is not the key of the enclosed UNL.
    #[error("the signing key {signer} is not the UNL's key {unl}")]
    WrongSigner {
        /// The signing key's public half.
        signer: PublicKey,
        /// The UNL's key.
        unl: PublicKey,
    },
    /// The request names another node.
    #[error("request is for node {to}, not for us ({me})")]
    NotForMe {
        /// The recipient it names.
        to: NodeId,
        /// Our id.
        me: NodeId,
    },
    /// Older than the window.
    #[error("stale request: sent {age_ms} ms ago (limit {limit_ms} ms)")]
    Stale {
        /// How old.
        age_ms: u64,
        /// The window.
        limit_ms: u64,
    },
    /// Dated in the future beyond the window (a wrong clock, or a stockpiled request).
    #[error("request dated {ahead_ms} ms in the future (limit {limit_ms} ms)")]
    FromFuture {
        /// How far ahead.
        ahead_ms: u64,
        /// The window.
        limit_ms: u64,
    },
    /// Seen before.
    #[error("replayed request from {key} (nonce {nonce})")]
    Replayed {
        /// The sender.
        key: PublicKey,
        /// Its nonce.
        nonce: Nonce,
    },
    /// The replay cache is full of newer requests and cannot vouch for this older one.
    #[error(
        "request dated {timestamp_ms} is older than the replay cache keeps (after {floor_ms}); send a fresh one"
    )]
    TooOldForCache {
        /// The request's time.
        timestamp_ms: u64,
        /// The oldest time the cache still tells apart.
        floor_ms: u64,
    },
    /// A proof answers another challenge.
    #[error("registration proof for another challenge")]
    WrongChallenge,
}

/// What a signed request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Dial the sender (at its UNL's addresses) and open with the nonce.
    Reverse,
    /// Meet the sender at this relay (a rendezvous server) with the token of the nonce.
    Relay {
        /// The relay.
        relay: SocketAddr,
    },
}

/// A reverse-connect or relay request, signed by the key of the UNL inside it. Made by
/// [`SignedRequest::sign`] or parsed (which checks both signatures).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignedRequest {
    kind: RequestKind,
    unl: UnlV3,
    to: NodeId,
    timestamp_ms: u64,
    nonce: Nonce,
    signature: [u8; SIGNATURE_BYTES],
}

impl SignedRequest {
    /// Signs a request from the owner of `unl` (whose secret key `secret` must be) to node `to`.
    pub fn sign(
        kind: RequestKind,
        unl: UnlV3,
        to: NodeId,
        timestamp_ms: u64,
        nonce: Nonce,
        secret: &SigningKey,
    ) -> Result<SignedRequest, SignalError> {
        let signer = PublicKey::of(secret);
        if signer != *unl.key() {
            return Err(SignalError::WrongSigner {
                signer,
                unl: *unl.key(),
            });
        }
        let mut req = SignedRequest {
            kind,
            unl,
            to,
            timestamp_ms,
            nonce,
            signature: [0; SIGNATURE_BYTES],
        };
        req.signature = key::sign(secret, Context::Request, &req.signed_bytes());
        Ok(req)
    }

    /// Reverse or relay (and which relay).
    pub fn kind(&self) -> RequestKind {
        self.kind
    }

    /// The sender's UNL (its key signed this request).
    pub fn unl(&self) -> &UnlV3 {
        &self.unl
    }

    /// The node it is for.
    pub fn to(&self) -> NodeId {
        self.to
    }

    /// When it was signed (Unix milliseconds, the sender's clock).
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The nonce the connection must carry.
    pub fn nonce(&self) -> Nonce {
        self.nonce
    }

    /// Refuses a request for another node than `me`, outside the cache's time window around
    /// `now_ms` (Unix milliseconds), or already seen; else remembers it.
    pub fn check(
        &self,
        me: &NodeId,
        now_ms: u64,
        replay: &mut ReplayCache,
    ) -> Result<(), SignalError> {
        if self.to != *me {
            return Err(SignalError::NotForMe {
                to: self.to,
                me: *me,
            });
        }
        replay.check(now_ms, self.unl.key(), &self.nonce, self.timestamp_ms)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let unl = self.unl.to_bytes();
        let mut out = Vec::with_capacity(unl.len() + 100);
        match self.kind {
            RequestKind::Reverse => out.extend_from_slice(REVERSE_PREFIX.as_bytes()),
            RequestKind::Relay { relay } => {
                out.extend_from_slice(RELAY_PREFIX.as_bytes());
                out.push(0);
                out.extend_from_slice(relay.to_string().as_bytes());
            }
        }
        out.push(0);
        out.extend_from_slice(&u16::try_from(unl.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&unl);
        out.extend_from_slice(self.to.raw());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.nonce.0);
        out
    }
}

impl fmt::Display for SignedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            RequestKind::Reverse => REVERSE_PREFIX,
            RequestKind::Relay { .. } => RELAY_PREFIX,
        };
        write!(
            f,
            "{prefix} {} {} {} {}",
            self.unl,
            self.to.mailbox_id(),
            self.timestamp_ms,
            self.nonce
        )?;
        if let RequestKind::Relay { relay } = self.kind {
            write!(f, " {relay}")?;
        }
        write!(f, " {}", key::base64url(&self.signature))
    }
}

impl FromStr for SignedRequest {
    type Err = SignalError;

    /// Parses and checks the UNL's signature and the request's.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut words = text.split(' ');
        let (kind_name, relay_expected) = match words.next() {
            Some(REVERSE_PREFIX) => (REVERSE_PREFIX, false),
            Some(RELAY_PREFIX) => (RELAY_PREFIX, true),
            _ => {
                return Err(SignalError::Malformed {
                    kind: "signed request",
                    field: "REVERSE3 or RELAY3",
                });
            }
        };
        let bad = |field| SignalError::Malformed {
            kind: kind_name,
            field,
        };
        let unl: UnlV3 = words.next().ok_or(bad("UNL"))?.parse()?;
        let to = words
            .next()
            .and_then(parse_hex_bytes::<NODE_ID_BYTES>)
            .and_then(NodeId::from_bytes)
            .ok_or(bad("recipient node id (40 hex digits)"))?;
        let timestamp_ms = words
            .next()
            .filter(|w| !w.is_empty() && w.len() <= 20 && w.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|w| w.parse().ok())
            .ok_or(bad("timestamp (unix milliseconds)"))?;
        let nonce: Nonce = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or(bad("nonce (64 lowercase hex digits)"))?;
        let kind = if relay_expected {
            let relay = words
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or(bad("relay address (ip:port)"))?;
            RequestKind::Relay { relay }
        } else {
            RequestKind::Reverse
        };
        let signature = words
            .next()
            .and_then(key::from_base64url::<SIGNATURE_BYTES>)
            .ok_or(bad("signature (86 base64url characters)"))?;
        if words.next().is_some() {
            return Err(bad("end of message (extra words)"));
        }
        let req = SignedRequest {
            kind,
            unl,
            to,
            timestamp_ms,
            nonce,
            signature,
        };
        req.unl
            .key()
            .verify(Context::Request, &req.signed_bytes(), &req.signature)?;
        Ok(req)
    }
}

/// Remembers the requests seen within a time window, to refuse replays, in bounded memory.
///
/// A request is accepted once, and only while its timestamp is within `window` of `now`
/// (either side: clocks differ). Entries older than the window are forgotten (such a request
/// is refused as stale anyway). When the cache is full, the oldest entry is dropped and its
/// time becomes a floor: a request dated at or before it is refused
/// ([`SignalError::TooOldForCache`]), so a replay is never accepted, only, under a flood, an
/// old genuine request (its sender can send a fresh one).
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    window_ms: u64,
    /// (timestamp, key, nonce), oldest first.
    seen: BTreeSet<(u64, [u8; 32], [u8; 32])>,
    floor_ms: u64,
}

impl ReplayCache {
    /// A cache of at most `capacity` requests (at least 1) accepting timestamps within
    /// `window` of now.
    pub fn new(capacity: usize, window: Duration) -> ReplayCache {
        ReplayCache {
            capacity: capacity.max(1),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            seen: BTreeSet::new(),
            floor_ms: 0,
        }
    }

    /// Requests remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Accepts (and remembers) the request `(key, nonce)` dated `timestamp_ms`, or says why not.
    pub fn check(
        &mut self,
        now_ms: u64,
        key: &PublicKey,
        nonce: &Nonce,
        timestamp_ms: u64,
    ) -> Result<(), SignalError> {
        let limit_ms = self.window_ms;
        if timestamp_ms > now_ms.saturating_add(limit_ms) {
            return Err(SignalError::FromFuture {
                ahead_ms: timestamp_ms - now_ms,
                limit_ms,
            });
        }
        let oldest = now_ms.saturating_sub(limit_ms);
        if timestamp_ms < oldest {
            return Err(SignalError::Stale {
                age_ms: now_ms - timestamp_ms,
                limit_ms,
            });
        }
        while self.seen.first().is_some_and(|e| e.0 < oldest) {
            self.seen.pop_first();
        }
        if self.floor_ms > 0 && timestamp_ms <= self.floor_ms {
            return Err(SignalError::TooOldForCache {
                timestamp_ms,
                floor_ms: self.floor_ms,
            });
        }
        let entry = (timestamp_ms, key.to_bytes(), nonce.0);
        if self.seen.contains(&entry) {
            return Err(SignalError::Replayed {
                key: *key,
                nonce: *nonce,
            });
        }
        if self.seen.len() >= self.capacity {
            let first = self.seen.first().map_or(0, |e| e.0);
            if timestamp_ms <= first {
                return Err(SignalError::TooOldForCache {
                    timestamp_ms,
                    floor_ms: first,
                });
            }
            self.seen.pop_first();
            self.floor_ms = self.floor_ms.max(first);
        }
        self.seen.insert(entry);
        Ok(())
    }
}

/// A mailbox server's challenge: `CHALLENGE <server name> <nonce: 64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegisterChallenge {
    /// The server's name as its clients dial it (`host:port`), 1..=261 bytes of
    /// `[A-Za-z0-9.:[]-]`.
    pub server: String,
    /// Random, fresh for each connection.
    pub nonce: Nonce,
}

impl RegisterChallenge {
    fn signed_bytes(&self, key: &PublicKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.server.len() + 70);
        out.push(u8::try_from(self.server.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.server.as_bytes());
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(key.as_bytes());
        out
    }
}

fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVER_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'[' | b']' | b'-'))
}

impl fmt::Display for RegisterChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CHALLENGE_PREFIX} {} {}", self.server, self.nonce)
    }
}

impl FromStr for RegisterChallenge {
    type Err = SignalError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |field| SignalError::Malformed {
            kind: CHALLENGE_PREFIX,
            field,
        };
        let mut words = text.split(' ');
        if words.next() != Some(CHALLENGE_PREFIX) {
            return Err(bad("CHALLENGE"));
        }
        let server = words
            .next()
            .filter(|w| valid_server_name(w))
            .ok_or(bad("server name"))?
            .to_owned();
        let nonce = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or(bad("nonce (64 lowercase hex digits)"))?;
        if words.next().is_some() {
            return Err(bad("end of line (extra words)"));
        }
        Ok(RegisterChallenge { server, nonce })
    }
}

/// A node's answer to a [`RegisterChallenge`]: `REGISTER_KEY <public key> <signature>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegisterProof {
    /// The node's key (its mailbox name is derived from it).
    pub key: PublicKey,
    /// Over the challenge's server name and nonce and the key.
    pub signature: [u8; SIGNATURE_BYTES],
}

impl RegisterProof {
    /// Answers `challenge` with `secret`.
    pub fn sign(secret: &SigningKey, challenge: &RegisterChallenge) -> RegisterProof {
        let key = PublicKey::of(secret);
        let signature = key::sign(
            secret,
            Context::MailboxRegister,
            &challenge.signed_bytes(&key),
        );
        RegisterProof { key, signature }
    }

    /// Checks the proof against the challenge this server sent on this connection; returns the
    /// mailbox name the node proved it owns.
    pub fn verify(&self, challenge: &RegisterChallenge) -> Result<mailbox::NodeId, SignalError> {
        self.key
            .verify(
                Context::MailboxRegister,
                &challenge.signed_bytes(&self.key),
                &self.signature,
            )
            .map_err(|_| SignalError::WrongChallenge)?;
        Ok(self.key.mailbox_name())
    }
}

impl fmt::Display for RegisterProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{REGISTER_KEY_PREFIX} {} {}",
            self.key,
            key::base64url(&self.signature)
        )
    }
}

impl FromStr for RegisterProof {
    type Err = SignalError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |field| SignalError::Malformed {
            kind: REGISTER_KEY_PREFIX,
            field,
        };
        let mut words = text.split(' ');
        if words.next() != Some(REGISTER_KEY_PREFIX) {
            return Err(bad("REGISTER_KEY"));
        }
        let key = words.next().ok_or(bad("public key"))?.parse()?;
        let signature = words
            .next()
            .and_then(key::from_base64url::<SIGNATURE_BYTES>)
            .ok_or(bad("signature (86 base64url characters)"))?;
        if words.next().is_some() {
            return Err(bad("end of line (extra words)"));
        }
        Ok(RegisterProof { key, signature })
    }
}

#[cfg(test)]
mod tests;
