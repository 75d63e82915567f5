//! The mailbox server on `[::]` over real loopback TCP with IPv6 (`::1`) and IPv4 clients:
//! an IPv6 owner gets an IPv4 sender's message pushed, PyP2P's HTTP API answers over IPv6,
//! and `find_neighbours` lists neighbours of the asker's family only (PyP2P, over IPv4, never
//! sees an IPv6 address). Skipped (with a printed reason) on a host without `::1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use dht_msg::{Config, RunningServer};
use server_kit::testkit::{LineClient as Client, exchange, ipv6_loopback_or_skip, loopback_pair};

fn http(ip: &str, server: SocketAddr, target: &str) -> String {
    let request = format!("GET {target} HTTP/1.1\r\nHost: dht\r\n\r\n");
    let answer = exchange(ip, server, request.as_bytes());
    answer.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn ipv6_and_ipv4_clients_share_mailboxes_and_neighbours_stay_in_their_family() {
    if !ipv6_loopback_or_skip("ipv6_and_ipv4_clients_share_mailboxes") {
        return;
    }
    let server = RunningServer::start("[::]:0".parse().unwrap(), Config::default()).unwrap();
    let (v4, v6) = loopback_pair(server.addr());
    let mut bob = Client::from("::1", v6);
    assert_eq!(bob.ask("REGISTER bob pw-bob"), "OK REGISTERED bob NEW");
    assert_eq!(bob.ask("SUBSCRIBE"), "OK SUBSCRIBED 0");
    let mut alice = Client::from("127.0.0.1", v4);
    assert_eq!(
        alice.ask("REGISTER alice pw-alice"),
        "OK REGISTERED alice NEW"
    );
    assert_eq!(alice.ask("PUT bob hello over four"), "OK PUT 1");
    assert_eq!(bob.recv(), "MSG 1 alice hello over four");
    assert_eq!(bob.ask("PING"), "PONG");

    // PyP2P's HTTP API over both families; one more node per family.
    let register = |ip: &str, server, id: &str| {
        let target = format!("/dht_msg.php?call=register&node_id={id}&password=pw&port=1");
        assert_eq!(http(ip, server, &target), "success");
    };
    register("::1", v6, "carol6");
    register("127.0.0.2", v4, "dave4");
    let neighbours = |ip: &str, server, id: &str| {
        let target = format!("/dht_msg.php?call=find_neighbours&node_id={id}&password=pw");
        let body = http(ip, server, &target);
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut ips: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["ip"].as_str().unwrap().to_owned())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    };
    assert_eq!(neighbours("127.0.0.2", v4, "dave4"), ["127.0.0.1"]);
    assert_eq!(neighbours("::1", v6, "carol6"), ["::1"]);
    let stats = server.stop().unwrap();
    assert_eq!(stats.accepted_by_family, [3, 3]);
}
