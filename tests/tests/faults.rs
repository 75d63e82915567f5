//! Faults with real processes on loopback: the rendezvous server killed with SIGKILL and
//! restarted (nodes register again and the overlay keeps flooding), a relaying node killed
//! with SIGKILL in the middle of a broadcast stream (the others still receive every line,
//! exactly once), and dht-msg killed with SIGKILL while messages are being posted and
//! restarted on its `--data-dir` (every message it acknowledged and nobody deleted is still
//! delivered; none that was deleted comes back).
//!
//! The binaries come from the workspace's target directory (`cargo test --workspace` builds
//! them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::hostile::{LineClient, lo};
use integration_tests::{binary, loopback_node, take_lines, turn_all};
use node::{Config, Net};
use server_kit::testkit::ServerProcess;

/// Starts `bin --listen addr args` again on the same address (the port of a killed server can
/// be taken again at once: std binds with `SO_REUSEADDR`); retried briefly in case the port
/// is still held.
fn restart_on(bin: &Path, addr: SocketAddr, args: &[&str]) -> ServerProcess {
    let mut last = None;
    for _ in 0..20 {
        let mut command = Command::new(bin);
        command.args(["--listen", &addr.to_string()]).args(args);
        match ServerProcess::spawn_command(command) {
            Ok(p) => return p,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("could not restart on {addr}: {last:?}");
}

#[test]
fn the_rendezvous_killed_and_restarted_learns_every_node_again_and_the_overlay_floods_on() {
    let bin = binary("rendezvous");
    let rv = ServerProcess::spawn(bin.to_str().unwrap(), &[]).unwrap();
    let addr = rv.addr();
    let servers = vec![addr.to_string()];
    let mut nets: Vec<Net> = (0..3).map(|i| loopback_node(&servers, 300 + i)).collect();
    for net in &mut nets {
        net.start().unwrap();
        net.advertise().unwrap();
        net.bootstrap().unwrap();
    }
    assert!(turn_all(&mut nets, Duration::from_secs(10), |n| n
        .iter()
        .all(|n| n.connection_count() >= 1)));
    turn_all(&mut nets, Duration::from_millis(300), |_| false);

    let (status, _) = rv.kill().unwrap();
    assert!(!status.success(), "SIGKILL is not a clean exit");
    let killed_at = Instant::now();
    // The overlay does not need the rendezvous to flood.
    nets[0].broadcast("while the rendezvous is dead").unwrap();
    let mut got = [0usize; 3];
    assert!(
        turn_all(&mut nets, Duration::from_secs(5), |n| {
            for (i, net) in n.iter_mut().enumerate() {
                got[i] += take_lines(net).len();
            }
            got[1] == 1 && got[2] == 1
        }),
        "{got:?}"
    );

    // Same address, empty memory: the nodes register again by themselves.
    let rv = restart_on(&bin, addr, &[]);
    let mut newcomer = loopback_node(&servers, 399);
    let mut offered = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while offered < 3 && Instant::now() < deadline {
        turn_all(&mut nets, Duration::from_millis(100), |_| false);
        offered = newcomer.bootstrap().unwrap().offered;
    }
    assert_eq!(
        offered, 3,
        "the restarted rendezvous did not learn every node again"
    );
    println!(
        "FAULT rendezvous SIGKILL + restart: a line flooded during the outage; all 3 nodes \
         registered again {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
    nets[1].broadcast("after the restart").unwrap();
    let mut got = [0usize; 3];
    assert!(
        turn_all(&mut nets, Duration::from_secs(5), |n| {
            for (i, net) in n.iter_mut().enumerate() {
                got[i] += take_lines(net).len();
            }
            got[0] == 1 && got[2] == 1
        }),
        "{got:?}"
    );
    drop(rv);
}

/// Lines the sender broadcasts in the relay test.
const LINES: usize = 200;

/// A child process killed and waited for when dropped (also when a test fails).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_relay_killed_mid_broadcast_loses_no_line_for_the_others() {
    // A ring: sender - relay - b - a - sender. The relay is a real p2p-node process.
    let listening = || {
        let mut net = Net::new(
            Config::new()
                .with_bind("127.0.0.1".parse().unwrap())
                .with_max_outbound(0),
        )
        .unwrap();
        net.start().unwrap();
        net
    };
    let (sender, mut a, mut b) = (listening(), listening(), listening());
    a.connect(sender.local_addr().unwrap());
    b.connect(a.local_addr().unwrap());
    let mut relay = Reaped(
        Command::new(binary("p2p-node"))
            .args(["run", "--no-listen", "--show-events"])
            .args(["--connect", &sender.local_addr().unwrap().to_string()])
            .args(["--connect", &b.local_addr().unwrap().to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut nets = vec![sender, a, b];
    let ring = turn_all(&mut nets, Duration::from_secs(10), |n| {
        n.iter().all(|n| n.connection_count() == 2)
    });
    assert!(
        ring,
        "no ring: {:?}",
        nets.iter().map(Net::connection_count).collect::<Vec<_>>()
    );
    turn_all(&mut nets, Duration::from_millis(200), |_| false);

    // 200 lines, one every millisecond; the relay dies after line 100.
    let mut got: [Vec<String>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for i in 1..=LINES {
        nets[0].broadcast(&format!("line {i}")).unwrap();
        if i == LINES / 2 {
            relay.0.kill().unwrap();
            relay.0.wait().unwrap();
        }
        turn_all(&mut nets, Duration::from_millis(1), |n| {
            for (k, net) in n.iter_mut().enumerate() {
                got[k].extend(take_lines(net));
            }
            false
        });
    }
    let complete = turn_all(&mut nets, Duration::from_secs(5), |n| {
        for (k, net) in n.iter_mut().enumerate() {
            got[k].extend(take_lines(net));
        }
        got[1].len() >= LINES && got[2].len() >= LINES
    });
    // A little longer: a duplicate would show now.
    turn_all(&mut nets, Duration::from_millis(200), |n| {
        for (k, net) in n.iter_mut().enumerate() {
            got[k].extend(take_lines(net));
        }
        false
    });
    for k in [1, 2] {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for line in &got[k] {
            *counts.entry(line.as_str()).or_default() += 1;
        }
        for i in 1..=LINES {
            let line = format!("line {i}");
            assert_eq!(
                counts.get(line.as_str()).copied().unwrap_or(0),
                1,
                "node {k}: {line} (complete: {complete})"
            );
        }
    }
    assert_eq!(
        nets[0].connection_count(),
        1,
        "the sender still lists the dead relay"
    );
    println!(
        "FAULT relay SIGKILL after line {} of {LINES}: both other nodes got all {LINES} lines \
         exactly once",
        LINES / 2
    );
}

#[test]
fn dht_msg_killed_mid_stream_and_restarted_on_its_data_dir_loses_nothing_acknowledged() {
    let dir = std::env::temp_dir().join(format!("faults-dht-msg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = binary("dht-msg");
    let args = ["--data-dir", dir.to_str().unwrap()];
    let server = ServerProcess::spawn(bin.to_str().unwrap(), &args).unwrap();
    let addr = server.addr();

    let register = |ip: u8, node: &str| {
        let mut c = LineClient::connect(lo(ip), addr).unwrap();
        let reply = c.ask(&format!("REGISTER {node} secret-of-{node}")).unwrap();
        assert!(reply.starts_with("OK REGISTERED"), "{reply}");
        c
    };
    let mut bob = register(2, "bob");
    let mut alice = register(3, "alice");
    // Alice posts as fast as the server acknowledges; bob acknowledges every other message he
    // is pushed. Both record only what the server confirmed.
    let stored = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let poster = {
        let stored = Arc::clone(&stored);
        std::thread::spawn(move || {
            for i in 0u64.. {
                let Ok(reply) = alice.ask(&format!("PUT bob message {i}")) else {
                    break;
                };
                let Some(id) = reply.strip_prefix("OK PUT ") else {
                    // The per-IP rate limit: wait as told.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                stored.lock().unwrap().insert(id.parse().unwrap());
            }
        })
    };
    assert_eq!(bob.ask("SUBSCRIBE").unwrap(), "OK SUBSCRIBED 0");
    // ACKs bob sent, and those the server confirmed (`OK ACK`, sent only once the deletion is
    // on disk).
    let sent_acks = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let acked = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let reader = {
        let (acked, sent_acks) = (Arc::clone(&acked), Arc::clone(&sent_acks));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while let Ok(line) = bob.recv() {
                if let Some(id) = line.strip_prefix("OK ACK ") {
                    acked.lock().unwrap().insert(id.parse().unwrap());
                } else if let Some(rest) = line.strip_prefix("MSG ") {
                    n += 1;
                    if n.is_multiple_of(2) {
                        let id: u64 = rest.split(' ').next().unwrap().parse().unwrap();
                        sent_acks.lock().unwrap().insert(id);
                        if bob.send(&format!("ACK {id}")).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    let (status, _) = server.kill().unwrap();
    assert!(!status.success());
    poster.join().unwrap();
    reader.join().unwrap();
    let stored = stored.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let sent_acks = sent_acks.lock().unwrap().clone();
    assert!(
        stored.len() > 20,
        "only {} messages before the kill",
        stored.len()
    );

    let restarted = restart_on(&bin, addr, &args);
    let mut bob = LineClient::connect(lo(2), restarted.addr()).unwrap();
    assert!(
        bob.ask("REGISTER bob secret-of-bob")
            .unwrap()
            .starts_with("OK REGISTERED")
    );
    bob.send("LIST").unwrap();
    let mut pending = BTreeSet::new();
    loop {
        let line = bob.recv().unwrap();
        if line.starts_with("OK LIST ") {
            break;
        }
        let id: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        pending.insert(id);
    }
    // Every stored message that bob did not ask to delete is there (an ACK sent but not
    // confirmed before the kill may or may not have been carried out)...
    let must: BTreeSet<u64> = stored.difference(&sent_acks).copied().collect();
    let lost: Vec<_> = must.difference(&pending).collect();
    assert!(lost.is_empty(), "lost after the restart: {lost:?}");
    // ...and nothing deleted came back.
    let back: Vec<_> = pending.intersection(&acked).collect();
    assert!(back.is_empty(), "deleted messages came back: {back:?}");
    println!(
        "FAULT dht-msg SIGKILL mid-stream + restart on --data-dir: {} messages acknowledged \
         (OK PUT), {} deleted by bob (OK ACK); after the restart {} pending, none lost, none \
         resurrected ({} were stored but unconfirmed at the kill)",
        stored.len(),
        acked.len(),
        pending.len(),
        pending.difference(&must).count()
    );
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
}
