//! Persistence in a [redb](https://www.redb.org) database (`<data-dir>/dht-msg.redb`): crash-safe
//! ACID transactions, no hand-written file format.
//!
//! Three tables: `meta` (the secret-hash salt), `mailboxes` (node id → secret hash, last seen,
//! network id, IP, port) and `messages` (message id → recipient, sender, body, expiry). The driver
//! applies each batch of [`StoreOp`]s from one event-loop turn in one durable transaction, before
//! any reply of that turn is written.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use thiserror::Error;

use crate::core::{MailboxRecord, MessageRecord, Owner, StoreOp};
use wire::mailbox::{MessageId, NodeId};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// node id → (owner: 32-byte secret hash or `K` + 32-byte key, last seen Unix ms, network
/// id, IP or "", port)
const MAILBOXES: TableDefinition<&str, (&[u8], u64, &str, &str, u16)> =
    TableDefinition::new("mailboxes");
/// message id → (recipient, sender or "", body, expiry Unix ms)
const MESSAGES: TableDefinition<u64, (&str, &str, &str, u64)> = TableDefinition::new("messages");

/// The database file inside the data directory.
pub const DB_FILE: &str = "dht-msg.redb";

/// What can go wrong with the data directory.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// redb failed (open, transaction, table or commit).
    #[error("database {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// A record does not decode (the file was written by something else).
    #[error("database {path}: corrupt record: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// Everything persisted, as loaded at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The salt of the secret hashes.
    pub salt: [u8; 32],
    /// Every mailbox.
    pub mailboxes: Vec<MailboxRecord>,
    /// Every message.
    pub messages: Vec<MessageRecord>,
    /// One more than the largest message id ever stored (ids are never reused, even after
    /// every message was deleted).
    pub next_message_id: u64,
}

/// An open data directory.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database in `dir` and loads it. A new database gets `new_salt`.
    pub fn open(dir: &Path, new_salt: [u8; 32]) -> Result<(Store, Snapshot), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| db_error(&path, e))?;
        let store = Store { db, path };
        let snapshot = store.load(new_salt)?;
        Ok((store, snapshot))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self, new_salt: [u8; 32]) -> Result<Snapshot, StoreError> {
        let err = |e: redb::Error| db_error(&self.path, e);
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let mut snapshot = Snapshot::default();
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            let stored = meta
                .get("salt")
                .map_err(|e| err(e.into()))?
                .map(|v| v.value().to_vec());
            snapshot.next_message_id = meta
                .get("next_message_id")
                .map_err(|e| err(e.into()))?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map_or(1, u64::from_le_bytes);
            if let Some(salt) = stored {
                snapshot.salt = salt
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt(format!("salt is {} bytes, not 32", salt.len())))?;
            } else {
                meta.insert("salt", new_salt.as_slice())
                    .map_err(|e| err(e.into()))?;
                snapshot.salt = new_salt;
            }
            let mailboxes = txn.open_table(MAILBOXES).map_err(|e| err(e.into()))?;
            for row in mailboxes.iter().map_err(|e| err(e.into()))? {
                let (key, value) = row.map_err(|e| err(e.into()))?;
                let (hash, last_seen_unix_ms, network_id, ip, port) = value.value();
                let node_id: NodeId = key
                    .value()
                    .parse()
                    .map_err(|e| corrupt(format!("mailbox key: {e}")))?;
                let owner = Owner::from_stored(hash)
                    .map_err(|e| corrupt(format!("owner of {node_id}: {e}")))?;
                let ip = if ip.is_empty() {
                    None
                } else {
                    Some(
                        ip.parse::<IpAddr>()
                            .map_err(|_| corrupt(format!("IP of {node_id}: {ip:?}")))?,
                    )
                };
                snapshot.mailboxes.push(MailboxRecord {
                    node_id,
                    owner,
                    last_seen_unix_ms,
                    network_id: network_id.to_string(),
                    ip,
                    port,
                });
            }
            let messages = txn.open_table(MESSAGES).map_err(|e| err(e.into()))?;
            for row in messages.iter().map_err(|e| err(e.into()))? {
                let (key, value) = row.map_err(|e| err(e.into()))?;
                let id = key.value();
                let (to, from, body, expires_unix_ms) = value.value();
                let to = to
                    .parse()
                    .map_err(|e| corrupt(format!("recipient of message {id}: {e}")))?;
                let from = if from.is_empty() {
                    None
                } else {
                    Some(
                        from.parse()
                            .map_err(|e| corrupt(format!("sender of message {id}: {e}")))?,
                    )
                };
                snapshot.messages.push(MessageRecord {
                    id: MessageId(id),
                    to,
                    from,
                    body: body.to_string(),
                    expires_unix_ms,
                });
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(snapshot)
    }

    /// Applies a batch of changes in one durable transaction.
    pub fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let err = |e: redb::Error| db_error(&self.path, e);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let next_id = ops
                .iter()
                .filter_map(|op| match op {
                    StoreOp::PutMessage(m) => Some(m.id.0.saturating_add(1)),
                    _ => None,
                })
                .max();
            if let Some(next_id) = next_id {
                let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
                meta.insert("next_message_id", next_id.to_le_bytes().as_slice())
                    .map_err(|e| err(e.into()))?;
            }
            let mut mailboxes = txn.open_table(MAILBOXES).map_err(|e| err(e.into()))?;
            let mut messages = txn.open_table(MESSAGES).map_err(|e| err(e.into()))?;
            for op in ops {
                match op {
                    StoreOp::PutMailbox(m) => {
                        let ip = m.ip.map(|ip| ip.to_string()).unwrap_or_default();
                        let owner = m.owner.to_stored();
                        mailboxes
                            .insert(
                                m.node_id.as_str(),
                                (
                                    owner.as_slice(),
                                    m.last_seen_unix_ms,
                                    m.network_id.as_str(),
                                    ip.as_str(),
                                    m.port,
                                ),
                            )
                            .map_err(|e| err(e.into()))?;
                    }
                    StoreOp::DeleteMailbox(node_id) => {
                        mailboxes
                            .remove(node_id.as_str())
                            .map_err(|e| err(e.into()))?;
                    }
                    StoreOp::PutMessage(m) => {
                        let from = m.from.as_ref().map_or("", NodeId::as_str);
                        messages
                            .insert(
                                m.id.0,
                                (m.to.as_str(), from, m.body.as_str(), m.expires_unix_ms),
                            )
                            .map_err(|e| err(e.into()))?;
                    }
                    StoreOp::DeleteMessage(id) => {
                        messages.remove(id.0).map_err(|e| err(e.into()))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(())
    }
}

fn db_error(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dht-msg-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn ops_survive_reopening() {
        let dir = temp_dir("reopen");
        let (mut store, snapshot) = Store::open(&dir, [7; 32]).unwrap();
        assert_eq!(snapshot.salt, [7; 32]);
        let bob: NodeId = "bob".parse().unwrap();
        let mailbox = MailboxRecord {
            node_id: bob.clone(),
            owner: Owner::Secret([1; 32]),
            last_seen_unix_ms: 42,
            network_id: "default".into(),
            ip: Some("127.0.0.1".parse().unwrap()),
            port: 1337,
        };
        let message = |id, body: &str| MessageRecord {
            id: MessageId(id),
            to: bob.clone(),
            from: if id == 1 { None } else { Some(bob.clone()) },
            body: body.into(),
            expires_unix_ms: 99,
        };
        store
            .apply(&[
                StoreOp::PutMailbox(mailbox.clone()),
                StoreOp::PutMessage(message(1, "one")),
                StoreOp::PutMessage(message(2, "two")),
                StoreOp::PutMessage(message(3, "three")),
            ])
            .unwrap();
        store
            .apply(&[StoreOp::DeleteMessage(MessageId(2))])
            .unwrap();
        drop(store);
        let (_store, snapshot) = Store::open(&dir, [9; 32]).unwrap();
        assert_eq!(snapshot.salt, [7; 32], "the first salt is kept");
        assert_eq!(snapshot.mailboxes, vec![mailbox]);
        assert_eq!(
            snapshot.messages,
            vec![message(1, "one"), message(3, "three")]
        );
        assert_eq!(snapshot.next_message_id, 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unusable_directory_is_a_clear_error() {
        let err = Store::open(Path::new("/proc/self/no-such-dir"), [0; 32]).unwrap_err();
        assert!(err.to_string().contains("/proc/self/no-such-dir"), "{err}");
    }
}
