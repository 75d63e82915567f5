//! `capacity-bench`: how many idle clients one server instance holds, and what each costs in
//! memory, for the rendezvous (simultaneous nodes: a registration plus its open connection;
//! passive nodes: a registration without one) and dht-msg (subscribers: a mailbox plus its open
//! connection), embedded and on a shared Redis. Prints a table; asserts nothing.
//!
//! `cargo build --release -p rendezvous -p dht-msg -p integration-tests --bins &&
//!  target/release/capacity-bench [--count 19000] [--per-ip 100] [--holders 2] [--only NAME]`
//!
//! Each case starts the real server binary (`target/release/rendezvous` or `dht-msg`, with
//! `--metrics-listen`) and, with Redis, a second instance on the same `redis-server` that holds
//! only what the backend replicates to it. Clients are held by `--holders` child processes
//! (this binary again, `hold ...`), so no process but the server needs `count` descriptors,
//! from 127.2.x.y source addresses with explicit ports (no ephemeral-port exhaustion, and the
//! per-IP limits apply as in the wild). Memory, descriptors and what the server holds come
//! from the server's own `/metrics` (`process_resident_memory_bytes`, `process_open_fds`, the
//! registration and mailbox gauges), before the clients and once they are all held; a fresh
//! client's round trip while they are held shows the server still serves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::bench_cli::BenchCli;
use integration_tests::binary;
use integration_tests::pairs::percentile;
use integration_tests::prom::{self, Samples, value};
use integration_tests::redis::RedisServer;
use server_kit::testkit::{LineClient, ServerProcess};
use socket2::{Domain, Socket, Type};

/// What each held client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// rendezvous: `SIMULTANEOUS READY <its port> 0`, then stays connected.
    Simultaneous,
    /// rendezvous: `PASSIVE READY <port> 0` and `QUIT` (the registration outlives the
    /// connection).
    Passive,
    /// dht-msg: `REGISTER` a mailbox of its own, `SUBSCRIBE`, then stays connected.
    Subscriber,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Simultaneous => "simultaneous",
            Kind::Passive => "passive",
            Kind::Subscriber => "subscriber",
        }
    }

    fn parse(text: &str) -> Kind {
        match text {
            "simultaneous" => Kind::Simultaneous,
            "passive" => Kind::Passive,
            "subscriber" => Kind::Subscriber,
            other => panic!("unknown client kind {other:?}"),
        }
    }

    fn server(self) -> &'static str {
        if self == Kind::Subscriber {
            "dht-msg"
        } else {
            "rendezvous"
        }
    }

    /// What a replica instance (same backend, no clients) says it knows of these clients.
    fn replica_gauge(self, s: &Samples) -> f64 {
        if self == Kind::Simultaneous {
            value(s, "rendezvous_backend_remote_simultaneous", &[]).unwrap_or(f64::NAN)
        } else {
            self.held_gauge(s)
        }
    }

    /// The gauge of what the server holds for these clients.
    fn held_gauge(self, s: &Samples) -> f64 {
        let g = match self {
            Kind::Simultaneous => value(
                s,
                "rendezvous_registrations",
                &[("node_type", "simultaneous")],
            ),
            Kind::Passive => value(s, "rendezvous_registrations", &[("node_type", "passive")]),
            Kind::Subscriber => value(s, "dht_msg_mailboxes", &[]),
        };
        g.unwrap_or(f64::NAN)
    }
}

/// The source address and port of client `i` (`per_ip` clients per address).
fn client_addr(i: usize, per_ip: usize) -> SocketAddr {
    let n = i / per_ip;
    let ip = Ipv4Addr::new(
        127,
        2,
        u8::try_from(n / 250).expect("under 62,500 addresses"),
        u8::try_from(n % 250 + 1).unwrap(),
    );
    let port = 20_000 + u16::try_from(i % per_ip).expect("per-ip under 45,000");
    SocketAddr::new(IpAddr::V4(ip), port)
}

fn connect(local: SocketAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // The same source address and port are used again by the next case (another server port).
    socket.set_reuse_address(true)?;
    socket.bind(&local.into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// Opens client `i`: `Ok(Some(stream))` to hold, `Ok(None)` when done (passive), `Err` with
/// what the server answered otherwise.
fn open_client(
    kind: Kind,
    i: usize,
    local: SocketAddr,
    target: SocketAddr,
) -> Result<Option<TcpStream>, String> {
    let mut s = connect(local, target).map_err(|e| format!("connect from {local}: {e}"))?;
    // Every kind but a passive node waits for a reply line per client: the clients go at the
    // server's pace (a burst of connects overflows the listen backlog, and a dropped SYN costs
    // a second) and a refusal shows. `SOURCE TCP` answers after the registration was handled.
    let (opening, replies) = match kind {
        Kind::Simultaneous => (
            format!("SIMULTANEOUS READY {} 0\r\nSOURCE TCP\r\n", local.port()),
            &["REMOTE TCP"][..],
        ),
        Kind::Passive => (
            format!("PASSIVE READY {} 0\r\nQUIT\r\n", local.port()),
            &[][..],
        ),
        Kind::Subscriber => (
            format!("REGISTER cap{i} capacity-secret-{i:08}\r\nSUBSCRIBE\r\n"),
            &["OK REGISTERED", "OK SUBSCRIBED"][..],
        ),
    };
    s.write_all(opening.as_bytes())
        .map_err(|e| format!("write from {local}: {e}"))?;
    if kind == Kind::Passive {
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        return if answer.is_empty() {
            Ok(None)
        } else {
            Err(answer)
        };
    }
    for expected in replies {
        // Byte-wise, so that nothing stays buffered outside the socket.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            match s.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => break,
            }
        }
        if !line.starts_with(expected.as_bytes()) {
            return Err(String::from_utf8_lossy(&line).into_owned());
        }
    }
    Ok(Some(s))
}

/// The child process: opens clients `first..first + count`, checks that the server kept every
/// held one open and silent, prints `held=H refused=R first=...`, and keeps them until its
/// stdin closes.
fn hold(args: &[String]) {
    let kind = Kind::parse(&args[0]);
    let target: SocketAddr = args[1].parse().expect("target");
    let (first, count, per_ip): (usize, usize, usize) = (
        args[2].parse().unwrap(),
        args[3].parse().unwrap(),
        args[4].parse().unwrap(),
    );
    let mut held = Vec::with_capacity(count);
    let (mut done, mut refused, mut first_error) = (0usize, 0usize, String::new());
    for i in first..first + count {
        match open_client(kind, i, client_addr(i, per_ip), target) {
            Ok(Some(s)) => held.push(s),
            Ok(None) => done += 1,
            Err(e) => {
                refused += 1;
                if first_error.is_empty() {
                    first_error = e.trim_end().replace(' ', "_");
                }
            }
        }
    }
    // A refusal comes as an ERROR line or a close: either makes the socket readable.
    std::thread::sleep(Duration::from_secs(1));
    held.retain(|s| {
        s.set_nonblocking(true).unwrap();
        let quiet = matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == ErrorKind::WouldBlock);
        refused += usize::from(!quiet);
        quiet
    });
    println!(
        "held={} refused={refused} first={first_error}",
        held.len() + done
    );
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// A server instance of a case, with where it and its metrics listen.
struct Instance {
    /// Killed when dropped.
    _process: ServerProcess,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Instance {
    fn start(kind: Kind, count: usize, per_ip: usize, backend: Option<&str>) -> Instance {
        let name = kind.server();
        let mut command = Command::new(binary(name));
        let max = (count + 500).to_string();
        let per_ip_conns = (per_ip + 16).to_string();
        command.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
        command.args([
            "--max-connections",
            &max,
            "--max-connections-per-ip",
            &per_ip_conns,
        ]);
        if name == "rendezvous" {
            command.args(["--max-registrations-per-ip", &per_ip.to_string()]);
        } else {
            let many = (count * 2).to_string();
            command.args([
                "--register-rate-per-ip",
                "1000000",
                "--register-burst-per-ip",
                &many,
            ]);
            command.args(["--max-mailboxes", &many]);
        }
        if let Some(url) = backend {
            command.args(["--backend", url]);
        }
        let process = ServerProcess::spawn_command(command).expect("the server starts");
        let needle = format!("{name} listening");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = process.log();
            let addr = log.lines().find(|l| l.contains(&needle)).and_then(|l| {
                l.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            });
            if let (Some(addr), Some(metrics)) = (addr, prom::endpoint_in_log(&log)) {
                return Instance {
                    _process: process,
                    addr,
                    metrics,
                };
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not log its addresses: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn scrape(&self) -> Samples {
        prom::scrape(self.metrics).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn rss(s: &Samples) -> f64 {
    value(s, "process_resident_memory_bytes", &[]).unwrap_or(f64::NAN)
}

/// p50 and p99 (us) of 200 sequential requests of a fresh client from 127.0.0.1.
fn probe(kind: Kind, addr: SocketAddr) -> (u64, u64) {
    let mut c = LineClient::from("127.0.0.1", addr);
    let (ask, expect) = if kind == Kind::Subscriber {
        ("PING", "PONG")
    } else {
        ("BOOTSTRAP 20", "NODES")
    };
    let mut lat: Vec<u64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let reply = c.ask(ask);
            assert!(reply.starts_with(expect), "probe: {reply}");
            u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
        })
        .collect();
    lat.sort_unstable();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

struct Options {
    count: usize,
    per_ip: usize,
    holders: usize,
    only: Option<String>,
}

/// One case: `kind` clients on instance A, embedded or (with `redis`) with a replica B.
fn run_case(o: &Options, kind: Kind, redis: bool) {
    let server = redis.then(|| RedisServer::start("capacity").expect("redis-server"));
    let url = server.as_ref().map(RedisServer::url);
    let a = Instance::start(kind, o.count, o.per_ip, url.as_deref());
    let b = url
        .as_deref()
        .map(|u| Instance::start(kind, o.count, o.per_ip, Some(u)));
    std::thread::sleep(Duration::from_millis(500));
    let (a0, b0) = (a.scrape(), b.as_ref().map(Instance::scrape));
    let started = Instant::now();
    let share = o.count.div_ceil(o.holders);
    let mut holders: Vec<Child> = (0..o.holders)
        .map(|h| {
            let first = h * share;
            let n = share.min(o.count.saturating_sub(first));
            Command::new(std::env::current_exe().unwrap())
                .args(["hold", kind.name(), &a.addr.to_string()])
                .args([first, n, o.per_ip].map(|v| v.to_string()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("a holder process")
        })
        .collect();
    let (mut held, mut refused, mut first_error) = (0usize, 0usize, String::new());
    for h in &mut holders {
        let mut line = String::new();
        BufReader::new(h.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        for field in line.split_whitespace() {
            match field.split_once('=') {
                Some(("held", v)) => held += v.parse::<usize>().unwrap(),
                Some(("refused", v)) => refused += v.parse::<usize>().unwrap(),
                Some(("first", v)) if first_error.is_empty() => first_error = v.replace('_', " "),
                _ => {}
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    // What A published reaches B through Redis; let it settle.
    std::thread::sleep(Duration::from_secs(2));
    let a1 = a.scrape();
    let b1 = b.as_ref().map(Instance::scrape);
    let (p50, p99) = probe(kind, a.addr);
    let mode = if redis {
        "Redis (A + replica B)"
    } else {
        "embedded"
    };
    let per = |before: &Samples, after: &Samples| (rss(after) - rss(before)) / held.max(1) as f64;
    let replica = b0.as_ref().zip(b1.as_ref());
    println!(
        "{:<10} {:<12} {:<21} {held:>6} {refused:>6} {:>6.0} {:>6.0} {:>7.1} {:>7.1} {:>7.0} {:>9} {:>6.1}",
        kind.server(),
        kind.name(),
        mode,
        kind.held_gauge(&a1),
        value(&a1, "process_open_fds", &[]).unwrap_or(f64::NAN),
        rss(&a0) / 1_048_576.0,
        rss(&a1) / 1_048_576.0,
        per(&a0, &a1),
        replica.map_or_else(|| "-".to_owned(), |(b0, b1)| format!("{:.0}", per(b0, b1))),
        open_secs,
    );
    println!(
        "{:<10} fresh client while held: p50 {p50} us, p99 {p99} us{}{}",
        "",
        replica
            .map(|(_, b1)| format!("; replica B knows {:.0}", kind.replica_gauge(b1)))
            .unwrap_or_default(),
        if first_error.is_empty() {
            String::new()
        } else {
            format!("; first refusal: {first_error}")
        }
    );
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    drop(b);
    drop(a);
}

const CLI: BenchCli = BenchCli {
    name: "capacity-bench",
    usage: "\
usage: capacity-bench [--count N] [--per-ip N] [--holders N] [--only CASE]
       (defaults: --count 19000 --per-ip 100 --holders 2)

Idle clients one rendezvous or dht-msg instance holds, and the server's memory per client,
embedded and on Redis; clients come from 127.2.x.y (N per address), held by child processes.
Keep --count under `ulimit -n`. Build first: cargo build --release --workspace",
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hold") {
        hold(&args[1..]);
        return;
    }
    let args = CLI.args();
    let mut o = Options {
        count: 19_000,
        per_ip: 100,
        holders: 2,
        only: None,
    };
    for pair in args.chunks(2) {
        let option = pair[0].as_str();
        let Some(v) = pair.get(1) else {
            CLI.fail(&format!("{option} needs a value"));
        };
        let number = || CLI.number(Some(v), option, 0);
        match option {
            "--count" => o.count = number(),
            "--per-ip" => o.per_ip = number().max(1),
            "--holders" => o.holders = number().max(1),
            "--only" => o.only = Some(v.clone()),
            other => CLI.fail(&format!("unknown option {other}")),
        }
    }
    println!(
        "capacity-bench: {} clients per case from {} source addresses ({} per address), {} holder processes; load average {}",
        o.count,
        o.count.div_ceil(o.per_ip),
        o.per_ip,
        o.holders,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim_end()
    );
    println!(
        "{:<10} {:<12} {:<21} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>7} {:>9} {:>6}",
        "server",
        "clients",
        "mode",
        "held",
        "refus.",
        "gauge",
        "fds",
        "RSS MiB",
        "after",
        "B/clnt",
        "B/replica",
        "open s"
    );
    for kind in [Kind::Simultaneous, Kind::Passive, Kind::Subscriber] {
        if o.only
            .as_deref()
            .is_some_and(|n| n != kind.server() && n != kind.name())
        {
            continue;
        }
        for redis in [false, true] {
            run_case(&o, kind, redis);
        }
    }
    println!(
        "\ngauge: what the server's metrics say it holds (registrations or mailboxes); fds: its open \
         descriptors; RSS: before the clients, and once all are held; B/clnt: RSS growth of the instance the clients use, per client (a passive \
         node holds no connection); B/replica: RSS growth of the second instance, which only \
         receives the replicated state, per client."
    );
}
