//! The shared backend (`--backend redis://...`): several `dht-msg` instances keep one set of
//! mailboxes and messages in Redis, so a node may use any of them.
//!
//! ```text
//!  instance A ──commit: MULTI  HSET/HDEL  PUBLISH changes  EXEC──▶ Redis ──changes──▶ instance B
//!  (OK PUT only after EXEC)                                          (subscriber thread → loop)
//! ```
//! - **Writes**: the changes of one turn of A's loop go to Redis in one `MULTI … EXEC`
//!   (one round trip, whatever the number of `PUT`s and `ACK`s in the turn) *before* any reply
//!   of that turn is written ([`ServerCore::commit`](server_kit::ServerCore::commit)): an
//!   `OK PUT` means the message is in Redis, so killing any instance loses nothing accepted.
//!   The same transaction publishes the changes on [`CHANNEL`].
//! - **Reads**: every instance keeps a full copy in memory (the core's own tables), loaded at
//!   start and kept current by a subscriber thread (`server_kit::redis::Subscription`): a
//!   message `PUT` on A is pushed by B to its owner subscribed there, an `ACK` on B deletes it
//!   on A too. So `LIST`, `SUBSCRIBE`, pushes and secret checks cost no round trip.
//! - Message ids are `epoch << 32 | n`, `epoch` from `INCR` at start: unique across
//!   instances and restarts without a round trip per message.
//! - The secret-hash salt is shared (`SET NX` at start), so a secret registered on one
//!   instance checks out on every other.
//!
//! Keys (prefix [`PREFIX`]): `salt`, `epoch`, `mailboxes` (hash: node id → JSON record),
//! `messages` (hash: id → JSON record).
//!
//! Limits are checked against the instance's copy, so two instances accepting at the same
//! moment may pass a mailbox quota by a message or two; two first `REGISTER`s of one new node
//! id on two instances within one publish hop both succeed and the later write wins.

use std::net::IpAddr;

use redis::Commands as _;
use serde_json::{Value, json};
use server_kit::redis::{BackendError, RedisBackend};
use wire::mailbox::{MessageId, NodeId};

use crate::core::{MailboxRecord, MessageRecord, Owner, StoreOp};
use crate::store::Snapshot;

/// Every key and the channel start with this.
pub const PREFIX: &str = "p2p:dht-msg:";
/// The pub/sub channel of changes.
pub const CHANNEL: &str = "p2p:dht-msg:changes";

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// An instance's writer: its own connection, used from the event loop's commit.
pub struct RedisStore {
    backend: RedisBackend,
    conn: Option<redis::Connection>,
    instance: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.backend.url())
            .field("instance", &self.instance)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl RedisStore {
    /// Connects, agrees on the salt (`new_salt` if none is stored yet) and takes an epoch for
    /// message ids. Returns the store, the salt and the first message id.
    pub fn open(
        backend: RedisBackend,
        instance: String,
        new_salt: [u8; 32],
    ) -> Result<(RedisStore, [u8; 32], u64), BackendError> {
        let mut conn = backend.connect()?;
        let _: bool = conn
            .set_nx(key("salt"), hex(&new_salt))
            .map_err(|e| backend.error("SET salt", e))?;
        let stored: String = conn
            .get(key("salt"))
            .map_err(|e| backend.error("GET salt", e))?;
        let salt = unhex(&stored)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| backend.corrupt(&key("salt"), "not 64 hex digits"))?;
        let epoch: u64 = conn
            .incr(key("epoch"), 1)
            .map_err(|e| backend.error("INCR epoch", e))?;
        let store = RedisStore {
            backend,
            conn: Some(conn),
            instance,
        };
        Ok((store, salt, (epoch << 32) | 1))
    }

    /// Writes `ops` and publishes them in one transaction. A failed attempt is retried once on
    /// a new connection (Redis restarted, a connection dropped).
    pub fn apply(&mut self, ops: &[StoreOp]) -> Result<(), BackendError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for op in ops {
            match op {
                StoreOp::PutMailbox(m) => {
                    pipe.hset(
                        key("mailboxes"),
                        m.node_id.as_str(),
                        mailbox_json(m).to_string(),
                    )
                    .ignore();
                }
                StoreOp::DeleteMailbox(id) => {
                    pipe.hdel(key("mailboxes"), id.as_str()).ignore();
                }
                StoreOp::PutMessage(m) => {
                    pipe.hset(key("messages"), m.id.0, message_json(m).to_string())
                        .ignore();
                }
                StoreOp::DeleteMessage(id) => {
                    pipe.hdel(key("messages"), id.0).ignore();
                }
            }
        }
        pipe.publish(CHANNEL, encode_changes(&self.instance, ops))
            .ignore();
        let mut last = None;
        for _attempt in 0..2 {
            let conn = match self.conn.as_mut() {
                Some(conn) => conn,
                None => self.conn.insert(self.backend.connect()?),
            };
            match pipe.query::<()>(conn) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.conn = None;
                    last = Some(e);
                }
            }
        }
        Err(self.backend.error(
            "MULTI/EXEC of a batch of changes",
            last.unwrap_or_else(|| redis::RedisError::from(std::io::Error::other("no attempt"))),
        ))
    }
}

/// Loads every mailbox and message (at start and after a lost subscription).
pub fn load(backend: &RedisBackend) -> Result<Snapshot, BackendError> {
    let mut conn = backend.connect()?;
    let boxes: Vec<(String, String)> = conn
        .hgetall(key("mailboxes"))
        .map_err(|e| backend.error("HGETALL mailboxes", e))?;
    let msgs: Vec<(u64, String)> = conn
        .hgetall(key("messages"))
        .map_err(|e| backend.error("HGETALL messages", e))?;
    Ok(Snapshot {
        mailboxes: decode_all(backend, "mailboxes", boxes, mailbox_from)?,
        messages: decode_all(backend, "messages", msgs, message_from)?,
        ..Snapshot::default()
    })
}

/// Decodes the JSON records of hash `hash` (`HGETALL` rows), or names the first that does not.
fn decode_all<K: std::fmt::Display, R>(
    backend: &RedisBackend,
    hash: &str,
    rows: Vec<(K, String)>,
    decode: fn(&Value) -> Option<R>,
) -> Result<Vec<R>, BackendError> {
    rows.into_iter()
        .map(|(field, text)| {
            serde_json::from_str(&text)
                .ok()
                .and_then(|v| decode(&v))
                .ok_or_else(|| backend.corrupt(&format!("{hash}/{field}"), text))
        })
        .collect()
}

/// A published batch: `{"origin": instance, "ops": [...]}`.
pub fn encode_changes(origin: &str, ops: &[StoreOp]) -> String {
    let ops: Vec<Value> = ops
        .iter()
        .map(|op| match op {
            StoreOp::PutMailbox(m) => json!({"put_mailbox": mailbox_json(m)}),
            StoreOp::DeleteMailbox(id) => json!({"delete_mailbox": id.as_str()}),
            StoreOp::PutMessage(m) => json!({"put_message": message_json(m)}),
            StoreOp::DeleteMessage(id) => json!({"delete_message": id.0}),
        })
        .collect();
    json!({"origin": origin, "ops": ops}).to_string()
}

/// The changes of a published batch, unless `own` published it (or it does not decode).
pub fn decode_changes(payload: &[u8], own: &str) -> Option<Vec<StoreOp>> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    if v.get("origin")?.as_str()? == own {
        return None;
    }
    v.get("ops")?
        .as_array()?
        .iter()
        .map(|op| {
            if let Some(m) = op.get("put_mailbox") {
                mailbox_from(m).map(StoreOp::PutMailbox)
            } else if let Some(id) = op.get("delete_mailbox") {
                id.as_str()?.parse().ok().map(StoreOp::DeleteMailbox)
            } else if let Some(m) = op.get("put_message") {
                message_from(m).map(StoreOp::PutMessage)
            } else {
                op.get("delete_message")?
                    .as_u64()
                    .map(|id| StoreOp::DeleteMessage(MessageId(id)))
            }
        })
        .collect()
}

fn mailbox_json(m: &MailboxRecord) -> Value {
    json!({
        "node_id": m.node_id.as_str(),
        "secret_hash": match m.owner {
            Owner::Secret(hash) => Some(hex(&hash)),
            Owner::Key(_) => None,
        },
        "key": match m.owner {
            Owner::Key(key) => Some(key.to_string()),
            Owner::Secret(_) => None,
        },
        "last_seen_unix_ms": m.last_seen_unix_ms,
        "network_id": m.network_id,
        "ip": m.ip.map(|ip| ip.to_string()),
        "port": m.port,
    })
}

fn mailbox_from(v: &Value) -> Option<MailboxRecord> {
    let ip = match v.get("ip")? {
        Value::Null => None,
        ip => Some(ip.as_str()?.parse::<IpAddr>().ok()?),
    };
    Some(MailboxRecord {
        node_id: v.get("node_id")?.as_str()?.parse().ok()?,
        owner: match v.get("key").and_then(Value::as_str) {
            Some(key) => Owner::Key(key.parse().ok()?),
            None => Owner::Secret(unhex(v.get("secret_hash")?.as_str()?)?.try_into().ok()?),
        },
        last_seen_unix_ms: v.get("last_seen_unix_ms")?.as_u64()?,
        network_id: v.get("network_id")?.as_str()?.to_owned(),
        ip,
        port: u16::try_from(v.get("port")?.as_u64()?).ok()?,
    })
}

fn message_json(m: &MessageRecord) -> Value {
    json!({
        "id": m.id.0,
        "to": m.to.as_str(),
        "from": m.from.as_ref().map(NodeId::as_str),
        "body": m.body,
        "expires_unix_ms": m.expires_unix_ms,
    })
}

fn message_from(v: &Value) -> Option<MessageRecord> {
    let from = match v.get("from")? {
        Value::Null => None,
        from => Some(from.as_str()?.parse().ok()?),
    };
    Some(MessageRecord {
        id: MessageId(v.get("id")?.as_u64()?),
        to: v.get("to")?.as_str()?.parse().ok()?,
        from,
        body: v.get("body")?.as_str()?.to_owned(),
        expires_unix_ms: v.get("expires_unix_ms")?.as_u64()?,
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_own_changes_are_skipped() {
        let bob: NodeId = "bob".parse().unwrap();
        let ops = vec![
            StoreOp::PutMailbox(MailboxRecord {
                node_id: bob.clone(),
                owner: Owner::Secret([7; 32]),
                last_seen_unix_ms: 42,
                network_id: "default".into(),
                ip: Some("192.0.2.1".parse().unwrap()),
                port: 0,
            }),
            StoreOp::PutMessage(MessageRecord {
                id: MessageId((3 << 32) | 9),
                to: bob.clone(),
                from: None,
                body: "REVERSE_CONNECT:x:y \"quoted\"".into(),
                expires_unix_ms: 99,
            }),
            StoreOp::DeleteMessage(MessageId(5)),
            StoreOp::DeleteMailbox(bob),
        ];
        let text = encode_changes("a", &ops);
        assert_eq!(decode_changes(text.as_bytes(), "b"), Some(ops));
        assert_eq!(decode_changes(text.as_bytes(), "a"), None);
        assert_eq!(decode_changes(b"{not json", "b"), None);
    }
}
