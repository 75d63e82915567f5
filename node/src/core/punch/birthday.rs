//! The birthday punch: a hard side (a NAT that maps every connection to a random port) and
//! an easy one (a NAT that keeps one mapping per local port) meet by guessing.
//!
//! The hard side is the candidate: its `CANDIDATE <ip>:<port> TCP 0` (port
//! [`RANDOM_PORT`]: "my ports are random") makes the easy node answer with its external
//! port and the meeting time as usual. At the meeting the candidate opens N sockets from
//! fresh ports towards that port ([`Output::BirthdayDial`]): each leaves a mapping on a
//! random port of its NAT. A little later the node sends M SYNs from its listening port to M
//! random ports of the candidate's address ([`Output::BirthdaySpray`]). A guess that hits
//! one of the N mappings passes the candidate's NAT as a reply and the simultaneous open
//! completes on that pair: with ports drawn from about 64 k, N = M = 256 meet with
//! probability 1 - e^(-NM/64512) ≈ 64 %, 512 × 512 ≈ 98 %.
//!
//! Several pairs may complete. The candidate decides: its driver keeps the first socket that
//! connects and closes the others; the node keeps whatever connects and follows the
//! candidate's choice (it moves its session only to the path the candidate sends `SWITCH`
//! on, see `switch.rs`), so both ends keep the same one. The birthday punch runs beside the
//! relay, which starts at once: it never makes a connect slower, and a connection that
//! starts relayed moves to the punched path when it opens.
//!
//! The budget is `max_punch_sockets` sockets and SYNs per attempt on each side (N = M), sent
//! paced over [`BURST`]; a node answers such challenges within its punch rate limit and
//! runs at most [`MAX_SPRAYS`] at once. A hard side punching a hard side stays relayed (the
//! chance with sane budgets is negligible: both sides' ports would have to be guessed).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::PUNCH_DIAL_TIMEOUT;
use crate::core::Core;
use crate::core::output::{Direction, Event, Output};
use crate::ids::ConnectId;
use wire::nat::NatMapping;
use wire::punch::{meeting_delay, meeting_instant, predict_ports};
use wire::rendezvous::{NtpTime, Proto, Request};

/// The sockets of one side's birthday burst are opened over this long.
pub(in crate::core) const BURST: Duration = Duration::from_millis(32);
/// The node sends its guesses this long after the meeting: the candidate's mappings are
/// all open by then (its burst, and some slack).
const SPRAY_AFTER: Duration = Duration::from_millis(42);
/// Birthday sprays a node runs at once at most (each holds up to `max_punch_sockets`
/// sockets for a few seconds).
pub(in crate::core) const MAX_SPRAYS: usize = 2;

impl Core {
    /// `FIGHT` for a birthday punch of connect `id`: at the meeting, open the burst towards
    /// the node's port.
    pub(in crate::core) fn birthday_fight(
        &mut self,
        now: Instant,
        unix_now: f64,
        id: ConnectId,
        node: SocketAddr,
        ntp_time: NtpTime,
    ) {
        let count = self.config.max_punch_sockets;
        let Some(p) = self.attempts.get_mut(&id).and_then(|a| a.punch.as_mut()) else {
            return;
        };
        let at = meeting_instant(now, unix_now, ntp_time.secs());
        p.fought = true;
        p.meeting = Some(at);
        if p.opened {
            return;
        }
        p.fight = vec![node];
        p.pending = 1;
        if !p.dials.contains(&node) {
            p.dials.push(node);
        }
        p.deadline = Some(at + SPRAY_AFTER + PUNCH_DIAL_TIMEOUT + Duration::from_millis(100));
        self.attempt_dials.insert(node, id);
        tracing::debug!(%node, count, "birthday punch: burst at the meeting");
        let security = self.dial_security(node);
        self.out.push_back(Output::BirthdayDial {
            addr: node,
            count,
            at,
            pace: BURST,
            timeout: SPRAY_AFTER + PUNCH_DIAL_TIMEOUT,
            security,
        });
    }

    /// `CHALLENGE <ip> 0 TCP`: a candidate behind a random-mapping NAT asks for a birthday
    /// punch. Answered like any challenge (our port, the meeting time), then we guess.
    pub(in crate::core) fn birthday_challenge(
        &mut self,
        now: Instant,
        unix_now: f64,
        client: IpAddr,
    ) {
        let refuse = |c: &mut Core, why: &str| {
            c.out.push_back(Output::Event(Event::Challenge {
                from: client,
                their_ports: vec![wire::rendezvous::RANDOM_PORT],
                our_ports: Vec::new(),
                meeting_in: Duration::ZERO,
                refused: Some(why.to_owned()),
            }));
        };
        if !matches!(self.nat_mapping, Some(NatMapping::Preserving) | None) {
            refuse(
                self,
                "a birthday punch needs a NAT here that keeps one mapping per port",
            );
            return;
        }
        self.sprays.retain(|_, until| *until > now);
        if self.sprays.len() >= MAX_SPRAYS {
            refuse(self, "too many birthday punches running");
            return;
        }
        if let Err(why) = self.punch_budget.take(now, client, None) {
            refuse(self, &format!("too many hole punches {why}"));
            return;
        }
        let Some(session) = self.registration.as_ref().and_then(|r| r.session) else {
            refuse(self, "not registered any more");
            return;
        };
        let external = self
            .registration
            .as_ref()
            .and_then(|r| r.external_port)
            .unwrap_or(self.config.listen_port);
        let our_ports = predict_ports(self.nat_mapping, external);
        let delay = meeting_delay(self.registration_rtt());
        let Some(time) = NtpTime::new(unix_now + delay.as_secs_f64()) else {
            refuse(self, "no valid clock");
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
        let at = now + delay + SPRAY_AFTER;
        let timeout = PUNCH_DIAL_TIMEOUT;
        self.sprays.insert(client, at + timeout);
        self.out.push_back(Output::BirthdaySpray {
            ip: client,
            from_port: self.config.listen_port,
            count: self.config.max_punch_sockets,
            at,
            pace: BURST,
            timeout,
            direction: Direction::Inbound,
        });
        self.out.push_back(Output::Event(Event::Challenge {
            from: client,
            their_ports: vec![wire::rendezvous::RANDOM_PORT],
            our_ports,
            meeting_in: delay,
            refused: None,
        }));
    }

    /// A session moved to a direct path from `ip`: a birthday spray towards it is over.
    pub(in crate::core) fn spray_done(&mut self, ip: IpAddr) {
        if self.sprays.remove(&ip).is_some() {
            self.out.push_back(Output::CancelSpray { ip });
        }
    }
}
