//! Signed registration (`CHALLENGE` / `REGISTER_KEY`, see [`wire::mailbox`]): a client asks
//! for a challenge, signs it with its Ed25519 key, and owns the mailbox named after the key.
//! No secret is stored; a key's mailbox cannot be opened with a secret.
//!
//! Refusals, each an `ERROR` saying which: a `REGISTER_KEY` with no challenge on its
//! connection (each challenge answers one `REGISTER_KEY`), a proof that does not verify
//! against this connection's challenge (signed for another challenge, for another server
//! name, or not by the key it names), a proof already used (kept for the last
//! [`USED_PROOFS_KEPT`] registrations), and the rate limits: failed proofs and new mailboxes
//! spend the IP's registration budget (as wrong secrets and new mailboxes do), and every
//! successful registration spends the key's own budget (`--register-rate-per-key`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use server_kit::ConnId;
use sha2::{Digest as _, Sha256};
use tracing::info;
use wire::key::PublicKey;
use wire::mailbox::{NodeId, Reply};
use wire::overlay::Nonce;
use wire::signal::{RegisterChallenge, RegisterProof};

use super::rate::{Bucket, retry_text};
use super::{Core, Denied, Mailbox, Owner};

/// Why signed registrations (and secrets for a key's mailbox) are refused, as metric label
/// values, in the order of [`super::Stats::key_refusals`].
pub const KEY_REFUSALS: [&str; 8] = [
    "malformed",
    "no_challenge",
    "bad_proof",
    "replayed",
    "rate_limited_ip",
    "rate_limited_key",
    "secret_for_key_mailbox",
    "full",
];

/// Indexes into [`KEY_REFUSALS`].
pub(super) mod reason {
    pub(in crate::core) const MALFORMED: usize = 0;
    pub(in crate::core) const NO_CHALLENGE: usize = 1;
    pub(in crate::core) const BAD_PROOF: usize = 2;
    pub(in crate::core) const REPLAYED: usize = 3;
    pub(in crate::core) const RATE_IP: usize = 4;
    pub(in crate::core) const RATE_KEY: usize = 5;
    pub(in crate::core) const SECRET_FOR_KEY: usize = 6;
    pub(in crate::core) const FULL: usize = 7;
}

/// How many used proofs are remembered to name a replay as such (16 bytes each, twice).
pub const USED_PROOFS_KEPT: usize = 16_384;

/// What signed registration keeps: the nonce generator, the per-key budgets, the proofs used.
pub(super) struct KeyState {
    rng: StdRng,
    buckets: HashMap<PublicKey, Bucket>,
    used: HashSet<[u8; 16]>,
    used_order: VecDeque<[u8; 16]>,
}

impl std::fmt::Debug for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyState")
            .field("buckets", &self.buckets.len())
            .field("used", &self.used.len())
            .finish_non_exhaustive()
    }
}

impl KeyState {
    /// Nonces seeded from the salt and the start time, so a core is reproducible in tests;
    /// the server reseeds it from the OS ([`Core::seed_challenges`]).
    pub(super) fn new(salt: &[u8; 32], wall: SystemTime) -> KeyState {
        let nanos = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let seed: [u8; 32] = Sha256::new()
            .chain_update(b"dht-msg challenge nonces\0")
            .chain_update(salt)
            .chain_update(nanos.to_be_bytes())
            .finalize()
            .into();
        KeyState {
            rng: StdRng::from_seed(seed),
            buckets: HashMap::new(),
            used: HashSet::new(),
            used_order: VecDeque::new(),
        }
    }

    fn seen(&self, proof: &RegisterProof) -> bool {
        self.used.contains(&proof_id(proof))
    }

    fn remember(&mut self, proof: &RegisterProof) {
        let id = proof_id(proof);
        if self.used.insert(id) {
            self.used_order.push_back(id);
        }
        while self.used_order.len() > USED_PROOFS_KEPT {
            if let Some(old) = self.used_order.pop_front() {
                self.used.remove(&old);
            }
        }
    }
}

/// A used proof's name: the first 16 bytes of its signature's `R` (Ed25519 signatures are
/// deterministic, so the same challenge signed again is the same proof).
fn proof_id(proof: &RegisterProof) -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(&proof.signature[..16]);
    id
}

impl Core {
    /// Reseeds the challenge nonces (the server calls it once with randomness from the OS).
    pub fn seed_challenges(&mut self, seed: [u8; 32]) {
        self.keys.rng = StdRng::from_seed(seed);
    }

    /// The server's name in a challenge on connection `local`: `--name`, or the address the
    /// client dialed (`ip:port`, `[v6]:port`).
    fn server_name(&self, local: SocketAddr) -> String {
        self.config.name.clone().unwrap_or_else(|| {
            // Without a scope id: `%` is no part of a server name.
            SocketAddr::new(local.ip(), local.port()).to_string()
        })
    }

    /// `CHALLENGE`: a fresh nonce for this connection (replacing any earlier one).
    pub(super) fn send_challenge(&mut self, id: ConnId) {
        let Some(local) = self.conn(id).map(|c| c.local) else {
            return;
        };
        let challenge = RegisterChallenge {
            server: self.server_name(local),
            nonce: Nonce(self.keys.rng.random()),
        };
        if let Some(conn) = self.conn_mut(id) {
            conn.challenge = Some(challenge.clone());
        }
        self.send(id, &Reply::Challenge(challenge));
    }

    fn key_refused(&mut self, id: ConnId, reason: usize, denied: &Denied) {
        self.stats.key_refusals[reason] += 1;
        self.refuse(id, denied);
    }

    /// `REGISTER_KEY`: checks the proof against this connection's challenge and opens (or
    /// creates) the key's mailbox.
    pub(super) fn register_key(&mut self, now: Instant, id: ConnId, proof: &RegisterProof) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let ip = conn.peer.ip();
        let challenge = conn.challenge.take();
        let key = proof.key;
        let node_id = key.mailbox_name();
        if self.keys.seen(proof) {
            let why = format!(
                "REGISTER_KEY: replayed proof: this signature by {key} was already used to \
                 register mailbox {node_id}; ask for a new CHALLENGE"
            );
            return self.key_refused(id, reason::REPLAYED, &Denied::new(403, why));
        }
        let Some(challenge) = challenge else {
            let why = "REGISTER_KEY: no CHALLENGE to answer on this connection (each \
                       challenge answers one REGISTER_KEY): send CHALLENGE first";
            return self.key_refused(id, reason::NO_CHALLENGE, &Denied::new(400, why.into()));
        };
        let (rate, burst) = (
            self.config.register_rate_per_ip,
            self.config.register_burst_per_ip,
        );
        if !self.buckets(now, ip).register.has_token(now, rate, burst) {
            let why = format!(
                "REGISTER_KEY: too many registrations or failed proofs from {ip}, retry later"
            );
            return self.key_refused(id, reason::RATE_IP, &Denied::new(429, why));
        }
        if proof.verify(&challenge).is_err() {
            let _ = self.take_register_token(now, ip, "REGISTER_KEY");
            let why = format!(
                "REGISTER_KEY: the signature by {key} does not answer this connection's \
                 challenge ({challenge}): signed for another challenge or another server \
                 name, or not by this key"
            );
            return self.key_refused(id, reason::BAD_PROOF, &Denied::new(403, why));
        }
        let (rate, burst) = (
            self.config.register_rate_per_key,
            self.config.register_burst_per_key,
        );
        let bucket = self
            .keys
            .buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now));
        if let Err(wait) = bucket.take(now, rate, burst) {
            let why = format!(
                "REGISTER_KEY: too many registrations by key {key} (limit {rate}/s, burst \
                 {burst}), retry {}",
                retry_text(wait)
            );
            return self.key_refused(id, reason::RATE_KEY, &Denied::new(429, why));
        }
        let created = match self.open_key_mailbox(now, ip, &node_id, key, id) {
            Ok(created) => created,
            Err(denied) => {
                let reason = if denied.status == 429 {
                    reason::RATE_IP
                } else {
                    reason::FULL
                };
                return self.key_refused(id, reason, &denied);
            }
        };
        self.keys.remember(proof);
        self.stats.registrations[1] += 1;
        if self.owner(id).as_ref() != Some(&node_id) {
            self.unsubscribe(id);
        }
        if let Some(conn) = self.conn_mut(id) {
            conn.owner = Some(node_id.clone());
        }
        self.send(id, &Reply::Registered { node_id, created });
    }

    /// Opens the mailbox of `key` for connection `by`, creating it if needed (true if
    /// created). A mailbox of that name registered with a secret is claimed by the key: the
    /// secret stops working and connections that proved it lose the mailbox.
    fn open_key_mailbox(
        &mut self,
        now: Instant,
        ip: IpAddr,
        node_id: &NodeId,
        key: PublicKey,
        by: ConnId,
    ) -> Result<bool, Denied> {
        if let Some(mailbox) = self.mailboxes.get_mut(node_id) {
            let claimed = mailbox.owner != Owner::Key(key);
            let moved = mailbox.ip != Some(ip);
            mailbox.owner = Owner::Key(key);
            mailbox.ip = Some(ip);
            if claimed {
                info!(mailbox = %node_id, %key, "mailbox claimed by its key (its secret no longer opens it)");
                self.disown(node_id, by);
            }
            if claimed || moved {
                self.persist_mailbox(now, node_id);
            }
            self.touch(now, node_id);
            return Ok(false);
        }
        self.room_for_mailbox("REGISTER_KEY", node_id, "default")?;
        self.take_register_token(now, ip, "REGISTER_KEY")?;
        let mailbox = Mailbox::new(Owner::Key(key), "default".into(), Some(ip), 0, now);
        self.insert_mailbox(node_id.clone(), mailbox);
        self.persist_mailbox(now, node_id);
        self.stats.registered += 1;
        info!(mailbox = %node_id, %ip, %key, "mailbox registered by key");
        Ok(true)
    }

    /// Every connection but `except` that owns `node_id` loses it (told with an `ERROR`).
    fn disown(&mut self, node_id: &NodeId, except: ConnId) {
        let owners: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, c)| *id != except && c.owner.as_ref() == Some(node_id))
            .map(|(id, _)| id)
            .collect();
        for id in owners {
            self.unsubscribe(id);
            if let Some(conn) = self.conn_mut(id) {
                conn.owner = None;
            }
            let why = format!(
                "mailbox {node_id} was claimed by its key (REGISTER_KEY): this connection's \
                 secret no longer opens it"
            );
            self.send(id, &Reply::error(&why));
        }
    }

    /// Drops per-key budgets that are full again (nothing to remember).
    pub(super) fn prune_key_buckets(&mut self, now: Instant) {
        let (rate, burst) = (
            self.config.register_rate_per_key,
            self.config.register_burst_per_key,
        );
        self.keys
            .buckets
            .retain(|_, b| !b.is_full(now, rate, burst));
    }
}
