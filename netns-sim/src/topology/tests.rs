//! Unit tests of topology parsing, presets and resolution.

use super::kinds::UnknownNatKind;
use super::*;

#[test]
fn two_nats_resolves_to_documented_addresses() {
    let t = Topology::two_nats(TwoNats {
        carol: true,
        ..TwoNats::default()
    });
    let hosts = t.resolve().unwrap();
    let addr = |n: &str| hosts.iter().find(|h| h.name == n).unwrap().addr.to_string();
    assert_eq!(addr("pub"), "11.0.0.2");
    assert_eq!(addr("pub2"), "11.0.0.3");
    assert_eq!(addr("nat-a"), "11.0.0.101");
    assert_eq!(addr("nat-b"), "11.0.0.102");
    assert_eq!(addr("alice"), "192.168.1.2");
    assert_eq!(addr("carol"), "192.168.1.3");
    assert_eq!(addr("bob"), "192.168.2.2");
}

#[test]
fn example_file_parses_and_round_trips() {
    let text = include_str!("../../examples/two-nats.toml");
    let t = Topology::from_toml(text).unwrap();
    assert_eq!(t.routers.len(), 2);
    let again = Topology::from_toml(&toml::to_string(&t).unwrap()).unwrap();
    assert_eq!(t, again);
    t.resolve().unwrap();
}

#[test]
fn rejects_bad_topologies() {
    let err = |s: &str| {
        Topology::from_toml(s)
            .and_then(|t| t.resolve())
            .unwrap_err()
    };
    assert!(matches!(err(""), TopologyError::Empty));
    assert!(matches!(
        err("[[public]]\nname = \"Pub\""),
        TopologyError::BadName(n) if n == "Pub"
    ));
    assert!(matches!(
        err("[[public]]\nname = \"a\"\n[[public]]\nname = \"a\""),
        TopologyError::DuplicateName(_)
    ));
    assert!(matches!(
        err("[[public]]\nname = \"a\"\naddr = \"1.2.3.4\""),
        TopologyError::OutsideSubnet { .. }
    ));
    assert!(matches!(
        err(
            "[[public]]\nname = \"a\"\naddr = \"11.0.0.5\"\n[[public]]\nname = \"b\"\naddr = \"11.0.0.5\""
        ),
        TopologyError::DuplicateAddr { .. }
    ));
    assert!(matches!(
        err("[[router]]\nname = \"r\"\nnat = \"cone\""),
        TopologyError::Toml(_)
    ));
    assert!(matches!(err("colour = 1"), TopologyError::Toml(_)));
}

#[test]
fn nat_kind_names_round_trip() {
    for k in NatKind::ALL {
        assert_eq!(k.name().parse::<NatKind>(), Ok(k));
    }
    assert_eq!(
        "cone".parse::<NatKind>(),
        Err(UnknownNatKind("cone".into()))
    );
}

#[test]
fn cgnat_wan_example_parses_resolves_and_round_trips() {
    let text = include_str!("../../examples/cgnat-wan.toml");
    let t = Topology::from_toml(text).unwrap();
    let hosts = t.resolve().unwrap();
    let host = |n: &str| hosts.iter().find(|h| h.name == n).unwrap();
    assert_eq!(host("nat-a").addr.to_string(), "100.64.1.2");
    assert_eq!(host("nat-a").upstream.as_deref(), Some("cgn"));
    assert_eq!(host("cgn").addr.to_string(), "11.0.0.102");
    assert_eq!(host("nat-b").addr.to_string(), "11.0.0.101");
    assert_eq!(host("alice").addr.to_string(), "192.168.1.2");
    assert!(host("cgn").hairpin);
    let b = t.links["nat-b"];
    assert_eq!(b.up.unwrap().delay.as_millis(), 20);
    assert_eq!(b.down.unwrap().delay.as_millis(), 50);
    assert_eq!(b.down.unwrap().loss.ppm(), 10_000);
    let again = Topology::from_toml(&toml::to_string(&t).unwrap()).unwrap();
    assert_eq!(t, again);
}

#[test]
fn rejects_bad_upstreams_links_and_timeouts() {
    let err = |s: &str| {
        Topology::from_toml(s)
            .and_then(|t| t.resolve())
            .unwrap_err()
    };
    let r = "[[router]]\nname = \"a\"\nnat = \"symmetric\"\n";
    assert!(matches!(
        err(&format!("{r}upstream = \"x\"")),
        TopologyError::BadUpstream { why, .. } if why.contains("not a router")
    ));
    assert!(matches!(
        err(&format!("{r}upstream = \"a\"")),
        TopologyError::BadUpstream { why, .. } if why.contains("itself")
    ));
    assert!(matches!(
        err(&format!("{r}[links.zed]\ndelay = \"1ms\"")),
        TopologyError::UnknownLinkHost(h) if h == "zed"
    ));
    assert!(matches!(
        err(&format!("{r}timeouts = {{ udp = \"1500ms\" }}")),
        TopologyError::Timeout { .. }
    ));
}
