//! The probe and the leases in virtual time: every order of answers the driver can produce,
//! without a socket or a sleep. The real protocols are exercised in
//! `tests/tests/reach_netns.rs` (real miniupnpd, real NATs).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::lease::LeaseEvent;
use super::probe::{Action, CheckId, HEAD_START, Probe, ProbeConfig};
use super::{
    CheckError, Forwarding, Leases, Mapping, Method, NodeKind, Outcome, PcpAnswer, Protocol,
    ReachReport, WanIpSource,
};
use wire::nat::NatMapping;

const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const WAN: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 101);
const PORT: u16 = 50500;

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

/// UPnP and NAT-PMP as before PCP came: the PCP probe has its own tests (`tests/pcp.rs`).
fn config() -> ProbeConfig {
    ProbeConfig {
        nat_detection: false,
        pcp: false,
        ..ProbeConfig::new(LAN, Some(PORT))
    }
}

fn actions(p: &mut Probe) -> Vec<Action> {
    std::iter::from_fn(|| p.poll_action()).collect()
}

fn mapping(protocol: Protocol, port: u16) -> Mapping {
    Mapping::new(protocol, port, SocketAddrV4::new(LAN, PORT), 3600)
}

/// The check ids in `actions`, by port.
fn checks(actions: &[Action]) -> Vec<(CheckId, u16)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Check { id, port, .. } => Some((*id, *port)),
            _ => None,
        })
        .collect()
}

fn maps(actions: &[Action]) -> Vec<Protocol> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Map { protocol, .. } => Some(*protocol),
            _ => None,
        })
        .collect()
}

fn unmaps(actions: &[Action]) -> Vec<Mapping> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Unmap(m) => Some(*m),
            _ => None,
        })
        .collect()
}

fn step<'a>(r: &'a ReachReport, method: Method, name: &str) -> &'a super::Step {
    r.steps
        .iter()
        .rev()
        .find(|s| s.method == method && s.step == name)
        .unwrap_or_else(|| panic!("no {method} {name} step in {:#?}", r.steps))
}

fn refused() -> CheckError {
    CheckError::Connect {
        addr: "203.0.113.5:8080".parse().unwrap(),
        reason: "Connection refused".to_owned(),
    }
}

#[test]
fn everything_starts_at_once_within_the_budget() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, ProbeConfig::new(LAN, Some(PORT)));
    let first = actions(&mut p);
    assert!(first.contains(&Action::UpnpSearch {
        bind: LAN,
        timeout: Duration::from_secs(2)
    }));
    // Port 5351: PCP first, NAT-PMP after it (tests/pcp.rs).
    assert!(first.contains(&Action::PcpAnnounce {
        bind: LAN,
        until: ms(t0, 1000)
    }));
    assert!(first.contains(&Action::WanIp {
        timeout: Duration::from_secs(3)
    }));
    assert_eq!(checks(&first).len(), 1, "the port as it is: {first:?}");
    assert_eq!(checks(&first)[0].1, PORT);
    assert!(
        maps(&first).is_empty(),
        "nothing mapped before a gateway answered"
    );
    assert_eq!(p.poll_timeout(), Some(ms(t0, 3000)));
}

#[test]
fn upnp_is_used_first_when_both_answer_and_is_kept_once_proven() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, config());
    let first = actions(&mut p);
    let (direct, _) = checks(&first)[0];
    // NAT-PMP answers first; it waits for UPnP's head start.
    p.handle_natpmp(ms(t0, 5), Ok(WAN));
    assert!(maps(&actions(&mut p)).is_empty());
    assert_eq!(p.poll_timeout(), Some(t0 + HEAD_START));
    p.handle_wan_ip(ms(t0, 8), Ok(WAN));
    p.handle_upnp(ms(t0, 60), Ok(Some(WAN)));
    let next = actions(&mut p);
    assert_eq!(maps(&next), vec![Protocol::Upnp]);
    let Action::Map {
        external_port,
        internal,
        lease_secs,
        fixed,
        until,
        ..
    } = next[0]
    else {
        panic!("{next:?}")
    };
    assert_eq!(
        (external_port, internal, lease_secs, fixed, until),
        (
            PORT,
            SocketAddrV4::new(LAN, PORT),
            3600,
            false,
            ms(t0, 3000)
        )
    );
    p.handle_mapped(
        ms(t0, 75),
        Protocol::Upnp,
        Ok(mapping(Protocol::Upnp, PORT)),
    );
    let next = actions(&mut p);
    let (id, port) = checks(&next)[0];
    assert_eq!(port, PORT);
    p.handle_check(ms(t0, 80), id, Ok(true));
    let r = p.report().expect("over once proven").clone();
    assert_eq!(r.node_type, NodeKind::Passive);
    assert_eq!(r.forwarding, Some(Forwarding::Upnp));
    assert!(r.proven);
    assert_eq!(r.external_port, Some(PORT));
    assert_eq!(r.mapping, Some(mapping(Protocol::Upnp, PORT)));
    assert_eq!(
        (r.wan_ip, r.wan_ip_source),
        (Some(WAN), Some(WanIpSource::Upnp))
    );
    assert_eq!(r.ms, 80);
    assert_eq!(step(&r, Method::Upnp, "map").ms, 15);
    // The direct check was not needed: abandoned, not failed.
    assert_eq!(step(&r, Method::Manual, "check").outcome, Outcome::Skipped);
    assert!(
        unmaps(&actions(&mut p)).is_empty(),
        "the proven mapping is kept"
    );
    assert!(p.poll_timeout().is_none());
    // The direct check's late answer changes nothing.
    p.handle_check(ms(t0, 900), direct, Ok(true));
    assert_eq!(p.report(), Some(&r));
}

#[test]
fn natpmp_maps_alone_once_upnps_head_start_is_over() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, config());
    actions(&mut p);
    p.handle_natpmp(ms(t0, 3), Ok(WAN));
    p.handle_timeout(t0 + HEAD_START);
    let next = actions(&mut p);
    assert_eq!(maps(&next), vec![Protocol::Natpmp]);
    // NAT-PMP may grant another port and a shorter lease: that is what gets checked.
    let granted = Mapping {
        lease_secs: 600,
        ..mapping(Protocol::Natpmp, 61000)
    };
    p.handle_mapped(ms(t0, 310), Protocol::Natpmp, Ok(granted));
    let (id, port) = checks(&actions(&mut p))[0];
    assert_eq!(port, 61000);
    p.handle_wan_ip(ms(t0, 311), Ok(WAN));
    p.handle_check(ms(t0, 320), id, Ok(true));
    let r = p.report().unwrap();
    assert_eq!(r.forwarding, Some(Forwarding::Natpmp));
    assert_eq!(r.external_port, Some(61000));
    assert_eq!(r.mapping, Some(granted));
    assert_eq!(r.wan_ip_source, Some(WanIpSource::Natpmp));
    // UPnP never answered: abandoned when NAT-PMP proved the port.
    assert_eq!(step(r, Method::Upnp, "discover").outcome, Outcome::Skipped);
}

#[test]
fn an_unproven_mapping_is_deleted_and_the_other_protocol_tried() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, config());
    actions(&mut p);
    p.handle_wan_ip(ms(t0, 2), Ok(WAN));
    p.handle_upnp(ms(t0, 50), Ok(Some(WAN)));
    p.handle_natpmp(ms(t0, 51), Ok(WAN));
    actions(&mut p);
    p.handle_mapped(
        ms(t0, 60),
        Protocol::Upnp,
        Ok(mapping(Protocol::Upnp, PORT)),
    );
    let (id, _) = checks(&actions(&mut p))[0];
    p.handle_check(ms(t0, 70), id, Ok(false));
    let next = actions(&mut p);
    assert_eq!(unmaps(&next), vec![mapping(Protocol::Upnp, PORT)]);
    assert_eq!(maps(&next), vec![Protocol::Natpmp]);
    // NAT-PMP refuses too.
    p.handle_mapped(
        ms(t0, 80),
        Protocol::Natpmp,
        Err("NAT-PMP gateway 192.168.1.1: not authorized".to_owned()),
    );
    assert!(p.report().is_none(), "the direct check is still out");
    p.handle_timeout(ms(t0, 3000));
    let r = p.report().unwrap();
    assert_ne!(r.node_type, NodeKind::Passive);
    assert_eq!(r.forwarding, None);
    assert!(
        r.reason
            .contains("not reachable from outside despite the mapping"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("not authorized"), "{}", r.reason);
    assert_eq!(step(r, Method::Manual, "check").outcome, Outcome::TimedOut);
    assert_eq!(r.ms, 3000);
}

#[test]
fn no_router_ends_with_reasons_and_the_nat_type_decides() {
    for (nat, kind) in [
        (NatMapping::Random, NodeKind::Active),
        (NatMapping::Preserving, NodeKind::Simultaneous),
        (NatMapping::Delta(1), NodeKind::Simultaneous),
    ] {
        let t0 = Instant::now();
        let mut p = Probe::new(t0, ProbeConfig::new(LAN, Some(PORT)));
        let (direct, _) = checks(&actions(&mut p))[0];
        // Nothing on port 5351: PCP and NAT-PMP fail together.
        p.handle_pcp(
            ms(t0, 1),
            PcpAnswer::Nothing {
                pcp: "no PCP server at 192.168.1.1:5351 (port unreachable)".to_owned(),
                natpmp: "no NAT-PMP server at 192.168.1.1:5351 (port unreachable)".to_owned(),
            },
        );
        assert!(
            !actions(&mut p)
                .iter()
                .any(|a| matches!(a, Action::NatpmpAsk { .. })),
            "nothing to ask NAT-PMP on a closed port"
        );
        p.handle_nat(ms(t0, 10), Ok(nat));
        p.handle_wan_ip(ms(t0, 4), Ok(WAN));
        p.handle_check(ms(t0, 1500), direct, Ok(false));
        assert!(p.report().is_none(), "UPnP is still searching");
        p.handle_upnp(
            ms(t0, 2000),
            Err("no UPnP gateway answered within 2.0 s on 192.168.1.2".to_owned()),
        );
        let r = p.report().expect("over: nothing left to try");
        assert_eq!(r.node_type, kind, "{nat}");
        assert_eq!(r.ms, 2000);
        assert!(
            r.reason.contains("no UPnP gateway answered within 2.0 s"),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("no NAT-PMP server"), "{}", r.reason);
        assert!(r.reason.contains("pcp: no PCP server"), "{}", r.reason);
        assert!(
            r.reason.contains("not reachable from outside"),
            "{}",
            r.reason
        );
        assert_eq!(r.nat.as_deref(), Some(nat.to_string().as_str()));
        assert_eq!(
            (r.wan_ip, r.wan_ip_source),
            (Some(WAN), Some(WanIpSource::ForwardingCheck))
        );
        assert!(actions(&mut p).is_empty());
    }
}

#[test]
fn nothing_answers_so_the_deadline_ends_it() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, ProbeConfig::new(LAN, Some(PORT)));
    actions(&mut p);
    assert_eq!(p.poll_timeout(), Some(ms(t0, 3000)));
    p.handle_timeout(ms(t0, 2999));
    assert!(p.report().is_none());
    p.handle_timeout(ms(t0, 3000));
    let r = p.report().unwrap();
    assert_eq!(r.node_type, NodeKind::Active);
    for (m, s) in [
        (Method::Upnp, "discover"),
        (Method::Natpmp, "discover"),
        (Method::Manual, "check"),
        (Method::ForwardingCheck, "wan-ip"),
        (Method::NatDetection, "detect"),
    ] {
        let st = step(r, m, s);
        assert_eq!(st.outcome, Outcome::TimedOut, "{m} {s}");
        assert!(
            st.detail.contains("no answer within 3.0 s"),
            "{}",
            st.detail
        );
    }
    assert!(r.reason.contains("NAT type unknown"), "{}", r.reason);
}

#[test]
fn a_mapping_that_arrives_after_the_report_is_deleted() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, config());
    actions(&mut p);
    p.handle_wan_ip(ms(t0, 1), Ok(WAN));
    p.handle_upnp(ms(t0, 1900), Ok(Some(WAN)));
    assert_eq!(maps(&actions(&mut p)), vec![Protocol::Upnp]);
    p.handle_natpmp(ms(t0, 2000), Err("no answer".to_owned()));
    p.handle_timeout(ms(t0, 3000));
    let r = p.report().unwrap();
    assert_eq!(step(r, Method::Upnp, "map").outcome, Outcome::TimedOut);
    // The router's answer comes after all: the mapping must not stay behind.
    p.handle_mapped(
        ms(t0, 3500),
        Protocol::Upnp,
        Ok(mapping(Protocol::Upnp, PORT)),
    );
    assert_eq!(
        unmaps(&actions(&mut p)),
        vec![mapping(Protocol::Upnp, PORT)]
    );
    // A refusal that late is nothing to delete.
    p.handle_mapped(ms(t0, 3600), Protocol::Natpmp, Err("late".to_owned()));
    assert!(actions(&mut p).is_empty());
}

#[test]
fn a_mapping_still_being_checked_at_the_deadline_is_deleted() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, config());
    actions(&mut p);
    p.handle_wan_ip(ms(t0, 1), Ok(WAN));
    p.handle_natpmp(ms(t0, 1), Err("no".to_owned()));
    p.handle_upnp(ms(t0, 50), Ok(Some(WAN)));
    actions(&mut p);
    p.handle_mapped(
        ms(t0, 60),
        Protocol::Upnp,
        Ok(mapping(Protocol::Upnp, PORT)),
    );
    let (id, _) = checks(&actions(&mut p))[0];
    p.handle_timeout(ms(t0, 3000));
    assert_eq!(
        unmaps(&actions(&mut p)),
        vec![mapping(Protocol::Upnp, PORT)]
    );
    assert_eq!(p.report().unwrap().mapping, None);
    p.handle_check(ms(t0, 3100), id, Ok(true));
    assert_eq!(p.report().unwrap().node_type, NodeKind::Active);
}

#[test]
fn the_port_as_it_is_proves_forwarded_or_manual() {
    // No NAT: the listening port is reachable as it is.
    let t0 = Instant::now();
    let mut p = Probe::new(t0, config());
    let (id, port) = checks(&actions(&mut p))[0];
    assert_eq!(port, PORT);
    p.handle_wan_ip(ms(t0, 1), Ok(WAN));
    p.handle_check(ms(t0, 3), id, Ok(true));
    let r = p.report().unwrap();
    assert_eq!(r.forwarding, Some(Forwarding::Forwarded));
    assert_eq!(r.mapping, None);
    assert_eq!(step(r, Method::Upnp, "discover").outcome, Outcome::Skipped);
    // A gateway answering later maps nothing.
    p.handle_upnp(ms(t0, 50), Ok(Some(WAN)));
    assert!(maps(&actions(&mut p)).is_empty());

    // A port forwarded by hand: checked as is, and the gateways are asked for that port.
    let mut p = Probe::new(
        t0,
        ProbeConfig {
            external_port: Some(6000),
            ..config()
        },
    );
    let (id, port) = checks(&actions(&mut p))[0];
    assert_eq!(port, 6000);
    p.handle_upnp(ms(t0, 50), Ok(Some(WAN)));
    let Action::Map {
        external_port,
        fixed,
        ..
    } = actions(&mut p)[0]
    else {
        panic!()
    };
    assert_eq!((external_port, fixed), (6000, true));
    p.handle_wan_ip(ms(t0, 1), Ok(WAN));
    p.handle_check(ms(t0, 55), id, Ok(true));
    let r = p.report().unwrap();
    assert_eq!(r.forwarding, Some(Forwarding::Manual));
    assert_eq!(r.external_port, Some(6000));
    // The mapping the gateway makes now is not needed.
    p.handle_mapped(
        ms(t0, 70),
        Protocol::Upnp,
        Ok(mapping(Protocol::Upnp, 6000)),
    );
    assert_eq!(
        unmaps(&actions(&mut p)),
        vec![mapping(Protocol::Upnp, 6000)]
    );
}

#[test]
fn a_yes_for_the_port_as_it_is_after_a_mapping_of_it_counts_for_the_mapping() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, config());
    let (direct, _) = checks(&actions(&mut p))[0];
    p.handle_wan_ip(ms(t0, 1), Ok(WAN));
    p.handle_natpmp(ms(t0, 1), Err("no".to_owned()));
    p.handle_upnp(ms(t0, 50), Ok(Some(WAN)));
    actions(&mut p);
    p.handle_mapped(
        ms(t0, 60),
        Protocol::Upnp,
        Ok(mapping(Protocol::Upnp, PORT)),
    );
    actions(&mut p);
    // The first check's dial-back was let in by the new mapping (its SYN was retried).
    p.handle_check(ms(t0, 1010), direct, Ok(true));
    let r = p.report().unwrap().clone();
    assert_eq!(r.forwarding, Some(Forwarding::Upnp));
    assert_eq!(r.mapping, Some(mapping(Protocol::Upnp, PORT)));
    assert!(unmaps(&actions(&mut p)).is_empty());
    // The report says so: the mapping's check, not "reachable without a mapping".
    let check = step(&r, Method::Upnp, "check");
    assert!(check.detail.contains("through the mapping"), "{check:?}");
}

#[test]
fn without_a_forwarding_check_nothing_is_mapped_and_a_manual_port_is_trusted() {
    let t0 = Instant::now();
    let cfg = ProbeConfig {
        forwarding_check: false,
        ..config()
    };
    let mut p = Probe::new(t0, cfg.clone());
    let first = actions(&mut p);
    assert!(checks(&first).is_empty());
    assert!(!first.iter().any(|a| matches!(a, Action::WanIp { .. })));
    p.handle_pcp(ms(t0, 2), PcpAnswer::Speaks);
    p.handle_upnp(ms(t0, 40), Ok(Some(WAN)));
    p.handle_natpmp(ms(t0, 41), Ok(WAN));
    assert!(maps(&actions(&mut p)).is_empty());
    let r = p.report().unwrap();
    assert_eq!(r.node_type, NodeKind::Active);
    assert!(
        step(r, Method::Upnp, "map")
            .detail
            .contains("--forwarding-check")
    );
    assert_eq!(r.wan_ip, Some(WAN), "the gateways still tell the WAN IP");

    let mut p = Probe::new(
        t0,
        ProbeConfig {
            external_port: Some(6000),
            upnp: false,
            natpmp: false,
            ..cfg
        },
    );
    let r = p.report().expect("nothing to wait for").clone();
    assert_eq!(r.node_type, NodeKind::Passive);
    assert_eq!(r.forwarding, Some(Forwarding::Manual));
    assert!(!r.proven);
    assert_eq!(r.external_port, Some(6000));
    assert!(r.reason.contains("not proven"), "{}", r.reason);
    assert!(actions(&mut p).is_empty());
}

#[test]
fn an_unreachable_forwarding_check_stops_further_mappings() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, config());
    let (direct, _) = checks(&actions(&mut p))[0];
    p.handle_check(ms(t0, 1), direct, Err(refused()));
    p.handle_wan_ip(ms(t0, 2), Err(refused()));
    p.handle_natpmp(ms(t0, 3), Ok(WAN));
    p.handle_upnp(ms(t0, 40), Ok(Some(WAN)));
    assert!(maps(&actions(&mut p)).is_empty());
    let r = p.report().unwrap();
    assert_eq!(r.node_type, NodeKind::Active);
    assert!(
        step(r, Method::Upnp, "map")
            .detail
            .contains("cannot connect to the forwarding check at 203.0.113.5:8080"),
        "{:?}",
        r.steps
    );
    // The gateway's address is still learned.
    assert_eq!(r.wan_ip_source, Some(WanIpSource::Upnp));
}

#[test]
fn a_node_that_does_not_listen_maps_nothing() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, ProbeConfig::new(LAN, None));
    let first = actions(&mut p);
    assert!(checks(&first).is_empty());
    p.handle_wan_ip(ms(t0, 1), Ok(WAN));
    p.handle_nat(ms(t0, 5), Ok(NatMapping::Preserving));
    p.handle_pcp(ms(t0, 2), PcpAnswer::Speaks);
    p.handle_upnp(ms(t0, 40), Ok(Some(WAN)));
    p.handle_natpmp(ms(t0, 41), Ok(WAN));
    assert!(maps(&actions(&mut p)).is_empty());
    let r = p.report().unwrap();
    assert_eq!(r.node_type, NodeKind::Simultaneous);
    assert!(r.reason.contains("does not listen"), "{}", r.reason);
}

#[test]
fn wan_ip_sources_in_order_and_a_private_gateway_address_is_ignored() {
    let t0 = Instant::now();
    // A gateway behind another NAT (CGNAT 100.64/10) tells an address peers cannot reach.
    let mut p = Probe::new(
        t0,
        ProbeConfig {
            upnp: false,
            ..config()
        },
    );
    let (direct, _) = checks(&actions(&mut p))[0];
    p.handle_natpmp(ms(t0, 1), Ok(Ipv4Addr::new(100, 64, 3, 4)));
    p.handle_wan_ip(ms(t0, 2), Ok(WAN));
    assert_eq!(maps(&actions(&mut p)), vec![Protocol::Natpmp]);
    p.handle_mapped(ms(t0, 5), Protocol::Natpmp, Err("no".to_owned()));
    p.handle_check(ms(t0, 9), direct, Ok(false));
    let r = p.report().unwrap();
    assert!(
        step(r, Method::Natpmp, "discover")
            .detail
            .contains("not public")
    );
    assert_eq!(
        (r.wan_ip, r.wan_ip_source),
        (Some(WAN), Some(WanIpSource::ForwardingCheck))
    );

    // A configured address wins over everything.
    let mine = Ipv4Addr::new(198, 51, 100, 1);
    let mut p = Probe::new(
        t0,
        ProbeConfig {
            wan_ip: Some(mine),
            forwarding_check: false,
            natpmp: false,
            ..config()
        },
    );
    p.handle_upnp(ms(t0, 1), Ok(Some(WAN)));
    let r = p.report().unwrap();
    assert_eq!(
        (r.wan_ip, r.wan_ip_source),
        (Some(mine), Some(WanIpSource::Config))
    );
}

#[test]
fn the_lease_is_never_zero() {
    let mut c = config();
    c.lease = Duration::ZERO;
    assert_eq!(c.lease_secs(), 1);
    c.lease = Duration::from_millis(1500);
    assert_eq!(c.lease_secs(), 2);
    c.lease = Duration::from_secs(u64::MAX);
    assert_eq!(c.lease_secs(), u32::MAX);
}

#[test]
fn the_report_serializes_as_the_cli_promises() {
    let t0 = Instant::now();
    let mut p = Probe::new(t0, ProbeConfig::new(LAN, Some(PORT)));
    actions(&mut p);
    p.handle_timeout(ms(t0, 3000));
    let json = serde_json::to_value(p.report().unwrap()).unwrap();
    for key in [
        "node_type",
        "forwarding",
        "wan_ip",
        "external_port",
        "steps",
        "reason",
        "ms",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
    assert_eq!(json["node_type"], "active");
    assert!(json["forwarding"].is_null());
    assert_eq!(json["steps"][0]["outcome"], "timed-out");
    let text = p.report().unwrap().to_text();
    assert!(text.contains("forwarding-check  wan-ip"), "{text}");
}

#[test]
fn leases_renew_at_half_life_retry_and_are_lost_when_they_run_out() {
    let t0 = Instant::now();
    let m = Mapping {
        lease_secs: 100,
        ..mapping(Protocol::Natpmp, PORT)
    };
    let mut leases = Leases::new();
    assert_eq!(leases.poll_timeout(), None);
    leases.add(t0, m);
    let s = |n: u64| t0 + Duration::from_secs(n);
    assert!(leases.handle_timeout(s(49)).is_empty());
    assert_eq!(leases.handle_timeout(s(50)), vec![m]);
    assert!(
        leases.handle_timeout(s(51)).is_empty(),
        "one renewal at a time"
    );
    assert_eq!(leases.poll_timeout(), Some(s(100)));
    // Failed: retry at half the time left.
    assert_eq!(
        leases.handle_renewed(s(52), m, Err("timeout".to_owned())),
        Some(LeaseEvent::RenewFailed {
            mapping: m,
            reason: "timeout".to_owned(),
            retry_in: Duration::from_secs(24)
        })
    );
    assert_eq!(leases.poll_timeout(), Some(s(76)));
    assert_eq!(leases.handle_timeout(s(76)), vec![m]);
    // The router grants less this time.
    let shorter = Mapping {
        lease_secs: 40,
        ..m
    };
    assert_eq!(
        leases.handle_renewed(s(77), m, Ok(shorter)),
        Some(LeaseEvent::Renewed(shorter))
    );
    assert_eq!(leases.poll_timeout(), Some(s(97)));
    // Failing past the end of the lease: lost.
    assert_eq!(leases.handle_timeout(s(97)), vec![shorter]);
    let event = leases.handle_renewed(s(118), shorter, Err("no answer".to_owned()));
    assert!(
        matches!(&event, Some(LeaseEvent::Lost { reason, .. }) if reason.contains("ran out")),
        "{event:?}"
    );
    assert!(leases.is_empty());
}

#[test]
fn a_renewal_that_moves_the_port_loses_the_mapping_and_stop_takes_all() {
    let t0 = Instant::now();
    let m = mapping(Protocol::Natpmp, PORT);
    let u = mapping(Protocol::Upnp, 7000);
    let mut leases = Leases::new();
    leases.add(t0, m);
    leases.add(t0, u);
    leases.add(t0, u); // the same mapping again replaces it
    assert_eq!(leases.mappings().len(), 2);
    let half = t0 + Duration::from_mins(30);
    assert_eq!(leases.handle_timeout(half).len(), 2);
    let moved = Mapping {
        external_port: 40001,
        ..m
    };
    assert!(matches!(
        leases.handle_renewed(half, m, Ok(moved)),
        Some(LeaseEvent::Lost { .. })
    ));
    // A result for something no longer kept is ignored.
    assert_eq!(leases.handle_renewed(half, m, Ok(m)), None);
    assert_eq!(leases.take_all(), vec![u]);
    assert!(leases.is_empty());
}

#[test]
fn a_mapping_kept_from_before_is_adopted_kept_when_still_good_else_deleted() {
    let t0 = Instant::now();
    let old = mapping(Protocol::Upnp, PORT);
    // Still there and reachable: the yes for its port counts for it, nothing is deleted.
    let mut p = Probe::new(t0, config());
    p.adopt(old);
    let (direct, _) = checks(&actions(&mut p))[0];
    p.handle_wan_ip(ms(t0, 1), Ok(WAN));
    p.handle_check(ms(t0, 5), direct, Ok(true));
    let r = p.report().unwrap();
    assert_eq!(r.forwarding, Some(Forwarding::Upnp));
    assert_eq!(r.mapping, Some(old));
    assert!(unmaps(&actions(&mut p)).is_empty());

    // Renewed by the new probe's own request (same rule, new lease): kept once, not deleted.
    let mut p = Probe::new(t0, config());
    p.adopt(old);
    let (direct, _) = checks(&actions(&mut p))[0];
    p.handle_wan_ip(ms(t0, 1), Ok(WAN));
    p.handle_check(ms(t0, 2), direct, Ok(false));
    p.handle_natpmp(ms(t0, 3), Err("no".to_owned()));
    p.handle_upnp(ms(t0, 50), Ok(Some(WAN)));
    actions(&mut p);
    let renewed = Mapping {
        lease_secs: 1800,
        ..old
    };
    p.handle_mapped(ms(t0, 60), Protocol::Upnp, Ok(renewed));
    let (id, _) = checks(&actions(&mut p))[0];
    p.handle_check(ms(t0, 65), id, Ok(true));
    assert_eq!(p.report().unwrap().mapping, Some(renewed));
    assert!(unmaps(&actions(&mut p)).is_empty());

    // Nothing works any more: the adopted mapping goes.
    let mut p = Probe::new(
        t0,
        ProbeConfig {
            upnp: false,
            natpmp: false,
            ..config()
        },
    );
    p.adopt(old);
    let (direct, _) = checks(&actions(&mut p))[0];
    p.handle_wan_ip(ms(t0, 1), Ok(WAN));
    p.handle_check(ms(t0, 2), direct, Ok(false));
    assert_eq!(p.report().unwrap().mapping, None);
    assert_eq!(unmaps(&actions(&mut p)), vec![old]);
    // Adopted after the end: deleted at once.
    p.adopt(old);
    assert_eq!(unmaps(&actions(&mut p)), vec![old]);
}

mod pcp;
