//! Carries out what the [`Probe`] and the [`Leases`] ask for: every blocking operation runs
//! on a short-lived helper thread that sends its result back through a channel and wakes the
//! `Net` loop with its `mio::Waker`. The loop calls [`Reachability::drive`] every turn.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use mio::Waker;
use tracing::{debug, info, warn};

use super::check::{CheckError, CheckServer};
use super::gateway::{self, Router, UpnpGateway};
use super::lease::LeaseEvent;
use super::lease::Leases;
use super::probe::{Action, CheckId, PcpAnswer, Probe, ProbeConfig};
use super::report::{Mapping, Protocol, ReachReport};
use wire::nat::NatMapping;

/// Bound on one renewal or deletion by NAT-PMP or PCP (UPnP's SOAP has igd-next's own 10 s
/// bound).
const UDP_EXCHANGE: Duration = Duration::from_secs(2);

/// A helper's result.
#[derive(Debug)]
enum Done {
    Upnp {
        generation: u32,
        result: Result<UpnpGateway, String>,
    },
    Natpmp {
        generation: u32,
        result: Result<(Ipv4Addr, Ipv4Addr), String>,
    },
    Pcp {
        generation: u32,
        server: Option<SocketAddr>,
        answer: PcpAnswer,
    },
    Mapped {
        generation: u32,
        protocol: Protocol,
        result: Result<Mapping, String>,
    },
    Checked {
        generation: u32,
        id: CheckId,
        result: Result<bool, CheckError>,
    },
    WanIp {
        generation: u32,
        result: Result<Ipv4Addr, CheckError>,
    },
    Renewed {
        asked: Mapping,
        result: Result<Mapping, String>,
    },
    Unmapped {
        mapping: Mapping,
        result: Result<(), String>,
    },
}

/// What the `Net` must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// A probe ended.
    ProbeDone(ReachReport),
    /// A kept mapping is gone: the node is no longer reachable through it.
    Lost {
        /// The mapping.
        mapping: Mapping,
        /// Why.
        reason: String,
    },
}

/// The reachability side of a `Net`: the current probe, the kept mappings, the helpers.
#[derive(Debug)]
pub(crate) struct Reachability {
    tx: Sender<Done>,
    rx: Receiver<Done>,
    waker: Arc<Waker>,
    server: Option<CheckServer>,
    probe: Option<Probe>,
    generation: u32,
    delivered: bool,
    leases: Leases,
    upnp: Option<UpnpGateway>,
    natpmp: Option<Ipv4Addr>,
    pcp: Option<SocketAddr>,
    /// Helpers running: mapping requests (a late mapping must be deleted) and deletions.
    maps_in_flight: usize,
    unmaps_in_flight: usize,
}

impl Reachability {
    /// Nothing running yet. `server`: the forwarding check, if configured.
    pub(crate) fn new(waker: Arc<Waker>, server: Option<CheckServer>) -> Reachability {
        let (tx, rx) = channel();
        Reachability {
            tx,
            rx,
            waker,
            server,
            probe: None,
            generation: 0,
            delivered: false,
            leases: Leases::new(),
            upnp: None,
            natpmp: None,
            pcp: None,
            maps_in_flight: 0,
            unmaps_in_flight: 0,
        }
    }

    /// Whether a forwarding check is configured.
    pub(crate) fn has_server(&self) -> bool {
        self.server.is_some()
    }

    /// Starts a probe (a running one is abandoned: its late mappings are deleted).
    pub(crate) fn start_probe(&mut self, now: Instant, config: ProbeConfig) {
        self.generation = self.generation.wrapping_add(1);
        info!(
            lan_ip = %config.lan_ip,
            listen_port = ?config.listen_port,
            upnp = config.upnp,
            natpmp = config.natpmp,
            pcp = config.pcp,
            forwarding_check = ?self.server.as_ref().map(ToString::to_string),
            budget = ?config.timeout,
            "probing reachability"
        );
        if let Some(mut old) = self.probe.take() {
            // Still running: end it now, so that what it made is deleted, not forgotten.
            if old.report().is_none() {
                old.handle_timeout(old.deadline());
            }
            while let Some(action) = old.poll_action() {
                if let Action::Unmap(m) = action {
                    self.spawn_unmap(m);
                }
            }
        }
        let mut probe = Probe::new(now, config);
        // A mapping kept from an earlier probe: the new one decides whether it stays.
        for m in self.leases.take_all() {
            probe.adopt(m);
        }
        self.probe = Some(probe);
        self.delivered = false;
        self.run_actions();
    }

    /// Whether the probe waits for the NAT detection.
    pub(crate) fn wants_nat(&self) -> bool {
        !self.delivered && self.probe.as_ref().is_some_and(|p| p.report().is_none())
    }

    /// The NAT detection ended.
    pub(crate) fn handle_nat(&mut self, now: Instant, result: Result<NatMapping, String>) {
        if let Some(p) = self.probe.as_mut() {
            p.handle_nat(now, result);
        }
    }

    /// When [`Reachability::drive`] has timed work next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let probe = self.probe.as_ref().and_then(Probe::poll_timeout);
        match (probe, self.leases.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The mappings kept now.
    pub(crate) fn mappings(&self) -> Vec<Mapping> {
        self.leases.mappings()
    }

    /// Takes helper results, fires timers, starts helpers; returns what the node must do.
    pub(crate) fn drive(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Ok(done) = self.rx.try_recv() {
            self.handle(now, done, &mut effects);
        }
        if let Some(p) = self.probe.as_mut()
            && p.poll_timeout().is_some_and(|t| t <= now)
        {
            p.handle_timeout(now);
        }
        for asked in self.leases.handle_timeout(now) {
            self.spawn_renew(asked);
        }
        self.run_actions();
        if !self.delivered
            && let Some(report) = self.probe.as_ref().and_then(Probe::report)
        {
            self.delivered = true;
            if let Some(kept) = report.mapping {
                self.leases.add(now, kept);
            }
            effects.push(Effect::ProbeDone(report.clone()));
        }
        effects
    }

    /// Deletes every mapping (kept ones, and late ones still being made), waiting at most
    /// `limit`. For `Net::stop` and `Drop`.
    pub(crate) fn release_all(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        // Unmaps the probe decided on but did not start yet.
        if let Some(p) = self.probe.as_mut() {
            let mut unmaps = Vec::new();
            while let Some(action) = p.poll_action() {
                if let Action::Unmap(m) = action {
                    unmaps.push(m);
                }
            }
            for m in unmaps {
                self.spawn_unmap(m);
            }
        }
        self.probe = None;
        for m in self.leases.take_all() {
            info!(mapping = %m, "deleting the port mapping");
            self.spawn_unmap(m);
        }
        while self.unmaps_in_flight + self.maps_in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!(
                    deletions = self.unmaps_in_flight,
                    mappings_being_made = self.maps_in_flight,
                    "gave up waiting for the router; its leases will expire on their own"
                );
                return;
            }
            match self.rx.recv_timeout(left) {
                Ok(Done::Mapped { result: Ok(m), .. }) => {
                    self.maps_in_flight -= 1;
                    self.spawn_unmap(m);
                }
                Ok(Done::Renewed { asked, .. }) => {
                    // A renewal that raced the stop: delete what it renewed.
                    self.spawn_unmap(asked);
                }
                Ok(done) => {
                    let mut ignored = Vec::new();
                    self.handle(Instant::now(), done, &mut ignored);
                }
                Err(_) => {}
            }
        }
    }

    fn handle(&mut self, now: Instant, done: Done, effects: &mut Vec<Effect>) {
        let current = self.generation;
        let probe = self.probe.as_mut();
        match done {
            Done::Upnp { generation, result } => {
                if let Ok(gw) = &result {
                    self.upnp = Some(gw.clone());
                }
                if let Some(p) = probe.filter(|_| generation == current) {
                    p.handle_upnp(now, result.map(|gw| gw.external_ip));
                }
            }
            Done::Natpmp { generation, result } => {
                if let Ok((gw, _)) = &result {
                    self.natpmp = Some(*gw);
                }
                if let Some(p) = probe.filter(|_| generation == current) {
                    p.handle_natpmp(now, result.map(|(_, ext)| ext));
                }
            }
            Done::Pcp {
                generation,
                server,
                answer,
            } => {
                if server.is_some() {
                    self.pcp = server;
                }
                if let Some(p) = probe.filter(|_| generation == current) {
                    p.handle_pcp(now, answer);
                }
            }
            Done::Mapped {
                generation,
                protocol,
                result,
            } => {
                self.maps_in_flight = self.maps_in_flight.saturating_sub(1);
                match probe.filter(|_| generation == current) {
                    Some(p) => p.handle_mapped(now, protocol, result),
                    None => {
                        if let Ok(m) = result {
                            self.spawn_unmap(m);
                        }
                    }
                }
            }
            Done::Checked {
                generation,
                id,
                result,
            } => {
                if let Some(p) = probe.filter(|_| generation == current) {
                    p.handle_check(now, id, result);
                }
            }
            Done::WanIp { generation, result } => {
                if let Some(p) = probe.filter(|_| generation == current) {
                    p.handle_wan_ip(now, result);
                }
            }
            Done::Renewed { asked, result } => match self.leases.handle_renewed(now, asked, result)
            {
                Some(LeaseEvent::Renewed(m)) => info!(mapping = %m, "port mapping renewed"),
                Some(LeaseEvent::RenewFailed {
                    mapping,
                    reason,
                    retry_in,
                }) => warn!(%mapping, reason, ?retry_in, "renewing the port mapping failed"),
                Some(LeaseEvent::Lost { mapping, reason }) => {
                    warn!(%mapping, reason, "port mapping lost");
                    effects.push(Effect::Lost { mapping, reason });
                }
                None => {
                    // Renewed after it was released: delete it again.
                    self.spawn_unmap(asked);
                }
            },
            Done::Unmapped { mapping, result } => {
                self.unmaps_in_flight = self.unmaps_in_flight.saturating_sub(1);
                match result {
                    Ok(()) => info!(%mapping, "port mapping deleted"),
                    Err(e) => warn!(%mapping, error = %e, "deleting the port mapping failed"),
                }
            }
        }
    }

    fn run_actions(&mut self) {
        let generation = self.generation;
        let mut actions = Vec::new();
        if let Some(p) = self.probe.as_mut() {
            while let Some(a) = p.poll_action() {
                actions.push(a);
            }
        }
        for action in actions {
            debug!(?action, "reachability");
            match action {
                Action::UpnpSearch { bind, timeout } => {
                    self.spawn("reach-upnp", move || Done::Upnp {
                        generation,
                        result: gateway::upnp_discover(bind, timeout),
                    });
                }
                Action::NatpmpAsk { until } => self.spawn("reach-natpmp", move || Done::Natpmp {
                    generation,
                    result: gateway::natpmp_discover(None, until),
                }),
                Action::PcpAnnounce { bind, until } => {
                    self.spawn("reach-pcp", move || {
                        let (server, answer) = gateway::pcp_discover(bind, until);
                        Done::Pcp {
                            generation,
                            server,
                            answer,
                        }
                    });
                }
                Action::Map {
                    protocol,
                    external_port,
                    internal,
                    lease_secs,
                    fixed,
                    until,
                } => {
                    let Some(router) = self.router(protocol) else {
                        let _ = self.tx.send(Done::Mapped {
                            generation,
                            protocol,
                            result: Err(format!("no {protocol} gateway known")),
                        });
                        self.maps_in_flight += 1;
                        continue;
                    };
                    self.maps_in_flight += 1;
                    self.spawn("reach-map", move || Done::Mapped {
                        generation,
                        protocol,
                        result: gateway::map(
                            &router,
                            external_port,
                            internal,
                            lease_secs,
                            fixed,
                            None,
                            until,
                        ),
                    });
                }
                Action::Unmap(m) => self.spawn_unmap(m),
                Action::Check { id, port, timeout } => {
                    let server = self.server.clone();
                    self.spawn("reach-check", move || Done::Checked {
                        generation,
                        id,
                        result: match server {
                            Some(s) => s.check_port(port, timeout).map(|c| c.open),
                            None => Err(CheckError::BadResponse(
                                "no forwarding check configured".to_owned(),
                            )),
                        },
                    });
                }
                Action::WanIp { timeout } => {
                    let server = self.server.clone();
                    self.spawn("reach-wan-ip", move || Done::WanIp {
                        generation,
                        result: match server {
                            Some(s) => s.wan_ip(timeout),
                            None => Err(CheckError::BadResponse(
                                "no forwarding check configured".to_owned(),
                            )),
                        },
                    });
                }
            }
        }
    }

    fn router(&self, protocol: Protocol) -> Option<Router> {
        match protocol {
            Protocol::Upnp => self.upnp.clone().map(Router::Upnp),
            Protocol::Natpmp => self.natpmp.map(Router::Natpmp),
            Protocol::Pcp => self.pcp.map(Router::Pcp),
        }
    }

    fn spawn_renew(&mut self, asked: Mapping) {
        let Some(router) = self.router(asked.protocol) else {
            let _ = self.tx.send(Done::Renewed {
                asked,
                result: Err(format!("no {} gateway known", asked.protocol)),
            });
            return;
        };
        debug!(mapping = %asked, "renewing the port mapping");
        self.spawn("reach-renew", move || Done::Renewed {
            asked,
            result: gateway::map(
                &router,
                asked.external_port,
                asked.internal,
                asked.lease_secs,
                true,
                asked.nonce,
                Instant::now() + UDP_EXCHANGE,
            ),
        });
    }

    fn spawn_unmap(&mut self, mapping: Mapping) {
        let Some(router) = self.router(mapping.protocol) else {
            warn!(%mapping, "cannot delete the port mapping: no gateway known");
            return;
        };
        self.unmaps_in_flight += 1;
        self.spawn("reach-unmap", move || Done::Unmapped {
            mapping,
            result: gateway::unmap(&router, &mapping, Instant::now() + UDP_EXCHANGE),
        });
    }

    /// Runs `work` on a helper thread; its result comes back through the channel and wakes
    /// the loop.
    fn spawn(&self, name: &str, work: impl FnOnce() -> Done + Send + 'static) {
        let tx = self.tx.clone();
        let waker = Arc::clone(&self.waker);
        let spawned = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let done = work();
                if tx.send(done).is_ok() {
                    let _ = waker.wake();
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, name, "cannot start a helper thread");
        }
    }
}
