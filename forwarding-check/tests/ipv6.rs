//! The forwarding-check server on `[::]` over real loopback TCP with an IPv6 caller (`::1`):
//! it is told its IPv6 address, and a port check dials back in the caller's family (a port
//! open on `127.0.0.1` only is closed for an IPv6 caller). Skipped (with a printed reason) on
//! a host without `::1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};

use forwarding_check::core::{PYP2P_NO, PYP2P_YES};
use forwarding_check::{Config, RunningServer};
use server_kit::testkit::{exchange, ipv6_loopback_or_skip, loopback_pair};

/// `GET target` from `ip` to `server`: (status, body).
fn get(ip: &str, server: SocketAddr, target: &str) -> (u16, String) {
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = exchange(ip, server, request.as_bytes());
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head[9..12].parse().unwrap(), body.to_owned())
}

#[test]
fn an_ipv6_caller_gets_its_address_and_a_dial_back_in_its_own_family() {
    if !ipv6_loopback_or_skip("an_ipv6_caller_gets_its_address_and_a_dial_back_in_its_own_family") {
        return;
    }
    let server = RunningServer::start("[::]:0".parse().unwrap(), Config::default()).unwrap();
    let (v4, v6) = loopback_pair(server.addr());
    assert_eq!(
        get("::1", v6, "/net.php?action=get_wan_ip"),
        (200, "::1".to_owned())
    );
    assert_eq!(
        get("::1", v6, "/v1/wan-ip"),
        (200, r#"{"wan_ip":"::1"}"#.to_owned())
    );
    assert_eq!(
        get("127.0.0.1", v4, "/v1/wan-ip"),
        (200, r#"{"wan_ip":"127.0.0.1"}"#.to_owned())
    );

    // Open on ::1: yes.
    let open6 = TcpListener::bind("[::1]:0").unwrap();
    let port6 = open6.local_addr().unwrap().port();
    let check = |port: u16| format!("/net.php?action=is_port_forwarded&port={port}&proto=TCP");
    assert_eq!(get("::1", v6, &check(port6)), (200, PYP2P_YES.to_owned()));
    let (status, body) = get("::1", v6, &format!("/v1/check?port={port6}"));
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!(
            r#"{{"ip":"::1","port":{port6},"proto":"TCP","open":true,"#
        )),
        "{body}"
    );
    // Open on 127.0.0.1 only: the IPv6 caller's port is closed (the dial-back goes to ::1),
    // and the IPv4 caller's is open.
    let open4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let port4 = open4.local_addr().unwrap().port();
    if TcpListener::bind(("::1", port4)).is_ok() {
        assert_eq!(get("::1", v6, &check(port4)), (200, PYP2P_NO.to_owned()));
    } else {
        eprintln!("port {port4} is taken on ::1 by something else: family check skipped");
    }
    assert_eq!(
        get("127.0.0.1", v4, &check(port4)),
        (200, PYP2P_YES.to_owned())
    );
    let counters = server.stop().unwrap();
    assert_eq!(counters.accepted_by_family, [2, 5]);
    assert_eq!(counters.checks_by_family[1], 3);
}
