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
//!
//! The [`Probe`] struct, its configuration, actions, start and timers are here; its inputs are
//! handled in `probe/gateways.rs` (discovery, the mapping attempt), `probe/checks.rs` (the
//! forwarding check, the NAT detection) and `probe/finish.rs` (ending and the report), each an
//! `impl Probe` block that imports this file, never another of them.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::report::{Forwarding, Mapping, Method, Outcome, Protocol, ReachReport, Step};
use wire::nat::NatMapping;

/// The order in which gateways that answered are asked for a mapping: PCP first (one UDP round
/// trip that also tells the external address, and it can map on a carrier-grade NAT that runs
/// a PCP server), then UPnP (PyP2P's first choice), then NAT-PMP (PCP's predecessor on the
/// same port, for gateways that speak only it).
pub const MAPPING_ORDER: [Protocol; 3] = [Protocol::Pcp, Protocol::Upnp, Protocol::Natpmp];

/// A gateway that answered waits this long (from the start of the probe) for one earlier in
/// [`MAPPING_ORDER`] that is still being discovered before it maps on its own (NAT-PMP, which
/// usually answers before UPnP, waits for UPnP).
pub const HEAD_START: Duration = Duration::from_millis(300);

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
    /// Try PCP.
    pub pcp: bool,
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

mod checks;
mod finish;
mod gateways;

impl ProbeConfig {
    /// Everything on (UPnP, NAT-PMP, PCP, forwarding check, NAT detection), lease 1 h,
    /// budget 3 s.
    pub fn new(lan_ip: Ipv4Addr, listen_port: Option<u16>) -> ProbeConfig {
        ProbeConfig {
            upnp: true,
            natpmp: true,
            pcp: true,
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

/// What a PCP ANNOUNCE found out, for [`Probe::handle_pcp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcpAnswer {
    /// The gateway speaks PCP.
    Speaks,
    /// It does not (it speaks NAT-PMP only, another version, or said nothing): why. NAT-PMP
    /// is asked next on the same port.
    NotPcp(String),
    /// There is nothing to ask on that port (port unreachable, no default gateway): why, for
    /// PCP and for NAT-PMP, which is not asked either.
    Nothing {
        /// PCP's reason.
        pcp: String,
        /// NAT-PMP's reason.
        natpmp: String,
    },
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
    /// Send a PCP ANNOUNCE from `bind` to the default gateway's port 5351, retrying until
    /// `until` at most: does it speak PCP? Report with [`Probe::handle_pcp`]. NAT-PMP is asked
    /// after it.
    PcpAnnounce {
        /// Our LAN address (the request's source and client address).
        bind: Ipv4Addr,
        /// Give up then.
        until: Instant,
    },
    /// Map TCP `external_port` → `internal` with `protocol` on the gateway found before;
    /// report with [`Probe::handle_mapped`].
    Map {
        /// UPnP, NAT-PMP or PCP.
        protocol: Protocol,
        /// The port asked for.
        external_port: u16,
        /// Our LAN address and listening port.
        internal: SocketAddrV4,
        /// Lease in seconds (never 0).
        lease_secs: u32,
        /// Whether `external_port` was fixed by the user (else another free port may do).
        fixed: bool,
        /// Give up then (NAT-PMP and PCP resend; UPnP's SOAP request has its own 10 s bound).
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
    pcp: Gateway,
    /// NAT-PMP is asked once PCP's ANNOUNCE has ended (same port).
    natpmp_after_pcp: bool,
    attempt: Option<Attempt>,
    checks: HashMap<CheckId, (Purpose, Instant, u16)>,
    next_check: u32,
    wan_ip_pending: Option<Instant>,
    nat_pending: bool,
    nat: Option<NatMapping>,
    /// Public external IPs the gateways told: by discovery (UPnP, NAT-PMP) or with a
    /// mapping (PCP).
    gateway_wan: Vec<(Protocol, Ipv4Addr)>,
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
            pcp: Gateway::Off,
            natpmp_after_pcp: false,
            attempt: None,
            checks: HashMap::new(),
            next_check: 0,
            wan_ip_pending: None,
            nat_pending: config.nat_detection,
            nat: None,
            gateway_wan: Vec::new(),
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
        // Port 5351: PCP first, NAT-PMP once PCP has answered (its fallback there). Never both
        // at once: a closed port answers the second request's ICMP error only after the
        // kernel's rate limit, and NAT-PMP needs part of the window if PCP meets silence.
        if self.config.pcp {
            self.pcp = Gateway::Searching;
            let share = if self.config.natpmp { 2 } else { 1 };
            self.actions.push_back(Action::PcpAnnounce {
                bind: self.config.lan_ip,
                until: now + discovery / share,
            });
        } else {
            self.skip(
                Method::Pcp,
                "discover",
                "turned off (pcp = false, --no-pcp)",
            );
        }
        if self.config.natpmp {
            self.natpmp = Gateway::Searching;
            if self.config.pcp {
                self.natpmp_after_pcp = true;
            } else {
                self.actions.push_back(Action::NatpmpAsk {
                    until: now + discovery,
                });
            }
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
        if self.waits_for_head_start() {
            at = at.min(self.started + HEAD_START);
        }
        Some(at)
    }

    /// Time passed: a gateway's wait for one earlier in [`MAPPING_ORDER`] may be over, or
    /// the whole budget.
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
