//! Hole punching in the sans-IO [`Core`]: the simultaneous node's registration with the
//! rendezvous and its answers to challenges, and the candidate's side of a punch (part of a
//! connect by UNL, see [`crate::connect`]). The exchange and the arithmetic are described in
//! [`crate::proto::punch`].
//!
//! Everything here talks to the rendezvous through line sessions ([`Output::SessionOpen`]):
//! - the **registration** (simultaneous nodes): bound to our listening port, so the NAT mapping
//!   of that port stays open and the rendezvous tells us its external port (`SOURCE TCP`);
//!   registered with `SIMULTANEOUS READY <external port> <max inbound>`; a `SOURCE TCP` every
//!   [`REGISTRATION_PING`] keeps it fresh and measures the round trip the meeting time is
//!   based on; reconnected with backoff when it drops;
//! - a **candidacy** per punch we start: bound to a fresh port we later dial from;
//!   `SOURCE TCP` (our external port), `CANDIDATE <ip>:<port> TCP <predicted ports>`, then
//!   wait for `FIGHT`;
//! - a **probe** when a challenge arrives and our NAT steps its ports (delta): one
//!   `SOURCE TCP` from a fresh port tells where the NAT's counter is.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Core, Direction, Event, Output, SessionId};
use crate::connect::{ConnectId, Method};
use crate::proto::punch::{meeting_delay, meeting_instant, predict_ports};
use crate::proto::rendezvous::{NodeTarget, NodeType, NtpTime, Proto, Request, Response};

/// How often a registered simultaneous node sends `SOURCE TCP` on its registration: keeps the
/// server's entry (and the NAT mapping) fresh and the round trip measured.
pub(super) const REGISTRATION_PING: Duration = Duration::from_secs(30);
/// First delay before reconnecting a lost registration; doubles up to
/// [`REGISTRATION_MAX_RETRY`].
const REGISTRATION_FIRST_RETRY: Duration = Duration::from_secs(1);
const REGISTRATION_MAX_RETRY: Duration = Duration::from_secs(30);
/// Ports of a challenge or a fight dialed at most (the rest are ignored).
pub(super) const MAX_PUNCH_PORTS: usize = 8;
/// How long a punch dial may take after the meeting time: one SYN retransmission (1 s) and
/// some slack, so a side that arrives late is still met.
pub(super) const PUNCH_DIAL_TIMEOUT: Duration = Duration::from_millis(2500);

/// What a session is for.
#[derive(Debug, Clone)]
pub(super) enum SessionRole {
    /// Our registration as a simultaneous node.
    Registration,
    /// Our candidacy for connect `id`.
    Candidacy(ConnectId),
    /// A port probe before answering a challenge from `client` (who predicted `ports`).
    Probe { client: IpAddr, ports: Vec<u16> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegistrationState {
    /// Not connected; reconnect at the given time.
    Down(Instant),
    /// Connecting, or waiting for the first `REMOTE TCP`.
    Opening,
    /// `SIMULTANEOUS READY` sent.
    Up,
}

/// The persistent registration of a simultaneous node.
#[derive(Debug)]
pub(super) struct Registration {
    /// Index of the rendezvous server in use.
    server: usize,
    session: Option<SessionId>,
    state: RegistrationState,
    retry: Duration,
    /// The external port of our listening port, as the server sees it.
    external_port: Option<u16>,
    /// The last measured round trip.
    rtt: Option<Duration>,
    /// When the unanswered `SOURCE TCP` was sent.
    ping_sent: VecDeque<Instant>,
    next_ping: Option<Instant>,
}

/// The punch try of one connect (candidate side).
#[derive(Debug, Default)]
pub(super) struct PunchTry {
    /// The candidacy session while it is open.
    pub(super) session: Option<SessionId>,
    /// The local port we dial from (bound by the session).
    local_port: Option<u16>,
    /// When `SOURCE TCP` was sent on the candidacy.
    ping_sent: Option<Instant>,
    /// The ports we predicted for ourselves.
    our_ports: Vec<u16>,
    /// The addresses dialed after `FIGHT`.
    pub(super) dials: Vec<SocketAddr>,
    /// Dials not yet failed.
    pub(super) pending: usize,
    /// The try fails at this time unless a connection opened.
    pub(super) deadline: Option<Instant>,
}

impl Core {
    /// Sets our NAT mapping (normally learned by [`Core::detect_nat`]); used to predict the
    /// ports a punch goes out from.
    pub fn set_nat_mapping(&mut self, mapping: crate::proto::nat::NatMapping) {
        self.nat_mapping = Some(mapping);
    }

    /// Our NAT mapping, once known.
    pub fn nat_mapping(&self) -> Option<crate::proto::nat::NatMapping> {
        self.nat_mapping
    }

    /// Makes this node a simultaneous node: it keeps a registration with the rendezvous
    /// (from its listening port) and answers hole-punch challenges. Needs a listening port and
    /// a rendezvous server; otherwise a [`Event::Registration`] says why not.
    pub fn enable_simultaneous(&mut self, now: Instant) {
        self.config.node_type = NodeType::Simultaneous;
        let why = if self.config.listen_port == 0 {
            Some("this node does not listen for connections")
        } else if self.config.rendezvous.is_empty() {
            Some("no rendezvous server configured")
        } else {
            None
        };
        if let Some(why) = why {
            self.out.push_back(Output::Event(Event::Registration {
                server: super::unspecified(),
                external_port: None,
                rtt: None,
                reason: Some(why.to_owned()),
            }));
            return;
        }
        if self.registration.is_some() {
            return;
        }
        self.registration = Some(Registration {
            server: self.preferred % self.config.rendezvous.len(),
            session: None,
            state: RegistrationState::Down(now),
            retry: REGISTRATION_FIRST_RETRY,
            external_port: None,
            rtt: None,
            ping_sent: VecDeque::new(),
            next_ping: None,
        });
        self.registration_timers(now);
    }

    /// Whether our simultaneous registration is up (challenges reach us).
    pub fn registered(&self) -> bool {
        self.registration
            .as_ref()
            .is_some_and(|r| r.state == RegistrationState::Up)
    }

    /// The last round trip measured to the rendezvous on our registration.
    pub fn registration_rtt(&self) -> Option<Duration> {
        self.registration.as_ref().and_then(|r| r.rtt)
    }

    fn new_session(
        &mut self,
        role: SessionRole,
        server: SocketAddr,
        bind_port: Option<u16>,
    ) -> SessionId {
        let session = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(session, role);
        self.out.push_back(Output::SessionOpen {
            session,
            server,
            bind_port,
        });
        session
    }

    fn session_send(&mut self, session: SessionId, request: &Request) {
        self.out.push_back(Output::SessionSend {
            session,
            line: request.to_string(),
        });
    }

    pub(super) fn session_close(&mut self, session: SessionId, reason: &str) {
        if self.sessions.remove(&session).is_some() {
            self.out.push_back(Output::SessionClose {
                session,
                reason: reason.to_owned(),
            });
        }
    }

    /// A session connected from `local`.
    pub fn handle_session_open(&mut self, now: Instant, session: SessionId, local: SocketAddr) {
        match self.sessions.get(&session).cloned() {
            Some(SessionRole::Registration) => {
                if let Some(r) = self.registration.as_mut() {
                    r.ping_sent.clear();
                    r.ping_sent.push_back(now);
                }
                self.session_send(session, &Request::SourceTcp { text: None });
            }
            Some(SessionRole::Candidacy(id)) => {
                if let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) {
                    p.local_port = Some(local.port());
                    p.ping_sent = Some(now);
                }
                self.session_send(session, &Request::SourceTcp { text: None });
            }
            Some(SessionRole::Probe { .. }) => {
                self.session_send(session, &Request::SourceTcp { text: None });
            }
            None => {}
        }
    }

    /// A session failed to open or closed.
    pub fn handle_session_closed(&mut self, now: Instant, session: SessionId, reason: &str) {
        if let Some(role) = self.sessions.remove(&session) {
            self.session_gone(now, session, role, reason);
        }
    }

    /// A session ended (already removed from the table).
    fn session_gone(&mut self, now: Instant, session: SessionId, role: SessionRole, reason: &str) {
        match role {
            SessionRole::Registration => self.registration_lost(now, reason),
            SessionRole::Candidacy(id) => {
                let waiting = self
                    .attempts
                    .get_mut(&id)
                    .and_then(|a| a.punch.as_mut())
                    .is_some_and(|p| {
                        let waiting = p.session == Some(session) && p.dials.is_empty();
                        p.session = None;
                        waiting
                    });
                if waiting {
                    self.punch_failed(
                        now,
                        id,
                        &format!("the rendezvous connection closed before FIGHT: {reason}"),
                    );
                }
            }
            SessionRole::Probe { client, ports } => {
                self.challenge_refused(client, ports, &format!("port probe failed: {reason}"));
            }
        }
    }

    /// A line from the rendezvous on `session`. `unix_now` is the current time on the shared
    /// clock (system time corrected by NTP), in seconds since the Unix epoch.
    pub fn handle_session_line(
        &mut self,
        now: Instant,
        unix_now: f64,
        session: SessionId,
        line: &str,
    ) {
        let Some(role) = self.sessions.get(&session).cloned() else {
            return;
        };
        let response = match line.parse::<Response>() {
            Ok(r) => r,
            Err(e) => {
                let why = format!("bad line from the rendezvous {line:?}: {e}");
                self.session_close(session, &why);
                self.session_gone(now, session, role, &why);
                return;
            }
        };
        match role {
            SessionRole::Registration => {
                self.registration_line(now, unix_now, session, response);
            }
            SessionRole::Candidacy(id) => self.candidacy_line(now, unix_now, id, session, response),
            SessionRole::Probe { client, ports } => {
                self.session_close(session, "probe done");
                match response {
                    Response::RemoteTcp { port } => {
                        let ours = predict_ports(self.nat_mapping, port);
                        self.accept_challenge(now, unix_now, client, &ports, ours);
                    }
                    other => self.challenge_refused(
                        client,
                        ports,
                        &format!("port probe got {other} instead of REMOTE TCP"),
                    ),
                }
            }
        }
    }

    // ---- the registration (simultaneous node) ----

    fn registration_line(
        &mut self,
        now: Instant,
        unix_now: f64,
        session: SessionId,
        response: Response,
    ) {
        let server = self.registration_server();
        match response {
            Response::RemoteTcp { port } => {
                let ready = self.simultaneous_ready(port);
                let Some(r) = self.registration.as_mut() else {
                    return;
                };
                if let Some(sent) = r.ping_sent.pop_front() {
                    r.rtt = Some(now.saturating_duration_since(sent));
                }
                let changed = r.external_port != Some(port);
                r.next_ping = Some(now + REGISTRATION_PING);
                if changed || r.state != RegistrationState::Up {
                    r.external_port = Some(port);
                    r.state = RegistrationState::Up;
                    r.retry = REGISTRATION_FIRST_RETRY;
                    let rtt = r.rtt;
                    self.config.public_port = Some(port);
                    self.session_send(session, &ready);
                    self.out.push_back(Output::Event(Event::Registration {
                        server,
                        external_port: Some(port),
                        rtt,
                        reason: None,
                    }));
                }
            }
            Response::Reconnect => {
                // The server thinks our entry is stale: register again on this connection.
                let port = self.registration.as_ref().and_then(|r| r.external_port);
                if let Some(port) = port {
                    self.session_send(session, &self.simultaneous_ready(port));
                }
            }
            Response::Challenge {
                client_ip,
                ports,
                proto,
            } => self.handle_challenge(now, unix_now, client_ip, ports, proto),
            Response::Error(reason) => {
                let why = format!("the rendezvous said: {reason}");
                self.session_close(session, &why);
                self.registration_lost(now, &why);
            }
            other => {
                let why = format!("unexpected {other} on the registration");
                self.session_close(session, &why);
                self.registration_lost(now, &why);
            }
        }
    }

    /// `SIMULTANEOUS READY <port> <max inbound>`.
    fn simultaneous_ready(&self, port: u16) -> Request {
        Request::SimultaneousReady {
            port,
            max_inbound: u32::try_from(self.config.max_inbound).unwrap_or(u32::MAX),
        }
    }

    fn registration_server(&self) -> SocketAddr {
        self.registration
            .as_ref()
            .and_then(|r| self.config.rendezvous.get(r.server).copied())
            .unwrap_or_else(super::unspecified)
    }

    fn registration_lost(&mut self, now: Instant, reason: &str) {
        let server = self.registration_server();
        let n = self.config.rendezvous.len().max(1);
        let Some(r) = self.registration.as_mut() else {
            return;
        };
        let was_up = r.state == RegistrationState::Up;
        r.session = None;
        r.state = RegistrationState::Down(now + r.retry);
        r.retry = if was_up {
            REGISTRATION_FIRST_RETRY
        } else {
            (r.retry * 2).min(REGISTRATION_MAX_RETRY)
        };
        r.next_ping = None;
        r.ping_sent.clear();
        if !was_up {
            // Fail over to the next server.
            r.server = (r.server + 1) % n;
        }
        self.out.push_back(Output::Event(Event::Registration {
            server,
            external_port: None,
            rtt: None,
            reason: Some(reason.to_owned()),
        }));
    }

    fn registration_timers(&mut self, now: Instant) {
        let server = self.registration_server();
        let listen_port = self.config.listen_port;
        let Some(r) = self.registration.as_mut() else {
            return;
        };
        if let RegistrationState::Down(at) = r.state
            && at <= now
        {
            r.state = RegistrationState::Opening;
            let session = self.new_session(SessionRole::Registration, server, Some(listen_port));
            if let Some(r) = self.registration.as_mut() {
                r.session = Some(session);
            }
            return;
        }
        if r.next_ping.is_some_and(|t| t <= now)
            && let Some(session) = r.session
        {
            r.next_ping = Some(now + REGISTRATION_PING);
            r.ping_sent.push_back(now);
            if r.ping_sent.len() > 3 {
                // Three pings unanswered: the connection is dead without having said so.
                let why = "the rendezvous stopped answering";
                self.session_close(session, why);
                self.registration_lost(now, why);
                return;
            }
            self.session_send(session, &Request::SourceTcp { text: None });
        }
    }

    // ---- challenges (simultaneous node) ----

    fn handle_challenge(
        &mut self,
        now: Instant,
        unix_now: f64,
        client: IpAddr,
        mut ports: Vec<u16>,
        proto: Proto,
    ) {
        if proto != Proto::Tcp {
            self.challenge_refused(client, ports, "only TCP hole punching is supported");
            return;
        }
        ports.truncate(MAX_PUNCH_PORTS);
        ports.retain(|p| *p != 0);
        if ports.is_empty() {
            self.challenge_refused(client, ports, "no port to dial");
            return;
        }
        while self
            .punch_window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_mins(1))
        {
            self.punch_window.pop_front();
        }
        if self.punch_window.len() >= self.config.max_punch_per_minute {
            let why = format!(
                "too many hole punches this minute (limit {})",
                self.config.max_punch_per_minute
            );
            self.challenge_refused(client, ports, &why);
            return;
        }
        self.punch_window.push_back(now);
        match self.nat_mapping {
            Some(crate::proto::nat::NatMapping::Delta(_)) => {
                // Where is the NAT's port counter now? One probe from a fresh port.
                let server = self.registration_server();
                self.new_session(SessionRole::Probe { client, ports }, server, None);
            }
            mapping => {
                let external = self
                    .registration
                    .as_ref()
                    .and_then(|r| r.external_port)
                    .unwrap_or(self.config.listen_port);
                let ours = predict_ports(mapping, external);
                self.accept_challenge(now, unix_now, client, &ports, ours);
            }
        }
    }

    /// Answers a challenge with `ACCEPT` and schedules our dials at the meeting time.
    fn accept_challenge(
        &mut self,
        now: Instant,
        unix_now: f64,
        client: IpAddr,
        their_ports: &[u16],
        our_ports: Vec<u16>,
    ) {
        let Some(session) = self.registration.as_ref().and_then(|r| r.session) else {
            self.challenge_refused(client, their_ports.to_vec(), "not registered any more");
            return;
        };
        let delay = meeting_delay(self.registration_rtt());
        let Some(time) = NtpTime::new(unix_now + delay.as_secs_f64()) else {
            self.challenge_refused(client, their_ports.to_vec(), "no valid clock");
            return;
        };
        self.session_send(
            session,
            &Request::Accept {
                client_ip: client,
                ports: our_ports.clone(),
                proto: Proto::Tcp,
                ntp_time: time,
            },
        );
        let challenge = self.next_challenge;
        self.next_challenge += 1;
        let at = now + delay;
        for port in their_ports {
            let addr = SocketAddr::new(client, *port);
            self.challenge_dials.insert(addr, challenge);
            self.out.push_back(Output::PunchDial {
                addr,
                from_port: self.config.listen_port,
                at,
                timeout: PUNCH_DIAL_TIMEOUT,
                direction: Direction::Inbound,
            });
        }
        self.out.push_back(Output::Event(Event::Challenge {
            from: client,
            their_ports: their_ports.to_vec(),
            our_ports,
            meeting_in: delay,
            refused: None,
        }));
    }

    fn challenge_refused(&mut self, client: IpAddr, their_ports: Vec<u16>, why: &str) {
        self.out.push_back(Output::Event(Event::Challenge {
            from: client,
            their_ports,
            our_ports: Vec::new(),
            meeting_in: Duration::ZERO,
            refused: Some(why.to_owned()),
        }));
    }

    /// A connection opened: if it is one of a challenge's dials, the others stop.
    pub(super) fn punch_on_open(&mut self, addr: SocketAddr) {
        let Some(challenge) = self.challenge_dials.remove(&addr) else {
            return;
        };
        let others: Vec<SocketAddr> = self
            .challenge_dials
            .iter()
            .filter(|(_, c)| **c == challenge)
            .map(|(a, _)| *a)
            .collect();
        self.challenge_dials.retain(|_, c| *c != challenge);
        if !others.is_empty() {
            self.out.push_back(Output::CancelDials { addrs: others });
        }
    }

    /// A dial failed: forget it if it was a challenge's.
    pub(super) fn punch_on_dial_failed(&mut self, addr: SocketAddr) {
        self.challenge_dials.remove(&addr);
    }

    // ---- the candidate's side ----

    /// Whether a punch towards `target` can start, or why not.
    pub(super) fn punch_blocker(&self, target: &crate::unl::Unl) -> Option<&'static str> {
        if target.node_type != crate::unl::NodeType::Simultaneous {
            Some("they are not a simultaneous node")
        } else if target.port == 0 || target.wan_ip.is_unspecified() {
            Some("their UNL has no WAN address and port")
        } else if self.config.rendezvous.is_empty() {
            Some("no rendezvous server configured")
        } else {
            None
        }
    }

    /// Starts the punch try of connect `id`: a candidacy with the rendezvous.
    pub(super) fn start_punch(&mut self, now: Instant, id: ConnectId) {
        let server = self.config.rendezvous[self.preferred % self.config.rendezvous.len()];
        let deadline = now + self.config.punch_timeout;
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        let ms = super::unl_connect::millis(now - a.started);
        if let Some(t) = a.tries.iter_mut().find(|t| t.method == Method::Punch) {
            t.started_ms = Some(ms);
        }
        a.punch = Some(PunchTry {
            deadline: Some(deadline),
            ..PunchTry::default()
        });
        let session = self.new_session(SessionRole::Candidacy(id), server, Some(0));
        if let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) {
            p.session = Some(session);
        }
    }

    fn candidacy_line(
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
        match response {
            Response::RemoteTcp { port } => {
                let rtt = p.ping_sent.map(|t| now.saturating_duration_since(t));
                p.our_ports = predict_ports(self.nat_mapping, port);
                let request = Request::Candidate {
                    node: NodeTarget::Addr(SocketAddr::new(IpAddr::V4(target.wan_ip), target.port)),
                    proto: Proto::Tcp,
                    ports: p.our_ports.clone(),
                };
                tracing::debug!(?rtt, observed = port, ports = ?p.our_ports, "punch: candidacy");
                self.session_send(session, &request);
            }
            Response::PredictionSet => {}
            Response::Fight {
                node_ip,
                mut ports,
                proto,
                ntp_time,
            } => {
                self.session_close(session, "FIGHT received");
                let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) else {
                    return;
                };
                p.session = None;
                let Some(from_port) = p.local_port else {
                    return;
                };
                ports.truncate(MAX_PUNCH_PORTS);
                ports.retain(|p| *p != 0);
                if proto != Proto::Tcp || ports.is_empty() {
                    self.punch_failed(now, id, "the node sent no TCP port to dial");
                    return;
                }
                let at = meeting_instant(now, unix_now, ntp_time.secs());
                p.dials = ports.iter().map(|q| SocketAddr::new(node_ip, *q)).collect();
                p.pending = p.dials.len();
                // The meeting plus the dial timeout bounds the try now.
                p.deadline = Some(at + PUNCH_DIAL_TIMEOUT + Duration::from_millis(100));
                let dials = p.dials.clone();
                for addr in dials {
                    self.attempt_dials.insert(addr, id);
                    self.out.push_back(Output::PunchDial {
                        addr,
                        from_port,
                        at,
                        timeout: PUNCH_DIAL_TIMEOUT,
                        direction: Direction::Outbound,
                    });
                }
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

    /// The punch try of `id` failed: stop its session and dials, report.
    pub(super) fn punch_failed(&mut self, now: Instant, id: ConnectId, reason: &str) {
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

    /// One punch dial of `id` ended without a connection: the try fails with the last one.
    pub(super) fn punch_dial_failed(&mut self, now: Instant, id: ConnectId, reason: &str) {
        let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) else {
            return;
        };
        p.pending = p.pending.saturating_sub(1);
        if p.pending == 0 {
            let ports: Vec<String> = p.dials.iter().map(ToString::to_string).collect();
            let why = format!(
                "no punched connection to {} (our predicted ports {:?}): {reason}",
                ports.join(", "),
                p.our_ports
            );
            self.punch_failed(now, id, &why);
        }
    }

    // ---- timers ----

    /// The next timer of the registration and of candidates' punches.
    pub(super) fn punch_next_timer(&self) -> Option<Instant> {
        let registration = self.registration.iter().flat_map(|r| {
            let down = match r.state {
                RegistrationState::Down(at) => Some(at),
                _ => None,
            };
            [down, r.next_ping]
        });
        let punches = self
            .attempts
            .values()
            .filter_map(|a| a.punch.as_ref().and_then(|p| p.deadline));
        registration.flatten().chain(punches).min()
    }

    pub(super) fn punch_handle_timeout(&mut self, now: Instant) {
        self.registration_timers(now);
        let expired: Vec<ConnectId> = self
            .attempts
            .iter()
            .filter(|(_, a)| {
                a.punch
                    .as_ref()
                    .is_some_and(|p| p.deadline.is_some_and(|d| d <= now))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let why = match self.attempts.get(&id).and_then(|a| a.punch.as_ref()) {
                Some(p) if p.dials.is_empty() => format!(
                    "no FIGHT from the rendezvous within {:?} (is the node registered there?)",
                    self.config.punch_timeout
                ),
                _ => "no punched connection before the meeting's deadline".to_owned(),
            };
            self.punch_failed(now, id, &why);
        }
    }
}

#[cfg(test)]
mod tests;
