//! Carrier-grade NAT and hairpinning with real TCP: pub sees the carrier's address, the home
//! router's UPnP mapping is not reachable from the internet, and two homes behind one carrier
//! reach each other only when it hairpins. Root needed (skipped without, failing with `CI`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TimedLab, ready, split};
use netns_sim::{NatKind, Topology, TwoNats};

#[test]
fn pub_sees_the_carrier_and_not_the_home_upnp_mapping() {
    if !ready(&["miniupnpd", "upnpc"]) {
        return;
    }
    let lab = TimedLab::up(
        &Topology::two_nats(TwoNats {
            a: NatKind::PortRestricted,
            upnp_a: true,
            cgnat_a: Some(NatKind::FullCone),
            ..TwoNats::default()
        }),
        Duration::from_mins(1),
    );
    let (carrier, home) = (lab.lab.addr("cgn-a"), lab.lab.addr("nat-a"));
    assert_eq!(home.to_string(), "100.64.1.2");
    assert_eq!(lab.lab.public_addr("alice"), carrier);
    let _s = lab.server("pub", &["serve", "--listen", "0.0.0.0:7000"]);
    let seen = lab.probe("alice", &["connect", "11.0.0.2:7000"]).unwrap();
    assert_eq!(
        split(&seen).0,
        carrier,
        "pub must see the carrier NAT's address"
    );
    // bob, not behind a carrier, is seen as his own router.
    let seen = lab.probe("bob", &["connect", "11.0.0.2:7000"]).unwrap();
    assert_eq!(split(&seen).0, lab.lab.addr("nat-b"));

    // alice asks her home router for a mapping. miniupnpd sees a 100.64 WAN address and
    // refuses to forward (as on real CGNAT lines); whatever it answers, the mapping can only
    // be on the inner NAT, and pub cannot reach alice through either address.
    let _a = lab.server("alice", &["serve", "--listen", "0.0.0.0:5555"]);
    let upnp = lab.lab.exec(
        "alice",
        &[
            "upnpc",
            "-e",
            "cgnat test",
            "-a",
            "192.168.1.2",
            "5555",
            "6555",
            "TCP",
        ],
    );
    let upnp = upnp
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap();
    assert!(
        !upnp.contains(&format!("ExternalIPAddress = {carrier}")),
        "{upnp}"
    );
    for target in [format!("{carrier}:6555"), format!("{carrier}:5555")] {
        let err = lab
            .probe("pub", &["connect", &target, "--timeout-ms", "1000"])
            .expect_err("pub must not reach alice's UPnP mapping through the carrier");
        assert!(err.contains("timed out"), "{target}: {err}");
    }
    lab.finish();
}

/// bob opens a mapping on the carrier from port 7000 (and listens there); alice tries bob's
/// public endpoint, and bob's carrier address directly.
fn two_homes_behind_one_carrier(hairpin: bool) {
    let lab = TimedLab::up(
        &Topology::two_nats(TwoNats {
            a: NatKind::FullCone,
            b: NatKind::FullCone,
            cgnat_a: Some(NatKind::FullCone),
            cgnat_b: Some(NatKind::FullCone),
            carrier_hairpin: hairpin,
            ..TwoNats::default()
        }),
        Duration::from_secs(40),
    );
    let carrier = lab.lab.addr("cgn");
    assert_eq!(lab.lab.public_addr("alice"), carrier);
    assert_eq!(lab.lab.public_addr("bob"), carrier);
    let _p = lab.server("pub", &["serve", "--listen", "0.0.0.0:7000"]);
    let _b = lab.server("bob", &["serve", "--listen", "0.0.0.0:7000"]);
    let seen = lab
        .probe("bob", &["connect", "11.0.0.2:7000", "--bind-port", "7000"])
        .unwrap();
    assert_eq!(
        seen,
        format!("{carrier}:7000"),
        "port-preserving full-cone mappings"
    );
    let via_carrier = lab.probe(
        "alice",
        &[
            "connect",
            &format!("{carrier}:7000"),
            "--timeout-ms",
            "1000",
        ],
    );
    if hairpin {
        let seen = via_carrier.expect("a hairpinning carrier loops alice back to bob");
        assert_eq!(
            split(&seen).0,
            carrier,
            "bob sees alice as the carrier's address"
        );
    } else {
        assert!(via_carrier.is_err(), "no hairpin, no way: {via_carrier:?}");
    }
    // Subscriber lines are isolated: bob's carrier-side address is never reachable directly.
    let direct = lab.probe(
        "alice",
        &[
            "connect",
            &format!("{}:7000", lab.lab.addr("nat-b")),
            "--timeout-ms",
            "1000",
        ],
    );
    assert!(
        direct.is_err(),
        "homes must not reach each other directly: {direct:?}"
    );
    assert_eq!(
        lab.lab.status_text().contains("router cgn: hairpin"),
        hairpin
    );
    lab.finish();
}

#[test]
fn homes_behind_one_carrier_reach_each_other_only_when_it_hairpins() {
    if !ready(&[]) {
        return;
    }
    two_homes_behind_one_carrier(true);
    two_homes_behind_one_carrier(false);
}
