//! Hole punching in the sans-IO [`Core`]: TCP simultaneous open through both NATs, timed
//! through the rendezvous (the exchange and the arithmetic are described in
//! [`wire::punch`]). Two sides, each in its own module:
//! - `punch/simultaneous.rs`: the **simultaneous node**, registered with the rendezvous from
//!   its listening port, answering `CHALLENGE`s;
//! - `punch/candidate.rs`: the **candidate**, the punch try of a connect by UNL (see
//!   [`crate::connect`]): `CANDIDATE`, then `FIGHT`, then dials at the meeting time.
//!
//! This module holds what both share: the line sessions with the rendezvous
//! ([`Output::SessionOpen`]) and their dispatch by role (the registration, a candidacy, or a
//! port probe: one `SOURCE TCP` from a fresh port when a challenge arrives and our NAT steps
//! its ports), the limits on punch dials, and the punch timers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Core;
use super::output::Output;
use super::state::{RegistrationState, SessionRole};
use crate::ids::{ConnectId, SessionId};
use wire::nat::NatMapping;
use wire::punch::predict_ports;
use wire::rendezvous::{Request, Response};

mod birthday;
mod candidate;
mod simultaneous;

/// Ports of a challenge or a fight dialed at most (the rest are ignored).
const MAX_PUNCH_PORTS: usize = 8;
/// How long a punch dial may take after the meeting time: one SYN retransmission (1 s) and
/// some slack, so a side that arrives late is still met.
const PUNCH_DIAL_TIMEOUT: Duration = Duration::from_millis(2500);

impl Core {
    /// Sets our NAT mapping (normally learned by [`Core::detect_nat`]); used to predict the
    /// ports a punch goes out from.
    pub fn set_nat_mapping(&mut self, mapping: NatMapping) {
        self.nat_mapping = Some(mapping);
    }

    /// Our NAT mapping, once known.
    pub fn nat_mapping(&self) -> Option<NatMapping> {
        self.nat_mapping
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
                let request = self.session_addr_request(self.registration_server());
                self.session_send(session, &request);
            }
            Some(SessionRole::Candidacy(id)) => self.candidacy_open(now, id, session, local),
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
            SessionRole::Registration => {
                // Candidacies sent on it get no FIGHT now.
                self.registration_candidacies.clear();
                let waiting: Vec<ConnectId> = self
                    .attempts
                    .iter()
                    .filter(|(_, a)| {
                        a.punch
                            .as_ref()
                            .is_some_and(|p| p.via_registration && !p.fought)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in waiting {
                    self.punch_failed(now, id, &format!("our registration closed: {reason}"));
                }
                self.registration_lost(now, reason);
            }
            SessionRole::Candidacy(id) => {
                let waiting = self
                    .attempts
                    .get_mut(&id)
                    .and_then(|a| a.punch.as_mut())
                    .is_some_and(|p| {
                        let waiting = p.session == Some(session) && !p.fought;
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
                match Self::remote_reply(response) {
                    Ok((port, _)) => {
                        let ours = predict_ports(self.nat_mapping, port);
                        self.accept_challenge(now, unix_now, client, &ports, ours);
                    }
                    Err(other) => self.challenge_refused(
                        client,
                        ports,
                        &format!("port probe got {other} instead of REMOTE TCP"),
                    ),
                }
            }
        }
    }

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
                Some(p) if !p.fought => format!(
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
