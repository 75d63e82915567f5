//! What the blocking helpers ([`Net::bootstrap`](super::Net::bootstrap),
//! [`Net::advertise`](super::Net::advertise), [`Net::detect_nat`](super::Net::detect_nat),
//! [`Net::wait_connect`](super::Net::wait_connect), ...) wait for: the reports they return,
//! and [`Outcomes`], where the driver files each result as its event comes out of the core.
//!
//! Data only: this module knows nothing of [`Net`](super::Net).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::error::NetError;
use crate::connect::ConnectOutcome;
use crate::ids::ConnectId;
use crate::reach::ReachReport;
use wire::nat::NatMapping;

/// What a bootstrap found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootstrapReport {
    /// The server that answered.
    pub server: SocketAddr,
    /// Nodes it offered.
    pub offered: usize,
    /// Nodes being dialed now.
    pub dialing: usize,
}

/// What a NAT detection found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NatReport {
    /// The server asked.
    pub server: SocketAddr,
    /// The verdict.
    pub mapping: NatMapping,
    /// `(local port, observed port)` per probe.
    pub probes: Vec<(u16, u16)>,
}

/// What the node established about itself (see [`Net::wait_ready`](super::Net::wait_ready)).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReadyReport {
    /// Its role now (`passive`, `simultaneous` or `active`).
    pub role: String,
    /// Why, when the node chose it itself (role `auto`).
    pub reason: Option<String>,
    /// Its WAN address as the rendezvous sees it (or as configured).
    pub wan_ip: Option<IpAddr>,
    /// Its NAT's mapping, when detected.
    pub nat: Option<NatMapping>,
    /// What was not ready when the wait ended (empty: everything).
    pub pending: Vec<String>,
}

/// Outcomes the blocking helpers wait for.
#[derive(Debug, Default)]
pub(super) struct Outcomes {
    pub(super) connects: HashMap<ConnectId, ConnectOutcome>,
    pub(super) bootstrap: Option<Result<BootstrapReport, NetError>>,
    pub(super) advertise: Option<Result<u16, NetError>>,
    pub(super) clear: Option<()>,
    pub(super) nat: Option<Result<NatReport, NetError>>,
    pub(super) reach: Option<ReachReport>,
    /// The last role an auto node chose, with the reason.
    pub(super) role: Option<(String, String)>,
}
