//! `p2p-server`: every server of the p2p toolkit in one process.

// The doc comments below are `--help` text, read in a terminal, not Markdown.
#![allow(clippy::doc_markdown)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::Context as _;
use clap::Parser;
use server_kit::metrics::{MetricsEndpoint, MetricsSource};
use server_kit::{Service, ShutdownHandle, metrics_source};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info};

/// Every server of the p2p toolkit in one process: the rendezvous (bootstrap, NAT probe,
/// hole-punch coordination, relay) on 8000, the dht-msg mailbox on 8090 and the
/// forwarding check on 8080, each on its own thread and port, configured by one file.
///
/// The file's [rendezvous], [dht-msg] and [forwarding-check] sections take each server's own
/// flags without the dashes (see rendezvous --help, dht-msg --help, forwarding-check --help);
/// enabled = false leaves a server out. At the top: metrics-listen = "IP:PORT" (Prometheus
/// metrics of all three at /metrics) and backend = "redis://..." (shared with other
/// instances, for the rendezvous and dht-msg). Without a file: all three with defaults,
/// mailboxes in memory.
///
/// Example /etc/p2p-server.toml:
///   metrics-listen = "127.0.0.1:9464"
///   [dht-msg]
///   data-dir = "/var/lib/p2p-server/dht-msg"
///
/// Logs go to stderr (RUST_LOG=debug for every connection event). SIGINT or SIGTERM stops
/// every server gracefully; if one server fails, the others are stopped and the exit status
/// is 1.
#[derive(Debug, Parser)]
#[command(version, max_term_width = 100)]
struct Cli {
    /// The config file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve the metrics of every server at http://ADDR/metrics (overrides the file's).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Redis URL for the rendezvous and dht-msg (overrides the file's top-level backend).
    #[arg(long, value_name = "URL")]
    backend: Option<String>,
}

/// One server started: its name, where it listens, how to stop it, its metrics and its thread.
struct Started {
    name: &'static str,
    addr: SocketAddr,
    stop: ShutdownHandle,
    metrics: MetricsSource,
}

fn start<C: Service>(
    name: &'static str,
    listen: SocketAddr,
    config: C::Config,
    done: &mpsc::Sender<(&'static str, std::io::Result<()>)>,
) -> anyhow::Result<Started>
where
    C::Stats: server_kit::metrics::Metrics,
{
    let server = server_kit::bind::<C>(listen, config)?;
    let started = Started {
        name,
        addr: server.local_addr(),
        stop: server.shutdown_handle(),
        metrics: metrics_source(server.live_stats()),
    };
    let done = done.clone();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = server.run().map(|_| ());
            let _ = done.send((name, result));
        })?;
    Ok(started)
}

fn main() -> anyhow::Result<()> {
    server_kit::init_logging();
    let cli = Cli::parse();
    let (text, source) = match &cli.config {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (String::new(), "(no config file)".to_owned()),
    };
    let mut text = text;
    if let Some(url) = &cli.backend {
        // A top-level key must come before the first section.
        text = format!("backend = {url:?}\n{}", strip_top_key(&text, "backend"));
    }
    let plan = p2p_server::plan(&text, &source)?;
    let metrics_listen = cli.metrics_listen.or(plan.metrics_listen);
    let (done, finished) = mpsc::channel();
    let mut started = Vec::new();
    if let Some(args) = &plan.rendezvous {
        started.push(start::<rendezvous::serve::Rendezvous>(
            "rendezvous",
            args.listen,
            args.config()?,
            &done,
        )?);
    }
    if let Some(args) = &plan.dht_msg {
        started.push(start::<dht_msg::serve::Mailboxes>(
            "dht-msg",
            args.listen,
            args.config()?,
            &done,
        )?);
    }
    if let Some(args) = &plan.forwarding_check {
        started.push(start::<forwarding_check::core::Core>(
            "forwarding-check",
            args.listen,
            args.config(),
            &done,
        )?);
    }
    anyhow::ensure!(!started.is_empty(), "{source}: every server is disabled");
    drop(done);
    let stops: Vec<ShutdownHandle> = started.iter().map(|s| s.stop.clone()).collect();
    let summary: Vec<String> = started
        .iter()
        .map(|s| format!("{}={}", s.name, s.addr))
        .collect();
    let _endpoint = match metrics_listen {
        Some(addr) => Some(MetricsEndpoint::start(
            addr,
            started.into_iter().map(|s| s.metrics).collect(),
        )?),
        None => None,
    };
    info!(servers = summary.join(" "), "p2p-server ready");
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    {
        let stops = stops.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    info!(signal, "signal received, stopping every server");
                    stops.iter().for_each(ShutdownHandle::shutdown);
                }
            })?;
    }
    let mut failed = false;
    for (name, result) in finished {
        if let Err(e) = result {
            error!(server = name, "stopped: {e}; stopping the others");
            failed = true;
        }
        // One server ending (a failure, or the signal) ends them all.
        stops.iter().for_each(ShutdownHandle::shutdown);
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// `text` without a top-level `key = ...` line (before the first section).
fn strip_top_key(text: &str, key: &str) -> String {
    let mut in_section = false;
    text.lines()
        .filter(|line| {
            let t = line.trim_start();
            in_section |= t.starts_with('[');
            in_section
                || !t
                    .strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
