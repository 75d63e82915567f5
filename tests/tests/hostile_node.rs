//! Misbehaving peers against a real node (`node::Net`) on loopback: connection floods past
//! the inbound limits (slow, trickling connections), a peer that reads nothing, oversized /
//! non-UTF-8 / malformed control lines, connect/disconnect churn, and forged `REVERSE_CONNECT`
//! requests through a real dht-msg mailbox that try to make the node dial a third address.
//!
//! The node under attack runs an echo application (every line it receives is answered with
//! `echo: <line>`). The victim is a plain-line peer (as PyP2P's) on 127.0.0.3, connected
//! before the attack; its echo round trip is measured before and during each attack (printed
//! with `--nocapture`). Attackers connect from 127.0.0.10 and up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use integration_tests::hostile::{
    Attack, Greedy, Latency, LineClient, closed_within, connect_from, connect_from_with, lo,
    report, third_party, wait_for,
};
use node::connect::ReverseRequest;
use node::core::Event;
use node::{Config, Net};
use wire::overlay::Nonce;
use wire::unl::{Forwarding, NatType, NodeId, NodeType, Unl};

const SAMPLES: usize = 30;

/// A node running an echo application on its own thread.
struct EchoNode {
    addr: SocketAddr,
    unl: Unl,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    events: Arc<Mutex<Vec<Event>>>,
    /// Every line the application received.
    received: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoNode {
    /// Starts a node on 127.0.0.1 with `config`; with a mailbox, waits until it is up.
    fn start(config: Config) -> EchoNode {
        let with_mailbox = config.dht_msg.is_some();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let events = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (stop, connections, events, received) = (
                Arc::clone(&stop),
                Arc::clone(&connections),
                Arc::clone(&events),
                Arc::clone(&received),
            );
            std::thread::spawn(move || {
                let mut net = Net::new(config.with_bind("127.0.0.1".parse().unwrap())).unwrap();
                net.start().unwrap();
                let mut ready = Some((net.local_addr().unwrap(), net.unl_v2()));
                let mut mailbox_up = !with_mailbox;
                while !stop.load(Ordering::Relaxed) {
                    net.poll(Some(Duration::from_millis(5))).unwrap();
                    for con in &mut net {
                        let lines: Vec<String> = con.lines().collect();
                        for line in lines {
                            let _ = con.send_line(&format!("echo: {line}"));
                            received.lock().unwrap().push(line);
                        }
                    }
                    connections.store(net.connection_count(), Ordering::Relaxed);
                    let new: Vec<Event> = net.events().collect();
                    mailbox_up |= new.iter().any(|e| matches!(e, Event::MailboxUp { .. }));
                    events.lock().unwrap().extend(new);
                    if mailbox_up && let Some(ready) = ready.take() {
                        tx.send(ready).unwrap();
                    }
                }
                net.stop();
            })
        };
        let (addr, unl) = rx.recv_timeout(Duration::from_secs(10)).expect("node up");
        EchoNode {
            addr,
            unl,
            stop,
            connections,
            events,
            received,
            thread: Some(thread),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for EchoNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
            && !std::thread::panicking()
        {
            panic!("the node's thread panicked");
        }
    }
}

/// A plain-line peer: sends `ping <n>`, waits for `echo: ping <n>` (skipping the node's
/// control lines).
struct Victim {
    c: LineClient,
    n: u64,
}

impl Victim {
    fn connect(ip: u8, node: &EchoNode) -> Victim {
        let mut v = Victim {
            c: LineClient::connect(lo(ip), node.addr).unwrap(),
            n: 0,
        };
        v.exchange().unwrap();
        v
    }

    fn exchange(&mut self) -> io::Result<()> {
        self.n += 1;
        let want = format!("echo: ping {}", self.n);
        self.c.send(&format!("ping {}", self.n))?;
        loop {
            let line = self.c.recv()?;
            if line == want {
                return Ok(());
            }
            if !line.starts_with("P2P/1 ") {
                return Err(io::Error::other(format!("unexpected {line:?}")));
            }
        }
    }

    fn measure(&mut self) -> Latency {
        Latency::measure(SAMPLES, || self.exchange())
    }
}

fn config() -> Config {
    Config::new()
        .with_max_inbound(8)
        .with_max_inbound_per_ip(4)
        .with_max_output_bytes(256 * 1024)
        .with_max_line_bytes(4096)
}

#[test]
fn a_flood_of_slow_connections_from_one_ip_gets_its_per_ip_share_and_no_more() {
    let node = EchoNode::start(config());
    let mut victim = Victim::connect(3, &node);
    let before = victim.measure();
    // 20 connections from one IP, each trickling a byte a second and never ending a line.
    let attackers: Vec<_> = (0..20)
        .filter_map(|_| connect_from(lo(10), node.addr).ok())
        .collect();
    let trickle: Vec<_> = attackers.iter().map(|s| s.try_clone().unwrap()).collect();
    let attack = Attack::start(move |_| {
        let sent = trickle
            .iter()
            .filter(|s| {
                let mut s: &std::net::TcpStream = s;
                s.write_all(b"x").is_ok()
            })
            .count();
        std::thread::sleep(Duration::from_secs(1));
        sent as u64
    });
    std::thread::sleep(Duration::from_millis(200));
    let during = victim.measure();
    // Past its 4, the attacker's connections were closed at once...
    let mut cut = 0;
    for s in &attackers {
        if closed_within(&mut s.try_clone().unwrap(), Duration::from_millis(300)) {
            cut += 1;
        }
    }
    assert_eq!(cut, 16, "the attacker kept {} connections", 20 - cut);
    // ...so another host still gets in (the node has 8 inbound slots: victim + 4 + this).
    let mut newcomer = Victim::connect(4, &node);
    newcomer.exchange().unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || node.connections() == 6),
        "{} connections (want the victim, 4 attackers, the newcomer)",
        node.connections()
    );
    attack.stop();
    report(
        "node",
        "flood of trickling connections from one IP (inbound 8, per IP 4)",
        &before,
        &during,
        "16 of 20 closed at once (`inbound limit per IP reached`); the 4 slow ones are not cut \
         off (a node has no line timeout: PyP2P peers may stay silent) but hold only their \
         per-IP share; a newcomer from another IP got in",
    );
}

#[test]
fn a_peer_that_reads_nothing_is_dropped_at_the_output_cap() {
    let node = EchoNode::start(config());
    let mut victim = Victim::connect(3, &node);
    let before = victim.measure();
    // Lines whose echoes it never reads.
    let mut attacker = connect_from_with(lo(10), node.addr, Some(4096)).unwrap();
    let mut w = attacker.try_clone().unwrap();
    let refused = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let attack = {
        let refused = Arc::clone(&refused);
        Attack::start(move |_| {
            let line = format!("{}\r\n", "y".repeat(1000));
            if w.write_all(line.repeat(64).as_bytes()).is_ok() {
                64
            } else {
                refused.store(true, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
                0
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let during = victim.measure();
    assert!(
        wait_for(Duration::from_secs(10), || refused.load(Ordering::Relaxed)),
        "the node keeps a peer that reads nothing"
    );
    assert!(closed_within(&mut attacker, Duration::from_secs(10)));
    let lines = attack.stop();
    let reason = node
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::Disconnected { reason, .. } if reason.starts_with("peer does not read") => {
                Some(reason)
            }
            _ => None,
        })
        .expect("a disconnect for not reading");
    victim.exchange().unwrap();
    report(
        "node",
        "peer that reads nothing (1 KB lines echoed back)",
        &before,
        &during,
        &format!(
            "dropped after {lines} lines, {} ms: `{reason}`",
            started.elapsed().as_millis()
        ),
    );
}

#[test]
fn oversized_non_utf8_and_malformed_control_lines_cut_off_only_their_sender() {
    let node = EchoNode::start(config());
    let mut victim = Victim::connect(3, &node);
    let before = victim.measure();
    let addr = node.addr;
    let attack = Attack::start(move |i| {
        let Ok(mut s) = connect_from(lo(10), addr) else {
            return 0;
        };
        let bytes: Vec<u8> = match i % 4 {
            0 => vec![b'z'; 1 << 20],
            1 => b"hello\r\n\xff\xfe\xfd\r\n".to_vec(),
            2 => b"P2P/1 BCAST nothex 3 x\r\n".to_vec(),
            _ => b"P2P/1 HELLO 0123456789abcdef 1\r\nP2P/1 HELLO 0123456789abcdef 1\r\n".to_vec(),
        };
        let _ = s.write_all(&bytes);
        u64::from(closed_within(&mut s, Duration::from_secs(3)))
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 8));
    let during = victim.measure();
    let cut = attack.stop();
    report(
        "node",
        "oversized (1 MiB), non-UTF-8 and malformed control lines",
        &before,
        &during,
        &format!("{cut} attacking connections closed; plain lines sent before were delivered"),
    );
    // A line sent just before the bad one was delivered to the application.
    let mut s = connect_from(lo(11), addr).unwrap();
    s.write_all(b"last words\r\n\xff\r\n").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)));
    assert!(
        wait_for(Duration::from_secs(2), || node
            .received
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "last words")),
        "a line before the bad one was lost"
    );
}

#[test]
fn connect_disconnect_churn_leaves_nothing_behind() {
    let node = EchoNode::start(config());
    let mut victim = Victim::connect(3, &node);
    let before = victim.measure();
    let addr = node.addr;
    let attack = Attack::start(move |i| {
        let Ok(s) = connect_from(lo(10), addr) else {
            return 0;
        };
        match i % 3 {
            0 => {}
            1 => {
                let _ = (&s).write_all(b"hello\r\n");
            }
            _ => {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        }
        1
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 2000));
    let during = victim.measure();
    let churned = attack.stop();
    assert!(
        wait_for(Duration::from_secs(3), || node.connections() == 1),
        "{} connections left",
        node.connections()
    );
    report(
        "node",
        "connect/disconnect churn",
        &before,
        &during,
        &format!("{churned} connections opened and dropped; the node is back to its one peer"),
    );
}

#[test]
fn forged_reverse_connect_requests_never_point_the_node_at_a_third_address_unchecked() {
    let mailbox =
        dht_msg::RunningServer::start("127.0.0.1:0".parse().unwrap(), dht_msg::Config::default())
            .unwrap();
    let mut config = config().with_dht_msg(mailbox.addr().to_string());
    config.max_reverse_per_minute = 5;
    let node = EchoNode::start(config);
    let node_mailbox = node.unl.node_id.unwrap().mailbox_id();
    let mut victim = Victim::connect(3, &node);
    // The third party: someone listening on 127.0.0.5, counting who connects.
    let (third_addr, dialed) = third_party(lo(5));
    // A UNL that names mallory's node id and the third party's address.
    let mallory = NodeId::from_bytes(*b"mallory\0\0\0\0\0\0\0\0\0\0\0\0\0").unwrap();
    let forged = |node_id: Option<NodeId>, i: u8| {
        ReverseRequest {
            unl: Unl {
                node_id,
                node_type: NodeType::Passive,
                nat_type: NatType::Preserving,
                forwarding: Forwarding::Forwarded,
                port: third_addr.port(),
                wan_ip: "127.0.0.5".parse().unwrap(),
                lan_ip: "127.0.0.5".parse().unwrap(),
            },
            nonce: Nonce([i; 32]),
        }
        .to_string()
    };
    let before = victim.measure();

    // Anonymous posts, posts from a mailbox that is not the UNL's, and garbage: all refused.
    let mut anon = LineClient::connect(lo(10), mailbox.addr()).unwrap();
    let mut other = LineClient::connect(lo(11), mailbox.addr()).unwrap();
    assert!(
        other
            .ask("REGISTER eve eve-secret")
            .unwrap()
            .starts_with("OK REGISTERED")
    );
    // Mallory owns the mailbox her UNL names: those requests are acted on within her budget
    // as a sender (a burst of a fifth of the 5 a minute: 1; then half a request a minute).
    let mut owner = LineClient::connect(lo(12), mailbox.addr()).unwrap();
    let reply = owner
        .ask(&format!("REGISTER {} mallory-secret", mallory.mailbox_id()))
        .unwrap();
    assert!(reply.starts_with("OK REGISTERED"), "{reply}");
    let mut posted = 0;
    for i in 0..40u8 {
        // 0: anonymous, 1: eve, 2: mallory (the owner).
        for (who, body) in [
            (0, forged(Some(mallory), i)),
            (1, forged(Some(mallory), i)),
            (0, "REVERSE_CONNECT:garbage:xyz".to_owned()),
            (1, format!("REVERSE_CONNECT:{}", "A".repeat(4000))),
            (2, forged(Some(mallory), i)),
        ] {
            let client = match who {
                0 => &mut anon,
                1 => &mut other,
                _ => &mut owner,
            };
            let reply = client.ask(&format!("PUT {node_mailbox} {body}")).unwrap();
            assert!(reply.starts_with("OK PUT "), "{reply}");
            posted += 1;
        }
    }
    let during = victim.measure();
    assert!(wait_for(Duration::from_secs(5), || {
        node.events()
            .iter()
            .filter(|e| matches!(e, Event::ReverseRequested { .. }))
            .count()
            >= posted
    }));
    std::thread::sleep(Duration::from_millis(300));
    let events = node.events();
    let acted: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::ReverseRequested { refused: None, .. }))
        .collect();
    let refusals: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::ReverseRequested {
                refused: Some(why), ..
            } => Some(why.clone()),
            _ => None,
        })
        .collect();
    // At most the sender's burst: 1 of 5.
    assert_eq!(acted.len(), 1, "acted on {acted:?}");
    let unproven = refusals
        .iter()
        .filter(|r| r.contains("did not prove it owns"))
        .count();
    assert_eq!(unproven, 80, "{refusals:?}");
    assert_eq!(
        refusals.iter().filter(|r| r.contains("too many")).count(),
        39
    );
    // The third party saw at most the rate-limited dials, each opening with the node's own
    // identity line (only the 64-hex nonce is the requester's choice).
    let dials: Vec<String> = dialed
        .lock()
        .unwrap()
        .iter()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert!(
        dials.len() <= 2,
        "{} dials to the third address",
        dials.len()
    );
    for first in &dials {
        assert!(
            first.starts_with(&format!("P2P/1 IAM {node_mailbox} ")),
            "{first:?}"
        );
    }
    victim.exchange().unwrap();
    report(
        "node",
        "forged REVERSE_CONNECT through the mailbox (200 posts)",
        &before,
        &during,
        &format!(
            "{unproven} unproven and {} malformed refused; of 40 from the UNL's owner, 1 acted on \
             (--max-reverse-per-minute 5: a burst of a fifth of it per sender): the third address got {} dials",
            refusals.len() - unproven - 39,
            dials.len()
        ),
    );
}

/// Regression test: the node read a peer's socket until it would block, so a peer writing as
/// fast as it could kept the loop (and the application) to itself, and every other peer
/// waited seconds. Now each peer gets at most `wire::io::READ_BUDGET_BYTES` per turn.
#[test]
fn a_greedy_peer_writing_as_fast_as_it_can_does_not_starve_others() {
    // No output cap in the way: the greedy peer reads, just not always as fast as it writes.
    let node = EchoNode::start(config().with_max_output_bytes(1 << 30));
    let mut victim = Victim::connect(3, &node);
    let before = victim.measure();
    // Lines as fast as the socket takes them; every echo is read, so no limit applies.
    let mut greedy = Greedy::start(lo(10), node.addr, b"flood\r\n", 8192).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let during = victim.measure();
    let lines = greedy.stop_writing();
    assert!(
        node.events()
            .iter()
            .all(|e| !matches!(e, Event::Disconnected { .. })),
        "the greedy peer was cut off, so this measured nothing"
    );
    let echoed = greedy.close();
    report(
        "node",
        "greedy peer (lines as fast as it can, reads every echo)",
        &before,
        &during,
        &format!("{lines} lines sent, {echoed} echo bytes read"),
    );
}
