//! Reachability: can peers dial this node? PCP, UPnP and NAT-PMP port forwarding, proven with
//! the forwarding check, and the node type that follows.
//!
//! ```text
//!   Net::probe_reachability()                      (blocking but bounded: reach_timeout, 3 s)
//!     │ ProbeConfig                     Action ▼        ▲ handle_*(now, ..)
//!     ├──────────────▶ probe::Probe (sans-IO) ──────────────── driver (helper threads + Waker)
//!     │                 decides what to try, in what order,      ├─ gateway: UPnP (igd-next),
//!     │                 when to give up, what it proves          │  NAT-PMP (natpmp), PCP
//!     │                                                          │  (pcp: our client), bounded
//!     │                                                          └─ check: forwarding-check client
//!     ▼ ReachReport
//!   lease::Leases (sans-IO): the mapping kept is renewed at half-life, deleted on Net::stop
//! ```
//!
//! What a probe does, all at once from the start:
//! - **UPnP**: SSDP discovery bound to the LAN address (at most 2/3 of the budget), the
//!   gateway's external IP.
//! - **PCP**: an ANNOUNCE to the default gateway's port 5351, resent within half that bound:
//!   does the gateway speak PCP?
//! - **NAT-PMP**, PCP's fallback on the same port, once PCP has answered (a NAT-PMP-only
//!   gateway says so with version 0; silence counts too): the gateway's public address,
//!   retries capped by the discovery bound (RFC 6886 would go on for ~128 s). A closed port
//!   fails both at once. Never both at once: a closed port's second ICMP error would wait for
//!   the kernel's rate limit.
//! - **forwarding check**: our WAN IP as the server sees it, and whether the port we would
//!   advertise (the external port if set, else the listening port) is reachable as it is
//!   (`manual` with `external_port`, `forwarded` without).
//! - **NAT detection** (when a rendezvous server is set): preserving, delta or random.
//!
//! As soon as a gateway answered, the node maps its port there (in
//! [`probe::MAPPING_ORDER`]: PCP, UPnP, NAT-PMP; one that answered waits up to
//! [`probe::HEAD_START`] for an earlier one still being asked), with a finite lease
//! (`mapping_lease`, never 0), and asks the forwarding check to prove the mapping. A mapping
//! that is not proven is deleted at once and the next protocol is tried. Without a
//! forwarding check nothing is mapped (it could not be proven); the gateways still tell the
//! WAN IP.
//!
//! The outcome, [`ReachReport`]: `passive` with the way the port is forwarded (`pcp`, `upnp`,
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
//!     pcp: false,
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
pub mod pcp;
pub mod probe;
mod report;
#[cfg(test)]
mod tests;

pub use check::{CheckError, CheckServer, PortCheck};
pub use lease::Leases;
pub use probe::{Action, PcpAnswer, Probe, ProbeConfig};
pub use report::{
    Forwarding, Mapping, Method, NodeKind, Outcome, Protocol, ReachReport, Step, WanIpSource,
    is_public,
};
