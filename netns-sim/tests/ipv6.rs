//! IPv6 in the lab with real TCP: no translation (pub sees alice's own address), pub answers
//! both families on one socket, home routers drop unsolicited inbound connections, a TCP
//! simultaneous open between two hosts behind such firewalls gets through, and IPv4-only and
//! IPv6-only hosts have exactly their family. Root needed (skipped without, failing with
//! `CI`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, TimedLab, ready};
use netns_sim::{Family, NatKind, Topology, TwoNats};

fn lab(t: &Topology) -> TimedLab {
    TimedLab::up(t, Duration::from_mins(1))
}

fn dual() -> Topology {
    Topology::two_nats(TwoNats {
        a: NatKind::PortRestricted,
        b: NatKind::Symmetric,
        ipv6: true,
        ..TwoNats::default()
    })
}

#[test]
fn firewalls_drop_unsolicited_inbound_but_a_simultaneous_open_gets_through() {
    if !ready(&[]) {
        return;
    }
    let lab = lab(&dual());
    let (alice6, bob6) = (lab.lab.addr6("alice"), lab.lab.addr6("bob"));
    assert_eq!(alice6.to_string(), "2001:db8:1::2");
    assert_eq!(bob6.to_string(), "2001:db8:2::2");

    // pub answers both families on one socket; over IPv6 it sees alice herself, over IPv4
    // her router.
    let _pub = lab.server("pub", &["serve", "--listen", "[::]:7000"]);
    let seen6 = lab
        .probe(
            "alice",
            &["connect", "[2001:db8::2]:7000", "--timeout-ms", "2000"],
        )
        .unwrap();
    assert!(seen6.starts_with("[2001:db8:1::2]:"), "{seen6}");
    let seen4 = lab
        .probe(
            "alice",
            &["connect", "11.0.0.2:7000", "--timeout-ms", "2000"],
        )
        .unwrap();
    assert!(seen4.starts_with("[::ffff:11.0.0.101]:"), "{seen4}");

    // Unsolicited inbound: pub to alice, alice to bob. Both dropped silently (a timeout, not
    // a refusal).
    let _alice = lab.server("alice", &["serve", "--listen", "[::]:7001"]);
    let _bob = lab.server("bob", &["serve", "--listen", "[::]:7001"]);
    let to = |a: std::net::Ipv6Addr, port: u16| format!("[{a}]:{port}");
    let err = lab
        .probe(
            "pub",
            &["connect", &to(alice6, 7001), "--timeout-ms", "1500"],
        )
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    let err = lab
        .probe(
            "alice",
            &["connect", &to(bob6, 7001), "--timeout-ms", "1500"],
        )
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    // Inside a LAN, and out to the internet, nothing is filtered.
    assert!(
        lab.probe(
            "nat-a",
            &["connect", &to(alice6, 7001), "--timeout-ms", "1500"]
        )
        .is_ok()
    );

    // Simultaneous open: both dial each other from port 40000 at once. The first SYN to
    // arrive is dropped by the other firewall; the other side's own SYN opens its firewall
    // for the retransmission (or crosses it as a reply).
    let dial = |host: &str, peer: std::net::Ipv6Addr| {
        lab.lab
            .spawn(
                host,
                Command::new(BIN).args([
                    "probe",
                    "connect",
                    &to(peer, 40000),
                    "--bind-port",
                    "40000",
                    "--send",
                    &format!("hello from {host}"),
                    "--timeout-ms",
                    "8000",
                ]),
            )
            .unwrap()
    };
    let mut a = dial("alice", bob6);
    let mut b = dial("bob", alice6);
    let (sa, sb) = (
        a.wait_timeout(Duration::from_secs(10)).unwrap(),
        b.wait_timeout(Duration::from_secs(10)).unwrap(),
    );
    assert!(sa.success(), "alice: {}", a.stderr());
    assert!(sb.success(), "bob: {}", b.stderr());
    assert_eq!(a.stdout().trim(), "hello from bob");
    assert_eq!(b.stdout().trim(), "hello from alice");
    lab.finish();
}

#[test]
fn ipv4_only_and_ipv6_only_hosts_have_exactly_their_family() {
    if !ready(&["miniupnpd", "chronyd"]) {
        return;
    }
    // The example file: carol IPv4-only, bob IPv6-only, chronyd on pub, miniupnpd on nat-a.
    let t = Topology::from_toml(include_str!("../examples/ipv6.toml")).unwrap();
    assert_eq!(t.routers[0].hosts[1].family, Family::Ipv4);
    let lab = lab(&t);
    // carol: no IPv6 at all, not even link-local.
    let carol6 = lab
        .lab
        .exec_ok("carol", &["ip", "-6", "addr", "show"])
        .unwrap();
    assert!(carol6.trim().is_empty(), "{carol6}");
    assert!(lab.lab.host("carol").unwrap().addr6.is_none());
    // bob: no IPv4 address.
    let bob4 = lab
        .lab
        .exec_ok("bob", &["ip", "-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(bob4.trim().is_empty(), "{bob4}");
    assert!(lab.lab.addr("bob").is_unspecified());
    let _pub = lab.server("pub", &["serve", "--listen", "[::]:7000"]);
    let seen = lab
        .probe(
            "bob",
            &["connect", "[2001:db8::2]:7000", "--timeout-ms", "2000"],
        )
        .unwrap();
    assert!(seen.starts_with("[2001:db8:2::2]:"), "{seen}");
    let err = lab
        .probe("bob", &["connect", "11.0.0.2:7000", "--timeout-ms", "2000"])
        .unwrap_err();
    assert!(err.contains("unreachable"), "{err}");
    let seen = lab
        .probe(
            "carol",
            &["connect", "11.0.0.2:7000", "--timeout-ms", "2000"],
        )
        .unwrap();
    assert!(seen.starts_with("[::ffff:11.0.0.101]:"), "{seen}");
    // chronyd answers over IPv6 too.
    let ntp = lab
        .probe("bob", &["ntp", "[2001:db8::2]:123", "--timeout-ms", "2000"])
        .unwrap();
    assert!(ntp.starts_with("stratum 8"), "{ntp}");
    // status shows the plan.
    let status = lab.lab.status_text();
    assert!(status.contains("ipv6 bob      2001:db8:2::2"), "{status}");
    assert!(
        status.contains("(ipv6 only)") && status.contains("(ipv4 only)"),
        "{status}"
    );
    assert!(
        status.contains("lan 2001:db8:1::/64 (2001:db8:1::1), firewall"),
        "{status}"
    );
    lab.finish();
}
