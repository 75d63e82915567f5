//! `scale-bench`: requests/s of the rendezvous (`BOOTSTRAP 20`) and of dht-msg (`PUT` →
//! pushed `MSG` → `ACK`, sender and owner on different instances) for the embedded mode and
//! for 1, 2 and 3 instances on one `redis-server`, measured in the same run (ratios matter:
//! every instance, Redis and the load share this machine's cores), with the Redis commands and
//! round trips each request cost (read from Redis's own `INFO` counters over the measured
//! window). Prints a table; asserts nothing beyond the replies being the expected ones.
//!
//! `cargo run --release -p integration-tests --bin scale-bench -- [seconds per case] [rounds]
//! [modes]` (modes: instance counts, `0,1,2,3` by default; ratios are to the first). The
//! servers log to stderr: `RUST_LOG=warn` keeps what went wrong.
//!
//! With several rounds the modes are measured in turn, round after round (so a busy spell on
//! the machine hits every mode alike), and the table shows each cell's median.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use integration_tests::bench_cli::BenchCli;
use integration_tests::hostile::connect_from;
use integration_tests::redis::{CommandCounts, RedisServer};

/// Concurrent clients per case (each waits for its reply before its next request).
const CLIENTS: usize = 16;
/// Passive nodes registered before the BOOTSTRAP case.
const REGISTERED: usize = 50;
/// The modes, by number of instances on one Redis (0: embedded, no backend).
const MODES: &str = "0,1,2,3";

const CLI: BenchCli = BenchCli {
    name: "scale-bench",
    usage: "\
usage: scale-bench [SECONDS per case] [ROUNDS] [MODES]   (default 3 1 0,1,2,3)

Requests/s of the rendezvous (BOOTSTRAP 20) and of dht-msg (PUT -> pushed MSG -> ACK) for the
embedded mode (0) and for N instances on one redis-server (MODES: instance counts), measured
in the same run; ratios are to the first mode. Needs redis-server (scripts/install-deps.sh).
Build first: cargo build --release --workspace; RUST_LOG=warn keeps the servers' logs short",
};

fn rendezvous(backend: Option<&str>) -> rendezvous::RunningServer {
    let config = rendezvous::Config {
        backend: backend.map(str::to_owned),
        ..rendezvous::Config::default()
    };
    rendezvous::RunningServer::start("127.0.0.1:0".parse().unwrap(), config).unwrap()
}

fn dht_msg(backend: Option<&str>) -> dht_msg::RunningServer {
    let config = dht_msg::Config {
        backend: backend.map(str::to_owned),
        put_rate_per_ip: 1e9,
        put_burst_per_ip: u32::MAX,
        max_messages_per_mailbox: 100_000,
        max_mailbox_bytes: 64 << 20,
        max_output_bytes: 128 << 20,
        ..dht_msg::Config::default()
    };
    dht_msg::RunningServer::start("127.0.0.1:0".parse().unwrap(), config).unwrap()
}

fn line_client(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (s.try_clone().unwrap(), BufReader::new(s))
}

/// One case's result: requests (or messages) per second, and Redis's work per request.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    per_second: f64,
    /// Redis commands per request (0 in the embedded mode).
    commands: f64,
    /// `MULTI … EXEC` round trips per request.
    round_trips: f64,
    /// The slowest single round trip of any client until the window closed (ms).
    slowest_ms: f64,
}

/// A client's loop: `request`, wait for the answer, check it with `ok`, again, until `stop`.
/// Counts answers in `done` (when given) and keeps the slowest round trip (us) in `slowest`.
fn ask_loop(
    addr: SocketAddr,
    request: String,
    ok: fn(&str) -> bool,
    done: Option<Arc<AtomicU64>>,
    slowest: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let (mut w, mut r) = line_client(addr);
        let mut line = String::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            w.write_all(request.as_bytes())
                .map_err(|e| format!("{addr}: writing {request:?}: {e}"))?;
            line.clear();
            r.read_line(&mut line).map_err(|e| {
                format!(
                    "{addr}: no answer to {request:?} after {:?}: {e}",
                    t.elapsed()
                )
            })?;
            slowest.fetch_max(
                u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            if !ok(&line) {
                return Err(format!("{addr}: {request:?} answered {line:?}"));
            }
            if let Some(done) = &done {
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    })
}

/// Stops the clients and returns the first failure, if any.
fn join_clients(
    stop: &AtomicBool,
    clients: Vec<std::thread::JoinHandle<Result<(), String>>>,
) -> Option<String> {
    stop.store(true, Ordering::Relaxed);
    // Every client is joined, then the first failure reported.
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|t| {
            t.join()
                .unwrap_or_else(|_| Err("a client panicked".into()))
                .err()
        })
        .collect();
    failures.into_iter().next()
}

/// Runs the clients' loops for `secs` and turns `done` (counted by them) and Redis's counters
/// over the same window into a [`Measured`].
fn measure(
    redis: Option<&RedisServer>,
    done: &AtomicU64,
    secs: f64,
    slowest_us: &AtomicU64,
) -> Measured {
    let counts = || {
        redis
            .map(|r| r.command_counts().unwrap())
            .unwrap_or_default()
    };
    let (before, c0) = (done.load(Ordering::Relaxed), counts());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (n, c1) = (done.load(Ordering::Relaxed) - before, counts());
    let elapsed = start.elapsed().as_secs_f64();
    let per = |a: u64, b: u64| {
        if n == 0 {
            0.0
        } else {
            (b - a) as f64 / n as f64
        }
    };
    let CommandCounts { total, exec } = c1;
    Measured {
        per_second: n as f64 / elapsed,
        commands: per(c0.total, total),
        round_trips: per(c0.exec, exec),
        slowest_ms: slowest_us.load(Ordering::Relaxed) as f64 / 1000.0,
    }
}

/// Registers [`REGISTERED`] passive nodes on `addr`, one per source address 127.1.0.x: a
/// `BOOTSTRAP` never returns nodes at the asker's own IP, and the load asks from 127.0.0.1.
fn register_passive(addr: SocketAddr) {
    for i in 0..REGISTERED {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 1, 0, u8::try_from(i + 1).unwrap()));
        let mut s = connect_from(ip, addr).unwrap();
        s.write_all(b"PASSIVE READY 8000 10\r\nQUIT\r\n").unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    }
}

/// Waits until `BOOTSTRAP` on `addr` returns every registered node (the registrations reach the
/// other instances through Redis).
fn wait_for_nodes(addr: SocketAddr) {
    let (mut w, mut r) = line_client(addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut line = String::new();
    loop {
        w.write_all(format!("BOOTSTRAP {REGISTERED}\r\n").as_bytes())
            .unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.matches("p:").count() == REGISTERED {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} still answers {line:?} 10 s after the registrations"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// BOOTSTRAP 20 round trips per second, `CLIENTS` clients spread over `addrs`.
fn bootstrap_rate(redis: Option<&RedisServer>, addrs: &[SocketAddr], secs: f64) -> Measured {
    register_passive(addrs[0]);
    for addr in addrs {
        wait_for_nodes(*addr);
    }
    let done = Arc::new(AtomicU64::new(0));
    let ok: fn(&str) -> bool = |line| line.matches("p:").count() == 20;
    run_clients(redis, secs, &done, true, ok, |i| {
        (addrs[i % addrs.len()], "BOOTSTRAP 20\r\n".to_owned())
    })
}

/// Runs [`CLIENTS`] client loops ([`ask_loop`]; `client(i)`: where client `i` asks what), and
/// measures `done` (the answers, when `count_answers`) over `secs` once all are asking.
fn run_clients(
    redis: Option<&RedisServer>,
    secs: f64,
    done: &Arc<AtomicU64>,
    count_answers: bool,
    ok: fn(&str) -> bool,
    client: impl Fn(usize) -> (SocketAddr, String),
) -> Measured {
    let slowest = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, request) = client(i);
            let counter = count_answers.then(|| Arc::clone(done));
            ask_loop(
                addr,
                request,
                ok,
                counter,
                Arc::clone(&slowest),
                Arc::clone(&stop),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let measured = measure(redis, done, secs, &slowest);
    if let Some(failure) = join_clients(&stop, clients) {
        panic!("client failed: {failure}");
    }
    measured
}

/// Messages pushed per second: one owner per instance (subscribed there, acknowledging each
/// `MSG`), senders on the next instance (the same one when there is only one), `CLIENTS`
/// senders in all, each waiting for its `OK PUT` before the next.
fn push_rate(redis: Option<&RedisServer>, addrs: &[SocketAddr], secs: f64) -> Measured {
    let pushed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut owners = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let (mut w, mut r) = line_client(*addr);
        w.write_all(format!("REGISTER owner{i} secretsecretsecret\r\nSUBSCRIBE\r\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("OK SUBSCRIBED"), "owner{i} at {addr}: {line}");
        let (pushed, stop) = (Arc::clone(&pushed), Arc::clone(&stop));
        owners.push(std::thread::spawn(move || {
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(id) = line.strip_prefix("MSG ").and_then(|l| l.split(' ').next()) {
                    pushed.fetch_add(1, Ordering::Relaxed);
                    let _ = w.write_all(format!("ACK {id}\r\n").as_bytes());
                }
            }
        }));
    }
    // The mailboxes reach the other instances through Redis.
    std::thread::sleep(Duration::from_millis(300));
    let ok: fn(&str) -> bool = |line| line.starts_with("OK PUT");
    let measured = run_clients(redis, secs, &pushed, false, ok, |c| {
        let owner = c % addrs.len();
        let request = format!("PUT owner{owner} REVERSE_CONNECT:bench\r\n");
        (addrs[(owner + 1) % addrs.len()], request)
    });
    stop.store(true, Ordering::Relaxed);
    // Owners blocked in a read wake up with the last pushes, or when the servers stop.
    drop(owners);
    measured
}

/// One mode measured once: (BOOTSTRAP, PUT→push).
fn run_mode(instances: usize, secs: f64) -> (Measured, Measured) {
    let redis = (instances > 0)
        .then(|| RedisServer::start(&format!("bench{instances}")).expect("redis-server"));
    let url = redis.as_ref().map(RedisServer::url);
    let n = instances.max(1);
    let rvs: Vec<_> = (0..n).map(|_| rendezvous(url.as_deref())).collect();
    let addrs: Vec<_> = rvs.iter().map(rendezvous::RunningServer::addr).collect();
    let b = bootstrap_rate(redis.as_ref(), &addrs, secs);
    drop(rvs);
    let dms: Vec<_> = (0..n).map(|_| dht_msg(url.as_deref())).collect();
    let addrs: Vec<_> = dms.iter().map(dht_msg::RunningServer::addr).collect();
    let p = push_rate(redis.as_ref(), &addrs, secs);
    drop(dms);
    (b, p)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    // The servers' own logs (RUST_LOG=warn keeps only what went wrong).
    server_kit::init_logging();
    let args = CLI.args();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let secs: f64 = CLI.number(arg(0), "seconds per case", 3.0);
    let rounds: usize = CLI.number(arg(1), "rounds", 1).max(1);
    let modes: Vec<usize> = arg(2)
        .unwrap_or(MODES)
        .split(',')
        .map(|m| CLI.number(Some(m), "modes (instance counts such as 0,1,2,3)", 0))
        .collect();
    if let Some(extra) = arg(3) {
        CLI.fail(&format!("unexpected argument {extra:?}"));
    }
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "scale-bench: {CLIENTS} clients, {secs} s per case, {rounds} round(s), {cores} cores, \
         load average {} at start",
        loadavg()
    );
    let mut results: Vec<Vec<(Measured, Measured)>> = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        for (m, &instances) in modes.iter().enumerate() {
            let r = run_mode(instances, secs);
            {
                println!(
                    "  round {} mode {instances}: {:.0} BOOTSTRAP/s (slowest {:.1} ms), {:.0} msg/s \
                     (slowest PUT {:.1} ms)",
                    round + 1,
                    r.0.per_second,
                    r.0.slowest_ms,
                    r.1.per_second,
                    r.1.slowest_ms
                );
            }
            results[m].push(r);
        }
    }
    println!("load average {} at end", loadavg());
    println!();
    println!(
        "{:<22} {:>12} {:>6} {:>10} | {:>15} {:>6} {:>10} {:>12}",
        "mode",
        "BOOTSTRAP/s",
        "ratio",
        "redis cmd",
        "PUT->push msg/s",
        "ratio",
        "redis cmd",
        "round trips"
    );
    let cell = |rs: &[(Measured, Measured)], f: fn(&(Measured, Measured)) -> f64| {
        median(rs.iter().map(f).collect())
    };
    let base_b = cell(&results[0], |r| r.0.per_second);
    let base_p = cell(&results[0], |r| r.1.per_second);
    for (m, &instances) in modes.iter().enumerate() {
        let rs = &results[m];
        let b = cell(rs, |r| r.0.per_second);
        let p = cell(rs, |r| r.1.per_second);
        let mode = if instances == 0 {
            "embedded (no backend)".to_owned()
        } else {
            format!("{instances} on one Redis")
        };
        println!(
            "{mode:<22} {b:>12.0} {:>6.2} {:>10.4} | {p:>15.0} {:>6.2} {:>10.2} {:>12.2}",
            b / base_b,
            cell(rs, |r| r.0.commands),
            p / base_p,
            cell(rs, |r| r.1.commands),
            cell(rs, |r| r.1.round_trips),
        );
    }
    println!(
        "\nredis cmd: Redis commands per BOOTSTRAP / per message (PUT, push and ACK), from INFO over \
         the measured window (heartbeats included); round trips: MULTI/EXEC batches per message."
    );
}
