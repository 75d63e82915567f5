//! The mio event loop every server runs: it translates socket readiness into [`ServerCore`]
//! calls and carries out the core's [`Output`]s. It never looks at a protocol.
//!
//! One thread, one `Poll`, no thread per connection. Tokens: a connection's is its
//! [`ConnId`]; dials carry [`DIAL_BIT`], lingering sockets [`LINGER_BIT`].

mod accept;
mod linger;

use std::collections::HashMap;
use std::io::{self, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use tracing::{debug, info, warn};
use wire::io::{ReadStep, read_step};

use crate::core::{ConnId, DialId, Output, ServerCore, Service, Wake};
use crate::listen::canonical;
use crate::running::{LiveStats, ShutdownHandle};
use accept::AcceptGate;
pub use accept::is_fd_exhaustion;
use linger::Lingering;
pub use linger::{LINGER, MAX_LINGERING};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Tokens with this bit are dials (the low bits are the [`DialId`]).
const DIAL_BIT: usize = 1 << (usize::BITS - 2);
/// Tokens with this bit (and not [`DIAL_BIT`]) are lingering sockets.
const LINGER_BIT: usize = 1 << (usize::BITS - 3);
/// The id part of a dial or linger token.
const ID_MASK: usize = LINGER_BIT - 1;

/// A client connection's socket and what the driver knows about its two directions.
#[derive(Debug)]
struct Stream {
    sock: TcpStream,
    /// The core had its write side shut down ([`Output::ShutdownWrite`]).
    write_shut: bool,
    /// A read returned 0: the peer sends nothing more.
    eof: bool,
}

/// Something the loop reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Conn(ConnId),
    Linger(usize),
}

/// A server: a listener, a core, and the loop that connects them. Start it with
/// [`run`](Server::run) (this thread), [`crate::RunningServer`] (a thread of its own) or
/// [`crate::run`] (a binary's `main`, stopped by SIGINT/SIGTERM).
///
/// What it guarantees every core:
/// - **Addresses**: a client's address reaches the core in [`canonical`] form (an IPv4 client
///   of a `[::]` socket is `a.b.c.d`), with the local address it connected to.
/// - **Accepting**: every pending connection is accepted each time the listener is ready; when
///   the process is out of file descriptors it pauses accepting for 100 ms (clients wait in the
///   backlog) and warns at most every 10 s, instead of spinning.
/// - **Reading**: at most [`ServerCore::READ_TURN_BYTES`] from one connection per turn (within
///   [`ServerCore::read_budget`]); a connection with more is read again first thing next turn,
///   without waiting for an event. A FIN or an error reported with readable data is read to the
///   end ([`wire::io::read_step`]).
/// - **Writing**: pending output is written until the socket would block, and again whenever it
///   becomes writable; a write or read failure is reported with [`ServerCore::handle_failed`]
///   (the core then closes the connection).
/// - **Ordering** (see the drain contract on [`ServerCore`]): inputs, then `handle_timeout`,
///   then [`ServerCore::commit`], then outputs, every turn.
/// - **Closing**: graceful (see [`Output::Close`]): a last reply is read by the client, not
///   reset away; a client that neither reads nor closes is dropped after [`LINGER`].
/// - **Shutdown**: on [`ShutdownHandle::shutdown`] it stops accepting, lets the core close
///   everything (`handle_shutdown`, then a commit), writes what the sockets take and returns
///   the core's final [`ServerCore::stats`].
#[derive(Debug)]
pub struct Server<C: ServerCore> {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    core: C,
    streams: Vec<Option<Stream>>,
    open: usize,
    dials: HashMap<DialId, TcpStream>,
    lingering: Lingering,
    shutdown: ShutdownHandle,
    accept: AcceptGate,
    /// Sources whose turn's read share ran out with data left (and whether their FIN was
    /// seen): read again first thing next turn.
    unfinished: Vec<(Source, bool)>,
    /// Connections that became writable this turn: flushed after the commit.
    writable: Vec<ConnId>,
    buf: Vec<u8>,
    /// Set once shutdown began: closes no longer linger.
    stopping: bool,
    /// Published every turn once someone asked for it (`live_wanted`).
    live: LiveStats<C::Stats>,
    live_wanted: std::cell::Cell<bool>,
}

impl<C: Service> Server<C> {
    /// Binds `addr` (port 0: any; `[::]`: both families, see [`crate::bind_listener`]) and
    /// builds the core from `config`.
    pub fn bind(addr: SocketAddr, config: C::Config) -> io::Result<Server<C>> {
        let listener = crate::bind_listener(addr)?;
        let core = C::build(config, Instant::now())?;
        Server::new(listener, core)
    }
}

impl<C: ServerCore> Server<C> {
    /// Wraps an already bound listener and a core.
    pub fn new(listener: std::net::TcpListener, mut core: C) -> io::Result<Server<C>> {
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let shutdown = ShutdownHandle::new(poll.registry(), WAKER)?;
        core.set_waker(Wake(shutdown.waker()));
        Ok(Server {
            poll,
            listener,
            local_addr,
            core,
            streams: Vec::new(),
            open: 0,
            dials: HashMap::new(),
            lingering: Lingering::new(LINGER_BIT),
            shutdown,
            accept: AcceptGate::default(),
            unfinished: Vec::new(),
            writable: Vec::new(),
            buf: vec![0u8; C::READ_BUFFER_BYTES.max(1)],
            stopping: false,
            live: LiveStats::default(),
            live_wanted: std::cell::Cell::new(false),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the server from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The core's counters, updated once per turn of the loop from now on, readable while it
    /// runs (on another thread).
    pub fn live_stats(&self) -> LiveStats<C::Stats> {
        self.live_wanted.set(true);
        self.live.clone()
    }

    /// Runs the loop until [`ShutdownHandle::shutdown`]; returns the core's final counters.
    /// Fails (and stops serving) if polling or [`ServerCore::commit`] fails.
    pub fn run(mut self) -> io::Result<C::Stats> {
        let mut events = Events::with_capacity(1024);
        info!(addr = %self.local_addr, "{} listening", C::NAME);
        while !self.shutdown.is_requested() {
            let timeout = if self.unfinished.is_empty() {
                self.next_wakeup()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for (source, closing) in std::mem::take(&mut self.unfinished) {
                self.read(now, source, closing);
            }
            let mut woken = false;
            for event in &events {
                let closing = event.is_read_closed() || event.is_error();
                let readable = event.is_readable() || closing;
                match event.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => woken = true,
                    Token(t) if t & DIAL_BIT != 0 => self.dial_progress(now, DialId(t & ID_MASK)),
                    Token(t) if t & LINGER_BIT != 0 => {
                        if readable {
                            self.read(now, Source::Linger(t & ID_MASK), closing);
                        }
                    }
                    Token(id) => {
                        if readable {
                            self.read(now, Source::Conn(ConnId(id)), closing);
                        }
                        if event.is_writable() {
                            self.writable.push(ConnId(id));
                        }
                    }
                }
            }
            if self.accept.reopen_if_due(now) {
                self.accept_all(now);
            }
            if woken {
                self.core.handle_wake(now);
            }
            self.core.handle_timeout(now);
            self.core.commit()?;
            // Published before this turn's replies are written: a client that has its answer
            // finds its request counted in the next scrape.
            if self.live_wanted.get() {
                self.live.set(self.core.stats());
            }
            for id in std::mem::take(&mut self.writable) {
                self.flush(now, id);
            }
            self.carry_out(now);
            self.lingering.expire(self.poll.registry(), now);
        }
        self.stop()
    }

    fn stop(mut self) -> io::Result<C::Stats> {
        info!(
            connections = self.open,
            lingering = self.lingering.len(),
            "shutting down"
        );
        self.stopping = true;
        let now = Instant::now();
        self.core.handle_shutdown(now);
        self.core.commit()?;
        self.carry_out(now);
        self.lingering.clear(self.poll.registry());
        for (_, mut sock) in self.dials.drain() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        let stats = self.core.stats();
        self.live.set(stats.clone());
        info!(?stats, "{} stopped", C::NAME);
        Ok(stats)
    }

    fn next_wakeup(&mut self) -> Option<Instant> {
        [
            self.core.poll_timeout(),
            self.accept.resumes_at(),
            self.lingering.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn accept_all(&mut self, now: Instant) {
        if self.accept.is_paused() {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((sock, peer)) => self.admit(now, sock, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_fd_exhaustion(&e) => {
                    self.accept.out_of_fds(now, &e, self.open);
                    return;
                }
                // ECONNABORTED and friends concern one client only.
                Err(e) => debug!("accept failed: {e}"),
            }
        }
    }

    fn admit(&mut self, now: Instant, mut sock: TcpStream, peer: SocketAddr) {
        // A dual-stack socket reports IPv4 clients as `::ffff:a.b.c.d`: the core sees the
        // IPv4 address (limits, registrations and replies as on an IPv4 socket).
        let peer = canonical(peer);
        let local = sock.local_addr().map_or(self.local_addr, canonical);
        let id = match self.core.handle_open(now, peer, local) {
            Ok(id) => id,
            Err(refusal) => {
                // The last line says why (an `ERROR` line, or an HTTP response's body).
                let text = String::from_utf8_lossy(&refusal);
                let reason = text.lines().rfind(|l| !l.is_empty()).unwrap_or_default();
                debug!(%peer, reason, "connection refused");
                // Best effort: a fresh socket's send buffer takes a short refusal.
                let _ = sock.write_all(&refusal);
                let _ = sock.shutdown(Shutdown::Write);
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(id.0),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(%peer, "could not register connection: {e}");
            // The core closes it; with no socket recorded, the close only frees the id.
            self.core.handle_failed(now, id, &e);
            return;
        }
        // Nagle would hold small replies back behind the client's delayed ACK.
        let _ = sock.set_nodelay(true);
        if self.streams.len() <= id.0 {
            self.streams.resize_with(id.0 + 1, || None);
        }
        self.streams[id.0] = Some(Stream {
            sock,
            write_shut: false,
            eof: false,
        });
        self.open += 1;
    }

    /// Reads what `source` has, at most [`ServerCore::READ_TURN_BYTES`] (a source with more
    /// is noted as unfinished). `closing`: the event also reported the peer's FIN or an error,
    /// which raises no further edge, so read on to the end.
    fn read(&mut self, now: Instant, source: Source, closing: bool) {
        let mut buf = std::mem::take(&mut self.buf);
        let mut this_turn = 0;
        loop {
            if this_turn >= C::READ_TURN_BYTES {
                if !self.unfinished.iter().any(|(s, _)| *s == source) {
                    self.unfinished.push((source, closing));
                }
                break;
            }
            let (sock, window) = match source {
                Source::Conn(id) => {
                    let budget = self.core.read_budget(now, id);
                    match self.streams.get_mut(id.0).and_then(Option::as_mut) {
                        Some(stream) if budget > 0 => (&mut stream.sock, budget.min(buf.len())),
                        _ => break,
                    }
                }
                Source::Linger(slot) => match self.lingering.sock_mut(slot) {
                    Some(sock) => (sock, buf.len()),
                    None => break,
                },
            };
            match (read_step(sock, &mut buf[..window], closing), source) {
                (ReadStep::Data { len, more }, _) => {
                    this_turn += len;
                    if let Source::Conn(id) = source {
                        self.deliver(now, id, &buf[..len]);
                    }
                    if !more {
                        break;
                    }
                }
                (ReadStep::Blocked, _) => break,
                (ReadStep::Eof, Source::Conn(id)) => {
                    if let Some(stream) = self.streams.get_mut(id.0).and_then(Option::as_mut) {
                        stream.eof = true;
                    }
                    self.core.handle_eof(now, id);
                    break;
                }
                (ReadStep::Failed(e), Source::Conn(id)) => {
                    debug!(conn = id.0, "read failed: {e}");
                    self.core.handle_failed(now, id, &e);
                    break;
                }
                (ReadStep::Eof | ReadStep::Failed(_), Source::Linger(slot)) => {
                    self.lingering.close(self.poll.registry(), slot);
                    break;
                }
            }
        }
        self.buf = buf;
    }

    /// Hands bytes read from `id` to the core; when the core names a splice target, writes
    /// them to it first so that only the rest is queued.
    fn deliver(&mut self, now: Instant, id: ConnId, bytes: &[u8]) {
        let Some(dst) = self.core.splice_target(id) else {
            self.core.handle_bytes(now, id, bytes);
            return;
        };
        let mut written = 0;
        if let Some(stream) = self.streams.get_mut(dst.0).and_then(Option::as_mut) {
            while written < bytes.len() {
                match stream.sock.write(&bytes[written..]) {
                    Ok(0) => break,
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
        self.core.handle_spliced(now, id, bytes, written);
    }

    /// Writes pending output until the socket would block. Returns whether nothing is left.
    fn flush(&mut self, now: Instant, id: ConnId) -> bool {
        let Some(stream) = self.streams.get_mut(id.0).and_then(Option::as_mut) else {
            return true;
        };
        loop {
            let pending = self.core.pending_output(id);
            if pending.is_empty() {
                return true;
            }
            match stream.sock.write(pending) {
                Ok(0) => return false,
                Ok(n) => self.core.handle_written(now, id, n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(conn = id.0, "write failed: {e}");
                    self.core.handle_failed(now, id, &e);
                    return false;
                }
            }
        }
    }

    fn carry_out(&mut self, now: Instant) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Flush(id) => {
                    self.flush(now, id);
                }
                Output::Close(id) => self.close(now, id),
                // A resumed connection may have its FIN waiting behind the data: read on to
                // the end (or the budget), as after an event that reported the FIN.
                Output::Read(id) => self.read(now, Source::Conn(id), true),
                Output::ShutdownWrite(id) => {
                    if let Some(stream) = self.streams.get_mut(id.0).and_then(Option::as_mut) {
                        stream.write_shut = true;
                        if let Err(e) = stream.sock.shutdown(Shutdown::Write) {
                            debug!(conn = id.0, "shutdown(Write) failed: {e}");
                        }
                    }
                }
                Output::Dial { dial, addr } => self.dial(now, dial, addr),
                Output::CancelDial(dial) => {
                    if let Some(mut sock) = self.dials.remove(&dial) {
                        let _ = self.poll.registry().deregister(&mut sock);
                    }
                }
            }
        }
    }

    /// Carries out [`Output::Close`]: best-effort flush, the core forgets the id, and the
    /// socket lingers when that lets the peer read the last reply.
    fn close(&mut self, now: Instant, id: ConnId) {
        let all_written = self.flush(now, id);
        let stream = self.streams.get_mut(id.0).and_then(Option::take);
        self.core.handle_closed(id);
        let Some(mut stream) = stream else {
            return;
        };
        self.open -= 1;
        let linger = all_written
            && !stream.write_shut
            && !stream.eof
            && !self.stopping
            && !self.lingering.is_full()
            && stream.sock.shutdown(Shutdown::Write).is_ok();
        if !linger {
            let _ = self.poll.registry().deregister(&mut stream.sock);
            return;
        }
        if let Some(slot) = self.lingering.add(self.poll.registry(), stream.sock, now) {
            // Bytes already waiting raise no new edge: drain them now.
            self.read(now, Source::Linger(slot), false);
        }
    }

    /// Starts a non-blocking connect; its completion shows up as a writable event.
    fn dial(&mut self, now: Instant, dial: DialId, addr: SocketAddr) {
        let token = Token(DIAL_BIT | (dial.0 & ID_MASK));
        let started = TcpStream::connect(addr).and_then(|mut sock| {
            self.poll
                .registry()
                .register(&mut sock, token, Interest::WRITABLE)?;
            Ok(sock)
        });
        match started {
            Ok(sock) => {
                debug!(dial = dial.0, %addr, "dialing");
                self.dials.insert(dial, sock);
            }
            Err(e) => self.core.handle_dial(now, dial, Err(e)),
        }
    }

    /// A dial's socket became ready: connected, failed, or a spurious wakeup.
    fn dial_progress(&mut self, now: Instant, dial: DialId) {
        let Some(sock) = self.dials.get(&dial) else {
            return;
        };
        let result = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match sock.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => Err(e),
            },
        };
        if let Some(mut sock) = self.dials.remove(&dial) {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        self.core.handle_dial(now, dial, result);
    }
}
