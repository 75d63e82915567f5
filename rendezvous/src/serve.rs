//! How the server kit drives [`Core`]: [`Rendezvous`] (the core, plus the threads that talk to
//! a shared backend when there is one) with the kit's [`ServerCore`] contract mapped onto the
//! core's own calls (which its virtual-time tests use directly), built from its [`Config`].

use std::io;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use server_kit::redis::{RedisBackend, Replica, Subscription};
use server_kit::{ConnId, Output, ServerCore, Service, Wake};
use tracing::info;

use crate::config::Config;
use crate::core::{Action, Core, RemoteState, Stats};
use crate::shared::{self, Writer};

/// A rendezvous server as the kit runs it: the sans-IO [`Core`] and, with `--backend`, its
/// link to the other instances (a writer thread and a subscriber thread; see
/// [`crate::shared`]).
#[derive(Debug)]
pub struct Rendezvous {
    core: Core,
    link: Option<Link>,
}

#[derive(Debug)]
struct Link {
    writer: Writer,
    subscription: Subscription<RemoteState>,
}

impl Rendezvous {
    /// The core (its configuration, its counters).
    pub fn core(&self) -> &Core {
        &self.core
    }

    fn take_remote(&mut self, now: Instant) {
        if let Some(link) = &self.link {
            link.subscription.feed(now, &mut self.core);
        }
    }

    fn build_shared(config: Config, url: &str, now: Instant) -> io::Result<Rendezvous> {
        let backend = RedisBackend::open(url).map_err(io::Error::other)?;
        let inst: u64 = rand::random();
        let (subscription, state) = Subscription::start_loaded(
            &backend,
            vec![shared::events_channel(), shared::instance_channel(inst)],
            Box::new(shared::load),
        )?;
        info!(
            backend = backend.url(),
            instance = format!("{inst:x}"),
            passive = state.passive.len(),
            simultaneous = state.simultaneous.len(),
            "shared backend: state loaded"
        );
        let mut core = Core::new(config, now, SystemTime::now());
        core.enable_shared(inst);
        core.resync_remote(now, state);
        Ok(Rendezvous {
            core,
            link: Some(Link {
                writer: Writer::start(backend, inst)?,
                subscription,
            }),
        })
    }
}

/// What other instances publish (see [`crate::core::shared`]).
impl Replica<RemoteState> for Core {
    fn resync(&mut self, now: Instant, state: RemoteState) {
        self.resync_remote(now, state);
    }

    fn message(&mut self, now: Instant, _channel: &str, payload: &[u8]) {
        if let Ok(line) = std::str::from_utf8(payload) {
            self.handle_remote(now, line);
        }
    }
}

impl From<Action> for Output {
    fn from(action: Action) -> Output {
        match action {
            Action::Flush(id) => Output::Flush(id),
            Action::Close(id) => Output::Close(id),
            Action::Read(id) => Output::Read(id),
            Action::ShutdownWrite(id) => Output::ShutdownWrite(id),
        }
    }
}

impl ServerCore for Rendezvous {
    type Stats = Stats;
    const NAME: &'static str = "rendezvous";
    /// One read's worth: large, so that a fast relay moves big chunks per system call.
    const READ_BUFFER_BYTES: usize = 64 * 1024;
    /// A relayed sender's socket may never drain: past this the other clients get their turn,
    /// and a relayed bulk transfer still keeps its speed (a greedy client delays others by
    /// about a millisecond).
    const READ_TURN_BYTES: usize = 1024 * 1024;

    fn handle_open(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        _local: SocketAddr,
    ) -> Result<ConnId, Vec<u8>> {
        self.core
            .handle_open(now, peer)
            .map_err(|refusal| refusal.error_line())
    }

    fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.core.handle_data(now, conn, bytes);
    }

    fn handle_eof(&mut self, now: Instant, conn: ConnId) {
        self.core.handle_eof(now, conn);
    }

    fn handle_failed(&mut self, now: Instant, conn: ConnId, error: &io::Error) {
        self.core.handle_failed(now, conn, error);
    }

    fn handle_written(&mut self, now: Instant, conn: ConnId, n: usize) {
        self.core.consume_output(now, conn, n);
    }

    fn handle_closed(&mut self, conn: ConnId) {
        self.core.handle_closed(conn);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.take_remote(now);
        self.core.handle_timeout(now);
    }

    fn set_waker(&mut self, wake: Wake) {
        if let Some(link) = &self.link {
            link.subscription.set_wake(wake);
        }
    }

    fn handle_wake(&mut self, now: Instant) {
        self.take_remote(now);
    }

    /// Hands this turn's updates to the writer thread (never waits for Redis).
    fn commit(&mut self) -> io::Result<()> {
        if let Some(link) = &self.link {
            let updates = self.core.poll_updates();
            if !updates.is_empty() {
                link.writer.send(updates);
            }
        }
        Ok(())
    }

    fn handle_shutdown(&mut self, now: Instant) {
        self.core.handle_shutdown(now);
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
        self.core.stats()
    }

    fn read_budget(&mut self, now: Instant, conn: ConnId) -> usize {
        self.core.read_budget(now, conn)
    }

    fn splice_target(&self, conn: ConnId) -> Option<ConnId> {
        self.core.relay_direct_target(conn)
    }

    fn handle_spliced(&mut self, now: Instant, conn: ConnId, bytes: &[u8], written: usize) {
        self.core.handle_relay_read(now, conn, bytes, written);
    }
}

impl Service for Rendezvous {
    type Config = Config;

    fn build(config: Config, now: Instant) -> io::Result<Rendezvous> {
        if let Some(url) = config.backend.clone() {
            return Rendezvous::build_shared(config, &url, now);
        }
        Ok(Rendezvous {
            core: Core::new(config, now, SystemTime::now()),
            link: None,
        })
    }
}
