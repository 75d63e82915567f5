//! `rendezvous-load`: a load generator for any PyP2P-compatible rendezvous server (ours or
//! PyP2P's own), printing numbers rather than asserting them.
//!
//! - `bootstrap`: N persistent clients, each sends `BOOTSTRAP 20` and waits for the reply before
//!   the next; prints requests/s and round-trip p50/p99/p999. One thread, one mio loop.
//! - `idle`: holds N silent connections from many 127.x.y.z source addresses, and reports the
//!   server's RSS growth per connection (from /proc/PID/status) and a fresh client's
//!   `BOOTSTRAP` latency before and while they are held.
//!
//! Only loopback targets are accepted: this tool is for this machine.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use mio::{Events, Interest, Poll, Token};
use node::units::parse_duration;
use socket2::{Domain, Socket, Type};

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
    }
    Ok(())
}

fn check_loopback(target: SocketAddr) -> anyhow::Result<()> {
    if !target.ip().is_loopback() {
        bail!("refusing to load {target}: only loopback targets are allowed");
    }
    Ok(())
}

/// Connects from `source`; `source_port` 0 lets the kernel choose. Thousands of connections
/// from one address should name their ports: the kernel's search for a free port on `bind(ip, 0)`
/// grows with every socket already bound.
fn connect_from(
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

fn register_nodes(target: SocketAddr, n: usize) -> anyhow::Result<()> {
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

struct Report {
    requests: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    reply_bytes: usize,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

impl Report {
    #[allow(clippy::cast_precision_loss)]
    fn print(mut self, json: bool, clients: usize, count: u8, register: usize) {
        self.latencies_us.sort_unstable();
        let rate = self.requests as f64 / self.elapsed.as_secs_f64();
        let (p50, p99, p999) = (
            percentile(&self.latencies_us, 0.50),
            percentile(&self.latencies_us, 0.99),
            percentile(&self.latencies_us, 0.999),
        );
        if json {
            println!(
                "{{\"mode\":\"bootstrap\",\"clients\":{clients},\"count\":{count},\"registered\":{register},\"requests\":{},\"seconds\":{:.3},\"per_second\":{rate:.0},\"p50_us\":{p50},\"p99_us\":{p99},\"p999_us\":{p999},\"reply_bytes\":{}}}",
                self.requests,
                self.elapsed.as_secs_f64(),
                self.reply_bytes
            );
        } else {
            println!(
                "BOOTSTRAP {count} x {clients} clients ({register} nodes registered, reply {} bytes): \
                 {rate:.0} requests/s over {:.1} s; round trip p50 {p50} us, p99 {p99} us, p99.9 {p999} us",
                self.reply_bytes,
                self.elapsed.as_secs_f64()
            );
        }
    }
}

struct LoadClient {
    stream: mio::net::TcpStream,
    buf: Vec<u8>,
    sent_at: Instant,
}

fn run_bootstrap(
    target: SocketAddr,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    count: u8,
) -> anyhow::Result<Report> {
    let request = format!("BOOTSTRAP {count}\r\n").into_bytes();
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        let stream = connect_from(Ipv4Addr::LOCALHOST.into(), 0, target)
            .with_context(|| format!("connecting client {i} to {target}"))?;
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)?;
        conns.push(LoadClient {
            stream,
            buf: Vec::with_capacity(4096),
            sent_at: Instant::now(),
        });
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    for c in &mut conns {
        c.stream.write_all(&request)?;
        c.sent_at = Instant::now();
    }
    let mut events = Events::with_capacity(1024);
    let mut latencies_us = Vec::with_capacity(4_000_000);
    let mut requests = 0u64;
    let mut reply_bytes = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut open = clients;
    while open > 0 {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        let now = Instant::now();
        if now > end + Duration::from_secs(5) {
            bail!("{open} clients still waiting for a reply 5 s after the end");
        }
        for event in &events {
            let c = &mut conns[event.token().0];
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => bail!("server closed client {}", event.token().0),
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            while let Some(pos) = c.buf.iter().position(|&b| b == b'\n') {
                if c.buf.starts_with(b"ERROR") {
                    bail!(
                        "server answered {}",
                        String::from_utf8_lossy(&c.buf[..pos]).trim_end()
                    );
                }
                reply_bytes = pos + 1;
                c.buf.drain(..=pos);
                if c.sent_at >= measure_from && now <= end {
                    requests += 1;
                    let us = now.duration_since(c.sent_at).as_micros();
                    latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                if now < end {
                    c.stream.write_all(&request)?;
                    c.sent_at = Instant::now();
                } else {
                    open -= 1;
                }
            }
        }
    }
    Ok(Report {
        requests,
        elapsed: duration,
        latencies_us,
        reply_bytes,
    })
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS line")?
        .parse()?)
}

/// p50 and p99 of `probes` sequential `BOOTSTRAP 20` round trips on one fresh connection.
fn probe_latency(target: SocketAddr, probes: usize) -> anyhow::Result<(u32, u32)> {
    let stream = connect_from(Ipv4Addr::new(127, 3, 0, 1).into(), 0, target)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut lat = Vec::with_capacity(probes);
    let mut line = String::new();
    for _ in 0..probes {
        let t = Instant::now();
        writer.write_all(b"BOOTSTRAP 20\r\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        if !line.starts_with("NODES") {
            bail!("probe got {line:?}");
        }
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    lat.sort_unstable();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

#[allow(clippy::cast_precision_loss)]
fn run_idle(
    target: SocketAddr,
    pid: u32,
    count: usize,
    per_ip: usize,
    probes: usize,
    json: bool,
) -> anyhow::Result<()> {
    let (before_p50, before_p99) = probe_latency(target, probes)?;
    let rss_before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    let mut first_error = None;
    let started = Instant::now();
    for i in 0..count {
        let n = i / per_ip;
        let ip = Ipv4Addr::new(127, 2, u8::try_from(n / 250)?, u8::try_from(n % 250 + 1)?);
        let port = 20_000 + u16::try_from(i % per_ip)?;
        match connect_from(ip.into(), port, target) {
            Ok(s) => held.push(s),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
                if failed > 100 {
                    break;
                }
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    // Let the server accept the backlog, then see which connections it refused or closed.
    std::thread::sleep(Duration::from_secs(2));
    let mut refused = 0usize;
    for s in &held {
        s.set_nonblocking(true)?;
        let mut b = [0u8; 1];
        match s.peek(&mut b) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            _ => refused += 1,
        }
    }
    let rss_after = rss_kib(pid)?;
    let accepted = held.len() - refused;
    let per_conn_bytes = if accepted > 0 {
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / accepted as f64
    } else {
        0.0
    };
    // At the server's file-descriptor limit a fresh client cannot be accepted at all: report it.
    let (during_p50, during_p99, during_error) = match probe_latency(target, probes) {
        Ok((p50, p99)) => (p50, p99, String::new()),
        Err(e) => (0, 0, e.to_string()),
    };
    if json {
        println!(
            "{{\"mode\":\"idle\",\"attempted\":{count},\"held\":{accepted},\"refused_or_closed\":{refused},\"connect_failures\":{failed},\"rss_before_kib\":{rss_before},\"rss_after_kib\":{rss_after},\"bytes_per_connection\":{per_conn_bytes:.0},\"probe_before_p50_us\":{before_p50},\"probe_before_p99_us\":{before_p99},\"probe_during_p50_us\":{during_p50},\"probe_during_p99_us\":{during_p99},\"probe_during_error\":{during_error:?},\"open_seconds\":{open_secs:.2}}}"
        );
    } else {
        println!(
            "idle: {accepted} of {count} held ({refused} refused/closed by the server, {failed} connect failures{}), opened in {open_secs:.1} s",
            first_error
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        );
        println!(
            "server RSS {rss_before} KiB -> {rss_after} KiB: {per_conn_bytes:.0} bytes per idle connection"
        );
        if during_error.is_empty() {
            println!(
                "fresh client BOOTSTRAP 20: before p50 {before_p50} us / p99 {before_p99} us; while held p50 {during_p50} us / p99 {during_p99} us"
            );
        } else {
            println!(
                "fresh client BOOTSTRAP 20: before p50 {before_p50} us / p99 {before_p99} us; while held: not served ({during_error})"
            );
        }
    }
    Ok(())
}
