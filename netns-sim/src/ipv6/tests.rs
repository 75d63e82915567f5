//! The IPv6 plan without namespaces: addresses, families, routes, the firewall's rules and the
//! topologies refused.

use std::net::Ipv6Addr;

use super::*;
use crate::topology::{Topology, TopologyError, TwoNats};

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn host<'a>(hosts: &'a [HostInfo], name: &str) -> &'a HostInfo {
    hosts.iter().find(|h| h.name == name).unwrap()
}

#[test]
fn addresses_mirror_the_ipv4_plan() {
    let t = Topology::two_nats(TwoNats {
        carol: true,
        ipv6: true,
        ..TwoNats::default()
    })
    .with_family("carol", Family::Ipv4)
    .with_family("bob", Family::Ipv6);
    let hosts = t.resolve().unwrap();
    let a6 = |n: &str| host(&hosts, n).addr6;
    assert_eq!(a6("pub"), Some(v6("2001:db8::2")));
    assert_eq!(a6("pub2"), Some(v6("2001:db8::3")));
    assert_eq!(a6("nat-a"), Some(v6("2001:db8::101")));
    assert_eq!(a6("nat-b"), Some(v6("2001:db8::102")));
    assert_eq!(a6("alice"), Some(v6("2001:db8:1::2")));
    assert_eq!(a6("bob"), Some(v6("2001:db8:2::2")));
    assert_eq!(a6("carol"), None, "IPv4-only");
    let nat_a = host(&hosts, "nat-a");
    assert_eq!(
        (nat_a.lan6, nat_a.lan_addr6),
        (Some(v6("2001:db8:1::")), Some(v6("2001:db8:1::1")))
    );
    assert_eq!(host(&hosts, "alice").lan_addr6, Some(v6("2001:db8:1::1")));
    assert!(host(&hosts, "bob").addr.is_unspecified(), "IPv6-only");
    assert_eq!(host(&hosts, "alice").addr.to_string(), "192.168.1.2");
    assert!(is_firewalled(nat_a, &hosts));
    // Without IPv6 nothing changes.
    let plain = Topology::two_nats(TwoNats::default()).resolve().unwrap();
    assert!(plain.iter().all(|h| h.addr6.is_none() && h.lan6.is_none()));
}

#[test]
fn routes_lead_every_lan_through_its_router_and_carriers() {
    let t = Topology::two_nats(TwoNats {
        cgnat_a: Some(NatKind::FullCone),
        ipv6: true,
        ..TwoNats::default()
    });
    let hosts = t.resolve().unwrap();
    let routes = routes(&hosts);
    let has = |host: &str, to: Option<&str>, via: &str| {
        routes
            .iter()
            .any(|r| r.host == host && r.to == to.map(v6) && r.via == v6(via))
    };
    // Order of routers: nat-a (LAN 1), nat-b (LAN 2), cgn-a (LAN 3, the carrier); each
    // WAN address mirrors its IPv4 one.
    let cgn = host(&hosts, "cgn-a");
    let mirrored = |n: &str| {
        let h = host(&hosts, n);
        let v4 = h.addr.octets()[3];
        (h.addr6.unwrap(), v4)
    };
    let (cgn6, cgn4) = mirrored("cgn-a");
    let (nat_b6, nat_b4) = mirrored("nat-b");
    assert_eq!(cgn6.to_string(), format!("2001:db8::{cgn4}"));
    assert_eq!(nat_b6.to_string(), format!("2001:db8::{nat_b4}"));
    assert_eq!(host(&hosts, "nat-a").addr6, Some(v6("2001:db8:3::2")));
    let (cgn6, nat_b6) = (cgn6.to_string(), nat_b6.to_string());
    assert!(has("alice", None, "2001:db8:1::1"));
    assert!(has("bob", None, "2001:db8:2::1"));
    assert!(
        has("nat-a", None, "2001:db8:3::1"),
        "a home behind a carrier"
    );
    assert!(has("cgn-a", Some("2001:db8:1::"), "2001:db8:3::2"));
    assert!(
        has("pub", Some("2001:db8:1::"), &cgn6),
        "through the carrier"
    );
    assert!(has("pub", Some("2001:db8:2::"), &nat_b6));
    assert!(has("pub", Some("2001:db8:3::"), &cgn6));
    assert!(has("nat-b", Some("2001:db8:1::"), &cgn6));
    assert!(has("cgn-a", Some("2001:db8:2::"), &nat_b6));
    assert!(!has("nat-b", Some("2001:db8:2::"), &nat_b6), "its own LAN");
    let alice = routes.iter().find(|r| r.host == "alice").unwrap();
    assert_eq!(alice.args(), ["default", "via", "2001:db8:1::1"]);
    let pub1 = routes
        .iter()
        .find(|r| r.host == "pub" && r.to == Some(v6("2001:db8:1::")))
        .unwrap();
    assert_eq!(pub1.args(), ["2001:db8:1::/64", "via", cgn6.as_str()]);
    // The carrier routes, the homes filter.
    assert!(!is_firewalled(cgn, &hosts));
    assert!(is_firewalled(host(&hosts, "nat-a"), &hosts));
}

#[test]
fn the_firewall_drops_unsolicited_inbound_and_keeps_a_place_for_pinholes() {
    let fw = firewall(Unsolicited::Drop);
    assert_eq!(fw.matches("policy drop").count(), 2, "{fw}");
    assert!(fw.starts_with("table inet netns_sim6 {"));
    assert!(fw.contains("ct state established,related accept"));
    assert!(fw.contains("iifname \"lan\" accept"));
    assert!(fw.contains("meta nfproto ipv4 accept"));
    let jump = fw.find("jump pinholes").unwrap();
    assert!(jump < fw.rfind("chain pinholes").unwrap());
    assert!(!fw.contains("reject"));
    let rst = firewall(Unsolicited::Rst);
    assert!(rst.contains("reject with tcp reset"));
    assert!(rst.contains("reject with icmpv6 type port-unreachable"));
}

#[test]
fn families_parse_and_bad_combinations_are_refused() {
    assert_eq!("ipv6".parse::<Family>(), Ok(Family::Ipv6));
    assert!(
        "v6".parse::<Family>()
            .unwrap_err()
            .contains("use dual, ipv4 or ipv6")
    );
    let t = Topology::two_nats(TwoNats::default()).with_family("bob", Family::Ipv6);
    let e = t.resolve().unwrap_err();
    assert!(matches!(&e, TopologyError::Ipv6Off(h) if h == "bob"), "{e}");
    assert!(e.to_string().contains("--ipv6"), "{e}");
    let t = Topology::two_nats(TwoNats::default())
        .with_ipv6()
        .with_link(
            "nat-a",
            crate::Link::symmetric(crate::LinkProfile::delay_ms(5)),
        );
    // IPv6 with WAN emulation is fine: the stages queue both families.
    assert!(t.resolve().is_ok());
    // From TOML.
    let t = Topology::from_toml(
        "ipv6 = true\n[[public]]\nname = \"pub\"\nfamily = \"ipv6\"\n[[router]]\nname = \"r\"\nnat = \"none\"\n[[router.host]]\nname = \"h\"\nfamily = \"ipv4\"",
    )
    .unwrap();
    let hosts = t.resolve().unwrap();
    assert_eq!(host(&hosts, "pub").addr6, Some(v6("2001:db8::2")));
    assert_eq!(host(&hosts, "h").addr6, None);
    assert!(
        !is_firewalled(host(&hosts, "r"), &hosts),
        "a `none` router routes"
    );
    assert_eq!(
        Topology::from_toml(&toml::to_string(&t).unwrap()).unwrap(),
        t
    );
}

#[test]
fn the_example_file_resolves_to_its_comments() {
    let t = Topology::from_toml(include_str!("../../examples/ipv6.toml")).unwrap();
    let hosts = t.resolve().unwrap();
    assert_eq!(host(&hosts, "alice").addr6, Some(v6("2001:db8:1::2")));
    assert_eq!(host(&hosts, "nat-a").addr6, Some(v6("2001:db8::101")));
    assert_eq!(host(&hosts, "carol").family, Family::Ipv4);
    assert!(host(&hosts, "bob").addr.is_unspecified());
}
