//! The `forwarding-check` command line ([`Args`]), in the library so that `p2p-server` reads
//! the same settings (its config file's `[forwarding-check]` keys are these flags' names).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use wire::units::parse_duration;

use crate::Config;

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
/// Example: forwarding-check --listen [::]:8080
// The text above is the `--help` (clap prints it as written), not rustdoc.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Parser)]
#[command(version, max_term_width = 100)]
pub struct Args {
    /// Address and port to listen on. `[::]:PORT` (the default) serves IPv6 and IPv4
    /// clients on one socket (a check dials back in the caller's family); `0.0.0.0:PORT`
    /// IPv4 only.
    #[arg(long, default_value = "[::]:8080")]
    pub listen: SocketAddr,

    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g. 127.0.0.1:9466). Off by
    /// default; keep it off the public internet (firewall or a loopback address).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

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

impl Args {
    /// The server configuration these flags describe.
    pub fn config(&self) -> Config {
        let args = self;
        Config {
            connect_timeout: args.connect_timeout,
            checks_per_minute: args.checks_per_minute,
            check_burst: args.check_burst,
            max_concurrent_checks: args.max_concurrent_checks,
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            idle_timeout: args.idle_timeout,
            max_head_bytes: args.max_head_bytes,
            max_tracked_ips: args.max_tracked_ips,
        }
    }
}
