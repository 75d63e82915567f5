//! The `rendezvous` command line ([`Args`]), in the library so that `p2p-server` reads the
//! same settings (its config file's `[rendezvous]` keys are these flags' names).

// The doc comments below are `--help` text, read in a terminal, not Markdown.
#![allow(clippy::doc_markdown)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use wire::units::parse_duration;

use crate::Config;
use crate::config::parse_bytes;

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
/// Example: rendezvous --listen [::]:8000
// The text above is the `--help` (clap prints it as written), not rustdoc.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Parser)]
#[command(version, max_term_width = 100)]
pub struct Args {
    /// Address and port to listen on (PyP2P's default port is 8000). `[::]:PORT` (the
    /// default) serves IPv6 and IPv4 clients on one socket; `0.0.0.0:PORT` IPv4 only.
    #[arg(long, default_value = "[::]:8000")]
    pub listen: SocketAddr,

    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g. 127.0.0.1:9464). Off by
    /// default; keep it off the public internet (firewall or a loopback address).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

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

    /// Share registrations with other rendezvous instances through this Redis server
    /// (redis://HOST:PORT[/DB], redis://:PASSWORD@HOST:PORT, redis+unix:///PATH): BOOTSTRAP
    /// on any instance returns nodes registered on any other, and a CANDIDATE reaches a
    /// simultaneous node connected to another instance. Relays are not shared: both peers
    /// meet on the instance RELAY_CONNECT names, so give every instance its own address.
    #[arg(long, value_name = "URL")]
    backend: Option<String>,
}

impl Args {
    /// The server configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<Config> {
        let args = self;
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
            backend: args.backend.clone(),
        };
        Ok(config)
    }
}
