//! What a server binary's `main` needs after parsing its flags: logging to stderr
//! ([`init_logging`]) and running until SIGINT or SIGTERM ([`run`]).

use std::io::{self, IsTerminal as _};
use std::net::SocketAddr;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

use crate::core::Service;
use crate::driver::Server;
use crate::metrics::{Metrics, MetricsEndpoint, MetricsSource};
use crate::running::LiveStats;

/// Logs to stderr at `RUST_LOG`'s level (default `info`), in colour only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
}

/// Starts the server on `listen` and serves until SIGINT or SIGTERM, then shuts it down
/// gracefully (see [`Server`]) and returns its final counters. Errors name what failed:
/// `cannot start rendezvous on 0.0.0.0:8000: Address already in use`.
pub fn run<C: Service>(listen: SocketAddr, config: C::Config) -> io::Result<C::Stats> {
    let server = bind::<C>(listen, config)?;
    serve_until_signalled(server)
}

/// [`run`], plus `GET /metrics` on `metrics_listen` when given (see [`crate::metrics`]).
pub fn run_with_metrics<C: Service>(
    listen: SocketAddr,
    config: C::Config,
    metrics_listen: Option<SocketAddr>,
) -> io::Result<C::Stats>
where
    C::Stats: Metrics,
{
    let server = bind::<C>(listen, config)?;
    let _endpoint = match metrics_listen {
        Some(addr) => Some(MetricsEndpoint::start(
            addr,
            vec![metrics_source(server.live_stats())],
        )?),
        None => None,
    };
    serve_until_signalled(server)
}

/// A scrape's view of a server: its counters as of the loop's last turn.
pub fn metrics_source<S>(live: LiveStats<S>) -> MetricsSource
where
    S: Metrics + Clone + Default + Send + 'static,
{
    Box::new(move |out| live.get().encode(out))
}

/// Binds a server; the error names it and the address:
/// `cannot start rendezvous on 0.0.0.0:8000: Address already in use`.
pub fn bind<C: Service>(listen: SocketAddr, config: C::Config) -> io::Result<Server<C>> {
    Server::<C>::bind(listen, config).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot start {} on {listen}: {e}", C::NAME),
        )
    })
}

/// Runs a bound server until SIGINT or SIGTERM, then shuts it down gracefully.
pub fn serve_until_signalled<C: Service>(server: Server<C>) -> io::Result<C::Stats> {
    let handle = server.shutdown_handle();
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot install SIGINT/SIGTERM handlers: {e}"),
        )
    })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "signal received, shutting down");
                handle.shutdown();
            }
        })?;
    server
        .run()
        .map_err(|e| io::Error::new(e.kind(), format!("{} event loop failed: {e}", C::NAME)))
}
