//! `relay`: our `rendezvous` binary started twice (without and with `--relay-rate`); the
//! relay's throughput, a small line's round trip through it, and memory per session.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use wire::rendezvous::RelayToken;

use crate::bootstrap::percentile;
use crate::connect_from;
use crate::idle::rss_kib;

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
            .env("RUST_LOG", "warn,server_kit=info")
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

pub(crate) fn run_relay(
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
