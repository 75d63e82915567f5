//! What the mailbox server persists: the records, the changes the driver commits
//! ([`StoreOp`]), and [`Core::restore`], which loads them at start-up.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use wire::key::{PUBLIC_KEY_BYTES, PublicKey};
use wire::mailbox::{MessageId, NodeId};

use super::{Core, MESSAGE_OVERHEAD_BYTES, Mailbox, Message};

/// Who may open a mailbox: the holder of a secret (`REGISTER`, PyP2P's HTTP password), or of
/// a key (`CHALLENGE` / `REGISTER_KEY`; the mailbox's name is derived from the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// `sha256(salt ‖ len(node_id) ‖ node_id ‖ secret)`.
    Secret([u8; 32]),
    /// The Ed25519 key that proved it owns the mailbox. No secret opens it.
    Key(PublicKey),
}

/// The first byte of a stored key owner (`K`, then the 32 key bytes): 33 bytes, never the
/// 32 of a secret hash, so old databases read as they are.
const KEY_OWNER_TAG: u8 = b'K';

impl Owner {
    /// Its stored form: a secret hash as its 32 bytes, a key as `K` and the key's 32 bytes.
    pub fn to_stored(&self) -> Vec<u8> {
        match self {
            Owner::Secret(hash) => hash.to_vec(),
            Owner::Key(key) => {
                let mut out = Vec::with_capacity(1 + PUBLIC_KEY_BYTES);
                out.push(KEY_OWNER_TAG);
                out.extend_from_slice(key.as_bytes());
                out
            }
        }
    }

    /// Reads [`to_stored`](Self::to_stored)'s form; `Err` says what is wrong.
    pub fn from_stored(bytes: &[u8]) -> Result<Owner, String> {
        if let Ok(hash) = <[u8; 32]>::try_from(bytes) {
            return Ok(Owner::Secret(hash));
        }
        match bytes.split_first() {
            Some((&KEY_OWNER_TAG, key)) => {
                let key = <[u8; PUBLIC_KEY_BYTES]>::try_from(key)
                    .map_err(|_| format!("key owner of {} bytes, not 33", bytes.len()))?;
                PublicKey::from_bytes(&key)
                    .map(Owner::Key)
                    .map_err(|e| e.to_string())
            }
            _ => Err(format!(
                "owner of {} bytes: neither a 32-byte secret hash nor a 33-byte key",
                bytes.len()
            )),
        }
    }
}

/// A mailbox as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRecord {
    /// Its name.
    pub node_id: NodeId,
    /// Who may open it.
    pub owner: Owner,
    /// When its owner was last seen (Unix time, milliseconds).
    pub last_seen_unix_ms: u64,
    /// PyP2P's `network_id` (for `find_neighbours`).
    pub network_id: String,
    /// The address its owner last registered from (for `find_neighbours`).
    pub ip: Option<IpAddr>,
    /// The port its owner announced over HTTP (0 if none).
    pub port: u16,
}

/// A message as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Its id.
    pub id: MessageId,
    /// The recipient mailbox.
    pub to: NodeId,
    /// The proven sender, if any.
    pub from: Option<NodeId>,
    /// The message.
    pub body: String,
    /// When it expires (Unix time, milliseconds).
    pub expires_unix_ms: u64,
}

/// A change the driver must persist, drained with [`Core::poll_store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace a mailbox.
    PutMailbox(MailboxRecord),
    /// Remove a mailbox (its messages are removed with their own ops).
    DeleteMailbox(NodeId),
    /// Insert a message.
    PutMessage(MessageRecord),
    /// Remove a message.
    DeleteMessage(MessageId),
}

/// What [`Core::restore`] kept and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Mailboxes restored.
    pub mailboxes: usize,
    /// Messages restored.
    pub messages: usize,
    /// Records dropped because they expired while the server was down (or were orphans).
    pub dropped: usize,
}

impl Core {
    /// Loads persisted state (at start-up, before any connection). Records that expired while
    /// the server was down are dropped, and their deletion is queued for the store. Limits are
    /// not applied: nothing that was accepted is dropped because a limit was lowered. New
    /// message ids start at `next_message_id` (or after the largest restored id).
    pub fn restore(
        &mut self,
        now: Instant,
        mailboxes: Vec<MailboxRecord>,
        mut messages: Vec<MessageRecord>,
        next_message_id: u64,
    ) -> Restored {
        let mut restored = Restored::default();
        self.next_message_id = self.next_message_id.max(next_message_id);
        let now_ms = self.unix_ms(now);
        for record in mailboxes {
            let seen_ms_ago = now_ms.saturating_sub(record.last_seen_unix_ms);
            if Duration::from_millis(seen_ms_ago) >= self.config.mailbox_ttl {
                restored.dropped += 1;
                self.queue_store(StoreOp::DeleteMailbox(record.node_id));
                continue;
            }
            let node_id = record.node_id.clone();
            self.insert_mailbox(node_id, Mailbox::from_record(record, now, seen_ms_ago));
            restored.mailboxes += 1;
        }
        messages.sort_by_key(|m| m.id);
        for record in messages {
            let id = record.id.0;
            self.next_message_id = self.next_message_id.max(id.saturating_add(1));
            if !self.mailboxes.contains_key(&record.to) {
                restored.dropped += 1;
                self.queue_store(StoreOp::DeleteMessage(record.id));
                continue;
            }
            if record.expires_unix_ms <= now_ms {
                restored.dropped += 1;
                self.queue_store(StoreOp::DeleteMessage(record.id));
                continue;
            }
            self.insert_message(now, now_ms, record);
            restored.messages += 1;
        }
        restored
    }

    /// Adds a stored message (restored, or stored by another instance) unless its id is
    /// known or its mailbox is not; returns whether it was added. Queues nothing for the store.
    pub(super) fn insert_message(
        &mut self,
        now: Instant,
        now_ms: u64,
        record: MessageRecord,
    ) -> bool {
        let id = record.id.0;
        if self.messages.contains_key(&id) {
            return false;
        }
        let Some(mailbox) = self.mailboxes.get_mut(&record.to) else {
            return false;
        };
        let expires_at = now + Duration::from_millis(record.expires_unix_ms.saturating_sub(now_ms));
        let len = record.body.len();
        mailbox.messages.insert(id);
        mailbox.bytes += len;
        self.stored_bytes += len + MESSAGE_OVERHEAD_BYTES;
        self.expiry.insert((expires_at, id));
        self.messages.insert(
            id,
            Message {
                to: record.to,
                from: record.from,
                body: record.body.into_boxed_str(),
                expires_at,
            },
        );
        true
    }
}
