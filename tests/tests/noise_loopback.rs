//! Encrypted connections between nodes on loopback (issue 16): the Noise handshake runs on
//! every connection between nodes of this software before either side's application sees it;
//! a dialer that knows the key (a v3 UNL) refuses any other, with the reason in the outcome;
//! a stalled handshake times out and frees its slot; PyP2P-style plain text still works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use integration_tests::{take_lines, turn_all};
use node::connect::{ConnectOutcome, Method, TryResult};
use node::core::Event;
use node::identity::Identity;
use node::wire::unl::v3::{AnyUnl, UnlV3};
use node::{Config, Net, Role};

fn node(secret: u8) -> Net {
    let mut net = Net::new(
        Config::new()
            .with_bind("127.0.0.1".parse().unwrap())
            .with_node_type(Role::Passive)
            .with_identity(Identity::from_secret_bytes(&[secret; 32])),
    )
    .unwrap();
    net.start().unwrap();
    net
}

/// Turns every node until `nets[who]` reports the outcome of its connect.
fn outcome_of(nets: &mut [Net], who: usize, limit: Duration) -> ConnectOutcome {
    let mut found = None;
    turn_all(nets, limit, |nets| {
        for e in nets[who].events() {
            if let Event::ConnectDone(o) = e {
                found = Some(o);
            }
        }
        found.is_some()
    });
    found.expect("a connect outcome")
}

/// Sends `line` from every connection of `nets[from]` and waits for it at `nets[to]`.
fn line_arrives(nets: &mut [Net], from: usize, to: usize, line: &str) {
    for con in nets[from].connections() {
        con.send_line(line).unwrap();
    }
    let mut got = Vec::new();
    assert!(
        turn_all(nets, Duration::from_secs(5), |n| {
            got.extend(take_lines(&mut n[to]));
            got.iter().any(|l| l == line)
        }),
        "{line:?} did not arrive: {got:?}"
    );
}

#[test]
fn a_connect_by_v3_unl_is_encrypted_and_proves_the_key_on_both_ends() {
    let mut nets = vec![node(1), node(2)];
    let alice_unl = nets[0].unl();
    let (alice_key, bob_key) = (nets[0].key(), nets[1].key());
    nets[1].connect(&alice_unl);
    let outcome = outcome_of(&mut nets, 1, Duration::from_secs(5));
    assert!(outcome.connected, "{}", outcome.describe_tries());
    // On one host both UNLs carry the same WAN address: the LAN address is dialed.
    assert_eq!(outcome.method, Some(Method::Lan));
    assert!(
        turn_all(&mut nets, Duration::from_secs(5), |n| n[0]
            .connection_count()
            == 1),
        "alice sees the connection"
    );
    let bob_side: Vec<_> = nets[1].connections().map(|c| c.peer_key()).collect();
    let alice_side: Vec<_> = nets[0].connections().map(|c| c.peer_key()).collect();
    assert_eq!(
        bob_side,
        vec![Some(alice_key)],
        "bob's connection proved alice's key"
    );
    assert_eq!(
        alice_side,
        vec![Some(bob_key)],
        "alice's connection proved bob's key"
    );
    line_arrives(&mut nets, 1, 0, "hello alice, encrypted");
    line_arrives(&mut nets, 0, 1, "hello bob, encrypted");
}

#[test]
fn a_connect_by_address_is_encrypted_by_default_and_plain_when_asked() {
    let mut nets = vec![node(3), node(4)];
    let addr = nets[0].local_addr().unwrap();
    nets[1].connect(addr);
    assert!(turn_all(&mut nets, Duration::from_secs(5), |n| {
        n[0].connection_count() == 1 && n[1].connection_count() == 1
    }));
    let key = nets[0].key();
    assert!(nets[1].connections().all(|c| c.peer_key() == Some(key)));
    line_arrives(&mut nets, 1, 0, "by address");

    let mut plain = Net::new(Config::new().with_listen(false).with_plaintext_dials(true)).unwrap();
    plain.start().unwrap();
    plain.connect(addr);
    nets.push(plain);
    assert!(turn_all(&mut nets, Duration::from_secs(5), |n| {
        n[0].connection_count() == 2 && n[2].connection_count() == 1
    }));
    assert!(nets[2].connections().all(|c| !c.is_encrypted()));
    line_arrives(&mut nets, 2, 0, "in plain text");
}

#[test]
fn a_v2_unl_gets_a_plain_text_connection() {
    let mut nets = vec![node(5), node(6)];
    let v2 = nets[0].unl_v2();
    nets[1].connect(&v2);
    let outcome = outcome_of(&mut nets, 1, Duration::from_secs(5));
    assert!(outcome.connected, "{}", outcome.describe_tries());
    assert!(nets[1].connections().all(|c| !c.is_encrypted()));
    line_arrives(&mut nets, 1, 0, "plain for PyP2P");
}

#[test]
fn a_dial_that_reaches_another_key_than_the_unl_names_is_refused_with_the_reason() {
    let mut nets = vec![node(7), node(8)];
    // A UNL that says alice's addresses but is signed by mallory: whoever answers there must
    // prove mallory's key, and alice cannot.
    let mallory = Identity::from_secret_bytes(&[99; 32]);
    let mut body = nets[0].unl().body().clone();
    body.seq += 1;
    let forged = UnlV3::sign(body, mallory.secret()).unwrap();
    nets[1].connect(&AnyUnl::V3(forged));
    let outcome = outcome_of(&mut nets, 1, Duration::from_secs(5));
    assert!(!outcome.connected);
    let direct = outcome
        .tries
        .iter()
        .find(|t| t.method == Method::Lan)
        .expect("a LAN dial (one host)");
    let TryResult::Failed(why) = &direct.result else {
        panic!("{direct:?}");
    };
    assert!(
        why.contains("handshake failed")
            && why.contains(&nets[0].key().to_string())
            && why.contains(&mallory.key().to_string())
            && why.contains("we dialed"),
        "{why}"
    );
    assert_eq!(nets[1].connection_count(), 0);
    turn_all(&mut nets, Duration::from_millis(200), |_| false);
    assert_eq!(
        nets[0].connection_count(),
        0,
        "alice never opened it either"
    );
}

#[test]
fn a_stalled_handshake_times_out_and_frees_its_slot() {
    // Two handshakes from one IP at most; each must finish within 300 ms.
    let mut alice = Net::new(
        Config::new()
            .with_bind("127.0.0.1".parse().unwrap())
            .with_max_inbound_per_ip(2)
            .with_handshake_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    alice.start().unwrap();
    let addr = alice.local_addr().unwrap();
    // One sends nothing, one stops inside the preamble.
    let silent = TcpStream::connect(addr).unwrap();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"\0p2p").unwrap();
    alice.poll(Some(Duration::from_millis(50))).unwrap();
    // A third is turned away at once: both slots are taken.
    let mut third = TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 16];
    alice.poll(Some(Duration::from_millis(50))).unwrap();
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "the third connection is closed while the slots are taken"
    );
    // After the timeout both stalled ones are closed...
    let started = Instant::now();
    for mut s in [silent, half] {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let closed = alice
            .poll_until(Duration::from_secs(2), |_| {
                matches!(s.read(&mut buf), Ok(0))
                    || matches!(&s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
            })
            .unwrap();
        assert!(closed, "a stalled handshake was not dropped");
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(alice.connection_count(), 0);
    // ... and a real node gets in.
    let mut bob = Net::new(Config::new().with_listen(false)).unwrap();
    bob.start().unwrap();
    bob.connect(addr);
    let mut nets = vec![alice, bob];
    assert!(
        turn_all(&mut nets, Duration::from_secs(5), |n| {
            n[0].connection_count() == 1 && n[1].connection_count() == 1
        }),
        "the freed slot takes a new connection"
    );
}

#[test]
fn a_dial_to_a_peer_that_never_answers_the_handshake_fails_with_a_timeout() {
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let target: SocketAddr = mute.local_addr().unwrap();
    let keep = std::thread::spawn(move || {
        let (s, _) = mute.accept().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        drop(s);
    });
    // Its UNL: a passive node at the mute listener's address.
    let ghost = Identity::from_secret_bytes(&[11; 32]);
    let mut nets = vec![node(12)];
    let mut body = nets[0].unl().body().clone();
    for a in &mut body.addrs {
        a.addr.set_port(target.port());
    }
    let unl = UnlV3::sign(body, ghost.secret()).unwrap();
    let mut bob = Net::new(
        Config::new()
            .with_listen(false)
            .with_handshake_timeout(Duration::from_millis(400)),
    )
    .unwrap();
    bob.start().unwrap();
    bob.connect(&unl);
    nets.push(bob);
    let outcome = outcome_of(&mut nets, 1, Duration::from_secs(5));
    assert!(!outcome.connected);
    let text = outcome.describe_tries();
    assert!(
        text.contains("handshake failed") && text.contains("timed out"),
        "{text}"
    );
    keep.join().unwrap();
}

#[test]
fn a_relayed_connection_is_encrypted_and_proves_the_key() {
    let rv = rendezvous::RunningServer::start(
        "127.0.0.1:0".parse().unwrap(),
        rendezvous::Config::default(),
    )
    .unwrap();
    let mailbox =
        dht_msg::RunningServer::start("127.0.0.1:0".parse().unwrap(), dht_msg::Config::default())
            .unwrap();
    let active = |secret: u8| {
        let mut net = Net::new(
            Config::new()
                .with_listen(false)
                .with_node_type(Role::Active)
                .with_rendezvous(rv.addr().to_string())
                .with_dht_msg(mailbox.addr().to_string())
                .with_identity(Identity::from_secret_bytes(&[secret; 32])),
        )
        .unwrap();
        net.start().unwrap();
        assert!(
            net.poll_until(Duration::from_secs(5), |n| n.mailbox_ready())
                .unwrap()
        );
        net
    };
    let mut nets = vec![active(21), active(22)];
    let alice_unl = nets[0].unl();
    nets[1].connect(&alice_unl);
    let outcome = outcome_of(&mut nets, 1, Duration::from_secs(5));
    assert!(outcome.connected, "{}", outcome.describe_tries());
    assert_eq!(outcome.method, Some(Method::Relay));
    assert!(turn_all(&mut nets, Duration::from_secs(5), |n| {
        n[0].connection_count() == 1
    }));
    let (alice_key, bob_key) = (nets[0].key(), nets[1].key());
    assert!(
        nets[1]
            .connections()
            .all(|c| c.peer_key() == Some(alice_key))
    );
    assert!(nets[0].connections().all(|c| c.peer_key() == Some(bob_key)));
    line_arrives(&mut nets, 1, 0, "through the relay, encrypted");
    line_arrives(&mut nets, 0, 1, "and back");
    turn_all(&mut nets, Duration::from_millis(300), |_| false);
    assert!(
        nets.iter_mut()
            .all(|n| n.connections().all(|c| c.is_open()))
    );
    rv.stop().unwrap();
}
