//! The `netns-sim` command: build a NAT lab, run commands in it, show it, tear it down, demo.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use netns_sim::lab::Lab;
use netns_sim::{RUN_DIR, sys};

mod args;
mod bench;
mod demo;
mod probe_cmd;
mod shape;

use args::{DemoArgs, DownArgs, ExecArgs, ProbeCmd, StatusArgs, UpArgs};
use demo::demo;
use probe_cmd::probe_cmd;

/// A NAT lab on one Linux machine: real NATs (nftables), UPnP/NAT-PMP (miniupnpd) and NTP
/// (chrony) inside network namespaces. Needs root.
///
/// Typical session:
///   sudo netns-sim up --nat-a full-cone --nat-b symmetric --upnp-a --ntp
///   sudo netns-sim exec alice -- ping -c1 11.0.0.2
///   sudo netns-sim status
///   sudo netns-sim down
#[derive(Parser, Debug)]
#[command(name = "netns-sim", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    Up(Box<UpArgs>),
    Exec(ExecArgs),
    Status(StatusArgs),
    Down(DownArgs),
    Demo(DemoArgs),
    BenchWan(bench::BenchArgs),
    #[command(subcommand, hide = true)]
    Probe(ProbeCmd),
    /// Run one namespace's WAN delay stage (started by the lab; see `netns_sim::wan`).
    #[command(hide = true)]
    WanStage {
        /// The stage configuration (JSON, written by the lab).
        #[arg(long)]
        config: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netns-sim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let run_dir = Path::new(RUN_DIR);
    match cli.command {
        Cmd::Up(args) => up(&args),
        Cmd::Exec(args) => {
            sys::require_root()?;
            let lab = Lab::find(args.lab.as_deref(), run_dir)?;
            let (program, rest) = args
                .cmd
                .split_first()
                .context("no command given after the host name")?;
            let status = lab
                .command(&args.host, program)?
                .args(rest)
                .status()
                .with_context(|| format!("cannot run {program:?} on {:?}", args.host))?;
            Ok(ExitCode::from(
                u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
            ))
        }
        Cmd::Status(args) => {
            sys::require_root()?;
            let prefixes = match &args.lab {
                Some(p) => vec![p.clone()],
                None => Lab::list(run_dir),
            };
            if prefixes.is_empty() {
                println!("no lab is up");
            }
            for p in prefixes {
                let lab = Lab::attach(&p, run_dir)?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(lab.state())?);
                } else {
                    print!("{}", lab.status_text());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down(args) => {
            sys::require_root()?;
            if let Some(p) = args.prefix {
                Lab::teardown(&p, run_dir)?;
                println!("lab {p} is down");
            } else {
                let gone = Lab::teardown_all(run_dir)?;
                if gone.is_empty() {
                    println!("no lab was up");
                } else {
                    println!("down: {}", gone.join(" "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo(args) => demo(&args),
        Cmd::Probe(p) => probe_cmd(p),
        Cmd::BenchWan(args) => bench::bench_wan(&args),
        Cmd::WanStage { config } => {
            let config = netns_sim::wan::StageConfig::read(&config)?;
            netns_sim::wan::daemon::run(&config, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .with_context(|| format!("cannot handle signal {sig}"))?;
    }
    Ok(stop)
}

fn up(args: &UpArgs) -> Result<ExitCode> {
    let topology = args.ipv6.apply(
        args.routers
            .apply(args.wan.apply(args.shape.topology()?)?)?,
    )?;
    let stop = stop_flag()?;
    let lab = Lab::up_with(&topology, &args.shape.options())?;
    eprint!("{}", lab.status_text());
    if stop.load(Ordering::SeqCst) {
        lab.down()?;
        bail!("interrupted: lab torn down");
    }
    if !args.foreground {
        let prefix = lab.detach();
        println!("{prefix}");
        eprintln!("lab {prefix} is up; `netns-sim down {prefix}` removes it");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", lab.prefix());
    eprintln!("lab {} is up; Ctrl-C tears it down", lab.prefix());
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("tearing down lab {}", lab.prefix());
    lab.down()?;
    Ok(ExitCode::SUCCESS)
}
