//! Origin-signed broadcasts: a line flooded across the overlay that every receiver can tie to
//! the key that wrote it, however many nodes forwarded it.
//!
//! Hop-by-hop, every connection between nodes is encrypted and authenticated (see
//! [`crate::secure`]): a node knows which neighbour handed it a broadcast, not who wrote it.
//! [`crate::Net::broadcast_signed`] adds the writer's signature. The line travels as the
//! payload of an ordinary `P2P/1 BCAST` (so nodes that do not know this format still forward
//! it, and show it as text):
//!
//! ```text
//! P2P/1 BCAST <id> <ttl> P2P/1 SIGNED <key: 43 base64url> <unix ms> <signature: 86 base64url> <line>
//! ```
//!
//! The signature (context [`Context::Broadcast`]) covers the broadcast's id, the time and the
//! line, not the TTL (which every hop lowers). A receiver delivers the line with its writer's
//! key ([`crate::Connection::received`]) only when the signature verifies and the time is
//! within the seen-cache's lifetime of its own clock (so a replay under the same id is caught
//! by the seen-cache, and an old signed line cannot be flooded again later); otherwise it
//! drops the broadcast and does not forward it.
//!
//! ```
//! use node::broadcast::SignedBroadcast;
//! use node::identity::Identity;
//! use node::wire::overlay::MessageId;
//!
//! let me = Identity::from_secret_bytes(&[7; 32]);
//! let text = SignedBroadcast::sign(&me, MessageId(42), 1_700_000_000_000, "hello").to_string();
//! let back: SignedBroadcast = text.parse()?;
//! assert_eq!(back.verify(MessageId(42))?, me.key());
//! assert!(back.verify(MessageId(43)).is_err()); // another broadcast's id
//! assert_eq!(back.line(), "hello");
//! # Ok::<(), node::broadcast::BroadcastError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use thiserror::Error;
use wire::key::{self, Context, KeyError, PublicKey, SIGNATURE_BYTES};
use wire::overlay::MessageId;

use crate::identity::Identity;

/// What a signed broadcast's payload starts with.
pub const SIGNED_PREFIX: &str = "P2P/1 SIGNED ";

/// Why a signed broadcast is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BroadcastError {
    /// Not `P2P/1 SIGNED <key> <ms> <signature> <line>`.
    #[error("malformed signed broadcast: bad or missing {field}")]
    Malformed {
        /// The field.
        field: &'static str,
    },
    /// The key is not usable, or did not sign this.
    #[error("signed broadcast: {0}")]
    Key(#[from] KeyError),
    /// Dated outside the window of the receiver's clock.
    #[error("signed broadcast dated {skew_ms} ms from our clock (limit {limit_ms} ms)")]
    Stale {
        /// How far from our clock, either way.
        skew_ms: u64,
        /// The window.
        limit_ms: u64,
    },
}

/// A line and its writer's signature (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBroadcast {
    key: PublicKey,
    unix_ms: u64,
    signature: [u8; SIGNATURE_BYTES],
    line: String,
}

impl SignedBroadcast {
    /// Signs `line` as broadcast `id`, written at `unix_ms`, by `identity`.
    pub fn sign(identity: &Identity, id: MessageId, unix_ms: u64, line: &str) -> SignedBroadcast {
        let signature = identity.sign(Context::Broadcast, &signed_bytes(id, unix_ms, line));
        SignedBroadcast {
            key: identity.key(),
            unix_ms,
            signature,
            line: line.to_owned(),
        }
    }

    /// Checks the signature for broadcast `id`; returns the writer's key.
    pub fn verify(&self, id: MessageId) -> Result<PublicKey, BroadcastError> {
        self.key.verify(
            Context::Broadcast,
            &signed_bytes(id, self.unix_ms, &self.line),
            &self.signature,
        )?;
        Ok(self.key)
    }

    /// Refuses a broadcast dated more than `limit_ms` from `now_ms`, either way.
    pub fn check_time(&self, now_ms: u64, limit_ms: u64) -> Result<(), BroadcastError> {
        let skew_ms = now_ms.abs_diff(self.unix_ms);
        if skew_ms > limit_ms {
            return Err(BroadcastError::Stale { skew_ms, limit_ms });
        }
        Ok(())
    }

    /// The key it claims (verified only by [`SignedBroadcast::verify`]).
    pub fn key(&self) -> PublicKey {
        self.key
    }

    /// When it was written (Unix milliseconds, the writer's clock).
    pub fn unix_ms(&self) -> u64 {
        self.unix_ms
    }

    /// The line.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Takes the line.
    pub fn into_line(self) -> String {
        self.line
    }
}

fn signed_bytes(id: MessageId, unix_ms: u64, line: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + line.len());
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(&unix_ms.to_be_bytes());
    out.extend_from_slice(line.as_bytes());
    out
}

impl fmt::Display for SignedBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SIGNED_PREFIX}{} {} {} {}",
            self.key,
            self.unix_ms,
            key::base64url(&self.signature),
            self.line
        )
    }
}

impl FromStr for SignedBroadcast {
    type Err = BroadcastError;

    /// Parses (the signature is checked by [`SignedBroadcast::verify`]).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |field| BroadcastError::Malformed { field };
        let rest = text
            .strip_prefix(SIGNED_PREFIX)
            .ok_or(bad("P2P/1 SIGNED"))?;
        let mut words = rest.splitn(4, ' ');
        let key = words.next().ok_or(bad("key"))?.parse()?;
        let unix_ms = words
            .next()
            // Digits, no leading zero: one text per time (a signed line has one canonical form).
            .filter(|w| {
                !w.is_empty()
                    && w.len() <= 20
                    && w.bytes().all(|b| b.is_ascii_digit())
                    && (w.len() == 1 || !w.starts_with('0'))
            })
            .and_then(|w| w.parse().ok())
            .ok_or(bad("time (unix milliseconds)"))?;
        let signature = words
            .next()
            .and_then(key::from_base64url::<SIGNATURE_BYTES>)
            .ok_or(bad("signature (86 base64url characters)"))?;
        let line = words.next().ok_or(bad("line"))?.to_owned();
        Ok(SignedBroadcast {
            key,
            unix_ms,
            signature,
            line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_with_a_leading_zero_is_refused() {
        let me = Identity::from_secret_bytes(&[3; 32]);
        let text = SignedBroadcast::sign(&me, MessageId(9), 85, "x").to_string();
        let padded = text.replacen(" 85 ", " 085 ", 1);
        assert_ne!(padded, text);
        assert!(padded.parse::<SignedBroadcast>().is_err());
    }

    #[test]
    fn round_trip_and_every_tampering_is_refused() {
        let me = Identity::from_secret_bytes(&[3; 32]);
        let signed =
            SignedBroadcast::sign(&me, MessageId(9), 1_700_000_000_000, "a line with spaces");
        let text = signed.to_string();
        let back: SignedBroadcast = text.parse().unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.verify(MessageId(9)), Ok(me.key()));
        assert_eq!(back.line(), "a line with spaces");
        // Any changed character after the prefix: refused (unparsable, or fails to verify).
        for i in SIGNED_PREFIX.len()..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
            let Ok(changed) = String::from_utf8(bytes) else {
                continue;
            };
            let ok = changed
                .parse::<SignedBroadcast>()
                .is_ok_and(|b| b.verify(MessageId(9)).is_ok());
            assert!(!ok, "changed byte {i} still verifies: {changed}");
        }
        // Another writer's key with this signature.
        let other = Identity::from_secret_bytes(&[4; 32]);
        let swapped = text.replace(&me.key().to_string(), &other.key().to_string());
        assert!(matches!(
            swapped
                .parse::<SignedBroadcast>()
                .unwrap()
                .verify(MessageId(9)),
            Err(BroadcastError::Key(KeyError::BadSignature { .. }))
        ));
        // Time window.
        assert!(back.check_time(1_700_000_000_000 + 5_000, 10_000).is_ok());
        assert!(matches!(
            back.check_time(1_700_000_000_000 + 20_000, 10_000),
            Err(BroadcastError::Stale {
                skew_ms: 20_000,
                ..
            })
        ));
        for bad in ["", "P2P/1 SIGNED", "P2P/1 SIGNED x 1 y z", "hello"] {
            assert!(bad.parse::<SignedBroadcast>().is_err(), "{bad}");
        }
    }
}
