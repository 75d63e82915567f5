//! Ending the probe: when nothing more can change the outcome (or the budget is spent), every
//! step still running is closed with the reason, mappings not kept are deleted, and the
//! [`ReachReport`] is written: the node kind with its reason, the forwarding, the WAN address
//! and where it came from.

use std::net::Ipv4Addr;
use std::time::Instant;

use super::{Action, Gateway, MAPPING_ORDER, Phase, Probe, Purpose, ms};
use crate::reach::report::{
    Forwarding, Method, NodeKind, Outcome, Protocol, ReachReport, WanIpSource,
};
use wire::nat::NatMapping;

impl Probe {
    /// Ends the probe when nothing more can change its outcome.
    pub(super) fn maybe_finish(&mut self, now: Instant) {
        if self.report.is_some() {
            return;
        }
        let info_pending = self.wan_ip_pending.is_some() || self.nat_pending;
        if info_pending {
            return;
        }
        if let Some(proof) = self.proof {
            // Proven: done (a mapping still being made is deleted when it arrives). A manual
            // port trusted without proof: wait for the gateways, they may tell the WAN IP.
            if proof.proven || !self.searching() {
                self.finish(now);
            }
            return;
        }
        let untried = MAPPING_ORDER
            .iter()
            .any(|p| self.state(*p) == Gateway::Found { tried: false });
        let may_map = self.config.forwarding_check && self.config.listen_port.is_some();
        let done = !self.searching()
            && self.attempt.is_none()
            && self.checks.is_empty()
            && !(may_map && untried);
        if done {
            self.finish(now);
        }
    }

    fn searching(&self) -> bool {
        MAPPING_ORDER
            .iter()
            .any(|p| self.state(*p) == Gateway::Searching)
    }

    pub(super) fn finish(&mut self, now: Instant) {
        // What is still running is either cut off by the deadline or no longer needed.
        let (outcome, limit) = if now >= self.deadline {
            (
                Outcome::TimedOut,
                format!(
                    "no answer within {:.1} s",
                    self.config.timeout.as_secs_f64()
                ),
            )
        } else {
            (
                Outcome::Skipped,
                "abandoned: not needed, the port was proven another way".to_owned(),
            )
        };
        for protocol in [Protocol::Upnp, Protocol::Natpmp, Protocol::Pcp] {
            if self.state(protocol) == Gateway::Searching {
                let started = self.started;
                let detail = limit.clone();
                self.step(protocol.method(), "discover", started, now, outcome, detail);
            }
        }
        let kept = self.proof.and_then(|p| p.mapping);
        if let Some(a) = self.attempt.take() {
            match a.phase {
                Phase::Mapping => {
                    let detail = format!("{limit} (a late mapping is deleted)");
                    self.step(a.protocol.method(), "map", a.since, now, outcome, detail);
                }
                Phase::Checking { mapping, .. } if kept != Some(mapping) => {
                    let detail = format!("{limit}; mapping deleted");
                    self.step(a.protocol.method(), "check", a.since, now, outcome, detail);
                    self.drop_mapping(mapping);
                }
                Phase::Checking { .. } => {}
            }
        }
        let mut pending: Vec<(Purpose, Instant, u16)> =
            self.checks.drain().map(|(_, v)| v).collect();
        pending.sort_by_key(|(_, since, _)| *since);
        for (purpose, since, port) in pending {
            if purpose == Purpose::Direct {
                let detail = format!("port {port}: {limit}");
                self.step(Method::Manual, "check", since, now, outcome, detail);
            }
        }
        let timed_out = format!(
            "no answer within {:.1} s",
            self.config.timeout.as_secs_f64()
        );
        if let Some(since) = self.wan_ip_pending.take() {
            let detail = timed_out.clone();
            self.step(
                Method::ForwardingCheck,
                "wan-ip",
                since,
                now,
                Outcome::TimedOut,
                detail,
            );
        }
        if self.nat_pending {
            self.nat_pending = false;
            let started = self.started;
            self.step(
                Method::NatDetection,
                "detect",
                started,
                now,
                Outcome::TimedOut,
                timed_out,
            );
        }
        // Every mapping not kept goes.
        for m in std::mem::take(&mut self.created) {
            if kept.is_some_and(|k| k.same_rule(&m)) {
                self.created.push(m);
            } else {
                self.actions.push_back(Action::Unmap(m));
            }
        }
        self.report = Some(self.build_report(now));
    }

    fn build_report(&self, now: Instant) -> ReachReport {
        let (wan_ip, wan_ip_source) = self.wan_ip();
        let nat_text = self.nat.map(|m| m.to_string());
        let (node_type, reason) = if let Some(p) = self.proof {
            let at = wan_ip.map_or_else(
                || format!("port {}", p.port),
                |ip| format!("{ip}:{}", p.port),
            );
            let how = match p.forwarding {
                Forwarding::Upnp => "through a UPnP mapping",
                Forwarding::Natpmp => "through a NAT-PMP mapping",
                Forwarding::Pcp => "through a PCP mapping",
                Forwarding::Manual => "through a port forwarded by hand",
                Forwarding::Forwarded => "as it is (no NAT in the way)",
            };
            let proof = if p.proven {
                "proven by the forwarding check"
            } else {
                "not proven: no forwarding check configured"
            };
            (
                NodeKind::Passive,
                format!("reachable at {at} {how}, {proof}"),
            )
        } else {
            let why = self.failure_summary();
            match self.nat {
                Some(NatMapping::Preserving | NatMapping::Delta(_)) => (
                    NodeKind::Simultaneous,
                    format!(
                        "not reachable from outside ({why}); the NAT is {} so hole punching can \
                         reach us",
                        nat_text.as_deref().unwrap_or_default()
                    ),
                ),
                Some(NatMapping::Random) => (
                    NodeKind::Active,
                    format!("not reachable from outside ({why}); the NAT maps ports at random"),
                ),
                None => (
                    NodeKind::Active,
                    format!("not reachable from outside ({why}); NAT type unknown"),
                ),
            }
        };
        ReachReport {
            node_type,
            forwarding: self.proof.map(|p| p.forwarding),
            proven: self.proof.is_some_and(|p| p.proven),
            wan_ip,
            wan_ip_source,
            external_port: self.proof.map(|p| p.port),
            lan_ip: self.config.lan_ip,
            listen_port: self.config.listen_port,
            nat: nat_text,
            mapping: self.proof.and_then(|p| p.mapping),
            reason,
            ms: ms(self.started, now),
            steps: self.steps.clone(),
        }
    }

    /// One clause per method that failed, for the report's reason.
    fn failure_summary(&self) -> String {
        if self.config.listen_port.is_none() {
            return "the node does not listen".to_owned();
        }
        let mut parts: Vec<String> = Vec::new();
        for method in [Method::Pcp, Method::Upnp, Method::Natpmp, Method::Manual] {
            let last = self
                .steps
                .iter()
                .rev()
                .find(|s| s.method == method && s.outcome != Outcome::Ok);
            if let Some(s) = last {
                parts.push(format!("{method}: {}", s.detail));
            }
        }
        if parts.is_empty() {
            "nothing could be tried".to_owned()
        } else {
            parts.join("; ")
        }
    }

    fn wan_ip(&self) -> (Option<Ipv4Addr>, Option<WanIpSource>) {
        if let Some(ip) = self.config.wan_ip {
            return (Some(ip), Some(WanIpSource::Config));
        }
        // The gateway that forwards for us first, then UPnP, PCP, NAT-PMP.
        let told = |protocol: Protocol| {
            self.gateway_wan
                .iter()
                .find(|(p, _)| *p == protocol)
                .map(|(_, ip)| *ip)
        };
        let forwarding = self.proof.and_then(|p| match p.forwarding {
            Forwarding::Upnp => Some(Protocol::Upnp),
            Forwarding::Natpmp => Some(Protocol::Natpmp),
            Forwarding::Pcp => Some(Protocol::Pcp),
            Forwarding::Manual | Forwarding::Forwarded => None,
        });
        let order = [Protocol::Upnp, Protocol::Pcp, Protocol::Natpmp];
        let preferred = forwarding
            .into_iter()
            .chain(order)
            .find_map(|p| told(p).map(|ip| (ip, p)));
        if let Some((ip, protocol)) = preferred {
            let source = match protocol {
                Protocol::Upnp => WanIpSource::Upnp,
                Protocol::Natpmp => WanIpSource::Natpmp,
                Protocol::Pcp => WanIpSource::Pcp,
            };
            return (Some(ip), Some(source));
        }
        match self.checked_wan {
            Some(ip) => (Some(ip), Some(WanIpSource::ForwardingCheck)),
            None => (None, None),
        }
    }
}
