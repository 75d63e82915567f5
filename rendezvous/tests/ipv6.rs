//! The rendezvous server on `[::]` over real loopback TCP, with IPv6 (`::1`) and IPv4
//! clients: an IPv6 client is told its IPv6 address, registrations over IPv6 reach only the
//! `BOOTSTRAP <family>` forms, and the relay pairs an IPv6 peer with an IPv4 one. Skipped
//! (with a printed reason) on a host without `::1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use rendezvous::{Config, RunningServer};
use server_kit::testkit::{LineClient as Client, ipv6_loopback_or_skip, loopback_pair};
use wire::rendezvous::Response;

fn start() -> (RunningServer, SocketAddr, SocketAddr) {
    let server = RunningServer::start("[::]:0".parse().unwrap(), Config::default()).unwrap();
    let (v4, v6) = loopback_pair(server.addr());
    (server, v4, v6)
}

#[test]
fn an_ipv6_client_is_told_its_ipv6_address_and_the_time() {
    if !ipv6_loopback_or_skip("an_ipv6_client_is_told_its_ipv6_address_and_the_time") {
        return;
    }
    let (_server, v4, v6) = start();
    let mut c = Client::from("::1", v6);
    let port = c.local_addr().port();
    let reply = c.ask("SOURCE ADDR");
    assert!(
        reply.starts_with(&format!("REMOTE ADDR ::1 {port} ")),
        "{reply}"
    );
    let Response::RemoteAddr { addr, time } = reply.parse().unwrap() else {
        panic!("{reply}");
    };
    assert_eq!(addr, SocketAddr::new("::1".parse().unwrap(), port));
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!((time.secs() - unix.as_secs_f64()).abs() < 5.0, "{reply}");
    assert_eq!(c.ask("SOURCE TCP"), format!("REMOTE TCP {port}"));
    // The same socket, an IPv4 client: a plain IPv4 address, never `::ffff:127.0.0.1`.
    let mut c4 = Client::from("127.0.0.1", v4);
    let port4 = c4.local_addr().port();
    assert!(
        c4.ask("SOURCE ADDR")
            .starts_with(&format!("REMOTE ADDR 127.0.0.1 {port4} ")),
    );
}

#[test]
fn ipv6_registrations_reach_only_the_family_forms_of_bootstrap() {
    if !ipv6_loopback_or_skip("ipv6_registrations_reach_only_the_family_forms_of_bootstrap") {
        return;
    }
    let (_server, v4, v6) = start();
    let mut node6 = Client::from("::1", v6);
    node6.send("PASSIVE READY 50600 10");
    let mut node4 = Client::from("127.0.0.2", v4);
    node4.send("PASSIVE READY 50500 10");
    // Registrations have no reply: ask until both are in (a PING of sorts).
    let mut asker = Client::from("127.0.0.3", v4);
    let mut any = String::new();
    for _ in 0..100 {
        any = asker.ask("BOOTSTRAP ANY 10");
        if any.matches("p:").count() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(any.contains("p:[::1]:50600 "), "{any}");
    assert!(any.contains("p:127.0.0.2:50500 "), "{any}");
    // PyP2P's form, asked over IPv4 as PyP2P does: IPv4 only.
    assert_eq!(asker.ask("BOOTSTRAP 10"), "NODES p:127.0.0.2:50500 ");
    assert_eq!(asker.ask("BOOTSTRAP IPV6 10"), "NODES p:[::1]:50600 ");
    // The IPv6 node is never handed itself.
    assert_eq!(node6.ask("BOOTSTRAP IPV6 10"), "NODES EMPTY");
}

#[test]
fn the_relay_pairs_an_ipv6_peer_with_an_ipv4_peer() {
    if !ipv6_loopback_or_skip("the_relay_pairs_an_ipv6_peer_with_an_ipv4_peer") {
        return;
    }
    let (server, v4, v6) = start();
    let token = "6a".repeat(32);
    let mut a = Client::from("::1", v6);
    assert_eq!(a.ask(&format!("RELAY {token}")), "RELAY WAITING");
    let mut b = Client::from("127.0.0.1", v4);
    assert_eq!(b.ask(&format!("RELAY {token}")), "RELAY OK");
    assert_eq!(a.recv(), "RELAY OK");
    a.stream().write_all(b"over six\n").unwrap();
    b.stream().write_all(b"over four\n").unwrap();
    let mut got = [0u8; 9];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"over six\n");
    let mut got = [0u8; 10];
    a.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"over four\n");
    let stats = server.stop().unwrap();
    assert_eq!(stats.relay_paired, 1);
    assert_eq!(stats.accepted_by_family, [1, 1]);
}
