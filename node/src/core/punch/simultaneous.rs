//! The simultaneous node's side of hole punching: its registration with the rendezvous and
//! its answers to challenges.
//!
//! The **registration** is a line session bound to our listening port, so the NAT mapping of
//! that port stays open and the rendezvous tells us its external port (`SOURCE ADDR`, or
//! `SOURCE TCP` to an older server); it is registered with `SIMULTANEOUS READY <external port>
//! <max inbound>`; the same question every `keepalive` keeps it (and the NAT mapping) fresh,
//! measures the round trip the meeting time is based on, and tells our WAN address and the
//! server's clock; it is reconnected with backoff when it drops (failing over to the next server while
//! it has not come up).
//!
//! A **challenge** (`CHALLENGE <candidate ip> <its ports> TCP`) is answered within the rate
//! limit (`max_punch_per_minute`): we predict our own ports (after a one-off port probe when
//! our NAT steps its ports), send `ACCEPT` with the meeting time, and dial every port the
//! candidate predicted from our listening port ([`Output::PunchDial`], reported as inbound)
//! twice: at once (our candidates dial us before they send `CANDIDATE`, so their NAT lets
//! this SYN in: the open completes about two round trips after the connect started), and at
//! the meeting time if that has not connected (PyP2P candidates; routers that reset an early
//! SYN). The first dial that connects cancels the others.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{MAX_PUNCH_PORTS, PUNCH_DIAL_TIMEOUT};
use crate::core::output::{Direction, Event, Output, Security};
use crate::core::state::{Registration, RegistrationState, SessionRole};
use crate::core::{Core, unspecified};
use crate::ids::SessionId;
use wire::nat::NatMapping;
use wire::punch::{meeting_delay, predict_ports};
use wire::rendezvous::{NodeType, NtpTime, Proto, Request, Response};

/// First delay before reconnecting a lost registration; doubles up to
/// [`REGISTRATION_MAX_RETRY`].
const REGISTRATION_FIRST_RETRY: Duration = Duration::from_secs(1);
const REGISTRATION_MAX_RETRY: Duration = Duration::from_secs(30);

impl Core {
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
                server: unspecified(),
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

    /// The external port the rendezvous sees for our listening port (once registered).
    pub fn registration_port(&self) -> Option<u16> {
        self.registration.as_ref().and_then(|r| r.external_port)
    }

    /// The last round trip measured to the rendezvous on our registration.
    pub fn registration_rtt(&self) -> Option<Duration> {
        self.registration.as_ref().and_then(|r| r.rtt)
    }

    pub(in crate::core) fn registration_line(
        &mut self,
        now: Instant,
        unix_now: f64,
        session: SessionId,
        response: Response,
    ) {
        let response = match Self::remote_reply(response) {
            Ok((port, observed)) => {
                self.registration_remote(now, unix_now, session, port, observed);
                return;
            }
            Err(other) => other,
        };
        match response {
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
            Response::PredictionSet => self.registration_candidacy_answer(now, None),
            Response::Error(reason) if reason.starts_with("ACCEPT") => {
                // Our answer to a challenge came too late (the candidate connected some
                // other way and left): that punch is over, the registration is fine.
                tracing::debug!(reason, "the rendezvous refused an ACCEPT");
            }
            Response::Error(reason) if reason.starts_with("CANDIDATE") => {
                // A candidacy we sent on the registration was refused; the registration
                // itself is fine.
                self.registration_candidacy_answer(now, Some(&reason));
            }
            Response::Fight {
                node_ip,
                ports,
                proto,
                ntp_time,
            } => self.registration_fight(now, unix_now, node_ip, ports, proto, ntp_time),
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

    /// Where the server sees our registration come from (`REMOTE TCP`/`REMOTE ADDR`): the
    /// reply to a ping, or the first one (then we register).
    fn registration_remote(
        &mut self,
        now: Instant,
        unix_now: f64,
        session: SessionId,
        port: u16,
        observed: Option<(SocketAddr, NtpTime)>,
    ) {
        let server = self.registration_server();
        let ready = self.simultaneous_ready(port);
        let keepalive = self.config.keepalive;
        let Some(r) = self.registration.as_mut() else {
            return;
        };
        let mut rtt = None;
        if let Some(sent) = r.ping_sent.pop_front() {
            rtt = Some(now.saturating_duration_since(sent));
            r.rtt = rtt;
        }
        let changed = r.external_port != Some(port);
        r.next_ping = Some(now + keepalive);
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
        if let Some((addr, time)) = observed {
            let timing = rtt.map(|rtt| (rtt, unix_now));
            self.handle_observed(now, server, addr, time, timing);
        }
    }

    /// `SIMULTANEOUS READY <port> <max inbound>`.
    fn simultaneous_ready(&self, port: u16) -> Request {
        Request::SimultaneousReady {
            port,
            max_inbound: u32::try_from(self.config.max_inbound).unwrap_or(u32::MAX),
        }
    }

    pub(in crate::core) fn registration_server(&self) -> SocketAddr {
        self.registration
            .as_ref()
            .and_then(|r| self.config.rendezvous.get(r.server).copied())
            .unwrap_or_else(unspecified)
    }

    pub(in crate::core) fn registration_lost(&mut self, now: Instant, reason: &str) {
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

    pub(in crate::core) fn registration_timers(&mut self, now: Instant) {
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
            r.next_ping = Some(now + self.config.keepalive);
            r.ping_sent.push_back(now);
            if r.ping_sent.len() > 3 {
                // Three pings unanswered: the connection is dead without having said so.
                let why = "the rendezvous stopped answering";
                self.session_close(session, why);
                self.registration_lost(now, why);
                return;
            }
            let request = self.session_addr_request(server);
            self.session_send(session, &request);
        }
    }

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
        if ports == [wire::rendezvous::RANDOM_PORT] {
            self.birthday_challenge(now, unix_now, client);
            return;
        }
        ports.truncate(MAX_PUNCH_PORTS);
        ports.retain(|p| *p != 0);
        if ports.is_empty() {
            self.challenge_refused(client, ports, "no port to dial");
            return;
        }
        if let Err(why) = self.punch_budget.take(now, client, None) {
            self.challenge_refused(client, ports, &format!("too many hole punches {why}"));
            return;
        }
        match self.nat_mapping {
            Some(NatMapping::Delta(_)) => {
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
    pub(in crate::core) fn accept_challenge(
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
            self.challenge_dials.insert(addr, (challenge, at));
            // Now: the candidate dialed us already (an eager candidate of ours), so its NAT
            // lets this SYN in and the open completes without waiting. At the meeting (only
            // if that has not connected by then): the classic punch, for PyP2P candidates
            // and for routers that reset an early SYN.
            for at in [now, at] {
                self.out.push_back(Output::PunchDial {
                    addr,
                    from_port: self.config.listen_port,
                    at,
                    timeout: PUNCH_DIAL_TIMEOUT,
                    direction: Direction::Inbound,
                    fresh: false,
                    // The candidate begins the handshake (or, a PyP2P one, its lines).
                    security: Security::Sniff,
                });
            }
        }
        self.out.push_back(Output::Event(Event::Challenge {
            from: client,
            their_ports: their_ports.to_vec(),
            our_ports,
            meeting_in: delay,
            refused: None,
        }));
    }

    pub(in crate::core) fn challenge_refused(
        &mut self,
        client: IpAddr,
        their_ports: Vec<u16>,
        why: &str,
    ) {
        self.out.push_back(Output::Event(Event::Challenge {
            from: client,
            their_ports,
            our_ports: Vec::new(),
            meeting_in: Duration::ZERO,
            refused: Some(why.to_owned()),
        }));
    }

    /// A connection opened: if it is one of a challenge's dials, every other dial of that
    /// challenge stops, and so does the meeting's dial to the same address.
    pub(in crate::core) fn punch_on_open(&mut self, addr: SocketAddr) {
        let Some((challenge, _)) = self.challenge_dials.remove(&addr) else {
            return;
        };
        let mut addrs: Vec<SocketAddr> = self
            .challenge_dials
            .iter()
            .filter(|(_, (c, _))| *c == challenge)
            .map(|(a, _)| *a)
            .collect();
        self.challenge_dials.retain(|_, (c, _)| *c != challenge);
        addrs.push(addr);
        self.out.push_back(Output::CancelDials { addrs });
    }

    /// A dial failed: forget it if it was a challenge's, unless the meeting's dial to the
    /// same address is still to come (the eager one failed).
    pub(in crate::core) fn punch_on_dial_failed(&mut self, now: Instant, addr: SocketAddr) {
        if self
            .challenge_dials
            .get(&addr)
            .is_some_and(|(_, at)| *at <= now)
        {
            self.challenge_dials.remove(&addr);
        }
    }
}
