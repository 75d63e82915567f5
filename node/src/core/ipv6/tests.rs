//! Happy eyeballs in virtual time: between two nodes whose signed UNLs both list an IPv6
//! address, the IPv6 try (our dial from the listening port, and the request that makes them
//! dial ours from theirs) starts at once and the IPv4 tries after the head start, or at once
//! when the IPv6 try fails first; an IPv4-only peer gets the IPv4 plan as before.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::IPV6_HEAD_START;
use crate::connect::{ConnectOutcome, Method, TryResult};
use crate::core::tests::{addr, drain};
use crate::core::{ConnId, Core, CoreConfig, Direction, Event, Output, Security};
use crate::identity::Identity;
use wire::overlay::Control;
use wire::rendezvous::NodeType;
use wire::unl::v3::{AnyUnl, Scope, UnlAddr, UnlBody, UnlV3};

const MAILBOX: &str = "10.0.0.5:8090";
const RENDEZVOUS: &str = "10.0.0.1:8000";
const T0_MS: u64 = 1_700_000_000_000;

/// A signed UNL: `role`, IPv4 `v4` (WAN and LAN) and, when given, IPv6 `v6`, port 4000.
fn unl(id: &Identity, role: NodeType, v4: &str, v6: Option<&str>) -> UnlV3 {
    let mut body = UnlBody::new(T0_MS);
    body.node_type = role;
    let mut addrs = vec![(Scope::Wan, format!("{v4}:4000"))];
    if let Some(v6) = v6 {
        addrs.push((Scope::Wan, format!("[{v6}]:4000")));
    }
    addrs.push((Scope::Lan, format!("{v4}:4000")));
    for (scope, a) in addrs {
        body.addrs.push(UnlAddr {
            scope,
            addr: addr(&a),
        });
    }
    UnlV3::sign(body, id.secret()).unwrap()
}

/// A node listening on 4000 with that signed UNL, a clock and its mailbox up.
fn node(secret: u8, unl_of: impl Fn(&Identity) -> UnlV3, now: Instant) -> (Core, UnlV3) {
    let id = Identity::from_secret_bytes(&[secret; 32]);
    let mine = unl_of(&id);
    let mut c = Core::new(CoreConfig {
        seed: u64::from(secret),
        listen_port: 4000,
        node_type: mine.body().node_type,
        rendezvous: vec![addr(RENDEZVOUS)],
        identity: Some(id),
        ..CoreConfig::default()
    });
    c.set_local_unl_v3(mine.clone());
    c.set_unix_time(now, T0_MS);
    c.enable_mailbox(now, addr(MAILBOX));
    drain(&mut c);
    crate::core::mailbox::register_for_test(&mut c, now);
    drain(&mut c);
    (c, mine)
}

fn dials(out: &[Output]) -> Vec<SocketAddr> {
    out.iter()
        .filter_map(|o| match o {
            Output::Dial { addr, .. } => Some(*addr),
            _ => None,
        })
        .collect()
}

fn punch_dials(out: &[Output]) -> Vec<(SocketAddr, u16, Direction, Security)> {
    out.iter()
        .filter_map(|o| match o {
            Output::PunchDial {
                addr,
                from_port,
                direction,
                security,
                ..
            } => Some((*addr, *from_port, *direction, *security)),
            _ => None,
        })
        .collect()
}

fn put(out: &[Output]) -> Option<String> {
    out.iter().find_map(|o| match o {
        Output::MailboxSend { line } if line.starts_with("PUT ") => {
            Some(line.splitn(3, ' ').nth(2).unwrap().to_owned())
        }
        _ => None,
    })
}

fn outcome(out: &[Output]) -> Option<ConnectOutcome> {
    out.iter().find_map(|o| match o {
        Output::Event(Event::ConnectDone(done)) => Some(done.clone()),
        _ => None,
    })
}

const ALICE_V6: &str = "[2001:db8:1::2]:4000";
const BOB_V6: &str = "[2001:db8:2::2]:4000";

#[test]
fn ipv6_goes_first_both_sides_dial_from_their_port_and_ipv4_waits_its_head_start() {
    let now = Instant::now();
    let (mut alice, alice_unl) = node(
        1,
        |id| unl(id, NodeType::Passive, "192.0.2.1", Some("2001:db8:1::2")),
        now,
    );
    let (mut bob, _) = node(
        2,
        |id| unl(id, NodeType::Active, "198.51.100.2", Some("2001:db8:2::2")),
        now,
    );
    let alice_key = *alice_unl.key();
    bob.connect_any(now, &AnyUnl::V3(alice_unl));
    let out = drain(&mut bob);
    // At once: the IPv6 dial from our listening port (we begin the handshake, to her key)
    // and the signed request; no IPv4 dial yet.
    assert_eq!(
        punch_dials(&out),
        vec![(
            addr(ALICE_V6),
            4000,
            Direction::Outbound,
            Security::Initiate {
                expect: Some(alice_key)
            }
        )]
    );
    assert!(dials(&out).is_empty(), "{out:?}");
    let request = put(&out).expect("a request in alice's mailbox");
    assert!(request.starts_with("REVERSE3 "), "{request}");
    // alice dials bob's IPv6 address from her port, reported inbound (bob begins), expecting
    // bob's key; bob is active, so not his IPv4 address.
    alice.handle_mailbox_line(now, &format!("MSG 1 - {request}"));
    let asked = drain(&mut alice);
    let bob_key = bob.local_unl_v3().unwrap().key().to_owned();
    assert_eq!(
        punch_dials(&asked),
        vec![(
            addr(BOB_V6),
            4000,
            Direction::Inbound,
            Security::Respond {
                expect: Some(bob_key)
            }
        )]
    );
    assert!(dials(&asked).is_empty(), "{asked:?}");
    // The head start ends: the IPv4 direct dial to the passive alice.
    assert_eq!(bob.poll_timeout(), Some(now + IPV6_HEAD_START));
    bob.handle_timeout(now + IPV6_HEAD_START);
    assert_eq!(dials(&drain(&mut bob)), vec![addr("192.0.2.1:4000")]);
    // The IPv6 connection opens (the two SYNs met) and alice says who she is: it wins.
    let t = now + Duration::from_millis(300);
    bob.handle_secure_open(t, ConnId(5), addr(ALICE_V6), Direction::Outbound, alice_key);
    drain(&mut bob);
    let iam = Control::Iam {
        node: alice_key.node_id(),
        nonce: None,
    };
    bob.handle_line(t, ConnId(5), &iam.to_string());
    let done = outcome(&drain(&mut bob)).expect("an outcome");
    assert_eq!(done.method, Some(Method::Ipv6));
    assert_eq!(done.addr, Some(addr(ALICE_V6)));
    let direct = done
        .tries
        .iter()
        .find(|t| t.method == Method::Direct)
        .unwrap();
    assert_eq!(direct.result, TryResult::Cancelled);
    assert_eq!(direct.started_ms, Some(250));
}

#[test]
fn a_failed_ipv6_try_starts_ipv4_at_once() {
    let now = Instant::now();
    let (_, alice_unl) = node(
        1,
        |id| unl(id, NodeType::Passive, "192.0.2.1", Some("2001:db8:1::2")),
        now,
    );
    let (mut bob, _) = node(
        2,
        |id| unl(id, NodeType::Active, "198.51.100.2", Some("2001:db8:2::2")),
        now,
    );
    bob.connect_any(now, &AnyUnl::V3(alice_unl));
    drain(&mut bob);
    let t = now + Duration::from_millis(20);
    bob.handle_dial_failed(t, addr(ALICE_V6), "network unreachable");
    assert_eq!(dials(&drain(&mut bob)), vec![addr("192.0.2.1:4000")]);
}

#[test]
fn an_ipv4_only_peer_gets_the_ipv4_plan_and_a_passive_asker_both_dials() {
    let now = Instant::now();
    // alice has no IPv6 address: bob dials her IPv4 address at once, no IPv6 try.
    let (mut alice, alice_unl) = node(1, |id| unl(id, NodeType::Passive, "192.0.2.1", None), now);
    let (mut bob, _) = node(
        2,
        |id| unl(id, NodeType::Passive, "198.51.100.2", Some("2001:db8:2::2")),
        now,
    );
    bob.connect_any(now, &AnyUnl::V3(alice_unl));
    let out = drain(&mut bob);
    assert_eq!(dials(&out), vec![addr("192.0.2.1:4000")]);
    assert!(punch_dials(&out).is_empty(), "{out:?}");
    // Asked by the dual-stack bob (the reverse try of the second wave posts the request),
    // the IPv4-only alice dials only his IPv4 address.
    let later = now + Duration::from_secs(1);
    bob.handle_timeout(later);
    let request = put(&drain(&mut bob)).expect("the reverse try's request");
    alice.handle_mailbox_line(later, &format!("MSG 1 - {request}"));
    let asked = drain(&mut alice);
    assert!(punch_dials(&asked).is_empty(), "{asked:?}");
    assert_eq!(dials(&asked), vec![addr("198.51.100.2:4000")]);
    // A passive dual-stack asker is dialed on both families by a dual-stack target.
    let (mut target, target_unl) = node(
        5,
        |id| unl(id, NodeType::Passive, "192.0.2.5", Some("2001:db8:5::2")),
        now,
    );
    bob.connect_any(later, &AnyUnl::V3(target_unl));
    let request = put(&drain(&mut bob)).expect("a request");
    target.handle_mailbox_line(later, &format!("MSG 1 - {request}"));
    let asked = drain(&mut target);
    assert_eq!(punch_dials(&asked).len(), 1);
    assert_eq!(punch_dials(&asked)[0].0, addr(BOB_V6));
    assert_eq!(dials(&asked), vec![addr("198.51.100.2:4000")]);
}
