//! `rendezvous`: the server nodes bootstrap from, advertise to and punch holes through.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use node::units::parse_duration;
use rendezvous::config::parse_bytes;
use rendezvous::{Config, Server};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

/// The rendezvous server of the p2p toolkit (wire-compatible with PyP2P's).
///
/// Nodes connect to it to find peers (BOOTSTRAP), to announce themselves as reachable
/// (PASSIVE READY) or punchable (SIMULTANEOUS READY), to learn how their NAT maps ports
/// (SOURCE TCP) and to coordinate TCP hole punching (CANDIDATE / ACCEPT / FIGHT). When no
/// direct connection is possible, two nodes open one connection each and send
/// `RELAY <64-hex token>` with the same token: the server splices them into one byte pipe
/// (the relay; `--no-relay` turns it off). One thread, one event loop; every limit below
/// protects the server from a single misbehaving client.
///
/// Logs go to stderr; set `RUST_LOG=debug` for one line per connection event.
/// Stop with Ctrl-C or SIGTERM: connections are flushed and closed.
///
/// Example: rendezvous --listen 0.0.0.0:8000
#[derive(Debug, Parser)]
#[command(version, max_term_width = 100)]
struct Args {
    /// Address and port to listen on (PyP2P's default port is 8000).
    #[arg(long, default_value = "0.0.0.0:8000")]
    listen: SocketAddr,

    /// Connections open at once; more are answered `ERROR server full` and closed.
    /// Keep it below the process's file-descriptor limit (`ulimit -n`).
    #[arg(long, default_value_t = Config::default().max_connections)]
    max_connections: usize,

    /// Connections open at once from one IP address.
    #[arg(long, default_value_t = Config::default().max_connections_per_ip)]
    max_connections_per_ip: usize,

    /// Registrations (passive + simultaneous) one IP may hold. PyP2P allowed one per IP;
    /// several nodes behind one NAT need more.
    #[arg(long, default_value_t = Config::default().max_registrations_per_ip)]
    max_registrations_per_ip: usize,

    /// Pending hole-punch candidates per simultaneous node.
    #[arg(long, default_value_t = Config::default().max_candidates_per_node)]
    max_candidates_per_node: usize,

    /// How long a registration lives unless renewed (e.g. 24h, 30m, 90s).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    node_lifetime: Duration,

    /// How long a hole-punch candidate waits for the node's ACCEPT. A simultaneous node whose
    /// registration is older than this when a candidate arrives is told to RECONNECT.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    candidate_lifetime: Duration,

    /// Close a connection after this long without a complete line, unless it is a connected
    /// simultaneous node or a candidate waiting for FIGHT (those live as long as their
    /// registration).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Longest line accepted, in bytes; a longer one gets an ERROR and the connection closes.
    #[arg(long, default_value_t = Config::default().max_line_bytes)]
    max_line_bytes: usize,

    /// Unread reply bytes kept for a client that does not read; past this it is disconnected.
    #[arg(long, default_value_t = Config::default().max_output_bytes)]
    max_output_bytes: usize,

    /// Malformed lines answered with ERROR before the connection is closed.
    #[arg(long, default_value_t = Config::default().max_bad_lines)]
    max_bad_lines: u32,

    /// How far an ACCEPT's NTP time may be from the server's clock.
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    ntp_tolerance: Duration,

    /// Refuse RELAY requests (`ERROR relay: relay disabled on this server`).
    #[arg(long)]
    no_relay: bool,

    /// Relay sessions plus relay connections waiting for their peer, at once. More are
    /// answered `ERROR relay: server full`; joining a waiting peer is always allowed.
    #[arg(long, default_value_t = Config::default().max_relays)]
    max_relays: usize,

    /// Relay connections (waiting or spliced) from one IP address at once.
    #[arg(long, default_value_t = Config::default().max_relays_per_ip)]
    max_relays_per_ip: usize,

    /// How long a RELAY connection waits for its peer before `ERROR relay: nobody joined`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    relay_wait_timeout: Duration,

    /// Close a relay session after this long with no byte moving either way. Relay
    /// connections are not subject to --idle-timeout.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    relay_idle_timeout: Duration,

    /// Bytes per second per direction of each relay session (e.g. 1MiB, 500KB; 0: unlimited).
    /// Enforced by pausing reads (TCP pushes back on the sender); bytes are never dropped.
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    relay_rate: u64,

    /// Bytes queued for one side of a relay session before the server stops reading the
    /// other side, so a peer that does not read stalls its partner instead of growing the
    /// server (memory per session: at most twice this).
    #[arg(long, default_value = "256KiB", value_parser = parse_bytes)]
    relay_buffer_bytes: u64,
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
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        max_registrations_per_ip: args.max_registrations_per_ip,
        max_candidates_per_node: args.max_candidates_per_node,
        node_lifetime: args.node_lifetime,
        candidate_lifetime: args.candidate_lifetime,
        idle_timeout: args.idle_timeout,
        max_line_bytes: args.max_line_bytes,
        max_output_bytes: args.max_output_bytes,
        max_bad_lines: args.max_bad_lines,
        ntp_tolerance: args.ntp_tolerance,
        seed: None,
        relay_enabled: !args.no_relay,
        max_relays: args.max_relays,
        max_relays_per_ip: args.max_relays_per_ip,
        relay_wait_timeout: args.relay_wait_timeout,
        relay_idle_timeout: args.relay_idle_timeout,
        relay_rate: (args.relay_rate > 0).then_some(args.relay_rate),
        relay_buffer_bytes: usize::try_from(args.relay_buffer_bytes.max(1))
            .context("--relay-buffer-bytes is too large")?,
        relay_early_bytes: Config::default().relay_early_bytes,
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
