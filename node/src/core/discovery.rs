//! What the node finds out about itself from the rendezvous it already talks to, so that it
//! works with no flags beyond the server addresses: its **WAN address** (`SOURCE ADDR` →
//! `REMOTE ADDR <ip> <port> <time>`), the **clock offset** that times a hole punch (the same
//! reply carries the server's clock), its **NAT mapping** (the NAT detection) and, from those,
//! its **role** when the configuration says `auto`.
//!
//! The role, as PyP2P's `determine_node()` chose it, but from facts this node established:
//! - a port proven reachable from outside (UPnP/NAT-PMP/forwarding check, decided by the
//!   driver's reachability probe) → passive (set through [`Core::set_reachability`]);
//! - no NAT at all (the server sees the address we sent from) → passive: peers dial us (a
//!   firewall that drops them is not detected without a forwarding check; their connect
//!   then falls back to the relay);
//! - a NAT whose mapping is predictable (port-preserving or stepping) → simultaneous: a
//!   registration with the rendezvous from the listening port, so peers reach us by hole
//!   punching;
//! - a NAT that maps ports at random → active (we dial out; others reach us by relay).
//!
//! Until the detection ends the node is active (it advertises nothing it has not
//! established). A detection that fails (no server answered) leaves it active and is retried
//! with backoff. A changed WAN address (a new lease, a new network) runs the detection again.
//!
//! `SOURCE ADDR` is our extension: a server that answers it with `ERROR` (an older one of
//! ours) is asked `SOURCE TCP` instead from then on; such a server tells no address or clock.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::output::{Event, Output};
use super::state::{AutoRole, AutoState};
use super::{Core, Job};
use wire::nat::NatMapping;
use wire::rendezvous::{NodeType, NtpTime, Request, Response};

/// First delay before a failed detection is tried again; doubles up to [`AUTO_MAX_RETRY`].
const AUTO_FIRST_RETRY: Duration = Duration::from_secs(5);
const AUTO_MAX_RETRY: Duration = Duration::from_mins(2);

impl Core {
    /// Lets the node choose its own role (see the module docs): starts a NAT detection now;
    /// the choice comes as [`Event::RoleChosen`]. A node that does not listen is active; one
    /// without a rendezvous server is passive on its own address (nothing to learn from);
    /// the event says why.
    pub fn enable_auto(&mut self, now: Instant) {
        self.proven_passive = false;
        if self.config.listen_port == 0 {
            self.choose_role(
                NodeType::Active,
                "this node does not accept connections".to_owned(),
            );
            return;
        }
        if self.config.rendezvous.is_empty() {
            // Nothing to learn from: the node is what it was before roles were chosen, a
            // passive node on its own address (right on a LAN or without a NAT).
            self.choose_role(
                NodeType::Passive,
                "no rendezvous server to learn our address and NAT from: passive on our own \
                 address (right on a LAN or without a NAT)"
                    .to_owned(),
            );
            return;
        }
        self.config.node_type = NodeType::Active;
        self.auto = Some(AutoRole {
            state: AutoState::Detecting,
            retry: AUTO_FIRST_RETRY,
            chosen: None,
            failures: Vec::new(),
        });
        self.detect_nat(now);
    }

    /// Whether the node chooses its own role and has not chosen it yet.
    pub fn role_pending(&self) -> bool {
        self.auto.as_ref().is_some_and(|a| a.chosen.is_none())
    }

    /// The WAN address the rendezvous last observed for us.
    pub fn observed_ip(&self) -> Option<IpAddr> {
        self.observed_ip
    }

    /// The request that asks `server` where we come from: `SOURCE ADDR`, unless it said it
    /// does not know it (the NAT detection asks this way and falls back on an error).
    pub(super) fn addr_request(&self, server: SocketAddr) -> Request {
        if self.no_source_addr.contains(&server) {
            Request::SourceTcp { text: None }
        } else {
            Request::SourceAddr
        }
    }

    /// The same question on a session, where an error would end the session: `SOURCE ADDR`
    /// only to a server that has answered it before.
    pub(super) fn session_addr_request(&self, server: SocketAddr) -> Request {
        if self.source_addr_ok.contains(&server) {
            Request::SourceAddr
        } else {
            Request::SourceTcp { text: None }
        }
    }

    /// `server` answered `SOURCE ADDR` with an error: ask it `SOURCE TCP` from now on.
    /// Returns whether this is news (the request should be repeated the old way).
    pub(super) fn source_addr_refused(&mut self, server: SocketAddr) -> bool {
        self.no_source_addr.insert(server)
    }

    /// A `REMOTE ADDR` from `server`: `addr` is where it saw us come from, `time` its clock.
    /// `rtt` is the round trip of that request when it was measured and `unix_now` our shared
    /// clock at the reply: together they give a clock sample for the driver.
    pub(super) fn handle_observed(
        &mut self,
        now: Instant,
        server: SocketAddr,
        addr: SocketAddr,
        time: NtpTime,
        timing: Option<(Duration, f64)>,
    ) {
        if let Some((rtt, unix_now)) = timing {
            self.last_rtt = Some(rtt);
            // The server read its clock about half a round trip before the reply arrived.
            let offset = time.secs() - (unix_now - rtt.as_secs_f64() / 2.0);
            self.out.push_back(Output::ClockSample {
                server,
                offset,
                rtt,
            });
        }
        self.source_addr_ok.insert(server);
        let ip = addr.ip();
        if self.observed_ip == Some(ip) {
            return;
        }
        let previous = self.observed_ip.replace(ip);
        self.out.push_back(Output::Event(Event::WanAddress {
            ip,
            server,
            previous,
        }));
        // A new address may be a new network with another NAT: find out again.
        if previous.is_some()
            && let Some(auto) = self.auto.as_mut()
            && auto.state != AutoState::Detecting
        {
            auto.state = AutoState::Detecting;
            self.detect_nat(now);
        }
    }

    /// The NAT detection of an auto node ended (`None`: it failed).
    pub(super) fn auto_on_detection(&mut self, now: Instant, result: Option<(NatMapping, bool)>) {
        let Some(auto) = self.auto.as_mut() else {
            return;
        };
        let Some((mapping, behind_nat)) = result else {
            let retry = auto.retry;
            auto.state = AutoState::Retry(now + retry);
            auto.retry = (retry * 2).min(AUTO_MAX_RETRY);
            if auto.chosen.is_none() {
                self.choose_role(
                    NodeType::Active,
                    format!(
                        "no rendezvous server answered the NAT detection (retrying in {retry:?})"
                    ),
                );
            }
            return;
        };
        auto.state = AutoState::Done;
        auto.retry = AUTO_FIRST_RETRY;
        auto.failures.clear();
        if self.proven_passive {
            // A reachability probe proved our port reachable: that beats hole punching.
            self.choose_role(
                NodeType::Passive,
                "our port is proven reachable from outside (reachability probe)".to_owned(),
            );
            return;
        }
        let (role, reason) = match (behind_nat, mapping) {
            (false, _) => (
                NodeType::Passive,
                "no NAT (the rendezvous sees the address we sent from): peers dial us".to_owned(),
            ),
            (true, NatMapping::Random) => (
                NodeType::Active,
                "our NAT maps ports at random: no predictable port to punch to; we dial out, \
                 peers reach us by relay"
                    .to_owned(),
            ),
            (true, mapping) => (
                NodeType::Simultaneous,
                format!("our NAT's mapping is predictable ({mapping}): reachable by hole punching"),
            ),
        };
        if role == NodeType::Simultaneous {
            self.enable_simultaneous(now);
        } else if let Some(session) = self.registration.take().and_then(|r| r.session) {
            self.session_close(session, "not a simultaneous node any more");
        }
        self.choose_role(role, reason);
    }

    /// Records the role chosen and tells the application.
    pub(super) fn choose_role(&mut self, role: NodeType, reason: String) {
        self.config.node_type = role;
        if let Some(auto) = self.auto.as_mut() {
            if auto.chosen == Some(role) {
                return;
            }
            auto.chosen = Some(role);
        }
        self.out
            .push_back(Output::Event(Event::RoleChosen { role, reason }));
    }

    /// An auto node's role is undecided because its last NAT detection failed: each server
    /// and why, prefixed so that an advertise failure explains itself.
    pub(super) fn auto_undecided(&self) -> Option<Vec<(SocketAddr, String)>> {
        let auto = self.auto.as_ref()?;
        if !matches!(auto.state, AutoState::Retry(_)) || auto.failures.is_empty() {
            return None;
        }
        let failures = auto.failures.iter().map(|(server, why)| {
            let why = format!("the auto role is undecided: the NAT detection failed: {why}");
            (*server, why)
        });
        Some(failures.collect())
    }

    /// When a failed detection is retried, for [`Core::poll_timeout`].
    pub(super) fn auto_next_timer(&self) -> Option<Instant> {
        match self.auto.as_ref()?.state {
            AutoState::Retry(at) => Some(at),
            _ => None,
        }
    }

    /// Retries a failed detection when due.
    pub(super) fn auto_handle_timeout(&mut self, now: Instant) {
        if let Some(auto) = self.auto.as_mut()
            && let AutoState::Retry(at) = auto.state
            && at <= now
        {
            auto.state = AutoState::Detecting;
            self.detect_nat(now);
        }
    }

    /// Whether `job`'s failure is the auto detection's.
    pub(super) fn auto_on_failure(&mut self, now: Instant, job: Job) {
        if matches!(job, Job::NatProbe(_)) {
            self.auto_on_detection(now, None);
        }
    }

    /// Splits a reply to our "where do we come from" question into the observed port and,
    /// for `REMOTE ADDR`, the observed address and the server's clock. Other replies come
    /// back as they are.
    pub(super) fn remote_reply(
        response: Response,
    ) -> Result<(u16, Option<(SocketAddr, NtpTime)>), Response> {
        match response {
            Response::RemoteTcp { port } => Ok((port, None)),
            Response::RemoteAddr { addr, time } => Ok((addr.port(), Some((addr, time)))),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests;
