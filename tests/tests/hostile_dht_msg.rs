//! Misbehaving clients against a real dht-msg mailbox server on loopback: slowloris,
//! connection floods, oversized and non-UTF-8 lines, a client that reads nothing, churn, spam
//! past the per-IP rate limit and posts past a mailbox's quota (line protocol and HTTP). In
//! each, the attacker is cut off or refused with a reason, the victim (alice posting to bob,
//! who is subscribed) is served within normal latency (printed with `--nocapture`), and no
//! message accepted before the attack is lost.
//!
//! Attackers connect from 127.0.0.10 and up; bob from 127.0.0.2, alice from 127.0.0.3.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use dht_msg::{Config, RunningServer};
use integration_tests::hostile::{
    Attack, Greedy, Latency, LineClient, closed_within, connect_from, connect_from_with, http_get,
    lo, report, wait_for,
};

const SAMPLES: usize = 20;

fn config() -> Config {
    Config {
        // Long enough for the victims to stay connected while an attack warms up.
        idle_timeout: Duration::from_secs(3),
        max_connections: 128,
        max_connections_per_ip: 8,
        max_messages_per_mailbox: 64,
        put_rate_per_ip: 30.0,
        put_burst_per_ip: 60,
        max_bad_lines: 4,
        ..Config::default()
    }
}

fn register(ip: u8, server: SocketAddr, node: &str) -> LineClient {
    let mut c = LineClient::connect(lo(ip), server).unwrap();
    let reply = c.ask(&format!("REGISTER {node} secret-of-{node}")).unwrap();
    assert!(
        reply.starts_with(&format!("OK REGISTERED {node} ")),
        "{reply}"
    );
    c
}

/// The victims: bob subscribed (a thread that acknowledges every message pushed to him and
/// reports it), alice posting to him; and carol's three messages, posted before any attack
/// and never read until the end.
struct Victims {
    server: RunningServer,
    alice: LineClient,
    /// (sender, body) of every message pushed to bob.
    pushed: mpsc::Receiver<(String, String)>,
    bob_stop: Arc<AtomicBool>,
    bob: Option<std::thread::JoinHandle<()>>,
    sent: usize,
    /// Times alice found bob's mailbox full.
    retries: usize,
}

impl Victims {
    fn start(config: Config) -> Victims {
        let server = RunningServer::start("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let addr = server.addr();
        let mut carol = register(4, addr, "carol");
        carol.ask("QUIT").ok();
        let mut bob = register(2, addr, "bob");
        assert_eq!(bob.ask("SUBSCRIBE").unwrap(), "OK SUBSCRIBED 0");
        let (tx, pushed) = mpsc::channel();
        let bob_stop = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&bob_stop);
        let bob = std::thread::spawn(move || {
            bob.stream()
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let line = match bob.recv() {
                    Ok(line) => line,
                    // Quiet: a keep-alive (the idle timeout applies to subscribers too).
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        bob.send("PING").unwrap();
                        continue;
                    }
                    Err(e) => panic!("bob lost his connection: {e}"),
                };
                if line.starts_with("OK ACK ") || line == "PONG" {
                    continue;
                }
                let mut words = line.splitn(4, ' ');
                let (Some("MSG"), Some(id), Some(from), Some(text)) =
                    (words.next(), words.next(), words.next(), words.next())
                else {
                    panic!("bob got {line:?}");
                };
                bob.send(&format!("ACK {id}")).unwrap();
                let _ = tx.send((from.to_owned(), text.to_owned()));
            }
        });
        let mut alice = register(3, addr, "alice");
        for i in 1..=3 {
            let reply = alice.ask(&format!("PUT carol kept {i}")).unwrap();
            assert!(reply.starts_with("OK PUT "), "{reply}");
        }
        Victims {
            server,
            alice,
            pushed,
            bob_stop,
            bob: Some(bob),
            sent: 0,
            retries: 0,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// One victim exchange: alice posts to bob, and the message is pushed to him. While
    /// bob's mailbox is full (spam he has not acknowledged yet), alice retries every 5 ms, as
    /// the refusal asks; those waits count in her latency.
    fn exchange(&mut self) -> io::Result<()> {
        self.sent += 1;
        let body = format!("hello {}", self.sent);
        loop {
            let reply = self.alice.ask(&format!("PUT bob {body}"))?;
            if reply.starts_with("OK PUT ") {
                break;
            }
            if !reply.starts_with("ERROR PUT: mailbox bob is full") {
                return Err(io::Error::other(format!("alice: {reply}")));
            }
            self.retries += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        loop {
            let (from, text) = self
                .pushed
                .recv_timeout(Duration::from_secs(5))
                .map_err(|e| io::Error::other(format!("bob got nothing: {e}")))?;
            if from == "alice" && text == body {
                return Ok(());
            }
        }
    }

    fn measure(&mut self) -> Latency {
        Latency::measure(SAMPLES, || self.exchange())
    }

    /// Everything pushed to bob so far (after `quiet` without a push).
    fn drain_pushed(&self, quiet: Duration) -> Vec<(String, String)> {
        let mut all = Vec::new();
        while let Ok(m) = self.pushed.recv_timeout(quiet) {
            all.push(m);
        }
        all
    }

    /// Carol's messages from before the attack are all still there, first and in order.
    fn check_nothing_lost(&self) {
        let mut carol = register(4, self.addr(), "carol");
        carol.send("LIST").unwrap();
        for i in 1..=3 {
            let line = carol.recv().unwrap();
            assert!(line.ends_with(&format!(" alice kept {i}")), "{line}");
        }
    }
}

impl Drop for Victims {
    fn drop(&mut self) {
        self.bob_stop.store(true, Ordering::Relaxed);
        if let Some(bob) = self.bob.take()
            && bob.join().is_err()
            && !std::thread::panicking()
        {
            panic!("bob's thread failed");
        }
    }
}

#[test]
fn slowloris_is_cut_off_at_the_idle_timeout() {
    let mut v = Victims::start(Config {
        idle_timeout: Duration::from_millis(1500),
        ..config()
    });
    let addr = v.addr();
    let before = v.measure();
    let started = Instant::now();
    let mut attackers: Vec<_> = (0..8)
        .map(|_| connect_from(lo(10), addr).unwrap())
        .collect();
    let trickle: Vec<_> = attackers.iter().map(|s| s.try_clone().unwrap()).collect();
    let attack = Attack::start(move |i| {
        let byte = b"PUT bob slow"[usize::try_from(i).unwrap() % 12];
        let sent = trickle
            .iter()
            .filter(|s| {
                let mut s: &std::net::TcpStream = s;
                s.write_all(&[byte]).is_ok()
            })
            .count();
        std::thread::sleep(Duration::from_secs(1));
        sent as u64
    });
    std::thread::sleep(Duration::from_millis(200));
    let during = v.measure();
    for s in &mut attackers {
        assert!(
            closed_within(s, Duration::from_secs(4)),
            "a slowloris connection survived"
        );
    }
    let cut_after = started.elapsed();
    attack.stop();
    v.check_nothing_lost();
    report(
        "dht-msg",
        "slowloris (8 connections, 1 byte/s each)",
        &before,
        &during,
        &format!(
            "all 8 cut off after {} ms (idle timeout 1.5 s)",
            cut_after.as_millis()
        ),
    );
}

#[test]
fn a_connection_flood_from_one_ip_is_refused_past_its_cap() {
    let mut v = Victims::start(config());
    let addr = v.addr();
    let before = v.measure();
    let attack = Attack::start(move |_| {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..20 {
            let Ok(mut c) = connect_from(lo(10), addr).map(LineClient::from_stream) else {
                continue;
            };
            match c.ask("PING") {
                Ok(line) if line.starts_with("ERROR too many connections from 127.0.0.10") => {
                    refused += 1;
                }
                Ok(line) if line == "PONG" => held.push(c),
                _ => {}
            }
        }
        assert!(held.len() <= 8, "{} connections from one IP", held.len());
        refused
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 36));
    let during = v.measure();
    let refused = attack.stop();
    v.check_nothing_lost();
    report(
        "dht-msg",
        "connection flood from one IP (cap 8)",
        &before,
        &during,
        &format!("{refused} connections refused with `ERROR too many connections from 127.0.0.10`"),
    );
}

#[test]
fn oversized_and_non_utf8_lines_cut_off_only_their_sender() {
    let mut v = Victims::start(config());
    let addr = v.addr();
    let before = v.measure();
    let attack = Attack::start(move |i| {
        let Ok(mut c) = connect_from(lo(10), addr).map(LineClient::from_stream) else {
            return 0;
        };
        let mut w = c.stream().try_clone().unwrap();
        let expect = if i % 2 == 0 {
            let mut line = b"PUT bob ".to_vec();
            line.resize(1 << 20, b'x');
            let _ = w.write_all(&line);
            "ERROR line too long"
        } else {
            let _ = w.write_all(&b"PUT bob \xff\xfe\r\n".repeat(10));
            "ERROR line is not valid UTF-8"
        };
        if let Ok(first) = c.recv() {
            assert!(first.starts_with(expect), "{first:?}");
        }
        u64::from(c.closed_within(Duration::from_secs(3)))
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 4));
    let during = v.measure();
    let cut = attack.stop();
    v.check_nothing_lost();
    report(
        "dht-msg",
        "oversized (1 MiB) and non-UTF-8 lines",
        &before,
        &during,
        &format!("{cut} attacking connections answered with ERROR and closed"),
    );
}

#[test]
fn a_client_that_reads_nothing_is_dropped_and_its_mailbox_kept() {
    let mut v = Victims::start(config());
    let addr = v.addr();
    // Mallory fills its own mailbox (30 messages of 8000 bytes), then asks for the whole of it
    // again and again without reading.
    let mut mallory = register(10, addr, "mallory");
    let big = "m".repeat(8000);
    for _ in 0..30 {
        let reply = mallory.ask(&format!("PUT mallory {big}")).unwrap();
        assert!(reply.starts_with("OK PUT "), "{reply}");
    }
    drop(mallory);
    let before = v.measure();
    let started = Instant::now();
    let mut attacker = connect_from_with(lo(10), addr, Some(4096)).unwrap();
    let mut w = attacker.try_clone().unwrap();
    w.write_all(b"REGISTER mallory secret-of-mallory\r\n")
        .unwrap();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attack = {
        let refused = std::sync::Arc::clone(&refused);
        Attack::start(move |_| {
            if w.write_all(&b"LIST\r\n".repeat(10)).is_ok() {
                10
            } else {
                refused.store(true, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
                0
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let during = v.measure();
    assert!(
        wait_for(Duration::from_secs(10), || refused
            .load(std::sync::atomic::Ordering::Relaxed)),
        "the server still reads from a client that reads nothing"
    );
    assert!(closed_within(&mut attacker, Duration::from_secs(10)));
    let lists = attack.stop();
    let cut_after = started.elapsed();
    // Nothing of mallory's was lost either: its 30 messages are still stored.
    let mut mallory = register(10, addr, "mallory");
    mallory.send("LIST").unwrap();
    let mut count = 0;
    loop {
        let line = mallory.recv().unwrap();
        if line.starts_with("OK LIST") {
            assert_eq!(line, "OK LIST 30");
            break;
        }
        count += 1;
    }
    assert_eq!(count, 30);
    v.check_nothing_lost();
    report(
        "dht-msg",
        "client that reads nothing (LIST of a 240 KB mailbox, repeated)",
        &before,
        &during,
        &format!(
            "dropped at the 1 MiB output cap after {lists} LISTs, {} ms; its messages kept",
            cut_after.as_millis()
        ),
    );
}

#[test]
fn connect_disconnect_churn_leaves_nothing_behind() {
    let mut v = Victims::start(config());
    let addr = v.addr();
    let before = v.measure();
    let attack = Attack::start(move |i| {
        let Ok(s) = connect_from(lo(10), addr) else {
            return 0;
        };
        match i % 4 {
            0 => {}
            1 => {
                let _ = (&s).write_all(b"PING\r\n");
            }
            2 => {
                let _ = (&s).write_all(b"GET /dht_msg.php?call=list HTTP/1.1\r\n\r\n");
            }
            _ => {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        }
        1
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 2000));
    let during = v.measure();
    let churned = attack.stop();
    let forgotten = wait_for(Duration::from_secs(3), || {
        let mut again: Vec<_> = (0..8)
            .filter_map(|_| LineClient::connect(lo(10), addr).ok())
            .collect();
        again
            .iter_mut()
            .all(|c| c.ask("PING").is_ok_and(|r| r == "PONG"))
    });
    assert!(
        forgotten,
        "churned connections still count against the attacker's IP"
    );
    v.check_nothing_lost();
    report(
        "dht-msg",
        "connect/disconnect churn (line and HTTP)",
        &before,
        &during,
        &format!("{churned} connections opened and dropped; the per-IP count went back to 0"),
    );
}

#[test]
fn spam_to_a_subscriber_is_rate_limited_per_ip_and_every_accepted_message_delivered() {
    let mut v = Victims::start(config());
    let addr = v.addr();
    let before = v.measure();
    // Ten IPs post to bob as fast as they can; each is held to its burst and rate.
    let attack = Attack::start(move |i| {
        let ip = 10 + u8::try_from(i % 10).unwrap();
        let Ok(mut c) = LineClient::connect(lo(ip), addr) else {
            return 0;
        };
        let mut refused = 0;
        for _ in 0..20 {
            let reply = c.ask("PUT bob spam").unwrap();
            if reply.starts_with(&format!("ERROR PUT: too many messages from 127.0.0.{ip}"))
                || reply.starts_with("ERROR PUT: mailbox bob is full")
            {
                refused += 1;
            } else {
                assert!(reply.starts_with("OK PUT "), "{reply}");
            }
        }
        refused
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 100));
    let during = v.measure();
    let refused = attack.stop();
    // Whatever spam was accepted reached bob, who acknowledged it while being served: once
    // he has read on, his mailbox is empty.
    let late = v.drain_pushed(Duration::from_millis(500));
    let mut bob = register(2, addr, "bob");
    assert_eq!(
        bob.ask("LIST").unwrap(),
        "OK LIST 0",
        "{} late pushes",
        late.len()
    );
    v.check_nothing_lost();
    report(
        "dht-msg",
        "spam to a subscriber from 10 IPs",
        &before,
        &during,
        &format!(
            "{refused} spam PUTs refused (per-IP rate limit: burst 60, 30/s; or bob's 64-message \
             quota while he caught up); alice found the mailbox full {} times; all accepted spam \
             delivered",
            v.retries
        ),
    );
}

#[test]
fn posts_past_a_mailbox_quota_are_refused_with_a_reason_and_nothing_is_dropped() {
    let mut v = Victims::start(config());
    let addr = v.addr();
    let before = v.measure();
    // Attackers fill carol's mailbox (64 messages; 3 are alice's from before) on the line
    // protocol and over HTTP, from many IPs.
    let attack = Attack::start(move |i| {
        let ip = 10 + u8::try_from(i % 20).unwrap();
        let mut full = 0;
        if i % 2 == 0 {
            let Ok(mut c) = LineClient::connect(lo(ip), addr) else {
                return 0;
            };
            for _ in 0..5 {
                let reply = c.ask("PUT carol spam").unwrap();
                if reply.starts_with("ERROR PUT: mailbox carol is full (64 messages, limit 64)") {
                    full += 1;
                }
            }
        } else {
            let target = "/dht_msg.php?call=put&node_id=carol&msg=spam";
            if let Ok((status, body)) = http_get(lo(ip), addr, target)
                && status == 507
            {
                assert_eq!(body, "failure");
                full += 1;
            }
        }
        full
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 40));
    let during = v.measure();
    let refused = attack.stop();
    // Carol finds her mailbox full: alice's three messages from before first, then spam.
    let mut carol = register(4, addr, "carol");
    carol.send("LIST").unwrap();
    let mut ids = Vec::new();
    for n in 1..=64 {
        let line = carol.recv().unwrap();
        if n <= 3 {
            assert!(line.ends_with(&format!(" alice kept {n}")), "{line}");
        } else {
            assert!(line.ends_with(" spam"), "{line}");
        }
        ids.push(line.split(' ').nth(1).unwrap().to_owned());
    }
    assert_eq!(carol.recv().unwrap(), "OK LIST 64");
    // Reading makes room: alice may post to carol again.
    for id in &ids[3..] {
        assert_eq!(
            carol.ask(&format!("ACK {id}")).unwrap(),
            format!("OK ACK {id}")
        );
    }
    let reply = v.alice.ask("PUT carol after").unwrap();
    assert!(reply.starts_with("OK PUT "), "{reply}");
    report(
        "dht-msg",
        "posts past a mailbox quota (64 messages; line and HTTP, 20 IPs)",
        &before,
        &during,
        &format!(
            "{refused} posts refused (`ERROR ... mailbox carol is full` / HTTP 507); alice's 3 earlier messages kept"
        ),
    );
}

/// A client that sends valid requests as fast as the socket takes them and reads every reply
/// (so the output cap never applies): it gets its share of the loop (at most
/// `wire::io::READ_BUDGET_BYTES` per turn), not all of it.
#[test]
fn a_greedy_client_writing_as_fast_as_it_can_does_not_starve_others() {
    let mut v = Victims::start(config());
    let addr = v.addr();
    let before = v.measure();
    let mut greedy = Greedy::start(lo(10), addr, b"PING\r\n", 4096).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let during = v.measure();
    let pings = greedy.stop_writing();
    let replies = greedy.close();
    v.check_nothing_lost();
    report(
        "dht-msg",
        "greedy client (PING as fast as it can, reads every PONG)",
        &before,
        &during,
        &format!("{pings} PINGs sent, {} PONGs read", replies / 6),
    );
}
