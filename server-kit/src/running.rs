//! Stopping a server from elsewhere ([`ShutdownHandle`]) and running one on its own thread for
//! tests and benches ([`RunningServer`]).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mio::{Registry, Token, Waker};
use tracing::warn;

use crate::core::{ServerCore, Service};
use crate::driver::Server;
use crate::metrics::{Metrics, MetricsEndpoint};
use crate::run::metrics_source;

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

    /// The loop's waker (mio allows one per poll; the core's [`crate::Wake`] shares it).
    pub(crate) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Whether [`ShutdownHandle::shutdown`] was called.
    pub fn is_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A server's counters as of its last turn of the loop, readable from other threads (tests,
/// benches): see [`Server::live_stats`]. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct LiveStats<S>(Arc<Mutex<S>>);

impl<S: Clone + Default> LiveStats<S> {
    /// The counters as of the server's last turn.
    pub fn get(&self) -> S {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn set(&self, stats: S) {
        if let Ok(mut s) = self.0.lock() {
            *s = stats;
        }
    }
}

/// A server running on its own thread; stopped and joined on drop. Meant for tests and benches.
///
/// ```no_run
/// # fn demo<C: server_kit::Service>(config: C::Config) -> std::io::Result<()> {
/// let server = server_kit::RunningServer::<C>::start("127.0.0.1:0".parse().unwrap(), config)?;
/// let addr = server.addr(); // connect clients here
/// let stats = server.stop()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RunningServer<C: ServerCore> {
    addr: SocketAddr,
    handle: ShutdownHandle,
    metrics: Option<MetricsEndpoint>,
    thread: Option<JoinHandle<io::Result<C::Stats>>>,
}

impl<C: Service> RunningServer<C> {
    /// Binds `addr` (use port 0 for any) and runs the server on a new thread.
    pub fn start(addr: SocketAddr, config: C::Config) -> io::Result<RunningServer<C>> {
        RunningServer::spawn(Server::<C>::bind(addr, config)?, None)
    }

    /// [`start`](Self::start), plus a metrics endpoint on `metrics` (port 0: any; see
    /// [`metrics_addr`](Self::metrics_addr)).
    pub fn start_with_metrics(
        addr: SocketAddr,
        config: C::Config,
        metrics: SocketAddr,
    ) -> io::Result<RunningServer<C>>
    where
        C::Stats: Metrics,
    {
        let server = Server::<C>::bind(addr, config)?;
        let endpoint = MetricsEndpoint::start(metrics, vec![metrics_source(server.live_stats())])?;
        RunningServer::spawn(server, Some(endpoint))
    }

    fn spawn(server: Server<C>, metrics: Option<MetricsEndpoint>) -> io::Result<RunningServer<C>> {
        let addr = server.local_addr();
        let handle = server.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name(format!("{}-{addr}", C::NAME))
            .spawn(move || server.run())?;
        Ok(RunningServer {
            addr,
            handle,
            metrics,
            thread: Some(thread),
        })
    }
}

impl<C: ServerCore> RunningServer<C> {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where its metrics endpoint listens, if it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::addr)
    }

    /// A handle that stops it.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Stops it and returns its final counters.
    pub fn stop(mut self) -> io::Result<C::Stats> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<C::Stats> {
        self.handle.shutdown();
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other(format!("{} thread panicked", C::NAME)))?,
            None => Ok(C::Stats::default()),
        }
    }
}

impl<C: ServerCore> Drop for RunningServer<C> {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
