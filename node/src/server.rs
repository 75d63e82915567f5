//! What the mio drivers of our servers (`rendezvous`, `forwarding-check`, `dht-msg`) share:
//! a [`ShutdownHandle`], a [`RunningServer`] for tests and benches, and the edge-triggered read
//! rule ([`read_step`]), so a fix to any of them lands once.

use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use mio::{Registry, Token, Waker};
use tracing::warn;

/// Stops a running server from another thread (or a signal handler thread).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// A handle that wakes the poll behind `registry` with `token`.
    pub fn new(registry: &Registry, token: Token) -> io::Result<ShutdownHandle> {
        Ok(ShutdownHandle {
            stop: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(Waker::new(registry, token)?),
        })
    }

    /// Asks the server to stop: it stops accepting, finishes what it can and closes every
    /// connection. Returns at once; the server's `run` returns when done.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!("could not wake the event loop for shutdown: {e}");
        }
    }

    /// Whether [`ShutdownHandle::shutdown`] was called.
    pub fn is_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A server that can run on its own thread (see [`RunningServer`]).
pub trait Serve: Sized + Send + 'static {
    /// Its settings.
    type Config;
    /// What `run` returns when it stops.
    type Stats: Default + Send + 'static;
    /// Thread name prefix, and the name in errors.
    const NAME: &'static str;

    /// Binds `addr` (port 0: any).
    fn bind(addr: SocketAddr, config: Self::Config) -> io::Result<Self>;
    /// Where it listens.
    fn local_addr(&self) -> SocketAddr;
    /// A handle that stops it.
    fn shutdown_handle(&self) -> ShutdownHandle;
    /// Serves until shut down.
    fn run(self) -> io::Result<Self::Stats>;
}

/// A server running on its own thread; stopped and joined on drop. Meant for tests and benches.
#[derive(Debug)]
pub struct RunningServer<S: Serve> {
    addr: SocketAddr,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<S::Stats>>>,
}

impl<S: Serve> RunningServer<S> {
    /// Binds `addr` (use port 0 for any) and runs the server on a new thread.
    pub fn start(addr: SocketAddr, config: S::Config) -> io::Result<RunningServer<S>> {
        let server = S::bind(addr, config)?;
        let addr = server.local_addr();
        let handle = server.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name(format!("{}-{addr}", S::NAME))
            .spawn(move || server.run())?;
        Ok(RunningServer {
            addr,
            handle,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it and returns its final counters.
    pub fn stop(mut self) -> io::Result<S::Stats> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<S::Stats> {
        self.handle.shutdown();
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other(format!("{} thread panicked", S::NAME)))?,
            None => Ok(S::Stats::default()),
        }
    }
}

impl<S: Serve> Drop for RunningServer<S> {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Whether an accept failed because the process or system ran out of file descriptors.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Most bytes a driver reads from one connection before it turns to the other ready sockets.
///
/// With edge-triggered readiness a driver must read until the socket would block, but a peer
/// that writes as fast as it can never lets it block: read without a budget, one such peer
/// would keep the loop to itself and every other client would wait (measured with the
/// rendezvous server: a victim's request went from 0.1 ms to 25 ms). So a driver reads at most
/// this much per connection per turn, notes the connection as unfinished (no new edge will
/// come for it), and reads it again after the other events, polling without waiting while any
/// connection is unfinished.
pub const READ_BUDGET_BYTES: usize = 16 * 1024;

/// One step of reading an edge-triggered socket (see [`read_step`]).
#[derive(Debug)]
pub enum ReadStep {
    /// `len` bytes were read into the buffer; read again only if `more`.
    Data {
        /// Bytes read.
        len: usize,
        /// Whether the socket may hold more.
        more: bool,
    },
    /// The peer closed its side.
    Eof,
    /// Nothing more to read until the next readiness event.
    Blocked,
    /// The read failed.
    Failed(io::Error),
}

/// Reads once into `buf`, retrying on `EINTR`. A short read means the socket is drained and
/// new data raises a new edge, so no extra read is needed, **unless** the readiness event also
/// reported the peer's FIN or an error (`closing`): that raises no further edge, so the caller
/// must read on until [`ReadStep::Eof`].
pub fn read_step(stream: &mut impl Read, buf: &mut [u8], closing: bool) -> ReadStep {
    loop {
        return match stream.read(buf) {
            Ok(0) => ReadStep::Eof,
            Ok(len) => ReadStep::Data {
                len,
                more: len == buf.len() || closing,
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => ReadStep::Blocked,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => ReadStep::Failed(e),
        };
    }
}
