//! The relay mode over real loopback TCP: in-process servers on 127.0.0.1:0, clients bound to
//! 127.0.0.x so that each plays its own public IP, and the real binary with the relay flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rendezvous::core::Stats;
use rendezvous::{Config, LiveStats, Server, ShutdownHandle};
use server_kit::testkit::{ServerProcess, connect_from as connect};
use wire::rendezvous::RelayToken;

const DEADLINE: Duration = Duration::from_secs(10);

/// An in-process server whose counters can be read while it runs; stopped on drop.
struct TestServer {
    addr: SocketAddr,
    live: LiveStats,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<std::io::Result<Stats>>>,
}

impl TestServer {
    fn start(config: Config) -> TestServer {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let (addr, live, stop) = (
            server.local_addr(),
            server.live_stats(),
            server.shutdown_handle(),
        );
        let thread = Some(std::thread::spawn(move || server.run()));
        TestServer {
            addr,
            live,
            stop,
            thread,
        }
    }

    fn stats(&self) -> Stats {
        self.live.get()
    }

    /// Waits until the counters satisfy `ok` (they are published once per loop turn).
    fn wait_for(&self, what: &str, ok: impl Fn(&Stats) -> bool) -> Stats {
        let started = Instant::now();
        loop {
            let stats = self.stats();
            if ok(&stats) {
                return stats;
            }
            assert!(started.elapsed() < DEADLINE, "never {what}: {stats:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The defaults, without the rate limit (so bulk tests are fast) unless a test sets one.
fn config() -> Config {
    Config {
        relay_rate: None,
        ..Config::default()
    }
}

fn token(n: u8) -> String {
    RelayToken::from_bytes([n; 32]).to_string()
}

/// Reads exactly `n` bytes.
fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

/// Reads one line (through `\n`), byte by byte so nothing after it is consumed.
fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        let n = stream.read(&mut byte).unwrap();
        assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&line));
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Reads to EOF (within the deadline).
fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    rest
}

/// Two clients (from 127.0.0.2 and 127.0.0.3 unless given) paired with `token`.
fn pair(server: SocketAddr, token: &str, ips: (&str, &str)) -> (TcpStream, TcpStream) {
    let mut a = connect(ips.0, server);
    a.write_all(format!("RELAY {token}\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut a), "RELAY WAITING\r\n");
    let mut b = connect(ips.1, server);
    b.write_all(format!("RELAY {token}\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut b), "RELAY OK\r\n");
    assert_eq!(read_line(&mut a), "RELAY OK\r\n");
    (a, b)
}

/// Fills `buf` with the bytes at `offset..` of a deterministic stream named by `seed`
/// (splitmix64 of each 8-byte word's index), so a receiver can check every byte wherever its
/// reads split the stream.
fn pattern(seed: u64, offset: usize, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let pos = offset + i;
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(pos as u64 / 8 + 1));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let word = (z ^ (z >> 31)).to_le_bytes();
        let start = pos % 8;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[start..start + n]);
        i += n;
    }
}

/// Writes `total` pattern bytes (seed `seed`) on a thread.
fn send_pattern(mut stream: TcpStream, seed: u64, total: usize) -> JoinHandle<TcpStream> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = buf.len().min(total - sent);
            pattern(seed, sent, &mut buf[..n]);
            stream.write_all(&buf[..n]).unwrap();
            sent += n;
        }
        stream
    })
}

/// Reads `total` bytes and checks each against the pattern with seed `seed`.
fn expect_pattern(stream: &mut TcpStream, seed: u64, total: usize) {
    let mut got = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < total {
        let n = stream
            .read(&mut got[..(total - done).min(64 * 1024)])
            .unwrap();
        assert!(n > 0, "EOF after {done} of {total} bytes");
        pattern(seed, done, &mut want[..n]);
        assert!(
            got[..n] == want[..n],
            "bytes differ in {done}..{}",
            done + n
        );
        done += n;
    }
}

#[test]
fn two_clients_pair_and_exchange_lines_both_ways() {
    let server = TestServer::start(config());
    let (mut a, mut b) = pair(server.addr, &token(1), ("127.0.0.2", "127.0.0.3"));
    for i in 0..20 {
        a.write_all(format!("ping {i}\r\n").as_bytes()).unwrap();
        assert_eq!(read_line(&mut b), format!("ping {i}\r\n"));
        b.write_all(format!("pong {i}\n").as_bytes()).unwrap();
        assert_eq!(read_line(&mut a), format!("pong {i}\n"));
    }
    let stats = server.wait_for("one active session", |s| s.relay_active == 1);
    assert_eq!(stats.relay_paired, 1);
}

#[test]
fn twenty_megabytes_each_way_arrive_intact() {
    const TOTAL: usize = 20 * 1024 * 1024;
    let server = TestServer::start(config());
    let (a, b) = pair(server.addr, &token(2), ("127.0.0.2", "127.0.0.3"));
    let started = Instant::now();
    let a_writer = send_pattern(a.try_clone().unwrap(), 1, TOTAL);
    let b_writer = send_pattern(b.try_clone().unwrap(), 2, TOTAL);
    let mut b_reader = b.try_clone().unwrap();
    let at_b = std::thread::spawn(move || expect_pattern(&mut b_reader, 1, TOTAL));
    let mut a_reader = a;
    expect_pattern(&mut a_reader, 2, TOTAL);
    at_b.join().unwrap();
    a_writer.join().unwrap();
    b_writer.join().unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "40 MiB through the relay in {secs:.2} s ({:.0} MiB/s each way, debug build)",
        20.0 / secs
    );
    let stats = server.wait_for("all bytes counted", |s| s.relay_bytes >= 2 * TOTAL as u64);
    assert_eq!(stats.relay_bytes, 2 * TOTAL as u64);
    assert!(
        stats.relay_queued_peak <= 2 * config().relay_buffer_bytes + 64,
        "{stats:?}"
    );
}

#[test]
fn bytes_sent_before_relay_ok_are_delivered() {
    let server = TestServer::start(config());
    let mut a = connect("127.0.0.2", server.addr);
    // Everything in one write, without waiting for any reply.
    a.write_all(format!("RELAY {}\r\nearly from a\n\x00\x01", token(3)).as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut a), "RELAY WAITING\r\n");
    a.write_all(b" and later").unwrap();
    server.wait_for("early bytes held", |s| s.relay_queued_bytes == 25);
    let mut b = connect("127.0.0.3", server.addr);
    b.write_all(format!("RELAY {}\r\nearly from b", token(3)).as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut b), "RELAY OK\r\n");
    assert_eq!(read_n(&mut b, 25), b"early from a\n\x00\x01 and later");
    assert_eq!(read_line(&mut a), "RELAY OK\r\n");
    assert_eq!(read_n(&mut a, 12), b"early from b");
}

#[test]
fn a_client_that_never_reads_stalls_its_partner_and_server_memory_stays_bounded() {
    let buffer = 256 * 1024;
    let server = TestServer::start(Config {
        relay_buffer_bytes: buffer,
        ..config()
    });
    let (a, mut b) = pair(server.addr, &token(4), ("127.0.0.2", "127.0.0.3"));
    // a writes without blocking until it makes no progress for a while: the sender stalls.
    a.set_nonblocking(true).unwrap();
    let mut writer = a.try_clone().unwrap();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0usize;
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < Duration::from_millis(300) {
        pattern(9, sent, &mut chunk);
        match writer.write(&chunk) {
            Ok(n) => {
                sent += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("write failed after {sent} bytes: {e}"),
        }
        assert!(
            sent < 512 * 1024 * 1024,
            "the sender never stalled: is the server dropping bytes?"
        );
    }
    let stats = server.stats();
    eprintln!(
        "sender stalled after {sent} bytes; the server holds {} (peak {})",
        stats.relay_queued_bytes, stats.relay_queued_peak
    );
    assert!(stats.relay_queued_bytes <= buffer, "{stats:?}");
    assert!(stats.relay_queued_peak <= buffer + 64, "{stats:?}");
    assert_eq!(stats.relay_active, 1, "stalled, not closed");
    // The stalled session does not stop anyone else.
    let (mut c, mut d) = pair(server.addr, &token(5), ("127.0.0.4", "127.0.0.5"));
    c.write_all(b"unaffected\n").unwrap();
    assert_eq!(read_line(&mut d), "unaffected\n");
    // Now b reads: every byte arrives, in order, and a finishes writing the last chunk.
    let reader = std::thread::spawn(move || {
        expect_pattern(&mut b, 9, sent);
        b
    });
    reader.join().unwrap();
}

#[test]
fn a_third_connection_with_the_same_token_is_refused_while_the_pair_keeps_working() {
    let server = TestServer::start(config());
    let (mut a, mut b) = pair(server.addr, &token(6), ("127.0.0.2", "127.0.0.3"));
    let mut c = connect("127.0.0.4", server.addr);
    c.write_all(format!("RELAY {}\r\n", token(6)).as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut c), "ERROR relay: token already in use\r\n");
    assert_eq!(read_to_end(&mut c), b"");
    a.write_all(b"still paired\n").unwrap();
    assert_eq!(read_line(&mut b), "still paired\n");
    b.write_all(b"yes\n").unwrap();
    assert_eq!(read_line(&mut a), "yes\n");
}

#[test]
fn a_wrong_token_never_joins() {
    let server = TestServer::start(config());
    let mut a = connect("127.0.0.2", server.addr);
    a.write_all(format!("RELAY {}\r\n", token(7)).as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut a), "RELAY WAITING\r\n");
    let mut wrong = connect("127.0.0.3", server.addr);
    wrong
        .write_all(format!("RELAY {}\r\nhello?", token(8)).as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut wrong), "RELAY WAITING\r\n");
    a.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1];
    let err = a.read(&mut buf).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    let stats = server.wait_for("two waiting", |s| s.relay_waiting == 2);
    assert_eq!(stats.relay_active, 0);
    // The right token still pairs with a.
    a.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = connect("127.0.0.4", server.addr);
    b.write_all(format!("RELAY {}\r\n", token(7)).as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut b), "RELAY OK\r\n");
    assert_eq!(read_line(&mut a), "RELAY OK\r\n");
}

#[test]
fn the_per_ip_cap_refuses_with_a_reason_while_another_ip_is_served() {
    let server = TestServer::start(Config {
        max_relays_per_ip: 2,
        ..config()
    });
    let mut held = Vec::new();
    for n in 10..12 {
        let mut c = connect("127.0.0.6", server.addr);
        c.write_all(format!("RELAY {}\r\n", token(n)).as_bytes())
            .unwrap();
        assert_eq!(read_line(&mut c), "RELAY WAITING\r\n");
        held.push(c);
    }
    let mut refused = connect("127.0.0.6", server.addr);
    refused
        .write_all(format!("RELAY {}\r\n", token(12)).as_bytes())
        .unwrap();
    assert_eq!(
        read_line(&mut refused),
        "ERROR relay: too many relays from 127.0.0.6 (limit 2)\r\n"
    );
    assert_eq!(read_to_end(&mut refused), b"");
    let mut other = connect("127.0.0.7", server.addr);
    other
        .write_all(format!("RELAY {}\r\n", token(10)).as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut other), "RELAY OK\r\n");
    assert_eq!(read_line(&mut held[0]), "RELAY OK\r\n");
}

#[test]
fn a_lonely_client_is_told_nobody_joined_after_a_short_wait() {
    let server = TestServer::start(Config {
        relay_wait_timeout: Duration::from_millis(300),
        ..config()
    });
    let mut a = connect("127.0.0.2", server.addr);
    let started = Instant::now();
    a.write_all(format!("RELAY {}\r\n", token(13)).as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut a), "RELAY WAITING\r\n");
    assert_eq!(
        read_line(&mut a),
        "ERROR relay: nobody joined within 300ms\r\n"
    );
    assert_eq!(read_to_end(&mut a), b"");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    server.wait_for("the wait counted as refused", |s| {
        s.relay_refused == 1 && s.relay_waiting == 0
    });
}

#[test]
fn eof_from_one_side_reaches_the_other_after_its_data_and_the_session_ends() {
    let server = TestServer::start(config());
    let (mut a, mut b) = pair(server.addr, &token(14), ("127.0.0.2", "127.0.0.3"));
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    a.write_all(&data).unwrap();
    a.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut b), data, "all the data, then EOF");
    // Half-close: b may still answer, and its EOF reaches a too.
    b.write_all(b"got it").unwrap();
    b.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut a), b"got it");
    let stats = server.wait_for("the session to end", |s| s.relay_active == 0 && s.open == 0);
    assert_eq!(stats.relay_bytes, 1_000_006);

    // A full close (the socket dropped) after sending also delivers, then closes the partner.
    let (mut c, mut d) = pair(server.addr, &token(15), ("127.0.0.2", "127.0.0.3"));
    c.write_all(b"goodbye").unwrap();
    drop(c);
    assert_eq!(read_to_end(&mut d), b"goodbye");
    drop(d);
    server.wait_for("the second session to end", |s| {
        s.relay_active == 0 && s.open == 0
    });
}

#[test]
fn every_byte_value_passes_unchanged() {
    let server = TestServer::start(config());
    let (mut a, mut b) = pair(server.addr, &token(16), ("127.0.0.2", "127.0.0.3"));
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    a.write_all(&all).unwrap();
    assert_eq!(read_n(&mut b, all.len()), all);
    // Including what looks like protocol: it is not parsed any more.
    let protocolish = b"\xc3\x28QUIT\r\nRELAY 00\r\n\xff";
    b.write_all(protocolish).unwrap();
    assert_eq!(read_n(&mut a, protocolish.len()), protocolish);
}

#[test]
fn the_rate_limit_slows_a_transfer_without_losing_bytes() {
    const TOTAL: usize = 2 * 1024 * 1024;
    let rate = 2 * 1024 * 1024;
    let server = TestServer::start(Config {
        relay_rate: Some(rate),
        ..config()
    });
    let (a, mut b) = pair(server.addr, &token(17), ("127.0.0.2", "127.0.0.3"));
    let started = Instant::now();
    let writer = send_pattern(a, 5, TOTAL);
    expect_pattern(&mut b, 5, TOTAL);
    let took = started.elapsed();
    writer.join().unwrap();
    // The bucket starts with a quarter second's worth: the rest takes at least 0.75 s.
    eprintln!("2 MiB at 2 MiB/s took {took:?}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[test]
fn no_relay_refuses_and_the_server_still_serves_lines() {
    let server = TestServer::start(Config {
        relay_enabled: false,
        ..config()
    });
    let mut a = connect("127.0.0.2", server.addr);
    a.write_all(format!("RELAY {}\r\n", token(18)).as_bytes())
        .unwrap();
    assert_eq!(
        read_line(&mut a),
        "ERROR relay: relay disabled on this server\r\n"
    );
    assert_eq!(read_to_end(&mut a), b"");
    let mut c = connect("127.0.0.2", server.addr);
    c.write_all(b"SOURCE TCP\r\n").unwrap();
    assert!(read_line(&mut c).starts_with("REMOTE TCP "));
}

#[test]
fn relay_must_be_the_first_line_and_bad_tokens_get_an_error() {
    let server = TestServer::start(config());
    let mut c = connect("127.0.0.2", server.addr);
    c.write_all(b"RELAY 0123\r\n").unwrap();
    assert_eq!(
        read_line(&mut c),
        "ERROR RELAY: <token> must be 64 lowercase hex characters, got 4\r\n"
    );
    c.write_all(format!("RELAY {}\r\n", token(19)).as_bytes())
        .unwrap();
    assert_eq!(
        read_line(&mut c),
        "ERROR relay: RELAY must be the first line on a connection (this was line 2)\r\n"
    );
    assert_eq!(read_to_end(&mut c), b"");
}

/// The real binary: the relay flags are in `--help`, work, and a session is logged.
#[test]
fn binary_relays_with_its_flags_and_logs_each_session() {
    let bin = env!("CARGO_BIN_EXE_rendezvous");
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--no-relay",
        "--max-relays ",
        "--max-relays-per-ip",
        "--relay-wait-timeout",
        "--relay-idle-timeout",
        "--relay-rate",
        "--relay-buffer-bytes",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }

    let server = ServerProcess::spawn(
        bin,
        &[
            "--relay-rate",
            "0",
            "--max-relays-per-ip",
            "1",
            "--relay-wait-timeout",
            "500ms",
        ],
    )
    .unwrap();
    let (mut a, mut b) = pair(server.addr(), &token(20), ("127.0.0.2", "127.0.0.3"));
    a.write_all(b"through the binary\n").unwrap();
    assert_eq!(read_line(&mut b), "through the binary\n");
    b.write_all(b"back\n").unwrap();
    assert_eq!(read_line(&mut a), "back\n");
    // --max-relays-per-ip 1: a second relay from 127.0.0.2 is refused.
    let mut refused = connect("127.0.0.2", server.addr());
    refused
        .write_all(format!("RELAY {}\r\n", token(21)).as_bytes())
        .unwrap();
    assert_eq!(
        read_line(&mut refused),
        "ERROR relay: too many relays from 127.0.0.2 (limit 1)\r\n"
    );
    // --relay-wait-timeout 500ms.
    let mut lonely = connect("127.0.0.4", server.addr());
    lonely
        .write_all(format!("RELAY {}\r\n", token(22)).as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut lonely), "RELAY WAITING\r\n");
    assert_eq!(
        read_line(&mut lonely),
        "ERROR relay: nobody joined within 500ms\r\n"
    );
    a.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut b), b"");
    drop(b);
    assert_eq!(read_to_end(&mut a), b"");
    let started = Instant::now();
    while !server.log().contains("relay session ended") {
        assert!(started.elapsed() < DEADLINE, "{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, log) = server.terminate().unwrap();
    assert!(status.success(), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("relay session ended"))
        .unwrap();
    for part in [
        "a=127.0.0.2:",
        "b=127.0.0.3:",
        "a_to_b=19",
        "b_to_a=5",
        "closed",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }

    let server = ServerProcess::spawn(bin, &["--no-relay"]).unwrap();
    let mut c = connect("127.0.0.2", server.addr());
    c.write_all(format!("RELAY {}\r\n", token(23)).as_bytes())
        .unwrap();
    assert_eq!(
        read_line(&mut c),
        "ERROR relay: relay disabled on this server\r\n"
    );
}

/// Line clients are answered promptly while a relay moves bulk data. (On loopback the relayed
/// socket drains often, so this passes even without the driver's per-turn read cap; it guards
/// against the relay blocking the loop, not specifically for that cap.)
#[test]
fn a_busy_relay_does_not_starve_other_clients() {
    const TOTAL: usize = 256 * 1024 * 1024;
    let server = TestServer::start(config());
    let (a, mut b) = pair(server.addr, &token(24), ("127.0.0.2", "127.0.0.3"));
    let writer = send_pattern(a, 3, TOTAL);
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < TOTAL {
            let n = b.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n;
        }
    });
    // Wait until the transfer is under way, then ask for something else meanwhile.
    server.wait_for("the transfer to start", |s| s.relay_bytes > 8 * 1024 * 1024);
    let mut other = connect("127.0.0.4", server.addr);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let asked = Instant::now();
        other.write_all(b"SOURCE TCP\r\n").unwrap();
        assert!(read_line(&mut other).starts_with("REMOTE TCP "));
        slowest = slowest.max(asked.elapsed());
    }
    let moved = server.stats().relay_bytes;
    eprintln!("slowest SOURCE TCP during the transfer: {slowest:?} ({moved} bytes relayed so far)");
    assert!(
        moved < TOTAL as u64,
        "the transfer ended before the probes: the test proves nothing"
    );
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    writer.join().unwrap();
    reader.join().unwrap();
}
