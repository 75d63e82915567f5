//! The mio event loop: translates socket readiness into [`Core`] calls, commits the core's store
//! changes, then carries out its [`Action`]s. It never looks at protocol verbs.
//!
//! Each turn of the loop: read every ready socket into the core, run its timers, commit the
//! turn's store changes in one transaction (group commit), and only then write replies. So
//! `OK PUT` is never sent for a message that is not on disk, and a burst of `PUT`s costs one
//! disk sync rather than one each.

use std::io::{self, ErrorKind, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use node::server::{READ_BUDGET_BYTES, ReadStep, ShutdownHandle, is_fd_exhaustion, read_step};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::core::{Action, ConnId, Core, Stats};
use crate::store::Store;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// After running out of file descriptors, wait this long before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the "out of file descriptors" warning may repeat.
const FD_WARNING_INTERVAL: Duration = Duration::from_secs(10);
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// A mailbox server bound to a listener, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    core: Core,
    store: Option<Store>,
    streams: Vec<Option<TcpStream>>,
    writable: Vec<ConnId>,
    shutdown: ShutdownHandle,
    accept_paused_until: Option<Instant>,
    last_fd_warning: Option<Instant>,
    fd_refusals: u64,
    /// Connections whose read budget ran out with data left (and whether their FIN was seen):
    /// read again after the other events.
    unfinished: Vec<(ConnId, bool)>,
}

impl Server {
    /// Wraps an already bound listener (so a test can bind `127.0.0.1:0`). With
    /// `config.data_dir`, opens the database there and restores what it holds.
    pub fn new(listener: std::net::TcpListener, config: Config) -> io::Result<Server> {
        config
            .validate()
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let shutdown = ShutdownHandle::new(poll.registry(), WAKER)?;
        let new_salt: [u8; 32] = rand::random();
        let now = Instant::now();
        let (core, store) = match config.data_dir.clone() {
            Some(dir) => {
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
                (core, Some(store))
            }
            None => (
                Core::new(config, new_salt, false, now, SystemTime::now()),
                None,
            ),
        };
        let mut server = Server {
            poll,
            listener,
            local_addr,
            core,
            store,
            streams: Vec::new(),
            writable: Vec::new(),
            shutdown,
            accept_paused_until: None,
            last_fd_warning: None,
            fd_refusals: 0,
            unfinished: Vec::new(),
        };
        // Deletions of records that expired while the server was down.
        server.commit()?;
        Ok(server)
    }

    /// Binds `addr` and wraps it.
    pub fn bind(addr: SocketAddr, config: Config) -> io::Result<Server> {
        Server::new(std::net::TcpListener::bind(addr)?, config)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the server from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Runs the event loop until [`ShutdownHandle::shutdown`]; returns the final counters.
    /// Fails (and stops serving) if the data directory cannot be written: no reply may claim
    /// that a message is stored when it is not.
    pub fn run(mut self) -> io::Result<Stats> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        info!(
            addr = %self.local_addr,
            persistent = self.store.is_some(),
            "dht-msg listening (line protocol and HTTP on one port)"
        );
        while !self.shutdown.is_requested() {
            let timeout = if self.unfinished.is_empty() {
                Some(self.next_wakeup().saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in &events {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {}
                    Token(id) => {
                        let id = ConnId(id);
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            let closing = event.is_read_closed() || event.is_error();
                            self.read(now, id, &mut buf, closing);
                        }
                        if event.is_writable() {
                            self.writable.push(id);
                        }
                    }
                }
            }
            for (id, closing) in std::mem::take(&mut self.unfinished) {
                self.read(now, id, &mut buf, closing);
            }
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                self.accept_all(now);
            }
            self.core.handle_timeout(now);
            self.commit()?;
            for id in std::mem::take(&mut self.writable) {
                self.flush(id);
            }
            self.carry_out_actions();
        }
        self.shutdown_connections()?;
        let stats = self.core.stats();
        info!(
            accepted = stats.accepted,
            puts = stats.puts,
            pushed = stats.pushed,
            messages_kept = stats.messages,
            "dht-msg stopped"
        );
        Ok(stats)
    }

    /// Writes the core's pending store changes in one transaction.
    fn commit(&mut self) -> io::Result<()> {
        let ops = self.core.poll_store();
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        if let Err(e) = store.apply(&ops) {
            error!(
                "cannot write to the data directory: {e}; stopping so that no reply claims a \
                 message is stored when it is not"
            );
            return Err(io::Error::other(e));
        }
        Ok(())
    }

    fn next_wakeup(&self) -> Instant {
        let core = self.core.poll_timeout();
        match self.accept_paused_until {
            Some(t) => t.min(core),
            None => core,
        }
    }

    fn accept_all(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(now, stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_fd_exhaustion(&e) => {
                    self.fd_refusals += 1;
                    let due = self
                        .last_fd_warning
                        .is_none_or(|t| now.saturating_duration_since(t) >= FD_WARNING_INTERVAL);
                    if due {
                        warn!(
                            open = self.core.stats().open,
                            waiting_refusals = self.fd_refusals,
                            "out of file descriptors ({e}); new connections wait in the backlog \
                             (raise `ulimit -n` or lower --max-connections)"
                        );
                        self.last_fd_warning = Some(now);
                        self.fd_refusals = 0;
                    }
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => debug!("accept failed: {e}"),
            }
        }
    }

    fn admit(&mut self, now: Instant, mut stream: TcpStream, peer: SocketAddr) {
        match self.core.handle_open(now, peer) {
            Ok(id) => {
                if let Err(e) = self.poll.registry().register(
                    &mut stream,
                    Token(id.0),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    warn!(%peer, "could not register connection: {e}");
                    // Queues its Close, carried out with the others after this turn's commit.
                    self.core.handle_eof(id);
                    return;
                }
                if self.streams.len() <= id.0 {
                    self.streams.resize_with(id.0 + 1, || None);
                }
                // Nagle would delay a pushed message behind the client's delayed ACK.
                let _ = stream.set_nodelay(true);
                self.streams[id.0] = Some(stream);
            }
            Err(refusal) => {
                debug!(%peer, %refusal, "connection refused");
                let _ = stream.write_all(format!("ERROR {refusal}\r\n").as_bytes());
            }
        }
    }

    /// `closing`: the event also reported the peer's FIN (or an error), which raises no
    /// further edge, so read on until EOF.
    /// At most [`READ_BUDGET_BYTES`] per call: a connection with more is noted as unfinished.
    fn read(&mut self, now: Instant, id: ConnId, buf: &mut [u8], closing: bool) {
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let Some(stream) = self.streams.get_mut(id.0).and_then(Option::as_mut) else {
                return;
            };
            match read_step(stream, buf, closing) {
                ReadStep::Data { len, more } => {
                    self.core.handle_data(now, id, &buf[..len]);
                    if !more {
                        return;
                    }
                    budget = budget.saturating_sub(len);
                    if budget == 0 {
                        self.unfinished.push((id, closing));
                        return;
                    }
                }
                ReadStep::Blocked => return,
                ReadStep::Eof => {
                    self.core.handle_eof(id);
                    return;
                }
                ReadStep::Failed(e) => {
                    debug!(conn = id.0, "read failed: {e}");
                    self.core.handle_eof(id);
                    return;
                }
            }
        }
    }

    /// Writes as much pending output as the socket takes.
    fn flush(&mut self, id: ConnId) {
        let Some(stream) = self.streams.get_mut(id.0).and_then(Option::as_mut) else {
            return;
        };
        loop {
            let pending = self.core.pending_output(id);
            if pending.is_empty() {
                return;
            }
            match stream.write(pending) {
                Ok(n) => self.core.consume_output(id, n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(conn = id.0, "write failed: {e}");
                    self.core.handle_eof(id);
                    return;
                }
            }
        }
    }

    fn carry_out_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Flush(id) => self.flush(id),
                Action::Close(id) => self.close(id),
            }
        }
    }

    fn close(&mut self, id: ConnId) {
        self.flush(id);
        if let Some(mut stream) = self.streams.get_mut(id.0).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        self.core.handle_closed(id);
    }

    fn shutdown_connections(&mut self) -> io::Result<()> {
        let open = self.core.open_connections();
        info!(connections = open.len(), "shutting down");
        for id in open {
            self.core.handle_eof(id);
        }
        self.commit()?;
        self.carry_out_actions();
        Ok(())
    }
}

impl node::server::Serve for Server {
    type Config = Config;
    type Stats = Stats;
    const NAME: &'static str = "dht-msg";

    fn bind(addr: SocketAddr, config: Config) -> io::Result<Server> {
        Server::bind(addr, config)
    }

    fn local_addr(&self) -> SocketAddr {
        Server::local_addr(self)
    }

    fn shutdown_handle(&self) -> ShutdownHandle {
        Server::shutdown_handle(self)
    }

    fn run(self) -> io::Result<Stats> {
        Server::run(self)
    }
}

/// A server running on its own thread; stopped and joined on drop. Meant for tests and benches.
pub type RunningServer = node::server::RunningServer<Server>;
