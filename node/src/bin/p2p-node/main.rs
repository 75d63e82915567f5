//! `p2p-node`: run a node of the overlay, or ask the rendezvous about this machine's NAT.

// Doc comments here are the `--help` text, where Markdown backticks would show.
#![allow(clippy::doc_markdown)]

use std::io::{BufRead, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use node::core::Event;
use node::{Config, Net, Role};
use tracing::{info, warn};

mod flags;
mod reach_cmd;
mod unl_cmd;

/// How long `run` and `connect` wait at start for the node's role, registration and
/// mailbox (it keeps trying in the background after that).
const READY_LIMIT: Duration = Duration::from_secs(5);

/// A peer-to-peer node: finds other nodes through a rendezvous server, keeps TCP connections
/// to them, and floods lines across the overlay.
///
/// Try it on one machine (three terminals):
///   rendezvous --listen 127.0.0.1:8000
///   p2p-node run --rendezvous 127.0.0.1:8000 --bind 127.0.0.1
///   p2p-node run --rendezvous 127.0.0.1:8000 --bind 127.0.0.1
/// then type a line in one node: it appears in the other.
///
/// Logs go to stderr; RUST_LOG=debug shows every connection event.
#[derive(Debug, Parser)]
#[command(name = "p2p-node", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join the overlay: print every line received, broadcast every line typed on stdin.
    ///
    /// The node listens (unless --no-listen), bootstraps from the rendezvous servers (tried in
    /// order), advertises itself when passive, and keeps its connections topped up. Stdout
    /// gets one line per received line (with --json, one JSON object per line). Ctrl-C sends
    /// CLEAR to the rendezvous (if advertised) and closes every connection.
    Run(RunArgs),
    /// Print this node's UNL (Universal Node Locator) and exit.
    ///
    /// The UNL (v3: `unl3.` and base64url, one line) carries the node's public key (its
    /// node id, mailbox name and overlay id derive from it), role, NAT type, WAN and LAN
    /// addresses with the port, and its rendezvous and mailbox servers, signed by the key:
    /// another user passes it to `p2p-node connect`, which then opens an encrypted
    /// connection that must prove that key. --v2 prints PyP2P's 52-character format instead
    /// (no key: a PyP2P peer connects in plain text). Without a rendezvous, forwarding check
    /// or --wan-ip the WAN address is taken to be the LAN address, which is only right
    /// without a NAT.
    Unl(unl_cmd::UnlArgs),
    /// Open a direct connection to the node a UNL names, print the outcome, then exchange
    /// lines: stdin lines go to the peer, the peer's lines go to stdout.
    ///
    /// Methods, in PyP2P's order but overlapping: LAN (same WAN address), direct (they are
    /// passive), reverse (we are passive: the request goes through their dht-msg mailbox and
    /// they dial us), punch (they are simultaneous: TCP simultaneous open through both NATs,
    /// timed through the rendezvous), relay (nothing else worked: both meet at the
    /// rendezvous, which splices the two streams). The outcome line says which method won and
    /// how long each try took; with --json: {"connected": true, "method":
    /// "lan|direct|reverse|punch|relay", "ms": N, "peer": "ip:port", "tries": [...]}. Exit
    /// status 2 when no method worked.
    Connect(unl_cmd::ConnectArgs),
    /// Detect how this machine's NAT maps TCP ports (PyP2P's method: five `SOURCE TCP` probes
    /// from fresh ports): preserving, delta(n) or random.
    NatType(NatArgs),
    /// Find out whether peers can reach this node, open the router if it can, and print what
    /// was tried, how long each step took and what worked.
    ///
    /// In parallel, within --reach-timeout (3 s): UPnP (SSDP discovery on the LAN, at most
    /// 2 s), NAT-PMP and PCP (the default gateway, port 5351) ask the router for its external
    /// IP or whether it speaks PCP; the forwarding check (--forwarding-check http://HOST:PORT,
    /// a server on the public side) tells the WAN IP and tries the port as it is; the
    /// rendezvous (--rendezvous) tells the NAT type. Once a router answered, the port is
    /// mapped there (PCP first, then UPnP, then NAT-PMP) with a finite lease and the
    /// forwarding check must prove it; an unproven mapping is deleted.
    ///
    /// Result: passive with forwarding pcp / upnp / natpmp / manual / forwarded, or else
    /// simultaneous (NAT preserving or delta: hole punching can work) or active. The mapping
    /// made here is deleted before exiting; `run` keeps its own and renews it.
    ///
    /// Example: p2p-node reachability --forwarding-check http://203.0.113.5:8080 \
    ///            --rendezvous 203.0.113.5:8000 --json
    #[command(verbatim_doc_comment)]
    Reachability(reach_cmd::ReachArgs),
}

// One field per command-line switch.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    identity: flags::IdentityFlags,
    #[command(flatten)]
    servers: flags::ServerFlags,
    #[command(flatten)]
    reach: flags::ReachFlags,
    /// Do not probe reachability at start. The probe runs when --forwarding-check is given
    /// (UPnP, NAT-PMP, forwarding check; see `p2p-node reachability`); a node whose port is
    /// proven reachable becomes passive and advertises the router's port.
    #[arg(long)]
    no_reach: bool,
    /// Address to accept connections on. The default `::` takes IPv4 and IPv6 on one port
    /// (IPv4 only on a host without IPv6) and puts the host's global IPv6 addresses in the
    /// UNL; `0.0.0.0` keeps to IPv4.
    #[arg(long, default_value = "::")]
    bind: IpAddr,
    /// Port to accept connections on (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Do not accept connections (implies --node-type active).
    #[arg(long)]
    no_listen: bool,
    /// auto (the default): the node works it out from what the rendezvous tells it (its
    /// WAN address, its NAT's mapping) and, with --forwarding-check, from a proven port:
    /// passive when its port is reachable (no NAT, or a proven forwarded port), simultaneous
    /// when its NAT's mapping is predictable, active otherwise; the log says what it chose
    /// and why.
    /// passive: advertise and accept connections (no NAT, or a forwarded port);
    /// simultaneous: behind a NAT with predictable ports (see `nat-type`): keep a
    /// registration with the rendezvous and accept connections by hole punching;
    /// active: only dial out (behind a NAT that maps ports at random).
    #[arg(long, value_enum, default_value = "auto")]
    node_type: NodeTypeArg,
    /// Inbound connections beyond this are refused.
    #[arg(long, default_value_t = 32)]
    max_inbound: usize,
    /// Inbound connections from one IP address beyond this are refused.
    #[arg(long, default_value_t = 8)]
    max_inbound_per_ip: usize,
    /// Bootstrap dials until this many outbound connections are open.
    #[arg(long, default_value_t = 8)]
    max_outbound: usize,
    /// Also connect to this node directly (repeatable; encrypted unless --plaintext-dials).
    #[arg(long, value_name = "IP:PORT")]
    connect: Vec<SocketAddr>,
    /// Dial peers known only by address (bootstrap, --connect) in plain text: for an overlay
    /// with PyP2P nodes in it. Connections between nodes of this software are encrypted by
    /// default; connects by UNL follow the UNL (v3 encrypted, v2 plain text), and accepted
    /// connections are plain or encrypted as the peer begins.
    #[arg(long)]
    plaintext_dials: bool,
    /// Read settings from a TOML file first (see node::Config); flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print received lines as JSON objects: {"from": "ip:port", "conn": N, "line": "..."}.
    #[arg(long)]
    json: bool,
    /// Print "connected"/"disconnected" notices on stdout too (as JSON with --json).
    #[arg(long)]
    show_events: bool,
    /// Write this node's UNL (v3, signed) to PATH once it is known (others connect with
    /// `p2p-node connect $(cat PATH)`).
    #[arg(long, value_name = "PATH")]
    unl_file: Option<PathBuf>,
    /// Also write the UNL in PyP2P's v2 format to PATH (for PyP2P peers: they connect in
    /// plain text).
    #[arg(long, value_name = "PATH")]
    unl_v2_file: Option<PathBuf>,
    /// Reverse-connect and relay requests acted on per minute at most, in all (each makes
    /// this node dial; the sender must own the node id in it). One sender gets a burst of a
    /// fifth of it, then a tenth a minute; a connect's two requests count once.
    #[arg(long, default_value_t = 120)]
    max_reverse_per_minute: usize,
    /// Hole-punch challenges answered per minute at most, in all (a simultaneous node dials
    /// the candidate for each). One candidate IP gets a burst of a fifth of it, then a tenth
    /// a minute.
    #[arg(long, default_value_t = 120)]
    max_punch_per_minute: usize,
    /// Sockets (and SYNs) each side of a birthday punch uses at most: the guesses a node
    /// behind an easy NAT sends to a peer behind a NAT that maps ports at random, and the
    /// mappings that peer opens (N = M = 512 meet about 98 % of the time).
    #[arg(long, default_value_t = node::core::DEFAULT_PUNCH_SOCKETS)]
    max_punch_sockets: u32,
    /// Serve this node's counters (connects by method, punches, connections, bytes) as
    /// Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9470.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum NodeTypeArg {
    Auto,
    Passive,
    Simultaneous,
    Active,
}

#[derive(Debug, Args)]
struct NatArgs {
    /// Rendezvous server HOST:PORT to probe.
    #[arg(long, value_name = "HOST:PORT", required = true)]
    rendezvous: String,
    /// Print one JSON object: {"server", "mapping": {"kind", "delta"?}, "probes": [[local, seen]..]}.
    #[arg(long)]
    json: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Unl(args) => unl_cmd::unl(&args),
        Command::Connect(args) => unl_cmd::connect(&args),
        Command::NatType(args) => nat_type(&args),
        Command::Reachability(args) => reach_cmd::reachability(&args),
    };
    if let Err(e) = result {
        eprintln!("p2p-node: error: {e:#}");
        std::process::exit(1);
    }
}

fn config_from(args: &RunArgs, identity: node::identity::Identity) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => Config::default(),
    };
    args.servers.apply(&mut config);
    args.reach.apply(&mut config);
    config.bind = args.bind;
    config.port = args.port;
    config.listen = !args.no_listen;
    config.node_type = match (args.node_type, args.no_listen) {
        (NodeTypeArg::Auto, false) => Role::Auto,
        (NodeTypeArg::Passive, false) => Role::Passive,
        (NodeTypeArg::Simultaneous, false) => Role::Simultaneous,
        _ => Role::Active,
    };
    config.max_inbound = args.max_inbound;
    config.max_inbound_per_ip = args.max_inbound_per_ip;
    config.max_outbound = args.max_outbound;
    config.max_reverse_per_minute = args.max_reverse_per_minute;
    config.max_punch_per_minute = args.max_punch_per_minute;
    config.max_punch_sockets = args.max_punch_sockets;
    config.identity = Some(identity);
    if args.plaintext_dials {
        config.plaintext_dials = true;
    }
    Ok(config)
}

/// Starts the node of `p2p-node run`: reachability probe, simultaneous registration, UNL
/// file, advertise, bootstrap, direct connects.
fn start_node(args: &RunArgs, identity: node::identity::Identity) -> Result<Net> {
    let config = config_from(args, identity)?;
    if config.rendezvous.is_empty() && args.connect.is_empty() && config.dht_msg.is_none() {
        bail!(
            "nothing to join: give --rendezvous HOST:PORT, --connect IP:PORT, or --dht-msg \
             HOST:PORT (to accept connections by UNL)"
        );
    }
    let has_rendezvous = !config.rendezvous.is_empty();
    let simultaneous = config.node_type == Role::Simultaneous;
    if simultaneous && !has_rendezvous {
        bail!("--node-type simultaneous needs --rendezvous (it registers there for hole punching)");
    }
    let probe = !args.no_reach && flags::ReachFlags::run_probes(&config);
    let mut net = Net::new(config)?;
    net.start()?;
    if probe {
        // Becomes passive (with the router's port) when the port is proven reachable; the
        // probe logs what it found and why.
        if let Err(e) = net.probe_reachability() {
            warn!(error = %e, "reachability probe failed; the node starts anyway");
        }
    }
    if simultaneous && net.role() != node::wire::rendezvous::NodeType::Passive {
        // The NAT's mapping decides which ports a punch predicts (an auto node detects it
        // by itself).
        match net.detect_nat() {
            Ok(report) => info!(mapping = %report.mapping, "NAT detected"),
            Err(e) => warn!(error = %e, "NAT detection failed; assuming a port-preserving NAT"),
        }
    }
    // Role, registration and mailbox before the UNL is handed out: it must not name an
    // address or a role the node has not established.
    let ready = net.wait_ready(READY_LIMIT)?;
    if ready.pending.is_empty() {
        info!(
            role = %ready.role,
            wan_ip = ?ready.wan_ip,
            nat = ?ready.nat.map(|m| m.to_string()),
            "ready"
        );
    } else {
        warn!(
            role = %ready.role,
            pending = %ready.pending.join("; "),
            "not everything was ready within {READY_LIMIT:?}; still trying in the background"
        );
    }
    if let Some(path) = &args.unl_file {
        unl_cmd::write_unl_file(path, &net.unl().to_string())?;
    }
    if let Some(path) = &args.unl_v2_file {
        unl_cmd::write_unl_file(path, &net.unl_v2().to_string())?;
    }
    if has_rendezvous {
        if net.role() == node::wire::rendezvous::NodeType::Passive {
            net.advertise().context("advertising to the rendezvous")?;
        }
        net.bootstrap()
            .context("bootstrapping from the rendezvous")?;
    }
    for addr in &args.connect {
        net.connect(*addr);
    }
    Ok(net)
}

fn run(args: &RunArgs) -> Result<()> {
    let _metrics = match args.metrics_listen {
        Some(addr) => Some(server_kit::metrics::MetricsEndpoint::start(
            addr,
            vec![Box::new(|out| node::metrics::global().encode(out))],
        )?),
        None => None,
    };
    let metrics = node::metrics::global();
    // Held (locked) until the node stops.
    let identity = args.identity.claim()?;
    let mut net = start_node(args, identity.identity.clone())?;
    let (stop, rx) = signals_and_stdin(&net)?;

    let json = args.json;
    let show_events = args.show_events;
    let mut failure = None;
    net.run(|net| {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for con in net.connections() {
            let (id, from) = (con.id(), con.addr());
            for line in con.lines() {
                metrics.add_received_bytes(line.len() as u64 + 2);
                let _ = if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"from": from.to_string(), "conn": id.0, "line": line})
                    )
                } else {
                    writeln!(out, "{line}")
                };
            }
        }
        let events: Vec<Event> = net.events().collect();
        if show_events {
            for event in events {
                print_event(&mut out, &event, json);
            }
        }
        let _ = out.flush();
        while let Ok(line) = rx.try_recv() {
            metrics.add_sent_bytes((line.len() as u64 + 2) * net.connection_count() as u64);
            if let Err(e) = net.broadcast(&line) {
                warn!(error = %e, "not broadcast");
            }
        }
        if stop.load(Ordering::SeqCst) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })
    .unwrap_or_else(|e| failure = Some(e));
    info!("stopping");
    net.stop();
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Watches SIGINT/SIGTERM and stdin for a node's loop: a signal sets the returned flag, each
/// stdin line arrives on the returned channel, and either wakes `net`'s loop.
fn signals_and_stdin(net: &Net) -> Result<(Arc<AtomicBool>, mpsc::Receiver<String>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let waker = net.waker();
    {
        let stop = Arc::clone(&stop);
        let waker = Arc::clone(&waker);
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                stop.store(true, Ordering::SeqCst);
                let _ = waker.wake();
            }
        });
    }
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
            let _ = waker.wake();
        }
    });
    Ok((stop, rx))
}

fn print_event(out: &mut impl Write, event: &Event, json: bool) {
    let (kind, addr, detail) = match event {
        Event::Connected {
            addr, direction, ..
        } => ("connected", *addr, format!("{direction:?}").to_lowercase()),
        Event::Disconnected { addr, reason, .. } => ("disconnected", *addr, reason.clone()),
        _ => return,
    };
    let _ = if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"event": kind, "peer": addr.to_string(), "detail": detail})
        )
    } else {
        writeln!(out, "* {kind} {addr} ({detail})")
    };
}

fn nat_type(args: &NatArgs) -> Result<()> {
    let config = Config::new()
        .with_rendezvous(args.rendezvous.clone())
        .with_listen(false)
        .with_node_type(Role::Active)
        .with_query_timeout(Duration::from_secs(3));
    let mut net = Net::new(config)?;
    let report = net.detect_nat().context("NAT detection")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("NAT mapping: {}", report.mapping);
        for (local, seen) in &report.probes {
            println!(
                "  local port {local:>5} -> seen by {} as {seen}",
                report.server
            );
        }
    }
    Ok(())
}
