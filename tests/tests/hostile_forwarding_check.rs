//! Misbehaving clients against a real forwarding-check server on loopback: slowloris heads,
//! connection floods, oversized and non-UTF-8 heads, clients that never read their answer,
//! connect/disconnect churn, and requests that try to make the server dial a third address
//! (query parameters, `X-Forwarded-For` / `Forwarded` headers, an absolute-form target). In
//! each, the attacker is cut off and a victim on another IP is served within normal latency
//! (printed with `--nocapture`).
//!
//! Attackers connect from 127.0.0.10 and up, the victim from 127.0.0.3.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use forwarding_check::{Config, RunningServer};
use integration_tests::hostile::{
    Attack, Latency, closed_within, connect_from, http_get, lo, report, wait_for,
};

const SAMPLES: usize = 30;

fn server() -> RunningServer {
    let config = Config {
        idle_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        max_connections: 64,
        max_connections_per_ip: 8,
        ..Config::default()
    };
    RunningServer::start("127.0.0.1:0".parse().unwrap(), config).unwrap()
}

/// One victim request from 127.0.0.3: its WAN IP, on a fresh connection.
fn victim_request(server: SocketAddr) -> io::Result<()> {
    let (status, body) = http_get(lo(3), server, "/v1/wan-ip")?;
    if status == 200 && body.contains("127.0.0.3") {
        Ok(())
    } else {
        Err(io::Error::other(format!("{status} {body}")))
    }
}

fn victim(server: SocketAddr) -> Latency {
    Latency::measure(SAMPLES, || victim_request(server))
}

/// Everything the server sends on `stream` until it closes.
fn answer(stream: &mut std::net::TcpStream) -> String {
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn slowloris_heads_get_408_at_the_idle_timeout() {
    let server = server();
    let addr = server.addr();
    let before = victim(addr);
    let started = Instant::now();
    let attackers: Vec<_> = (0..8)
        .map(|_| connect_from(lo(10), addr).unwrap())
        .collect();
    let trickle: Vec<_> = attackers.iter().map(|s| s.try_clone().unwrap()).collect();
    let head = b"GET /v1/wan-ip HTTP/1.1\r\nHost: x\r\n";
    let attack = Attack::start(move |i| {
        let byte = head[usize::try_from(i).unwrap() % head.len()];
        let sent = trickle
            .iter()
            .filter(|s| {
                let mut s: &std::net::TcpStream = s;
                s.write_all(&[byte]).is_ok()
            })
            .count();
        std::thread::sleep(Duration::from_secs(1));
        sent as u64
    });
    std::thread::sleep(Duration::from_millis(200));
    let during = victim(addr);
    for mut s in attackers {
        let reply = answer(&mut s);
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    }
    let cut_after = started.elapsed();
    attack.stop();
    report(
        "forwarding-check",
        "slowloris (8 heads, 1 byte/s each)",
        &before,
        &during,
        &format!(
            "all 8 answered 408 and closed after {} ms (idle timeout 1 s)",
            cut_after.as_millis()
        ),
    );
}

#[test]
fn a_connection_flood_from_one_ip_gets_429_past_its_cap() {
    let server = server();
    let addr = server.addr();
    let before = victim(addr);
    let attack = Attack::start(move |_| {
        // 20 connections at once, held silent: 8 are admitted, the rest refused with 429.
        let mut streams: Vec<_> = (0..20)
            .filter_map(|_| connect_from(lo(10), addr).ok())
            .collect();
        let mut refused = 0;
        for s in &mut streams {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 512];
            if let Ok(n) = s.read(&mut buf)
                && buf[..n].starts_with(b"HTTP/1.1 429 ")
            {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    text.contains("too many connections from 127.0.0.10 (limit 8)"),
                    "{text}"
                );
                refused += 1;
            }
        }
        assert!(refused >= 12, "only {refused} of 20 refused");
        refused
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 24));
    let during = victim(addr);
    let refused = attack.stop();
    report(
        "forwarding-check",
        "connection flood from one IP (cap 8)",
        &before,
        &during,
        &format!("{refused} connections refused with 429 `too many connections from 127.0.0.10`"),
    );
}

#[test]
fn oversized_and_non_utf8_heads_get_4xx_and_are_closed() {
    let server = server();
    let addr = server.addr();
    let before = victim(addr);
    let attack = Attack::start(move |i| {
        let Ok(mut s) = connect_from(lo(10), addr) else {
            return 0;
        };
        let want = if i % 2 == 0 {
            let mut head = b"GET /v1/wan-ip HTTP/1.1\r\nX-Pad: ".to_vec();
            head.resize(1 << 20, b'a');
            let _ = s.write_all(&head);
            "HTTP/1.1 431 "
        } else {
            let _ = s.write_all(b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: \xc3\x28\r\n\r\n");
            "HTTP/1.1 400 "
        };
        let reply = answer(&mut s);
        // The reset of a close with unread data may overtake the answer; if it arrived, it
        // is the right one.
        assert!(reply.is_empty() || reply.starts_with(want), "{reply}");
        1
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 6));
    let during = victim(addr);
    let cut = attack.stop();
    report(
        "forwarding-check",
        "oversized (1 MiB) and non-UTF-8 request heads",
        &before,
        &during,
        &format!("{cut} connections answered 431/400 and closed"),
    );
}

#[test]
fn clients_that_never_read_or_close_are_dropped_after_the_linger_time() {
    let server = server();
    let addr = server.addr();
    let before = victim(addr);
    let started = Instant::now();
    // 8 requests whose answers are never read, on connections never closed.
    let mut silent: Vec<_> = (0..8)
        .map(|_| {
            let mut s = connect_from(lo(10), addr).unwrap();
            s.write_all(b"GET /v1/wan-ip HTTP/1.1\r\n\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let during = victim(addr);
    // Each got its answer and a FIN...
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(3)),
            "no answer and FIN"
        );
    }
    // ...and although they never close, the server lets go of them after the linger time: the
    // attacker's IP gets its slots back (while they are held, a 9th connection gets 429).
    let freed = wait_for(Duration::from_secs(5), || {
        http_get(lo(10), addr, "/v1/wan-ip").is_ok_and(|(status, _)| status == 200)
    });
    assert!(freed, "silent clients are held forever");
    let dropped_after = started.elapsed();
    drop(silent);
    report(
        "forwarding-check",
        "clients that never read nor close",
        &before,
        &during,
        &format!(
            "all 8 closed after {} ms (answer, FIN, 2 s linger)",
            dropped_after.as_millis()
        ),
    );
}

#[test]
fn connect_disconnect_churn_leaves_nothing_behind() {
    let server = server();
    let addr = server.addr();
    let before = victim(addr);
    let attack = Attack::start(move |i| {
        let Ok(s) = connect_from(lo(10), addr) else {
            return 0;
        };
        match i % 3 {
            0 => {}
            1 => {
                let _ = (&s).write_all(b"GET /v1/wan-ip HTTP/1.1\r\n\r\n");
            }
            _ => {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        }
        1
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 2000));
    let during = victim(addr);
    let churned = attack.stop();
    // No connection was leaked against the attacker's per-IP count.
    assert!(wait_for(Duration::from_secs(3), || {
        let held: Vec<_> = (0..8)
            .filter_map(|_| connect_from(lo(10), addr).ok())
            .collect();
        held.iter().all(|s| {
            let mut s = s.try_clone().unwrap();
            s.write_all(b"GET /v1/wan-ip HTTP/1.1\r\n\r\n").unwrap();
            answer(&mut s).starts_with("HTTP/1.1 200 ")
        })
    }));
    report(
        "forwarding-check",
        "connect/disconnect churn",
        &before,
        &during,
        &format!("{churned} connections opened and dropped; the per-IP count went back to 0"),
    );
}

#[test]
fn no_request_makes_the_server_dial_a_third_address() {
    let server = server();
    let addr = server.addr();
    // The third party: something listening on 127.0.0.5.
    let third = TcpListener::bind((lo(5), 0)).unwrap();
    third.set_nonblocking(true).unwrap();
    let port = third.local_addr().unwrap().port();
    let before = victim(addr);
    let attempts = [
        format!("GET /v1/check?port={port}&ip=127.0.0.5 HTTP/1.1\r\n\r\n"),
        format!("GET /v1/check?port={port}&dest=127.0.0.5 HTTP/1.1\r\n\r\n"),
        format!("GET /v1/check?port={port}&x=127.0.0.5%3A{port} HTTP/1.1\r\n\r\n"),
        format!("GET /v1/check?port={port}&port=80 HTTP/1.1\r\n\r\n"),
        format!("GET http://127.0.0.5:{port}/v1/check?port={port} HTTP/1.1\r\n\r\n"),
        format!(
            "GET /net.php?action=is_port_forwarded&port={port}&proto=TCP&host=127.0.0.5 \
             HTTP/1.1\r\n\r\n"
        ),
    ];
    let attack = Attack::start(move |i| {
        let Ok(mut s) = connect_from(lo(10), addr) else {
            return 0;
        };
        let request = &attempts[usize::try_from(i).unwrap() % attempts.len()];
        s.write_all(request.as_bytes()).unwrap();
        let reply = answer(&mut s);
        assert!(
            reply.starts_with("HTTP/1.1 400 ") || reply.starts_with("HTTP/1.1 404 "),
            "{request} -> {reply}"
        );
        1
    });
    assert!(wait_for(Duration::from_secs(30), || attack.count() >= 60));
    let during = victim(addr);
    let refused = attack.stop();
    // Headers naming another client are ignored: the check dials the caller's own address.
    for header in [
        "X-Forwarded-For: 127.0.0.5",
        "Forwarded: for=127.0.0.5",
        "X-Real-IP: 127.0.0.5",
    ] {
        let mut s = connect_from(lo(11), addr).unwrap();
        write!(s, "GET /v1/check?port={port} HTTP/1.1\r\n{header}\r\n\r\n").unwrap();
        let reply = answer(&mut s);
        assert!(
            reply.contains(r#""ip":"127.0.0.11""#) && reply.contains(r#""open":false"#),
            "{reply}"
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    match third.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the third address was contacted: {other:?}"),
    }
    report(
        "forwarding-check",
        "requests naming a third address",
        &before,
        &during,
        &format!("{refused} refused (400/404), headers ignored, the third address never dialed"),
    );
}
