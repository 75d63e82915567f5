//! The forwarding-check server over real loopback TCP, with real clients and real dial-backs.
//! Several loopback source addresses (127.0.0.2, 127.0.0.3, ...) play different callers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use forwarding_check::core::{PYP2P_NO, PYP2P_YES};
use forwarding_check::{Config, RunningServer};
use server_kit::testkit::{ServerProcess, connect_from, exchange};

const DEADLINE: Duration = Duration::from_secs(5);

fn start(config: Config) -> RunningServer {
    RunningServer::start("127.0.0.1:0".parse().unwrap(), config).unwrap()
}

/// `GET target` from `ip`: (status, body).
fn get(ip: &str, server: SocketAddr, target: &str) -> (u16, String) {
    let answer = exchange(
        ip,
        server,
        format!("GET {target} HTTP/1.1\r\nHost: {server}\r\nUser-Agent: test\r\n\r\n").as_bytes(),
    );
    split(&answer)
}

fn split(answer: &str) -> (u16, String) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {answer:?}"));
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    (head[9..12].parse().unwrap(), body.to_owned())
}

fn listener_on(ip: &str) -> TcpListener {
    TcpListener::bind(format!("{ip}:0")).unwrap()
}

/// A port on `ip` where nothing listens (bound, then released).
fn closed_port(ip: &str) -> u16 {
    listener_on(ip).local_addr().unwrap().port()
}

fn pyp2p_check(port: u16) -> String {
    format!("/net.php?action=is_port_forwarded&port={port}&proto=TCP")
}

#[test]
fn get_wan_ip_returns_the_callers_address() {
    let server = start(Config::default());
    assert_eq!(
        get("127.0.0.1", server.addr(), "/net.php?action=get_wan_ip"),
        (200, "127.0.0.1".to_owned())
    );
    assert_eq!(
        get("127.0.0.1", server.addr(), "/v1/wan-ip"),
        (200, r#"{"wan_ip":"127.0.0.1"}"#.to_owned())
    );
    assert_eq!(
        get("127.0.0.2", server.addr(), "/net.php?action=get_wan_ip"),
        (200, "127.0.0.2".to_owned())
    );
}

#[test]
fn a_listening_port_is_yes_and_open() {
    let server = start(Config::default());
    let listener = listener_on("127.0.0.1");
    let port = listener.local_addr().unwrap().port();
    assert_eq!(
        get("127.0.0.1", server.addr(), &pyp2p_check(port)),
        (200, PYP2P_YES.to_owned())
    );
    let (status, body) = get(
        "127.0.0.1",
        server.addr(),
        &format!("/v1/check?port={port}"),
    );
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!(
            r#"{{"ip":"127.0.0.1","port":{port},"proto":"TCP","open":true,"ms":"#
        )),
        "{body}"
    );
    // The dial-backs really arrived, from the server, and sent nothing.
    listener.set_nonblocking(false).unwrap();
    for _ in 0..2 {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
}

#[test]
fn a_closed_port_is_no_and_fast() {
    let server = start(Config::default());
    let port = closed_port("127.0.0.1");
    let started = Instant::now();
    assert_eq!(
        get("127.0.0.1", server.addr(), &pyp2p_check(port)),
        (200, PYP2P_NO.to_owned())
    );
    let (status, body) = get(
        "127.0.0.1",
        server.addr(),
        &format!("/v1/check?port={port}"),
    );
    assert_eq!(status, 200);
    assert!(body.contains(r#""open":false"#), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a reset is an immediate no"
    );
}

#[test]
fn only_the_callers_own_address_is_ever_dialed() {
    let server = start(Config::default());
    // Something listens on 127.0.0.3 only.
    let third = listener_on("127.0.0.3");
    let port = third.local_addr().unwrap().port();
    third.set_nonblocking(true).unwrap();
    // 127.0.0.2 naming 127.0.0.3 is refused...
    for target in [
        format!("/v1/check?port={port}&ip=127.0.0.3"),
        format!("{}&host=127.0.0.3", pyp2p_check(port)),
        format!("/v1/check?port={port}&addr=127.0.0.3%3A{port}"),
    ] {
        let (status, body) = get("127.0.0.2", server.addr(), &target);
        assert_eq!(status, 400, "{target}");
        assert!(
            body.contains("never dials an address named in the request"),
            "{body}"
        );
    }
    // ...and asking about the port checks 127.0.0.2's port, where nothing listens.
    assert_eq!(
        get("127.0.0.2", server.addr(), &pyp2p_check(port)),
        (200, PYP2P_NO.to_owned())
    );
    std::thread::sleep(Duration::from_millis(200));
    match third.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the third address was contacted: {other:?}"),
    }
}

#[test]
fn udp_is_refused_not_pretended() {
    let server = start(Config::default());
    let (status, body) = get(
        "127.0.0.1",
        server.addr(),
        "/net.php?action=is_port_forwarded&port=5000&proto=UDP",
    );
    assert_eq!(status, 400);
    assert!(body.contains("UDP is not supported"), "{body}");
}

#[test]
fn a_flood_from_one_ip_is_throttled_while_another_ip_is_served() {
    let server = start(Config::default()); // 10 checks a minute, bursts of 5
    let addr = server.addr();
    let flood_port = closed_port("127.0.0.4");
    let flood = std::thread::spawn(move || {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..10)
                        .map(|_| get("127.0.0.4", addr, &format!("/v1/check?port={flood_port}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    // Meanwhile another caller is served normally, again and again.
    let bob = listener_on("127.0.0.5");
    let bob_port = bob.local_addr().unwrap().port();
    for _ in 0..3 {
        assert_eq!(
            get("127.0.0.5", addr, &pyp2p_check(bob_port)),
            (200, PYP2P_YES.to_owned())
        );
    }
    let answers = flood.join().unwrap();
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(ok + limited.len(), 40, "only 200 or 429: {answers:?}");
    assert!(ok <= 5, "at most a burst of 5 checks got through, not {ok}");
    assert!(
        limited
            .iter()
            .any(|(_, body)| body.contains("rate limit: at most 10 port checks")),
        "{limited:?}"
    );
    // wan-ip still works for the flooder.
    assert_eq!(get("127.0.0.4", addr, "/v1/wan-ip").0, 200);
    let stats = server.stop().unwrap();
    assert!(stats.checks <= 5 + 3, "{stats:?}");
}

#[test]
fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let server = start(Config::default());
    let addr = server.addr();
    // Connections that never say anything do not get in the way.
    let silent: Vec<TcpStream> = (0..50)
        .map(|i| connect_from(&format!("127.0.1.{}", i + 1), addr))
        .collect();
    for garbage in [
        &b"HELLO THERE\r\n\r\n"[..],
        b"\xff\xfe\x00\x01\r\n\r\n",
        b"GET /v1/check?port=%zz HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: many\r\n\r\n",
        b"PASSIVE READY 50500 10\r\n\r\n",
    ] {
        let (status, body) = split(&exchange("127.0.0.6", addr, garbage));
        assert_eq!(status, 400, "{garbage:?}: {body}");
        assert!(!body.is_empty());
    }
    // An oversized head: 431, connection closed.
    let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    let answer = exchange("127.0.0.7", addr, &big);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
    // A request cut short by the client: 400 saying so.
    let mut half = connect_from("127.0.0.8", addr);
    half.write_all(b"GET /v1/wan-ip HT").unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    half.read_to_string(&mut answer).unwrap();
    assert!(
        answer.contains("closed before the request head was complete"),
        "{answer}"
    );
    // Still serving.
    assert_eq!(get("127.0.0.9", addr, "/v1/wan-ip").0, 200);
    drop(silent);
}

#[test]
fn idle_connections_are_closed_after_the_timeout() {
    let server = start(Config {
        idle_timeout: Duration::from_millis(300),
        ..Config::default()
    });
    let mut silent = connect_from("127.0.0.10", server.addr());
    let started = Instant::now();
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing is said to a silent connection");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[test]
fn shutdown_closes_every_connection_and_reports() {
    let server = start(Config::default());
    let mut waiting = connect_from("127.0.0.11", server.addr());
    waiting.write_all(b"GET /v1/wan").unwrap();
    // Answered after `waiting` was accepted (the accept queue is FIFO).
    assert_eq!(get("127.0.0.11", server.addr(), "/v1/wan-ip").0, 200);
    let stats = server.stop().unwrap();
    let mut rest = Vec::new();
    waiting.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed without an answer");
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.open, 0);
}

/// The real binary: serves, logs a line per check, exits cleanly on SIGTERM.
#[test]
fn binary_serves_and_stops_on_sigterm() {
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_forwarding-check"),
        &["--connect-timeout", "1s", "--checks-per-minute", "30"],
    )
    .unwrap();
    let addr = server.addr();
    let listener = listener_on("127.0.0.1");
    let open = listener.local_addr().unwrap().port();
    assert_eq!(
        get("127.0.0.1", addr, &pyp2p_check(open)),
        (200, PYP2P_YES.to_owned())
    );
    let (status, log) = server.terminate().unwrap();
    assert!(status.success(), "exit status {status:?}: {log}");
    assert!(log.contains("port check"), "{log}");
    assert!(log.contains("open=true"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
}
