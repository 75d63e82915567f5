//! The node's own thread, and the handle the Python objects talk to it through.
//!
//! ```text
//!  Python thread(s)                                 the node's thread (one per Net)
//!  Net / Connection ──Command (mpsc) + mio::Waker──▶ node::Net::poll(None): sockets, timers,
//!        ▲                                            keepalives, punches, the rendezvous
//!        └──── State (Mutex + Condvar): inboxes, ◀── after every turn: lines, events,
//!              events, connect outcomes               connect outcomes, queued bytes
//! ```
//!
//! The node's loop never waits for Python: a Python loop that sleeps a second between passes
//! (as PyP2P's examples do) stalls nothing. Every blocking call here waits in slices of
//! [`SLICE`] and calls the caller's `interrupt` check between them (the Python layer releases
//! the GIL while waiting and checks for Ctrl-C there), so it returns promptly on a signal or
//! when another thread calls [`Driver::stop`].
//!
//! Pure Rust (no Python types), so it is tested with `cargo test`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Waker;
use node::connect::{ConnectOutcome, Method};
use node::core::{ConnId, Direction};
use node::wire::unl::v3::AnyUnl;
use node::{BootstrapReport, Config, NetError};
use thiserror::Error;

use crate::events::NodeEvent;
use crate::options::NetKind;

mod shared;
mod thread;

use shared::{Command, ConnState, Reply, Shared, State};

/// How long a blocking call waits before it checks for an interrupt again.
pub const SLICE: Duration = Duration::from_millis(50);
/// A sender blocks while more than this is queued for its peer and not yet written (the node
/// would disconnect a peer once its own cap, 16 MiB by default, is passed).
pub const HIGH_WATER_BYTES: usize = 4 << 20;
/// Events kept for the application at most; older ones are dropped (and counted).
pub const MAX_EVENTS: usize = 10_000;
/// Closed connections remembered (for `is_open` and `close_reason`) at most.
pub const MAX_CLOSED_KEPT: usize = 1024;

/// What can go wrong between the Python objects and the node's thread.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The node refused or failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The node has stopped (or its thread ended), so it cannot do this.
    #[error("the node is stopped: {0}")]
    Stopped(String),
    /// The node's thread could not be started.
    #[error("cannot start the node's thread: {0}")]
    Spawn(io::Error),
    /// A wait ran out.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The connection is closed.
    #[error("connection {conn} is closed: {reason}")]
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why it closed.
        reason: String,
    },
    /// A line to send contains `\r` or `\n`.
    #[error("a line cannot contain \\r or \\n: {0:?}")]
    LineBreak(String),
}

/// A blocking call ended without its result: the node's reason, or the caller's interrupt.
#[derive(Debug)]
pub enum Waited<E> {
    /// The node's reason.
    Failed(DriverError),
    /// The caller's `interrupt` check failed (Ctrl-C, for the Python layer).
    Interrupted(E),
}

impl<E> From<DriverError> for Waited<E> {
    fn from(e: DriverError) -> Self {
        Waited::Failed(e)
    }
}

/// What `start()` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartReport {
    /// Where the node accepts connections (`None`: it does not listen).
    pub local_addr: Option<SocketAddr>,
    /// Whether the mailbox connection is registered (reverse connects reach us).
    pub mailbox_ready: bool,
    /// Whether a simultaneous node is registered for hole punching.
    pub registered: bool,
}

/// One connection as the Python side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Who dialed.
    pub direction: Direction,
    /// How a connect by UNL opened it (`None`: an overlay or inbound connection).
    pub method: Option<Method>,
    /// Whether it is open.
    pub open: bool,
    /// Why it closed (once it did).
    pub reason: Option<String>,
}

/// The handle to one node and its thread. Dropping it stops the node (without waiting).
#[derive(Debug)]
pub struct Driver {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    /// `None` once stopped (its eventfd is closed with the node's own handle).
    waker: Mutex<Option<Arc<Waker>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_ticket: AtomicU64,
    kind: NetKind,
}

impl Driver {
    /// Creates the node (on its own thread: resolves the servers, opens nothing yet).
    /// `debug`: 0 quiet, 1 info, 2 and up debug logs on stderr (`RUST_LOG` wins when set).
    pub fn spawn(config: Config, kind: NetKind, debug: u8) -> Result<Driver, DriverError> {
        let shared = Arc::new(Shared::default());
        let (commands, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("p2pnode".to_owned())
                .spawn(move || thread::run(config, debug, rx, &shared, &ready_tx))
                .map_err(DriverError::Spawn)?
        };
        let waker = match ready_rx.recv() {
            Ok(Ok(waker)) => waker,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e.into());
            }
            Err(_) => {
                let _ = thread.join();
                return Err(DriverError::Stopped(
                    "the node's thread ended while starting".to_owned(),
                ));
            }
        };
        Ok(Driver {
            shared,
            commands,
            waker: Mutex::new(Some(waker)),
            thread: Mutex::new(Some(thread)),
            next_ticket: AtomicU64::new(1),
            kind,
        })
    }

    /// The net's kind (`direct` nets do not bootstrap or advertise).
    pub fn kind(&self) -> NetKind {
        self.kind
    }

    /// Opens the listener, probes reachability (with a forwarding check), registers a
    /// simultaneous node and waits for the mailbox (each bounded; see the thread).
    pub fn start<E>(
        &self,
        interrupt: impl FnMut() -> Result<(), E>,
    ) -> Result<StartReport, Waited<E>> {
        self.request("start", Command::Start, interrupt)
    }

    /// Asks the rendezvous servers for nodes and dials them (`None` on a `direct` net).
    pub fn bootstrap<E>(
        &self,
        interrupt: impl FnMut() -> Result<(), E>,
    ) -> Result<Option<BootstrapReport>, Waited<E>> {
        if self.kind == NetKind::Direct {
            return Ok(None);
        }
        self.request("bootstrap", Command::Bootstrap, interrupt)
            .map(Some)
    }

    /// Registers with the rendezvous; the source port it saw (`None` on a `direct` net).
    pub fn advertise<E>(
        &self,
        interrupt: impl FnMut() -> Result<(), E>,
    ) -> Result<Option<u16>, Waited<E>> {
        if self.kind == NetKind::Direct {
            return Ok(None);
        }
        self.request("advertise", Command::Advertise, interrupt)
            .map(Some)
    }

    /// This node's UNL (v3, signed), as text.
    pub fn unl<E>(&self, interrupt: impl FnMut() -> Result<(), E>) -> Result<String, Waited<E>> {
        self.request("unl", Command::Unl, interrupt)
    }

    /// This node's UNL in PyP2P's v2 format, as text.
    pub fn unl_v2<E>(&self, interrupt: impl FnMut() -> Result<(), E>) -> Result<String, Waited<E>> {
        self.request("unl_v2", Command::UnlV2, interrupt)
    }

    /// Starts connecting to `unl`; the ticket to wait for or take the outcome with.
    pub fn connect_start(&self, unl: AnyUnl) -> Result<u64, DriverError> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Connect { unl, ticket })?;
        Ok(ticket)
    }

    /// Waits for the outcome of connect `ticket` (until `deadline`, when given). On a timeout
    /// or an interrupt the connect is abandoned (it may still open a connection later).
    pub fn connect_wait<E>(
        &self,
        ticket: u64,
        deadline: Option<Instant>,
        mut interrupt: impl FnMut() -> Result<(), E>,
    ) -> Result<ConnectOutcome, Waited<E>> {
        let started = Instant::now();
        let mut st = self.shared.lock();
        loop {
            if let Some(outcome) = st.connects.remove(&ticket) {
                return Ok(outcome);
            }
            let stop = self.stopped(&st);
            let late = deadline.is_some_and(|d| Instant::now() >= d);
            if stop.is_some() || late {
                st.abandoned.insert(ticket);
                return Err(Waited::Failed(stop.unwrap_or_else(|| {
                    DriverError::Timeout {
                        what: "connect".to_owned(),
                        after: started.elapsed(),
                    }
                })));
            }
            st = self.shared.wait_slice(st);
            drop(st);
            if let Err(e) = interrupt() {
                self.shared.lock().abandoned.insert(ticket);
                return Err(Waited::Interrupted(e));
            }
            st = self.shared.lock();
        }
    }

    /// The outcome of connect `ticket` if it has one now.
    pub fn connect_take(&self, ticket: u64) -> Option<ConnectOutcome> {
        self.shared.lock().connects.remove(&ticket)
    }

    /// Queues `line` for `conn` unless more than [`HIGH_WATER_BYTES`] wait for the peer;
    /// returns whether it did (never blocks: the fast path of [`Driver::send_line`]).
    pub fn try_send_line(&self, conn: ConnId, line: &str) -> Result<bool, DriverError> {
        if line.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err(DriverError::LineBreak(line.to_owned()));
        }
        let mut st = self.shared.lock();
        if let Some(e) = self.stopped(&st) {
            return Err(e);
        }
        match st.conns.get_mut(&conn) {
            Some(c) if c.info.open => {
                if c.queued + c.in_channel > HIGH_WATER_BYTES {
                    return Ok(false);
                }
                c.in_channel += line.len() + 2;
            }
            other => {
                let reason = other
                    .and_then(|c| c.info.reason.clone())
                    .unwrap_or_else(|| "closed".to_owned());
                return Err(DriverError::Closed { conn, reason });
            }
        }
        drop(st);
        self.send(Command::Send {
            conn,
            line: line.to_owned(),
        })?;
        Ok(true)
    }

    /// Queues `line` for `conn`. Blocks (up to `deadline`) while more than
    /// [`HIGH_WATER_BYTES`] wait for the peer.
    pub fn send_line<E>(
        &self,
        conn: ConnId,
        line: &str,
        deadline: Option<Instant>,
        mut interrupt: impl FnMut() -> Result<(), E>,
    ) -> Result<(), Waited<E>> {
        let started = Instant::now();
        while !self.try_send_line(conn, line)? {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(DriverError::Timeout {
                    what: format!("sending to connection {conn} (the peer does not read)"),
                    after: started.elapsed(),
                }
                .into());
            }
            drop(self.shared.wait_slice(self.shared.lock()));
            interrupt().map_err(Waited::Interrupted)?;
        }
        Ok(())
    }

    /// Asks to close `conn` (done at the node's next turn).
    pub fn close(&self, conn: ConnId) {
        let _ = self.send(Command::Close(conn));
    }

    /// Floods `line` to the overlay.
    pub fn broadcast(&self, line: &str) -> Result<(), DriverError> {
        if line.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err(DriverError::LineBreak(line.to_owned()));
        }
        if let Some(e) = self.stopped(&self.shared.lock()) {
            return Err(e);
        }
        self.send(Command::Broadcast(line.to_owned()))
    }

    /// Takes every line received on `conn` so far.
    pub fn take_lines(&self, conn: ConnId) -> Vec<String> {
        self.shared
            .lock()
            .conns
            .get_mut(&conn)
            .map(|c| c.inbox.drain(..).collect())
            .unwrap_or_default()
    }

    /// Takes the oldest line received on `conn`, waiting for one until `deadline` (`None`:
    /// as long as the connection is open). `None` when none came or the connection closed.
    pub fn recv_line<E>(
        &self,
        conn: ConnId,
        deadline: Option<Instant>,
        mut interrupt: impl FnMut() -> Result<(), E>,
    ) -> Result<Option<String>, E> {
        let mut st = self.shared.lock();
        loop {
            let open = match st.conns.get_mut(&conn) {
                Some(c) => {
                    if let Some(line) = c.inbox.pop_front() {
                        return Ok(Some(line));
                    }
                    c.info.open
                }
                None => false,
            };
            let late = deadline.is_some_and(|d| Instant::now() >= d);
            if !open || late || st.ended.is_some() {
                return Ok(None);
            }
            st = self.shared.wait_slice(st);
            drop(st);
            interrupt()?;
            st = self.shared.lock();
        }
    }

    /// The connections to show: open ones and closed ones with unread lines, oldest first.
    pub fn connections(&self) -> Vec<ConnId> {
        self.shared
            .lock()
            .conns
            .iter()
            .filter(|(_, c)| c.info.open || !c.inbox.is_empty())
            .map(|(id, _)| *id)
            .collect()
    }

    /// What is known about `conn` (`None`: never seen, or forgotten long after it closed).
    pub fn conn_info(&self, conn: ConnId) -> Option<ConnInfo> {
        self.shared.lock().conns.get(&conn).map(|c| c.info.clone())
    }

    /// Takes the events since the last call, and how many were dropped since (the queue
    /// keeps [`MAX_EVENTS`]).
    pub fn take_events(&self) -> (Vec<NodeEvent>, u64) {
        let mut st = self.shared.lock();
        let dropped = std::mem::take(&mut st.dropped_events);
        (st.events.drain(..).collect(), dropped)
    }

    /// Waits until a connection has unread lines or a connection opened or closed since
    /// `generation` (as returned by the last call), or until `deadline`. Returns whether
    /// something is there, and the generation to pass next time.
    pub fn wait<E>(
        &self,
        generation: u64,
        deadline: Option<Instant>,
        mut interrupt: impl FnMut() -> Result<(), E>,
    ) -> Result<(bool, u64), E> {
        let mut st = self.shared.lock();
        loop {
            let ready =
                st.conn_generation != generation || st.conns.values().any(|c| !c.inbox.is_empty());
            if ready || st.ended.is_some() || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok((ready, st.conn_generation));
            }
            st = self.shared.wait_slice(st);
            drop(st);
            interrupt()?;
            st = self.shared.lock();
        }
    }

    /// Where the node accepts connections (after `start()`).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.lock().local_addr
    }

    /// Whether the node runs (not stopped, thread alive).
    pub fn is_running(&self) -> bool {
        self.stopped(&self.shared.lock()).is_none()
    }

    /// Stops the node: `CLEAR` at the rendezvous (if advertised), flush, close everything,
    /// end the thread; returns once the thread has ended. Blocking calls of other threads
    /// return at once with [`DriverError::Stopped`]. Idempotent.
    pub fn stop<E>(&self, mut interrupt: impl FnMut() -> Result<(), E>) -> Result<(), E> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let _ = self.commands.send(Command::Stop);
        self.wake();
        let mut st = self.shared.lock();
        while st.ended.is_none() {
            st = self.shared.wait_slice(st);
            drop(st);
            interrupt()?;
            st = self.shared.lock();
        }
        drop(st);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            // It has published `ended`: only its last few instructions are left.
            let _ = thread.join();
        }
        self.waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Ok(())
    }

    /// Why calls fail now (`None`: the node runs).
    fn stopped(&self, st: &State) -> Option<DriverError> {
        if let Some(why) = &st.ended {
            return Some(DriverError::Stopped(why.clone()));
        }
        self.shared
            .stopping
            .load(Ordering::SeqCst)
            .then(|| DriverError::Stopped("stop() was called".to_owned()))
    }

    /// Sends `command` and wakes the thread (once per batch of commands).
    fn send(&self, command: Command) -> Result<(), DriverError> {
        self.commands.send(command).map_err(|_| {
            DriverError::Stopped(
                self.shared
                    .lock()
                    .ended
                    .clone()
                    .unwrap_or_else(|| "the node's thread ended".to_owned()),
            )
        })?;
        if !self.shared.wake_pending.swap(true, Ordering::SeqCst) {
            self.wake();
        }
        Ok(())
    }

    /// Wakes the node's thread out of `poll`.
    fn wake(&self) {
        if let Some(waker) = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = waker.wake();
        }
    }

    /// Sends a request and waits for its reply.
    fn request<T, E>(
        &self,
        what: &str,
        make: impl FnOnce(Reply<T>) -> Command,
        mut interrupt: impl FnMut() -> Result<(), E>,
    ) -> Result<T, Waited<E>> {
        if let Some(e) = self.stopped(&self.shared.lock()) {
            return Err(e.into());
        }
        let (tx, rx): (Reply<T>, Receiver<Result<T, DriverError>>) = mpsc::channel();
        self.send(make(tx))?;
        loop {
            match rx.recv_timeout(SLICE) {
                Ok(result) => return result.map_err(Waited::Failed),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self
                        .stopped(&self.shared.lock())
                        .unwrap_or_else(|| {
                            DriverError::Stopped(format!("{what}: the node's thread ended"))
                        })
                        .into());
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            interrupt().map_err(Waited::Interrupted)?;
            if let Some(e) = self.stopped(&self.shared.lock()) {
                return Err(e.into());
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Without waiting: the thread stops the node (CLEAR, flush, close) and ends.
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.commands.send(Command::Stop);
        self.wake();
    }
}

#[cfg(test)]
mod tests;
