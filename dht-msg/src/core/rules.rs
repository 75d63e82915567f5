//! The mailbox rules both protocols share: secrets, registration, `PUT` with its quotas and
//! rate limits, delivery to a subscriber or a waiting HTTP `list`, deletion and expiry, and
//! what is queued for the store.

use std::net::IpAddr;
use std::time::{Instant, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use tracing::{debug, info};
use wire::mailbox::{self, Delivery, MessageId, NodeId, Secret};

use super::keys::reason;
use super::rate::{Bucket, IpBuckets, retry_text};
use super::{
    Core, Denied, MAILBOX_OVERHEAD_BYTES, MESSAGE_OVERHEAD_BYTES, Mailbox, MailboxRecord, Message,
    MessageRecord, Owner, StoreOp, TOUCH_PERSIST_INTERVAL,
};

impl Core {
    // ----- time ----------------------------------------------------------------------------

    pub(super) fn unix_ms(&self, now: Instant) -> u64 {
        let wall = self.clock_base.1 + now.saturating_duration_since(self.clock_base.0);
        wall.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn unix_ms_at(&self, now: Instant, at: Instant) -> u64 {
        let base = self.unix_ms(now);
        let delta = u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(0);
        base.saturating_add(delta)
    }

    // ----- persistence ---------------------------------------------------------------------

    /// Adds `mailbox` under `node_id`, its cost charged against `max_stored_bytes`.
    pub(super) fn insert_mailbox(&mut self, node_id: NodeId, mailbox: Mailbox) {
        self.stored_bytes += mailbox_cost(&node_id, &mailbox.network_id);
        self.mailboxes.insert(node_id, mailbox);
    }

    pub(super) fn queue_store(&mut self, op: StoreOp) {
        if self.persist {
            self.store_ops.push(op);
        }
    }

    pub(super) fn persist_mailbox(&mut self, now: Instant, node_id: &NodeId) {
        if !self.persist {
            return;
        }
        let Some(mailbox) = self.mailboxes.get_mut(node_id) else {
            return;
        };
        mailbox.persisted_seen = mailbox.last_seen;
        let last_seen = mailbox.last_seen;
        let record = MailboxRecord {
            node_id: node_id.clone(),
            owner: mailbox.owner,
            last_seen_unix_ms: 0,
            network_id: mailbox.network_id.clone(),
            ip: mailbox.ip,
            port: mailbox.port,
        };
        let last_seen_unix_ms = self.unix_ms(now).saturating_sub(
            u64::try_from(now.saturating_duration_since(last_seen).as_millis()).unwrap_or(0),
        );
        self.store_ops.push(StoreOp::PutMailbox(MailboxRecord {
            last_seen_unix_ms,
            ..record
        }));
    }

    /// The owner was seen: postpone its mailbox's expiry.
    pub(super) fn touch(&mut self, now: Instant, node_id: &NodeId) {
        let Some(mailbox) = self.mailboxes.get_mut(node_id) else {
            return;
        };
        mailbox.last_seen = now;
        if now.saturating_duration_since(mailbox.persisted_seen) >= TOUCH_PERSIST_INTERVAL {
            self.persist_mailbox(now, node_id);
        }
    }

    // ----- the mailbox rules, shared by both protocols ------------------------------------------

    pub(super) fn hash_secret(&self, node_id: &NodeId, secret: &Secret) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.salt);
        // The id's length keeps (id, secret) pairs from colliding by shifting bytes across.
        hasher.update([u8::try_from(node_id.as_str().len()).unwrap_or(u8::MAX)]);
        hasher.update(node_id.as_str().as_bytes());
        hasher.update(secret.expose().as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(&hasher.finalize());
        out
    }

    /// The rate-limit buckets of `ip`: shared by its IPv6 /64 ([`server_kit::caller_key`]),
    /// so that one subscriber cannot multiply its budget by its addresses.
    pub(super) fn buckets(&mut self, now: Instant, ip: IpAddr) -> &mut IpBuckets {
        let put_burst = self.config.put_burst_per_ip;
        let register_burst = self.config.register_burst_per_ip;
        self.buckets
            .entry(server_kit::caller_key(ip))
            .or_insert_with(|| IpBuckets {
                put: Bucket::full(put_burst, now),
                register: Bucket::full(register_burst, now),
            })
    }

    pub(super) fn take_register_token(
        &mut self,
        now: Instant,
        ip: IpAddr,
        verb: &str,
    ) -> Result<(), Denied> {
        let (rate, burst) = (
            self.config.register_rate_per_ip,
            self.config.register_burst_per_ip,
        );
        self.buckets(now, ip)
            .register
            .take(now, rate, burst)
            .map_err(|wait| {
                Denied::new(
                    429,
                    format!(
                        "{verb}: too many registrations or wrong secrets from {ip}, retry {}",
                        retry_text(wait)
                    ),
                )
            })
    }

    /// Checks a secret. Failed checks use up the IP's registration budget, so secrets cannot
    /// be guessed quickly; once it is spent, even correct secrets wait.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        ip: IpAddr,
        node_id: &NodeId,
        secret: &Secret,
        verb: &str,
    ) -> Result<(), Denied> {
        let (rate, burst) = (
            self.config.register_rate_per_ip,
            self.config.register_burst_per_ip,
        );
        if !self.buckets(now, ip).register.has_token(now, rate, burst) {
            return Err(Denied::new(
                429,
                format!("{verb}: too many wrong secrets from {ip}, retry later"),
            ));
        }
        let hash = self.hash_secret(node_id, secret);
        let Some(mailbox) = self.mailboxes.get(node_id) else {
            return Err(Denied::new(
                404,
                format!("{verb}: no mailbox {node_id} (REGISTER it first)"),
            ));
        };
        let Owner::Secret(secret_hash) = mailbox.owner else {
            self.stats.key_refusals[reason::SECRET_FOR_KEY] += 1;
            return Err(Denied::new(
                403,
                format!(
                    "{verb}: mailbox {node_id} belongs to a key: open it with CHALLENGE and \
                     REGISTER_KEY (no secret opens it)"
                ),
            ));
        };
        if !constant_time_eq(&secret_hash, &hash) {
            self.take_register_token(now, ip, verb)?;
            return Err(Denied::new(
                403,
                format!("{verb}: wrong secret for mailbox {node_id}"),
            ));
        }
        self.touch(now, node_id);
        Ok(())
    }

    /// Creates a mailbox, or proves ownership of an existing one. Returns true if created.
    pub(super) fn register(
        &mut self,
        now: Instant,
        ip: IpAddr,
        node_id: &NodeId,
        secret: &Secret,
        http: Option<(&str, u16)>,
    ) -> Result<bool, Denied> {
        if self.mailboxes.contains_key(node_id) {
            self.authenticate(now, ip, node_id, secret, "REGISTER")?;
            if let Some(mailbox) = self.mailboxes.get_mut(node_id) {
                let changed = http.is_some_and(|(network, port)| {
                    mailbox.network_id != network || mailbox.port != port
                }) || mailbox.ip != Some(ip);
                mailbox.ip = Some(ip);
                if let Some((network, port)) = http {
                    network.clone_into(&mut mailbox.network_id);
                    mailbox.port = port;
                }
                if changed {
                    self.persist_mailbox(now, node_id);
                }
            }
            self.stats.registrations[0] += 1;
            return Ok(false);
        }
        let (network_id, port) = http.unwrap_or(("default", 0));
        self.room_for_mailbox("REGISTER", node_id, network_id)?;
        self.take_register_token(now, ip, "REGISTER")?;
        let owner = Owner::Secret(self.hash_secret(node_id, secret));
        self.insert_mailbox(
            node_id.clone(),
            Mailbox::new(owner, network_id.to_string(), Some(ip), port, now),
        );
        self.persist_mailbox(now, node_id);
        self.stats.registered += 1;
        self.stats.registrations[0] += 1;
        info!(mailbox = %node_id, %ip, "mailbox registered");
        Ok(true)
    }

    /// Refuses a new mailbox (`verb` creating `node_id`) when the server holds the most it
    /// may, or its storage is full.
    pub(super) fn room_for_mailbox(
        &self,
        verb: &str,
        node_id: &NodeId,
        network_id: &str,
    ) -> Result<(), Denied> {
        if self.mailboxes.len() >= self.config.max_mailboxes {
            return Err(Denied::new(
                503,
                format!(
                    "{verb}: server holds the most mailboxes it may ({}), try later",
                    self.config.max_mailboxes
                ),
            ));
        }
        let cost = mailbox_cost(node_id, network_id);
        if self.stored_bytes + cost > self.config.max_stored_bytes {
            return Err(Denied::new(
                503,
                format!(
                    "{verb}: server storage full ({} of {} bytes), try later",
                    self.stored_bytes, self.config.max_stored_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Stores a message and delivers it to a subscriber or a waiting HTTP `list` at once.
    pub(super) fn put(
        &mut self,
        now: Instant,
        ip: IpAddr,
        to: &NodeId,
        from: Option<NodeId>,
        body: &str,
    ) -> Result<MessageId, Denied> {
        let (rate, burst) = (self.config.put_rate_per_ip, self.config.put_burst_per_ip);
        if let Err(wait) = self.buckets(now, ip).put.take(now, rate, burst) {
            return Err(Denied::new(
                429,
                format!(
                    "PUT: too many messages from {ip} (limit {rate}/s, burst {burst}), retry {}",
                    retry_text(wait)
                ),
            ));
        }
        let max_message = self.config.max_message_bytes;
        if body.len() > max_message {
            return Err(Denied::new(
                413,
                format!("PUT: message is {} bytes (limit {max_message})", body.len()),
            ));
        }
        if let Err(e) = mailbox::check_body(body) {
            return Err(Denied::new(400, format!("PUT: {e}")));
        }
        let (max_count, max_bytes) = (
            self.config.max_messages_per_mailbox,
            self.config.max_mailbox_bytes,
        );
        let Some(mailbox) = self.mailboxes.get(to) else {
            return Err(Denied::new(404, format!("PUT: no mailbox {to}")));
        };
        if mailbox.messages.len() >= max_count {
            return Err(Denied::new(
                507,
                format!(
                    "PUT: mailbox {to} is full ({} messages, limit {max_count}); \
                     its owner must read and ACK first",
                    mailbox.messages.len()
                ),
            ));
        }
        if mailbox.bytes + body.len() > max_bytes {
            return Err(Denied::new(
                507,
                format!(
                    "PUT: mailbox {to} is full ({} bytes held + {} would pass the limit {max_bytes})",
                    mailbox.bytes,
                    body.len()
                ),
            ));
        }
        let cost = body.len() + MESSAGE_OVERHEAD_BYTES;
        if self.stored_bytes + cost > self.config.max_stored_bytes {
            return Err(Denied::new(
                507,
                format!(
                    "PUT: server storage full ({} of {} bytes), try later",
                    self.stored_bytes, self.config.max_stored_bytes
                ),
            ));
        }
        let id = self.next_message_id;
        self.next_message_id += 1;
        let expires_at = now + self.config.message_ttl;
        let message = Message {
            to: to.clone(),
            from,
            body: body.into(),
            expires_at,
        };
        if self.persist {
            let expires_unix_ms = self.unix_ms_at(now, expires_at);
            self.store_ops.push(StoreOp::PutMessage(MessageRecord {
                id: MessageId(id),
                to: to.clone(),
                from: message.from.clone(),
                body: body.to_string(),
                expires_unix_ms,
            }));
        }
        self.messages.insert(id, message);
        self.expiry.insert((expires_at, id));
        self.stored_bytes += cost;
        self.stats.puts += 1;
        if let Some(mailbox) = self.mailboxes.get_mut(to) {
            mailbox.messages.insert(id);
            mailbox.bytes += body.len();
        }
        self.deliver(now, to, id);
        Ok(MessageId(id))
    }

    /// Message `id` for `to` was stored (here or on another instance): push it to the
    /// subscriber (in O(log n): a mailbox with many unacknowledged messages must not cost a
    /// scan per new one), answer waiting HTTP `list`s.
    pub(super) fn deliver(&mut self, now: Instant, to: &NodeId, id: u64) {
        let Some(mailbox) = self.mailboxes.get_mut(to) else {
            return;
        };
        let subscriber = mailbox.subscriber;
        let waiters = std::mem::take(&mut mailbox.waiters);
        if let Some(subscriber) = subscriber {
            self.push_ids(subscriber, [id]);
        }
        for waiter in waiters {
            self.answer_waiter(now, waiter);
        }
    }

    pub(super) fn pending(&self, node_id: &NodeId) -> Vec<Delivery> {
        self.mailboxes
            .get(node_id)
            .map_or_else(Vec::new, |mailbox| {
                mailbox
                    .messages
                    .iter()
                    .filter_map(|id| self.messages.get(id).map(|m| m.delivery(*id)))
                    .collect()
            })
    }

    /// Deletes one message (acknowledged, popped or expired).
    pub(super) fn remove_message(&mut self, id: u64) -> Option<Message> {
        let message = self.forget_message(id)?;
        self.queue_store(StoreOp::DeleteMessage(MessageId(id)));
        Some(message)
    }

    /// Drops one message from memory (no store op: another instance already deleted it).
    pub(super) fn forget_message(&mut self, id: u64) -> Option<Message> {
        let message = self.messages.remove(&id)?;
        self.expiry.remove(&(message.expires_at, id));
        let mut subscriber = None;
        if let Some(mailbox) = self.mailboxes.get_mut(&message.to) {
            mailbox.messages.remove(&id);
            mailbox.bytes -= message.body.len();
            subscriber = mailbox.subscriber;
        }
        // A subscription remembers only what is still pending.
        if let Some(sub) = subscriber
            .and_then(|c| self.conn_mut(c))
            .and_then(|c| c.subscription.as_mut())
        {
            sub.pushed.remove(&id);
        }
        self.stored_bytes -= message.body.len() + MESSAGE_OVERHEAD_BYTES;
        Some(message)
    }

    pub(super) fn expire_messages(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.expiry.first() {
            if at > now {
                break;
            }
            debug!(message = id, "message expired");
            self.remove_message(id);
            self.stats.expired += 1;
        }
    }

    pub(super) fn expire_mailboxes(&mut self, now: Instant) {
        let ttl = self.config.mailbox_ttl;
        let expired: Vec<NodeId> = self
            .mailboxes
            .iter()
            .filter(|(_, m)| {
                m.subscriber.is_none()
                    && m.waiters.is_empty()
                    && now.saturating_duration_since(m.last_seen) >= ttl
            })
            .map(|(id, _)| id.clone())
            .collect();
        for node_id in expired {
            let Some(mailbox) = self.mailboxes.remove(&node_id) else {
                continue;
            };
            for id in &mailbox.messages {
                if let Some(message) = self.messages.remove(id) {
                    self.expiry.remove(&(message.expires_at, *id));
                    self.stored_bytes -= message.body.len() + MESSAGE_OVERHEAD_BYTES;
                    self.queue_store(StoreOp::DeleteMessage(MessageId(*id)));
                    self.stats.expired += 1;
                }
            }
            self.stored_bytes -= mailbox_cost(&node_id, &mailbox.network_id);
            info!(mailbox = %node_id, "mailbox expired (owner not seen for the mailbox TTL)");
            self.queue_store(StoreOp::DeleteMailbox(node_id));
        }
    }

    pub(super) fn prune_buckets(&mut self, now: Instant) {
        let c = &self.config;
        let (put_rate, put_burst) = (c.put_rate_per_ip, c.put_burst_per_ip);
        let (reg_rate, reg_burst) = (c.register_rate_per_ip, c.register_burst_per_ip);
        let admission = &self.admission;
        self.buckets.retain(|ip, b| {
            admission.has(*ip)
                || !(b.put.is_full(now, put_rate, put_burst)
                    && b.register.is_full(now, reg_rate, reg_burst))
        });
    }
}

pub(super) fn mailbox_cost(node_id: &NodeId, network_id: &str) -> usize {
    MAILBOX_OVERHEAD_BYTES + node_id.as_str().len() + network_id.len()
}

pub(super) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
