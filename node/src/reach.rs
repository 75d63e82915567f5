//! Reachability: can peers dial this node? UPnP and NAT-PMP port forwarding, proven with the
//! forwarding check, and the node type that follows.
//!
//! ```text
//!   Net::probe_reachability()                      (blocking but bounded: reach_timeout, 3 s)
//!     │ ProbeConfig                     Action ▼        ▲ handle_*(now, ..)
//!     ├──────────────▶ probe::Probe (sans-IO) ──────────────── driver (helper threads + Waker)
//!     │                 decides what to try, in what order,      ├─ gateway: UPnP (igd-next),
//!     │                 when to give up, what it proves          │  NAT-PMP (natpmp), bounded
//!     │                                                          └─ check: forwarding-check client
//!     ▼ ReachReport
//!   lease::Leases (sans-IO): the mapping kept is renewed at half-life, deleted on Net::stop
//! ```
//!
//! What a probe does, all at once from the start:
//! - **UPnP**: SSDP discovery bound to the LAN address (at most 2/3 of the budget), the
//!   gateway's external IP.
//! - **NAT-PMP**: the gateway's public address, retries capped by the same bound (RFC 6886
//!   would go on for ~128 s).
//! - **forwarding check**: our WAN IP as the server sees it, and whether the port we would
//!   advertise (the external port if set, else the listening port) is reachable as it is
//!   (`manual` with `external_port`, `forwarded` without).
//! - **NAT detection** (when a rendezvous server is set): preserving, delta or random.
//!
//! As soon as a gateway answered, the node maps its port there (UPnP first when both
//! answered; NAT-PMP waits [`probe::UPNP_HEAD_START`] for UPnP), with a finite lease
//! (`mapping_lease`, never 0), and asks the forwarding check to prove the mapping. A mapping
//! that is not proven is deleted at once and the other protocol is tried. Without a
//! forwarding check nothing is mapped (it could not be proven); the gateways still tell the
//! WAN IP.
//!
//! The outcome, [`ReachReport`]: `passive` with the way the port is forwarded (`upnp`,
//! `natpmp`, `manual`, `forwarded`) when proven (or when `external_port` is set and there is
//! no forwarding check to ask); otherwise `simultaneous` (NAT preserving or delta: hole
//! punching can work) or `active` (random NAT, or unknown), with every step, its duration
//! and its reason.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use node::reach::probe::{Action, Probe, ProbeConfig};
//! use node::reach::{Forwarding, NodeKind, Outcome};
//!
//! // A probe with only a forwarding check: the port turns out to be reachable as it is.
//! let t0 = Instant::now();
//! let config = ProbeConfig {
//!     upnp: false,
//!     natpmp: false,
//!     nat_detection: false,
//!     ..ProbeConfig::new("192.168.1.2".parse().unwrap(), Some(50500))
//! };
//! let mut probe = Probe::new(t0, config);
//! let mut check = None;
//! while let Some(action) = probe.poll_action() {
//!     if let Action::Check { id, port, .. } = action { check = Some((id, port)); }
//! }
//! let (id, port) = check.unwrap();
//! assert_eq!(port, 50500);
//! let t1 = t0 + Duration::from_millis(12);
//! probe.handle_check(t1, id, Ok(true));
//! probe.handle_wan_ip(t1, Ok("203.0.113.7".parse().unwrap()));
//! let report = probe.report().unwrap();
//! assert_eq!(report.node_type, NodeKind::Passive);
//! assert_eq!(report.forwarding, Some(Forwarding::Forwarded));
//! assert_eq!(report.wan_ip, Some("203.0.113.7".parse().unwrap()));
//! assert!(report.steps.iter().any(|s| s.outcome == Outcome::Skipped));
//! ```

pub mod check;
pub(crate) mod driver;
pub mod gateway;
pub mod lease;
pub mod probe;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

pub use check::{CheckError, CheckServer, PortCheck};
pub use lease::Leases;
pub use probe::{Action, Probe, ProbeConfig};

/// What the node should call itself after a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// Reachable: peers dial it.
    Passive,
    /// Not reachable, but its NAT maps ports predictably (preserving or delta): TCP hole
    /// punching can reach it.
    Simultaneous,
    /// Not reachable and nothing predictable: it only dials out.
    Active,
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::Passive => "passive",
            NodeKind::Simultaneous => "simultaneous",
            NodeKind::Active => "active",
        })
    }
}

/// How a passive node's port is made reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// A UPnP IGD mapping this node made.
    Upnp,
    /// A NAT-PMP mapping this node made.
    Natpmp,
    /// A port forwarded by hand (`external_port`).
    Manual,
    /// Reachable as it is: no NAT, or a router that forwards everything.
    Forwarded,
}

impl Forwarding {
    /// The UNL's forwarding type.
    pub fn to_unl(self) -> crate::unl::Forwarding {
        match self {
            Forwarding::Upnp => crate::unl::Forwarding::Upnp,
            Forwarding::Natpmp => crate::unl::Forwarding::NatPmp,
            Forwarding::Manual => crate::unl::Forwarding::Manual,
            Forwarding::Forwarded => crate::unl::Forwarding::Forwarded,
        }
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forwarding::Upnp => "upnp",
            Forwarding::Natpmp => "natpmp",
            Forwarding::Manual => "manual",
            Forwarding::Forwarded => "forwarded",
        })
    }
}

/// A port-mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// UPnP IGD (`AddPortMapping` over SOAP, found by SSDP).
    Upnp,
    /// NAT-PMP (RFC 6886, UDP to the default gateway's port 5351).
    Natpmp,
}

impl Protocol {
    /// The forwarding type a proven mapping of this protocol gives.
    pub fn forwarding(self) -> Forwarding {
        match self {
            Protocol::Upnp => Forwarding::Upnp,
            Protocol::Natpmp => Forwarding::Natpmp,
        }
    }

    /// The [`Method`] of this protocol in a report.
    pub fn method(self) -> Method {
        match self {
            Protocol::Upnp => Method::Upnp,
            Protocol::Natpmp => Method::Natpmp,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.method().fmt(f)
    }
}

/// A TCP port mapping on a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mapping {
    /// Who made it.
    pub protocol: Protocol,
    /// The router's public port.
    pub external_port: u16,
    /// Where it forwards to (our LAN address and listening port).
    pub internal: std::net::SocketAddrV4,
    /// The lease the router granted, in seconds (NAT-PMP may grant less than asked).
    pub lease_secs: u32,
}

impl Mapping {
    /// Whether `other` is the same rule on the router (protocol, external port and target; the
    /// lease may differ).
    pub fn same_rule(&self, other: &Mapping) -> bool {
        self.protocol == other.protocol
            && self.external_port == other.external_port
            && self.internal == other.internal
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} TCP {} -> {} for {} s",
            self.protocol, self.external_port, self.internal, self.lease_secs
        )
    }
}

/// Which part of the probe a [`Step`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// UPnP IGD.
    Upnp,
    /// NAT-PMP.
    Natpmp,
    /// The port as it is (forwarded by hand, or no NAT).
    Manual,
    /// The forwarding-check server (WAN IP).
    ForwardingCheck,
    /// NAT mapping detection through the rendezvous.
    NatDetection,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Upnp => "upnp",
            Method::Natpmp => "natpmp",
            Method::Manual => "manual",
            Method::ForwardingCheck => "forwarding-check",
            Method::NatDetection => "nat-detection",
        })
    }
}

/// How a [`Step`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It worked.
    Ok,
    /// It was tried and did not work (the detail says why).
    Failed,
    /// It was not tried (turned off, not needed, or impossible; the detail says which).
    Skipped,
    /// No answer before the probe's time was up.
    TimedOut,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::TimedOut => "timed-out",
        })
    }
}

/// One thing the probe tried (or chose not to), with its timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The method.
    pub method: Method,
    /// What was done: `discover`, `map`, `check`, `wan-ip`, `detect`.
    pub step: &'static str,
    /// When it started, in ms since the probe started.
    pub at_ms: u64,
    /// How long it took, in ms.
    pub ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// What happened, with values (`no UPnP gateway answered within 2.0 s on 192.168.1.2`).
    pub detail: String,
}

/// Where the WAN address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WanIpSource {
    /// Given in the configuration (`wan_ip`).
    Config,
    /// The UPnP gateway's `GetExternalIPAddress`.
    Upnp,
    /// The NAT-PMP gateway's public address.
    Natpmp,
    /// The forwarding-check server (the address it saw us come from).
    ForwardingCheck,
}

/// What a reachability probe found: see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReachReport {
    /// `passive`, `simultaneous` or `active`.
    pub node_type: NodeKind,
    /// How the port is forwarded when passive; `null` otherwise.
    pub forwarding: Option<Forwarding>,
    /// Whether the forwarding check proved the port reachable (false for a manual port
    /// trusted without a forwarding check).
    pub proven: bool,
    /// Our WAN address, when learned.
    pub wan_ip: Option<Ipv4Addr>,
    /// Where [`ReachReport::wan_ip`] came from.
    pub wan_ip_source: Option<WanIpSource>,
    /// The port peers dial when passive (the router's port); `null` otherwise.
    pub external_port: Option<u16>,
    /// Our LAN address (the mapping's target, the address SSDP is bound to).
    pub lan_ip: Ipv4Addr,
    /// The listening port (`null` when the node does not listen).
    pub listen_port: Option<u16>,
    /// The NAT mapping behaviour from the NAT detection, when it ran: `preserving`,
    /// `delta(n)` or `random`.
    pub nat: Option<String>,
    /// The mapping kept (renewed at half-life, deleted on stop), if any.
    pub mapping: Option<Mapping>,
    /// One line: why the node is what it is.
    pub reason: String,
    /// How long the probe took, in ms.
    pub ms: u64,
    /// Every step, in the order they ended.
    pub steps: Vec<Step>,
}

impl ReachReport {
    /// The report as text for people: a summary line, then one line per step.
    ///
    /// ```
    /// # use node::reach::*;
    /// let report = ReachReport {
    ///     node_type: NodeKind::Active, forwarding: None, proven: false, wan_ip: None,
    ///     wan_ip_source: None, external_port: None, lan_ip: "10.0.0.2".parse().unwrap(),
    ///     listen_port: Some(4000), nat: None, mapping: None,
    ///     reason: "nothing tried".into(), ms: 0,
    ///     steps: vec![Step { method: Method::Upnp, step: "discover", at_ms: 0, ms: 0,
    ///         outcome: Outcome::Skipped, detail: "turned off".into() }],
    /// };
    /// let text = report.to_text();
    /// assert!(text.starts_with("node type: active"));
    /// assert!(text.contains("upnp"));
    /// assert!(text.contains("turned off"));
    /// ```
    pub fn to_text(&self) -> String {
        use fmt::Write as _;
        let mut out = String::new();
        let _ = write!(out, "node type: {}", self.node_type);
        if let Some(f) = self.forwarding {
            let _ = write!(out, " (forwarding: {f}");
            if !self.proven {
                out.push_str(", not proven");
            }
            out.push(')');
        }
        let _ = writeln!(out, "\nwhy: {}", self.reason);
        let wan = self
            .wan_ip
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        let source = self
            .wan_ip_source
            .map(|s| format!(" (from {})", serde_plain(&s)))
            .unwrap_or_default();
        let _ = write!(out, "WAN IP: {wan}{source}   LAN IP: {}", self.lan_ip);
        if let Some(p) = self.listen_port {
            let _ = write!(out, "   listening port: {p}");
        }
        if let Some(p) = self.external_port {
            let _ = write!(out, "   external port: {p}");
        }
        if let Some(nat) = &self.nat {
            let _ = write!(out, "   NAT: {nat}");
        }
        let _ = writeln!(out, "\nsteps ({} ms in all):", self.ms);
        for s in &self.steps {
            let _ = writeln!(
                out,
                "  {:<17} {:<9} {:<10} {:>5} ms  {}",
                s.method.to_string(),
                s.step,
                s.outcome.to_string(),
                s.ms,
                s.detail
            );
        }
        out
    }
}

/// A unit enum's serde name (`forwarding-check`).
fn serde_plain<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether `ip` can be a WAN address peers on the internet reach: not private, shared
/// (CGNAT 100.64/10), loopback, link-local, unspecified, broadcast or multicast. A gateway that
/// reports such an address sits behind another NAT, so its mappings do not make us reachable.
pub fn is_public(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || (a == 100 && (64..128).contains(&b)))
}
