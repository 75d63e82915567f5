//! `p2p-node unl` and `p2p-node connect`, and the server flags every subcommand shares.

use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use node::connect::ConnectOutcome;
use node::unl::Unl;
use node::{Config, Net};
use tracing::info;

/// The servers a node talks to. None has a default: nothing is contacted unless named here.
#[derive(Debug, Args)]
pub(crate) struct ServerFlags {
    /// Rendezvous server HOST:PORT; repeat for failover (tried in order).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) rendezvous: Vec<String>,
    /// dht-msg mailbox server HOST:PORT: this node registers its mailbox there and acts on
    /// reverse-connect requests; `connect` posts its own requests there.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) dht_msg: Option<String>,
    /// Forwarding-check server URL (http://HOST:PORT): proves a forwarded port and tells the
    /// WAN address.
    #[arg(long, value_name = "URL")]
    pub(crate) forwarding_check: Option<String>,
    /// NTP server HOST:PORT whose clock times hole punches (both ends should use the same
    /// one; without it, the system clocks are trusted to agree).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) ntp: Option<String>,
    /// This node's WAN address, when known (else: from the forwarding check, else the LAN
    /// address).
    #[arg(long, value_name = "IPV4")]
    pub(crate) wan_ip: Option<Ipv4Addr>,
}

impl ServerFlags {
    /// Adds these flags to `config` (flags win over the config file).
    pub(crate) fn apply(&self, config: &mut Config) {
        config.rendezvous.extend(self.rendezvous.iter().cloned());
        if self.dht_msg.is_some() {
            config.dht_msg.clone_from(&self.dht_msg);
        }
        if self.forwarding_check.is_some() {
            config.forwarding_check.clone_from(&self.forwarding_check);
        }
        if self.ntp.is_some() {
            config.ntp.clone_from(&self.ntp);
        }
        if self.wan_ip.is_some() {
            config.wan_ip = self.wan_ip;
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct UnlArgs {
    #[command(flatten)]
    servers: ServerFlags,
    /// Address the node would accept connections on (its LAN address goes in the UNL when
    /// this is a specific address).
    #[arg(long, default_value = "0.0.0.0")]
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
    /// The UNL of the node to connect to (52 base64 characters).
    unl: String,
    #[command(flatten)]
    servers: ServerFlags,
    /// Address to accept connections on (a reverse connect dials us here).
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Port to accept connections on (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Print the outcome as one JSON line: {"connected", "method", "ms", "peer", "tries"}.
    #[arg(long)]
    json: bool,
    /// Give up after this long (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = node::units::parse_duration)]
    timeout: Duration,
    /// Print the outcome and exit instead of exchanging lines.
    #[arg(long)]
    no_stdin: bool,
    #[command(flatten)]
    reach: crate::reach_cmd::ReachFlags,
    /// Do not probe reachability first. By default, with --forwarding-check, the node finds
    /// out whether it can be dialed (UPnP, NAT-PMP, forwarding check) and, when it cannot,
    /// does not ask the peer to dial it back (no reverse connect).
    #[arg(long)]
    no_reach: bool,
}

/// Writes `unl` to `path` (through a temporary file, so a reader never sees half of it).
pub(crate) fn write_unl_file(path: &Path, unl: &Unl) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{unl}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    info!(path = %path.display(), %unl, "UNL written");
    Ok(())
}

pub(crate) fn unl(args: &UnlArgs) -> Result<()> {
    let mut config = Config::new().with_bind(args.bind).with_port(args.port);
    args.servers.apply(&mut config);
    let mut net = Net::new(config)?;
    net.start()?;
    let unl = net.unl();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "unl": unl.to_string(),
                "node_id": unl.node_id.map(|n| n.to_string()),
                "node_type": format!("{:?}", unl.node_type).to_lowercase(),
                "nat_type": format!("{:?}", unl.nat_type).to_lowercase(),
                "forwarding": format!("{:?}", unl.forwarding).to_lowercase(),
                "port": unl.port,
                "wan_ip": unl.wan_ip.to_string(),
                "lan_ip": unl.lan_ip.to_string(),
            })
        );
    } else {
        println!("{unl}");
    }
    Ok(())
}

pub(crate) fn connect(args: &ConnectArgs) -> Result<()> {
    let target: Unl = args
        .unl
        .trim()
        .parse()
        .with_context(|| format!("not a valid UNL: {:?}", args.unl))?;
    let mut config = Config::new().with_bind(args.bind).with_port(args.port);
    config.unl_connect_timeout = args.timeout;
    args.servers.apply(&mut config);
    args.reach.apply(&mut config);
    let has_mailbox = config.dht_msg.is_some();
    let has_rendezvous = !config.rendezvous.is_empty();
    let probe = !args.no_reach && crate::reach_cmd::ReachFlags::run_probes(&config);
    let mut net = Net::new(config)?;
    net.start()?;
    if probe {
        match net.probe_reachability() {
            Ok(report) if report.node_type == node::reach::NodeKind::Passive => {}
            Ok(_) => {
                info!("this node cannot be dialed: no reverse connect will be asked for");
                net.set_reachability(node::Role::Active, None);
            }
            Err(e) => tracing::warn!(error = %e, "reachability probe failed"),
        }
    }
    if has_rendezvous && target.node_type == node::unl::NodeType::Simultaneous {
        // A punch predicts our ports from our NAT's mapping.
        if let Err(e) = net.detect_nat() {
            tracing::warn!(error = %e, "NAT detection failed; assuming a port-preserving NAT");
        }
    }
    if has_mailbox {
        // A reverse connect needs our mailbox registered (the request names us as sender).
        let ready = net.poll_until(Duration::from_secs(3), |n| n.mailbox_ready())?;
        if !ready {
            tracing::warn!(
                "the mailbox server did not answer within 3 s; reverse connect may fail"
            );
        }
    }
    let id = net.connect(&target);
    let outcome = net.wait_connect(id)?;
    print_outcome(&outcome, args.json);
    if !outcome.connected {
        net.stop();
        std::process::exit(2);
    }
    if args.no_stdin {
        net.stop();
        return Ok(());
    }
    let conn = outcome
        .conn
        .context("a connected outcome names its connection")?;
    exchange_lines(&mut net, conn)
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
fn exchange_lines(net: &mut Net, conn: node::core::ConnId) -> Result<()> {
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
        let _ = net.events().count();
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
