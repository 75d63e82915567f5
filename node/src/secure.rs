//! Encrypted, mutually authenticated connections: a Noise handshake as a sans-IO state machine,
//! then encrypted frames carrying the lines.
//!
//! ```text
//!   driver (mio)          bytes read ──▶ Handshake::handle_bytes(now, ..)   ──▶ poll_output():
//!                                         handle_eof / handle_timeout(now)      Send(bytes) | Done | Failed
//!                         Done(Established { peer key, lines: SecureLines, leftover bytes })
//!                         bytes read ──▶ SecureLines::push ──▶ next_str()  (in place of LineFramer)
//!                         lines out  ──▶ SecureLines::queue_line ──▶ seal(&mut out) ──▶ write
//! ```
//!
//! **Protocol** (`Noise_XX_25519_ChaChaPoly_BLAKE2s`, prologue = [`NOISE_PREAMBLE`]):
//!
//! ```text
//!   initiator → responder: "\0p2p-nx1"  frame(-> e)                                   8 + 2 + 32 bytes
//!   responder → initiator: "\0p2p-nx1"  frame(<- e, ee, s, es, {payload})            8 + 2 + 193 bytes
//!   initiator → responder:              frame(-> s, se, {payload})                        2 + 161 bytes
//!   then both ways:                     frame({lines}) ...   (each ≤ 65535 bytes, 16 of them the tag)
//! ```
//!
//! A frame is a u16 big-endian length and the Noise message ([`wire::frame`]). The payload, 97
//! bytes inside the encrypted part, is `01` (version), the sender's Ed25519 identity key (32
//! bytes) and its signature (64 bytes, context [`Context::NoiseStatic`]) over the sender's Noise
//! static key, as libp2p-noise does. Each side checks that signature against the static key the
//! handshake proved, so the identity key is the one that holds this Noise session; and, when it
//! knows whom it meant to reach (the key in the peer's UNL v3), that the key is that one.
//! A relay or a server in the middle sees only the preamble, two ephemeral keys and ciphertext,
//! and can neither read nor change what passes.
//!
//! The initiator learns and checks the responder's identity when message 2 arrives (one round
//! trip after connecting, when today's `IAM` line arrives) and may send lines right after
//! message 3; the responder knows the initiator after message 3. Who is the initiator: the side
//! that dialed; on a punched connection the candidate; on a relayed one the side that was asked
//! for it (see `core::Security`).
//!
//! **Sniff rule** (PyP2P compatibility): a listener looks at the first byte of an inbound
//! connection ([`wire::frame::sniff`]): NUL starts our handshake, anything else is a plain line
//! (PyP2P never sends a NUL first). A dialer knows what it dials: a v3 UNL means encrypted, a
//! v2 UNL a PyP2P peer (plain text).

mod handshake;
mod lines;

use rand::rngs::StdRng;
use rand::{RngCore as _, SeedableRng as _};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

pub use handshake::{Established, Handshake, HandshakeError, HandshakeOutput};
pub use lines::{MAX_PLAINTEXT_PER_FRAME, SecureError, SecureLines};
pub use wire::frame::{NOISE_PREAMBLE, Sniff, sniff};

use crate::identity::Identity;
use wire::key::{Context, PUBLIC_KEY_BYTES, PublicKey, SIGNATURE_BYTES};

/// The Noise protocol name.
pub const NOISE_PROTOCOL: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Version byte of the handshake payload.
pub const PAYLOAD_VERSION: u8 = 1;
/// Bytes of the handshake payload: version, identity key, signature.
pub const PAYLOAD_BYTES: usize = 1 + PUBLIC_KEY_BYTES + SIGNATURE_BYTES;
/// Default cap on one handshake message (the largest is 193 bytes).
pub const DEFAULT_MAX_HANDSHAKE_MESSAGE: usize = 1024;

/// Which side of the handshake this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends the first message: the dialer (or the asker on a relayed or punched connection).
    Initiator,
    /// Answers.
    Responder,
}

/// Limits of a handshake and of the connection after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// The whole handshake must finish within this (a peer that stalls is dropped).
    pub timeout: std::time::Duration,
    /// Cap on one handshake message, checked before it is buffered.
    pub max_message: usize,
    /// Cap on one line after the handshake (as [`wire::line::LineFramer`]).
    pub max_line: usize,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            timeout: std::time::Duration::from_secs(10),
            max_message: DEFAULT_MAX_HANDSHAKE_MESSAGE,
            max_line: wire::line::DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// A node's keys for handshakes: its identity key, a Noise (X25519) static key pair, and the
/// identity's signature over the static public key. Made once per node (signing is the costly
/// part), then shared by every handshake. `Debug` hides the private key.
#[derive(Clone)]
pub struct NoiseKeys {
    identity: PublicKey,
    static_private: [u8; 32],
    static_public: [u8; 32],
    payload: [u8; PAYLOAD_BYTES],
}

impl NoiseKeys {
    /// A fresh static key pair (from `seed`: give 32 random bytes) signed by `identity`.
    pub fn new(identity: &Identity, seed: [u8; 32]) -> NoiseKeys {
        let builder = snow::Builder::with_resolver(params(), Box::new(Resolver { seed }));
        let pair = builder
            .generate_keypair()
            .unwrap_or_else(|e| unreachable!("X25519 with a seeded generator cannot fail: {e}"));
        let mut static_private = [0u8; 32];
        let mut static_public = [0u8; 32];
        static_private.copy_from_slice(&pair.private);
        static_public.copy_from_slice(&pair.public);
        let mut payload = [0u8; PAYLOAD_BYTES];
        payload[0] = PAYLOAD_VERSION;
        payload[1..=PUBLIC_KEY_BYTES].copy_from_slice(identity.key().as_bytes());
        payload[1 + PUBLIC_KEY_BYTES..]
            .copy_from_slice(&identity.sign(Context::NoiseStatic, &static_public));
        NoiseKeys {
            identity: identity.key(),
            static_private,
            static_public,
            payload,
        }
    }

    /// A fresh static key pair from the operating system's randomness.
    pub fn generate(identity: &Identity) -> NoiseKeys {
        NoiseKeys::new(identity, rand::random())
    }

    /// The identity key these keys speak for.
    pub fn identity(&self) -> PublicKey {
        self.identity
    }

    /// The Noise static public key.
    pub fn static_public(&self) -> &[u8; 32] {
        &self.static_public
    }
}

impl std::fmt::Debug for NoiseKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseKeys")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn params() -> NoiseParams {
    NOISE_PROTOCOL
        .parse()
        .unwrap_or_else(|e| unreachable!("{NOISE_PROTOCOL} is a valid protocol name: {e}"))
}

/// snow's default pure-Rust primitives, with randomness from a seed we pass in: the handshake
/// reads no ambient randomness (tests replay exactly; the driver seeds from the OS).
struct Resolver {
    seed: [u8; 32],
}

struct SeededRandom(StdRng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(StdRng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

#[cfg(test)]
mod tests;
