//! `forwarding-check`: tells callers their WAN IP and whether a TCP port on it is reachable.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use forwarding_check::{Config, Server};
use node::units::parse_duration;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

/// The forwarding-check server of the p2p toolkit (compatible with PyP2P's net.php).
///
/// A node asks it for its WAN IP and whether a TCP port on it is reachable from outside; the
/// server answers the second by connecting back to the address the request came from (never to
/// an address named in the request), then closing at once.
///
/// Endpoints (GET): `/v1/wan-ip`, `/v1/check?port=P[&proto=TCP]` (JSON);
/// `/net.php?action=get_wan_ip` and `/net.php?action=is_port_forwarded&port=P&proto=TCP`
/// (PyP2P). Only TCP: `proto=UDP` is refused with 400. Over a per-IP limit: 429; server
/// busy: 503.
///
/// Logs go to stderr; set `RUST_LOG=debug` for one line per connection event (the default,
/// info, logs one line per check with its result). Stop with Ctrl-C or SIGTERM.
///
/// Example: forwarding-check --listen 0.0.0.0:8080
#[derive(Debug, Parser)]
#[command(version, max_term_width = 100)]
struct Args {
    /// Address and port to listen on (use [::]:PORT for IPv6 and IPv4).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// How long a dial-back may take to connect before the port is reported closed (e.g.
    /// 1s, 500ms). PyP2P clients give up after 2 s in total: use 1s to serve them.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// Port checks one IP (IPv6: one /64) may start per minute on average; more get 429 with
    /// a Retry-After header. wan-ip requests are not counted.
    #[arg(long, default_value_t = Config::default().checks_per_minute,
          value_parser = clap::value_parser!(u32).range(1..))]
    checks_per_minute: u32,

    /// Port checks one IP may start back to back before the per-minute rate applies.
    #[arg(long, default_value_t = Config::default().check_burst,
          value_parser = clap::value_parser!(u32).range(1..))]
    check_burst: u32,

    /// Dial-backs in progress at once, over all callers; more get 503 (retry in a second).
    #[arg(long, default_value_t = Config::default().max_concurrent_checks)]
    max_concurrent_checks: usize,

    /// Client connections open at once; more get 503 and are closed. Keep it well below the
    /// file-descriptor limit (`ulimit -n`), which dial-backs share.
    #[arg(long, default_value_t = Config::default().max_connections)]
    max_connections: usize,

    /// Client connections open at once from one IP (IPv6: one /64); more get 429.
    #[arg(long, default_value_t = Config::default().max_connections_per_ip)]
    max_connections_per_ip: usize,

    /// Time a client has to send its request head, and then to read the answer. A partial
    /// head gets 408; a silent connection is just closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Largest request head (request line + headers) in bytes; a larger one gets 431.
    #[arg(long, default_value_t = Config::default().max_head_bytes)]
    max_head_bytes: usize,

    /// Callers whose rate-limit state is kept at once (an IP is forgotten once its bucket is
    /// full again). When full of active callers, new callers get 503.
    #[arg(long, default_value_t = Config::default().max_tracked_ips)]
    max_tracked_ips: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let config = Config {
        connect_timeout: args.connect_timeout,
        checks_per_minute: args.checks_per_minute,
        check_burst: args.check_burst,
        max_concurrent_checks: args.max_concurrent_checks,
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        idle_timeout: args.idle_timeout,
        max_head_bytes: args.max_head_bytes,
        max_tracked_ips: args.max_tracked_ips,
    };
    let server = Server::bind(args.listen, config)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let handle = server.shutdown_handle();
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).context("cannot install SIGINT/SIGTERM handlers")?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "signal received, shutting down");
            handle.shutdown();
        }
    });
    server.run().context("event loop failed")?;
    Ok(())
}
