//! Command-line arguments of every subcommand (their doc comments are the `--help` text).

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use netns_sim::NatKind;

pub(crate) use crate::shape::ShapeArgs;

/// Build a lab and print its prefix (needs root).
///
/// Without --foreground the lab stays up after the command returns; its state is kept in
/// /run/netns-sim/<prefix>.json and `netns-sim down` removes it. With --foreground it stays
/// up until Ctrl-C (or SIGTERM), then tears down.
///
/// Examples:
///   sudo netns-sim up --nat-a full-cone --nat-b symmetric --upnp-a --ntp
///   sudo netns-sim up --topology netns-sim/examples/two-nats.toml --foreground
///   sudo netns-sim up --delay 40ms --jitter 5ms --loss 1% --delay-pub 5ms
///   sudo netns-sim up --delay-a 10ms/40ms --ntp   # asymmetric: 10 ms up, 40 ms down
///   sudo netns-sim up --cgnat-a full-cone --cgnat-b full-cone --hairpin-carrier
///   sudo netns-sim up --tcp-established-timeout 60s --udp-timeout 10s --unsolicited rst
///   sudo netns-sim up --ipv6 --upnp-a --ipv6-only bob   # IPv6, bob without IPv4
///
/// WAN emulation (no `sch_netem` here): a `netns-sim wan-stage` daemon per namespace holds
/// the packets of each configured link direction (NFQUEUE), FIFO per direction; a link
/// whose stage died carries nothing (`status` shows it DEAD). Values: DELAY/JITTER as
/// 40ms, 1.5s, 250us; LOSS as 1% or 0.5%; `UP/DOWN` gives each direction its own value
/// (up = away from the host).
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    pub(crate) shape: ShapeArgs,
    #[command(flatten)]
    pub(crate) wan: crate::shape::WanArgs,
    #[command(flatten)]
    pub(crate) routers: crate::shape::RouterArgs,
    #[command(flatten)]
    pub(crate) ipv6: crate::shape::Ipv6Args,
    /// Stay in the foreground and tear the lab down on Ctrl-C / SIGTERM.
    #[arg(long)]
    pub(crate) foreground: bool,
}

/// Run a command inside a lab host's network namespace (needs root).
///
/// Standard input and output are the terminal's; the exit code is the command's.
///
/// Examples:
///   sudo netns-sim exec alice -- ping -c1 11.0.0.2
///   sudo netns-sim exec --lab nsim3fa9c1 nat-a -- nft list ruleset
///   sudo netns-sim exec pub -- ss -ltn
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct ExecArgs {
    /// The lab prefix (needed only when several labs are up).
    #[arg(long, value_name = "PREFIX")]
    pub(crate) lab: Option<String>,
    /// Host name: pub, pub2, nat-a, nat-b, alice, bob, carol, or one from the topology file.
    pub(crate) host: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub(crate) cmd: Vec<String>,
}

/// Show the labs that are up: hosts, addresses, NAT kinds, daemons (needs root).
///
/// Examples:
///   sudo netns-sim status
///   sudo netns-sim status --lab nsim3fa9c1 --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct StatusArgs {
    /// Only this lab.
    #[arg(long, value_name = "PREFIX")]
    pub(crate) lab: Option<String>,
    /// Print the state as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Tear down a lab, or every lab (needs root). Idempotent.
///
/// Kills the lab's daemons and every process in its namespaces (by pid), deletes its
/// namespaces (and so their veths) and its state. Without PREFIX: every lab in
/// /run/netns-sim and every stray nsimXXXXXX-* namespace.
///
/// Examples:
///   sudo netns-sim down
///   sudo netns-sim down nsim3fa9c1
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct DownArgs {
    /// The lab prefix (default: all labs).
    pub(crate) prefix: Option<String>,
}

/// Show the lab at work, then tear it down (needs root, about 10-20 s).
///
/// Builds pub, pub2, alice behind nat-a (port-restricted, miniupnpd) and bob behind nat-b
/// (symmetric), chronyd on pub when found; shows what address pub sees for alice and bob, that
/// an unsolicited connection to bob is dropped, NTP, a UPnP mapping, and (when a `rendezvous`
/// binary sits in --bin-dir) the rendezvous server answering `SOURCE TCP`. Ctrl-C tears down.
///
/// Example:
///   cargo build && sudo target/debug/netns-sim demo
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct DemoArgs {
    /// Where the workspace binaries (rendezvous, p2p-node) are (default: this executable's
    /// directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) bin_dir: Option<PathBuf>,
    /// NAT kind of nat-a (alice's router).
    #[arg(long, default_value = "port-restricted", value_name = "KIND")]
    pub(crate) nat_a: NatKind,
    /// NAT kind of nat-b (bob's router).
    #[arg(long, default_value = "symmetric", value_name = "KIND")]
    pub(crate) nat_b: NatKind,
    /// The chronyd binary (default: /opt/p2p-lab/chrony/usr/sbin/chronyd where
    /// scripts/install-deps.sh unpacks it, else chronyd in PATH).
    #[arg(long, env = "NETNS_SIM_CHRONYD", value_name = "PATH")]
    pub(crate) chronyd: Option<PathBuf>,
}

/// Network probes to run inside lab hosts (used by tests and the demo).
#[derive(Subcommand, Debug)]
pub(crate) enum ProbeCmd {
    /// Accept TCP clients; tell each one the ip:port it came from.
    Serve {
        /// Address to listen on, e.g. 0.0.0.0:7000, or [::]:7000 for IPv4 and IPv6.
        #[arg(long)]
        listen: SocketAddr,
        /// Exit after the first client.
        #[arg(long)]
        once: bool,
        /// Fail when no client came within this many milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Connect, optionally send a line, print the first line received.
    Connect {
        /// Server address.
        addr: SocketAddr,
        /// Local port to connect from (`SO_REUSEADDR` + `SO_REUSEPORT`).
        #[arg(long)]
        bind_port: Option<u16>,
        /// A line to send first (terminated with \r\n).
        #[arg(long)]
        send: Option<String>,
        /// Connect and read timeout in milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Query an NTP server once (SNTP) and print its stratum and offset.
    Ntp {
        /// Server address, e.g. 11.0.0.2:123.
        addr: SocketAddr,
        /// Timeout in milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Echo every UDP datagram back to its sender.
    UdpEcho {
        /// Address to listen on, e.g. 0.0.0.0:7100.
        #[arg(long)]
        listen: SocketAddrV4,
    },
    /// Send datagrams to a UDP echo server; print loss and RTT statistics as JSON.
    UdpPing {
        /// The echo server.
        addr: SocketAddr,
        /// How many datagrams.
        #[arg(long, default_value_t = 100)]
        count: u32,
        /// Microseconds between datagrams (0 floods).
        #[arg(long, default_value_t = 10_000)]
        interval_us: u64,
        /// Datagram size in bytes (at least 12).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// How long to wait for echoes after the last datagram, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
    },
    /// Accept one TCP client, stay silent, then write one line.
    HoldServe {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddrV4,
        /// Milliseconds of silence before the line.
        #[arg(long)]
        after_ms: u64,
    },
    /// Connect, optionally send a byte every KEEPALIVE ms, print the server's first line.
    HoldConnect {
        /// Server address.
        addr: SocketAddr,
        /// Send a byte this often (milliseconds).
        #[arg(long)]
        keepalive_ms: Option<u64>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}
