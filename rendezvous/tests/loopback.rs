//! The rendezvous server over real loopback TCP, with real clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rendezvous::{Config, RunningServer};
use server_kit::testkit::{LineClient as Client, ServerProcess};
use wire::rendezvous::Response;

const DEADLINE: Duration = Duration::from_secs(10);

fn start(config: Config) -> RunningServer {
    RunningServer::start("127.0.0.1:0".parse().unwrap(), config).unwrap()
}

fn node_addrs(reply: &str) -> Vec<SocketAddr> {
    match reply.parse::<Response>().unwrap() {
        Response::Nodes(entries) => entries.into_iter().map(|e| e.addr).collect(),
        other => panic!("expected NODES, got {other:?}"),
    }
}

#[test]
fn passive_ready_then_bootstrap_from_another_client_returns_it() {
    let server = start(Config::default());
    let mut alice = Client::from("127.0.0.2", server.addr());
    alice.send("PASSIVE READY 50500 10");
    let mut bob = Client::from("127.0.0.3", server.addr());
    assert_eq!(
        node_addrs(&bob.ask("BOOTSTRAP 5")),
        vec!["127.0.0.2:50500".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(bob.ask("BOOTSTRAP 5"), "NODES p:127.0.0.2:50500 ");
    // Never the asker: alice's IP is excluded for a PyP2P-style BOOTSTRAP...
    assert_eq!(alice.ask("BOOTSTRAP 5"), "NODES EMPTY");
    // ...and with our extension, only alice's own port is.
    bob.send("PASSIVE READY 7000 10");
    let mut got = node_addrs(&bob.ask("BOOTSTRAP 5 7000"));
    got.sort();
    assert_eq!(got, vec!["127.0.0.2:50500".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn source_tcp_reports_the_real_source_port() {
    let server = start(Config::default());
    let mut c = Client::from("127.0.0.1", server.addr());
    let port = c.local_addr().port();
    assert_eq!(c.ask("SOURCE TCP 1234"), format!("REMOTE TCP {port}"));
}

#[test]
fn full_candidate_challenge_accept_fight_exchange() {
    let server = start(Config::default());
    let mut node = Client::from("127.0.0.4", server.addr());
    node.send("SIMULTANEOUS READY 0 0");
    let mut cand = Client::from("127.0.0.5", server.addr());
    // Registration is asynchronous: retry until the node is known.
    let started = Instant::now();
    loop {
        let reply = cand.ask("CANDIDATE 127.0.0.4 TCP 40000 40001");
        if reply == "PREDICTION SET" {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "node never registered: {reply}"
        );
    }
    assert_eq!(node.recv(), "CHALLENGE 127.0.0.5 40000 40001 TCP");
    let ntp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 0.5;
    node.send(&format!("ACCEPT 127.0.0.5 41000 41001 TCP {ntp}"));
    assert_eq!(
        cand.recv(),
        format!("FIGHT 127.0.0.4 41000 41001 TCP {ntp}")
    );
}

#[test]
fn clear_removes_a_registration() {
    let server = start(Config::default());
    let mut alice = Client::from("127.0.0.6", server.addr());
    alice.send("PASSIVE READY 6000 1");
    alice.send("PASSIVE READY 6001 1");
    let mut bob = Client::from("127.0.0.7", server.addr());
    assert_eq!(node_addrs(&bob.ask("BOOTSTRAP 10")).len(), 2);
    // One port, from the registering connection...
    alice.send("CLEAR 6000");
    assert_eq!(bob.ask("BOOTSTRAP 10"), "NODES p:127.0.0.6:6001 ");
    // ...and a bare CLEAR from a fresh connection removes what the IP registered.
    let mut fresh = Client::from("127.0.0.6", server.addr());
    fresh.send("CLEAR");
    fresh.send("QUIT");
    assert!(fresh.is_closed());
    assert_eq!(bob.ask("BOOTSTRAP 10"), "NODES EMPTY");
}

#[test]
fn registrations_expire_after_a_short_configured_lifetime() {
    let server = start(Config {
        node_lifetime: Duration::from_millis(300),
        ..Config::default()
    });
    let mut alice = Client::from("127.0.0.8", server.addr());
    alice.send("PASSIVE READY 6000 1");
    let mut bob = Client::from("127.0.0.9", server.addr());
    assert_eq!(bob.ask("BOOTSTRAP 10"), "NODES p:127.0.0.8:6000 ");
    let started = Instant::now();
    while bob.ask("BOOTSTRAP 10") != "NODES EMPTY" {
        assert!(started.elapsed() < DEADLINE, "registration never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn garbage_and_silent_connections_do_not_stop_a_good_client() {
    let server = start(Config::default());
    let mut good = Client::from("127.0.0.10", server.addr());
    good.send("PASSIVE READY 9000 1");

    // 200 connections that never send anything.
    let silent: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();

    // 1,000 garbage lines: unknown commands, bad arguments, binary, an oversized line.
    let mut garbage_clients = Vec::new();
    for i in 0..1_000 {
        if i % 16 == 0 {
            garbage_clients.push(TcpStream::connect(server.addr()).unwrap());
        }
        let line: Vec<u8> = match i % 5 {
            0 => b"HELLO THERE\r\n".to_vec(),
            1 => b"BOOTSTRAP 1000\r\n".to_vec(),
            2 => b"\xff\xfe\x00\x01\r\n".to_vec(),
            3 => b"CANDIDATE not-an-ip TCP 1\r\n".to_vec(),
            _ => format!("ACCEPT 1.2.3.4 {} TCP 1\r\n", "9 ".repeat(40)).into_bytes(),
        };
        let _ = garbage_clients.last_mut().unwrap().write_all(&line);
    }
    let mut big = TcpStream::connect(server.addr()).unwrap();
    let _ = big.write_all(&vec![b'X'; 100_000]);

    let mut asker = Client::from("127.0.0.11", server.addr());
    for _ in 0..100 {
        assert_eq!(asker.ask("BOOTSTRAP 3"), "NODES p:127.0.0.10:9000 ");
    }
    // The garbage got error lines, not silence.
    let mut reader = BufReader::new(garbage_clients.remove(0));
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert_eq!(first, "ERROR unknown command: \"HELLO THERE\"\r\n");
    drop(silent);
}

#[test]
fn bad_input_gets_an_error_line_and_the_connection_survives() {
    let server = start(Config::default());
    let mut c = Client::from("127.0.0.12", server.addr());
    assert_eq!(
        c.ask("BOOTSTRAP 500"),
        "ERROR BOOTSTRAP: <n> must be an integer in 1..=100, got \"500\""
    );
    c.stream().write_all(b"\xc3\x28\n").unwrap();
    assert_eq!(
        c.recv(),
        "ERROR line is not valid UTF-8 (first bad byte at offset 0)"
    );
    // Bare \n is accepted too.
    c.stream().write_all(b"SOURCE TCP\n").unwrap();
    assert!(c.recv().starts_with("REMOTE TCP "));
}

#[test]
fn an_oversized_line_closes_that_connection_only() {
    let server = start(Config::default());
    let mut bad = Client::from("127.0.0.13", server.addr());
    bad.stream().write_all(&vec![b'A'; 10_000]).unwrap();
    assert_eq!(bad.recv(), "ERROR line too long: 10000 bytes (limit 4096)");
    assert!(bad.is_closed());
    let mut good = Client::from("127.0.0.13", server.addr());
    assert!(good.ask("SOURCE TCP").starts_with("REMOTE TCP "));
}

#[test]
fn per_ip_connection_cap_refuses_with_a_reason() {
    let server = start(Config {
        max_connections_per_ip: 3,
        ..Config::default()
    });
    let held: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::from("127.0.0.14", server.addr());
            assert!(c.ask("SOURCE TCP").starts_with("REMOTE TCP"));
            c
        })
        .collect();
    let mut refused = Client::from("127.0.0.14", server.addr());
    assert_eq!(
        refused.recv(),
        "ERROR too many connections from 127.0.0.14 (limit 3)"
    );
    assert!(refused.is_closed());
    let mut other_ip = Client::from("127.0.0.15", server.addr());
    assert!(other_ip.ask("SOURCE TCP").starts_with("REMOTE TCP"));
    drop(held);
}

#[test]
fn shutdown_closes_every_connection_and_reports() {
    let server = start(Config::default());
    let mut c = Client::from("127.0.0.16", server.addr());
    assert!(c.ask("SOURCE TCP").starts_with("REMOTE TCP"));
    let stats = server.stop().unwrap();
    assert!(c.is_closed());
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.lines, 1);
}

/// The real binary: serves, then exits cleanly on SIGTERM with a log line.
#[test]
fn binary_serves_and_stops_on_sigterm() {
    let server =
        ServerProcess::spawn(env!("CARGO_BIN_EXE_rendezvous"), &["--idle-timeout", "30s"]).unwrap();
    let mut c = Client::from("127.0.0.1", server.addr());
    assert!(c.ask("SOURCE TCP").starts_with("REMOTE TCP"));
    let (status, log) = server.terminate().unwrap();
    assert!(status.success(), "exit status {status:?}: {log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(c.is_closed());
}

#[test]
fn a_request_sent_with_the_fin_is_answered_and_the_connection_closed_at_once() {
    // Data and FIN can arrive in one readiness event; the FIN raises no second edge, so a
    // driver that stops at a short read would only notice at the idle timeout (120 s).
    let server = start(Config::default());
    for _ in 0..20 {
        let mut c = Client::from("127.0.0.1", server.addr());
        c.stream().write_all(b"SOURCE TCP\r\n").unwrap();
        c.stream().shutdown(std::net::Shutdown::Write).unwrap();
        let started = Instant::now();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        assert!(all.starts_with("REMOTE TCP "), "{all:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "closed after {:?}",
            started.elapsed()
        );
    }
    server.stop().unwrap();
}
