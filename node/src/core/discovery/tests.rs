//! Zero-config in virtual time: the role an auto node chooses from what the rendezvous tells
//! it, its WAN address and clock samples, the punch from a registered node's listening port
//! with the eager dial, and which methods a connect starts when, from both UNLs' facts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::{
    ConnId, Core, CoreConfig, Direction, Event, Output, QueryReply, Security, SessionId,
};
use crate::connect::{ConnectOutcome, Method};
use crate::core::tests::{addr, drain};
use wire::nat::NatMapping;
use wire::overlay::Control;
use wire::rendezvous::NodeType;
use wire::unl::{Forwarding, NatType, Unl};

const RENDEZVOUS: &str = "10.0.0.1:8000";
const MAILBOX: &str = "10.0.0.50:8090";

fn auto_core(seed: u64) -> Core {
    Core::new(CoreConfig {
        seed,
        listen_port: 4000,
        node_type: NodeType::Active,
        rendezvous: vec![addr(RENDEZVOUS)],
        ..CoreConfig::default()
    })
}

fn events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn role_chosen(out: &[Output]) -> Option<(NodeType, String)> {
    events(out).into_iter().find_map(|e| match e {
        Event::RoleChosen { role, reason } => Some((role, reason)),
        _ => None,
    })
}

fn sent(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::SessionSend { line, .. } => Some(line.clone()),
            _ => None,
        })
        .collect()
}

fn opened(outputs: &[Output]) -> Option<(SessionId, Option<u16>)> {
    outputs.iter().find_map(|o| match o {
        Output::SessionOpen {
            session, bind_port, ..
        } => Some((*session, *bind_port)),
        _ => None,
    })
}

fn punch_dials(outputs: &[Output]) -> Vec<(SocketAddr, u16, Instant)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::PunchDial {
                addr,
                from_port,
                at,
                ..
            } => Some((*addr, *from_port, *at)),
            _ => None,
        })
        .collect()
}

fn outcome(outputs: &[Output]) -> Option<ConnectOutcome> {
    outputs.iter().find_map(|o| match o {
        Output::Event(Event::ConnectDone(out)) => Some(out.clone()),
        _ => None,
    })
}

/// Runs the five NAT probes of an auto node: the server sees `observed_ip` and the ports
/// `seen(i)` for local ports 40000 + 3i from `local_ip`.
fn detect(
    c: &mut Core,
    now: Instant,
    local_ip: &str,
    observed_ip: &str,
    seen: impl Fn(u16) -> u16,
) -> Vec<Output> {
    let mut out = drain(c);
    let mut all = Vec::new();
    for i in 0..5u16 {
        let Some(Output::Query { id, lines, .. }) = out
            .iter()
            .find(|o| matches!(o, Output::Query { .. }))
            .cloned()
        else {
            panic!("probe {i}: {out:?}")
        };
        assert_eq!(lines, vec!["SOURCE ADDR".to_owned()]);
        c.handle_query_done(
            now,
            id,
            Ok(QueryReply {
                local: addr(&format!("{local_ip}:{}", 40000 + i * 3)),
                line: Some(format!("REMOTE ADDR {observed_ip} {} 1000.0", seen(i))),
            }),
        );
        all.extend(out);
        out = drain(c);
    }
    all.extend(out);
    all
}

#[test]
fn a_predictable_nat_makes_an_auto_node_simultaneous_with_its_observed_wan_address() {
    let now = Instant::now();
    let mut c = auto_core(1);
    c.enable_auto(now);
    assert!(c.role_pending());
    let out = detect(&mut c, now, "192.168.1.2", "203.0.113.9", |i| 40000 + i * 3);
    let evs = events(&out);
    assert!(evs.contains(&Event::WanAddress {
        ip: "203.0.113.9".parse().unwrap(),
        server: addr(RENDEZVOUS),
        previous: None
    }));
    let (role, reason) = role_chosen(&out).expect("a role");
    assert_eq!(role, NodeType::Simultaneous);
    assert!(reason.contains("predictable"), "{reason}");
    assert!(!c.role_pending());
    assert_eq!(c.observed_ip(), Some("203.0.113.9".parse().unwrap()));
    // The registration opens from the listening port and asks our extension: the server
    // answered it during the detection.
    let (session, bind) = opened(&out).expect("a registration");
    assert_eq!(bind, Some(4000));
    c.handle_session_open(now, session, addr("192.168.1.2:4000"));
    assert_eq!(sent(&drain(&mut c)), vec!["SOURCE ADDR"]);
    // Its answer registers us and is a clock sample over the measured round trip: the
    // server's clock read 1000.5 half a round trip (20 ms) before our 1000.0 + 0.04.
    let later = now + Duration::from_millis(40);
    c.handle_session_line(
        later,
        1000.04,
        session,
        "REMOTE ADDR 203.0.113.9 4000 1000.5",
    );
    let out = drain(&mut c);
    assert_eq!(sent(&out), vec!["SIMULTANEOUS READY 4000 32"]);
    let sample = out.iter().find_map(|o| match o {
        Output::ClockSample { offset, rtt, .. } => Some((*offset, *rtt)),
        _ => None,
    });
    let (offset, rtt) = sample.expect("a clock sample");
    assert_eq!(rtt, Duration::from_millis(40));
    assert!((offset - 0.48).abs() < 1e-9, "{offset}");
    assert!(c.registered());
}

#[test]
fn no_nat_makes_an_auto_node_passive_and_a_random_nat_active() {
    let now = Instant::now();
    let mut open = auto_core(1);
    open.enable_auto(now);
    let out = detect(&mut open, now, "198.51.100.7", "198.51.100.7", |i| {
        40000 + i * 3
    });
    let (role, reason) = role_chosen(&out).expect("a role");
    assert_eq!(role, NodeType::Passive, "{reason}");
    assert!(reason.contains("no NAT"), "{reason}");
    assert!(
        opened(&out).is_none(),
        "a passive node keeps no registration"
    );

    let mut random = auto_core(2);
    random.enable_auto(now);
    let ports = [51234, 7001, 33333, 12000, 60001];
    let out = detect(&mut random, now, "192.168.1.2", "203.0.113.9", |i| {
        ports[usize::from(i)]
    });
    let (role, reason) = role_chosen(&out).expect("a role");
    assert_eq!(role, NodeType::Active);
    assert!(reason.contains("random"), "{reason}");
    assert_eq!(random.nat_mapping(), Some(NatMapping::Random));
}

#[test]
fn a_failed_detection_leaves_the_node_active_and_is_retried() {
    let now = Instant::now();
    let mut c = auto_core(1);
    c.enable_auto(now);
    let out = drain(&mut c);
    let Some(Output::Query { id, .. }) = out.first().cloned() else {
        panic!("{out:?}")
    };
    c.handle_query_done(now, id, Err("connection refused".to_owned()));
    let out = drain(&mut c);
    let (role, reason) = role_chosen(&out).expect("a role");
    assert_eq!(role, NodeType::Active);
    assert!(reason.contains("retrying"), "{reason}");
    // An advertise meanwhile names the server that failed, not "not passive".
    c.advertise(now);
    let failed = events(&drain(&mut c)).into_iter().find_map(|e| match e {
        Event::RendezvousFailed { errors, .. } => Some(errors),
        _ => None,
    });
    let errors = failed.expect("the advertise fails");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, addr(RENDEZVOUS));
    assert!(errors[0].1.contains("connection refused"), "{errors:?}");
    assert!(errors[0].1.contains("auto role is undecided"), "{errors:?}");
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(5)));
    c.handle_timeout(now + Duration::from_secs(5));
    assert!(
        drain(&mut c)
            .iter()
            .any(|o| matches!(o, Output::Query { lines, .. } if lines[0] == "SOURCE ADDR"))
    );
}

#[test]
fn a_new_wan_address_runs_the_detection_again() {
    let now = Instant::now();
    let mut c = auto_core(1);
    c.enable_auto(now);
    let out = detect(&mut c, now, "192.168.1.2", "203.0.113.9", |i| 40000 + i * 3);
    let (session, _) = opened(&out).unwrap();
    c.handle_session_open(now, session, addr("192.168.1.2:4000"));
    c.handle_session_line(now, 1000.0, session, "REMOTE ADDR 203.0.113.9 4000 1000.0");
    drain(&mut c);
    // A ping later the server sees another address: a new lease, or a new network.
    let t = now + Duration::from_secs(30);
    c.handle_timeout(t);
    assert_eq!(sent(&drain(&mut c)), vec!["SOURCE ADDR"]);
    c.handle_session_line(t, 1030.0, session, "REMOTE ADDR 203.0.113.77 4000 1030.0");
    let out = drain(&mut c);
    assert!(events(&out).contains(&Event::WanAddress {
        ip: "203.0.113.77".parse().unwrap(),
        server: addr(RENDEZVOUS),
        previous: Some("203.0.113.9".parse().unwrap())
    }));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Query { lines, .. } if lines[0] == "SOURCE ADDR")),
        "a new detection: {out:?}"
    );
}

/// An auto node behind a port-preserving NAT at 203.0.113.9, registered from its listening
/// port 4000 (external 4000), its mailbox up when `mailbox`. Returns it and its registration.
fn registered_auto(seed: u64, now: Instant, mailbox: bool) -> (Core, SessionId) {
    let mut c = auto_core(seed);
    c.enable_auto(now);
    let out = detect(&mut c, now, "192.168.1.2", "203.0.113.9", |i| 40000 + i * 3);
    let (session, _) = opened(&out).unwrap();
    c.handle_session_open(now, session, addr("192.168.1.2:4000"));
    c.handle_session_line(
        now + Duration::from_millis(40),
        1000.0,
        session,
        "REMOTE ADDR 203.0.113.9 4000 1000.0",
    );
    drain(&mut c);
    c.set_local_unl(unl_of(&c, NodeType::Simultaneous, "203.0.113.9", 4000));
    if mailbox {
        c.enable_mailbox(now, addr(MAILBOX));
        drain(&mut c);
        crate::core::mailbox::register_for_test(&mut c, now);
        drain(&mut c);
    }
    (c, session)
}

fn unl_of(c: &Core, node_type: NodeType, wan: &str, port: u16) -> Unl {
    Unl {
        node_id: Some(c.node_id()),
        node_type,
        nat_type: NatType::Preserving,
        forwarding: Forwarding::Forwarded,
        port,
        wan_ip: wan.parse().unwrap(),
        lan_ip: "192.168.1.2".parse().unwrap(),
    }
}

#[test]
fn a_registered_node_punches_from_its_listening_port_at_once_and_wins_before_the_meeting() {
    let now = Instant::now();
    let (mut bob, session) = registered_auto(2, now, false);
    let alice = auto_core(1);
    let alice_unl = unl_of(&alice, NodeType::Simultaneous, "192.0.2.1", 5000);
    let id = bob.connect_unl(now, alice_unl);
    let out = drain(&mut bob);
    // No new session, no SOURCE round trip: CANDIDATE on the registration, with the external
    // port the server already sees, and a dial to alice from our listening port right away.
    assert!(opened(&out).is_none(), "{out:?}");
    assert_eq!(sent(&out), vec!["CANDIDATE 192.0.2.1:5000 TCP 4000"]);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::SessionSend { session: s, .. } if *s == session))
    );
    assert_eq!(punch_dials(&out), vec![(addr("192.0.2.1:5000"), 4000, now)]);
    bob.handle_session_line(now, 1000.0, session, "PREDICTION SET");
    assert!(drain(&mut bob).is_empty());
    // alice's NAT dropped our early SYN; her own SYN (sent on CHALLENGE) got through ours:
    // the connection opens before the meeting, and counts once she says who she is.
    let t = now + Duration::from_millis(80);
    bob.handle_open(t, ConnId(7), addr("192.0.2.1:5000"), Direction::Outbound);
    drain(&mut bob);
    let iam = Control::Iam {
        node: alice.node_id(),
        nonce: None,
    };
    bob.handle_line(t, ConnId(7), &iam.to_string());
    let done = outcome(&drain(&mut bob)).expect("an outcome");
    assert_eq!((done.id, done.method), (id, Some(Method::Punch)));
    // The FIGHT that follows belongs to no running candidacy any more.
    bob.handle_session_line(t, 1000.1, session, "FIGHT 192.0.2.1 5000 TCP 1000.2");
    assert!(punch_dials(&drain(&mut bob)).is_empty());
    assert!(bob.registered(), "the registration is untouched");
}

#[test]
fn an_eager_dial_that_is_reset_waits_for_the_meeting() {
    let now = Instant::now();
    let (mut bob, session) = registered_auto(2, now, false);
    let alice = auto_core(1);
    let alice_unl = unl_of(&alice, NodeType::Simultaneous, "192.0.2.1", 5000);
    let id = bob.connect_unl(now, alice_unl);
    drain(&mut bob);
    bob.handle_session_line(now, 1000.0, session, "PREDICTION SET");
    // alice's router answered our early SYN with a reset: not a failure yet.
    let t = now + Duration::from_millis(80);
    bob.handle_dial_failed(t, addr("192.0.2.1:5000"), "connection refused");
    assert!(outcome(&drain(&mut bob)).is_none());
    bob.handle_session_line(t, 1000.08, session, "FIGHT 192.0.2.1 5000 TCP 1000.2");
    let out = drain(&mut bob);
    let dials = punch_dials(&out);
    assert_eq!(dials.len(), 1);
    let (to, from, at) = dials[0];
    assert_eq!((to, from), (addr("192.0.2.1:5000"), 4000));
    let wait = at - t;
    assert!(
        wait > Duration::from_millis(119) && wait < Duration::from_millis(121),
        "{wait:?}"
    );
    bob.handle_open(at, ConnId(8), to, Direction::Outbound);
    drain(&mut bob);
    let iam = Control::Iam {
        node: alice.node_id(),
        nonce: None,
    };
    bob.handle_line(at, ConnId(8), &iam.to_string());
    let done = outcome(&drain(&mut bob)).expect("an outcome");
    assert_eq!((done.id, done.method), (id, Some(Method::Punch)));
}

#[test]
fn a_refused_candidacy_on_the_registration_fails_the_punch_not_the_registration() {
    let now = Instant::now();
    let (mut bob, session) = registered_auto(2, now, false);
    let alice = auto_core(1);
    let id = bob.connect_unl(
        now,
        unl_of(&alice, NodeType::Simultaneous, "192.0.2.1", 5000),
    );
    drain(&mut bob);
    bob.handle_session_line(
        now,
        1000.0,
        session,
        "ERROR CANDIDATE: no simultaneous node registered at 192.0.2.1:5000",
    );
    let done = outcome(&drain(&mut bob)).expect("nothing else can work: an outcome");
    assert_eq!(done.id, id);
    assert!(!done.connected);
    assert!(done.error.unwrap().contains("no simultaneous node"));
    assert!(bob.registered());
}

#[test]
fn methods_start_from_both_sides_facts() {
    let now = Instant::now();
    // Two active nodes: nothing but the relay can work, so it starts at once.
    let (mut bob, _) = registered_auto(2, now, true);
    bob.set_reachability(NodeType::Active, None);
    let carol = auto_core(3);
    bob.connect_unl(now, unl_of(&carol, NodeType::Active, "192.0.2.3", 0));
    let out = drain(&mut bob);
    assert!(
        out.iter().any(|o| matches!(o, Output::RelayDial { .. })),
        "{out:?}"
    );

    // A passive node: dialed at once; the relay waits about 4 round trips to the rendezvous
    // (40 ms measured) and one SYN retransmission.
    let (mut bob, _) = registered_auto(4, now, true);
    let dave = auto_core(5);
    let mut dave_unl = unl_of(&dave, NodeType::Passive, "192.0.2.5", 7000);
    dave_unl.lan_ip = dave_unl.wan_ip;
    bob.connect_unl(now, dave_unl);
    let out = drain(&mut bob);
    assert!(out.contains(&Output::Dial {
        addr: addr("192.0.2.5:7000"),
        security: Security::Plain,
    }));
    assert!(!out.iter().any(|o| matches!(o, Output::RelayDial { .. })));
    let relay_at = now + Duration::from_millis(160) + Duration::from_secs(1);
    assert_eq!(bob.poll_timeout(), Some(relay_at));

    // From behind a NAT that maps ports at random, the punch is a birthday punch: the relay
    // starts at once beside it, and the session moves when the punch opens.
    let (mut eve, _) = registered_auto(6, now, true);
    eve.set_nat_mapping(NatMapping::Random);
    eve.connect_unl(
        now,
        unl_of(&dave, NodeType::Simultaneous, "192.0.2.5", 7000),
    );
    let out = drain(&mut eve);
    assert!(
        out.iter().any(|o| matches!(o, Output::RelayDial { .. })),
        "{out:?}"
    );
    assert!(opened(&out).is_some(), "the candidacy session opens too");
}

#[test]
fn twenty_relay_requests_in_a_row_from_one_peer_are_all_acted_on() {
    let now = Instant::now();
    let (mut alice, _) = registered_auto(1, now, true);
    let bob = auto_core(2);
    let from = bob.node_id().mailbox_id();
    let mut acted = 0;
    for i in 0..20u8 {
        let request = crate::connect::RelayRequest {
            unl: unl_of(&bob, NodeType::Active, "198.51.100.2", 0),
            nonce: wire::overlay::Nonce([i; 32]),
            relay: addr(RENDEZVOUS),
        };
        let t = now + Duration::from_secs(u64::from(i));
        alice.handle_mailbox_line(t, &format!("MSG {} {from} {request}", 10 + u32::from(i)));
        acted += drain(&mut alice)
            .iter()
            .filter(|o| matches!(o, Output::RelayDial { .. }))
            .count();
    }
    assert_eq!(acted, 20);
}
