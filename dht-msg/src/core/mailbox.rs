//! A mailbox and a stored message, as the core keeps them in memory.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use server_kit::ConnId;
use wire::mailbox::{Delivery, MessageId, NodeId};

use super::records::{MailboxRecord, Owner};

#[derive(Debug)]
pub(super) struct Mailbox {
    pub(super) owner: Owner,
    /// Ids of its pending messages, oldest first.
    pub(super) messages: BTreeSet<u64>,
    pub(super) bytes: usize,
    pub(super) subscriber: Option<ConnId>,
    pub(super) waiters: Vec<ConnId>,
    pub(super) last_seen: Instant,
    pub(super) persisted_seen: Instant,
    pub(super) network_id: String,
    pub(super) ip: Option<IpAddr>,
    pub(super) port: u16,
}

impl Mailbox {
    /// A mailbox without messages, subscriber or waiters, last seen at `last_seen`.
    pub(super) fn new(
        owner: Owner,
        network_id: String,
        ip: Option<IpAddr>,
        port: u16,
        last_seen: Instant,
    ) -> Mailbox {
        Mailbox {
            owner,
            messages: BTreeSet::new(),
            bytes: 0,
            subscriber: None,
            waiters: Vec::new(),
            last_seen,
            persisted_seen: last_seen,
            network_id,
            ip,
            port,
        }
    }

    /// A stored mailbox, seen `seen_ms_ago` before `now`.
    pub(super) fn from_record(record: MailboxRecord, now: Instant, seen_ms_ago: u64) -> Mailbox {
        let last_seen = now
            .checked_sub(Duration::from_millis(seen_ms_ago))
            .unwrap_or(now);
        Mailbox::new(
            record.owner,
            record.network_id,
            record.ip,
            record.port,
            last_seen,
        )
    }
}

#[derive(Debug)]
pub(super) struct Message {
    pub(super) to: NodeId,
    pub(super) from: Option<NodeId>,
    pub(super) body: Box<str>,
    pub(super) expires_at: Instant,
}

impl Message {
    pub(super) fn delivery(&self, id: u64) -> Delivery {
        Delivery {
            id: MessageId(id),
            from: self.from.clone(),
            body: self.body.to_string(),
        }
    }
}
