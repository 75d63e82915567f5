//! The candidate's side of hole punching: the punch try of a connect by UNL.
//!
//! Two ways to be a candidate:
//! - **on our registration**, when we are a registered simultaneous node whose NAT keeps one
//!   mapping per local port (port-preserving, or no NAT): the rendezvous already knows our
//!   listening port's external port, so `CANDIDATE <their ip>:<port> TCP <that port>` goes
//!   out on the registration at once and we dial from the listening port;
//! - **on a candidacy session**, otherwise: a line session bound to a fresh port that we dial
//!   from; it asks the rendezvous where we come from (`SOURCE ADDR`, or `SOURCE TCP` to an
//!   older server), predicts our ports from our NAT's mapping, then sends `CANDIDATE`.
//!
//! Either way we also dial their UNL's address **at once** from that port (the *eager* dial):
//! it opens our NAT's mapping towards them before their `CHALLENGE`-time dial arrives, so
//! their SYN passes our NAT as a reply and the simultaneous open completes in about two round
//! trips between us, without waiting for the meeting. Their NAT usually drops the eager SYN
//! (nothing has gone out towards us yet); that is expected and not a failure. `FIGHT` (their
//! ports and the meeting time) schedules the classic dials at the meeting time, each
//! replacing the eager dial to the same address if it has not connected by then: the second
//! chance for routers that answer an early SYN with a reset, and the whole punch for PyP2P
//! nodes. The try fails when the rendezvous refuses, when no `FIGHT` comes within
//! `punch_timeout`, or when every dial after `FIGHT` failed; then the connect moves on (see
//! `unl_connect.rs`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{MAX_PUNCH_PORTS, PUNCH_DIAL_TIMEOUT};
use crate::connect::Method;
use crate::core::output::{Direction, Output};
use crate::core::state::{PunchTry, RegistrationState, SessionRole};
use crate::core::{Core, millis};
use crate::ids::{ConnectId, SessionId};
use wire::nat::NatMapping;
use wire::punch::{meeting_instant, predict_ports};
use wire::rendezvous::{NodeTarget, NtpTime, Proto, Request, Response};
use wire::unl::{NodeType, Unl};

/// Fresh SYNs after the eager one when our NAT maps ports at random (see `eager_punch`).
const LONG_SHOT_REDIALS: u32 = 3;

impl Core {
    /// Whether a punch towards `target` can start, or why not.
    pub(in crate::core) fn punch_blocker(&self, target: &Unl) -> Option<&'static str> {
        if target.node_type != NodeType::Simultaneous {
            Some("they are not a simultaneous node")
        } else if target.port == 0 || target.wan_ip.is_unspecified() {
            Some("their UNL has no WAN address and port")
        } else if self.config.rendezvous.is_empty() {
            Some("no rendezvous server configured")
        } else {
            None
        }
    }

    /// Our registration's session and external port, when a candidacy can run on it: it is
    /// up, and our NAT keeps one mapping per local port (so the registration's external port
    /// is also the one our dials to the peer go out from).
    fn registration_for_candidacy(&self) -> Option<(SessionId, u16)> {
        let r = self.registration.as_ref()?;
        if r.state != RegistrationState::Up
            || !matches!(self.nat_mapping, Some(NatMapping::Preserving))
        {
            return None;
        }
        Some((r.session?, r.external_port?))
    }

    /// Starts the punch try of connect `id`.
    ///
    /// A punch tried again on a relayed session (see `upgrade.rs`) never runs on our
    /// registration: its port would give the same pair of addresses and ports as the punch
    /// that failed, and the NATs on the path still track that one (a Linux NAT keeps an
    /// unanswered SYN's entry for 2 minutes, with the old sequence numbers, and drops the new
    /// handshake's packets as invalid). A fresh session port is a fresh pair.
    pub(in crate::core) fn start_punch(&mut self, now: Instant, id: ConnectId) {
        let deadline = now + self.config.punch_timeout;
        let retry = self.attempts.get(&id).is_some_and(|a| a.retry > 0);
        let registration = if retry {
            None
        } else {
            self.registration_for_candidacy()
        };
        let server = match registration {
            Some(_) => self.registration_server(),
            None => self.config.rendezvous[self.preferred % self.config.rendezvous.len()],
        };
        let listen_port = self.config.listen_port;
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        let ms = millis(now - a.started);
        if let Some(t) = a.tries.iter_mut().find(|t| t.method == Method::Punch) {
            t.started_ms = Some(ms);
        }
        let their = SocketAddr::new(IpAddr::V4(a.target.wan_ip), a.target.port);
        a.punch = Some(PunchTry {
            server: Some(server),
            deadline: Some(deadline),
            ..PunchTry::default()
        });
        if let Some((session, external)) = registration {
            let ours = predict_ports(self.nat_mapping, external);
            if let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) {
                p.via_registration = true;
                p.local_port = Some(listen_port);
                p.our_ports.clone_from(&ours);
            }
            tracing::debug!(%their, ports = ?ours, "punch: candidacy on our registration");
            self.registration_candidacies.push_back(id);
            self.session_send(
                session,
                &Request::Candidate {
                    node: NodeTarget::Addr(their),
                    proto: Proto::Tcp,
                    ports: ours,
                },
            );
            self.eager_punch(now, id, their, listen_port);
            return;
        }
        let birthday = self.nat_mapping == Some(NatMapping::Random);
        let session = self.new_session(SessionRole::Candidacy(id), server, Some(0));
        if let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) {
            p.session = Some(session);
            p.birthday = birthday;
        }
    }

    /// The candidacy session of `id` connected from `local`: dial them at once from that
    /// port, and ask where we come from.
    pub(in crate::core) fn candidacy_open(
        &mut self,
        now: Instant,
        id: ConnectId,
        session: SessionId,
        local: SocketAddr,
    ) {
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        let their = SocketAddr::new(IpAddr::V4(a.target.wan_ip), a.target.port);
        let Some(p) = a.punch.as_mut() else {
            return;
        };
        p.local_port = Some(local.port());
        p.ping_sent = Some(now);
        let server = p.server;
        self.eager_punch(now, id, their, local.port());
        if let Some(server) = server {
            let request = self.session_addr_request(server);
            self.session_send(session, &request);
        }
    }

    /// Dials `their` from `from_port` now, before `FIGHT` (see the module docs).
    ///
    /// From behind a NAT that maps ports at random, that dial is the whole punch: their dial
    /// to our predicted port cannot reach us, so it works only when their NAT lets our SYN in
    /// unasked (a full cone), and no simultaneous open can be in progress. A lost SYN or
    /// SYN-ACK would cost the kernel's 1 s retransmission, more than the relay's head start:
    /// fresh SYNs follow every two round trips instead ([`LONG_SHOT_REDIALS`] of them).
    fn eager_punch(&mut self, now: Instant, id: ConnectId, their: SocketAddr, from_port: u16) {
        let long_shot = self.nat_mapping == Some(NatMapping::Random);
        let every = (self.rtt_estimate() * 2).max(Duration::from_millis(100));
        let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) else {
            return;
        };
        p.eager = Some(their);
        p.dials.push(their);
        self.attempt_dials.insert(their, id);
        let redials = if long_shot { LONG_SHOT_REDIALS } else { 0 };
        let security = self.dial_security(their);
        for k in 0..=redials {
            self.out.push_back(Output::PunchDial {
                addr: their,
                from_port,
                at: now + every * k,
                timeout: PUNCH_DIAL_TIMEOUT,
                direction: Direction::Outbound,
                fresh: k > 0,
                security,
            });
        }
    }

    pub(in crate::core) fn candidacy_line(
        &mut self,
        now: Instant,
        unix_now: f64,
        id: ConnectId,
        session: SessionId,
        response: Response,
    ) {
        let Some(a) = self.attempts.get_mut(&id) else {
            self.session_close(session, "the connect ended");
            return;
        };
        let target = a.target;
        let Some(p) = a.punch.as_mut() else {
            self.session_close(session, "no punch running");
            return;
        };
        let response = match Self::remote_reply(response) {
            Ok((port, observed)) => {
                let rtt = p.ping_sent.map(|t| now.saturating_duration_since(t));
                p.our_ports = if p.birthday {
                    vec![wire::rendezvous::RANDOM_PORT]
                } else {
                    predict_ports(self.nat_mapping, port)
                };
                let request = Request::Candidate {
                    node: NodeTarget::Addr(SocketAddr::new(IpAddr::V4(target.wan_ip), target.port)),
                    proto: Proto::Tcp,
                    ports: p.our_ports.clone(),
                };
                tracing::debug!(?rtt, observed = port, ports = ?p.our_ports, "punch: candidacy");
                let server = p.server;
                self.session_send(session, &request);
                if let (Some((addr, time)), Some(server)) = (observed, server) {
                    let timing = rtt.map(|rtt| (rtt, unix_now));
                    self.handle_observed(now, server, addr, time, timing);
                }
                return;
            }
            Err(other) => other,
        };
        match response {
            Response::PredictionSet => {}
            Response::Fight {
                node_ip,
                ports,
                proto,
                ntp_time,
            } => {
                self.session_close(session, "FIGHT received");
                if let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) {
                    p.session = None;
                }
                self.fight(now, unix_now, id, node_ip, ports, proto, ntp_time);
            }
            Response::Error(reason) => {
                self.session_close(session, "refused");
                self.punch_failed(now, id, &format!("the rendezvous said: {reason}"));
            }
            other => {
                let why = format!("unexpected {other} from the rendezvous");
                self.session_close(session, &why);
                self.punch_failed(now, id, &why);
            }
        }
    }

    /// `PREDICTION SET` or a `CANDIDATE` error on our registration: it answers the oldest
    /// candidacy sent there.
    pub(in crate::core) fn registration_candidacy_answer(
        &mut self,
        now: Instant,
        refused: Option<&str>,
    ) {
        let Some(id) = self.registration_candidacies.pop_front() else {
            return;
        };
        if let Some(reason) = refused {
            self.punch_failed(now, id, &format!("the rendezvous said: {reason}"));
        }
    }

    /// `FIGHT` on our registration: for the candidacy (sent there) to that node.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::core) fn registration_fight(
        &mut self,
        now: Instant,
        unix_now: f64,
        node_ip: IpAddr,
        ports: Vec<u16>,
        proto: Proto,
        ntp_time: NtpTime,
    ) {
        let found = self.attempts.iter().find_map(|(id, a)| {
            let p = a.punch.as_ref()?;
            (p.via_registration && !p.fought && IpAddr::V4(a.target.wan_ip) == node_ip)
                .then_some(*id)
        });
        if let Some(id) = found {
            self.fight(now, unix_now, id, node_ip, ports, proto, ntp_time);
        } else {
            tracing::debug!(%node_ip, "FIGHT for no candidacy of ours (ended already)");
        }
    }

    /// `FIGHT <node_ip> <ports> TCP <time>` for connect `id`: dial each port at the meeting.
    #[allow(clippy::too_many_arguments)]
    fn fight(
        &mut self,
        now: Instant,
        unix_now: f64,
        id: ConnectId,
        node_ip: IpAddr,
        mut ports: Vec<u16>,
        proto: Proto,
        ntp_time: NtpTime,
    ) {
        let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) else {
            return;
        };
        let Some(from_port) = p.local_port else {
            return;
        };
        if p.birthday {
            match ports.first() {
                Some(port) if proto == Proto::Tcp && *port != 0 => {
                    let node = SocketAddr::new(node_ip, *port);
                    self.birthday_fight(now, unix_now, id, node, ntp_time);
                }
                _ => self.punch_failed(now, id, "the node sent no TCP port to dial"),
            }
            return;
        }
        ports.truncate(MAX_PUNCH_PORTS);
        ports.retain(|p| *p != 0);
        if proto != Proto::Tcp || ports.is_empty() {
            self.punch_failed(now, id, "the node sent no TCP port to dial");
            return;
        }
        let at = meeting_instant(now, unix_now, ntp_time.secs());
        p.fought = true;
        p.meeting = Some(at);
        // Unless the eager dial is through already (waiting for their IAM): dial every port.
        if !p.opened {
            let fight: Vec<SocketAddr> =
                ports.iter().map(|q| SocketAddr::new(node_ip, *q)).collect();
            p.pending = fight.len();
            p.fight.clone_from(&fight);
            for addr in &fight {
                if !p.dials.contains(addr) {
                    p.dials.push(*addr);
                }
            }
            // The meeting plus the dial timeout bounds the try now.
            p.deadline = Some(at + PUNCH_DIAL_TIMEOUT + Duration::from_millis(100));
            for addr in fight {
                self.attempt_dials.insert(addr, id);
                self.out.push_back(Output::PunchDial {
                    addr,
                    from_port,
                    at,
                    timeout: PUNCH_DIAL_TIMEOUT,
                    direction: Direction::Outbound,
                    fresh: false,
                    security: self.dial_security(addr),
                });
            }
        }
        self.relay_after_meeting(now, id, at);
    }

    /// A dial of connect `id` to `addr` opened: if it is a punch dial, the other punch dials
    /// stop, the meeting's dial to the same address included (it would collide with this
    /// connection), and a `FIGHT` that comes later dials nothing.
    pub(in crate::core) fn punch_dial_opened(&mut self, id: ConnectId, addr: SocketAddr) {
        let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) else {
            return;
        };
        if !p.dials.contains(&addr) {
            return;
        }
        p.opened = true;
        let addrs: Vec<SocketAddr> = p.dials.clone();
        for other in &addrs {
            if *other != addr && self.attempt_dials.get(other) == Some(&id) {
                self.attempt_dials.remove(other);
            }
        }
        self.out.push_back(Output::CancelDials { addrs });
    }

    /// The punch try of `id` failed: stop its session and dials, report.
    pub(in crate::core) fn punch_failed(&mut self, now: Instant, id: ConnectId, reason: &str) {
        let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.take()) else {
            return;
        };
        if let Some(session) = p.session {
            self.session_close(session, reason);
        }
        let pending: Vec<SocketAddr> = p
            .dials
            .iter()
            .copied()
            .filter(|a| self.attempt_dials.get(a) == Some(&id))
            .collect();
        for addr in &pending {
            self.attempt_dials.remove(addr);
        }
        if !pending.is_empty() {
            self.out.push_back(Output::CancelDials { addrs: pending });
        }
        self.try_failed(now, id, Method::Punch, None, reason);
    }

    /// A punch dial of `id` to `addr` ended without a connection. Before `FIGHT` (or before
    /// the meeting, when the failed dial was the eager one) the try waits for the meeting's
    /// dials; after it, the try fails with the last one. Returns whether the dial to `addr`
    /// is over (no dial to it is scheduled any more).
    pub(in crate::core) fn punch_dial_failed(
        &mut self,
        now: Instant,
        id: ConnectId,
        addr: SocketAddr,
        reason: &str,
    ) -> bool {
        let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) else {
            return true;
        };
        let before_meeting = p.meeting.is_none_or(|at| now < at);
        let in_fight = p.fight.contains(&addr);
        let eager = p.eager == Some(addr);
        // A birthday punch's burst goes to the eager dial's address too: while both run, a
        // failure there is counted as the eager dial's (its fresh SYNs fail on their own,
        // e.g. when a burst socket took the 4-tuple), the burst's own comes after.
        if eager && (before_meeting || !in_fight || p.birthday) {
            tracing::debug!(%addr, reason, "punch: the eager dial failed; the meeting decides");
            p.eager = None;
            if !(p.fought && p.pending == 0) {
                // A meeting dial to this address may still come: keep it bound to `id`.
                return !in_fight;
            }
        } else {
            p.pending = p.pending.saturating_sub(1);
            if eager {
                // The meeting's dial replaced the eager one.
                p.eager = None;
            }
        }
        if p.fought && p.pending == 0 && p.eager.is_none() {
            let ports: Vec<String> = p.dials.iter().map(ToString::to_string).collect();
            let why = format!(
                "no punched connection to {} (our predicted ports {:?}): {reason}",
                ports.join(", "),
                p.our_ports
            );
            self.punch_failed(now, id, &why);
        }
        true
    }
}
