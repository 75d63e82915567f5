//! What a reachability probe reports, and the vocabulary it is made of: the node kind it
//! concludes ([`NodeKind`]), how the port is forwarded ([`Forwarding`]), the port mappings on
//! the router ([`Protocol`], [`Mapping`]), each step tried ([`Step`], [`Method`],
//! [`Outcome`]), where the WAN address came from ([`WanIpSource`]), and the report itself
//! ([`ReachReport`]).
//!
//! Data only, re-exported from [`crate::reach`]; the probe, the lease keeper, the gateways and
//! the driver all build on it.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Serialize;
use wire::pcp::Nonce;

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
    /// A PCP mapping this node made.
    Pcp,
    /// A port forwarded by hand (`external_port`).
    Manual,
    /// Reachable as it is: no NAT, or a router that forwards everything.
    Forwarded,
}

impl Forwarding {
    /// The UNL's forwarding type.
    pub fn to_unl(self) -> wire::unl::Forwarding {
        match self {
            Forwarding::Upnp => wire::unl::Forwarding::Upnp,
            // PyP2P's UNL has no PCP type: PCP is NAT-PMP's successor on the same port, and a
            // peer reading `N` knows the port was mapped on the router.
            Forwarding::Natpmp | Forwarding::Pcp => wire::unl::Forwarding::NatPmp,
            Forwarding::Manual => wire::unl::Forwarding::Manual,
            Forwarding::Forwarded => wire::unl::Forwarding::Forwarded,
        }
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forwarding::Upnp => "upnp",
            Forwarding::Natpmp => "natpmp",
            Forwarding::Pcp => "pcp",
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
    /// PCP (RFC 6887, NAT-PMP's successor on the same port; see [`crate::reach::pcp`]).
    Pcp,
}

impl Protocol {
    /// The forwarding type a proven mapping of this protocol gives.
    pub fn forwarding(self) -> Forwarding {
        match self {
            Protocol::Upnp => Forwarding::Upnp,
            Protocol::Natpmp => Forwarding::Natpmp,
            Protocol::Pcp => Forwarding::Pcp,
        }
    }

    /// The [`Method`] of this protocol in a report.
    pub fn method(self) -> Method {
        match self {
            Protocol::Upnp => Method::Upnp,
            Protocol::Natpmp => Method::Natpmp,
            Protocol::Pcp => Method::Pcp,
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
    pub internal: SocketAddrV4,
    /// The lease the router granted, in seconds (NAT-PMP and PCP may grant less, or more,
    /// than asked).
    pub lease_secs: u32,
    /// The router's external address, when the protocol tells it with the mapping (PCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ip: Option<Ipv4Addr>,
    /// PCP's mapping nonce: renewing and deleting the mapping take the same one.
    #[serde(skip)]
    pub nonce: Option<Nonce>,
}

impl Mapping {
    /// A mapping of `protocol` with no external address or nonce known.
    pub fn new(
        protocol: Protocol,
        external_port: u16,
        internal: SocketAddrV4,
        lease_secs: u32,
    ) -> Mapping {
        Mapping {
            protocol,
            external_port,
            internal,
            lease_secs,
            external_ip: None,
            nonce: None,
        }
    }

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
    /// PCP.
    Pcp,
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
            Method::Pcp => "pcp",
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
    /// The external address in a PCP mapping.
    Pcp,
    /// The forwarding-check server (the address it saw us come from).
    ForwardingCheck,
}

/// What a reachability probe found: see the [`crate::reach`] module docs.
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
