//! `p2p-node-bench`: numbers for the node, on loopback only.
//!
//! - `throughput`: lines per second over one node-to-node connection (100-byte lines),
//!   encrypted (the default between nodes) and plain text in the same run.
//! - `latency`: one-way latency of single lines at low load; both nodes block in `Net::poll`
//!   (no spinning), each in its own thread; encrypted and plain text in the same run.
//! - `flood`: time for one broadcast to reach every node of an N-node overlay (each node in its
//!   own thread, blocking in `Net::poll`); encrypted links, or `--plain`.
//! - `idle`: memory per idle connection (RSS growth of a node holding N plain-text
//!   connections from raw clients).
//! - `connect`: time from `connect(unl)` to the connect's outcome between two nodes, by a v3
//!   UNL (encrypted) and by its v2 form (plain text), in the same run.
//! - `noise`: encrypted lines beside plain and raw ones (lines/s, MB/s, one-way latency),
//!   handshakes per second on one core, and the time a handshake adds to a connect.

#![allow(
    clippy::doc_markdown,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use node::{Config, Net};

#[path = "p2p-node-bench/noise.rs"]
mod noise;

/// Benchmarks of the node on loopback (prints numbers; asserts nothing).
#[derive(Debug, Parser)]
#[command(name = "p2p-node-bench")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Lines per second over one connection.
    Throughput {
        /// Lines to send.
        #[arg(long, default_value_t = 2_000_000)]
        lines: usize,
        /// Bytes per line (without terminator).
        #[arg(long, default_value_t = 100)]
        bytes: usize,
    },
    /// One-way latency of single lines (p50/p99/p99.9).
    Latency {
        /// Lines to time.
        #[arg(long, default_value_t = 20_000)]
        samples: usize,
    },
    /// Time from `connect(unl)` to the outcome: encrypted (v3 UNL) and plain (v2 UNL).
    Connect {
        /// Connects to time, each way.
        #[arg(long, default_value_t = 300)]
        rounds: usize,
    },
    /// Time for a broadcast to reach every node of an overlay.
    Flood {
        /// Plain-text links instead of encrypted ones.
        #[arg(long)]
        plain: bool,
        /// Nodes in the overlay.
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        /// Broadcasts to time.
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
    /// Memory per idle connection.
    Idle {
        /// Connections to hold.
        #[arg(long, default_value_t = 5000)]
        count: usize,
    },
    /// Encrypted connections: throughput and latency beside plain and raw, handshakes/s.
    Noise {
        /// Lines to send in each throughput run.
        #[arg(long, default_value_t = 2_000_000)]
        lines: usize,
        /// Bytes per line (without terminator).
        #[arg(long, default_value_t = 100)]
        bytes: usize,
        /// Lines to time for latency.
        #[arg(long, default_value_t = 20_000)]
        samples: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Throughput { lines, bytes } => {
            let encrypted = throughput(lines, bytes, false)?;
            let plain = throughput(lines, bytes, true)?;
            println!(
                "throughput: encrypted is {:.0} % of plain text",
                100.0 * encrypted / plain
            );
            Ok(())
        }
        Mode::Latency { samples } => {
            latency(samples, false)?;
            latency(samples, true)
        }
        Mode::Connect { rounds } => connect_times(rounds),
        Mode::Flood {
            plain,
            nodes,
            rounds,
        } => flood(nodes, rounds, plain),
        Mode::Idle { count } => idle(count),
        Mode::Noise {
            lines,
            bytes,
            samples,
        } => noise::run(lines, bytes, samples),
    }
}

fn loopback() -> Config {
    Config::new()
        .with_bind(std::net::Ipv4Addr::LOCALHOST.into())
        .with_max_inbound(100_000)
        .with_max_inbound_per_ip(100_000)
        .with_max_output_bytes(1 << 30)
}

/// A listening node and a node connected to it, both ready (`plain`: a plain-text
/// connection, else encrypted as by default).
fn pair(plain: bool) -> Result<(Net, Net)> {
    let mut a = Net::new(loopback())?;
    a.start()?;
    let mut b = Net::new(loopback().with_listen(false).with_plaintext_dials(plain))?;
    b.connect(a.local_addr().context("a listens")?);
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.connection_count() == 0 || b.connection_count() == 0 {
        a.poll(Some(Duration::from_millis(1)))?;
        b.poll(Some(Duration::from_millis(1)))?;
        if Instant::now() > deadline {
            bail!("the two nodes did not connect");
        }
    }
    // Swallow the HELLO exchange.
    for _ in 0..10 {
        a.poll(Some(Duration::from_millis(1)))?;
        b.poll(Some(Duration::from_millis(1)))?;
    }
    Ok((a, b))
}

/// Lines per second over one connection (printed; returned).
fn throughput(lines: usize, bytes: usize, plain: bool) -> Result<f64> {
    let (mut rx, mut tx) = pair(plain)?;
    let line = "x".repeat(bytes);
    let sender = std::thread::spawn(move || -> Result<()> {
        let mut sent = 0;
        while sent < lines {
            for con in tx.connections() {
                // Queue a batch, then let the loop write it.
                for _ in 0..1000.min(lines - sent) {
                    con.send_line(&line)?;
                    sent += 1;
                }
            }
            tx.poll(Some(Duration::ZERO))?;
            // Keep at most a few MB queued: wait for the socket to drain.
            while tx.connections().any(|c| c.is_open()) && queued(&mut tx) > 4 << 20 {
                tx.poll(Some(Duration::from_millis(1)))?;
            }
        }
        for _ in 0..100 {
            tx.poll(Some(Duration::from_millis(10)))?;
        }
        Ok(())
    });
    let start = Instant::now();
    let mut got = 0usize;
    while got < lines {
        rx.poll(Some(Duration::from_millis(100)))?;
        for con in rx.connections() {
            got += con.lines().count();
        }
        if start.elapsed() > Duration::from_mins(2) {
            bail!("only {got} of {lines} lines arrived");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    println!(
        "throughput {}: {lines} lines of {bytes} bytes in {secs:.3} s = {:.0} lines/s ({:.1} MB/s)",
        kind(plain),
        lines as f64 / secs,
        (lines * (bytes + 2)) as f64 / secs / 1e6
    );
    Ok(lines as f64 / secs)
}

fn kind(plain: bool) -> &'static str {
    if plain { "plain    " } else { "encrypted" }
}

/// Bytes queued but not yet written, over every connection of `net`.
fn queued(net: &mut Net) -> usize {
    net.connections().map(|c| c.queued_bytes()).sum()
}

fn latency(samples: usize, plain: bool) -> Result<()> {
    let (mut rx, mut tx) = pair(plain)?;
    let epoch = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || -> Result<Vec<u64>> {
            let mut delays = Vec::with_capacity(samples);
            while delays.len() < samples && !done.load(Ordering::SeqCst) {
                // Blocks until readiness: no spinning.
                rx.poll(Some(Duration::from_millis(100)))?;
                let now = u64::try_from(epoch.elapsed().as_nanos())?;
                for con in rx.connections() {
                    for line in con.lines() {
                        let sent: u64 = line.parse()?;
                        delays.push(now - sent);
                    }
                }
            }
            Ok(delays)
        })
    };
    for _ in 0..samples {
        let stamp = u64::try_from(epoch.elapsed().as_nanos())?;
        for con in tx.connections() {
            con.send_line(&stamp.to_string())?;
        }
        tx.poll(Some(Duration::ZERO))?;
        // Low load: one line at a time, 100 us apart.
        std::thread::sleep(Duration::from_micros(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::SeqCst);
    let mut delays = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    delays.sort_unstable();
    let pct = |p: f64| delays[((delays.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!(
        "latency {}: {} lines, one-way p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us (blocking poll, no spinning)",
        kind(plain),
        delays.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    Ok(())
}

fn flood(nodes: usize, rounds: usize, plain: bool) -> Result<()> {
    // A random overlay without a rendezvous: node i dials 3 random earlier nodes.
    let mut nets = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for i in 0..nodes {
        let mut net = Net::new(loopback().with_seed(i as u64).with_plaintext_dials(plain))?;
        net.start()?;
        for k in 0..3.min(i) {
            let j = (i * 7 + k * 13) % i;
            net.connect(addrs[j]);
        }
        addrs.push(net.local_addr().context("listening")?);
        nets.push(net);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for n in &mut nets {
            n.poll(Some(Duration::ZERO))?;
        }
        if nets.iter().all(|n| n.connection_count() >= 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("overlay did not form");
        }
    }
    for _ in 0..100 {
        for n in &mut nets {
            n.poll(Some(Duration::ZERO))?;
        }
    }
    let links: usize = nets.iter().map(Net::connection_count).sum::<usize>() / 2;
    // Each node runs in its own thread, blocking in poll; the origin (node 0) broadcasts and
    // every other node counts arrivals.
    let epoch = Instant::now();
    let received = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(nodes));
    let mut origin = nets.remove(0);
    let last_arrival: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new(
        (0..rounds)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
    );
    let mut handles = Vec::new();
    for mut net in nets {
        let (received, stop, barrier, last) = (
            Arc::clone(&received),
            Arc::clone(&stop),
            Arc::clone(&barrier),
            Arc::clone(&last_arrival),
        );
        handles.push(std::thread::spawn(move || -> Result<()> {
            barrier.wait();
            while !stop.load(Ordering::SeqCst) {
                net.poll(Some(Duration::from_millis(20)))?;
                let now = u64::try_from(epoch.elapsed().as_nanos())?;
                for con in net.connections() {
                    for line in con.lines() {
                        let round: usize = line.parse()?;
                        last[round].fetch_max(now, Ordering::SeqCst);
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            Ok(())
        }));
    }
    barrier.wait();
    let mut times = Vec::new();
    for round in 0..rounds {
        let before = received.load(Ordering::SeqCst);
        let sent = u64::try_from(epoch.elapsed().as_nanos())?;
        origin.broadcast(&round.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.load(Ordering::SeqCst) < before + nodes - 1 {
            origin.poll(Some(Duration::from_millis(1)))?;
            if Instant::now() > deadline {
                bail!(
                    "round {round}: only {} of {} nodes got it",
                    received.load(Ordering::SeqCst) - before,
                    nodes - 1
                );
            }
        }
        times.push(last_arrival[round].load(Ordering::SeqCst) - sent);
    }
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("node thread panicked"))??;
    }
    let total = received.load(Ordering::SeqCst);
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!(
        "flood ({}): {nodes} nodes, {links} links, {rounds} broadcasts; last node reached after p50 {:.0} us, p99 {:.0} us; deliveries {total} (expected {})",
        kind(plain).trim_end(),
        pct(0.5),
        pct(0.99),
        rounds * (nodes - 1)
    );
    Ok(())
}

/// Time from `connect(unl)` to the connect's outcome, v3 (encrypted) and v2 (plain).
fn connect_times(rounds: usize) -> Result<()> {
    let mut alice = Net::new(loopback().with_node_type(node::Role::Passive))?;
    alice.start()?;
    let (v3, v2) = (alice.unl(), alice.unl_v2());
    for (name, target) in [
        ("encrypted (v3 UNL)", node::wire::unl::v3::AnyUnl::V3(v3)),
        ("plain (v2 UNL)", node::wire::unl::v3::AnyUnl::V2(v2)),
    ] {
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let mut bob = Net::new(loopback().with_listen(false))?;
            bob.start()?;
            let start = Instant::now();
            let id = bob.connect(&target);
            let deadline = start + Duration::from_secs(5);
            let outcome = loop {
                bob.poll(Some(Duration::ZERO))?;
                alice.poll(Some(Duration::ZERO))?;
                if let Some(o) = bob.events().find_map(|e| match e {
                    node::core::Event::ConnectDone(o) if o.id == id => Some(o),
                    _ => None,
                }) {
                    break o;
                }
                if Instant::now() > deadline {
                    bail!("{name}: no outcome within 5 s");
                }
            };
            let took = start.elapsed();
            if !outcome.connected {
                bail!("{name}: {}", outcome.describe_tries());
            }
            times.push(took.as_secs_f64() * 1e6);
            bob.stop();
            for _ in 0..20 {
                alice.poll(Some(Duration::ZERO))?;
            }
        }
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
        println!(
            "connect {name}: {rounds} connects on loopback, connect() to outcome p50 {:.0} us, p99 {:.0} us",
            pct(0.5),
            pct(0.99)
        );
    }
    Ok(())
}

fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

fn idle(count: usize) -> Result<()> {
    let mut net = Net::new(loopback())?;
    net.start()?;
    let addr = net.local_addr().context("listening")?;
    for _ in 0..200 {
        net.poll(Some(Duration::ZERO))?;
    }
    let before = rss_kib()?;
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        // A first byte that is not NUL: a plain-text peer (the node sniffs the first byte).
        let mut client = TcpStream::connect(addr)?;
        std::io::Write::write_all(&mut client, b"\r\n")?;
        clients.push(client);
        if i % 100 == 0 {
            net.poll(Some(Duration::ZERO))?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while net.connection_count() < count {
        net.poll(Some(Duration::from_millis(10)))?;
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} connections accepted",
                net.connection_count()
            );
        }
    }
    for _ in 0..100 {
        net.poll(Some(Duration::ZERO))?;
    }
    let after = rss_kib()?;
    // The clients' sockets live in the kernel; their user-space cost (a TcpStream each) is a
    // few bytes, counted here too, so this slightly overstates the node's share.
    println!(
        "idle: {count} plain-text connections held; node RSS {before} KiB -> {after} KiB = {:.0} bytes per connection",
        (after.saturating_sub(before) * 1024) as f64 / count as f64
    );
    drop(clients);
    Ok(())
}
