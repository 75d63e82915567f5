//! Origin-signed broadcasts on loopback: `broadcast_signed` reaches a node two hops away with
//! its writer's key; a forged one (a peer that claims someone else's key) is dropped at the
//! first node and goes no further; an ordinary broadcast carries no signer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration_tests::turn_all;
use node::broadcast::SignedBroadcast;
use node::identity::Identity;
use node::wire::overlay::MessageId;
use node::{Config, Net, Received};

fn node(secret: u8) -> Net {
    let mut net = Net::new(
        Config::new()
            .with_bind("127.0.0.1".parse().unwrap())
            .with_identity(Identity::from_secret_bytes(&[secret; 32])),
    )
    .unwrap();
    net.start().unwrap();
    net
}

fn received(net: &mut Net) -> Vec<Received> {
    net.connections()
        .flat_map(|c| c.received().collect::<Vec<_>>())
        .collect()
}

#[test]
fn a_signed_broadcast_names_its_writer_two_hops_away_and_a_forged_one_stops_at_the_first() {
    // alice - bob - carol: alice's lines reach carol only through bob.
    let mut nets = vec![node(1), node(2), node(3)];
    let bob = nets[1].local_addr().unwrap();
    nets[0].connect(bob);
    nets[2].connect(bob);
    assert!(turn_all(&mut nets, Duration::from_secs(5), |n| {
        n[1].connection_count() == 2 && n[0].connection_count() == 1 && n[2].connection_count() == 1
    }));
    let alice_key = nets[0].key();

    nets[0].broadcast_signed("signed by alice").unwrap();
    nets[0].broadcast("not signed").unwrap();
    let mut at_carol = Vec::new();
    assert!(turn_all(&mut nets, Duration::from_secs(5), |n| {
        at_carol.extend(received(&mut n[2]));
        at_carol.len() >= 2
    }));
    assert!(
        at_carol.contains(&Received {
            line: "signed by alice".to_owned(),
            signer: Some(alice_key),
        }),
        "{at_carol:?}"
    );
    assert!(
        at_carol.contains(&Received {
            line: "not signed".to_owned(),
            signer: None,
        }),
        "{at_carol:?}"
    );

    // mallory, a plain-text peer of bob's, floods a line in alice's name with her own
    // signature: bob drops it, carol never sees it.
    let mallory = Identity::from_secret_bytes(&[66; 32]);
    let now_ms = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let id = MessageId(0x0bad_cafe);
    let forged = SignedBroadcast::sign(&mallory, id, now_ms, "pay mallory")
        .to_string()
        .replace(&mallory.key().to_string(), &alice_key.to_string());
    let genuine = SignedBroadcast::sign(&mallory, MessageId(0x600d), now_ms, "mallory, signed");
    let mut raw = TcpStream::connect(bob).unwrap();
    raw.write_all(format!("P2P/1 BCAST {id} 8 {forged}\r\n").as_bytes())
        .unwrap();
    raw.write_all(format!("P2P/1 BCAST {} 8 {genuine}\r\n", MessageId(0x600d)).as_bytes())
        .unwrap();
    let mut seen = Vec::new();
    assert!(turn_all(&mut nets, Duration::from_secs(5), |n| {
        seen.extend(received(&mut n[2]));
        seen.iter().any(|r| r.line == "mallory, signed")
    }));
    // Mallory's own signed line arrives with her key; the forged one arrived nowhere.
    turn_all(&mut nets, Duration::from_millis(200), |n| {
        seen.extend(received(&mut n[2]));
        seen.extend(received(&mut n[0]));
        false
    });
    assert!(seen.contains(&Received {
        line: "mallory, signed".to_owned(),
        signer: Some(mallory.key()),
    }));
    assert!(
        !seen.iter().any(|r| r.line.contains("pay mallory")),
        "{seen:?}"
    );
    let at_bob = received(&mut nets[1]);
    assert!(
        !at_bob.iter().any(|r| r.line.contains("pay mallory")),
        "{at_bob:?}"
    );
}
