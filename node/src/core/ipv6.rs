//! Connects over IPv6 (issue 17), happy-eyeballs style: IPv6 first, IPv4 after a head start.
//!
//! Between two IPv6 hosts there is no NAT, only (usually) a stateful firewall in front of
//! each, which lets a packet in when it answers one that went out. So when both v3 UNLs list
//! a global IPv6 address, the connect:
//! 1. dials their IPv6 address **from our listening port** at once ([`Output::PunchDial`],
//!    outbound: we begin the handshake). Without a firewall in front of them this is an
//!    ordinary direct connection. Behind one, the SYN is dropped there, but it opened ours
//!    for exactly that pair of addresses and ports;
//! 2. posts the signed reverse-connect request (`REVERSE3`, with our UNL and its IPv6
//!    address) to their mailbox at once. They dial our IPv6 address from *their* listening
//!    port (`asked.rs`): their SYN opens their firewall and passes ours, which expects it,
//!    and the two SYNs meet as a TCP simultaneous open, or our kernel's retransmitted SYN
//!    completes it. No port prediction and no meeting time: the port is the port.
//!
//! The IPv4 tries (LAN, direct, the punch) wait [`IPV6_HEAD_START`] (RFC 8305's connection
//! attempt delay) and start at once if the IPv6 try fails first; the reverse try and the
//! relay keep their own waits, shifted by the head start. The outcome's method (`ipv6`) and
//! address say which family won.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::output::{Direction, Output};
use super::state::{Attempt, V4Wave};
use super::{Core, millis};
use crate::connect::{Method, Try};
use crate::ids::ConnectId;
use wire::mailbox::{self, Request};
use wire::signal::RequestKind;
use wire::unl::v3::{Scope, UnlV3};

/// How long the IPv6 try runs alone before the IPv4 tries start beside it (RFC 8305 §5
/// recommends 250 ms).
pub const IPV6_HEAD_START: Duration = Duration::from_millis(250);

impl Core {
    /// Our global IPv6 address (the first WAN IPv6 address of our signed UNL), when we
    /// listen on it.
    fn our_ipv6(&self) -> Option<SocketAddr> {
        if self.config.listen_port == 0 {
            return None;
        }
        self.local_unl3.as_ref().and_then(wan_ipv6)
    }

    /// Their IPv6 address to try, from their signed UNL: when both of us have one.
    pub(super) fn their_ipv6(&self, unl: &UnlV3) -> Option<SocketAddr> {
        self.our_ipv6()?;
        wan_ipv6(unl)
    }

    /// Part of the connect plan: when both UNLs have an IPv6 address, adds the IPv6 try and
    /// holds the IPv4 `dials` (and the punch) back for [`IPV6_HEAD_START`]. Returns the
    /// dials to make now and the IPv6 address to try.
    pub(super) fn plan_ipv6(
        &self,
        now: Instant,
        attempt: &mut Attempt,
        dials: Vec<(Method, SocketAddr)>,
    ) -> (Vec<(Method, SocketAddr)>, Option<SocketAddr>) {
        let Some(theirs) = attempt.signed.as_ref().and_then(|u| self.their_ipv6(u)) else {
            return (dials, None);
        };
        attempt.tries.push(Try::dialing(Method::Ipv6, theirs));
        for t in &mut attempt.tries {
            if dials.iter().any(|(_, a)| t.addr == Some(*a)) {
                t.started_ms = None;
            }
        }
        attempt.v4_wave = Some(V4Wave {
            at: now + IPV6_HEAD_START,
            dials: dials.iter().map(|(_, a)| *a).collect(),
            punch: std::mem::take(&mut attempt.punch_now),
        });
        attempt.reverse_at = attempt.reverse_at.map(|t| t + IPV6_HEAD_START);
        attempt.relay_at = attempt.relay_at.map(|t| t + IPV6_HEAD_START);
        (Vec::new(), Some(theirs))
    }

    /// Starts the IPv6 try of `id`: our dial from our listening port, and the signed request
    /// that makes them dial ours.
    pub(super) fn start_ipv6(&mut self, now: Instant, id: ConnectId, theirs: SocketAddr) {
        self.attempt_dials.insert(theirs, id);
        let security = self.dial_security(theirs);
        self.out.push_back(Output::PunchDial {
            addr: theirs,
            from_port: self.config.listen_port,
            at: now,
            timeout: self.config.punch_timeout,
            direction: Direction::Outbound,
            fresh: false,
            security,
        });
        let Some(node) = self.attempts.get(&id).and_then(|a| a.target.node_id) else {
            return;
        };
        if self.mailbox.is_none() {
            tracing::debug!(%id, "IPv6: no dht-msg server to ask them to dial us; our dial only");
            return;
        }
        let body = match self.signed_request(now, id, RequestKind::Reverse) {
            Some(Ok(body)) => body,
            Some(Err(why)) => {
                tracing::debug!(%id, why, "IPv6: no request to dial us; our dial only");
                return;
            }
            None => return,
        };
        let Ok(to) = node.mailbox_id().parse::<mailbox::NodeId>() else {
            return;
        };
        if let Some(a) = self.attempts.get_mut(&id) {
            a.request_posted = true;
        }
        // Its failure is not the IPv6 try's: our dial may still get through.
        self.mailbox_put(now, Request::Put { to, body }.to_string(), None);
    }

    /// Starts the IPv4 tries of `id` held back by the IPv6 try, if they still wait.
    pub(super) fn start_v4_wave(&mut self, now: Instant, id: ConnectId) {
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        let Some(wave) = a.v4_wave.take() else {
            return;
        };
        let ms = millis(now - a.started);
        for t in &mut a.tries {
            if t.addr.is_some_and(|addr| wave.dials.contains(&addr)) {
                t.started_ms = Some(ms);
            }
        }
        tracing::debug!(%id, dials = ?wave.dials, punch = wave.punch, "IPv4 tries start");
        for addr in wave.dials {
            self.attempt_dials.insert(addr, id);
            self.dial(addr);
        }
        if wave.punch {
            self.start_punch(now, id);
        }
    }
}

/// The first WAN IPv6 address of `unl`.
fn wan_ipv6(unl: &UnlV3) -> Option<SocketAddr> {
    unl.body()
        .addrs
        .iter()
        .find(|a| a.scope == Scope::Wan && a.addr.is_ipv6())
        .map(|a| a.addr)
}

#[cfg(test)]
mod tests;
