//! Node keys: an Ed25519 public key names a node, and every id the toolkit uses is derived
//! from it.
//!
//! A node's identity is an Ed25519 key pair (the node keeps the secret half; see
//! `node::identity`). This module holds the public half ([`PublicKey`]), signing and checking
//! with a *context* ([`Context`]: the same signature can never be taken for another kind of
//! message), and the derivation of the three ids a node has:
//!
//! | id | type | derived as |
//! |---|---|---|
//! | node id (UNL, `P2P/1 IAM`) | [`unl::NodeId`](crate::unl::NodeId), 20 printable bytes | the first 100 bits of `SHA-256("p2p node id v1" 0x00 ‖ public key)` in lowercase base32 (`a-z2-7`), 20 characters |
//! | mailbox name (dht-msg) | [`crate::mailbox::NodeId`] | the lowercase hex of the node id's 20 bytes, 40 characters, as PyP2P names mailboxes ([`NodeId::mailbox_id`](crate::unl::NodeId::mailbox_id)) |
//! | overlay peer id (`P2P/1 HELLO`) | [`overlay::PeerId`](crate::overlay::PeerId), u64 | the first 8 bytes (big-endian) of `SHA-256("p2p peer id v1" 0x00 ‖ node id's 20 bytes)` ([`peer_id_of`]) |
//!
//! The node id is printable so that it reads well in logs and on the command line and fits
//! PyP2P's v2 UNL unchanged. 100 bits make finding a key for someone else's id (a second
//! preimage) a 2^100 search; the UNL v3 and the handshake carry and check the whole key, so the
//! id only names, the key proves. The peer id is derived from the node id (not the key) so that
//! a node that only knows a v2 UNL's id computes the same peer id.
//!
//! This crate signs (UNL v3, signed requests) because the bytes that are signed and the bytes
//! that are checked must be built by one function; it never stores or loads a secret key.
//!
//! ```
//! use wire::key::{Context, PublicKey, SigningKey, sign};
//!
//! let secret = SigningKey::from_bytes(&[7; 32]);
//! let key = PublicKey::of(&secret);
//! let sig = sign(&secret, Context::Broadcast, b"hello");
//! assert!(key.verify(Context::Broadcast, b"hello", &sig).is_ok());
//! assert!(key.verify(Context::Unl, b"hello", &sig).is_err()); // another context
//! assert_eq!(key.node_id().as_bytes().len(), 20);
//! assert_eq!(key.to_string().parse::<PublicKey>()?, key);
//! # Ok::<(), wire::key::KeyError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

pub use ed25519_dalek::SigningKey;

use crate::mailbox;
use crate::overlay::PeerId;
use crate::unl::{NODE_ID_BYTES, NodeId};

/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Characters of a public key in unpadded base64url.
pub const PUBLIC_KEY_TEXT_CHARS: usize = 43;
/// Characters of a signature in unpadded base64url.
pub const SIGNATURE_TEXT_CHARS: usize = 86;

/// The lowercase base32 alphabet of RFC 4648 (node ids).
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// What a signature is for. The context's label is signed in front of the message, so a
/// signature made for one kind of message never verifies as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// A UNL v3 ([`crate::unl::v3`]).
    Unl,
    /// The Noise static key of a connection, signed inside the handshake.
    NoiseStatic,
    /// A signed reverse-connect or relay request ([`crate::signal`]).
    Request,
    /// A mailbox registration proof ([`crate::signal`]).
    MailboxRegister,
    /// A broadcast's origin signature.
    Broadcast,
}

impl Context {
    /// The label signed in front of the message (followed by one NUL byte).
    pub fn label(self) -> &'static str {
        match self {
            Context::Unl => "p2p unl v3",
            Context::NoiseStatic => "p2p noise static key v1",
            Context::Request => "p2p signed request v1",
            Context::MailboxRegister => "p2p mailbox register v1",
            Context::Broadcast => "p2p broadcast v1",
        }
    }

    fn message(self, msg: &[u8]) -> Vec<u8> {
        let label = self.label().as_bytes();
        let mut out = Vec::with_capacity(label.len() + 1 + msg.len());
        out.extend_from_slice(label);
        out.push(0);
        out.extend_from_slice(msg);
        out
    }
}

/// Why a key or a signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The 32 bytes are not an Ed25519 point, or a weak (small-order) one.
    #[error("not a usable Ed25519 public key: {key}")]
    BadKey {
        /// The bytes, in unpadded base64url.
        key: String,
    },
    /// The text is not 43 characters of unpadded base64url.
    #[error(
        "bad public key text {text:?}: expected {PUBLIC_KEY_TEXT_CHARS} characters of base64url"
    )]
    BadText {
        /// The text (cut to 64 characters).
        text: String,
    },
    /// The signature does not verify with this key in this context.
    #[error("bad signature: not made by key {key} for a {context}")]
    BadSignature {
        /// The key that was expected to have signed.
        key: PublicKey,
        /// What was signed (the context's label).
        context: &'static str,
    },
}

/// An Ed25519 public key: a node's identity. Always a valid, non-weak curve point (checked
/// when made). Shown as 43 characters of unpadded base64url. Kept as its 32 bytes (the
/// decompressed point is 6 times larger and is only needed to verify).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; PUBLIC_KEY_BYTES]);

impl PublicKey {
    /// The public key of a secret key.
    pub fn of(secret: &SigningKey) -> PublicKey {
        PublicKey(secret.verifying_key().to_bytes())
    }

    /// The key with these bytes; refuses bytes that are no curve point and weak keys.
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_BYTES]) -> Result<PublicKey, KeyError> {
        match VerifyingKey::from_bytes(bytes) {
            Ok(key) if !key.is_weak() => Ok(PublicKey(*bytes)),
            _ => Err(KeyError::BadKey {
                key: BASE64URL.encode(bytes),
            }),
        }
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_BYTES] {
        self.0
    }

    /// The 32 bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        &self.0
    }

    /// Checks that `signature` was made over `msg` in `context` by this key (strict
    /// verification: no malleable or small-order signatures).
    pub fn verify(
        &self,
        context: Context,
        msg: &[u8],
        signature: &[u8; SIGNATURE_BYTES],
    ) -> Result<(), KeyError> {
        VerifyingKey::from_bytes(&self.0)
            .and_then(|key| {
                key.verify_strict(&context.message(msg), &Signature::from_bytes(signature))
            })
            .map_err(|_| KeyError::BadSignature {
                key: *self,
                context: context.label(),
            })
    }

    /// The node id derived from this key (see the module docs).
    pub fn node_id(&self) -> NodeId {
        let digest = tagged_hash("p2p node id v1", self.as_bytes());
        let mut raw = [0u8; NODE_ID_BYTES];
        // 20 characters of 5 bits: the first 100 bits of the digest.
        for (i, c) in raw.iter_mut().enumerate() {
            let bit = i * 5;
            let pair = u16::from_be_bytes([digest[bit / 8], digest[bit / 8 + 1]]);
            let index = (pair >> (11 - bit % 8)) & 0x1f;
            *c = BASE32[usize::from(index)];
        }
        NodeId::from_bytes(raw).unwrap_or_else(|| unreachable!("base32 characters are not NUL"))
    }

    /// The overlay peer id derived from this key's node id ([`peer_id_of`]).
    pub fn peer_id(&self) -> PeerId {
        peer_id_of(&self.node_id())
    }

    /// The mailbox name derived from this key's node id ([`mailbox_name_of`]).
    pub fn mailbox_name(&self) -> mailbox::NodeId {
        mailbox_name_of(&self.node_id())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64URL.encode(self.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    /// 43 characters of unpadded base64url (canonical: the unused low bits are zero).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || KeyError::BadText {
            text: text.chars().take(64).collect(),
        };
        if text.len() != PUBLIC_KEY_TEXT_CHARS {
            return Err(bad());
        }
        let mut bytes = [0u8; PUBLIC_KEY_BYTES + 1];
        match BASE64URL.decode_slice(text, &mut bytes) {
            Ok(PUBLIC_KEY_BYTES) => {
                let mut key = [0u8; PUBLIC_KEY_BYTES];
                key.copy_from_slice(&bytes[..PUBLIC_KEY_BYTES]);
                PublicKey::from_bytes(&key)
            }
            _ => Err(bad()),
        }
    }
}

/// Signs `msg` in `context` with `secret`.
pub fn sign(secret: &SigningKey, context: Context, msg: &[u8]) -> [u8; SIGNATURE_BYTES] {
    secret.sign(&context.message(msg)).to_bytes()
}

/// The overlay peer id of a node id: the first 8 bytes (big-endian) of
/// `SHA-256("p2p peer id v1" 0x00 ‖ the id's 20 raw bytes)`. Works for any node id, also a
/// PyP2P one from a v2 UNL, so both ends compute the same peer id for a connection.
pub fn peer_id_of(node: &NodeId) -> PeerId {
    let digest = tagged_hash("p2p peer id v1", node.raw());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    PeerId(u64::from_be_bytes(first))
}

/// The mailbox name of a node id: the lowercase hex of its 20 raw bytes (PyP2P's
/// `binascii.hexlify(node_id)`), always a valid [`mailbox::NodeId`].
pub fn mailbox_name_of(node: &NodeId) -> mailbox::NodeId {
    node.mailbox_id()
        .parse()
        .unwrap_or_else(|_| unreachable!("40 hex digits are a valid mailbox name"))
}

/// Whether `node` is the id derived from `key` (a v2 id or another key's id is not).
pub fn is_node_id_of(node: &NodeId, key: &PublicKey) -> bool {
    key.node_id() == *node
}

fn tagged_hash(tag: &str, data: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(tag.as_bytes());
    hasher.update([0]);
    hasher.update(data);
    hasher.finalize().into()
}

/// Unpadded base64url of `bytes` (the text form of keys, signatures and UNL v3).
pub fn base64url(bytes: &[u8]) -> String {
    BASE64URL.encode(bytes)
}

/// Decodes exactly `N` bytes of canonical unpadded base64url, or `None`.
pub fn from_base64url<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != (N * 4).div_ceil(3) {
        return None;
    }
    let mut out = vec![0u8; N + 2];
    let n = BASE64URL.decode_slice(text, &mut out).ok()?;
    (n == N).then(|| {
        let mut arr = [0u8; N];
        arr.copy_from_slice(&out[..N]);
        arr
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn node_id_vector() {
        // RFC 8032 test 1's public key.
        let key = PublicKey::of(&SigningKey::from_bytes(&[
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ]));
        assert_eq!(
            key.to_string(),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        let id = key.node_id();
        assert_eq!(id.to_string().len(), 20);
        assert!(id.as_bytes().iter().all(|b| BASE32.contains(b)));
        assert_eq!(id.to_string(), "q42umaaeyvzicmyqeubj", "the vector changed");
        assert_eq!(key.mailbox_name().as_str(), id.mailbox_id());
        assert_eq!(key.peer_id(), peer_id_of(&id));
        assert_eq!(
            key.peer_id().to_string(),
            "9c4e48831d21b778",
            "the vector changed"
        );
        assert!(is_node_id_of(&id, &key));
        assert!(!is_node_id_of(&id, &PublicKey::of(&secret(1))));
    }

    #[test]
    fn signatures_are_bound_to_key_context_and_message() {
        let (a, b) = (secret(1), secret(2));
        let sig = sign(&a, Context::Request, b"msg");
        let key = PublicKey::of(&a);
        assert_eq!(key.verify(Context::Request, b"msg", &sig), Ok(()));
        let err = key.verify(Context::Request, b"msh", &sig).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("bad signature: not made by key {key} for a p2p signed request v1")
        );
        assert!(key.verify(Context::Unl, b"msg", &sig).is_err());
        assert!(
            PublicKey::of(&b)
                .verify(Context::Request, b"msg", &sig)
                .is_err()
        );
    }

    #[test]
    fn weak_and_invalid_keys_are_refused() {
        // The identity point (small order) and a y coordinate with no point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&identity),
            Err(KeyError::BadKey { .. })
        ));
        let mut none = [0xff; 32];
        none[31] = 0x7f;
        let bad = (0u8..=255)
            .map(|i| {
                none[0] = i;
                none
            })
            .any(|b| PublicKey::from_bytes(&b).is_err());
        assert!(bad, "some y has no point");
        assert!("short".parse::<PublicKey>().is_err());
        let text = PublicKey::of(&secret(3)).to_string();
        let plus = format!("{}+", &text[..42]);
        assert!(matches!(
            plus.parse::<PublicKey>(),
            Err(KeyError::BadText { .. })
        ));
    }

    proptest! {
        #[test]
        fn key_text_round_trips(seed in any::<[u8; 32]>()) {
            let key = PublicKey::of(&SigningKey::from_bytes(&seed));
            let text = key.to_string();
            prop_assert_eq!(text.len(), PUBLIC_KEY_TEXT_CHARS);
            prop_assert!(!text.contains(['/', '+', '=']));
            prop_assert_eq!(text.parse::<PublicKey>(), Ok(key));
            prop_assert_eq!(PublicKey::from_bytes(&key.to_bytes()), Ok(key));
            let id = key.node_id();
            prop_assert!(id.to_string().parse::<mailbox::NodeId>().is_ok());
            prop_assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
        }

        #[test]
        fn base64url_helpers_round_trip(bytes in any::<[u8; 64]>()) {
            prop_assert_eq!(from_base64url::<64>(&base64url(&bytes)), Some(bytes));
            prop_assert_eq!(from_base64url::<63>(&base64url(&bytes)), None);
        }
    }
}
