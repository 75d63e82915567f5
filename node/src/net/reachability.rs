//! `Net`'s reachability methods (see [`crate::reach`]): the probe, its effects on the node
//! (role, advertised port, forwarding type, WAN address), lease renewal in the loop and
//! mapping deletion on stop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Net, NetError};
use crate::config::Role;
use crate::reach::driver::Effect;
use crate::reach::{Mapping, NodeKind, ProbeConfig, ReachReport};

impl Net {
    /// Finds out whether peers can reach this node, and opens the router when it can:
    /// UPnP, NAT-PMP and PCP (each unless turned off in the config), the forwarding check (if
    /// configured) and the NAT detection (if a rendezvous is configured), in parallel,
    /// within `reach_timeout` (3 s by default). Connections are served meanwhile.
    ///
    /// When the port is proven reachable, the node becomes passive and advertises the
    /// external port (`set_reachability(Role::Passive, Some(port))`), its UNL names the
    /// forwarding type, and a mapping it made is renewed at half-life and deleted by
    /// [`Net::stop`]. Otherwise the role the configuration chose stays, with a warning that
    /// says why. The WAN address learned (from the gateway, else the forwarding check) goes
    /// into the UNL unless one was configured.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), node::NetError> {
    /// use node::{Config, Net};
    /// let mut net = Net::new(Config::new().with_forwarding_check("http://203.0.113.5:8080"))?;
    /// let report = net.probe_reachability()?;
    /// println!("{}", report.to_text()); // node type, why, every step with its duration
    /// net.stop(); // deletes the mapping, if one was made
    /// # Ok(()) }
    /// ```
    pub fn probe_reachability(&mut self) -> Result<ReachReport, NetError> {
        self.start()?;
        self.begin_probe(Instant::now());
        let limit = self.config.reach_timeout + Duration::from_secs(1);
        self.wait_for(limit, "reachability probe", |o| o.reach.take().map(Ok))
    }

    /// Starts a probe; its report arrives through `drive_reach` (and `outcomes.reach`).
    fn begin_probe(&mut self, now: Instant) {
        let config = ProbeConfig {
            upnp: self.config.upnp,
            natpmp: self.config.natpmp,
            pcp: self.config.pcp,
            forwarding_check: self.reach.has_server(),
            nat_detection: !self.servers.is_empty(),
            lan_ip: self.reach_lan_ip(),
            listen_port: self.local_addr.map(|a| a.port()),
            external_port: self.config.external_port,
            lease: self.config.mapping_lease,
            timeout: self.config.reach_timeout,
            wan_ip: self.config.wan_ip,
        };
        if config.nat_detection {
            self.outcomes.nat = None;
            self.core.detect_nat(now);
        }
        self.outcomes.reach = None;
        self.reach.start_probe(now, config);
        self.apply_outputs(now);
    }

    /// The last reachability report, if a probe ran.
    pub fn reach_report(&self) -> Option<&ReachReport> {
        self.reach_report.as_ref()
    }

    /// The port mappings this node keeps on its router now (renewed at half-life, deleted
    /// by [`Net::stop`]).
    pub fn port_mappings(&self) -> Vec<Mapping> {
        self.reach.mappings()
    }

    /// The loop's share: NAT detection results for the probe, helper results, lease timers.
    pub(super) fn drive_reach(&mut self, now: Instant) {
        if self.reach.wants_nat()
            && let Some(result) = self.outcomes.nat.take()
        {
            let result = result.map(|r| r.mapping).map_err(|e| e.to_string());
            self.reach.handle_nat(now, result);
        }
        for effect in self.reach.drive(now) {
            match effect {
                Effect::ProbeDone(report) => self.apply_reach_report(&report),
                Effect::Lost { mapping, reason } => {
                    warn!(
                        %mapping,
                        reason,
                        "no longer reachable through the port mapping; back to the configured \
                         role, probing again"
                    );
                    self.set_reachability(self.reach_role, self.config.external_port);
                    self.set_forwarding(self.default_forwarding());
                    // The router may take a new mapping (it rebooted, its table was flushed).
                    self.begin_probe(now);
                }
            }
        }
    }

    fn apply_reach_report(&mut self, report: &ReachReport) {
        if self.config.wan_ip.is_none()
            && let Some(ip) = report.wan_ip
        {
            match self.core.observed_ip() {
                // What the rendezvous sees is what peers see; a gateway behind a carrier NAT
                // reports its own (carrier-side) address.
                Some(observed) if observed != std::net::IpAddr::V4(ip) => warn!(
                    %observed,
                    reported = %ip,
                    "the gateway or forwarding check reports another WAN address than the \
                     rendezvous sees (a second NAT, e.g. a carrier's?); keeping the observed one"
                ),
                Some(_) => {}
                None => self.set_wan_ip(ip),
            }
        }
        if report.node_type == NodeKind::Passive
            && let (Some(port), Some(forwarding)) = (report.external_port, report.forwarding)
        {
            info!(
                forwarding = %forwarding,
                wan_ip = ?report.wan_ip,
                port,
                ms = report.ms,
                "reachable: passive ({})",
                report.reason
            );
            self.set_reachability(Role::Passive, Some(port));
            self.set_forwarding(forwarding.to_unl());
        } else {
            let role = match self.reach_role {
                Role::Auto => "auto: chosen from the NAT detection",
                Role::Passive => "passive: peers told to dial it will fail",
                Role::Active => "active",
                Role::Simultaneous => "simultaneous: reachable by hole punching if the NAT allows",
            };
            warn!(
                node_type = %report.node_type,
                ms = report.ms,
                "not reachable from outside: {}; the configured role stays ({role})",
                report.reason
            );
        }
        self.reach_report = Some(report.clone());
        self.outcomes.reach = Some(report.clone());
    }

    /// The LAN address for mappings and SSDP: the bind address if specific, else the source
    /// address the kernel picks towards the default gateway (a UDP `connect` sends nothing),
    /// else the one towards the servers.
    fn reach_lan_ip(&self) -> Ipv4Addr {
        if let IpAddr::V4(ip) = self.config.bind
            && !ip.is_unspecified()
        {
            return ip;
        }
        crate::reach::gateway::default_gateway()
            .and_then(|gw| source_towards(SocketAddr::new(IpAddr::V4(gw), 9)))
            .unwrap_or_else(|| self.lan_ip())
    }

    /// The forwarding type a node has before any probe.
    pub(super) fn default_forwarding(&self) -> wire::unl::Forwarding {
        if self.config.external_port.is_some() {
            wire::unl::Forwarding::Manual
        } else {
            wire::unl::Forwarding::Forwarded
        }
    }
}

fn source_towards(target: SocketAddr) -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(target).ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}
