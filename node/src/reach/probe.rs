//! The reachability probe as a sans-IO state machine: it decides, the driver does.
//!
//! Inputs are `handle_*(now, ..)` (a gateway answered, a mapping was made, a check came back,
//! time passed); outputs are [`Action`]s drained with [`Probe::poll_action`] and a wake-up
//! time from [`Probe::poll_timeout`]. It never touches a socket or a clock, so every order
//! of events can be tested in virtual time (see `reach/tests.rs`).
//!
//! Contract for the driver: carry out every action (each on a helper thread; every one of
//! them must end by itself: the `until`/`timeout` in it bounds it), report each result
//! exactly once, and keep feeding results after [`Probe::report`] is `Some`: a mapping that
//! arrives late is answered with [`Action::Unmap`].

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::{
    CheckError, Forwarding, Mapping, Method, NodeKind, Outcome, Protocol, ReachReport, Step,
    WanIpSource, is_public,
};
use crate::proto::nat::NatMapping;

/// When both gateways answered, UPnP is used first (PyP2P's order); NAT-PMP, which usually
/// answers first, waits this long for UPnP before mapping on its own.
pub const UPNP_HEAD_START: Duration = Duration::from_millis(300);

/// Gateway discovery gets this share of the probe's budget (2 s of 3 s), leaving time to map
/// and prove.
const DISCOVERY_SHARE_NUM: u32 = 2;
const DISCOVERY_SHARE_DEN: u32 = 3;

/// A forwarding-check request never gets less than this, even late in the budget (it is
/// still cut off by the probe's deadline).
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_millis(200);

/// What to probe. Build it with [`ProbeConfig::new`] and adjust fields.
// One switch per method, as in `Config`: an enum per bool would only add noise.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Try UPnP IGD.
    pub upnp: bool,
    /// Try NAT-PMP.
    pub natpmp: bool,
    /// A forwarding-check server is configured (proofs and WAN IP).
    pub forwarding_check: bool,
    /// A rendezvous server is configured: the driver runs the NAT detection and reports it
    /// with [`Probe::handle_nat`].
    pub nat_detection: bool,
    /// Our LAN address: where mappings point, where SSDP is bound.
    pub lan_ip: Ipv4Addr,
    /// The listening port; `None` when the node does not listen (nothing to map).
    pub listen_port: Option<u16>,
    /// A port forwarded by hand to the listening port, also the external port asked of
    /// UPnP/NAT-PMP (default: the listening port).
    pub external_port: Option<u16>,
    /// The lease asked for a mapping (rounded up to whole seconds, at least 1 s).
    pub lease: Duration,
    /// The whole probe's budget.
    pub timeout: Duration,
    /// A WAN address given in the configuration (wins over every other source).
    pub wan_ip: Option<Ipv4Addr>,
}

impl ProbeConfig {
    /// Everything on (UPnP, NAT-PMP, forwarding check, NAT detection), lease 1 h, budget 3 s.
    pub fn new(lan_ip: Ipv4Addr, listen_port: Option<u16>) -> ProbeConfig {
        ProbeConfig {
            upnp: true,
            natpmp: true,
            forwarding_check: true,
            nat_detection: true,
            lan_ip,
            listen_port,
            external_port: None,
            lease: Duration::from_hours(1),
            timeout: Duration::from_secs(3),
            wan_ip: None,
        }
    }

    /// The lease in whole seconds: at least 1 (0 means "forever" to routers), at most
    /// `u32::MAX`.
    pub fn lease_secs(&self) -> u32 {
        let secs = self.lease.as_secs() + u64::from(self.lease.subsec_nanos() > 0);
        u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
    }

    /// The port peers would dial without a mapping, and the one asked of the gateways.
    fn wanted_port(&self) -> Option<u16> {
        self.listen_port.map(|p| self.external_port.unwrap_or(p))
    }
}

/// Names one forwarding-check port check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckId(pub u32);

/// Work for the driver (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// SSDP discovery bound to `bind`, giving up after `timeout`, then the gateway's external
    /// IP; report with [`Probe::handle_upnp`].
    UpnpSearch {
        /// The LAN address to bind the search socket to.
        bind: Ipv4Addr,
        /// Discovery bound.
        timeout: Duration,
    },
    /// Ask the default gateway for its public address with NAT-PMP, retrying until `until`
    /// at most; report with [`Probe::handle_natpmp`].
    NatpmpAsk {
        /// Give up then.
        until: Instant,
    },
    /// Map TCP `external_port` → `internal` with `protocol` on the gateway found before;
    /// report with [`Probe::handle_mapped`].
    Map {
        /// UPnP or NAT-PMP.
        protocol: Protocol,
        /// The port asked for.
        external_port: u16,
        /// Our LAN address and listening port.
        internal: SocketAddrV4,
        /// Lease in seconds (never 0).
        lease_secs: u32,
        /// Whether `external_port` was fixed by the user (else another free port may do).
        fixed: bool,
        /// Give up then (NAT-PMP retries; UPnP's SOAP request has its own 10 s bound).
        until: Instant,
    },
    /// Delete a mapping that is not kept. Nobody waits for the result.
    Unmap(Mapping),
    /// `GET /v1/check?port=P` on the forwarding check; report with [`Probe::handle_check`].
    Check {
        /// Which check.
        id: CheckId,
        /// The port.
        port: u16,
        /// Request bound.
        timeout: Duration,
    },
    /// `GET /v1/wan-ip` on the forwarding check; report with [`Probe::handle_wan_ip`].
    WanIp {
        /// Request bound.
        timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gateway {
    /// Not tried (turned off).
    Off,
    /// Discovery running since the probe started.
    Searching,
    /// Answered; `tried` once a mapping was attempted there.
    Found { tried: bool },
    /// No gateway, or it refused.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Mapping,
    Checking { id: CheckId, mapping: Mapping },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attempt {
    protocol: Protocol,
    since: Instant,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The port as it is, before any mapping.
    Direct,
    /// The mapping of the current attempt.
    Mapping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proof {
    forwarding: Forwarding,
    port: u16,
    mapping: Option<Mapping>,
    proven: bool,
}

/// The probe (see the module docs and [`super`]).
#[derive(Debug)]
pub struct Probe {
    config: ProbeConfig,
    started: Instant,
    deadline: Instant,
    actions: VecDeque<Action>,
    steps: Vec<Step>,
    upnp: Gateway,
    natpmp: Gateway,
    attempt: Option<Attempt>,
    checks: HashMap<CheckId, (Purpose, Instant, u16)>,
    next_check: u32,
    wan_ip_pending: Option<Instant>,
    nat_pending: bool,
    nat: Option<NatMapping>,
    /// Public external IPs the gateways told: (UPnP, NAT-PMP).
    gateway_wan: (Option<Ipv4Addr>, Option<Ipv4Addr>),
    checked_wan: Option<Ipv4Addr>,
    /// Why the forwarding check cannot be reached, once a request failed that way: no
    /// mapping is made after that (it could not be proven).
    checker_down: Option<String>,
    /// Mappings made on a router and not (yet) deleted.
    created: Vec<Mapping>,
    proof: Option<Proof>,
    report: Option<ReachReport>,
}

impl Probe {
    /// Starts a probe at `now`: the first actions are ready in [`Probe::poll_action`].
    pub fn new(now: Instant, config: ProbeConfig) -> Probe {
        let mut p = Probe {
            started: now,
            deadline: now + config.timeout,
            actions: VecDeque::new(),
            steps: Vec::new(),
            upnp: Gateway::Off,
            natpmp: Gateway::Off,
            attempt: None,
            checks: HashMap::new(),
            next_check: 0,
            wan_ip_pending: None,
            nat_pending: config.nat_detection,
            nat: None,
            gateway_wan: (None, None),
            checked_wan: None,
            checker_down: None,
            created: Vec::new(),
            proof: None,
            report: None,
            config,
        };
        p.begin(now);
        p
    }

    fn begin(&mut self, now: Instant) {
        let discovery = self.config.timeout * DISCOVERY_SHARE_NUM / DISCOVERY_SHARE_DEN;
        if self.config.upnp {
            self.upnp = Gateway::Searching;
            self.actions.push_back(Action::UpnpSearch {
                bind: self.config.lan_ip,
                timeout: discovery,
            });
        } else {
            self.skip(
                Method::Upnp,
                "discover",
                "turned off (upnp = false, --no-upnp)",
            );
        }
        if self.config.natpmp {
            self.natpmp = Gateway::Searching;
            self.actions.push_back(Action::NatpmpAsk {
                until: now + discovery,
            });
        } else {
            self.skip(
                Method::Natpmp,
                "discover",
                "turned off (natpmp = false, --no-natpmp)",
            );
        }
        let wanted = self.config.wanted_port();
        if self.config.forwarding_check {
            self.wan_ip_pending = Some(now);
            self.actions.push_back(Action::WanIp {
                timeout: self.config.timeout,
            });
            if let Some(port) = wanted {
                self.start_check(now, Purpose::Direct, port);
            } else {
                self.skip(Method::Manual, "check", "the node does not listen");
            }
        } else {
            self.skip(
                Method::ForwardingCheck,
                "wan-ip",
                "no forwarding check configured (forwarding_check, --forwarding-check URL)",
            );
            match (self.config.external_port, self.config.listen_port) {
                (Some(port), Some(_)) => {
                    self.skip(
                        Method::Manual,
                        "check",
                        &format!(
                            "external port {port} trusted without proof (no forwarding check)"
                        ),
                    );
                    self.proof = Some(Proof {
                        forwarding: Forwarding::Manual,
                        port,
                        mapping: None,
                        proven: false,
                    });
                }
                _ => self.skip(
                    Method::Manual,
                    "check",
                    "no forwarding check configured to test the port",
                ),
            }
        }
        if !self.config.nat_detection {
            self.skip(
                Method::NatDetection,
                "detect",
                "no rendezvous server configured",
            );
        }
        self.maybe_finish(now);
    }

    /// Takes over a mapping made before (by an earlier probe): a yes for its port counts for
    /// it, and it is deleted at the end unless the new outcome keeps it.
    pub fn adopt(&mut self, mapping: Mapping) {
        if self.report.is_some() {
            self.actions.push_back(Action::Unmap(mapping));
        } else {
            self.created.retain(|m| !mapping.same_rule(m));
            self.created.push(mapping);
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Probe::handle_timeout`] next (`None` once finished).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.report.is_some() {
            return None;
        }
        let mut at = self.deadline;
        if self.natpmp == (Gateway::Found { tried: false })
            && self.upnp == Gateway::Searching
            && self.attempt.is_none()
        {
            at = at.min(self.started + UPNP_HEAD_START);
        }
        Some(at)
    }

    /// Time passed: NAT-PMP's wait for UPnP may be over, or the whole budget.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.report.is_some() {
            return;
        }
        if now >= self.deadline {
            self.finish(now);
            return;
        }
        self.next_attempt(now);
    }

    /// The UPnP discovery ended: `Ok(external IP if the gateway told it)` or why not.
    pub fn handle_upnp(&mut self, now: Instant, result: Result<Option<Ipv4Addr>, String>) {
        self.gateway_found(now, Protocol::Upnp, result);
    }

    /// The NAT-PMP public-address request ended.
    pub fn handle_natpmp(&mut self, now: Instant, result: Result<Ipv4Addr, String>) {
        self.gateway_found(now, Protocol::Natpmp, result.map(Some));
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
                    Some(ip) if is_public(ip) => {
                        match protocol {
                            Protocol::Upnp => self.gateway_wan.0 = Some(ip),
                            Protocol::Natpmp => self.gateway_wan.1 = Some(ip),
                        }
                        format!("gateway answered; its external IP is {ip}")
                    }
                    Some(ip) => format!(
                        "gateway answered; its external IP {ip} is not public (another NAT \
                         beyond it: its mappings cannot make us reachable)"
                    ),
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
                self.step(
                    protocol.method(),
                    "map",
                    attempt.since,
                    now,
                    Outcome::Ok,
                    format!("mapped {mapping}"),
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
                self.step(
                    Method::Manual,
                    "check",
                    since,
                    now,
                    Outcome::Ok,
                    format!("port {port} ({as_is}) reachable from outside"),
                );
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

    /// The result, once the probe is over.
    pub fn report(&self) -> Option<&ReachReport> {
        self.report.as_ref()
    }

    /// The mapping the report keeps (to renew and delete on stop), once over.
    pub fn kept_mapping(&self) -> Option<Mapping> {
        self.report.as_ref().and_then(|r| r.mapping)
    }

    /// The deadline of the whole probe.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    // ---- internals ----

    fn gateway(&mut self, protocol: Protocol) -> &mut Gateway {
        match protocol {
            Protocol::Upnp => &mut self.upnp,
            Protocol::Natpmp => &mut self.natpmp,
        }
    }

    fn start_check(&mut self, now: Instant, purpose: Purpose, port: u16) -> CheckId {
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

    fn drop_mapping(&mut self, mapping: Mapping) {
        self.created.retain(|m| !mapping.same_rule(m));
        self.actions.push_back(Action::Unmap(mapping));
    }

    /// Starts a mapping where a gateway answered, if one may start now.
    fn next_attempt(&mut self, now: Instant) {
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
            for protocol in [Protocol::Upnp, Protocol::Natpmp] {
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
        let protocol = if self.upnp == (Gateway::Found { tried: false }) {
            Protocol::Upnp
        } else if self.natpmp == (Gateway::Found { tried: false })
            && (self.upnp != Gateway::Searching || now >= self.started + UPNP_HEAD_START)
        {
            Protocol::Natpmp
        } else {
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

    /// Ends the probe when nothing more can change its outcome.
    fn maybe_finish(&mut self, now: Instant) {
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
        let untried = |g: Gateway| g == Gateway::Found { tried: false };
        let may_map = self.config.forwarding_check && self.config.listen_port.is_some();
        let done = !self.searching()
            && self.attempt.is_none()
            && self.checks.is_empty()
            && !(may_map && (untried(self.upnp) || untried(self.natpmp)));
        if done {
            self.finish(now);
        }
    }

    fn searching(&self) -> bool {
        self.upnp == Gateway::Searching || self.natpmp == Gateway::Searching
    }

    fn finish(&mut self, now: Instant) {
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
        if self.upnp == Gateway::Searching {
            self.step(
                Method::Upnp,
                "discover",
                self.started,
                now,
                outcome,
                limit.clone(),
            );
        }
        if self.natpmp == Gateway::Searching {
            self.step(
                Method::Natpmp,
                "discover",
                self.started,
                now,
                outcome,
                limit.clone(),
            );
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
        for method in [Method::Upnp, Method::Natpmp, Method::Manual] {
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
        // The gateway that forwards for us first, then UPnP, then NAT-PMP.
        let (upnp, natpmp) = self.gateway_wan;
        let upnp = upnp.map(|ip| (ip, WanIpSource::Upnp));
        let natpmp = natpmp.map(|ip| (ip, WanIpSource::Natpmp));
        let preferred = match self.proof.map(|p| p.forwarding) {
            Some(Forwarding::Natpmp) => natpmp.or(upnp),
            _ => upnp.or(natpmp),
        };
        if let Some((ip, source)) = preferred {
            return (Some(ip), Some(source));
        }
        match self.checked_wan {
            Some(ip) => (Some(ip), Some(WanIpSource::ForwardingCheck)),
            None => (None, None),
        }
    }

    fn skip(&mut self, method: Method, step: &'static str, detail: &str) {
        self.steps.push(Step {
            method,
            step,
            at_ms: 0,
            ms: 0,
            outcome: Outcome::Skipped,
            detail: detail.to_owned(),
        });
    }

    fn step(
        &mut self,
        method: Method,
        step: &'static str,
        since: Instant,
        now: Instant,
        outcome: Outcome,
        detail: String,
    ) {
        self.steps.push(Step {
            method,
            step,
            at_ms: ms(self.started, since),
            ms: ms(since, now),
            outcome,
            detail,
        });
    }
}

fn ms(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_millis()).unwrap_or(u64::MAX)
}
