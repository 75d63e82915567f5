//! Nodes and a real rendezvous server on loopback: bootstrap, flood, misbehaving peers, and
//! rendezvous outages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use integration_tests::{loopback_node, take_lines, turn_all};
use node::core::Event;
use node::{Config, Net, NetError};
use rendezvous::RunningServer;

fn rendezvous() -> RunningServer {
    RunningServer::start(
        "127.0.0.1:0".parse().unwrap(),
        rendezvous::Config::default(),
    )
    .unwrap()
}

/// A loopback port nobody listens on.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Starts `n` nodes that advertise and bootstrap from `servers`, and waits until every node
/// has a connection.
fn overlay(servers: &[String], n: usize) -> Vec<Net> {
    let mut nets: Vec<Net> = (0..n)
        .map(|i| loopback_node(servers, 100 + i as u64))
        .collect();
    for net in &mut nets {
        net.start().unwrap();
        net.advertise().unwrap();
        net.bootstrap().unwrap();
    }
    let all_connected = turn_all(&mut nets, Duration::from_secs(10), |nets| {
        nets.iter().all(|n| n.connection_count() >= 1)
    });
    assert!(all_connected, "not every node got a connection");
    // Let crossing dials settle (duplicates are closed after HELLO).
    turn_all(&mut nets, Duration::from_millis(300), |_| false);
    nets
}

#[test]
fn five_nodes_each_broadcast_and_every_node_receives_every_line_exactly_once() {
    let rv = rendezvous();
    let servers = vec![rv.addr().to_string()];
    let mut nets = overlay(&servers, 5);
    // max_outbound 2: not a full mesh, so lines must be forwarded.
    for (i, net) in nets.iter_mut().enumerate() {
        net.broadcast(&format!("line from node {i}")).unwrap();
    }
    let mut got: Vec<Vec<String>> = vec![Vec::new(); 5];
    let complete = turn_all(&mut nets, Duration::from_secs(5), |nets| {
        for (i, net) in nets.iter_mut().enumerate() {
            got[i].extend(take_lines(net));
        }
        got.iter().all(|g| g.len() >= 4)
    });
    // Wait a little more: a duplicate would arrive now.
    turn_all(&mut nets, Duration::from_millis(300), |nets| {
        for (i, net) in nets.iter_mut().enumerate() {
            got[i].extend(take_lines(net));
        }
        false
    });
    assert!(complete, "lines missing: {got:?}");
    for (i, lines) in got.iter().enumerate() {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for l in lines {
            *counts.entry(l.as_str()).or_default() += 1;
        }
        for j in 0..5 {
            let expected = usize::from(i != j);
            let line = format!("line from node {j}");
            assert_eq!(
                counts.get(line.as_str()).copied().unwrap_or(0),
                expected,
                "node {i} got {lines:?}"
            );
        }
    }
    for mut net in nets {
        net.stop();
    }
    rv.stop().unwrap();
}

#[test]
fn a_node_survives_a_peer_sending_garbage_or_an_oversized_line() {
    let mut a = Net::new(
        Config::new()
            .with_bind("127.0.0.1".parse().unwrap())
            .with_max_line_bytes(1024),
    )
    .unwrap();
    a.start().unwrap();
    let addr = a.local_addr().unwrap();
    let mut b = Net::new(Config::new().with_listen(false)).unwrap();
    b.connect(addr);
    let mut nets = vec![a, b];
    assert!(turn_all(&mut nets, Duration::from_secs(5), |n| {
        n[0].connection_count() == 1 && n[1].connection_count() == 1
    }));

    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(b"\xff\xfe not utf-8\r\n").unwrap();
    let mut oversized = TcpStream::connect(addr).unwrap();
    oversized.write_all(&vec![b'x'; 4096]).unwrap();
    let mut bad_control = TcpStream::connect(addr).unwrap();
    bad_control.write_all(b"P2P/1 BCAST zz 1 x\r\n").unwrap();
    // All three are cut off; b is still there.
    for stream in [&mut garbage, &mut oversized, &mut bad_control] {
        stream
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
    }
    let mut closed = [false; 3];
    assert!(
        turn_all(&mut nets, Duration::from_secs(5), |_| {
            for (i, s) in [&mut garbage, &mut oversized, &mut bad_control]
                .into_iter()
                .enumerate()
            {
                let mut buf = [0u8; 256];
                if matches!(s.read(&mut buf), Ok(0) | Err(_)) && !closed[i] {
                    // Ok(0) is EOF; a timeout error means still open, so check the kind.
                    closed[i] = matches!(s.read(&mut buf), Ok(0))
                        || matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
                }
            }
            closed.iter().all(|c| *c)
        }),
        "not every misbehaving peer was disconnected: {closed:?}"
    );
    assert!(turn_all(&mut nets, Duration::from_secs(2), |n| n[0]
        .connection_count()
        == 1));

    // The good peer is unaffected.
    for con in nets[1].connections() {
        con.send_line("still here").unwrap();
    }
    let mut got = Vec::new();
    assert!(turn_all(&mut nets, Duration::from_secs(5), |n| {
        got.extend(take_lines(&mut n[0]));
        !got.is_empty()
    }));
    assert_eq!(got, vec!["still here".to_owned()]);
}

#[test]
fn a_plain_line_peer_like_pyp2p_can_talk_to_a_node() {
    let mut a = Net::new(Config::new().with_bind("127.0.0.1".parse().unwrap())).unwrap();
    a.start().unwrap();
    let mut raw = TcpStream::connect(a.local_addr().unwrap()).unwrap();
    raw.write_all(b"hello node\r\n").unwrap();
    let mut got = Vec::new();
    assert!(
        a.poll_until(Duration::from_secs(5), |a| {
            got.extend(take_lines(a));
            !got.is_empty()
        })
        .unwrap()
    );
    assert_eq!(got, vec!["hello node".to_owned()]);
    for con in a.connections() {
        con.send_line("hello raw peer").unwrap();
    }
    a.poll(Some(Duration::ZERO)).unwrap();
    let mut reader = BufReader::new(raw);
    // The node opens with its control lines (IAM: its UNL node id; HELLO), which a PyP2P peer
    // sees as ordinary lines, then the application's line.
    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        lines.push(line);
    }
    assert!(lines[0].starts_with("P2P/1 IAM "), "{lines:?}");
    assert!(lines[1].starts_with("P2P/1 HELLO "), "{lines:?}");
    assert_eq!(lines[2], "hello raw peer\r\n");
}

#[test]
fn rendezvous_down_at_start_is_a_clear_error_naming_each_server() {
    let down = closed_port();
    let mut net = loopback_node(&[down.to_string()], 1);
    let err = net.bootstrap().unwrap_err();
    assert!(matches!(err, NetError::Rendezvous { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&down.to_string()), "{text}");
    assert!(text.contains("refused"), "{text}");
    let err = net.advertise().unwrap_err();
    assert!(err.to_string().starts_with("advertise failed"), "{err}");
}

#[test]
fn bootstrap_fails_over_to_the_second_server() {
    let rv = rendezvous();
    let down = closed_port();
    let mut net = loopback_node(&[down.to_string(), rv.addr().to_string()], 1);
    let report = net.bootstrap().unwrap();
    assert_eq!(report.server, rv.addr());
    rv.stop().unwrap();
}

#[test]
fn the_overlay_keeps_flooding_when_the_rendezvous_goes_down_and_nodes_re_register() {
    let rv = rendezvous();
    let rv_addr = rv.addr();
    let servers = vec![rv_addr.to_string()];
    let mut nets = overlay(&servers, 3);
    rv.stop().unwrap();
    // Bootstrap retries fail now; the connections stay.
    turn_all(&mut nets, Duration::from_millis(600), |_| false);
    let failures = nets
        .iter_mut()
        .flat_map(|n| n.events().collect::<Vec<_>>())
        .filter(|e| matches!(e, Event::RendezvousFailed { .. }))
        .count();
    assert!(failures >= 1, "no re-bootstrap was attempted");
    nets[0].broadcast("after the outage").unwrap();
    let mut got = [0usize; 3];
    assert!(
        turn_all(&mut nets, Duration::from_secs(5), |nets| {
            for (i, n) in nets.iter_mut().enumerate() {
                got[i] += take_lines(n).len();
            }
            got[1] == 1 && got[2] == 1
        }),
        "{got:?}"
    );

    // The rendezvous comes back on the same address: passive nodes register again by
    // themselves (re-advertise after a failure), so a newcomer finds them.
    let rv = RunningServer::start(rv_addr, rendezvous::Config::default()).unwrap();
    let mut newcomer = loopback_node(&servers, 99);
    let mut offered = 0;
    for _ in 0..50 {
        turn_all(&mut nets, Duration::from_millis(100), |_| false);
        offered = newcomer.bootstrap().unwrap().offered;
        if offered == 3 {
            break;
        }
    }
    assert_eq!(
        offered, 3,
        "the restarted rendezvous did not learn every node again"
    );
    rv.stop().unwrap();
}

#[test]
fn a_peer_that_sends_and_closes_at_once_is_read_and_then_dropped() {
    // The data and the FIN can arrive in one readiness event; the FIN raises no new edge.
    // 20 connections from one IP at once: over the default per-IP inbound cap (8).
    let mut a = Net::new(
        Config::new()
            .with_bind("127.0.0.1".parse().unwrap())
            .with_max_inbound_per_ip(32),
    )
    .unwrap();
    a.start().unwrap();
    for i in 0..20 {
        let mut raw = TcpStream::connect(a.local_addr().unwrap()).unwrap();
        raw.write_all(format!("last words {i}\r\n").as_bytes())
            .unwrap();
        drop(raw);
    }
    let mut got = Vec::new();
    let done = a
        .poll_until(Duration::from_secs(3), |a| {
            got.extend(take_lines(a));
            got.len() == 20 && a.connection_count() == 0
        })
        .unwrap();
    assert!(
        done,
        "lines {got:?}, {} connections still open",
        a.connection_count()
    );
}
