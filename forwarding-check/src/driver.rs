//! The mio event loop: translates socket readiness into [`Core`] calls and carries out its
//! [`Action`]s, including the dial-backs, which are non-blocking mio connects whose deadline
//! the core keeps. It never looks at HTTP.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use node::server::{READ_BUDGET_BYTES, ReadStep, ShutdownHandle, is_fd_exhaustion, read_step};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::{Action, CheckId, ConnId, Core, DialOutcome, Stats};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Tokens with this bit set are dial-backs (the rest of the bits are the [`CheckId`]); tokens
/// without it are client connections.
const DIAL_BIT: usize = 1 << (usize::BITS - 2);
/// After running out of file descriptors, wait this long before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the "out of file descriptors" warning may repeat.
const FD_WARNING_INTERVAL: Duration = Duration::from_secs(10);
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// A forwarding-check server bound to a listener, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    core: Core,
    streams: Vec<Option<TcpStream>>,
    dials: HashMap<CheckId, TcpStream>,
    shutdown: ShutdownHandle,
    accept_paused_until: Option<Instant>,
    last_fd_warning: Option<Instant>,
    fd_refusals: u64,
    /// Connections whose read budget ran out with data left (and whether their FIN was seen):
    /// read again after the other events.
    unfinished: Vec<(ConnId, bool)>,
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
            core: Core::new(config, Instant::now()),
            streams: Vec::new(),
            dials: HashMap::new(),
            shutdown,
            accept_paused_until: None,
            last_fd_warning: None,
            fd_refusals: 0,
            unfinished: Vec::new(),
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

    /// Runs the event loop until [`ShutdownHandle::shutdown`]; returns the final counters.
    pub fn run(mut self) -> io::Result<Stats> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        info!(addr = %self.local_addr, "forwarding-check listening");
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
                    Token(t) if t & DIAL_BIT != 0 => {
                        self.dial_progress(now, CheckId(t & !DIAL_BIT));
                    }
                    Token(id) => {
                        let id = ConnId(id);
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            let closing = event.is_read_closed() || event.is_error();
                            self.read(now, id, &mut buf, closing);
                        }
                        if event.is_writable() {
                            self.flush(now, id);
                        }
                    }
                }
                self.carry_out_actions(now);
            }
            for (id, closing) in std::mem::take(&mut self.unfinished) {
                self.read(now, id, &mut buf, closing);
                self.carry_out_actions(now);
            }
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                self.accept_all(now);
            }
            self.core.handle_timeout(now);
            self.carry_out_actions(now);
        }
        info!(
            connections = self.core.open_connections().len(),
            checks = self.dials.len(),
            "shutting down"
        );
        self.core.handle_shutdown();
        self.carry_out_actions(Instant::now());
        let stats = self.core.stats();
        info!(
            accepted = stats.accepted,
            refused = stats.refused,
            requests = stats.requests,
            bad_requests = stats.bad_requests,
            rate_limited = stats.rate_limited,
            checks = stats.checks,
            checks_open = stats.checks_open,
            "forwarding-check stopped"
        );
        Ok(stats)
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
                    // Forget it at once: no socket was ever recorded, so no Close is needed.
                    self.core.handle_closed(id);
                    return;
                }
                if self.streams.len() <= id.0 {
                    self.streams.resize_with(id.0 + 1, || None);
                }
                let _ = stream.set_nodelay(true);
                self.streams[id.0] = Some(stream);
            }
            Err(refusal) => {
                debug!(%peer, %refusal, "connection refused");
                // Best effort: a fresh socket's send buffer takes this small response.
                let _ = stream.write_all(&refusal.response().render());
                let _ = stream.shutdown(Shutdown::Write);
            }
        }
    }

    /// Reads what the socket has (see [`read_step`] for when to stop), at most
    /// [`READ_BUDGET_BYTES`] per call: a connection with more is noted as unfinished.
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
                    self.core.handle_eof(now, id);
                    return;
                }
                ReadStep::Failed(e) => {
                    self.core.handle_reset(id, &format!("read failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Writes as much pending output as the socket takes.
    fn flush(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(stream) = self.streams.get_mut(id.0).and_then(Option::as_mut) else {
                return;
            };
            let pending = self.core.pending_output(id);
            if pending.is_empty() {
                return;
            }
            match stream.write(pending) {
                Ok(n) => self.core.handle_written(now, id, n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.core.handle_reset(id, &format!("write failed: {e}"));
                    return;
                }
            }
        }
    }

    fn carry_out_actions(&mut self, now: Instant) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Flush(id) => self.flush(now, id),
                Action::ShutdownWrite(id) => {
                    if let Some(stream) = self.streams.get(id.0).and_then(Option::as_ref) {
                        let _ = stream.shutdown(Shutdown::Write);
                    }
                }
                Action::Close(id) => self.close(now, id),
                Action::Dial { check, addr } => self.dial(now, check, addr),
                Action::CancelDial(check) => {
                    if let Some(mut stream) = self.dials.remove(&check) {
                        let _ = self.poll.registry().deregister(&mut stream);
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

    /// Starts a non-blocking connect; its completion shows up as a writable event.
    fn dial(&mut self, now: Instant, check: CheckId, addr: SocketAddr) {
        let token = Token(DIAL_BIT | (check.0 & !DIAL_BIT));
        let started = TcpStream::connect(addr).and_then(|mut stream| {
            self.poll
                .registry()
                .register(&mut stream, token, Interest::WRITABLE)?;
            Ok(stream)
        });
        match started {
            Ok(stream) => {
                debug!(check = check.0, %addr, "dialing back");
                self.dials.insert(check, stream);
            }
            Err(e) => self.core.handle_dial_result(now, check, classify(&e)),
        }
    }

    /// A dial-back socket became ready: finished, failed, or a spurious wakeup.
    fn dial_progress(&mut self, now: Instant, check: CheckId) {
        let Some(stream) = self.dials.get(&check) else {
            return;
        };
        let outcome = match stream.take_error() {
            Ok(Some(e)) | Err(e) => classify(&e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => DialOutcome::Connected,
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => classify(&e),
            },
        };
        if let Some(mut stream) = self.dials.remove(&check) {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        self.core.handle_dial_result(now, check, outcome);
    }
}

/// What a failed connect says about the caller's port.
fn classify(e: &io::Error) -> DialOutcome {
    if e.kind() == ErrorKind::ConnectionRefused {
        return DialOutcome::Refused;
    }
    match e.raw_os_error() {
        Some(
            libc::ENETUNREACH
            | libc::EHOSTUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
            | libc::ETIMEDOUT
            | libc::ECONNRESET
            | libc::ECONNABORTED,
        ) => DialOutcome::Unreachable(e.to_string()),
        _ => DialOutcome::LocalError(e.to_string()),
    }
}

impl node::server::Serve for Server {
    type Config = Config;
    type Stats = Stats;
    const NAME: &'static str = "forwarding-check";

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
