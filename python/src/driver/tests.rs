//! The driver on loopback: two nodes on their own threads, connected by UNL, exchanging lines;
//! interrupts, stop from another thread, errors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::Config;
use node::wire::unl::Unl;
use node::wire::unl::v3::AnyUnl;

use super::*;

const NEVER: fn() -> Result<(), Infallible> = || Ok(());

fn loopback() -> Driver {
    let config = Config::new().with_bind("127.0.0.1".parse().unwrap());
    Driver::spawn(config, NetKind::P2p, 0).unwrap()
}

fn ok<T>(r: Result<T, Waited<Infallible>>) -> T {
    match r {
        Ok(v) => v,
        Err(Waited::Failed(e)) => panic!("{e}"),
        Err(Waited::Interrupted(never)) => match never {},
    }
}

/// alice and bob started; bob connected to alice by her UNL; (bob's conn, alice's conn).
fn pair(alice: &Driver, bob: &Driver) -> (ConnId, ConnId) {
    let report = ok(alice.start(NEVER));
    assert!(report.local_addr.is_some());
    ok(bob.start(NEVER));
    let unl: AnyUnl = ok(alice.unl(NEVER)).parse().unwrap();
    assert!(matches!(unl, AnyUnl::V3(_)), "a node hands out a v3 UNL");
    let ticket = bob.connect_start(unl).unwrap();
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    let outcome = ok(bob.connect_wait(ticket, deadline, NEVER));
    assert!(outcome.connected, "{outcome:?}");
    let bob_conn = outcome.conn.unwrap();
    assert_eq!(
        bob.conn_info(bob_conn).unwrap().method,
        outcome.method,
        "the method is recorded on the connection"
    );
    let (ready, _) = alice
        .wait(0, Some(Instant::now() + Duration::from_secs(5)), NEVER)
        .unwrap();
    assert!(ready, "alice sees the connection");
    let alice_conn = alice.connections()[0];
    (bob_conn, alice_conn)
}

#[test]
fn lines_cross_between_two_threads_in_order() {
    let (alice, bob) = (loopback(), loopback());
    let (to_alice, to_bob) = pair(&alice, &bob);
    for i in 0..1000 {
        ok(bob.send_line(to_alice, &format!("line {i}"), None, NEVER));
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 1000 && Instant::now() < deadline {
        match alice.recv_line(to_bob, Some(deadline), NEVER).unwrap() {
            Some(line) => got.push(line),
            None => break,
        }
        got.extend(alice.take_lines(to_bob));
    }
    let want: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
    assert_eq!(got, want);
    ok(alice.send_line(to_bob, "and back", None, NEVER));
    let back = bob.recv_line(to_alice, Some(deadline), NEVER).unwrap();
    assert_eq!(back.as_deref(), Some("and back"));
    let (events, dropped) = alice.take_events();
    assert_eq!(dropped, 0);
    assert!(events.iter().any(|e| e.kind == "connected"), "{events:?}");
    bob.stop(NEVER).unwrap();
    alice.stop(NEVER).unwrap();
}

#[test]
fn closing_is_seen_by_the_peer_and_sending_then_fails_with_the_reason() {
    let (alice, bob) = (loopback(), loopback());
    let (to_alice, to_bob) = pair(&alice, &bob);
    ok(bob.send_line(to_alice, "last words", None, NEVER));
    bob.close(to_alice);
    let deadline = Some(Instant::now() + Duration::from_secs(5));
    assert_eq!(
        alice.recv_line(to_bob, deadline, NEVER).unwrap().as_deref(),
        Some("last words")
    );
    // After the close, recv_line returns None instead of waiting forever.
    assert_eq!(alice.recv_line(to_bob, None, NEVER).unwrap(), None);
    let info = alice.conn_info(to_bob).unwrap();
    assert!(!info.open);
    assert!(info.reason.is_some());
    match alice.send_line(to_bob, "anyone?", None, NEVER) {
        Err(Waited::Failed(DriverError::Closed { conn, reason })) => {
            assert_eq!(conn, to_bob);
            assert!(!reason.is_empty());
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(alice.connections().is_empty(), "closed and read: not shown");
    match bob.send_line(to_alice, "a\nb", None, NEVER) {
        Err(Waited::Failed(DriverError::LineBreak(line))) => assert_eq!(line, "a\nb"),
        other => panic!("expected LineBreak, got {other:?}"),
    }
}

#[test]
fn a_blocked_call_returns_on_an_interrupt_and_on_stop_from_another_thread() {
    // A UNL whose port accepts connections but never says who it is: the connect waits
    // (for the node's 10 s connect timeout).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ghost = {
        let d = loopback();
        let unl = ok(d.unl(NEVER)).parse::<AnyUnl>().unwrap().to_v2();
        d.stop(NEVER).unwrap();
        Unl {
            port: silent.local_addr().unwrap().port(),
            ..unl
        }
    };
    let bob = Arc::new(loopback());
    ok(bob.start(NEVER));

    // The interrupt check fails on its third call: the wait ends there (~3 slices).
    let ticket = bob.connect_start(AnyUnl::V2(ghost)).unwrap();
    let mut calls = 0;
    let started = Instant::now();
    let result = bob.connect_wait(ticket, None, || {
        calls += 1;
        if calls == 3 {
            Err("interrupted")
        } else {
            Ok(())
        }
    });
    assert!(matches!(result, Err(Waited::Interrupted("interrupted"))));
    assert!(started.elapsed() < SLICE * 10, "{:?}", started.elapsed());

    // stop() from another thread ends a blocked recv at once.
    let ticket = bob.connect_start(AnyUnl::V2(ghost)).unwrap();
    let stopper = {
        let bob = Arc::clone(&bob);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let started = Instant::now();
            bob.stop(NEVER).unwrap();
            started.elapsed()
        })
    };
    let started = Instant::now();
    let result = bob.connect_wait(ticket, None, NEVER);
    assert!(
        matches!(result, Err(Waited::Failed(DriverError::Stopped(_)))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let stop_took = stopper.join().unwrap();
    assert!(stop_took < Duration::from_secs(2), "{stop_took:?}");
    assert!(!bob.is_running());
    assert!(
        bob.thread.lock().unwrap().is_none(),
        "the thread was joined"
    );
    // Everything after stop fails with the reason.
    assert!(matches!(
        bob.broadcast("late"),
        Err(DriverError::Stopped(_))
    ));
    assert!(matches!(
        bob.start(NEVER),
        Err(Waited::Failed(DriverError::Stopped(_)))
    ));
}

#[test]
fn a_server_address_that_does_not_resolve_fails_at_creation() {
    // Refused before any DNS query (tests send nothing beyond loopback).
    let config = Config::new().with_rendezvous("localhost:99999");
    let err = Driver::spawn(config, NetKind::P2p, 0).unwrap_err();
    assert!(
        matches!(&err, DriverError::Net(NetError::Resolve { name, .. }) if name == "localhost:99999"),
        "{err}"
    );
}

#[test]
fn a_direct_net_neither_bootstraps_nor_advertises() {
    let config = Config::new().with_rendezvous("127.0.0.1:9");
    let direct = Driver::spawn(config, NetKind::Direct, 0).unwrap();
    assert_eq!(ok(direct.bootstrap(NEVER)), None);
    assert_eq!(ok(direct.advertise(NEVER)), None);
}

#[test]
fn the_rendezvous_errors_name_each_server() {
    // Port 9 on loopback: nothing listens there (the connection is refused at once).
    let config = Config::new()
        .with_bind("127.0.0.1".parse().unwrap())
        .with_rendezvous("127.0.0.1:9");
    let net = Driver::spawn(config, NetKind::P2p, 0).unwrap();
    match net.bootstrap(NEVER) {
        Err(Waited::Failed(DriverError::Net(NetError::Rendezvous { errors, .. }))) => {
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].0.to_string(), "127.0.0.1:9");
        }
        other => panic!("expected a rendezvous error, got {other:?}"),
    }
}

#[test]
fn a_sender_blocks_while_a_peer_that_does_not_read_holds_the_high_water_mark() {
    // A "node" that says who it is (the UNL's node id) and then never reads.
    let real = loopback();
    // Its v2 form: a plain-text peer, as this raw socket is.
    let unl = ok(real.unl(NEVER)).parse::<AnyUnl>().unwrap().to_v2();
    real.stop(NEVER).unwrap();
    let deaf = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = Unl {
        port: deaf.local_addr().unwrap().port(),
        ..unl
    };
    let iam = format!("P2P/1 IAM {}\r\n", unl.node_id.unwrap().mailbox_id());
    let holder = std::thread::spawn(move || {
        use std::io::Write;
        let (mut stream, _) = deaf.accept().unwrap();
        stream.write_all(iam.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_secs(20));
        drop(stream);
    });
    let bob = loopback();
    ok(bob.start(NEVER));
    let ticket = bob.connect_start(AnyUnl::V2(target)).unwrap();
    let outcome = ok(bob.connect_wait(ticket, None, NEVER));
    assert!(outcome.connected, "{outcome:?}");
    let conn = outcome.conn.unwrap();

    let line = "x".repeat(60_000);
    let mut sent = 0usize;
    let blocked = loop {
        let deadline = Some(Instant::now() + Duration::from_millis(300));
        match bob.send_line(conn, &line, deadline, NEVER) {
            Ok(()) => sent += line.len() + 2,
            Err(Waited::Failed(DriverError::Timeout { what, .. })) => break what,
            Err(e) => panic!("{e:?}"),
        }
        assert!(sent < 64 << 20, "never blocked after {sent} bytes");
    };
    assert!(blocked.contains("does not read"), "{blocked}");
    // Blocked at the mark (plus what the kernel's socket buffers took), well before the
    // node's own 16 MiB cap would have closed the connection.
    assert!(sent >= HIGH_WATER_BYTES, "{sent}");
    assert!(sent < 16 << 20, "{sent}");
    assert!(
        bob.conn_info(conn).unwrap().open,
        "the connection stays open"
    );
    assert!(!bob.try_send_line(conn, "one more").unwrap());
    bob.stop(NEVER).unwrap();
    drop(holder);
}

/// A minimal rendezvous on loopback: `NODES EMPTY` to every `BOOTSTRAP`, `REMOTE TCP <port>`
/// to every `SOURCE TCP`; nothing to anything else. Returns its address.
fn fake_rendezvous() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let port = stream.peer_addr().unwrap().port();
                let mut out = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    let reply = if line.starts_with("BOOTSTRAP") {
                        "NODES EMPTY\r\n".to_owned()
                    } else if line.starts_with("SOURCE TCP") {
                        format!("REMOTE TCP {port}\r\n")
                    } else {
                        continue;
                    };
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_line_sent_right_after_blocking_calls_goes_out_at_once() {
    // Blocking calls run the node's loop themselves and may take the waker's event of a
    // command sent meanwhile; the line must still leave at once, not at the next timer.
    let alice = loopback();
    // Passive as given: the fake rendezvous answers only BOOTSTRAP and PASSIVE READY, so an
    // auto node could not find out its role from it.
    let config = Config::new()
        .with_bind("127.0.0.1".parse().unwrap())
        .with_node_type(node::Role::Passive)
        .with_rendezvous(fake_rendezvous().to_string());
    let bob = Driver::spawn(config, NetKind::P2p, 0).unwrap();
    let (to_alice, to_bob) = pair(&alice, &bob);
    for i in 0..20 {
        assert_eq!(ok(bob.bootstrap(NEVER)).unwrap().offered, 0);
        assert!(ok(bob.advertise(NEVER)).is_some());
        ok(bob.send_line(to_alice, &format!("after blocking calls {i}"), None, NEVER));
        let deadline = Some(Instant::now() + Duration::from_secs(2));
        let got = alice.recv_line(to_bob, deadline, NEVER).unwrap();
        assert_eq!(got, Some(format!("after blocking calls {i}")), "round {i}");
    }
}
