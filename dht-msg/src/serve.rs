//! What the server kit runs: the [`Core`] and the [`MailboxStore`] its changes are committed
//! to: none (memory only), a redb [`Store`] in a data directory, or a [`RedisStore`] shared
//! with other instances (see [`crate::shared`]). The kit's [`ServerCore`] contract is mapped
//! onto the core's own calls (which its virtual-time tests use directly);
//! [`ServerCore::commit`] writes the turn's store changes in one transaction before any reply
//! of that turn goes out, so `OK PUT` is never sent for a message that is not stored, and a
//! burst of `PUT`s costs one disk sync or one Redis round trip.

use std::io;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use server_kit::redis::{RedisBackend, Replica, Subscription};
use server_kit::{ConnId, Output, ServerCore, Service, Wake};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::core::{Action, Core, Stats, StoreOp};
use crate::shared::{self, RedisStore};
use crate::store::{Snapshot, Store};

/// Where a mailbox server's changes go. Each batch is one event-loop turn's changes, written
/// before any reply of that turn.
pub trait MailboxStore: Send + std::fmt::Debug {
    /// Stores a batch durably (one transaction), or fails (the server then stops rather than
    /// answer as if it were stored).
    fn apply(&mut self, ops: &[StoreOp]) -> io::Result<()>;
}

impl MailboxStore for Store {
    fn apply(&mut self, ops: &[StoreOp]) -> io::Result<()> {
        Store::apply(self, ops).map_err(io::Error::other)
    }
}

impl MailboxStore for RedisStore {
    fn apply(&mut self, ops: &[StoreOp]) -> io::Result<()> {
        RedisStore::apply(self, ops).map_err(io::Error::other)
    }
}

/// The changes other instances publish, when the store is shared.
#[derive(Debug)]
struct Shared {
    subscription: Subscription<Snapshot>,
    instance: String,
    commits: u64,
    ops_written: u64,
}

/// A mailbox server's state as the kit drives it: the sans-IO [`Core`] and its store.
#[derive(Debug)]
pub struct Mailboxes {
    core: Core,
    store: Option<Box<dyn MailboxStore>>,
    shared: Option<Shared>,
}

impl Mailboxes {
    /// Applies what other instances published since the last call.
    fn take_remote(&mut self, now: Instant) {
        if let Some(shared) = &self.shared {
            let mut remote = Remote {
                core: &mut self.core,
                instance: &shared.instance,
            };
            shared.subscription.feed(now, &mut remote);
        }
    }

    /// Opens the Redis backend, waits for its full state and builds the core from it.
    fn build_shared(config: Config, url: &str, now: Instant) -> io::Result<Mailboxes> {
        let backend = RedisBackend::open(url).map_err(io::Error::other)?;
        let instance = format!("{:016x}", rand::random::<u64>());
        let (store, salt, first_id) =
            RedisStore::open(backend.clone(), instance.clone(), rand::random())
                .map_err(io::Error::other)?;
        let (subscription, snapshot) = Subscription::start_loaded(
            &backend,
            vec![shared::CHANNEL.to_owned()],
            Box::new(shared::load),
        )?;
        let mut core = Core::new(config, salt, true, now, SystemTime::now());
        core.resync(now, snapshot.mailboxes, snapshot.messages);
        core.set_message_id_base(first_id);
        let stats = core.stats();
        info!(
            backend = backend.url(),
            instance,
            mailboxes = stats.mailboxes,
            messages = stats.messages,
            first_message_id = first_id,
            "shared backend: state loaded"
        );
        Ok(Mailboxes {
            core,
            store: Some(Box::new(store)),
            shared: Some(Shared {
                subscription,
                instance,
                commits: 0,
                ops_written: 0,
            }),
        })
    }
}

/// The core as a copy of the shared store: the changes other instances publish (its own are
/// skipped).
struct Remote<'a> {
    core: &'a mut Core,
    instance: &'a str,
}

impl Replica<Snapshot> for Remote<'_> {
    fn resync(&mut self, now: Instant, snapshot: Snapshot) {
        info!("shared backend: subscription re-established, state reloaded");
        self.core.resync(now, snapshot.mailboxes, snapshot.messages);
    }

    fn message(&mut self, now: Instant, _channel: &str, payload: &[u8]) {
        if let Some(ops) = shared::decode_changes(payload, self.instance) {
            self.core.apply_remote(now, ops);
        }
    }
}

impl From<Action> for Output {
    fn from(action: Action) -> Output {
        match action {
            Action::Flush(id) => Output::Flush(id),
            Action::Close(id) => Output::Close(id),
        }
    }
}

impl ServerCore for Mailboxes {
    type Stats = Stats;
    const NAME: &'static str = "dht-msg";

    fn handle_open(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<ConnId, Vec<u8>> {
        self.core
            .handle_open(now, peer, local)
            .map_err(|refusal| refusal.error_line())
    }

    fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.core.handle_data(now, conn, bytes);
    }

    fn handle_eof(&mut self, _now: Instant, conn: ConnId) {
        self.core.handle_eof(conn);
    }

    fn handle_failed(&mut self, _now: Instant, conn: ConnId, _error: &io::Error) {
        self.core.handle_eof(conn);
    }

    fn handle_written(&mut self, _now: Instant, conn: ConnId, n: usize) {
        self.core.consume_output(conn, n);
    }

    fn handle_closed(&mut self, conn: ConnId) {
        self.core.handle_closed(conn);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.take_remote(now);
        self.core.handle_timeout(now);
    }

    fn set_waker(&mut self, wake: Wake) {
        if let Some(shared) = &self.shared {
            shared.subscription.set_wake(wake);
        }
    }

    fn handle_wake(&mut self, now: Instant) {
        self.take_remote(now);
    }

    fn handle_shutdown(&mut self, _now: Instant) {
        for id in self.core.open_connections() {
            self.core.handle_eof(id);
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.core.poll_action().map(Output::from)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.core.poll_timeout())
    }

    fn pending_output(&self, conn: ConnId) -> &[u8] {
        self.core.pending_output(conn)
    }

    fn stats(&self) -> Stats {
        let mut stats = self.core.stats();
        if let Some(shared) = &self.shared {
            stats.backend.commits = shared.commits;
            stats.backend.ops_written = shared.ops_written;
        }
        stats
    }

    /// Fails (and so stops the server) if the store cannot be written: no reply may claim
    /// that a message is stored when it is not.
    fn commit(&mut self) -> io::Result<()> {
        let ops = self.core.poll_store();
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        if ops.is_empty() {
            return Ok(());
        }
        store.apply(&ops).map_err(|e| {
            error!(
                "cannot write to the store: {e}; stopping so that no reply claims a message is \
                 stored when it is not"
            );
            e
        })?;
        if let Some(shared) = &mut self.shared {
            shared.commits += 1;
            shared.ops_written += ops.len() as u64;
        }
        Ok(())
    }
}

impl Service for Mailboxes {
    type Config = Config;

    /// Checks the limits; with `config.data_dir`, opens the database there, restores what it
    /// holds and deletes what expired while the server was down.
    fn build(config: Config, now: Instant) -> io::Result<Mailboxes> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if let Some(url) = config.backend.clone() {
            if config.data_dir.is_some() {
                warn!("--data-dir is ignored with --backend: the shared backend keeps the data");
            }
            let mut mailboxes = Mailboxes::build_shared(config, &url, now)?;
            mailboxes.core.seed_challenges(rand::random());
            return Ok(mailboxes);
        }
        let new_salt: [u8; 32] = rand::random();
        let mut mailboxes = if let Some(dir) = config.data_dir.clone() {
            let (store, snapshot) = Store::open(&dir, new_salt).map_err(io::Error::other)?;
            let mut core = Core::new(config, snapshot.salt, true, now, SystemTime::now());
            let restored = core.restore(
                now,
                snapshot.mailboxes,
                snapshot.messages,
                snapshot.next_message_id,
            );
            info!(
                db = %store.path().display(),
                mailboxes = restored.mailboxes,
                messages = restored.messages,
                dropped_expired = restored.dropped,
                "data restored"
            );
            Mailboxes {
                core,
                store: Some(Box::new(store)),
                shared: None,
            }
        } else {
            info!("no data directory: mailboxes and messages are kept in memory only");
            Mailboxes {
                core: Core::new(config, new_salt, false, now, SystemTime::now()),
                store: None,
                shared: None,
            }
        };
        // Challenge nonces from the OS (the core itself takes no randomness from outside).
        mailboxes.core.seed_challenges(rand::random());
        // Deletions of records that expired while the server was down.
        mailboxes.commit()?;
        Ok(mailboxes)
    }
}
