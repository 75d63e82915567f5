//! Who is on a connection, with keys: how connections start (plain or encrypted, to which
//! key), and the checks that tie `IAM`, `HELLO`, connects and path moves to the key a
//! connection's handshake proved.

use std::time::Instant;

use super::super::{ConnId, Core, CoreConfig, Direction, Event, Output, Security};
use crate::connect::TryResult;
use crate::core::tests::{addr, drain};
use crate::identity::Identity;
use wire::overlay::Control;
use wire::rendezvous::NodeType;
use wire::unl::v3::{AnyUnl, Scope, UnlAddr, UnlBody, UnlV3};

fn core(secret: u8, plaintext_dials: bool) -> Core {
    Core::new(CoreConfig {
        seed: u64::from(secret),
        listen_port: 4000,
        node_type: NodeType::Passive,
        identity: Some(Identity::from_secret_bytes(&[secret; 32])),
        plaintext_dials,
        ..CoreConfig::default()
    })
}

/// A passive node's signed UNL at `at`.
fn unl_v3(id: &Identity, at: &str) -> UnlV3 {
    let mut body = UnlBody::new(1);
    body.node_type = NodeType::Passive;
    body.addrs.push(UnlAddr {
        scope: Scope::Wan,
        addr: addr(at),
    });
    body.addrs.push(UnlAddr {
        scope: Scope::Lan,
        addr: addr(at),
    });
    UnlV3::sign(body, id.secret()).unwrap()
}

fn closes(out: &[Output], conn: ConnId) -> Option<String> {
    out.iter().find_map(|o| match o {
        Output::Close { conn: c, reason } if *c == conn => Some(reason.clone()),
        _ => None,
    })
}

fn iam(id: &Identity) -> String {
    Control::Iam {
        node: id.node_id(),
        nonce: None,
    }
    .to_string()
}

#[test]
fn dials_start_encrypted_to_the_unl_key_plain_for_v2_and_by_address_as_configured() {
    let now = Instant::now();
    let bob = Identity::from_secret_bytes(&[2; 32]);
    let mut alice = core(1, false);
    alice.connect_any(now, &AnyUnl::V3(unl_v3(&bob, "192.0.2.2:4000")));
    let dials: Vec<Security> = drain(&mut alice)
        .into_iter()
        .filter_map(|o| match o {
            Output::Dial { security, .. } => Some(security),
            _ => None,
        })
        .collect();
    assert_eq!(
        dials,
        vec![Security::Initiate {
            expect: Some(bob.key())
        }]
    );
    alice.connect_any(now, &AnyUnl::V2(unl_v3(&bob, "192.0.2.3:4000").to_v2()));
    assert!(drain(&mut alice).contains(&Output::Dial {
        addr: addr("192.0.2.3:4000"),
        security: Security::Plain
    }));
    alice.dial(addr("192.0.2.4:4000"));
    assert!(drain(&mut alice).contains(&Output::Dial {
        addr: addr("192.0.2.4:4000"),
        security: Security::Initiate { expect: None }
    }));
    let mut plain = core(3, true);
    plain.dial(addr("192.0.2.4:4000"));
    assert!(drain(&mut plain).contains(&Output::Dial {
        addr: addr("192.0.2.4:4000"),
        security: Security::Plain
    }));
}

#[test]
fn iam_and_hello_must_name_the_key_the_connection_proved() {
    let now = Instant::now();
    let (bob, mallory) = (
        Identity::from_secret_bytes(&[2; 32]),
        Identity::from_secret_bytes(&[3; 32]),
    );
    let mut alice = core(1, false);
    // The handshake proved bob; the peer claims mallory's node id.
    assert!(alice.handle_secure_open(
        now,
        ConnId(1),
        addr("10.0.0.2:1"),
        Direction::Inbound,
        bob.key()
    ));
    drain(&mut alice);
    alice.handle_line(now, ConnId(1), &iam(&mallory));
    let why = closes(&drain(&mut alice), ConnId(1)).expect("closed");
    assert!(
        why.contains("IAM names node") && why.contains(&bob.key().to_string()),
        "{why}"
    );
    // Its HELLO names another overlay id than bob's.
    assert!(alice.handle_secure_open(
        now,
        ConnId(2),
        addr("10.0.0.2:2"),
        Direction::Inbound,
        bob.key()
    ));
    drain(&mut alice);
    let hello = Control::Hello {
        peer: mallory.peer_id(),
        listen_port: 1,
    }
    .to_string();
    alice.handle_line(now, ConnId(2), &hello);
    let why = closes(&drain(&mut alice), ConnId(2)).expect("closed");
    assert!(why.contains("HELLO names peer"), "{why}");
    // The right ones pass.
    assert!(alice.handle_secure_open(
        now,
        ConnId(3),
        addr("10.0.0.2:3"),
        Direction::Inbound,
        bob.key()
    ));
    drain(&mut alice);
    alice.handle_line(now, ConnId(3), &iam(&bob));
    let hello = Control::Hello {
        peer: bob.peer_id(),
        listen_port: 1,
    }
    .to_string();
    alice.handle_line(now, ConnId(3), &hello);
    assert_eq!(closes(&drain(&mut alice), ConnId(3)), None);
    assert_eq!(alice.peer_key(ConnId(3)), Some(bob.key()));
}

#[test]
fn a_connect_to_a_v3_unl_never_wins_on_a_plain_or_other_key_connection() {
    let now = Instant::now();
    let bob = Identity::from_secret_bytes(&[2; 32]);
    let mut alice = core(1, false);
    let target = addr("192.0.2.2:4000");
    alice.connect_any(now, &AnyUnl::V3(unl_v3(&bob, "192.0.2.2:4000")));
    drain(&mut alice);
    // Something at bob's address answers in plain text and claims bob's node id.
    alice.handle_open(now, ConnId(1), target, Direction::Outbound);
    drain(&mut alice);
    alice.handle_line(now, ConnId(1), &iam(&bob));
    let out = drain(&mut alice);
    let why = closes(&out, ConnId(1)).expect("closed");
    assert!(why.contains("plain-text connection cannot prove"), "{why}");
    let outcome = out.iter().find_map(|o| match o {
        Output::Event(Event::ConnectDone(o)) => Some(o.clone()),
        _ => None,
    });
    let outcome = outcome.expect("the only try failed");
    assert!(!outcome.connected);
    assert!(
        outcome
            .tries
            .iter()
            .any(|t| matches!(&t.result, TryResult::Failed(w) if w.contains("plain-text")))
    );
}

#[test]
fn a_relayed_session_moves_only_to_a_path_that_proved_the_same_key() {
    let now = Instant::now();
    let (bob, mallory) = (
        Identity::from_secret_bytes(&[2; 32]),
        Identity::from_secret_bytes(&[3; 32]),
    );
    let mut alice = core(1, false);
    let relay = addr("10.0.0.1:8000");
    assert!(alice.handle_secure_open(now, ConnId(1), relay, Direction::Inbound, bob.key()));
    alice.mark_relayed(ConnId(1));
    alice.handle_line(now, ConnId(1), &iam(&bob));
    drain(&mut alice);
    // A direct path whose handshake proved mallory, though its IAM says bob: refused (the
    // IAM check closes it first).
    assert!(alice.handle_secure_open(
        now,
        ConnId(2),
        addr("192.0.2.2:4000"),
        Direction::Outbound,
        mallory.key()
    ));
    alice.handle_line(now, ConnId(2), &iam(&bob));
    assert!(!alice.owner_upgrade(now, ConnId(2)));
    // A plain-text path claiming bob: refused, the session stays relayed.
    assert!(alice.handle_open(now, ConnId(3), addr("192.0.2.2:4001"), Direction::Outbound));
    alice.handle_line(now, ConnId(3), &iam(&bob));
    drain(&mut alice);
    assert!(!alice.owner_upgrade(now, ConnId(3)));
    assert!(closes(&drain(&mut alice), ConnId(3)).is_some_and(|w| w.contains("no key")));
    assert!(alice.is_relayed(ConnId(1)));
    // Bob's own key on the direct path: the session moves.
    assert!(alice.handle_secure_open(
        now,
        ConnId(4),
        addr("192.0.2.2:4002"),
        Direction::Outbound,
        bob.key()
    ));
    alice.handle_line(now, ConnId(4), &iam(&bob));
    drain(&mut alice);
    assert!(alice.owner_upgrade(now, ConnId(4)));
    assert!(drain(&mut alice).contains(&Output::SwitchPath {
        session: ConnId(1),
        path: ConnId(4)
    }));
}

#[test]
fn a_dial_that_proved_the_unl_key_wins_when_the_peers_iam_arrives() {
    let now = Instant::now();
    let bob = Identity::from_secret_bytes(&[2; 32]);
    let mut alice = core(1, false);
    let target = addr("192.0.2.2:4000");
    let id = alice.connect_any(now, &AnyUnl::V3(unl_v3(&bob, "192.0.2.2:4000")));
    drain(&mut alice);
    assert!(alice.handle_secure_open(now, ConnId(1), target, Direction::Outbound, bob.key()));
    // Not yet: bob has the connection only once his side of the handshake is done, when he
    // sends his IAM.
    let done = |out: &[Output]| {
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::ConnectDone(o)) if o.id == id && o.connected))
    };
    assert!(!done(&drain(&mut alice)));
    alice.handle_line(now, ConnId(1), &iam(&bob));
    let out = drain(&mut alice);
    assert!(done(&out), "{out:?}");
    assert_eq!(closes(&out, ConnId(1)), None);
}
