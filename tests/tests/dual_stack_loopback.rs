//! A node bound to `::` listens dual stack (issue 17): one port takes
//! connections on `127.0.0.1` and on `::1`, both end to end (Noise handshake, a line each
//! way), and the IPv4 peer is seen by its plain IPv4 address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use integration_tests::{take_lines, turn_all};
use node::identity::Identity;
use node::{Config, Net, Role};
use server_kit::testkit::ipv6_loopback_or_skip;

fn node(secret: u8, bind: &str) -> Net {
    let mut net = Net::new(
        Config::new()
            .with_bind(bind.parse().unwrap())
            .with_node_type(Role::Passive)
            .with_identity(Identity::from_secret_bytes(&[secret; 32])),
    )
    .unwrap();
    net.start().unwrap();
    net
}

/// `nets[dialer]` connects to `to`; a line goes each way; returns the address `nets[0]`
/// sees the dialer at.
fn connect_and_talk(nets: &mut [Net], dialer: usize, to: SocketAddr) -> SocketAddr {
    let before = nets[0].connection_count();
    nets[dialer].connect(to);
    assert!(
        turn_all(nets, Duration::from_secs(5), |n| {
            n[0].connection_count() == before + 1 && n[dialer].connection_count() == 1
        }),
        "no connection to {to}"
    );
    let line = format!("hello over {to}");
    for c in nets[dialer].connections() {
        c.send_line(&line).unwrap();
    }
    let mut got = Vec::new();
    assert!(
        turn_all(nets, Duration::from_secs(5), |n| {
            got.extend(take_lines(&mut n[0]));
            got.contains(&line)
        }),
        "{line:?} did not arrive: {got:?}"
    );
    let key = nets[dialer].key();
    nets[0]
        .connections()
        .find(|c| c.peer_key() == Some(key))
        .expect("the dialer's connection")
        .addr()
}

#[test]
fn a_node_bound_to_the_ipv6_unspecified_address_takes_ipv4_and_ipv6_on_one_port() {
    if !ipv6_loopback_or_skip("dual_stack_loopback") {
        return;
    }
    let mut nets = vec![node(41, "::"), node(42, "127.0.0.1"), node(43, "::1")];
    let listening = nets[0].local_addr().unwrap();
    assert!(
        listening.is_ipv6() && listening.ip().is_unspecified(),
        "not dual stack: {listening}"
    );
    let port = listening.port();
    let v4 = connect_and_talk(&mut nets, 1, SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(v4.ip(), "127.0.0.1".parse::<IpAddr>().unwrap(), "{v4}");
    let v6 = connect_and_talk(
        &mut nets,
        2,
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    );
    assert_eq!(v6.ip(), "::1".parse::<IpAddr>().unwrap(), "{v6}");
}
