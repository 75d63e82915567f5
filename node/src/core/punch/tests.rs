//! Hole punching and the relay in virtual time: the simultaneous node's registration and its
//! answers to challenges, the candidate's side up to the dial at the meeting time, the relay
//! fallback, and refusals. The rendezvous and the mailbox server are played by hand, line by
//! line.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::{ConnId, Core, CoreConfig, Direction, Event, Output, RelayId, SessionId};
use crate::connect::{ConnectOutcome, Method, RelayRequest, TryResult};
use crate::core::tests::{addr, drain};
use crate::ids::ConnectId;
use wire::nat::NatMapping;
use wire::overlay::{Control, Nonce};
use wire::punch::{meeting_delay, relay_token};
use wire::rendezvous::{NodeType as Role, NtpTime};
use wire::unl::{Forwarding, NatType, NodeType, Unl};

const RENDEZVOUS: &str = "10.0.0.1:8000";
const MAILBOX: &str = "10.0.0.50:8090";

fn core(seed: u64, role: Role) -> Core {
    Core::new(CoreConfig {
        seed,
        listen_port: 4000,
        node_type: role,
        rendezvous: vec![addr(RENDEZVOUS)],
        max_punch_per_minute: 2,
        ..CoreConfig::default()
    })
}

fn unl_of(c: &Core, node_type: NodeType, ip: &str, port: u16) -> Unl {
    Unl {
        node_id: Some(c.node_id()),
        node_type,
        nat_type: NatType::Preserving,
        forwarding: Forwarding::Forwarded,
        port,
        wan_ip: ip.parse().unwrap(),
        // Behind a NAT: the LAN address differs from the WAN one.
        lan_ip: "10.9.9.9".parse().unwrap(),
    }
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

fn opened(outputs: &[Output]) -> (SessionId, Option<u16>) {
    outputs
        .iter()
        .find_map(|o| match o {
            Output::SessionOpen {
                session, bind_port, ..
            } => Some((*session, *bind_port)),
            _ => None,
        })
        .expect("a session opened")
}

fn punch_dials(outputs: &[Output]) -> Vec<(SocketAddr, u16, Instant, Direction)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::PunchDial {
                addr,
                from_port,
                at,
                direction,
                ..
            } => Some((*addr, *from_port, *at, *direction)),
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

/// The relay a connect started in `outputs`: its dial and the request in the target's mailbox.
fn relay_started(outputs: &[Output]) -> (RelayId, RelayRequest) {
    let relay = outputs
        .iter()
        .find_map(|o| match o {
            Output::RelayDial { relay, .. } => Some(*relay),
            _ => None,
        })
        .expect("a relay dial");
    let body = outputs
        .iter()
        .find_map(|o| match o {
            Output::MailboxSend { line } if line.starts_with("PUT ") => {
                Some(line.splitn(3, ' ').nth(2).unwrap().to_owned())
            }
            _ => None,
        })
        .expect("a relay request in the target's mailbox");
    (relay, body.parse().unwrap())
}

/// A simultaneous node at listening port 4000, registered (the server saw port 4000 after a
/// 400 us round trip). Returns the registration session.
fn registered(c: &mut Core, now: Instant) -> SessionId {
    c.enable_simultaneous(now);
    let out = drain(c);
    let (session, bind) = opened(&out);
    // From the listening port, so the NAT mapping the server sees is the one peers reach.
    assert_eq!(bind, Some(4000));
    c.handle_session_open(now, session, addr("192.168.1.2:4000"));
    assert_eq!(sent(&drain(c)), vec!["SOURCE TCP"]);
    let later = now + Duration::from_micros(400);
    c.handle_session_line(later, 1000.0, session, "REMOTE TCP 4000");
    let out = drain(c);
    assert_eq!(sent(&out), vec!["SIMULTANEOUS READY 4000 32"]);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(Event::Registration {
            external_port: Some(4000),
            ..
        })
    )));
    assert!(c.registered());
    assert_eq!(c.registration_rtt(), Some(Duration::from_micros(400)));
    session
}

#[test]
fn a_challenge_is_accepted_with_dials_at_the_meeting_time_and_rate_limited() {
    let now = Instant::now();
    let mut alice = core(1, Role::Simultaneous);
    let session = registered(&mut alice, now);
    assert_eq!(alice.advertised_port(), 4000);

    let t = now + Duration::from_secs(1);
    alice.handle_session_line(t, 1000.0, session, "CHALLENGE 198.51.100.2 5000 5001 TCP");
    let out = drain(&mut alice);
    let delay = meeting_delay(Some(Duration::from_micros(400)));
    let meeting = 1000.0 + delay.as_secs_f64();
    assert_eq!(
        sent(&out),
        vec![format!(
            "ACCEPT 198.51.100.2 4000 TCP {}",
            NtpTime::new(meeting).unwrap()
        )]
    );
    // Both of the candidate's ports, from our listening port, at once (our candidates dial
    // us first, so their NATs let these SYNs in) and again at the meeting (PyP2P candidates,
    // routers that reset an early SYN): waits that are outputs, not sleeps. Reported as
    // inbound: the candidate "dialed".
    let dial = |port: u16, at: Instant| {
        (
            addr(&format!("198.51.100.2:{port}")),
            4000,
            at,
            Direction::Inbound,
        )
    };
    assert_eq!(
        punch_dials(&out),
        vec![
            dial(5000, t),
            dial(5000, t + delay),
            dial(5001, t),
            dial(5001, t + delay)
        ]
    );
    // One connects: the other dials stop, and so does the meeting's dial to the same address.
    alice.handle_open(
        t + delay,
        ConnId(1),
        addr("198.51.100.2:5000"),
        Direction::Inbound,
    );
    assert!(drain(&mut alice).contains(&Output::CancelDials {
        addrs: vec![addr("198.51.100.2:5001"), addr("198.51.100.2:5000")]
    }));

    // Limit 2 a minute: the third is refused, with a reason, and nothing is dialed.
    alice.handle_session_line(t, 1000.0, session, "CHALLENGE 198.51.100.3 6000 TCP");
    assert_eq!(punch_dials(&drain(&mut alice)).len(), 2);
    alice.handle_session_line(t, 1000.0, session, "CHALLENGE 198.51.100.4 7000 TCP");
    let out = drain(&mut alice);
    assert!(punch_dials(&out).is_empty());
    assert!(sent(&out).is_empty());
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(Event::Challenge { refused: Some(why), .. }) if why.contains("too many")
    )));
    // A minute later it is answered again.
    let later = t + Duration::from_secs(61);
    alice.handle_session_line(later, 1061.0, session, "CHALLENGE 198.51.100.4 7000 TCP");
    assert_eq!(punch_dials(&drain(&mut alice)).len(), 2);
}

#[test]
fn a_stepping_nat_probes_its_port_counter_before_accepting() {
    let now = Instant::now();
    let mut alice = core(1, Role::Simultaneous);
    alice.set_nat_mapping(NatMapping::Delta(1));
    let session = registered(&mut alice, now);
    alice.handle_session_line(now, 1000.0, session, "CHALLENGE 198.51.100.2 5000 TCP");
    let out = drain(&mut alice);
    // No ACCEPT yet: a probe from a fresh port first.
    assert!(sent(&out).is_empty());
    let (probe, bind) = opened(&out);
    assert_eq!(bind, None);
    alice.handle_session_open(now, probe, addr("192.168.1.2:40000"));
    assert_eq!(sent(&drain(&mut alice)), vec!["SOURCE TCP"]);
    alice.handle_session_line(now, 1000.0, probe, "REMOTE TCP 20010");
    let out = drain(&mut alice);
    let accept = sent(&out);
    assert_eq!(accept.len(), 1);
    assert!(
        accept[0].starts_with("ACCEPT 198.51.100.2 20011 20012 20013 TCP "),
        "{accept:?}"
    );
    assert!(out.contains(&Output::SessionClose {
        session: probe,
        reason: "probe done".into()
    }));
    // At once and at the meeting.
    assert_eq!(punch_dials(&out).len(), 2);
}

#[test]
fn a_lost_registration_comes_back_with_backoff_and_reconnect_reregisters() {
    let now = Instant::now();
    let mut alice = core(1, Role::Simultaneous);
    let session = registered(&mut alice, now);
    alice.handle_session_line(now, 1000.0, session, "RECONNECT");
    assert_eq!(sent(&drain(&mut alice)), vec!["SIMULTANEOUS READY 4000 32"]);
    alice.handle_session_closed(now, session, "closed by the server");
    assert!(!alice.registered());
    let out = drain(&mut alice);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(Event::Registration {
            external_port: None,
            reason: Some(_),
            ..
        })
    )));
    // Reconnects after the first retry delay (1 s), from the listening port again.
    assert_eq!(alice.poll_timeout(), Some(now + Duration::from_secs(1)));
    alice.handle_timeout(now + Duration::from_secs(1));
    let (_, bind) = opened(&drain(&mut alice));
    assert_eq!(bind, Some(4000));
}

/// bob, an active node behind a NAT, with the mailbox up when `mailbox`.
fn bob(now: Instant, mailbox: bool) -> Core {
    let mut bob = core(2, Role::Active);
    bob.set_local_unl(unl_of(&bob, NodeType::Active, "198.51.100.2", 0));
    if mailbox {
        bob.enable_mailbox(now, addr(MAILBOX));
        drain(&mut bob);
        crate::core::mailbox::register_for_test(&mut bob, now);
        drain(&mut bob);
    }
    bob
}

/// bob (active, with a mailbox) connects to alice (simultaneous, 192.0.2.1:4000) at `now`,
/// and the rendezvous has his candidacy (`PREDICTION SET`): the punch waits for `FIGHT`.
/// Returns alice, bob, the connect and the candidacy session.
fn candidacy_set(now: Instant) -> (Core, Core, ConnectId, SessionId) {
    let alice = core(1, Role::Simultaneous);
    let alice_unl = unl_of(&alice, NodeType::Simultaneous, "192.0.2.1", 4000);
    let mut bob = bob(now, true);
    let id = bob.connect_unl(now, alice_unl);
    let (session, _) = opened(&drain(&mut bob));
    bob.handle_session_open(now, session, addr("192.168.2.2:6000"));
    bob.handle_session_line(now, 1000.0, session, "REMOTE TCP 31337");
    bob.handle_session_line(now, 1000.0, session, "PREDICTION SET");
    drain(&mut bob);
    (alice, bob, id, session)
}

#[test]
fn a_punch_goes_candidacy_fight_dial_at_the_meeting_and_wins_on_the_nodes_iam() {
    let now = Instant::now();
    let alice = core(1, Role::Simultaneous);
    let alice_unl = unl_of(&alice, NodeType::Simultaneous, "192.0.2.1", 4000);
    let mut bob = bob(now, false);
    bob.set_nat_mapping(NatMapping::Preserving);
    let id = bob.connect_unl(now, alice_unl);
    let out = drain(&mut bob);
    // A fresh port, kept for the punch dial.
    let (session, bind) = opened(&out);
    assert_eq!(bind, Some(0));
    bob.handle_session_open(now, session, addr("192.168.2.2:6000"));
    assert_eq!(sent(&drain(&mut bob)), vec!["SOURCE TCP"]);
    bob.handle_session_line(now, 1000.0, session, "REMOTE TCP 6000");
    assert_eq!(
        sent(&drain(&mut bob)),
        vec!["CANDIDATE 192.0.2.1:4000 TCP 6000"]
    );
    bob.handle_session_line(now, 1000.0, session, "PREDICTION SET");
    assert!(drain(&mut bob).is_empty());
    bob.handle_session_line(now, 1000.0, session, "FIGHT 192.0.2.1 4000 TCP 1000.020000");
    let out = drain(&mut bob);
    assert!(out.iter().any(|o| matches!(o, Output::SessionClose { .. })));
    let dials = punch_dials(&out);
    assert_eq!(dials.len(), 1);
    let (to, from, at, direction) = dials[0];
    assert_eq!(
        (to, from, direction),
        (addr("192.0.2.1:4000"), 6000, Direction::Outbound)
    );
    let wait = at - now;
    assert!(
        wait > Duration::from_millis(19) && wait < Duration::from_millis(21),
        "{wait:?}"
    );
    // The connection opens; it counts only once alice says who she is.
    bob.handle_open(at, ConnId(7), to, Direction::Outbound);
    assert!(outcome(&drain(&mut bob)).is_none());
    let iam = Control::Iam {
        node: alice.node_id(),
        nonce: None,
    }
    .to_string();
    bob.handle_line(at, ConnId(7), &iam);
    let done = outcome(&drain(&mut bob)).expect("an outcome");
    assert_eq!(done.id, id);
    assert_eq!(done.method, Some(Method::Punch));
    assert_eq!(done.conn, Some(ConnId(7)));
}

#[test]
fn a_punch_that_cannot_meet_falls_back_to_the_relay_which_needs_the_nonce() {
    let now = Instant::now();
    let (alice, mut bob, id, _) = candidacy_set(now);
    // No FIGHT. After the relay head start the relay starts beside the punch: a punch that
    // works confirms in about 4 round trips to the rendezvous (none measured here: 100 ms
    // assumed), plus one SYN retransmission (1 s).
    let t = now + Duration::from_millis(1400);
    assert_eq!(bob.poll_timeout(), Some(t));
    bob.handle_timeout(t);
    let out = drain(&mut bob);
    let (relay, server, token) = out
        .iter()
        .find_map(|o| match o {
            Output::RelayDial {
                relay,
                server,
                token,
                ..
            } => Some((*relay, *server, *token)),
            _ => None,
        })
        .expect("a relay dial");
    assert_eq!(server, addr(RENDEZVOUS));
    let body = out
        .iter()
        .find_map(|o| match o {
            Output::MailboxSend { line } if line.starts_with("PUT ") => {
                Some(line.splitn(3, ' ').nth(2).unwrap().to_owned())
            }
            _ => None,
        })
        .expect("a request in alice's mailbox");
    let request: RelayRequest = body.parse().unwrap();
    assert_eq!(request.relay, server);
    assert_eq!(relay_token(&request.nonce), token);
    // Through the relay: a peer without the right nonce is closed, and the relay try fails.
    assert!(bob.handle_relay_open(t, relay, ConnId(9), server, None));
    drain(&mut bob);
    let wrong = Control::Iam {
        node: alice.node_id(),
        nonce: Some(Nonce([1; 32])),
    };
    bob.handle_line(t, ConnId(9), &wrong.to_string());
    let out = drain(&mut bob);
    assert!(outcome(&out).is_none(), "the punch is still running");
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Close { conn, .. } if *conn == ConnId(9)))
    );
    // At 3 s the punch gives up (no FIGHT): nothing is left, the connect fails with reasons.
    bob.handle_timeout(now + Duration::from_secs(3));
    let done = outcome(&drain(&mut bob)).expect("an outcome");
    assert_eq!(done.id, id);
    assert!(!done.connected);
    let result = |m: Method| {
        done.tries
            .iter()
            .find(|t| t.method == m)
            .map(|t| t.result.clone())
            .unwrap()
    };
    assert!(
        matches!(result(Method::Punch), TryResult::Failed(why) if why.contains("no FIGHT")),
        "{done:?}"
    );
    assert!(
        matches!(result(Method::Relay), TryResult::Failed(why) if why.contains("nonce")),
        "{done:?}"
    );
}

/// The relay's head start counts from the punch's meeting when `FIGHT` comes late (the node
/// probed its NAT's counter first, a signalling segment was lost): the punch keeps its round
/// trip and one SYN retransmission, so one lost SYN does not cost the direct path.
#[test]
fn a_late_fight_holds_the_relay_until_the_meeting_plus_one_syn_retransmission() {
    let now = Instant::now();
    let (_, mut bob, _, session) = candidacy_set(now);
    // The relay was planned at 1400 ms (see above); FIGHT comes at 900 ms, meeting 20 ms on.
    let t = now + Duration::from_millis(900);
    bob.handle_session_line(t, 1000.9, session, "FIGHT 192.0.2.1 4000 TCP 1000.920000");
    let meeting = punch_dials(&drain(&mut bob))[0].2;
    // The meeting, the round trip between us (2r, r = 100 ms assumed) and one SYN
    // retransmission (1 s).
    let relay_at = meeting + Duration::from_millis(1200);
    let relay_dialed = |out: &[Output]| out.iter().any(|o| matches!(o, Output::RelayDial { .. }));
    for early in [
        now + Duration::from_millis(1400),
        meeting + Duration::from_millis(1199),
    ] {
        bob.handle_timeout(early);
        assert!(!relay_dialed(&drain(&mut bob)), "relay started early");
    }
    bob.handle_timeout(relay_at);
    assert!(
        relay_dialed(&drain(&mut bob)),
        "no relay at the meeting + 2r + 1 s"
    );
}

#[test]
fn a_relayed_connect_wins_with_the_nonce() {
    let now = Instant::now();
    let alice = core(1, Role::Active);
    let alice_unl = unl_of(&alice, NodeType::Active, "192.0.2.1", 0);
    let mut bob = bob(now, true);
    let id = bob.connect_unl(now, alice_unl);
    // Nothing else can reach an active node from an active one: the relay starts at once.
    let (relay, request) = relay_started(&drain(&mut bob));
    assert!(bob.handle_relay_open(now, relay, ConnId(9), addr(RENDEZVOUS), None));
    drain(&mut bob);
    let iam = Control::Iam {
        node: alice.node_id(),
        nonce: Some(request.nonce),
    };
    bob.handle_line(now, ConnId(9), &iam.to_string());
    let done = outcome(&drain(&mut bob)).expect("an outcome");
    assert_eq!((done.id, done.method), (id, Some(Method::Relay)));
    assert!(bob.is_relayed(ConnId(9)));
}

#[test]
fn relay_requests_are_acted_on_only_from_their_owner_and_through_our_own_rendezvous() {
    let now = Instant::now();
    let mut alice = bob(now, true); // any node with a mailbox
    let carol = core(3, Role::Active);
    let carol_unl = unl_of(&carol, NodeType::Active, "203.0.113.3", 0);
    let carol_id = carol.node_id().mailbox_id();
    let refused = |out: &[Output]| {
        out.iter().find_map(|o| match o {
            Output::Event(Event::ReverseRequested { refused, .. }) => refused.clone(),
            _ => None,
        })
    };
    let dialed = |out: &[Output]| {
        out.iter().find_map(|o| match o {
            Output::RelayDial { relay, server, .. } => Some((*relay, *server)),
            _ => None,
        })
    };
    let request = |relay: &str| RelayRequest {
        unl: carol_unl,
        nonce: Nonce([4; 32]),
        relay: addr(relay),
    };
    // Unproven sender.
    alice.handle_mailbox_line(now, &format!("MSG 1 - {}", request(RENDEZVOUS)));
    let out = drain(&mut alice);
    assert!(refused(&out).unwrap().contains("did not prove"));
    assert!(dialed(&out).is_none());
    // A relay that is not one of our rendezvous servers: never dialed.
    alice.handle_mailbox_line(
        now,
        &format!("MSG 2 {carol_id} {}", request("10.9.9.9:8000")),
    );
    let out = drain(&mut alice);
    assert!(refused(&out).unwrap().contains("not one of our rendezvous"));
    assert!(dialed(&out).is_none());
    // The real thing: to our rendezvous, opening with carol's nonce, expecting carol.
    alice.handle_mailbox_line(now, &format!("MSG 3 {carol_id} {}", request(RENDEZVOUS)));
    let (relay, server): (RelayId, SocketAddr) = dialed(&drain(&mut alice)).unwrap();
    assert!(alice.handle_relay_open(now, relay, ConnId(5), server, None));
    let out = drain(&mut alice);
    let first = out.iter().find_map(|o| match o {
        Output::Send { conn, line } if *conn == ConnId(5) => Some(line.clone()),
        _ => None,
    });
    assert_eq!(
        first,
        Some(
            Control::Iam {
                node: alice.node_id(),
                nonce: Some(Nonce([4; 32]))
            }
            .to_string()
        )
    );
    // Someone else at the other end of the relay: closed.
    let mallory = core(9, Role::Active).node_id();
    alice.handle_line(
        now,
        ConnId(5),
        &Control::Iam {
            node: mallory,
            nonce: None,
        }
        .to_string(),
    );
    assert!(
        drain(&mut alice)
            .iter()
            .any(|o| matches!(o, Output::Close { conn, .. } if *conn == ConnId(5)))
    );
}

#[test]
fn a_late_accept_refused_by_the_rendezvous_keeps_the_registration() {
    // The candidate connected some other way (its eager dial reached a full-cone NAT) and
    // left before our ACCEPT: the server refuses the ACCEPT, nothing else is wrong.
    let now = Instant::now();
    let mut alice = core(1, Role::Simultaneous);
    let session = registered(&mut alice, now);
    alice.handle_session_line(now, 1000.0, session, "CHALLENGE 198.51.100.2 5000 TCP");
    drain(&mut alice);
    alice.handle_session_line(
        now,
        1000.0,
        session,
        "ERROR ACCEPT: no pending candidate from 198.51.100.2",
    );
    let out = drain(&mut alice);
    assert!(
        !out.iter().any(|o| matches!(o, Output::SessionClose { .. })),
        "{out:?}"
    );
    assert!(alice.registered());
}

/// alice (simultaneous, `192.0.2.1:4000`) and bob behind a random-mapping NAT who connects
/// to her: bob's candidacy session is open and told its port. Returns both, the session,
/// and every output bob produced up to his `CANDIDATE`.
fn birthday_candidacy(now: Instant) -> (Core, Core, SessionId, Vec<Output>) {
    let alice = core(1, Role::Simultaneous);
    let alice_unl = unl_of(&alice, NodeType::Simultaneous, "192.0.2.1", 4000);
    let mut bob = bob(now, true);
    bob.set_nat_mapping(NatMapping::Random);
    bob.connect_unl(now, alice_unl);
    let mut out = drain(&mut bob);
    let (session, _) = opened(&out);
    bob.handle_session_open(now, session, addr("192.168.2.2:6000"));
    out.extend(drain(&mut bob));
    bob.handle_session_line(now, 1000.0, session, "REMOTE TCP 31337");
    out.extend(drain(&mut bob));
    (alice, bob, session, out)
}

#[test]
fn a_random_mapping_candidate_asks_for_a_birthday_punch_and_bursts_at_the_meeting() {
    let now = Instant::now();
    let (_, mut bob, session, out) = birthday_candidacy(now);
    // The relay starts at once beside the punch.
    assert!(out.iter().any(|o| matches!(o, Output::RelayDial { .. })));
    // Its port first, then port 0: "my NAT maps at random, guess".
    assert_eq!(
        sent(&out),
        vec!["SOURCE TCP", "CANDIDATE 192.0.2.1:4000 TCP 0"]
    );
    bob.handle_session_line(now, 1000.0, session, "FIGHT 192.0.2.1 4000 TCP 1000.030000");
    let out = drain(&mut bob);
    let burst = out.iter().find_map(|o| match o {
        Output::BirthdayDial {
            addr, count, at, ..
        } => Some((*addr, *count, *at)),
        _ => None,
    });
    let (to, count, at) = burst.expect("a birthday burst");
    assert_eq!(to, addr("192.0.2.1:4000"));
    assert_eq!(count, crate::core::DEFAULT_PUNCH_SOCKETS);
    let wait = at - now;
    assert!(
        wait > Duration::from_millis(29) && wait < Duration::from_millis(31),
        "{wait:?}"
    );
}

#[test]
fn a_birthday_challenge_is_answered_with_a_spray_within_the_limits() {
    let now = Instant::now();
    let mut alice = core(1, Role::Simultaneous);
    alice.set_nat_mapping(NatMapping::Preserving);
    let session = registered(&mut alice, now);
    alice.handle_session_line(now, 1000.0, session, "CHALLENGE 198.51.100.2 0 TCP");
    let out = drain(&mut alice);
    let accept = sent(&out);
    assert!(
        accept[0].starts_with("ACCEPT 198.51.100.2 4000 TCP "),
        "{accept:?}"
    );
    let spray = out.iter().find_map(|o| match o {
        Output::BirthdaySpray {
            ip,
            from_port,
            count,
            at,
            ..
        } => Some((*ip, *from_port, *count, *at)),
        _ => None,
    });
    let (ip, from, count, at) = spray.expect("a spray");
    assert_eq!((ip, from), ("198.51.100.2".parse().unwrap(), 4000));
    assert_eq!(count, crate::core::DEFAULT_PUNCH_SOCKETS);
    // After the meeting, once the candidate's mappings are open.
    let delay = meeting_delay(Some(Duration::from_micros(400)));
    assert!(at > now + delay, "the guesses follow the candidate's burst");
    // No dial to port 0, nothing odd.
    assert!(punch_dials(&out).is_empty());
    // The limit on sprays at once (2): a third candidate waits.
    alice.handle_session_line(now, 1000.0, session, "CHALLENGE 198.51.100.3 0 TCP");
    drain(&mut alice);
    alice.handle_session_line(now, 1000.0, session, "CHALLENGE 198.51.100.4 0 TCP");
    let out = drain(&mut alice);
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Event(Event::Challenge { refused: Some(why), .. }) if why.contains("birthday")
        )),
        "{out:?}"
    );
}

#[test]
fn a_stepping_nat_does_not_guess() {
    let now = Instant::now();
    let mut alice = core(1, Role::Simultaneous);
    alice.set_nat_mapping(NatMapping::Delta(1));
    let session = registered(&mut alice, now);
    alice.handle_session_line(now, 1000.0, session, "CHALLENGE 198.51.100.2 0 TCP");
    let out = drain(&mut alice);
    assert!(sent(&out).is_empty());
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(Event::Challenge { refused: Some(why), .. }) if why.contains("one mapping per port")
    )));
}

/// A birthday punch's burst goes to the address the eager dial tries too: the eager dial's
/// own failure (its fresh SYN can fail while the burst's 512 sockets use that address) must
/// not end the punch while the burst runs: a burst socket that connects afterwards still
/// wins the connect.
#[test]
fn the_eager_dial_failing_does_not_end_a_running_birthday_burst() {
    let now = Instant::now();
    let (alice, mut bob, session, _) = birthday_candidacy(now);
    bob.handle_session_line(now, 1000.0, session, "FIGHT 192.0.2.1 4000 TCP 1000.030000");
    drain(&mut bob);
    let later = now + Duration::from_millis(200);
    bob.handle_dial_failed(
        later,
        addr("192.0.2.1:4000"),
        "cannot dial from port 6000: Cannot assign requested address (os error 99)",
    );
    drain(&mut bob);
    // A burst socket connects: it is the punch.
    let conn = ConnId(40);
    bob.handle_open(later, conn, addr("192.0.2.1:4000"), Direction::Outbound);
    drain(&mut bob);
    bob.handle_line(
        later,
        conn,
        &Control::Iam {
            node: alice.node_id(),
            nonce: None,
        }
        .to_string(),
    );
    let outcome = drain(&mut bob).into_iter().find_map(|o| match o {
        Output::Event(Event::ConnectDone(outcome)) => Some(outcome),
        _ => None,
    });
    let outcome = outcome.expect("the connect ends with the burst's connection");
    assert!(outcome.connected, "{outcome:?}");
    assert_eq!(outcome.method, Some(crate::connect::Method::Punch));
    assert_eq!(outcome.conn, Some(conn));
}

/// The relay wins while the punch runs; the punch then misses: the connection stays on the
/// relay and the punch is tried again on it, after 1 s, 4 s, 16 s and 64 s, each a candidacy
/// of its own that ends quietly (no second outcome); then never again. A session that closed
/// meanwhile is not punched for.
#[test]
fn a_relayed_connection_whose_punch_missed_punches_again_with_backoff() {
    fn relay_wins(bob: &mut Core, alice: &Core, now: Instant) -> (ConnId, Instant) {
        let alice_unl = unl_of(alice, NodeType::Simultaneous, "192.0.2.1", 4000);
        let id = bob.connect_unl(now, alice_unl);
        let (session, _) = opened(&drain(bob));
        bob.handle_session_open(now, session, addr("192.168.2.2:6000"));
        bob.handle_session_line(now, 1000.0, session, "REMOTE TCP 31337");
        bob.handle_session_line(now, 1000.0, session, "PREDICTION SET");
        drain(bob);
        let t = now + Duration::from_millis(1400);
        bob.handle_timeout(t);
        let (relay, request) = relay_started(&drain(bob));
        assert!(bob.handle_relay_open(t, relay, ConnId(9), addr(RENDEZVOUS), None));
        drain(bob);
        let iam = Control::Iam {
            node: alice.node_id(),
            nonce: Some(request.nonce),
        };
        bob.handle_line(t, ConnId(9), &iam.to_string());
        let done = outcome(&drain(bob)).expect("the relay's outcome");
        assert_eq!((done.id, done.method), (id, Some(Method::Relay)));
        // The punch misses (no FIGHT by its deadline): no second outcome.
        let missed = now + Duration::from_secs(3);
        bob.handle_timeout(missed);
        assert!(outcome(&drain(bob)).is_none());
        assert!(bob.is_relayed(ConnId(9)));
        (ConnId(9), missed)
    }

    let now = Instant::now();
    let alice = core(1, Role::Simultaneous);
    let mut bob = bob(now, true);
    let (_, mut missed) = relay_wins(&mut bob, &alice, now);
    for (retry, wait) in [1, 4, 16, 64].into_iter().enumerate() {
        let at = missed + Duration::from_secs(wait);
        bob.handle_timeout(missed + Duration::from_millis(wait * 1000 - 1));
        assert!(
            !drain(&mut bob)
                .iter()
                .any(|o| matches!(o, Output::SessionOpen { .. })),
            "retry {retry}: not before {wait} s"
        );
        bob.handle_timeout(at);
        let out = drain(&mut bob);
        let (session, _) = opened(&out);
        bob.handle_session_open(at, session, addr("192.168.2.2:6001"));
        bob.handle_session_line(at, 1000.0, session, "REMOTE TCP 31338");
        bob.handle_session_line(at, 1000.0, session, "PREDICTION SET");
        drain(&mut bob);
        missed = at + Duration::from_secs(3);
        bob.handle_timeout(missed);
        assert!(outcome(&drain(&mut bob)).is_none(), "retry {retry}");
        assert!(bob.is_relayed(ConnId(9)));
    }
    bob.handle_timeout(missed + Duration::from_mins(10));
    assert!(
        !drain(&mut bob)
            .iter()
            .any(|o| matches!(o, Output::SessionOpen { .. })),
        "four tries again at most"
    );

    // A relayed connection that closes before its retry is not punched for.
    let now = missed + Duration::from_secs(700);
    let mut bob2 = self::bob(now, true);
    let (conn, missed) = relay_wins(&mut bob2, &alice, now);
    bob2.handle_closed(missed, conn, "the application closed it");
    drain(&mut bob2);
    bob2.handle_timeout(missed + Duration::from_secs(1));
    assert!(
        !drain(&mut bob2)
            .iter()
            .any(|o| matches!(o, Output::SessionOpen { .. }))
    );
}

/// A registered simultaneous node behind a port-keeping NAT punches on its registration (from
/// its listening port). When that punch missed and the relay carries the connection, the punch
/// tried again runs on a fresh session port instead: the failed pair of addresses and ports is
/// still tracked by the NATs (an unanswered SYN's entry, with its sequence numbers), which
/// would drop the new handshake as invalid.
#[test]
fn a_punch_tried_again_takes_a_fresh_port_not_the_registrations() {
    let now = Instant::now();
    let alice = core(1, Role::Simultaneous);
    let alice_unl = unl_of(&alice, NodeType::Simultaneous, "192.0.2.1", 4000);
    let mut bob = core(2, Role::Simultaneous);
    bob.set_local_unl(unl_of(&bob, NodeType::Simultaneous, "198.51.100.2", 4000));
    bob.set_nat_mapping(NatMapping::Preserving);
    bob.enable_mailbox(now, addr(MAILBOX));
    drain(&mut bob);
    crate::core::mailbox::register_for_test(&mut bob, now);
    drain(&mut bob);
    let registration = registered(&mut bob, now);
    bob.connect_unl(now, alice_unl);
    let out = drain(&mut bob);
    // The first punch: the candidacy on the registration, the dial from port 4000.
    assert!(!out.iter().any(|o| matches!(o, Output::SessionOpen { .. })));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::SessionSend { session, line } if *session == registration
            && line.starts_with("CANDIDATE ")
    )));
    assert!(
        punch_dials(&out)
            .iter()
            .all(|(_, from, _, _)| *from == 4000)
    );
    bob.handle_session_line(now, 1000.0, registration, "PREDICTION SET");
    drain(&mut bob);
    // No FIGHT; the relay starts and wins.
    let mut t = now;
    let (relay, request) = loop {
        t += Duration::from_millis(100);
        bob.handle_timeout(t);
        let out = drain(&mut bob);
        if out.iter().any(|o| matches!(o, Output::RelayDial { .. })) {
            break relay_started(&out);
        }
        assert!(t < now + Duration::from_secs(3), "no relay");
    };
    assert!(bob.handle_relay_open(t, relay, ConnId(9), addr(RENDEZVOUS), None));
    drain(&mut bob);
    let iam = Control::Iam {
        node: alice.node_id(),
        nonce: Some(request.nonce),
    };
    bob.handle_line(t, ConnId(9), &iam.to_string());
    assert_eq!(
        outcome(&drain(&mut bob)).and_then(|o| o.method),
        Some(Method::Relay)
    );
    // The punch gives up at 3 s; 1 s later it is tried again, from a fresh port.
    bob.handle_timeout(now + Duration::from_secs(3));
    drain(&mut bob);
    bob.handle_timeout(now + Duration::from_secs(4));
    let out = drain(&mut bob);
    assert_eq!(opened(&out).1, Some(0), "{out:?}");
    assert!(!out.iter().any(|o| matches!(
        o,
        Output::SessionSend { session, .. } if *session == registration
    )));
}
