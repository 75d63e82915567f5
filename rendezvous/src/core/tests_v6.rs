//! IPv6 in the core, in virtual time: observed IPv6 addresses, registrations and `BOOTSTRAP`
//! families (PyP2P's form never sees an IPv6 entry), per-/64 caps, cross-family candidates.

use super::*;

#[test]
fn source_addr_tells_an_ipv6_client_its_address_and_the_time() {
    let mut h = Harness::new(config());
    let c = h.open("[2001:db8:1::2]:40312");
    let reply = h.ask(c, "SOURCE ADDR");
    assert_eq!(reply.len(), 1, "{reply:?}");
    let prefix = "REMOTE ADDR 2001:db8:1::2 40312 ";
    assert!(reply[0].starts_with(prefix), "{reply:?}");
    match reply[0].parse::<Response>().unwrap() {
        Response::RemoteAddr { addr, time } => {
            assert_eq!(addr, "[2001:db8:1::2]:40312".parse().unwrap());
            assert!((time.secs() - h.unix()).abs() < 0.01);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.ask(c, "SOURCE TCP 1"), ["REMOTE TCP 40312"]);
    assert_eq!(h.core.stats().accepted_by_family, [0, 1]);
}

#[test]
fn pyp2p_bootstrap_never_sees_ipv6_nodes_and_the_family_forms_do() {
    let mut h = Harness::new(config());
    let v4 = h.open("192.0.2.1:40000");
    h.line(v4, "PASSIVE READY 5000 10");
    let v6 = h.open("[2001:db8:1::2]:40001");
    h.line(v6, "PASSIVE READY 6000 10");
    let stats = h.core.stats();
    assert_eq!(stats.passive_by_family, [1, 1]);
    assert_eq!(stats.registered_by_family, [1, 1]);

    // A PyP2P client over IPv4 (and even one over IPv6) gets IPv4 entries only.
    for asker in ["198.51.100.9:1", "[2001:db8:9::9]:1"] {
        let c = h.open(asker);
        assert_eq!(h.ask(c, "BOOTSTRAP 10"), ["NODES p:192.0.2.1:5000 "]);
        assert_eq!(h.ask(c, "BOOTSTRAP IPV4 10"), ["NODES p:192.0.2.1:5000 "]);
        assert_eq!(
            h.ask(c, "BOOTSTRAP IPV6 10"),
            ["NODES p:[2001:db8:1::2]:6000 "]
        );
        let mut any = nodes(&h.ask(c, "BOOTSTRAP ANY 10"));
        any.sort();
        assert_eq!(
            any,
            [
                "192.0.2.1:5000".parse::<SocketAddr>().unwrap(),
                "[2001:db8:1::2]:6000".parse().unwrap()
            ]
        );
    }
    // Never the asker: the IPv6 node asking over IPv6 does not get itself.
    assert_eq!(h.ask(v6, "BOOTSTRAP IPV6 10 6000"), ["NODES EMPTY"]);
    assert_eq!(h.ask(v6, "BOOTSTRAP ANY 10"), ["NODES p:192.0.2.1:5000 "]);
    assert_eq!(h.core.stats().requests[1], 8, "BOOTSTRAP_FAMILY counted");
    // CLEAR over IPv6 removes the IPv6 registration.
    h.line(v6, "CLEAR");
    assert_eq!(h.core.stats().passive_by_family, [1, 0]);
}

#[test]
fn the_registration_cap_counts_an_ipv6_slash_64_as_one_ip() {
    let mut h = Harness::new(Config {
        max_registrations_per_ip: 2,
        ..config()
    });
    let ports = [5001, 5002, 5003];
    let addrs = [
        "[2001:db8:7:7::1]:1",
        "[2001:db8:7:7::2]:1",
        "[2001:db8:7:7:ffff::3]:1",
    ];
    for (port, addr) in ports.iter().zip(addrs).take(2) {
        let c = h.open(addr);
        assert!(h.ask(c, &format!("PASSIVE READY {port} 1")).is_empty());
    }
    let c = h.open(addrs[2]);
    assert_eq!(
        h.ask(c, "SIMULTANEOUS READY 5003 1"),
        ["ERROR SIMULTANEOUS READY: too many registrations from 2001:db8:7:7::/64 (limit 2)"]
    );
    // Another /64 is another subscriber.
    let other = h.open("[2001:db8:7:8::1]:1");
    assert!(h.ask(other, "PASSIVE READY 5004 1").is_empty());
    assert_eq!(h.core.stats().passive_by_family, [0, 3]);
}

#[test]
fn a_candidate_must_punch_within_its_own_family() {
    let mut h = Harness::new(config());
    let node4 = h.open("192.0.2.1:40000");
    h.line(node4, "SIMULTANEOUS READY 0 0");
    let node6 = h.open("[2001:db8:1::2]:40000");
    h.line(node6, "SIMULTANEOUS READY 0 0");

    let cand6 = h.open("[2001:db8:2::2]:40001");
    let refused = h.ask(cand6, "CANDIDATE 192.0.2.1 TCP 4000");
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].starts_with("ERROR CANDIDATE: 192.0.2.1 is IPv4, you asked over IPv6"),
        "{refused:?}"
    );
    assert!(
        h.take(node4).is_empty(),
        "the IPv4 (PyP2P) node hears nothing"
    );
    assert_eq!(h.core.stats().cross_family_refused, 1);

    // Within IPv6: CHALLENGE names the candidate's IPv6 address, FIGHT the node's.
    assert_eq!(
        h.ask(cand6, "CANDIDATE 2001:db8:1::2 TCP 4000 4001"),
        ["PREDICTION SET"]
    );
    assert_eq!(h.take(node6), ["CHALLENGE 2001:db8:2::2 4000 4001 TCP"]);
    let time = h.unix() + 2.0;
    h.line(node6, &format!("ACCEPT 2001:db8:2::2 5000 TCP {time}"));
    assert_eq!(
        h.take(cand6),
        [format!("FIGHT 2001:db8:1::2 5000 TCP {time}")]
    );
    // The `[ip]:port` target form works over IPv6 too.
    let cand4 = h.open("[2001:db8:3::3]:1");
    assert_eq!(
        h.ask(cand4, "CANDIDATE [2001:db8:1::2]:0 TCP 7"),
        ["PREDICTION SET"]
    );
}
