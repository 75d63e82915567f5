//! `dht-msg-load`: end-to-end throughput of a `dht-msg` server, printing numbers rather than
//! asserting them.
//!
//! For each of `--pairs` mailboxes: a subscriber connection (REGISTER, SUBSCRIBE, then ACKs every
//! pushed MSG) and a publisher connection that keeps `--window` PUTs in flight. A message counts
//! when its MSG reaches the subscriber; its latency is from just before the PUT was written to
//! the MSG being read (the send time travels in the message).
//!
//! Without `--target`, a server is started in this process (rate limits lifted; add
//! `--data-dir` to measure with redb persistence). With `--target`, run the server with
//! `--put-rate-per-ip` and `--put-burst-per-ip` high enough, or the limits are what you measure.
//! Only loopback targets are accepted: this tool is for this machine.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use dht_msg::{Config, RunningServer};
use wire::units::parse_duration;

/// End-to-end messages per second through a dht-msg server (loopback only).
///
/// Example: dht-msg-load --pairs 4 --window 64 --duration 10s
#[derive(Debug, Parser)]
#[command(max_term_width = 100)]
struct Args {
    /// The server (must be a loopback address). Omitted: start one in this process.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// With the in-process server: persist to this directory (measures redb group commits).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Publisher/subscriber pairs, each on its own mailbox.
    #[arg(long, default_value_t = 1)]
    pairs: usize,
    /// PUTs in flight per publisher (sent, not yet received by the subscriber).
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Message size in bytes (at least 24: the send time rides in it).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up excluded from the numbers.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

struct Shared {
    start: Instant,
    stop: AtomicBool,
    measuring: AtomicBool,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, line: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock()
            && first.is_none()
        {
            *first = Some(line.to_string());
        }
    }
}

struct Pair {
    received: AtomicU64,
    sent: AtomicU64,
}

fn connect(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(target).with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.size < 24 {
        bail!("--size must be at least 24 bytes");
    }
    if args.window == 0 || args.window > 200 {
        bail!("--window must be in 1..=200 (a mailbox holds 256 messages by default)");
    }
    let (target, server) = server_for(&args)?;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let mut threads: Vec<JoinHandle<Vec<u32>>> = Vec::new();
    let mut pairs = Vec::new();
    let mut sockets = Vec::new();
    let run_id = std::process::id();
    for i in 0..args.pairs {
        let mailbox = format!("load-{run_id}-{i}");
        let pair = Arc::new(Pair {
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        });
        pairs.push(Arc::clone(&pair));
        let sub = connect(target)?;
        sockets.push(sub.try_clone()?);
        let mut reader = BufReader::new(sub.try_clone()?);
        let mut writer = BufWriter::new(sub);
        write!(
            writer,
            "REGISTER {mailbox} secret-{run_id}\r\nSUBSCRIBE\r\n"
        )?;
        writer.flush()?;
        for expected in ["OK REGISTERED", "OK SUBSCRIBED"] {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if !line.starts_with(expected) {
                bail!("subscriber {i}: expected {expected}, got {line:?}");
            }
        }
        let publisher = connect(target)?;
        sockets.push(publisher.try_clone()?);
        let publisher_reader = BufReader::new(publisher.try_clone()?);
        let writer_thread = {
            let (shared, pair, mailbox) = (Arc::clone(&shared), Arc::clone(&pair), mailbox.clone());
            let (window, size) = (args.window, args.size);
            std::thread::spawn(move || {
                publish(&shared, &pair, publisher, &mailbox, window, size);
                Vec::new()
            })
        };
        let (s, p) = (Arc::clone(&shared), Arc::clone(&pair));
        let waker = writer_thread.thread().clone();
        threads.push(std::thread::spawn(move || {
            subscribe(&s, &p, reader, writer, &waker)
        }));
        let s = Arc::clone(&shared);
        threads.push(std::thread::spawn(move || {
            read_replies(&s, publisher_reader);
            Vec::new()
        }));
        threads.push(writer_thread);
    }
    std::thread::sleep(args.warmup);
    let count = |pairs: &[Arc<Pair>]| -> u64 {
        pairs
            .iter()
            .map(|p| p.received.load(Ordering::Relaxed))
            .sum()
    };
    let before = count(&pairs);
    let measure_start = Instant::now();
    shared.measuring.store(true, Ordering::SeqCst);
    std::thread::sleep(args.duration);
    shared.measuring.store(false, Ordering::SeqCst);
    let after = count(&pairs);
    let elapsed = measure_start.elapsed();
    shared.stop.store(true, Ordering::SeqCst);
    // Unblocks the reader threads.
    for socket in &sockets {
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
    let mut latencies: Vec<u32> = Vec::new();
    for thread in threads {
        thread.thread().unpark();
        if let Ok(samples) = thread.join() {
            latencies.extend(samples);
        }
    }
    print_report(&args, &shared, after - before, elapsed, latencies);
    if let Some(server) = server {
        let stats = server.stop()?;
        println!(
            "in-process server: {} PUTs accepted, {} MSGs pushed, {} ACKed, {} refused lines",
            stats.puts, stats.pushed, stats.deleted, stats.bad_lines
        );
    }
    Ok(())
}

fn print_report(
    args: &Args,
    shared: &Shared,
    messages: u64,
    elapsed: Duration,
    mut latencies: Vec<u32>,
) {
    latencies.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let rate = messages as f64 / elapsed.as_secs_f64();
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    let errors = shared.errors.load(Ordering::Relaxed);
    let persistent = args.target.is_none() && args.data_dir.is_some();
    if args.json {
        println!(
            "{{\"pairs\":{},\"window\":{},\"size\":{},\"persistent\":{persistent},\"messages\":{messages},\"seconds\":{:.3},\"per_second\":{rate:.0},\"p50_us\":{p50},\"p99_us\":{p99},\"errors\":{errors}}}",
            args.pairs,
            args.window,
            args.size,
            elapsed.as_secs_f64()
        );
    } else {
        println!(
            "{rate:.0} messages/s end to end (PUT -> pushed MSG -> ACK) over {:.1} s: {} pairs, \
             window {}, {} bytes, {}; latency p50 {p50} us, p99 {p99} us; {errors} errors",
            elapsed.as_secs_f64(),
            args.pairs,
            args.window,
            args.size,
            if persistent { "redb" } else { "memory" },
        );
    }
    if let Ok(first) = shared.first_error.lock()
        && let Some(line) = first.as_ref()
    {
        eprintln!("first error: {line}");
    }
}

/// The target, or a server started in this process with the rate limits lifted.
fn server_for(args: &Args) -> anyhow::Result<(SocketAddr, Option<RunningServer>)> {
    if let Some(target) = args.target {
        if !target.ip().is_loopback() {
            bail!("refusing to load {target}: only loopback targets are allowed");
        }
        return Ok((target, None));
    }
    let config = Config {
        put_rate_per_ip: 1e12,
        put_burst_per_ip: u32::MAX,
        register_burst_per_ip: u32::MAX,
        max_message_bytes: args.size.max(Config::default().max_message_bytes),
        max_mailbox_bytes: 1 << 30,
        max_messages_per_mailbox: 4096,
        max_output_bytes: 1 << 31,
        data_dir: args.data_dir.clone(),
        ..Config::default()
    };
    let server = RunningServer::start("127.0.0.1:0".parse()?, config)?;
    Ok((server.addr(), Some(server)))
}

/// Writes PUTs while fewer than `window` are in flight; parks when the window is full.
fn publish(
    shared: &Shared,
    pair: &Pair,
    stream: TcpStream,
    mailbox: &str,
    window: u64,
    size: usize,
) {
    let mut out = BufWriter::new(stream);
    let padding = "x".repeat(size - 21);
    while !shared.stop.load(Ordering::Relaxed) {
        let in_flight = pair
            .sent
            .load(Ordering::Acquire)
            .saturating_sub(pair.received.load(Ordering::Acquire));
        if in_flight >= window {
            std::thread::park_timeout(Duration::from_millis(100));
            continue;
        }
        for _ in in_flight..window {
            let t = u64::try_from(shared.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            // Counted before it can possibly arrive.
            pair.sent.fetch_add(1, Ordering::Release);
            if write!(out, "PUT {mailbox} {t:020} {padding}\r\n").is_err() {
                return;
            }
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// Reads the publisher's replies (`OK PUT <id>`), counting errors.
fn read_replies(shared: &Shared, mut reader: BufReader<TcpStream>) {
    let mut line = String::new();
    while !shared.stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.starts_with("OK PUT ") => {}
            Ok(_) => shared.error(line.trim_end()),
        }
    }
}

/// Reads pushed messages, ACKs each, and samples latencies while measuring.
fn subscribe(
    shared: &Shared,
    pair: &Pair,
    mut reader: BufReader<TcpStream>,
    mut writer: BufWriter<TcpStream>,
    publisher: &std::thread::Thread,
) -> Vec<u32> {
    let mut samples = Vec::new();
    let mut line = String::new();
    while !shared.stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(rest) = line.strip_prefix("MSG ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(id), Some(_from), Some(body)) = (parts.next(), parts.next(), parts.next())
            else {
                shared.error(line.trim_end());
                continue;
            };
            if shared.measuring.load(Ordering::Relaxed)
                && let Some(sent) = body.get(..20).and_then(|t| t.parse::<u64>().ok())
            {
                let now = u64::try_from(shared.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                samples.push(u32::try_from(now.saturating_sub(sent) / 1000).unwrap_or(u32::MAX));
            }
            pair.received.fetch_add(1, Ordering::Release);
            publisher.unpark();
            if write!(writer, "ACK {id}\r\n").is_err() {
                break;
            }
        } else if !line.starts_with("OK ACK ") {
            shared.error(line.trim_end());
        }
        // Batch ACKs: flush only when no more input is already buffered.
        if reader.buffer().is_empty() && writer.flush().is_err() {
            break;
        }
    }
    samples
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
