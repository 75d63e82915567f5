//! Signed reverse-connect and relay requests in virtual time: the asking side signs, the
//! asked side acts only on requests that pass every check (and then expects the sender's
//! key on the connection), and refuses forged, wrongly signed, replayed, stale, misaddressed
//! and excess ones with the reason and what the check found.

use std::time::{Duration, Instant};

use super::super::{Core, CoreConfig, Event, Output, RequestCheck, Security};
use crate::core::tests::{addr, drain};
use crate::identity::Identity;
use wire::overlay::Nonce;
use wire::rendezvous::NodeType;
use wire::signal::{RequestKind, SignedRequest};
use wire::unl::v3::{AnyUnl, Scope, UnlAddr, UnlBody, UnlV3};

const MAILBOX: &str = "10.0.0.5:8090";
const RENDEZVOUS: &str = "10.0.0.1:8000";
/// The wall clock at the tests' `now` (Unix milliseconds).
const T0_MS: u64 = 1_700_000_000_000;

fn unl(id: &Identity, ip: &str) -> UnlV3 {
    let mut body = UnlBody::new(T0_MS);
    body.node_type = NodeType::Passive;
    for scope in [Scope::Wan, Scope::Lan] {
        body.addrs.push(UnlAddr {
            scope,
            addr: addr(&format!("{ip}:4000")),
        });
    }
    UnlV3::sign(body, id.secret()).unwrap()
}

/// A passive node with a signed UNL at `ip`, a clock, and its mailbox up.
fn node(secret: u8, ip: &str, now: Instant) -> (Core, Identity) {
    let id = Identity::from_secret_bytes(&[secret; 32]);
    let mut c = Core::new(CoreConfig {
        seed: u64::from(secret),
        listen_port: 4000,
        node_type: NodeType::Passive,
        rendezvous: vec![addr(RENDEZVOUS)],
        max_reverse_per_minute: 20,
        identity: Some(id.clone()),
        ..CoreConfig::default()
    });
    c.set_local_unl_v3(unl(&id, ip));
    c.set_unix_time(now, T0_MS);
    c.enable_mailbox(now, addr(MAILBOX));
    drain(&mut c);
    crate::core::mailbox::register_for_test(&mut c, now);
    drain(&mut c);
    (c, id)
}

/// A message from the mailbox (`from`: the sender the server names, `-`: none).
fn deliver(c: &mut Core, now: Instant, n: u64, from: &str, body: &str) -> Vec<Output> {
    c.handle_mailbox_line(now, &format!("MSG {n} {from} {body}"));
    drain(c)
}

fn checks(out: &[Output]) -> Vec<(RequestCheck, bool, Option<String>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(Event::ReverseRequested {
                check,
                signed,
                refused,
                ..
            }) => Some((*check, *signed, refused.clone())),
            _ => None,
        })
        .collect()
}

fn request(
    kind: RequestKind,
    from: &Identity,
    from_unl: &UnlV3,
    to: &Identity,
    at_ms: u64,
    nonce: u8,
) -> String {
    SignedRequest::sign(
        kind,
        from_unl.clone(),
        to.node_id(),
        at_ms,
        Nonce([nonce; 32]),
        from.secret(),
    )
    .unwrap()
    .to_string()
}

#[test]
fn a_connect_to_a_v3_unl_posts_a_signed_request_and_the_target_dials_back_to_that_key() {
    let now = Instant::now();
    let (mut alice, alice_id) = node(1, "192.0.2.1", now);
    let (mut bob, bob_id) = node(2, "198.51.100.2", now);
    // Bob is active (not reachable): alice's only way is the reverse connect... from bob's
    // side: bob connects to alice, a passive node; here alice connects to an active bob.
    let mut bob_unl_body = unl(&bob_id, "198.51.100.2").body().clone();
    bob_unl_body.node_type = NodeType::Active;
    let bob_unl = UnlV3::sign(bob_unl_body, bob_id.secret()).unwrap();
    alice.connect_any(now, &AnyUnl::V3(bob_unl));
    let out = drain(&mut alice);
    let put = out
        .iter()
        .find_map(|o| match o {
            Output::MailboxSend { line } if line.starts_with("PUT ") => {
                Some(line.splitn(3, ' ').nth(2).unwrap().to_owned())
            }
            _ => None,
        })
        .expect("a request to bob's mailbox");
    assert!(put.starts_with("REVERSE3 "), "{put}");
    // Bob checks it and dials alice, expecting her key.
    let out = deliver(&mut bob, now, 1, "-", &put);
    assert_eq!(checks(&out), vec![(RequestCheck::Accepted, true, None)]);
    assert!(
        out.contains(&Output::Dial {
            addr: addr("192.0.2.1:4000"),
            security: Security::Initiate {
                expect: Some(alice_id.key())
            }
        }),
        "{out:?}"
    );
}

#[test]
fn forged_wrongly_signed_replayed_stale_and_misaddressed_requests_are_refused() {
    let now = Instant::now();
    let (mut bob, bob_id) = node(2, "198.51.100.2", now);
    let alice = Identity::from_secret_bytes(&[1; 32]);
    let alice_unl = unl(&alice, "192.0.2.1");
    let good = request(RequestKind::Reverse, &alice, &alice_unl, &bob_id, T0_MS, 1);

    // Forged: one character of the signature changed.
    let mut forged = good.clone().into_bytes();
    let at = forged.len() - 5;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let out = deliver(&mut bob, now, 1, "-", &String::from_utf8(forged).unwrap());
    assert!(
        matches!(checks(&out)[..], [(RequestCheck::Forged, true, Some(_))]),
        "{out:?}"
    );

    // Wrongly signed: mallory signs a request and puts alice's UNL in it.
    let mallory = Identity::from_secret_bytes(&[66; 32]);
    let mallory_unl = unl(&mallory, "203.0.113.66");
    let by_mallory = request(
        RequestKind::Reverse,
        &mallory,
        &mallory_unl,
        &bob_id,
        T0_MS,
        2,
    );
    let swapped = by_mallory.replace(&mallory_unl.to_string(), &alice_unl.to_string());
    let out = deliver(&mut bob, now, 2, "-", &swapped);
    assert!(
        matches!(checks(&out)[..], [(RequestCheck::Forged, true, Some(_))]),
        "{out:?}"
    );

    // For another node: carol's request shown to bob.
    let carol = Identity::from_secret_bytes(&[3; 32]);
    let for_carol = request(RequestKind::Reverse, &alice, &alice_unl, &carol, T0_MS, 3);
    let out = deliver(&mut bob, now, 3, "-", &for_carol);
    assert!(
        matches!(checks(&out)[..], [(RequestCheck::NotForUs, true, Some(_))]),
        "{out:?}"
    );

    // Stale and from the future (the window is 2 minutes).
    let old = request(
        RequestKind::Reverse,
        &alice,
        &alice_unl,
        &bob_id,
        T0_MS - 180_000,
        4,
    );
    let out = deliver(&mut bob, now, 4, "-", &old);
    assert!(
        matches!(checks(&out)[..], [(RequestCheck::Stale, true, Some(_))]),
        "{out:?}"
    );
    let ahead = request(
        RequestKind::Reverse,
        &alice,
        &alice_unl,
        &bob_id,
        T0_MS + 180_000,
        5,
    );
    let out = deliver(&mut bob, now, 5, "-", &ahead);
    assert!(
        matches!(checks(&out)[..], [(RequestCheck::Stale, true, Some(_))]),
        "{out:?}"
    );

    // Nothing was dialed so far; the good one is acted on once, its replay refused.
    let out = deliver(&mut bob, now, 6, "-", &good);
    assert!(
        matches!(checks(&out)[..], [(RequestCheck::Accepted, true, None)]),
        "{out:?}"
    );
    let later = now + Duration::from_secs(10);
    let out = deliver(&mut bob, later, 7, "-", &good);
    let found = checks(&out);
    assert!(
        matches!(found[..], [(RequestCheck::Replayed, true, Some(_))]),
        "{out:?}"
    );
    assert!(
        found[0].2.as_ref().unwrap().contains("replayed"),
        "{found:?}"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Dial { .. })));
}

#[test]
fn signed_requests_are_rate_limited_per_key_and_per_ip() {
    let now = Instant::now();
    let (mut bob, bob_id) = node(2, "198.51.100.2", now);
    let alice = Identity::from_secret_bytes(&[1; 32]);
    let alice_unl = unl(&alice, "192.0.2.1");
    // 20 a minute: a burst of 4 per key.
    let mut accepted = 0;
    let mut limited = 0;
    for n in 0..10u8 {
        let r = request(
            RequestKind::Reverse,
            &alice,
            &alice_unl,
            &bob_id,
            T0_MS,
            10 + n,
        );
        for (check, _, _) in checks(&deliver(&mut bob, now, u64::from(n), "-", &r)) {
            match check {
                RequestCheck::Accepted => accepted += 1,
                RequestCheck::RateLimited => limited += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!((accepted, limited), (4, 6));
    // Other keys aimed at the same IP: that IP's burst (4) is spent already.
    let eve = Identity::from_secret_bytes(&[5; 32]);
    let eve_unl = unl(&eve, "192.0.2.1");
    let r = request(RequestKind::Reverse, &eve, &eve_unl, &bob_id, T0_MS, 99);
    let found = checks(&deliver(&mut bob, now, 99, "-", &r));
    assert!(
        matches!(found[..], [(RequestCheck::RateLimited, true, Some(ref why))] if why.contains("192.0.2.1")),
        "{found:?}"
    );
    // Another key at another IP still gets through.
    let (carol, carol_ip) = (Identity::from_secret_bytes(&[6; 32]), "192.0.2.6");
    let r = request(
        RequestKind::Reverse,
        &carol,
        &unl(&carol, carol_ip),
        &bob_id,
        T0_MS,
        100,
    );
    let found = checks(&deliver(&mut bob, now, 100, "-", &r));
    assert!(
        matches!(found[..], [(RequestCheck::Accepted, true, None)]),
        "{found:?}"
    );
}

#[test]
fn a_signed_relay_request_begins_a_handshake_to_the_senders_key_only_through_our_rendezvous() {
    let now = Instant::now();
    let (mut bob, bob_id) = node(2, "198.51.100.2", now);
    let alice = Identity::from_secret_bytes(&[1; 32]);
    let alice_unl = unl(&alice, "192.0.2.1");
    let elsewhere = RequestKind::Relay {
        relay: addr("203.0.113.9:8000"),
    };
    let r = request(elsewhere, &alice, &alice_unl, &bob_id, T0_MS, 1);
    let out = deliver(&mut bob, now, 1, "-", &r);
    assert!(
        matches!(checks(&out)[..], [(RequestCheck::Refused, true, Some(ref why))] if why.contains("not one of our rendezvous")),
        "{out:?}"
    );
    let ours = RequestKind::Relay {
        relay: addr(RENDEZVOUS),
    };
    let r = request(ours, &alice, &alice_unl, &bob_id, T0_MS, 2);
    let out = deliver(&mut bob, now, 2, "-", &r);
    assert!(
        matches!(checks(&out)[..], [(RequestCheck::Accepted, true, None)]),
        "{out:?}"
    );
    let security = out.iter().find_map(|o| match o {
        Output::RelayDial { security, .. } => Some(*security),
        _ => None,
    });
    // The asked side begins the handshake through the relay, expecting the sender's key.
    assert_eq!(
        security,
        Some(Security::Initiate {
            expect: Some(alice.key())
        })
    );
}
