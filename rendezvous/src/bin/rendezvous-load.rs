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

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use mio::{Events, Interest, Poll, Token};
use node::proto::rendezvous::RelayToken;
use node::units::parse_duration;
use rendezvous::config::parse_bytes;
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

/// Our rendezvous binary on 127.0.0.1 (port chosen by the kernel, read from its log).
struct Spawned {
    child: Child,
    addr: SocketAddr,
}

impl Spawned {
    fn start(bin: &PathBuf, args: &[&str]) -> anyhow::Result<Spawned> {
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn,rendezvous::driver=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("addr=")
                    && line.contains("listening")
                    && let Some(tx) = tx.take()
                {
                    let addr = line[at + 5..].split_whitespace().next().map(str::to_string);
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .ok()
            .flatten()
            .context("the server never logged its address")?
            .parse()?;
        Ok(Spawned { child, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay_token(n: u64) -> String {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8..16].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
    RelayToken::from_bytes(bytes).to_string()
}

/// Reads one line (byte by byte, so nothing after it is consumed).
fn read_reply(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        if stream.read(&mut byte)? == 0 {
            bail!("EOF after {:?}", String::from_utf8_lossy(&line));
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

fn expect_reply(stream: &mut TcpStream, want: &str) -> anyhow::Result<()> {
    let got = read_reply(stream)?;
    if got != want {
        bail!("expected {want:?}, got {got:?}");
    }
    Ok(())
}

/// Two connections spliced by the server at `target`.
fn relay_pair(target: SocketAddr, n: u64) -> anyhow::Result<(TcpStream, TcpStream)> {
    let token = relay_token(n);
    let mut a = connect_from(Ipv4Addr::new(127, 0, 0, 2).into(), 0, target)?;
    a.write_all(format!("RELAY {token}\r\n").as_bytes())?;
    expect_reply(&mut a, "RELAY WAITING")?;
    let mut b = connect_from(Ipv4Addr::new(127, 0, 0, 3).into(), 0, target)?;
    b.write_all(format!("RELAY {token}\r\n").as_bytes())?;
    expect_reply(&mut b, "RELAY OK")?;
    expect_reply(&mut a, "RELAY OK")?;
    Ok((a, b))
}

/// Sends `bytes` from `from` to `to` (on a thread) and returns the MiB/s the receiver saw.
fn transfer(from: &TcpStream, to: &TcpStream, bytes: usize) -> anyhow::Result<f64> {
    let mut writer = from.try_clone()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0x5au8; 256 * 1024];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            writer.write_all(&chunk[..n])?;
            sent += n;
        }
        Ok(())
    });
    let mut reader = to.try_clone()?;
    let mut buf = vec![0u8; 256 * 1024];
    let started = Instant::now();
    let mut got = 0;
    while got < bytes {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            bail!("EOF after {got} of {bytes} bytes");
        }
        got += n;
    }
    let secs = started.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    #[allow(clippy::cast_precision_loss)]
    Ok(bytes as f64 / (1024.0 * 1024.0) / secs)
}

/// p50 and p99 (in microseconds) of `n` round trips of a 32-byte line from `a` to an echo at
/// the other end of `b`.
fn round_trips(a: &mut TcpStream, b: TcpStream, n: usize) -> anyhow::Result<(u32, u32)> {
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut b = b;
        let mut buf = [0u8; 32];
        loop {
            match b.read_exact(&mut buf) {
                Ok(()) => b.write_all(&buf)?,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let line = *b"relay latency probe ...........\n";
    let mut back = [0u8; 32];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        a.write_all(&line)?;
        a.read_exact(&mut back)?;
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    a.shutdown(std::net::Shutdown::Write)?;
    let _ = echo.join();
    lat.sort_unstable();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

/// A direct loopback connection pair, for comparison.
fn direct_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

/// The server's RSS growth per session, for `sessions` waiting and then active sessions.
#[allow(clippy::cast_precision_loss)]
fn relay_memory(server: &Spawned, sessions: usize) -> anyhow::Result<(f64, f64, f64)> {
    let rss_before = rss_kib(server.pid())?;
    let source = |side: usize, i: usize| -> anyhow::Result<(IpAddr, u16)> {
        // 500 connections per source address, on ports chosen here (see `connect_from`).
        let n = side * 1000 + i / 500;
        let ip = Ipv4Addr::new(127, 4, u8::try_from(n / 250)?, u8::try_from(n % 250 + 1)?);
        Ok((ip.into(), 30_000 + u16::try_from(i % 500)?))
    };
    let mut waiting = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let (ip, port) = source(0, i)?;
        let mut s = connect_from(ip, port, server.addr)?;
        s.write_all(format!("RELAY {}\r\n", relay_token(1_000_000 + i as u64)).as_bytes())?;
        waiting.push(s);
    }
    for s in &mut waiting {
        expect_reply(s, "RELAY WAITING")?;
    }
    let rss_waiting = rss_kib(server.pid())?;
    let mut joined = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let (ip, port) = source(1, i)?;
        let mut s = connect_from(ip, port, server.addr)?;
        s.write_all(format!("RELAY {}\r\n", relay_token(1_000_000 + i as u64)).as_bytes())?;
        joined.push(s);
    }
    for s in joined.iter_mut().chain(&mut waiting) {
        expect_reply(s, "RELAY OK")?;
    }
    let rss_active = rss_kib(server.pid())?;
    // One 1 KiB message each way through every session, then idle again.
    let message = [7u8; 1024];
    let mut buf = [0u8; 1024];
    for (a, b) in waiting.iter_mut().zip(&mut joined) {
        a.write_all(&message)?;
        b.write_all(&message)?;
    }
    for s in waiting.iter_mut().chain(&mut joined) {
        s.read_exact(&mut buf)?;
    }
    let rss_used = rss_kib(server.pid())?;
    let per =
        |after: u64, before: u64| (after.saturating_sub(before) * 1024) as f64 / sessions as f64;
    Ok((
        per(rss_waiting, rss_before),
        per(rss_active, rss_before),
        per(rss_used, rss_before),
    ))
}

fn run_relay(
    bin: &PathBuf,
    mib: usize,
    rate: u64,
    rate_duration: Duration,
    trips: usize,
    sessions: usize,
) -> anyhow::Result<()> {
    let sessions_text = (sessions * 2 + 16).to_string();
    let unlimited = [
        "--relay-rate",
        "0",
        "--max-relays",
        &sessions_text,
        "--max-relays-per-ip",
        &sessions_text,
        "--max-connections-per-ip",
        &sessions_text,
    ];
    // Memory first, on a fresh server: after a transfer its heap holds freed buffers that
    // new sessions would reuse without growing the RSS.
    let server = Spawned::start(bin, &unlimited)?;
    println!(
        "relay bench against {} (pid {}), loopback, this machine",
        bin.display(),
        server.pid()
    );
    let (waiting, active, used) = relay_memory(&server, sessions)?;
    println!(
        "server memory (RSS growth / sessions, {sessions} sessions): {waiting:.0} bytes per waiting \
         connection, {active:.0} bytes per idle active session (two connections), {used:.0} after \
         1 KiB each way through each"
    );
    drop(server);

    let server = Spawned::start(bin, &unlimited)?;
    let (alice, bob) = relay_pair(server.addr, 1)?;
    let bytes = mib * 1024 * 1024;
    let one_way = transfer(&alice, &bob, bytes)?;
    let (near, far) = direct_pair()?;
    let direct = transfer(&near, &far, bytes)?;
    drop((near, far));
    println!(
        "throughput, one pair, no rate limit: {one_way:.0} MiB/s one way ({mib} MiB; a direct \
         loopback connection: {direct:.0} MiB/s)"
    );
    let (alice2, bob2) = (alice.try_clone()?, bob.try_clone()?);
    let back = std::thread::spawn(move || transfer(&bob2, &alice2, bytes));
    let forth = transfer(&alice, &bob, bytes)?;
    let back = back
        .join()
        .map_err(|_| anyhow::anyhow!("transfer panicked"))??;
    println!(
        "throughput, one pair, both ways at once: {forth:.0} + {back:.0} MiB/s ({mib} MiB each way)"
    );
    drop((alice, bob));

    let (mut alice, bob) = relay_pair(server.addr, 2)?;
    let (relay_p50, relay_p99) = round_trips(&mut alice, bob, trips)?;
    let (mut near, far) = direct_pair()?;
    let (direct_p50, direct_p99) = round_trips(&mut near, far, trips)?;
    println!(
        "round trip of a 32-byte line ({trips}x): through the relay p50 {relay_p50} us, p99 {relay_p99} us; \
         direct loopback p50 {direct_p50} us, p99 {direct_p99} us"
    );
    drop(server);

    let rate_text = rate.to_string();
    let server = Spawned::start(bin, &["--relay-rate", &rate_text])?;
    let (alice, bob) = relay_pair(server.addr, 3)?;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let bytes = (rate as f64 * rate_duration.as_secs_f64()) as usize;
    let limited = transfer(&alice, &bob, bytes)?;
    #[allow(clippy::cast_precision_loss)]
    let (rate_mib, total_mib) = (
        rate as f64 / (1024.0 * 1024.0),
        bytes as f64 / (1024.0 * 1024.0),
    );
    println!(
        "throughput, one pair, --relay-rate {rate} ({rate_mib:.2} MiB/s): {limited:.2} MiB/s over \
         {total_mib:.1} MiB (the first quarter second's worth is a burst)"
    );
    Ok(())
}
