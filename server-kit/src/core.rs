//! The contract between a server's sans-IO core and the driver: [`ServerCore`] (inputs,
//! outputs, timers), [`Output`] (what the core asks the driver to do) and [`Service`] (how a
//! core is built from its configuration).

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use wire::io::READ_BUDGET_BYTES;

/// Identifies one client connection while it is open. The core picks it in
/// [`ServerCore::handle_open`] (use [`crate::Slab`]) and may reuse it once the driver called
/// [`ServerCore::handle_closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub usize);

/// Identifies one outbound connection a core asked for with [`Output::Dial`]. The core picks
/// it; it must not be reused while that dial may still be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DialId(pub usize);

/// Work the driver carries out, drained with [`ServerCore::poll_output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Write [`ServerCore::pending_output`] of this connection as far as the socket takes it,
    /// reporting progress with [`ServerCore::handle_written`]; the rest goes out when the
    /// socket is writable again.
    Flush(ConnId),
    /// Shut down the sending side (a FIN). The connection stays open for reading.
    ShutdownWrite(ConnId),
    /// The core is done with this connection. The driver writes what is pending as far as the
    /// socket takes it now, calls [`ServerCore::handle_closed`] (the id is free from then on)
    /// and closes the socket **gracefully**: when everything pending was written and the write
    /// side is still open, it sends a FIN and reads and discards until the peer closes or
    /// [`LINGER`](crate::LINGER) passes, so that the peer reads the last reply (an error, a
    /// 431) instead of a reset. A connection whose peer does not read, or whose write side the
    /// core already shut down, is closed at once.
    Close(ConnId),
    /// Read this connection again now, until it would block or
    /// [`ServerCore::read_budget`] says 0: the core stopped its reads with a budget of 0 and
    /// the bytes already waiting in the kernel raise no new readiness event.
    Read(ConnId),
    /// Open a non-blocking TCP connection to `addr` and report how it ended with
    /// [`ServerCore::handle_dial`]. The driver sets no deadline: the core keeps its own timer
    /// and sends [`Output::CancelDial`] when it gives up.
    Dial {
        /// The core's name for it.
        dial: DialId,
        /// Where to connect.
        addr: SocketAddr,
    },
    /// Drop the socket of this dial; it is not reported.
    CancelDial(DialId),
}

/// A server's logic, driven by the kit's mio loop ([`crate::Server`]).
///
/// **Drain contract.** The driver feeds inputs (`handle_*`, each with the current time) and
/// then drains [`poll_output`](Self::poll_output) until `None` before it waits for I/O again.
/// Time comes out of [`poll_timeout`](Self::poll_timeout) and goes back in through
/// [`handle_timeout`](Self::handle_timeout) (which may also be called early or more often).
///
/// Each turn of the loop, in this order: the ready sockets are read into the core (accepts,
/// bytes, EOFs, failures, finished dials), then `handle_timeout`, then
/// [`commit`](Self::commit), and only then is any output carried out. So a core whose changes
/// must be durable before a client hears about them (dht-msg's `OK PUT`) gets that for free,
/// and a burst of requests costs one commit.
///
/// Output stays in the core: the driver writes the slice [`pending_output`](Self::pending_output)
/// returns and reports what the socket took with [`handle_written`](Self::handle_written), so
/// a core keeps its own caps and back-pressure (a relay's queue, a mailbox's paused pushes)
/// and nothing is copied into a second buffer.
pub trait ServerCore {
    /// Counters, returned by [`crate::Server::run`] when the server stops.
    type Stats: Clone + Default + std::fmt::Debug + Send + 'static;

    /// Thread name prefix and the name in logs and errors.
    const NAME: &'static str;
    /// Size of the driver's read buffer (one system call's worth).
    const READ_BUFFER_BYTES: usize = READ_BUDGET_BYTES;
    /// Most bytes read from one connection per turn of the loop before the others get theirs
    /// (see [`wire::io::READ_BUDGET_BYTES`]); the rest is read in the next turn.
    const READ_TURN_BYTES: usize = READ_BUDGET_BYTES;

    /// A client connected from `peer` to `local` (the server's own address on that
    /// connection: the one the client dialed, which tells a `[::]` listener's families and
    /// interfaces apart). Both are in [`crate::canonical`] form: an IPv4 client of a dual-stack
    /// socket is `a.b.c.d`. `Err` holds the bytes to send it (an error line, an HTTP 503)
    /// before its socket is closed; nothing is kept for it.
    fn handle_open(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<ConnId, Vec<u8>>;
    /// Bytes arrived on a connection.
    fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]);
    /// The peer shut down its sending side (a read returned 0).
    fn handle_eof(&mut self, now: Instant, conn: ConnId);
    /// A read or a write failed: the connection is dead; the core should close it.
    fn handle_failed(&mut self, now: Instant, conn: ConnId, error: &io::Error);
    /// The driver wrote the first `n` bytes of [`pending_output`](Self::pending_output).
    fn handle_written(&mut self, now: Instant, conn: ConnId, n: usize);
    /// The driver carried out an [`Output::Close`]; the id may be reused from now on.
    fn handle_closed(&mut self, conn: ConnId);
    /// Time passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The server is stopping: close every connection (and cancel every dial).
    fn handle_shutdown(&mut self, now: Instant);
    /// The next thing the driver must do, if any.
    fn poll_output(&mut self) -> Option<Output>;
    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Bytes waiting to be written to a connection.
    fn pending_output(&self, conn: ConnId) -> &[u8];
    /// Counters as of now.
    fn stats(&self) -> Self::Stats;

    /// How many bytes the driver may read from `conn` now: `usize::MAX` (the default) for
    /// "as much as the buffer holds", 0 to stop reading it (then the core owes an
    /// [`Output::Read`] when it may be read again).
    fn read_budget(&mut self, now: Instant, conn: ConnId) -> usize {
        let _ = (now, conn);
        usize::MAX
    }

    /// Where bytes read from `conn` may be written straight away, skipping the core's queue
    /// (a relay's partner with nothing queued for it). The driver writes what the partner's
    /// socket takes and reports both with [`handle_spliced`](Self::handle_spliced) instead of
    /// [`handle_bytes`](Self::handle_bytes). `None` (the default): never.
    fn splice_target(&self, conn: ConnId) -> Option<ConnId> {
        let _ = conn;
        None
    }

    /// `bytes` were read from `conn` and their first `written` were already written to
    /// [`splice_target`](Self::splice_target)`(conn)`. Only called when that returned a
    /// target; the default hands the bytes to [`handle_bytes`](Self::handle_bytes).
    fn handle_spliced(&mut self, now: Instant, conn: ConnId, bytes: &[u8], written: usize) {
        let _ = written;
        self.handle_bytes(now, conn, bytes);
    }

    /// An [`Output::Dial`] ended: `Ok` once the TCP handshake completed (the driver then
    /// drops the socket), else the connect error. The default ignores it.
    fn handle_dial(&mut self, now: Instant, dial: DialId, result: io::Result<()>) {
        let _ = (now, dial, result);
    }

    /// The driver's wake-up handle, given once before the first turn. A core whose helper
    /// threads (a backend's subscriber) hand it input keeps it and calls [`Wake::wake`] after
    /// each hand-over; the driver then calls [`handle_wake`](Self::handle_wake). The default
    /// drops it.
    fn set_waker(&mut self, wake: Wake) {
        let _ = wake;
    }

    /// Something woke the loop ([`Wake::wake`], or a shutdown request): take what helper
    /// threads handed over. Called before `handle_timeout` in the turn. The default does
    /// nothing.
    fn handle_wake(&mut self, now: Instant) {
        let _ = now;
    }

    /// Makes this turn's changes durable before any output is carried out (see the drain
    /// contract). The only place an implementor may do I/O of its own; an error stops the
    /// server. The default does nothing.
    fn commit(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Wakes a server's event loop from another thread (see [`ServerCore::set_waker`]). Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Wake(pub(crate) std::sync::Arc<mio::Waker>);

impl Wake {
    /// Makes the loop run a turn soon and call [`ServerCore::handle_wake`]. A failure (the loop
    /// is gone) is ignored: there is nobody left to wake.
    pub fn wake(&self) {
        let _ = self.0.wake();
    }
}

/// A [`ServerCore`] that can be built from its configuration, so that [`crate::Server::bind`],
/// [`crate::RunningServer::start`] and [`crate::run`] can start it.
pub trait Service: ServerCore + Sized + Send + 'static {
    /// Its settings (limits, lifetimes, a data directory).
    type Config: Send + 'static;

    /// Builds the core at `now` (may open files: a data directory).
    fn build(config: Self::Config, now: Instant) -> io::Result<Self>;
}
