//! Changes made by other instances on a shared backend (`--backend redis://...`): applied to
//! this instance's copy of the state without being stored again, and delivered (a message for
//! a mailbox whose owner is subscribed here is pushed at once). Also [`Core::resync`], which
//! makes the copy equal to the backend's full state after a lost subscription.

use std::collections::HashSet;
use std::time::Instant;

use wire::mailbox::NodeId;

use super::rules::mailbox_cost;
use super::{Core, MESSAGE_OVERHEAD_BYTES, Mailbox, MailboxRecord, MessageRecord, StoreOp};

impl Core {
    /// New message ids start at `base` (an instance's share of the id space on a shared
    /// backend: no two instances hand out the same id).
    pub fn set_message_id_base(&mut self, base: u64) {
        self.next_message_id = base.max(1);
    }

    /// Applies changes another instance stored; messages are delivered to local subscribers
    /// and waiting HTTP `list`s.
    pub fn apply_remote(&mut self, now: Instant, ops: Vec<StoreOp>) {
        let now_ms = self.unix_ms(now);
        self.stats.backend.ops_received += ops.len() as u64;
        for op in ops {
            match op {
                StoreOp::PutMailbox(record) => self.put_remote_mailbox(now, now_ms, record),
                StoreOp::DeleteMailbox(node_id) => self.drop_mailbox(&node_id),
                StoreOp::PutMessage(record) => {
                    let (to, id) = (record.to.clone(), record.id.0);
                    if self.insert_message(now, now_ms, record) {
                        self.deliver(now, &to, id);
                    }
                }
                StoreOp::DeleteMessage(id) => {
                    self.forget_message(id.0);
                }
            }
        }
    }

    /// Makes this instance's copy equal to the backend's full state (after the subscription
    /// was lost and re-established): what is gone is dropped, what is new is added and
    /// delivered.
    pub fn resync(
        &mut self,
        now: Instant,
        mailboxes: Vec<MailboxRecord>,
        messages: Vec<MessageRecord>,
    ) {
        let keep_boxes: HashSet<NodeId> = mailboxes.iter().map(|m| m.node_id.clone()).collect();
        let gone: Vec<NodeId> = self
            .mailboxes
            .keys()
            .filter(|id| !keep_boxes.contains(*id))
            .cloned()
            .collect();
        for node_id in gone {
            self.drop_mailbox(&node_id);
        }
        let keep_msgs: HashSet<u64> = messages.iter().map(|m| m.id.0).collect();
        let gone: Vec<u64> = self
            .messages
            .keys()
            .filter(|id| !keep_msgs.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.forget_message(id);
        }
        let mut ops: Vec<StoreOp> = mailboxes.into_iter().map(StoreOp::PutMailbox).collect();
        ops.extend(messages.into_iter().map(StoreOp::PutMessage));
        self.apply_remote(now, ops);
    }

    fn put_remote_mailbox(&mut self, now: Instant, now_ms: u64, record: MailboxRecord) {
        let seen_ms_ago = now_ms.saturating_sub(record.last_seen_unix_ms);
        let node_id = record.node_id.clone();
        let fresh = Mailbox::from_record(record, now, seen_ms_ago);
        if let Some(mailbox) = self.mailboxes.get_mut(&node_id) {
            let old_cost = mailbox_cost(&node_id, &mailbox.network_id);
            mailbox.owner = fresh.owner;
            mailbox.last_seen = mailbox.last_seen.max(fresh.last_seen);
            mailbox.persisted_seen = mailbox.persisted_seen.max(fresh.last_seen);
            mailbox.ip = fresh.ip;
            mailbox.port = fresh.port;
            mailbox.network_id = fresh.network_id;
            let new_cost = mailbox_cost(&node_id, &mailbox.network_id);
            self.stored_bytes = self.stored_bytes - old_cost + new_cost;
            return;
        }
        self.insert_mailbox(node_id, fresh);
    }

    /// Drops a mailbox and its messages from memory (no store op).
    fn drop_mailbox(&mut self, node_id: &NodeId) {
        let Some(mailbox) = self.mailboxes.remove(node_id) else {
            return;
        };
        for id in &mailbox.messages {
            if let Some(message) = self.messages.remove(id) {
                self.expiry.remove(&(message.expires_at, *id));
                self.stored_bytes -= message.body.len() + MESSAGE_OVERHEAD_BYTES;
            }
        }
        self.stored_bytes -= mailbox_cost(node_id, &mailbox.network_id);
    }
}
