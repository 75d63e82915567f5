//! What the servers answer: the forwarding check's port checks (of the port as it is, and of
//! each mapping) and WAN address, and the NAT detection the driver runs through the
//! rendezvous. A port proven reachable becomes the probe's [`Proof`].

use std::net::Ipv4Addr;
use std::time::Instant;

use super::{Action, Attempt, CheckId, MIN_REQUEST_TIMEOUT, Phase, Probe, Proof, Purpose};
use crate::reach::check::CheckError;
use crate::reach::report::{Forwarding, Method, Outcome};
use wire::nat::NatMapping;

impl Probe {
    /// A port check ended: `Ok(open)` or why it could not be done.
    pub fn handle_check(&mut self, now: Instant, id: CheckId, result: Result<bool, CheckError>) {
        let Some((purpose, since, port)) = self.checks.remove(&id) else {
            return;
        };
        if self.report.is_some() {
            return;
        }
        if let Err(e @ (CheckError::Connect { .. } | CheckError::Resolve { .. })) = &result {
            self.checker_down.get_or_insert_with(|| e.to_string());
        }
        match purpose {
            Purpose::Direct => self.direct_checked(now, since, port, result),
            Purpose::Mapping => {
                let Some(Attempt {
                    protocol,
                    phase:
                        Phase::Checking {
                            id: current,
                            mapping,
                        },
                    ..
                }) = self.attempt
                else {
                    return;
                };
                if current != id {
                    return;
                }
                self.attempt = None;
                let method = protocol.method();
                match result {
                    Ok(true) => {
                        self.step(
                            method,
                            "check",
                            since,
                            now,
                            Outcome::Ok,
                            format!("port {port} reachable from outside through the mapping"),
                        );
                        self.proof = Some(Proof {
                            forwarding: protocol.forwarding(),
                            port,
                            mapping: Some(mapping),
                            proven: true,
                        });
                    }
                    Ok(false) => {
                        self.step(
                            method,
                            "check",
                            since,
                            now,
                            Outcome::Failed,
                            format!(
                                "port {port} not reachable from outside despite the mapping; \
                                 mapping deleted"
                            ),
                        );
                        self.drop_mapping(mapping);
                    }
                    Err(reason) => {
                        self.step(
                            method,
                            "check",
                            since,
                            now,
                            Outcome::Failed,
                            format!("the mapping could not be proven: {reason}; mapping deleted"),
                        );
                        self.drop_mapping(mapping);
                    }
                }
                self.next_attempt(now);
            }
        }
        self.maybe_finish(now);
    }

    fn direct_checked(
        &mut self,
        now: Instant,
        since: Instant,
        port: u16,
        result: Result<bool, CheckError>,
    ) {
        let as_is = if self.config.external_port.is_some() {
            "forwarded by hand"
        } else {
            "listening port, no mapping"
        };
        match result {
            Ok(true) => {
                // A mapping of this very port made meanwhile may be what let the check in.
                let made = self
                    .created
                    .iter()
                    .find(|m| m.external_port == port)
                    .copied();
                let forwarding = match (made, self.config.external_port) {
                    (Some(m), _) => m.protocol.forwarding(),
                    (None, Some(_)) => Forwarding::Manual,
                    (None, None) => Forwarding::Forwarded,
                };
                // Reported as that mapping's check when there is one (the check raced it).
                let (method, detail) = match made {
                    Some(m) => (
                        m.protocol.method(),
                        format!(
                            "port {port} reachable from outside through the mapping (made \
                             while the check of the port as it is ran)"
                        ),
                    ),
                    None => (
                        Method::Manual,
                        format!("port {port} ({as_is}) reachable from outside"),
                    ),
                };
                self.step(method, "check", since, now, Outcome::Ok, detail);
                if self.proof.is_none() {
                    self.proof = Some(Proof {
                        forwarding,
                        port,
                        mapping: made,
                        proven: true,
                    });
                    if made.is_some() {
                        self.attempt = None;
                    }
                }
            }
            Ok(false) => self.step(
                Method::Manual,
                "check",
                since,
                now,
                Outcome::Failed,
                format!("port {port} ({as_is}) not reachable from outside"),
            ),
            Err(reason) => self.step(
                Method::Manual,
                "check",
                since,
                now,
                Outcome::Failed,
                format!("port {port} ({as_is}) could not be checked: {reason}"),
            ),
        }
    }

    /// The forwarding check told our WAN IP (or why not).
    pub fn handle_wan_ip(&mut self, now: Instant, result: Result<Ipv4Addr, CheckError>) {
        let Some(since) = self.wan_ip_pending.take() else {
            return;
        };
        if self.report.is_some() {
            return;
        }
        if let Err(
            e @ (CheckError::Connect { .. }
            | CheckError::Resolve { .. }
            | CheckError::Timeout { .. }),
        ) = &result
        {
            self.checker_down.get_or_insert_with(|| e.to_string());
        }
        match result {
            Ok(ip) => {
                self.checked_wan = Some(ip);
                self.step(
                    Method::ForwardingCheck,
                    "wan-ip",
                    since,
                    now,
                    Outcome::Ok,
                    format!("the server sees us as {ip}"),
                );
            }
            Err(e) => self.step(
                Method::ForwardingCheck,
                "wan-ip",
                since,
                now,
                Outcome::Failed,
                e.to_string(),
            ),
        }
        self.maybe_finish(now);
    }

    /// The NAT detection (run by the driver when `nat_detection`) ended.
    pub fn handle_nat(&mut self, now: Instant, result: Result<NatMapping, String>) {
        if !self.nat_pending || self.report.is_some() {
            return;
        }
        self.nat_pending = false;
        match result {
            Ok(mapping) => {
                self.nat = Some(mapping);
                let meaning = match mapping {
                    NatMapping::Preserving | NatMapping::Delta(_) => {
                        "predictable: hole punching can work"
                    }
                    NatMapping::Random => "unpredictable: hole punching will not work",
                };
                self.step(
                    Method::NatDetection,
                    "detect",
                    self.started,
                    now,
                    Outcome::Ok,
                    format!("{mapping} ({meaning})"),
                );
            }
            Err(reason) => self.step(
                Method::NatDetection,
                "detect",
                self.started,
                now,
                Outcome::Failed,
                reason,
            ),
        }
        self.maybe_finish(now);
    }

    pub(super) fn start_check(&mut self, now: Instant, purpose: Purpose, port: u16) -> CheckId {
        let id = CheckId(self.next_check);
        self.next_check += 1;
        self.checks.insert(id, (purpose, now, port));
        let timeout = self
            .deadline
            .saturating_duration_since(now)
            .max(MIN_REQUEST_TIMEOUT);
        self.actions.push_back(Action::Check { id, port, timeout });
        id
    }
}
