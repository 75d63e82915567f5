//! Unit tests of the core in virtual time.

use std::time::Duration;

use super::*;
use crate::connect::ConnectOutcome;
use wire::overlay::Control;
use wire::rendezvous::Response;

/// `s` parsed (the tests of the core's modules share it).
pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn core(seed: u64) -> Core {
    Core::new(CoreConfig {
        seed,
        listen_port: 4000,
        node_type: NodeType::Passive,
        rendezvous: vec![addr("10.0.0.1:8000"), addr("10.0.0.2:8000")],
        max_inbound: 2,
        max_reverse_per_minute: 16,
        ..CoreConfig::default()
    })
}

/// Every output the core has queued (the tests of the core's modules share it).
pub(super) fn drain(c: &mut Core) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn hello(peer: PeerId) -> String {
    Control::Hello {
        peer,
        listen_port: 4000,
    }
    .to_string()
}

fn closed(outputs: &[Output]) -> Vec<(ConnId, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Close { conn, reason } => Some((*conn, reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn open_sends_hello_and_plain_lines_are_delivered() {
    let now = Instant::now();
    let mut c = core(1);
    assert!(c.handle_open(now, ConnId(1), addr("10.0.0.9:5000"), Direction::Inbound));
    let out = drain(&mut c);
    // IAM (our UNL node id) comes first, then HELLO.
    assert_eq!(
        out[0],
        Output::Send {
            conn: ConnId(1),
            line: Control::Iam {
                node: c.node_id(),
                nonce: None
            }
            .to_string()
        }
    );
    assert_eq!(
        out[1],
        Output::Send {
            conn: ConnId(1),
            line: hello(c.peer_id())
        }
    );
    assert_eq!(
        c.handle_line(now, ConnId(1), "hi there"),
        LineVerdict::Deliver
    );
    assert!(drain(&mut c).is_empty());
}

#[test]
fn a_connection_to_self_is_closed_and_not_dialed_again() {
    let now = Instant::now();
    let mut c = core(1);
    let me = c.peer_id();
    let a = addr("10.0.0.9:4000");
    c.dial(a);
    c.handle_open(now, ConnId(1), a, Direction::Outbound);
    drain(&mut c);
    c.handle_line(now, ConnId(1), &hello(me));
    let out = drain(&mut c);
    assert_eq!(closed(&out), vec![(ConnId(1), "connection to self".into())]);
    assert_eq!(c.connection_count(), 0);
    // A bootstrap offering our own address does not dial it.
    c.bootstrap(now);
    let out = drain(&mut c);
    let Some(Output::Query { id, .. }) = out.iter().find(|o| matches!(o, Output::Query { .. }))
    else {
        panic!("no query: {out:?}")
    };
    let nodes = Response::Nodes(vec![wire::rendezvous::NodeEntry {
        node_type: NodeType::Passive,
        addr: a,
    }]);
    c.handle_query_done(
        now,
        *id,
        Ok(QueryReply {
            local: addr("10.0.0.9:1234"),
            line: Some(nodes.to_string()),
        }),
    );
    let out = drain(&mut c);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Dial { .. })),
        "{out:?}"
    );
}

#[test]
fn both_ends_keep_the_same_one_of_two_crossing_connections() {
    let now = Instant::now();
    let mut a = core(1);
    let mut b = core(2);
    let (ida, idb) = (a.peer_id(), b.peer_id());
    // a→b is conn 1 on a / conn 11 on b; b→a is conn 2 on a / conn 12 on b.
    a.handle_open(now, ConnId(1), addr("10.0.0.2:4000"), Direction::Outbound);
    a.handle_open(now, ConnId(2), addr("10.0.0.2:5555"), Direction::Inbound);
    b.handle_open(now, ConnId(11), addr("10.0.0.1:6666"), Direction::Inbound);
    b.handle_open(now, ConnId(12), addr("10.0.0.1:4000"), Direction::Outbound);
    drain(&mut a);
    drain(&mut b);
    a.handle_line(now, ConnId(1), &hello(idb));
    a.handle_line(now, ConnId(2), &hello(idb));
    b.handle_line(now, ConnId(12), &hello(ida));
    b.handle_line(now, ConnId(11), &hello(ida));
    let a_closed = closed(&drain(&mut a));
    let b_closed = closed(&drain(&mut b));
    assert_eq!(a_closed.len(), 1);
    assert_eq!(b_closed.len(), 1);
    // The survivor is the connection dialed by the smaller id, on both ends.
    let a_kept_own_dial = a_closed[0].0 == ConnId(2);
    let b_kept_a_dial = b_closed[0].0 == ConnId(12);
    assert_eq!(a_kept_own_dial, b_kept_a_dial);
    assert_eq!(a_kept_own_dial, ida < idb);
    assert!(a_closed[0].1.starts_with("duplicate connection"));
}

/// The driver reads a socket's lines in one pass before it carries out the core's outputs:
/// lines after the `HELLO` that made a connection a closed duplicate are dropped. A
/// broadcast among them must not count as seen, or its copy on the connection that stays
/// would be dropped as a repeat and the line never delivered there.
#[test]
fn lines_after_a_duplicate_hello_are_dropped_and_a_broadcast_still_arrives_once() {
    let now = Instant::now();
    let mut a = core(1);
    let peer = PeerId(42);
    a.handle_open(now, ConnId(1), addr("10.0.0.2:4000"), Direction::Outbound);
    a.handle_line(now, ConnId(1), &hello(peer));
    a.handle_open(now, ConnId(2), addr("10.0.0.2:4000"), Direction::Outbound);
    drain(&mut a);
    let broadcast = Control::Broadcast {
        id: wire::overlay::MessageId(7),
        ttl: 1,
        payload: "hello everyone".to_owned(),
    }
    .to_string();
    // conn 2: its HELLO (the duplicate: the older outbound one stays), then in the same
    // read the broadcast.
    assert_eq!(
        a.handle_line(now, ConnId(2), &hello(peer)),
        LineVerdict::Consumed
    );
    assert_eq!(
        a.handle_line(now, ConnId(2), &broadcast),
        LineVerdict::Consumed
    );
    assert_eq!(
        a.handle_line(now, ConnId(2), "a plain line"),
        LineVerdict::Consumed
    );
    let out = drain(&mut a);
    assert_eq!(closed(&out).len(), 1, "{out:?}");
    assert_eq!(closed(&out)[0].0, ConnId(2));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Deliver { .. })),
        "{out:?}"
    );
    // The same broadcast on the connection that stays: delivered there.
    a.handle_line(now, ConnId(1), &broadcast);
    let out = drain(&mut a);
    assert!(
        out.contains(&Output::Deliver {
            conn: ConnId(1),
            line: "hello everyone".to_owned()
        }),
        "{out:?}"
    );
}

#[test]
fn inbound_cap_and_malformed_control_lines_close_only_that_connection() {
    let now = Instant::now();
    let mut c = core(1);
    assert!(c.handle_open(now, ConnId(1), addr("10.0.0.3:1"), Direction::Inbound));
    assert!(c.handle_open(now, ConnId(2), addr("10.0.0.4:1"), Direction::Inbound));
    assert!(!c.handle_open(now, ConnId(3), addr("10.0.0.5:1"), Direction::Inbound));
    let out = drain(&mut c);
    assert_eq!(closed(&out)[0].0, ConnId(3));
    assert!(closed(&out)[0].1.contains("inbound limit"));
    // Outbound connections do not count against the inbound cap.
    assert!(c.handle_open(now, ConnId(4), addr("10.0.0.6:1"), Direction::Outbound));

    c.handle_line(now, ConnId(1), "P2P/1 BCAST nothex 3 x");
    let out = drain(&mut c);
    assert_eq!(closed(&out).len(), 1);
    assert_eq!(closed(&out)[0].0, ConnId(1));
    assert!(closed(&out)[0].1.starts_with("protocol error"));
    assert_eq!(c.connection_count(), 2);
    // A second HELLO is a protocol error too.
    c.handle_line(now, ConnId(2), &hello(PeerId(5)));
    c.handle_line(now, ConnId(2), &hello(PeerId(5)));
    assert_eq!(
        closed(&drain(&mut c))[0].1,
        "protocol error: a second HELLO"
    );
}

/// One host cannot take every inbound slot: past `max_inbound_per_ip` its connections are
/// closed, while another IP still gets in (hostile suite: `hostile_node`).
#[test]
fn inbound_cap_per_ip_leaves_room_for_other_hosts() {
    let now = Instant::now();
    let mut c = Core::new(CoreConfig {
        max_inbound: 8,
        max_inbound_per_ip: 3,
        ..CoreConfig::default()
    });
    for i in 1..=3 {
        assert!(c.handle_open(
            now,
            ConnId(i),
            addr(&format!("10.0.0.9:{i}")),
            Direction::Inbound
        ));
    }
    // The same IP, also written as an IPv4-mapped IPv6 address, is refused...
    assert!(!c.handle_open(now, ConnId(4), addr("10.0.0.9:4"), Direction::Inbound));
    assert!(!c.handle_open(
        now,
        ConnId(5),
        addr("[::ffff:10.0.0.9]:5"),
        Direction::Inbound
    ));
    let out = drain(&mut c);
    let refused = closed(&out);
    assert_eq!(refused.len(), 2);
    assert_eq!(
        refused[0].1,
        "inbound limit per IP reached (3 connections from 10.0.0.9)"
    );
    // ...another IP is not, and neither are our own dials to that IP.
    assert!(c.handle_open(now, ConnId(6), addr("10.0.0.10:1"), Direction::Inbound));
    assert!(c.handle_open(now, ConnId(7), addr("10.0.0.9:80"), Direction::Outbound));
    // A slot freed by a close is free again.
    c.handle_closed(now, ConnId(1), "gone");
    assert!(c.handle_open(now, ConnId(8), addr("10.0.0.9:8"), Direction::Inbound));
}

#[test]
fn bootstrap_fails_over_to_the_next_server_and_prefers_it_afterwards() {
    let now = Instant::now();
    let mut c = core(1);
    c.bootstrap(now);
    let first = drain(&mut c);
    let Output::Query {
        id, server, lines, ..
    } = &first[0]
    else {
        panic!("{first:?}")
    };
    assert_eq!(*server, addr("10.0.0.1:8000"));
    assert_eq!(lines, &vec!["BOOTSTRAP 20 4000".to_owned()]);
    c.handle_query_done(now, *id, Err("connection refused".into()));
    let second = drain(&mut c);
    let Output::Query { id, server, .. } = &second[0] else {
        panic!("{second:?}")
    };
    assert_eq!(*server, addr("10.0.0.2:8000"));
    c.handle_query_done(
        now,
        *id,
        Ok(QueryReply {
            local: addr("10.0.0.9:1"),
            line: Some("NODES EMPTY".into()),
        }),
    );
    let out = drain(&mut c);
    assert!(out.contains(&Output::Event(Event::Bootstrapped {
        server: addr("10.0.0.2:8000"),
        offered: 0,
        dialing: 0
    })));
    // The next bootstrap starts with the server that answered.
    let later = now + Duration::from_mins(2);
    c.handle_timeout(later);
    let out = drain(&mut c);
    let Some(Output::Query { id, server, .. }) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(*server, addr("10.0.0.2:8000"));
    // Both failing: one event naming both servers and both reasons.
    c.handle_query_done(
        later,
        *id,
        Ok(QueryReply {
            local: addr("10.0.0.9:1"),
            line: Some("ERROR server full".into()),
        }),
    );
    let out = drain(&mut c);
    let Some(Output::Query { id, .. }) = out.first() else {
        panic!("{out:?}")
    };
    c.handle_query_done(later, *id, Err("timed out".into()));
    let out = drain(&mut c);
    let Some(Output::Event(Event::RendezvousFailed { job, errors })) = out.last() else {
        panic!("{out:?}")
    };
    assert_eq!(*job, Job::Bootstrap);
    assert_eq!(
        errors,
        &vec![
            (addr("10.0.0.2:8000"), "the server said: server full".into()),
            (addr("10.0.0.1:8000"), "timed out".into())
        ]
    );
}

#[test]
fn advertise_registers_then_stop_clears_and_an_active_node_cannot_advertise() {
    let now = Instant::now();
    let mut c = core(1);
    c.advertise(now);
    let out = drain(&mut c);
    let Output::Query {
        id,
        lines,
        want_reply,
        ..
    } = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        lines,
        &vec!["PASSIVE READY 4000 2".to_owned(), "SOURCE TCP".into()]
    );
    assert!(want_reply);
    c.handle_query_done(
        now,
        *id,
        Ok(QueryReply {
            local: addr("10.0.0.9:1"),
            line: Some("REMOTE TCP 31000".into()),
        }),
    );
    assert!(drain(&mut c).contains(&Output::Event(Event::Advertised {
        server: addr("10.0.0.1:8000"),
        observed_port: 31000
    })));
    assert!(c.poll_timeout().is_some());
    assert!(c.stop(now));
    let out = drain(&mut c);
    let Output::Query {
        lines, want_reply, ..
    } = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(lines, &vec!["CLEAR 4000".to_owned(), "QUIT".into()]);
    assert!(!want_reply);
    assert_eq!(c.poll_timeout(), None);

    let mut active = Core::new(CoreConfig {
        node_type: NodeType::Active,
        listen_port: 4000,
        ..CoreConfig::default()
    });
    active.advertise(now);
    let out = drain(&mut active);
    assert!(matches!(
        &out[0],
        Output::Event(Event::RendezvousFailed { job: Job::Advertise, errors })
            if errors[0].1.contains("only passive nodes")
    ));
}

#[test]
fn nat_detection_asks_one_server_five_times() {
    let now = Instant::now();
    let mut c = core(1);
    c.detect_nat(now);
    let mut out = drain(&mut c);
    for i in 0..5u16 {
        let Some(Output::Query {
            id, server, lines, ..
        }) = out.first()
        else {
            panic!("{out:?}")
        };
        assert_eq!(*server, addr("10.0.0.1:8000"));
        let id = *id;
        if i == 0 {
            // Our extension first; an older server refuses it and is asked PyP2P's way.
            assert_eq!(lines, &vec!["SOURCE ADDR".to_owned()]);
            c.handle_query_done(
                now,
                id,
                Ok(QueryReply {
                    local: addr("10.0.0.9:39999"),
                    line: Some("ERROR unknown command \"SOURCE ADDR\"".to_owned()),
                }),
            );
            out = drain(&mut c);
            let Some(Output::Query {
                id: again, lines, ..
            }) = out.first()
            else {
                panic!("{out:?}")
            };
            assert_eq!(lines, &vec!["SOURCE TCP".to_owned()]);
            c.handle_query_done(
                now,
                *again,
                Ok(QueryReply {
                    local: addr(&format!("10.0.0.9:{}", 40000 + i * 3)),
                    line: Some(format!("REMOTE TCP {}", 20000 + i)),
                }),
            );
            out = drain(&mut c);
            continue;
        }
        assert_eq!(lines, &vec!["SOURCE TCP".to_owned()]);
        c.handle_query_done(
            now,
            id,
            Ok(QueryReply {
                local: addr(&format!("10.0.0.9:{}", 40000 + i * 3)),
                line: Some(format!("REMOTE TCP {}", 20000 + i)),
            }),
        );
        out = drain(&mut c);
    }
    let Some(Output::Event(Event::NatDetected {
        mapping, probes, ..
    })) = out.first().cloned()
    else {
        panic!("{out:?}")
    };
    assert_eq!(mapping, NatMapping::Delta(1));
    assert_eq!(probes.len(), 5);
}

#[test]
fn a_broadcast_is_forwarded_once_and_not_back_to_its_sender() {
    let now = Instant::now();
    let mut c = core(1);
    for i in 1..=3 {
        c.handle_open(
            now,
            ConnId(i),
            addr(&format!("10.0.0.{i}:1")),
            Direction::Outbound,
        );
    }
    drain(&mut c);
    let line = "P2P/1 BCAST 00000000000000aa 2 news";
    assert_eq!(c.handle_line(now, ConnId(2), line), LineVerdict::Consumed);
    let out = drain(&mut c);
    let forwarded = "P2P/1 BCAST 00000000000000aa 1 news".to_owned();
    assert_eq!(
        out,
        vec![
            Output::Send {
                conn: ConnId(1),
                line: forwarded.clone()
            },
            Output::Send {
                conn: ConnId(3),
                line: forwarded
            },
            Output::Deliver {
                conn: ConnId(2),
                line: "news".into()
            },
        ]
    );
    c.handle_line(now, ConnId(3), line);
    assert!(drain(&mut c).is_empty());
    // TTL 1: delivered, not forwarded.
    c.handle_line(now, ConnId(1), "P2P/1 BCAST 00000000000000bb 1 last hop");
    assert_eq!(
        drain(&mut c),
        vec![Output::Deliver {
            conn: ConnId(1),
            line: "last hop".into()
        }]
    );
}

mod unl_connect {
    //! Connect by UNL in virtual time: nonces, node ids, fallbacks, forged requests.

    use super::*;
    use crate::connect::{Method, TryResult};
    use wire::overlay::Nonce;
    use wire::unl::{Forwarding, NatType, NodeType, Unl};

    const MAILBOX: &str = "10.0.0.50:8090";

    fn unl_of(c: &Core, node_type: NodeType, ip: &str, port: u16) -> Unl {
        Unl {
            node_id: Some(c.node_id()),
            node_type,
            nat_type: NatType::Unknown,
            forwarding: Forwarding::Forwarded,
            port,
            wan_ip: ip.parse().unwrap(),
            lan_ip: ip.parse().unwrap(),
        }
    }

    /// A passive core at `ip`:4000 with its mailbox up.
    fn node(seed: u64, ip: &str, now: Instant) -> Core {
        let mut c = core(seed);
        c.set_local_unl(unl_of(&c, NodeType::Passive, ip, 4000));
        c.enable_mailbox(now, addr(MAILBOX));
        assert!(matches!(
            drain(&mut c).as_slice(),
            [Output::MailboxDial { .. }]
        ));
        crate::core::mailbox::register_for_test(&mut c, now);
        drain(&mut c);
        c
    }

    fn iam(c: &Core, nonce: Option<Nonce>) -> String {
        Control::Iam {
            node: c.node_id(),
            nonce,
        }
        .to_string()
    }

    fn outcome(outputs: &[Output]) -> Option<ConnectOutcome> {
        outputs.iter().find_map(|o| match o {
            Output::Event(Event::ConnectDone(out)) => Some(out.clone()),
            _ => None,
        })
    }

    fn put_body(outputs: &[Output]) -> Option<String> {
        outputs.iter().find_map(|o| match o {
            Output::MailboxSend { line } if line.starts_with("PUT ") => {
                Some(line.splitn(3, ' ').nth(2).unwrap().to_owned())
            }
            _ => None,
        })
    }

    #[test]
    fn a_reverse_connect_wins_only_with_the_posted_nonce_from_the_right_node() {
        let now = Instant::now();
        let mut alice = node(1, "192.0.2.1", now);
        let bob = core(2);
        let bob_unl = unl_of(&bob, NodeType::Active, "198.51.100.2", 0);
        let id = alice.connect_unl(now, bob_unl);
        let out = drain(&mut alice);
        // Nothing to dial: the request goes to bob's mailbox at once.
        let body = put_body(&out).expect("a PUT to bob's mailbox");
        let request: crate::connect::ReverseRequest = body.parse().unwrap();
        assert_eq!(request.unl.node_id, Some(alice.node_id()));
        let mallory = core(3);
        let from = addr("203.0.113.9:5555");
        // A stranger guessing a nonce is closed.
        alice.handle_open(now, ConnId(1), from, Direction::Inbound);
        alice.handle_line(now, ConnId(1), &iam(&mallory, Some(Nonce([9; 32]))));
        let out = drain(&mut alice);
        assert_eq!(
            closed(&out),
            vec![(ConnId(1), "unknown or expired reverse-connect nonce".into())]
        );
        // The right nonce from the wrong node is closed too.
        alice.handle_open(now, ConnId(2), from, Direction::Inbound);
        alice.handle_line(now, ConnId(2), &iam(&mallory, Some(request.nonce)));
        let out = drain(&mut alice);
        assert_eq!(closed(&out).len(), 1, "{out:?}");
        assert!(outcome(&out).is_none());
        // bob with the nonce: connected, by reverse.
        let later = now + Duration::from_millis(40);
        alice.handle_open(later, ConnId(3), from, Direction::Inbound);
        alice.handle_line(later, ConnId(3), &iam(&bob, Some(request.nonce)));
        let done = outcome(&drain(&mut alice)).expect("an outcome");
        assert!(done.connected);
        assert_eq!(done.id, id);
        assert_eq!(done.conn, Some(ConnId(3)));
        assert_eq!(done.method, Some(Method::Reverse));
        assert_eq!(done.ms, 40);
        // The nonce is spent: replaying it is refused.
        alice.handle_open(later, ConnId(4), from, Direction::Inbound);
        alice.handle_line(later, ConnId(4), &iam(&bob, Some(request.nonce)));
        assert_eq!(closed(&drain(&mut alice)).len(), 1);
    }

    /// bob's overlay and his connect both dial alice's address: two connections this side
    /// dialed to one peer. Whatever order their `HELLO`s come in, the one the connect
    /// reported to the application stays.
    #[test]
    fn of_two_connections_we_dialed_to_one_peer_the_reported_one_stays() {
        for reported_hello_last in [false, true] {
            let now = Instant::now();
            let mut bob = node(1, "192.0.2.1", now);
            let alice = core(2);
            let alice_unl = unl_of(&alice, NodeType::Passive, "198.51.100.2", 4000);
            let target = addr("198.51.100.2:4000");
            bob.connect_unl(now, alice_unl);
            drain(&mut bob);
            // The connect's dial opens first (bound to the connect), then the overlay's.
            bob.handle_open(now, ConnId(1), target, Direction::Outbound);
            bob.handle_open(now, ConnId(2), target, Direction::Outbound);
            drain(&mut bob);
            bob.handle_line(now, ConnId(1), &iam(&alice, None));
            let done = outcome(&drain(&mut bob)).expect("an outcome");
            assert_eq!(done.conn, Some(ConnId(1)));
            bob.handle_line(now, ConnId(2), &iam(&alice, None));
            let order = if reported_hello_last {
                [ConnId(2), ConnId(1)]
            } else {
                [ConnId(1), ConnId(2)]
            };
            let mut out = Vec::new();
            for conn in order {
                bob.handle_line(now, conn, &hello(alice.peer_id()));
                out.extend(drain(&mut bob));
            }
            assert_eq!(
                closed(&out).iter().map(|c| c.0).collect::<Vec<_>>(),
                vec![ConnId(2)],
                "reported HELLO last: {reported_hello_last}"
            );
        }
    }

    #[test]
    fn a_dial_that_reaches_another_node_fails_and_reverse_starts_at_once() {
        let now = Instant::now();
        let mut alice = node(1, "192.0.2.1", now);
        let bob = core(2);
        let bob_unl = unl_of(&bob, NodeType::Passive, "198.51.100.2", 4000);
        let id = alice.connect_unl(now, bob_unl);
        let out = drain(&mut alice);
        let target = addr("198.51.100.2:4000");
        assert!(
            out.contains(&Output::Dial {
                addr: target,
                security: Security::Plain
            }),
            "{out:?}"
        );
        assert!(put_body(&out).is_none(), "reverse waits for its head start");
        // Someone else answers at bob's address.
        let t1 = now + Duration::from_millis(5);
        alice.handle_open(t1, ConnId(1), target, Direction::Outbound);
        alice.handle_line(t1, ConnId(1), &iam(&core(7), None));
        let out = drain(&mut alice);
        assert_eq!(closed(&out).len(), 1, "{out:?}");
        let body = put_body(&out).expect("reverse starts as soon as the dial failed");
        let nonce = body
            .parse::<crate::connect::ReverseRequest>()
            .unwrap()
            .nonce;
        let t2 = now + Duration::from_millis(20);
        alice.handle_open(t2, ConnId(2), addr("198.51.100.2:6000"), Direction::Inbound);
        alice.handle_line(t2, ConnId(2), &iam(&bob, Some(nonce)));
        let done = outcome(&drain(&mut alice)).unwrap();
        assert_eq!((done.id, done.method), (id, Some(Method::Reverse)));
        let direct = done
            .tries
            .iter()
            .find(|t| t.method == Method::Direct)
            .unwrap();
        assert!(
            matches!(&direct.result, TryResult::Failed(why) if why.contains("not the one in the UNL")),
            "{direct:?}"
        );
        assert_eq!(direct.ended_ms, Some(5));
    }

    #[test]
    fn a_connect_with_nothing_answering_fails_at_the_deadline_with_every_try() {
        let now = Instant::now();
        let mut alice = node(1, "192.0.2.1", now);
        let bob_unl = unl_of(&core(2), NodeType::Passive, "198.51.100.2", 4000);
        alice.connect_unl(now, bob_unl);
        drain(&mut alice);
        // The head start passes: reverse starts beside the dial.
        let t1 = now + Duration::from_secs(1);
        assert!(alice.poll_timeout().is_some_and(|t| t <= t1));
        alice.handle_timeout(t1);
        assert!(put_body(&drain(&mut alice)).is_some());
        let t2 = now + Duration::from_secs(10);
        alice.handle_timeout(t2);
        let done = outcome(&drain(&mut alice)).unwrap();
        assert!(!done.connected);
        assert!(done.error.unwrap().contains("within 10s"));
        assert!(
            done.tries
                .iter()
                .filter(|t| t.started_ms.is_some())
                .all(|t| matches!(t.result, TryResult::Failed(_))),
            "{:?}",
            done.tries
        );
    }

    #[test]
    fn forged_or_excess_reverse_requests_are_refused() {
        let now = Instant::now();
        let mut bob = node(2, "198.51.100.2", now);
        let alice = core(1);
        let alice_unl = unl_of(&alice, NodeType::Passive, "192.0.2.1", 4000);
        let request = crate::connect::ReverseRequest {
            unl: alice_unl,
            nonce: Nonce([5; 32]),
        };
        let refused = |out: &[Output]| {
            out.iter().find_map(|o| match o {
                Output::Event(Event::ReverseRequested { refused, .. }) => refused.clone(),
                _ => None,
            })
        };
        // Anonymous sender: refused (but acknowledged, so it is not delivered again).
        bob.handle_mailbox_line(now, &format!("MSG 1 - {request}"));
        let out = drain(&mut bob);
        assert!(out.contains(&Output::MailboxSend {
            line: "ACK 1".into()
        }));
        assert!(refused(&out).unwrap().contains("did not prove"));
        assert!(!out.iter().any(|o| matches!(o, Output::Dial { .. })));
        // A sender that is not the UNL's node: refused.
        let mallory = core(3).node_id().mailbox_id();
        bob.handle_mailbox_line(now, &format!("MSG 2 {mallory} {request}"));
        bob.handle_mailbox_line(now, "OK ACK 1");
        assert!(refused(&drain(&mut bob)).is_some());
        // Garbage: refused.
        bob.handle_mailbox_line(now, "MSG 3 - hello there");
        assert!(
            refused(&drain(&mut bob))
                .unwrap()
                .contains("not a REVERSE3, RELAY3, REVERSE_CONNECT")
        );
        // The real thing: bob dials alice and opens with the nonce.
        let from = alice.node_id().mailbox_id();
        bob.handle_mailbox_line(now, &format!("MSG 4 {from} {request}"));
        let out = drain(&mut bob);
        let target = addr("192.0.2.1:4000");
        let dial = Output::Dial {
            addr: target,
            security: Security::Plain,
        };
        assert!(out.contains(&dial), "{out:?}");
        bob.handle_open(now, ConnId(1), target, Direction::Outbound);
        let out = drain(&mut bob);
        assert_eq!(
            out[0],
            Output::Send {
                conn: ConnId(1),
                line: iam(&bob, Some(request.nonce))
            }
        );
        // Whoever answers there must be alice.
        bob.handle_line(now, ConnId(1), &iam(&core(9), None));
        assert_eq!(closed(&drain(&mut bob)).len(), 1);
        // The rate limit (16 a minute in all here): a burst of 3 (16 / 5) per sender, one used
        // above. The same nonce again is free once (a connect's reverse and relay requests),
        // then pays like any other.
        for i in 0..20 {
            let r = crate::connect::ReverseRequest {
                unl: Unl {
                    port: 5000 + i,
                    ..alice_unl
                },
                nonce: Nonce([u8::try_from(i % 2).unwrap() + 7; 32]),
            };
            bob.handle_mailbox_line(now, &format!("MSG {} {from} {r}", 10 + i));
        }
        let out = drain(&mut bob);
        let dials = out
            .iter()
            .filter(|o| matches!(o, Output::Dial { .. }))
            .count();
        // Nonce 7 pays (1 token left after it), nonce 8 pays (none left), each is free once
        // more: 4 dials.
        assert_eq!(dials, 4);
        assert!(refused(&out).unwrap().contains("from "), "{out:?}");
        // Other senders (at other IPs: one IP has a budget too) share what is left of the 16 in all (3 used): 13 more.
        for k in 0..5u16 {
            let sender = core(100 + u64::from(k));
            let sender_id = sender.node_id().mailbox_id();
            for i in 0..4u16 {
                let r = crate::connect::ReverseRequest {
                    unl: Unl {
                        node_id: Some(sender.node_id()),
                        port: 6000 + k * 10 + i,
                        wan_ip: std::net::Ipv4Addr::new(
                            198,
                            51,
                            100,
                            10 + u8::try_from(k).unwrap(),
                        ),
                        ..alice_unl
                    },
                    nonce: Nonce([u8::try_from(10 + k * 4 + i).unwrap(); 32]),
                };
                bob.handle_mailbox_line(now, &format!("MSG {} {sender_id} {r}", 100 + k * 10 + i));
            }
        }
        let out = drain(&mut bob);
        let dials = out
            .iter()
            .filter(|o| matches!(o, Output::Dial { .. }))
            .count();
        assert_eq!(dials, 13);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Event(Event::ReverseRequested { refused: Some(why), .. })
                if why.contains("limit 16 in all")
        )));
    }
}
