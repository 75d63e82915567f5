//! `rendezvous-load`: a load generator for any PyP2P-compatible rendezvous server (ours or
//! PyP2P's own), printing numbers rather than asserting them.
//!
//! - `bootstrap`: N persistent clients, each sends `BOOTSTRAP 20` and waits for the reply before
//!   the next; prints requests/s and round-trip p50/p99/p999. One thread, one mio loop.
//! - `idle`: holds N silent connections from many 127.x.y.z source addresses, and reports the
//!   server's RSS growth per connection (from /proc/PID/status) and a fresh client's
//!   `BOOTSTRAP` latency before and while they are held.
//! - `relay`: starts our `rendezvous` binary itself (twice: without and with `--relay-rate`)
//!   and measures the relay: throughput through one spliced pair, the round trip of a small
//!   line through it (against a direct loopback connection), and the server's memory per
//!   waiting and per idle active session.
//!
//! Only loopback targets are accepted: this tool is for this machine.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use rendezvous::config::parse_bytes;
use socket2::{Domain, Socket, Type};
use wire::units::parse_duration;

mod bootstrap;
mod idle;
mod relay;

use bootstrap::run_bootstrap;
use idle::run_idle;
use relay::run_relay;

/// Load generator for PyP2P-compatible rendezvous servers (loopback targets only).
///
/// Example: rendezvous-load bootstrap --target 127.0.0.1:8000 --clients 64 --duration 10s
#[derive(Debug, Parser)]
#[command(max_term_width = 100)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Throughput and latency of `BOOTSTRAP <n>` with persistent clients.
    Bootstrap {
        /// The server (must be a loopback address).
        #[arg(long, default_value = "127.0.0.1:8000")]
        target: SocketAddr,
        /// Concurrent persistent clients; each waits for its reply before asking again.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// How long to measure, after the warm-up.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Warm-up excluded from the numbers.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        warmup: Duration,
        /// Nodes each BOOTSTRAP asks for.
        #[arg(long, default_value_t = 20)]
        count: u8,
        /// Register this many passive nodes first (from 127.1.x.y, one per IP, so PyP2P's
        /// one-per-IP server holds them too); 0 measures `NODES EMPTY` replies.
        #[arg(long, default_value_t = 0)]
        register: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Memory per idle connection and latency while many connections are held.
    Idle {
        /// The server (must be a loopback address).
        #[arg(long, default_value = "127.0.0.1:8000")]
        target: SocketAddr,
        /// The server's process id, to read its RSS from /proc.
        #[arg(long)]
        pid: u32,
        /// Idle connections to open.
        #[arg(long, default_value_t = 19_000)]
        count: usize,
        /// Connections per source address (127.2.x.y); keep it under the server's per-IP cap.
        #[arg(long, default_value_t = 200)]
        per_ip: usize,
        /// Sequential BOOTSTRAP requests of the fresh client, before and while held.
        #[arg(long, default_value_t = 2_000)]
        probes: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Relay throughput (with and without a rate limit), line round trip, memory per session.
    /// Starts the `rendezvous` binary on 127.0.0.1 itself.
    Relay {
        /// The server binary (default: `rendezvous` next to this program).
        #[arg(long)]
        server: Option<PathBuf>,
        /// MiB sent through one pair for the unlimited throughput run (each direction in the
        /// two-way run).
        #[arg(long, default_value_t = 2048)]
        mib: usize,
        /// `--relay-rate` of the rate-limited run.
        #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
        rate: u64,
        /// How long the rate-limited transfer should take at that rate.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        rate_duration: Duration,
        /// Round trips of a small line through the relay (and, for comparison, directly).
        #[arg(long, default_value_t = 20_000)]
        round_trips: usize,
        /// Sessions opened to measure memory (two connections each).
        #[arg(long, default_value_t = 2_000)]
        sessions: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Bootstrap {
            target,
            clients,
            duration,
            warmup,
            count,
            register,
            json,
        } => {
            check_loopback(target)?;
            if register > 0 {
                register_nodes(target, register)?;
            }
            let report = run_bootstrap(target, clients, warmup, duration, count)?;
            report.print(json, clients, count, register);
        }
        Mode::Idle {
            target,
            pid,
            count,
            per_ip,
            probes,
            json,
        } => {
            check_loopback(target)?;
            run_idle(target, pid, count, per_ip.max(1), probes, json)?;
        }
        Mode::Relay {
            server,
            mib,
            rate,
            rate_duration,
            round_trips,
            sessions,
        } => {
            let server = match server {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("rendezvous"),
            };
            run_relay(&server, mib, rate, rate_duration, round_trips, sessions)?;
        }
    }
    Ok(())
}

pub(crate) fn check_loopback(target: SocketAddr) -> anyhow::Result<()> {
    if !target.ip().is_loopback() {
        bail!("refusing to load {target}: only loopback targets are allowed");
    }
    Ok(())
}

/// Connects from `source`; `source_port` 0 lets the kernel choose. Thousands of connections
/// from one address should name their ports: the kernel's search for a free port on `bind(ip, 0)`
/// grows with every socket already bound.
pub(crate) fn connect_from(
    source: IpAddr,
    source_port: u16,
    target: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(source, source_port).into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

pub(crate) fn register_nodes(target: SocketAddr, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let ip = Ipv4Addr::new(127, 1, u8::try_from(i / 250)?, u8::try_from(i % 250 + 1)?);
        let mut s = connect_from(ip.into(), 0, target)
            .with_context(|| format!("registering node {i} from {ip}"))?;
        s.write_all(b"PASSIVE READY 8000 10\r\nQUIT\r\n")?;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    Ok(())
}
