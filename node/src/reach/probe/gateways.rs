//! The gateways and their mappings: UPnP, NAT-PMP and PCP discovery results, the mapping
//! attempt (in [`MAPPING_ORDER`]; a gateway waits [`HEAD_START`] for an earlier one still
//! being discovered), its result, and deleting mappings that are not kept.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use super::{
    Action, Attempt, Gateway, HEAD_START, MAPPING_ORDER, PcpAnswer, Phase, Probe, Purpose,
};
use crate::reach::report::{Mapping, Outcome, Protocol, is_public};

impl Probe {
    /// The UPnP discovery ended: `Ok(external IP if the gateway told it)` or why not.
    pub fn handle_upnp(&mut self, now: Instant, result: Result<Option<Ipv4Addr>, String>) {
        self.gateway_found(now, Protocol::Upnp, result);
    }

    /// The NAT-PMP public-address request ended.
    pub fn handle_natpmp(&mut self, now: Instant, result: Result<Ipv4Addr, String>) {
        self.gateway_found(now, Protocol::Natpmp, result.map(Some));
    }

    /// The PCP ANNOUNCE ended (see [`PcpAnswer`]). A gateway that speaks PCP tells its
    /// external address only with a mapping. NAT-PMP, waiting for this, is asked now, or
    /// fails with the same cause when nothing listens on the port.
    pub fn handle_pcp(&mut self, now: Instant, answer: PcpAnswer) {
        if self.report.is_some() || self.pcp != Gateway::Searching {
            return;
        }
        let natpmp_next = std::mem::take(&mut self.natpmp_after_pcp);
        let (result, natpmp_failed) = match answer {
            PcpAnswer::Speaks => (Ok(None), None),
            PcpAnswer::NotPcp(why) => (Err(why), None),
            PcpAnswer::Nothing { pcp, natpmp } => (Err(pcp), Some(natpmp)),
        };
        if natpmp_next && self.natpmp == Gateway::Searching {
            if let Some(why) = natpmp_failed {
                self.gateway_found(now, Protocol::Natpmp, Err(why));
            } else {
                let discovery =
                    self.config.timeout * super::DISCOVERY_SHARE_NUM / super::DISCOVERY_SHARE_DEN;
                self.actions.push_back(Action::NatpmpAsk {
                    until: self.started + discovery,
                });
            }
        }
        self.gateway_found(now, Protocol::Pcp, result);
    }

    fn gateway_found(
        &mut self,
        now: Instant,
        protocol: Protocol,
        result: Result<Option<Ipv4Addr>, String>,
    ) {
        if self.report.is_some() || *self.gateway(protocol) != Gateway::Searching {
            return;
        }
        match result {
            Ok(ext) => {
                *self.gateway(protocol) = Gateway::Found { tried: false };
                let detail = match ext {
                    Some(ip) if self.record_wan(protocol, ip) => {
                        format!("gateway answered; its external IP is {ip}")
                    }
                    Some(ip) => format!(
                        "gateway answered; its external IP {ip} is not public (another NAT \
                         beyond it: its mappings cannot make us reachable)"
                    ),
                    None if protocol == Protocol::Pcp => {
                        "gateway speaks PCP (it answered ANNOUNCE)".to_owned()
                    }
                    None => "gateway answered; it did not tell its external IP".to_owned(),
                };
                self.step(
                    protocol.method(),
                    "discover",
                    self.started,
                    now,
                    Outcome::Ok,
                    detail,
                );
                if !self.config.forwarding_check && self.config.listen_port.is_some() {
                    self.skip(
                        protocol.method(),
                        "map",
                        "no mapping made: without a forwarding check it could not be proven \
                         (set --forwarding-check URL)",
                    );
                } else if self.config.listen_port.is_none() {
                    self.skip(protocol.method(), "map", "the node does not listen");
                }
            }
            Err(reason) => {
                *self.gateway(protocol) = Gateway::Failed;
                self.step(
                    protocol.method(),
                    "discover",
                    self.started,
                    now,
                    Outcome::Failed,
                    reason,
                );
            }
        }
        self.next_attempt(now);
        self.maybe_finish(now);
    }

    /// A mapping asked for with [`Action::Map`] was made (`Ok`, with the port and lease the
    /// router granted) or refused.
    pub fn handle_mapped(
        &mut self,
        now: Instant,
        protocol: Protocol,
        result: Result<Mapping, String>,
    ) {
        let current = self
            .attempt
            .filter(|a| a.protocol == protocol && a.phase == Phase::Mapping);
        let Some(attempt) = current.filter(|_| self.report.is_none()) else {
            // Late (after the report) or after another way proved the port: not kept.
            if let Ok(mapping) = result {
                self.actions.push_back(Action::Unmap(mapping));
            }
            return;
        };
        match result {
            Ok(mapping) => {
                self.created.retain(|m| !mapping.same_rule(m));
                self.created.push(mapping);
                let on = match mapping.external_ip {
                    Some(ip) if self.record_wan(protocol, ip) => format!(" on {ip}"),
                    Some(ip) => {
                        format!(" on {ip}, which is not public (another NAT beyond the gateway)")
                    }
                    None => String::new(),
                };
                self.step(
                    protocol.method(),
                    "map",
                    attempt.since,
                    now,
                    Outcome::Ok,
                    format!("mapped {mapping}{on}"),
                );
                if self.proof.is_some() {
                    // The direct check proved the port meanwhile.
                    self.drop_mapping(mapping);
                    self.attempt = None;
                } else {
                    let id = self.start_check(now, Purpose::Mapping, mapping.external_port);
                    self.attempt = Some(Attempt {
                        protocol,
                        since: now,
                        phase: Phase::Checking { id, mapping },
                    });
                }
            }
            Err(reason) => {
                self.step(
                    protocol.method(),
                    "map",
                    attempt.since,
                    now,
                    Outcome::Failed,
                    reason,
                );
                self.attempt = None;
                self.next_attempt(now);
            }
        }
        self.maybe_finish(now);
    }

    fn gateway(&mut self, protocol: Protocol) -> &mut Gateway {
        match protocol {
            Protocol::Upnp => &mut self.upnp,
            Protocol::Natpmp => &mut self.natpmp,
            Protocol::Pcp => &mut self.pcp,
        }
    }

    pub(super) fn state(&self, protocol: Protocol) -> Gateway {
        match protocol {
            Protocol::Upnp => self.upnp,
            Protocol::Natpmp => self.natpmp,
            Protocol::Pcp => self.pcp,
        }
    }

    /// Keeps `ip` as what `protocol`'s gateway says our external address is, if it is
    /// public; returns whether it is.
    fn record_wan(&mut self, protocol: Protocol, ip: Ipv4Addr) -> bool {
        if !is_public(ip) {
            return false;
        }
        self.gateway_wan.retain(|(p, _)| *p != protocol);
        self.gateway_wan.push((protocol, ip));
        true
    }

    /// Whether a mapping could start now if nothing were being discovered.
    fn may_map(&self) -> bool {
        self.report.is_none()
            && self.proof.is_none()
            && self.attempt.is_none()
            && self.config.forwarding_check
            && self.checker_down.is_none()
            && self.config.listen_port.is_some()
    }

    /// The first gateway in [`MAPPING_ORDER`] that answered and was not tried yet, unless
    /// one before it is still being discovered within its head start (`Err(())`: wait).
    fn next_protocol(&self, now: Instant) -> Result<Option<Protocol>, ()> {
        let head_start_over = now >= self.started + HEAD_START;
        for protocol in MAPPING_ORDER {
            match self.state(protocol) {
                Gateway::Found { tried: false } => return Ok(Some(protocol)),
                Gateway::Searching if !head_start_over => return Err(()),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Whether a gateway that answered waits for an earlier one's head start (so the probe
    /// must wake at its end).
    pub(super) fn waits_for_head_start(&self) -> bool {
        let found = MAPPING_ORDER
            .iter()
            .any(|p| self.state(*p) == Gateway::Found { tried: false });
        found && self.may_map() && self.next_protocol(self.started).is_err()
    }

    /// Starts a mapping where a gateway answered, if one may start now.
    pub(super) fn next_attempt(&mut self, now: Instant) {
        if self.report.is_some()
            || self.proof.is_some()
            || self.attempt.is_some()
            || !self.config.forwarding_check
            || now >= self.deadline
        {
            return;
        }
        let (Some(listen), Some(wanted)) = (self.config.listen_port, self.config.wanted_port())
        else {
            return;
        };
        if let Some(why) = self.checker_down.clone() {
            for protocol in MAPPING_ORDER {
                if *self.gateway(protocol) == (Gateway::Found { tried: false }) {
                    *self.gateway(protocol) = Gateway::Found { tried: true };
                    self.skip(
                        protocol.method(),
                        "map",
                        &format!("no mapping made: it could not be proven ({why})"),
                    );
                }
            }
            return;
        }
        let Ok(Some(protocol)) = self.next_protocol(now) else {
            return;
        };
        *self.gateway(protocol) = Gateway::Found { tried: true };
        self.attempt = Some(Attempt {
            protocol,
            since: now,
            phase: Phase::Mapping,
        });
        self.actions.push_back(Action::Map {
            protocol,
            external_port: wanted,
            internal: SocketAddrV4::new(self.config.lan_ip, listen),
            lease_secs: self.config.lease_secs(),
            fixed: self.config.external_port.is_some(),
            until: self.deadline,
        });
    }

    pub(super) fn drop_mapping(&mut self, mapping: Mapping) {
        self.created.retain(|m| !mapping.same_rule(m));
        self.actions.push_back(Action::Unmap(mapping));
    }
}
