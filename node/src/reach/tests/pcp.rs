//! PCP in the probe, in virtual time: first where the gateway speaks it, NAT-PMP its fallback
//! on the same port, UPnP and NAT-PMP waiting for its head start, its mapping proven, its
//! external address reported, an unproven one deleted.

use super::*;
use crate::reach::probe::MAPPING_ORDER;
use wire::pcp::Nonce;

/// Everything on, as `p2p-node` runs it (no NAT detection).
fn all() -> ProbeConfig {
    ProbeConfig {
        nat_detection: false,
        ..ProbeConfig::new(LAN, Some(PORT))
    }
}

fn pcp_mapping(external_ip: Ipv4Addr) -> Mapping {
    Mapping {
        external_ip: Some(external_ip),
        nonce: Some(Nonce([3; 12])),
        ..mapping(Protocol::Pcp, PORT)
    }
}

#[test]
fn pcp_is_asked_first_and_its_mapping_proven_with_its_external_address() {
    assert_eq!(MAPPING_ORDER[0], Protocol::Pcp);
    let t0 = Instant::now();
    let mut p = Probe::new(t0, all());
    let first = actions(&mut p);
    // PCP gets half the discovery window: NAT-PMP, its fallback on the same port, is asked
    // after it and must have time left.
    assert!(first.contains(&Action::PcpAnnounce {
        bind: LAN,
        until: ms(t0, 1000)
    }));
    assert!(!first.iter().any(|a| matches!(a, Action::NatpmpAsk { .. })));
    let (direct, _) = checks(&first)[0];
    // PCP answers first: it maps at once, without waiting for UPnP or NAT-PMP.
    p.handle_pcp(ms(t0, 2), PcpAnswer::Speaks);
    let next = actions(&mut p);
    assert_eq!(maps(&next), vec![Protocol::Pcp]);
    assert!(next.contains(&Action::NatpmpAsk {
        until: ms(t0, 2000)
    }));
    let Some(&Action::Map {
        internal,
        lease_secs,
        fixed,
        ..
    }) = next.iter().find(|a| matches!(a, Action::Map { .. }))
    else {
        panic!("{next:?}")
    };
    assert_eq!(
        (internal, lease_secs, fixed),
        (SocketAddrV4::new(LAN, PORT), 3600, false)
    );
    p.handle_natpmp(ms(t0, 3), Ok(WAN));
    assert!(maps(&actions(&mut p)).is_empty(), "one attempt at a time");
    let granted = pcp_mapping(WAN);
    p.handle_mapped(ms(t0, 4), Protocol::Pcp, Ok(granted));
    let (id, port) = checks(&actions(&mut p))[0];
    assert_eq!(port, PORT);
    p.handle_check(ms(t0, 5), direct, Ok(false));
    p.handle_wan_ip(ms(t0, 6), Ok(WAN));
    p.handle_check(ms(t0, 9), id, Ok(true));
    let r = p.report().expect("proven: over").clone();
    assert_eq!(r.node_type, NodeKind::Passive);
    assert_eq!(r.forwarding, Some(Forwarding::Pcp));
    assert_eq!(
        r.forwarding.unwrap().to_unl(),
        wire::unl::Forwarding::NatPmp
    );
    assert_eq!(r.mapping, Some(granted));
    assert_eq!(r.mapping.unwrap().nonce, Some(Nonce([3; 12])));
    assert_eq!(
        (r.wan_ip, r.wan_ip_source),
        (Some(WAN), Some(WanIpSource::Pcp))
    );
    assert!(r.reason.contains("through a PCP mapping"), "{}", r.reason);
    let discover = step(&r, Method::Pcp, "discover");
    assert_eq!((discover.outcome, discover.ms), (Outcome::Ok, 2));
    assert!(
        discover.detail.contains("speaks PCP"),
        "{}",
        discover.detail
    );
    let map = step(&r, Method::Pcp, "map");
    assert_eq!((map.at_ms, map.ms), (2, 2));
    assert!(
        map.detail
            .contains("mapped pcp TCP 50500 -> 192.168.1.2:50500 for 3600 s on 11.0.0.101"),
        "{}",
        map.detail
    );
    assert_eq!(step(&r, Method::Pcp, "check").outcome, Outcome::Ok);
    assert_eq!(step(&r, Method::Upnp, "discover").outcome, Outcome::Skipped);
    // The JSON names it.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["forwarding"], "pcp");
    assert_eq!(json["mapping"]["protocol"], "pcp");
    assert_eq!(json["mapping"]["external_ip"], "11.0.0.101");
    assert!(json["mapping"].get("nonce").is_none());
}

#[test]
fn upnp_waits_for_pcps_head_start_and_natpmp_follows_a_silent_pcp() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, all());
    actions(&mut p);
    p.handle_upnp(ms(t0, 50), Ok(Some(WAN)));
    assert!(maps(&actions(&mut p)).is_empty(), "PCP is still asked");
    assert_eq!(p.poll_timeout(), Some(t0 + HEAD_START));
    p.handle_timeout(t0 + HEAD_START);
    assert_eq!(maps(&actions(&mut p)), vec![Protocol::Upnp]);
    // PCP said nothing within its half of the window: NAT-PMP is asked with the rest.
    let silence = "no PCP answer from 192.168.1.1:5351 within 1.0 s (3 requests sent)";
    p.handle_pcp(ms(t0, 1000), PcpAnswer::NotPcp(silence.to_owned()));
    let next = actions(&mut p);
    assert_eq!(
        next,
        vec![Action::NatpmpAsk {
            until: ms(t0, 2000)
        }]
    );
    p.handle_natpmp(ms(t0, 1002), Ok(WAN));
    p.handle_mapped(
        ms(t0, 1010),
        Protocol::Upnp,
        Err("refused (606)".to_owned()),
    );
    assert_eq!(maps(&actions(&mut p)), vec![Protocol::Natpmp]);
}

#[test]
fn a_closed_port_fails_pcp_and_natpmp_at_once_and_upnp_does_not_wait() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, all());
    actions(&mut p);
    p.handle_pcp(
        ms(t0, 1),
        PcpAnswer::Nothing {
            pcp: "no PCP server at 192.168.1.1:5351 (port unreachable)".to_owned(),
            natpmp: "no NAT-PMP server at 192.168.1.1:5351 (port unreachable)".to_owned(),
        },
    );
    assert!(actions(&mut p).is_empty(), "NAT-PMP is not asked");
    assert_eq!(p.poll_timeout(), Some(ms(t0, 3000)), "nothing to wait for");
    p.handle_upnp(ms(t0, 80), Ok(Some(WAN)));
    assert_eq!(
        maps(&actions(&mut p)),
        vec![Protocol::Upnp],
        "at once, at 80 ms"
    );
    p.handle_timeout(ms(t0, 3000));
    let r = p.report().unwrap();
    let natpmp = step(r, Method::Natpmp, "discover");
    assert_eq!((natpmp.outcome, natpmp.ms), (Outcome::Failed, 1));
    assert!(
        natpmp
            .detail
            .contains("no NAT-PMP server at 192.168.1.1:5351")
    );
}

#[test]
fn a_natpmp_only_gateway_falls_back_to_natpmp_on_the_same_port() {
    let t0 = Instant::now();
    let mut p = Probe::new(
        t0,
        ProbeConfig {
            upnp: false,
            ..all()
        },
    );
    let (direct, _) = checks(&actions(&mut p))[0];
    let why = "the gateway at 192.168.1.1:5351 speaks NAT-PMP only (it answered PCP with \
               version 0, result 1)";
    p.handle_pcp(ms(t0, 1), PcpAnswer::NotPcp(why.to_owned()));
    p.handle_natpmp(ms(t0, 2), Ok(WAN));
    assert_eq!(maps(&actions(&mut p)), vec![Protocol::Natpmp]);
    p.handle_mapped(
        ms(t0, 3),
        Protocol::Natpmp,
        Ok(mapping(Protocol::Natpmp, PORT)),
    );
    let (id, _) = checks(&actions(&mut p))[0];
    p.handle_wan_ip(ms(t0, 4), Ok(WAN));
    p.handle_check(ms(t0, 5), direct, Ok(false));
    p.handle_check(ms(t0, 6), id, Ok(true));
    let r = p.report().unwrap();
    assert_eq!(r.forwarding, Some(Forwarding::Natpmp));
    assert_eq!(r.wan_ip_source, Some(WanIpSource::Natpmp));
    let pcp = step(r, Method::Pcp, "discover");
    assert_eq!(pcp.outcome, Outcome::Failed);
    assert_eq!(pcp.detail, why);
}

#[test]
fn an_unproven_pcp_mapping_is_deleted_and_the_next_gateway_tried() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, all());
    let (direct, _) = checks(&actions(&mut p))[0];
    p.handle_pcp(ms(t0, 1), PcpAnswer::Speaks);
    assert_eq!(maps(&actions(&mut p)), vec![Protocol::Pcp]);
    // The gateway is behind a carrier NAT: its "external" address is not public.
    let behind = pcp_mapping(Ipv4Addr::new(100, 64, 1, 2));
    p.handle_mapped(ms(t0, 2), Protocol::Pcp, Ok(behind));
    let (id, _) = checks(&actions(&mut p))[0];
    p.handle_upnp(ms(t0, 60), Ok(Some(WAN)));
    p.handle_check(ms(t0, 70), id, Ok(false));
    let next = actions(&mut p);
    assert_eq!(unmaps(&next), vec![behind]);
    assert_eq!(maps(&next), vec![Protocol::Upnp]);
    p.handle_mapped(
        ms(t0, 80),
        Protocol::Upnp,
        Ok(mapping(Protocol::Upnp, PORT)),
    );
    let (id, _) = checks(&actions(&mut p))[0];
    p.handle_natpmp(ms(t0, 81), Err("no NAT-PMP server".to_owned()));
    p.handle_wan_ip(ms(t0, 82), Ok(WAN));
    p.handle_check(ms(t0, 83), direct, Ok(false));
    p.handle_check(ms(t0, 90), id, Ok(true));
    let r = p.report().unwrap();
    assert_eq!(r.forwarding, Some(Forwarding::Upnp));
    assert_eq!(
        (r.wan_ip, r.wan_ip_source),
        (Some(WAN), Some(WanIpSource::Upnp))
    );
    let map = r
        .steps
        .iter()
        .find(|s| s.method == Method::Pcp && s.step == "map")
        .unwrap();
    assert!(
        map.detail.contains("100.64.1.2, which is not public"),
        "{}",
        map.detail
    );
    let check = step(r, Method::Pcp, "check");
    assert_eq!(check.outcome, Outcome::Failed);
    assert!(check.detail.contains("mapping deleted"), "{}", check.detail);
}

#[test]
fn pcp_turned_off_is_a_skipped_step() {
    let t0 = Instant::now();
    let mut p = Probe::new(
        t0,
        ProbeConfig {
            pcp: false,
            ..all()
        },
    );
    assert!(
        !actions(&mut p)
            .iter()
            .any(|a| matches!(a, Action::PcpAnnounce { .. }))
    );
    p.handle_timeout(ms(t0, 3000));
    let r = p.report().unwrap();
    let s = step(r, Method::Pcp, "discover");
    assert_eq!(s.outcome, Outcome::Skipped);
    assert_eq!(s.detail, "turned off (pcp = false, --no-pcp)");
}

#[test]
fn a_pcp_gateway_that_never_answers_times_out_with_the_others() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, all());
    actions(&mut p);
    p.handle_timeout(ms(t0, 3000));
    let r = p.report().unwrap();
    let s = step(r, Method::Pcp, "discover");
    assert_eq!((s.outcome, s.ms), (Outcome::TimedOut, 3000));
}
