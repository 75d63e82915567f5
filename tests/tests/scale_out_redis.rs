//! Several rendezvous and dht-msg instances on one real `redis-server` (started by each test
//! on a unix socket; skipped with a message when not installed, failing under CI): a
//! registration on one instance is bootstrapped from another, a CANDIDATE on one instance
//! reaches the node on another and the FIGHT comes back, a message PUT on one is pushed by
//! another, killing an instance (SIGKILL) during PUT/ACK traffic loses nothing accepted, a
//! node whose instance died registers on another and is reachable again, and two peers on
//! different instances meet at the relay instance a `RELAY_CONNECT` names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::net::Ipv4Addr;

use integration_tests::redis::RedisServer;
use integration_tests::{binary, mailbox_owner};
use node::connect::RelayRequest;
use server_kit::testkit::{LineClient, ServerProcess};
use wire::overlay::Nonce;
use wire::punch::relay_token;
use wire::unl::{Forwarding, NatType, NodeType, Unl};

const ANY: &str = "127.0.0.1:0";

fn rendezvous_on(url: &str) -> rendezvous::RunningServer {
    let config = rendezvous::Config {
        backend: Some(url.to_owned()),
        ..rendezvous::Config::default()
    };
    rendezvous::RunningServer::start(ANY.parse().unwrap(), config).unwrap()
}

fn dht_msg_on(url: &str) -> dht_msg::RunningServer {
    let config = dht_msg::Config {
        backend: Some(url.to_owned()),
        put_rate_per_ip: 10_000.0,
        put_burst_per_ip: 10_000,
        ..dht_msg::Config::default()
    };
    dht_msg::RunningServer::start(ANY.parse().unwrap(), config).unwrap()
}

/// Asks `line` until the answer satisfies `ok` (updates cross instances in about a publish
/// hop), at most 5 s.
fn ask_until(client: &mut LineClient, line: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = client.ask(line);
        if ok(&answer) || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Now in Unix seconds, with the fraction .125: the server renders an `ACCEPT` time in its
/// `FIGHT` with as few digits as it needs, so a time like `...154.790` would come back as
/// `...154.79`; .125 is exact in binary and has no trailing zero.
fn now_unix() -> f64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    #[allow(clippy::cast_precision_loss)]
    let secs = secs as f64;
    secs + 0.125
}

#[test]
fn a_registration_on_one_instance_is_bootstrapped_from_another_and_cleared_everywhere() {
    let Some(redis) = RedisServer::start("bootstrap") else {
        return;
    };
    let a = rendezvous_on(&redis.url());
    let b = rendezvous_on(&redis.url());
    let mut node = LineClient::from("127.0.0.41", a.addr());
    node.send("PASSIVE READY 4000 10");
    let mut asker = LineClient::from("127.0.0.42", b.addr());
    let nodes = ask_until(&mut asker, "BOOTSTRAP 5", |a| a.contains("127.0.0.41"));
    assert_eq!(nodes, "NODES p:127.0.0.41:4000 ");
    // A third instance started later loads it from Redis.
    let c = rendezvous_on(&redis.url());
    let mut late = LineClient::from("127.0.0.43", c.addr());
    assert_eq!(late.ask("BOOTSTRAP 5"), "NODES p:127.0.0.41:4000 ");
    node.send("CLEAR");
    let gone = ask_until(&mut asker, "BOOTSTRAP 5", |a| a == "NODES EMPTY");
    assert_eq!(gone, "NODES EMPTY");
}

#[test]
fn a_candidate_on_one_instance_reaches_the_node_on_another_and_the_fight_comes_back() {
    let Some(redis) = RedisServer::start("punch") else {
        return;
    };
    let a = rendezvous_on(&redis.url());
    let b = rendezvous_on(&redis.url());
    let mut node = LineClient::from("127.0.0.51", a.addr());
    node.send("SIMULTANEOUS READY 5000 10");
    let mut cand = LineClient::from("127.0.0.52", b.addr());
    let answer = ask_until(&mut cand, "CANDIDATE 127.0.0.51 TCP 6000 6001", |a| {
        a == "PREDICTION SET"
    });
    assert_eq!(answer, "PREDICTION SET");
    assert_eq!(node.recv(), "CHALLENGE 127.0.0.52 6000 6001 TCP");
    // In the shortest form, as the server writes it back.
    let t = wire::rendezvous::NtpTime::new((now_unix() * 1000.0).round() / 1000.0).unwrap();
    node.send(&format!("ACCEPT 127.0.0.52 5000 TCP {t}"));
    assert_eq!(cand.recv(), format!("FIGHT 127.0.0.51 5000 TCP {t}"));
    // A refusal travels back too: the node's instance allows one candidacy per IP... and
    // names what is wrong when the node is gone.
    assert!(
        cand.ask("CANDIDATE 127.0.0.99 TCP 1")
            .starts_with("ERROR CANDIDATE: no simultaneous node")
    );
    // B counts the node as another instance's (its metrics' remote_simultaneous gauge); A as
    // its own.
    assert_eq!(b.stop().unwrap().backend.remote_registrations, 1);
    let on_a = a.stop().unwrap();
    assert_eq!(
        (on_a.simultaneous, on_a.backend.remote_registrations),
        (1, 0)
    );
}

#[test]
fn a_message_put_on_one_instance_is_pushed_by_another_and_acked_anywhere() {
    let Some(redis) = RedisServer::start("push") else {
        return;
    };
    let a = dht_msg_on(&redis.url());
    let b = dht_msg_on(&redis.url());
    let mut owner = mailbox_owner("127.0.0.61", b.addr(), "bob");
    let mut sender = LineClient::from("127.0.0.62", a.addr());
    let put = ask_until(&mut sender, "PUT bob hello", |a| a.starts_with("OK PUT"));
    let id = put.strip_prefix("OK PUT ").unwrap().to_owned();
    assert_eq!(owner.recv(), format!("MSG {id} - hello"));
    // The owner proves its secret on A too (the salt is shared), and ACKs there.
    let mut on_a = LineClient::from("127.0.0.61", a.addr());
    assert!(
        on_a.ask("REGISTER bob secretsecretsecret")
            .starts_with("OK REGISTERED bob")
    );
    assert_eq!(on_a.ask(&format!("ACK {id}")), format!("OK ACK {id}"));
    let listed = ask_until(&mut owner, "LIST", |a| a == "OK LIST 0");
    assert_eq!(listed, "OK LIST 0");
}

#[test]
fn killing_an_instance_during_put_and_ack_traffic_loses_nothing_accepted() {
    let Some(redis) = RedisServer::start("kill") else {
        return;
    };
    let url = redis.url();
    let victim = ServerProcess::spawn(
        binary("dht-msg").to_str().unwrap(),
        &[
            "--backend",
            &url,
            "--put-rate-per-ip",
            "100000",
            "--put-burst-per-ip",
            "100000",
        ],
    )
    .unwrap();
    let survivor = dht_msg_on(&url);
    // The owner is subscribed on the victim and ACKs there; the sender PUTs on the survivor.
    let mut owner = mailbox_owner("127.0.0.71", victim.addr(), "bob");
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (accepted, stop, addr) = (Arc::clone(&accepted), Arc::clone(&stop), survivor.addr());
        std::thread::spawn(move || {
            let mut c = LineClient::from("127.0.0.72", addr);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let answer = c.ask(&format!("PUT bob m{n}"));
                if let Some(id) = answer.strip_prefix("OK PUT ") {
                    accepted.lock().unwrap().insert(id.parse::<u64>().unwrap());
                }
            }
        })
    };
    let mut received = BTreeSet::new();
    while received.len() < 100 {
        let line = owner.recv();
        // Pushes and the answers to our ACKs interleave.
        if line.starts_with("OK ACK ") {
            continue;
        }
        let id: u64 = line
            .strip_prefix("MSG ")
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        owner.send(&format!("ACK {id}"));
        received.insert(id);
    }
    victim.kill().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    // The owner comes back on the survivor and gets everything not yet ACKed.
    let mut back = LineClient::from("127.0.0.71", survivor.addr());
    assert!(
        back.ask("REGISTER bob secretsecretsecret")
            .starts_with("OK REGISTERED")
    );
    let pending = back.ask("SUBSCRIBE");
    let n: usize = pending
        .strip_prefix("OK SUBSCRIBED ")
        .unwrap()
        .parse()
        .unwrap();
    let (mut seen, mut acked) = (0, 0);
    while seen < n || acked < seen {
        let line = back.recv();
        if let Some(rest) = line.strip_prefix("MSG ") {
            let id: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            back.send(&format!("ACK {id}"));
            received.insert(id);
            seen += 1;
        } else {
            assert!(line.starts_with("OK ACK "), "{line}");
            acked += 1;
        }
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() > 100,
        "the sender kept going: {}",
        accepted.len()
    );
    let lost: Vec<&u64> = accepted.difference(&received).collect();
    assert!(
        lost.is_empty(),
        "{} accepted messages lost: {lost:?}",
        lost.len()
    );
    assert_eq!(back.ask("LIST"), "OK LIST 0");
}

#[test]
fn a_node_whose_instance_dies_registers_on_another_and_is_reachable_again() {
    let Some(redis) = RedisServer::start("failover") else {
        return;
    };
    let url = redis.url();
    let first =
        ServerProcess::spawn(binary("rendezvous").to_str().unwrap(), &["--backend", &url]).unwrap();
    let second = rendezvous_on(&url);
    let third = rendezvous_on(&url);
    let mut node = LineClient::from("127.0.0.81", first.addr());
    node.send("SIMULTANEOUS READY 5000 10");
    let mut cand = LineClient::from("127.0.0.82", third.addr());
    assert_eq!(
        ask_until(&mut cand, "CANDIDATE 127.0.0.81 TCP 7000", |a| a
            == "PREDICTION SET"),
        "PREDICTION SET"
    );
    assert_eq!(node.recv(), "CHALLENGE 127.0.0.82 7000 TCP");
    let (status, _) = first.kill().unwrap();
    assert!(!status.success());
    // The others notice the silence and stop offering the node.
    let refused = ask_until(&mut cand, "CANDIDATE 127.0.0.81 TCP 7000", |a| {
        a.starts_with("ERROR")
    });
    assert!(
        refused.starts_with("ERROR CANDIDATE: no simultaneous node"),
        "{refused}"
    );
    // It registers on the second instance and is reachable from the third again.
    let mut node = LineClient::from("127.0.0.81", second.addr());
    node.send("SIMULTANEOUS READY 5000 10");
    assert_eq!(
        ask_until(&mut cand, "CANDIDATE 127.0.0.81 TCP 7001", |a| a
            == "PREDICTION SET"),
        "PREDICTION SET"
    );
    assert_eq!(node.recv(), "CHALLENGE 127.0.0.82 7001 TCP");
    // In the shortest form, as the server writes it back.
    let t = wire::rendezvous::NtpTime::new((now_unix() * 1000.0).round() / 1000.0).unwrap();
    node.send(&format!("ACCEPT 127.0.0.82 5000 TCP {t}"));
    assert_eq!(cand.recv(), format!("FIGHT 127.0.0.81 5000 TCP {t}"));
}

#[test]
fn relay_peers_routed_through_the_shared_mailbox_meet_on_the_instance_the_request_names() {
    // Relays are routed, not shared. X and Y each use another rendezvous instance and another
    // dht-msg instance, all on one backend. X asks Y through the mailbox to meet at rendezvous
    // A (`RELAY_CONNECT`, as the node sends it); Y, registered on B, goes to A and they splice
    // there. Dialling B with the same token instead pairs with nobody: sessions are per instance.
    let Some(redis) = RedisServer::start("relay") else {
        return;
    };
    let (rv_a, rv_b) = (rendezvous_on(&redis.url()), rendezvous_on(&redis.url()));
    let (mail_1, mail_2) = (dht_msg_on(&redis.url()), dht_msg_on(&redis.url()));
    let mut x_home = LineClient::from("127.0.0.91", rv_a.addr());
    x_home.send("SIMULTANEOUS READY 5000 10");
    let mut y_home = LineClient::from("127.0.0.92", rv_b.addr());
    y_home.send("SIMULTANEOUS READY 5000 10");
    let mut y_mail = mailbox_owner("127.0.0.92", mail_2.addr(), "yyy");

    // X: the request through the other mailbox instance, then the named relay.
    let request = RelayRequest {
        unl: Unl {
            node_id: None,
            node_type: NodeType::Simultaneous,
            nat_type: NatType::Random,
            forwarding: Forwarding::Manual,
            port: 5000,
            wan_ip: Ipv4Addr::new(127, 0, 0, 91),
            lan_ip: Ipv4Addr::new(127, 0, 0, 91),
        },
        nonce: Nonce([9; 32]),
        relay: rv_a.addr(),
    };
    let mut x_mail = LineClient::from("127.0.0.91", mail_1.addr());
    let put = ask_until(&mut x_mail, &format!("PUT yyy {request}"), |r| {
        r.starts_with("OK PUT")
    });
    assert!(put.starts_with("OK PUT"), "{put}");
    let token = relay_token(&request.nonce);
    let mut x_relay = LineClient::from("127.0.0.91", request.relay);
    assert_eq!(x_relay.ask(&format!("RELAY {token}")), "RELAY WAITING");

    // Y: the pushed request names A. The same token on Y's own instance meets nobody.
    let pushed = y_mail.recv();
    let body = pushed.splitn(4, ' ').nth(3).unwrap();
    let got: RelayRequest = body.parse().unwrap();
    assert_eq!(got, request);
    let mut astray = LineClient::from("127.0.0.92", rv_b.addr());
    assert_eq!(astray.ask(&format!("RELAY {token}")), "RELAY WAITING");
    let mut y_relay = LineClient::from("127.0.0.92", got.relay);
    y_relay.send(&format!("RELAY {}", relay_token(&got.nonce)));
    assert_eq!(y_relay.recv(), "RELAY OK");
    assert_eq!(x_relay.recv(), "RELAY OK");
    x_relay.send("through the relay");
    assert_eq!(y_relay.recv(), "through the relay");
    y_relay.send("and back");
    assert_eq!(x_relay.recv(), "and back");
    // The stray half on B is still open and silent: it waits for a pair of its own.
    astray.stream().set_nonblocking(true).unwrap();
    let peek = astray.stream().peek(&mut [0u8; 1]);
    assert!(
        matches!(&peek, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{peek:?}"
    );
}
