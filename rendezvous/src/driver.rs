//! The mio event loop: translates socket readiness into [`Core`] calls and carries out its
//! [`Action`]s. It never looks at protocol verbs.
//!
//! For relayed connections it is the byte mover: it reads only what [`Core::read_budget`]
//! allows (flow control and rate limit), writes what it read straight to the partner when the
//! core says nothing is queued for it (no copy into the queue), and resumes paused reads when
//! told ([`Action::Read`]): edge-triggered readiness raises no new event for bytes that were
//! already waiting when reading stopped.

use std::io::{self, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use node::server::{ReadStep, ShutdownHandle, is_fd_exhaustion, read_step};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::{Action, ConnId, Core, Stats};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// After running out of file descriptors, wait this long before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the "out of file descriptors" warning may repeat.
const FD_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// One read's worth. Large enough that a fast relay moves big chunks per system call.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Most bytes read from one connection per event-loop turn; the rest waits for the next turn,
/// so that a fast relayed sender (whose socket may never drain) cannot starve other clients.
const READ_TURN_BYTES: usize = 1024 * 1024;

/// The server's [`Stats`], as of its last event-loop turn, readable from other threads (tests,
/// benches). Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct LiveStats(Arc<Mutex<Stats>>);

impl LiveStats {
    /// The counters as of the server's last event-loop turn.
    pub fn get(&self) -> Stats {
        self.0.lock().map(|s| *s).unwrap_or_default()
    }

    fn set(&self, stats: Stats) {
        if let Ok(mut s) = self.0.lock() {
            *s = stats;
        }
    }
}

/// A rendezvous server bound to a listener, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    core: Core,
    streams: Vec<Option<TcpStream>>,
    shutdown: ShutdownHandle,
    accept_paused_until: Option<Instant>,
    last_fd_warning: Option<Instant>,
    fd_refusals: u64,
    buf: Vec<u8>,
    live: LiveStats,
    /// Connections that had more to read when their turn's share ran out.
    deferred: Vec<ConnId>,
}

impl Server {
    /// Wraps an already bound listener (so a test can bind `127.0.0.1:0`).
    pub fn new(listener: std::net::TcpListener, config: Config) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let shutdown = ShutdownHandle::new(poll.registry(), WAKER)?;
        Ok(Server {
            poll,
            listener,
            local_addr,
            core: Core::new(config, Instant::now(), SystemTime::now()),
            streams: Vec::new(),
            shutdown,
            accept_paused_until: None,
            last_fd_warning: None,
            fd_refusals: 0,
            buf: vec![0u8; READ_BUFFER_BYTES],
            live: LiveStats::default(),
            deferred: Vec::new(),
        })
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

    /// Its counters, readable while it runs (updated once per event-loop turn).
    pub fn live_stats(&self) -> LiveStats {
        self.live.clone()
    }

    /// Runs the event loop until [`ShutdownHandle::shutdown`]; returns the final counters.
    pub fn run(mut self) -> io::Result<Stats> {
        let mut events = Events::with_capacity(1024);
        info!(addr = %self.local_addr, "rendezvous listening");
        while !self.shutdown.is_requested() {
            let timeout = if self.deferred.is_empty() {
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
            // Connections cut off in the last turn read on first (they get no new edge).
            for id in std::mem::take(&mut self.deferred) {
                self.read(now, id, true);
                self.carry_out_actions(now);
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {}
                    Token(id) => {
                        let id = ConnId(id);
                        if event.is_writable() {
                            self.flush(now, id);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            let closing = event.is_read_closed() || event.is_error();
                            self.read(now, id, closing);
                        }
                    }
                }
                self.carry_out_actions(now);
            }
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                self.accept_all(now);
            }
            self.core.handle_timeout(now);
            self.carry_out_actions(now);
            self.live.set(self.core.stats());
        }
        self.shutdown_connections();
        self.live.set(self.core.stats());
        let stats = self.core.stats();
        info!(
            accepted = stats.accepted,
            refused = stats.refused,
            lines = stats.lines,
            bad_lines = stats.bad_lines,
            "rendezvous stopped"
        );
        Ok(stats)
    }

    fn next_wakeup(&self) -> Instant {
        let sweep = self.core.poll_timeout();
        match self.accept_paused_until {
            Some(t) => t.min(sweep),
            None => sweep,
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
                Err(e) => {
                    // ECONNABORTED and friends concern one client only.
                    debug!("accept failed: {e}");
                }
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
                    self.core.handle_failed(now, id, &e);
                    self.core.handle_closed(id);
                    // Drop the Close action that handle_failed queued.
                    while self.core.poll_action().is_some() {}
                    return;
                }
                if self.streams.len() <= id.0 {
                    self.streams.resize_with(id.0 + 1, || None);
                }
                // Nagle would delay small replies behind the client's delayed ACK.
                let _ = stream.set_nodelay(true);
                self.streams[id.0] = Some(stream);
            }
            Err(refusal) => {
                debug!(%peer, %refusal, "connection refused");
                let _ = stream.write_all(format!("ERROR {refusal}\r\n").as_bytes());
            }
        }
    }

    /// Reads what the socket has, as far as [`Core::read_budget`] allows. `closing`: the
    /// event also reported the peer's FIN (or an error), which raises no further edge, so read
    /// on until EOF (or until the budget stops us: the core then owes an [`Action::Read`]).
    ///
    /// At most [`READ_TURN_BYTES`] per call: a connection with more is deferred to the next
    /// loop turn.
    fn read(&mut self, now: Instant, id: ConnId, closing: bool) {
        let mut buf = std::mem::take(&mut self.buf);
        let mut this_turn = 0;
        loop {
            if this_turn >= READ_TURN_BYTES {
                if !self.deferred.contains(&id) {
                    self.deferred.push(id);
                }
                break;
            }
            let budget = self.core.read_budget(now, id);
            if budget == 0 {
                break;
            }
            let Some(stream) = self.streams.get_mut(id.0).and_then(Option::as_mut) else {
                break;
            };
            let window = budget.min(buf.len());
            match read_step(stream, &mut buf[..window], closing) {
                ReadStep::Data { len, more } => {
                    this_turn += len;
                    self.deliver(now, id, &buf[..len]);
                    if !more {
                        break;
                    }
                }
                ReadStep::Blocked => break,
                ReadStep::Eof => {
                    self.core.handle_eof(now, id);
                    break;
                }
                ReadStep::Failed(e) => {
                    debug!(conn = id.0, "read failed: {e}");
                    self.core.handle_failed(now, id, &e);
                    break;
                }
            }
        }
        self.buf = buf;
    }

    /// Hands bytes read from `id` to the core; for a relayed connection whose partner has
    /// nothing queued, writes them to the partner first so that only the rest is copied.
    fn deliver(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let Some(dst) = self.core.relay_direct_target(id) else {
            self.core.handle_data(now, id, data);
            return;
        };
        let mut written = 0;
        if let Some(stream) = self.streams.get_mut(dst.0).and_then(Option::as_mut) {
            while written < data.len() {
                match stream.write(&data[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!(conn = dst.0, "write failed: {e}");
                        self.core.handle_failed(now, dst, &e);
                        break;
                    }
                }
            }
        }
        self.core.handle_relay_read(now, id, data, written);
    }

    /// Writes as much pending output as the socket takes. Returns false if the socket failed.
    fn flush(&mut self, now: Instant, id: ConnId) -> bool {
        let Some(stream) = self.streams.get_mut(id.0).and_then(Option::as_mut) else {
            return false;
        };
        loop {
            let pending = self.core.pending_output(id);
            if pending.is_empty() {
                return true;
            }
            match stream.write(pending) {
                Ok(n) => self.core.consume_output(now, id, n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(conn = id.0, "write failed: {e}");
                    self.core.handle_failed(now, id, &e);
                    return false;
                }
            }
        }
    }

    fn carry_out_actions(&mut self, now: Instant) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Flush(id) => {
                    self.flush(now, id);
                }
                Action::Close(id) => self.close(now, id),
                // A resumed connection may have its FIN waiting behind the data: read on to
                // WouldBlock (or the budget), as after an event that reported the FIN.
                Action::Read(id) => self.read(now, id, true),
                Action::ShutdownWrite(id) => {
                    if let Some(stream) = self.streams.get_mut(id.0).and_then(Option::as_mut)
                        && let Err(e) = stream.shutdown(Shutdown::Write)
                    {
                        debug!(conn = id.0, "shutdown(Write) failed: {e}");
                    }
                }
            }
        }
    }

    fn close(&mut self, now: Instant, id: ConnId) {
        self.flush(now, id);
        if let Some(mut stream) = self.streams.get_mut(id.0).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        self.core.handle_closed(id);
    }

    fn shutdown_connections(&mut self) {
        let open = self.core.open_connections();
        info!(connections = open.len(), "shutting down");
        let now = Instant::now();
        self.core.handle_shutdown(now);
        self.carry_out_actions(now);
    }
}

impl node::server::Serve for Server {
    type Config = Config;
    type Stats = Stats;
    const NAME: &'static str = "rendezvous";

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
