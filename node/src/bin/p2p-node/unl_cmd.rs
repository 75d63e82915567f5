//! `p2p-node unl` and `p2p-node connect`.

use std::io::Write;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use node::connect::{ConnectOutcome, Method, TryResult};
use node::core::Event;
use node::wire::unl::v3::AnyUnl;
use node::{Config, Net};
use tracing::info;

use crate::flags::{IdentityFlags, ReachFlags, ServerFlags};
use crate::signals_and_stdin;

#[derive(Debug, Args)]
pub(crate) struct UnlArgs {
    #[command(flatten)]
    identity: IdentityFlags,
    #[command(flatten)]
    servers: ServerFlags,
    /// Print the UNL in PyP2P's v2 format (52 base64 characters; no key: peers connect in
    /// plain text) instead of v3.
    #[arg(long)]
    v2: bool,
    /// Address the node would accept connections on (its LAN address goes in the UNL when
    /// this is a specific address; the default `::` lists the host's global IPv6 addresses).
    #[arg(long, default_value = "::")]
    bind: IpAddr,
    /// Port the node would accept connections on (0: any free port; the UNL is only useful
    /// with a fixed one, or from `run --unl-file`).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Print one JSON object with the decoded fields as well.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The UNL of the node to connect to: v3 (`unl3.…`: encrypted, and the peer must prove
    /// the key in it) or PyP2P's v2 (52 base64 characters: plain text).
    unl: String,
    #[command(flatten)]
    identity: IdentityFlags,
    #[command(flatten)]
    servers: ServerFlags,
    /// Address to accept connections on (a reverse connect dials us here; the default `::`
    /// takes IPv4 and IPv6).
    #[arg(long, default_value = "::")]
    bind: IpAddr,
    /// Port to accept connections on (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Print the outcome as one JSON line: {"connected", "method", "ms", "peer", "tries"}.
    #[arg(long)]
    json: bool,
    /// Give up after this long (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = node::wire::units::parse_duration)]
    timeout: Duration,
    /// Print the outcome and exit instead of exchanging lines (a relayed connection whose
    /// direct tries go on waits for its move to a direct path first, within --timeout).
    #[arg(long)]
    no_stdin: bool,
    /// Sockets (and SYNs) a birthday punch from behind a NAT that maps ports at random
    /// opens at most (see `run --help`).
    #[arg(long, default_value_t = node::core::DEFAULT_PUNCH_SOCKETS)]
    max_punch_sockets: u32,
    #[command(flatten)]
    reach: ReachFlags,
    /// Do not probe reachability first. By default, with --forwarding-check, the node finds
    /// out whether it can be dialed (UPnP, NAT-PMP, forwarding check) and, when it cannot,
    /// does not ask the peer to dial it back (no reverse connect).
    #[arg(long)]
    no_reach: bool,
}

/// Writes `unl` to `path` (through a temporary file, so a reader never sees half of it).
pub(crate) fn write_unl_file(path: &Path, unl: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{unl}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    info!(path = %path.display(), %unl, "UNL written");
    Ok(())
}

pub(crate) fn unl(args: &UnlArgs) -> Result<()> {
    let mut config = Config::new()
        .with_bind(args.bind)
        .with_port(args.port)
        .with_identity(args.identity.load()?);
    args.servers.apply(&mut config);
    let mut net = Net::new(config)?;
    net.start()?;
    if !net.servers().is_empty() {
        // The role and the WAN address come from the rendezvous (a simultaneous node's
        // external port from its registration).
        net.wait_ready(crate::READY_LIMIT)?;
    }
    let v2 = net.unl_v2();
    let v3 = net.unl();
    let text = if args.v2 {
        v2.to_string()
    } else {
        v3.to_string()
    };
    if args.json {
        let addrs: Vec<String> = v3
            .body()
            .addrs
            .iter()
            .map(|a| format!("{:?} {}", a.scope, a.addr).to_lowercase())
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "unl": text,
                "unl_v2": v2.to_string(),
                "key": v3.key().to_string(),
                "node_id": v3.node_id().to_string(),
                "node_type": format!("{:?}", v2.node_type).to_lowercase(),
                "nat_type": format!("{:?}", v2.nat_type).to_lowercase(),
                "forwarding": format!("{:?}", v2.forwarding).to_lowercase(),
                "port": v2.port,
                "wan_ip": v2.wan_ip.to_string(),
                "lan_ip": v2.lan_ip.to_string(),
                "addrs": addrs,
                "seq": v3.body().seq,
            })
        );
    } else {
        println!("{text}");
    }
    Ok(())
}

pub(crate) fn connect(args: &ConnectArgs) -> Result<()> {
    let target: AnyUnl = args
        .unl
        .trim()
        .parse()
        .with_context(|| format!("not a valid UNL: {:?}", args.unl))?;
    // Held (locked) until the node stops.
    let identity = args.identity.claim()?;
    let mut config = Config::new()
        .with_bind(args.bind)
        .with_port(args.port)
        .with_identity(identity.identity.clone());
    config.unl_connect_timeout = args.timeout;
    config.max_punch_sockets = args.max_punch_sockets;
    args.servers.apply(&mut config);
    args.reach.apply(&mut config);
    let probe = !args.no_reach && ReachFlags::run_probes(&config);
    let mut net = Net::new(config)?;
    net.start()?;
    if probe {
        match net.probe_reachability() {
            Ok(report) if report.node_type == node::reach::NodeKind::Passive => {}
            Ok(_) => {
                info!("this node cannot be dialed: no reverse connect will be asked for");
                if net.role() == node::wire::rendezvous::NodeType::Passive {
                    net.set_reachability(node::Role::Auto, None);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reachability probe failed"),
        }
    }
    // Our role (a punch predicts our ports from our NAT's mapping; a registered node punches
    // from its listening port), our WAN address (our UNL travels in reverse and relay
    // requests) and our mailbox (the requests name us as sender) before connecting.
    let ready = net.wait_ready(crate::READY_LIMIT)?;
    if !ready.pending.is_empty() {
        tracing::warn!(
            pending = %ready.pending.join("; "),
            "not everything was ready within {:?}; connecting anyway",
            crate::READY_LIMIT
        );
    }
    let id = net.connect(&target);
    let outcome = net.wait_connect(id)?;
    print_outcome(&outcome, args.json);
    if !outcome.connected {
        net.stop();
        std::process::exit(2);
    }
    if args.no_stdin {
        // A relayed connection whose direct tries go on: wait (at most the connect's
        // timeout) to report its move to a direct path.
        if outcome.method == Some(Method::Relay)
            && outcome.tries.iter().any(|t| t.result == TryResult::Pending)
        {
            let limit = args
                .timeout
                .saturating_sub(Duration::from_millis(outcome.ms));
            let _ = net.poll_until(limit, |n| {
                let events: Vec<Event> = n.events().collect();
                events.iter().any(|e| print_upgrade(e, args.json))
            });
        }
        net.stop();
        return Ok(());
    }
    let conn = outcome
        .conn
        .context("a connected outcome names its connection")?;
    exchange_lines(&mut net, conn, args.json)
}

/// Prints a connection's move from the relay to a direct path (one JSON line with --json:
/// {"upgraded": true, "method", "ms", "peer"}). Returns whether `event` was one.
fn print_upgrade(event: &Event, json: bool) -> bool {
    let Event::Upgraded {
        method, addr, ms, ..
    } = event
    else {
        return false;
    };
    let mut out = std::io::stdout().lock();
    let _ = if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"upgraded": true, "method": method, "ms": ms, "peer": addr.to_string()})
        )
    } else {
        writeln!(
            out,
            "moved to a direct path to {addr} by {method} (after {ms:?} ms)"
        )
    };
    let _ = out.flush();
    true
}

fn print_outcome(outcome: &ConnectOutcome, json: bool) {
    let mut out = std::io::stdout().lock();
    let _ = if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "connected": outcome.connected,
                "method": outcome.method,
                "ms": outcome.ms,
                "us": outcome.us,
                "peer": outcome.addr.map(|a| a.to_string()),
                "error": outcome.error,
                "tries": outcome.tries,
            })
        )
    } else if outcome.connected {
        writeln!(
            out,
            "connected to {} by {} in {} ms ({})",
            outcome.addr.map(|a| a.to_string()).unwrap_or_default(),
            outcome.method.map(|m| m.to_string()).unwrap_or_default(),
            outcome.ms,
            outcome.describe_tries()
        )
    } else {
        writeln!(
            out,
            "not connected after {} ms: {} ({})",
            outcome.ms,
            outcome.error.as_deref().unwrap_or("unknown error"),
            outcome.describe_tries()
        )
    };
    let _ = out.flush();
}

/// Stdin lines to the peer, the peer's lines to stdout, until the connection closes or a
/// signal arrives.
fn exchange_lines(net: &mut Net, conn: node::core::ConnId, json: bool) -> Result<()> {
    let (stop, rx) = signals_and_stdin(net)?;
    let mut closed = None;
    net.run(|net| {
        let mut out = std::io::stdout().lock();
        for con in net.connections() {
            if con.id() != conn {
                continue;
            }
            while let Ok(line) = rx.try_recv() {
                if let Err(e) = con.send_line(&line) {
                    eprintln!("p2p-node: not sent: {e}");
                }
            }
            for line in con.lines() {
                let _ = writeln!(out, "{line}");
            }
            if !con.is_open() {
                closed = Some(con.close_reason().unwrap_or("closed").to_owned());
            }
        }
        let _ = out.flush();
        for event in net.events().collect::<Vec<_>>() {
            print_upgrade(&event, json);
        }
        if closed.is_some() || stop.load(Ordering::SeqCst) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    net.stop();
    if let Some(reason) = closed {
        bail!("the connection closed: {reason}");
    }
    Ok(())
}
