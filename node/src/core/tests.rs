//! Unit tests of the core in virtual time.

use super::*;
use crate::proto::overlay::Control;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn core(seed: u64) -> Core {
    Core::new(CoreConfig {
        seed,
        listen_port: 4000,
        node_type: NodeType::Passive,
        rendezvous: vec![addr("10.0.0.1:8000"), addr("10.0.0.2:8000")],
        max_inbound: 2,
        ..CoreConfig::default()
    })
}

fn drain(c: &mut Core) -> Vec<Output> {
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
    let nodes = Response::Nodes(vec![crate::proto::rendezvous::NodeEntry {
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
        assert_eq!(lines, &vec!["SOURCE TCP".to_owned()]);
        let id = *id;
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
