//! A connect by UNL as a state machine: which tries to make, when each starts, and how the
//! connect ends.
//!
//! See [`crate::connect`] for the methods and their order. [`Core::connect_unl`] plans the
//! tries from both UNLs' facts (LAN and direct dials, and the hole punch to a node behind a
//! NAT, at once; the reverse connect, and the punch to a node without one, as a second wave
//! after a head start or when every dial failed; the relay last, or at once when nothing
//! else can work; every wait derived from the measured round trip), the timers here start
//! the waves and enforce the deadlines, [`Core::try_failed`] moves on when a try fails, and
//! [`Core::finish`] marks the winner, stops the other tries and reports
//! [`Event::ConnectDone`]. The tries themselves live in `iam.rs` (which connection is whose),
//! `reverse.rs` (reverse connect and relay) and `punch/candidate.rs` (the hole punch).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::output::{Event, Output};
use super::state::Attempt;
use super::{Core, millis};
use crate::connect::{ConnectOutcome, Method, Try, TryResult};
use crate::ids::{ConnId, ConnectId};
use wire::nat::NatMapping;
use wire::overlay::Nonce;
use wire::unl::v3::{AnyUnl, UnlV3};
use wire::unl::{NodeId, NodeType, Unl};

/// The round trip to the rendezvous assumed before one was measured.
const UNMEASURED_RTT: Duration = Duration::from_millis(100);
/// No wait derived from a round trip is shorter (processing on three hosts, scheduling).
const MIN_WAIT: Duration = Duration::from_millis(50);
/// The kernel's first SYN retransmission timeout (RFC 6298's initial RTO): what one lost
/// SYN costs a dial.
const SYN_RETRANSMIT: Duration = Duration::from_secs(1);

impl Core {
    /// This node's UNL node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Sets the UNL we hand out, v2 only (a core without a signed UNL sends PyP2P's unsigned
    /// requests).
    pub fn set_local_unl(&mut self, unl: Unl) {
        self.local_unl = Some(unl);
        self.local_unl3 = None;
    }

    /// Sets the UNL we hand out, signed (the driver signs it again when our address or role
    /// changes); its v2 form too.
    pub fn set_local_unl_v3(&mut self, unl: UnlV3) {
        self.local_unl = Some(unl.to_v2());
        self.local_unl3 = Some(unl);
    }

    /// The signed UNL we hand out, once the driver set one.
    pub fn local_unl_v3(&self) -> Option<&UnlV3> {
        self.local_unl3.as_ref()
    }

    /// The UNL we hand out, once the driver set it.
    pub fn local_unl(&self) -> Option<Unl> {
        self.local_unl
    }

    /// Starts connecting to the node a v2 `target` names (a PyP2P peer: plain text); the
    /// outcome comes as [`Event::ConnectDone`].
    pub fn connect_unl(&mut self, now: Instant, target: Unl) -> ConnectId {
        self.connect_to(now, target, None)
    }

    /// Starts connecting to the node `target` names: by its v3 UNL, encrypted, to the key it
    /// names (the connection must prove it); by a v2 one as [`Core::connect_unl`].
    pub fn connect_any(&mut self, now: Instant, target: &AnyUnl) -> ConnectId {
        match target {
            AnyUnl::V2(unl) => self.connect_to(now, *unl, None),
            AnyUnl::V3(unl) => self.connect_to(now, unl.to_v2(), Some(unl.clone())),
        }
    }

    /// A fresh connect id and its attempt at `target` (nothing planned yet), with a random
    /// nonce and the connect's deadline.
    pub(super) fn new_attempt(
        &mut self,
        now: Instant,
        target: Unl,
        signed: Option<UnlV3>,
    ) -> (ConnectId, Attempt) {
        let id = ConnectId(self.next_attempt);
        self.next_attempt += 1;
        let nonce = Nonce(self.rng.random());
        let deadline = now + self.config.unl_connect_timeout;
        (id, Attempt::new(target, signed, now, deadline, nonce))
    }

    fn connect_to(&mut self, now: Instant, target: Unl, signed: Option<UnlV3>) -> ConnectId {
        let (id, mut attempt) = self.new_attempt(now, target, signed);
        if target.node_id == Some(self.node_id) {
            self.attempts.insert(id, attempt);
            self.finish(now, id, Err("that is this node's own UNL".to_owned()));
            return id;
        }
        if let Some(node) = target.node_id
            && let Some((&conn, peer)) = self.conns.iter().find(|(_, p)| p.node == Some(node))
        {
            let addr = peer.addr;
            attempt.tries.push(Try {
                method: Method::Existing,
                addr: Some(addr),
                started_ms: Some(0),
                ended_ms: Some(0),
                result: TryResult::Won,
            });
            self.attempts.insert(id, attempt);
            self.finish(now, id, Ok((conn, Method::Existing, addr)));
            return id;
        }
        let dials = self.plan(now, &mut attempt);
        let (dials, ipv6) = self.plan_ipv6(now, &mut attempt, dials);
        for (_, addr) in &dials {
            self.attempt_dials.insert(*addr, id);
        }
        let nothing = dials.is_empty()
            && attempt.reverse_at.is_none()
            && !attempt.punch_now
            && ipv6.is_none();
        let relay_only = nothing && attempt.relay_planned;
        self.attempts.insert(id, attempt);
        if relay_only {
            self.start_relay(now, id);
            return id;
        }
        if nothing {
            self.finish(now, id, Err("no method can reach that node".to_owned()));
            return id;
        }
        if let Some(theirs) = ipv6 {
            self.start_ipv6(now, id, theirs);
        }
        for (_, addr) in dials {
            self.dial(addr);
        }
        if self.attempts.get(&id).is_some_and(|a| a.punch_now) {
            self.start_punch(now, id);
        }
        self.connect_timers(now);
        id
    }

    /// The round trip to the rendezvous we time our waits by: the last one measured (on our
    /// registration or a candidacy), else [`UNMEASURED_RTT`].
    pub(super) fn rtt_estimate(&self) -> Duration {
        self.registration_rtt()
            .or(self.last_rtt)
            .unwrap_or(UNMEASURED_RTT)
    }

    /// Fills `attempt.tries` (skipped ones with the reason), decides when each try starts
    /// from both UNLs' facts, and returns the addresses to dial at once.
    ///
    /// Every wait is derived from the round trip to the rendezvous `r` (see
    /// [`Core::rtt_estimate`]); the peer is assumed as far from the server as we are, so the
    /// round trip between us is about `2r`, a punch that works confirms in about two of those
    /// (`4r`, see `punch/candidate.rs`) and a relay in about three.
    fn plan(&self, now: Instant, attempt: &mut Attempt) -> Vec<(Method, SocketAddr)> {
        let target = attempt.target;
        let ours = self.local_unl;
        let r = self.rtt_estimate();
        let same_wan =
            ours.is_some_and(|o| o.wan_ip == target.wan_ip && !o.wan_ip.is_unspecified());
        let has_address = target.port != 0 && !target.wan_ip.is_unspecified();
        // Their UNL says they have no NAT: the address they listen on is their WAN address.
        let no_nat = has_address && target.wan_ip == target.lan_ip;
        let mut dials = Vec::new();
        // LAN.
        let lan = (same_wan && target.port != 0 && !target.lan_ip.is_unspecified())
            .then(|| SocketAddr::from((target.lan_ip, target.port)));
        match lan {
            Some(addr) => dials.push((Method::Lan, addr)),
            None => attempt.tries.push(Try::skipped(
                Method::Lan,
                if same_wan {
                    "their UNL has no LAN address and port"
                } else {
                    "different WAN address"
                },
            )),
        }
        // Direct: to a passive node, and to a simultaneous one without a NAT (a host on a
        // public address takes the SYN unless a firewall drops it; then the punch goes on).
        let direct_ok = target.node_type == NodeType::Passive
            || (target.node_type == NodeType::Simultaneous && no_nat);
        if !direct_ok {
            attempt.tries.push(Try::skipped(
                Method::Direct,
                "they are not passive and are behind a NAT",
            ));
        } else if !has_address {
            attempt.tries.push(Try::skipped(
                Method::Direct,
                "their UNL has no WAN address and port",
            ));
        } else if lan.is_some() {
            attempt.tries.push(Try::skipped(
                Method::Direct,
                "same WAN address: the LAN address is dialed instead",
            ));
        } else {
            dials.push((
                Method::Direct,
                SocketAddr::from((target.wan_ip, target.port)),
            ));
        }
        for (method, addr) in &dials {
            attempt.tries.push(Try::dialing(*method, *addr));
        }
        // Punch: at once to a node behind a NAT (nothing else can reach it directly); after
        // the direct dial's chance to a node without one.
        let mut second_wave = false;
        if let Some(why) = self.punch_blocker(&target) {
            attempt.tries.push(Try::skipped(Method::Punch, why));
        } else if dials.is_empty() {
            attempt.tries.push(Try::planned(Method::Punch));
            attempt.punch_now = true;
        } else {
            attempt.tries.push(Try::planned(Method::Punch));
            second_wave = true;
        }
        // Reverse: only a node whose port is established as reachable (passive) can ask.
        let reverse_blocker =
            if ours.is_none_or(|o| o.node_type != NodeType::Passive || o.port == 0) {
                Some("this node is not passive")
            } else if target.node_id.is_none() {
                Some("their UNL has no node id (no mailbox)")
            } else if self.mailbox.is_none() {
                Some("no dht-msg server configured")
            } else {
                None
            };
        if let Some(why) = reverse_blocker {
            attempt.tries.push(Try::skipped(Method::Reverse, why));
        } else {
            attempt.tries.push(Try::planned(Method::Reverse));
            second_wave = true;
        }
        // An encrypted connection confirms one round trip between us (2r) later than a plain
        // one: the handshake's, before the peer's IAM.
        let handshake = if attempt.key().is_some() {
            r * 2
        } else {
            Duration::ZERO
        };
        if second_wave {
            // A dial that works confirms in about one round trip between us (2r); one that
            // reaches nothing has failed by then or hangs on a dropped SYN.
            attempt.reverse_at = Some(if dials.is_empty() && !attempt.punch_now {
                now
            } else {
                now + (r * 3 + handshake).max(MIN_WAIT)
            });
        }
        self.plan_relay(now, attempt, r, handshake);
        dials
    }

    /// The relay of `plan`: the last resort, after [`Core::relay_head_start`].
    /// `handshake`: what an encrypted connection adds before it confirms.
    fn plan_relay(&self, now: Instant, attempt: &mut Attempt, r: Duration, handshake: Duration) {
        let relay_blocker = if attempt.target.node_id.is_none() {
            Some("their UNL has no node id (no mailbox to ask them through)")
        } else if self.mailbox.is_none() {
            Some("no dht-msg server configured")
        } else if self.config.rendezvous.is_empty() {
            Some("no rendezvous server configured to relay through")
        } else if self.local_unl.is_none() {
            Some("this node has no UNL yet")
        } else {
            None
        };
        if let Some(why) = relay_blocker {
            attempt.tries.push(Try::skipped(Method::Relay, why));
        } else {
            attempt.tries.push(Try::planned(Method::Relay));
            attempt.relay_planned = true;
            let head_start = self.relay_head_start(&attempt.target, r);
            let head_start = if head_start.is_zero() {
                head_start
            } else {
                head_start + handshake
            };
            attempt.relay_at = Some(now + head_start);
        }
    }

    /// How long the other tries run alone before the relay starts beside them (it also
    /// starts as soon as every other try has failed; a relayed connection moves to a direct
    /// path when one of the tries still running opens one, see `upgrade.rs`):
    /// - a punch between two predictable NATs, or a dial to an address that takes SYNs,
    ///   confirms in about `4r` (`6r` encrypted: `plan_relay` adds the handshake's round
    ///   trip); give it that and one SYN retransmission (1 s, the kernel's first
    ///   retransmission timeout), so one lost packet does not cost the direct path;
    /// - from behind a NAT that maps ports at random, the punch is a birthday punch (or can
    ///   only meet a full cone): it takes longer or may not work at all, so the relay starts
    ///   at once and the session moves when the punch opens.
    fn relay_head_start(&self, target: &Unl, r: Duration) -> Duration {
        let punch = target.node_type == NodeType::Simultaneous;
        let hard = punch && self.nat_mapping == Some(NatMapping::Random);
        if hard {
            Duration::ZERO
        } else {
            (r * 4).max(MIN_WAIT) + SYN_RETRANSMIT
        }
    }

    /// The punch of connect `id` dials at `meeting` (its `FIGHT` came): the relay's head start
    /// counts from there when that is later than planned. [`Core::relay_head_start`] assumes
    /// the punch's SYNs go out about `2r` after the connect started; when the signalling took
    /// longer (a node whose NAT steps its ports probes its counter first, a signalling segment
    /// was lost), the relay would start before a lost SYN's retransmission could land, and one
    /// lost packet would cost the direct path. So the relay waits for the round trip between
    /// us (`2r`), the handshake's when encrypted, and one SYN retransmission after the meeting.
    pub(super) fn relay_after_meeting(&mut self, now: Instant, id: ConnectId, meeting: Instant) {
        let r = self.rtt_estimate();
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        let Some(relay_at) = a.relay_at.filter(|t| a.relay_planned && *t > now) else {
            return;
        };
        let handshake = if a.key().is_some() {
            r * 2
        } else {
            Duration::ZERO
        };
        let due = meeting.max(now) + (r * 2).max(MIN_WAIT) + handshake + SYN_RETRANSMIT;
        if due > relay_at {
            tracing::debug!(
                id = %id,
                later_ms = millis(due - relay_at),
                "relay waits for the punch's meeting and one SYN retransmission"
            );
            a.relay_at = Some(due.min(a.deadline));
        }
    }

    /// The timers of connects, for [`Core::poll_timeout`].
    pub(super) fn connect_next_timer(&self) -> Option<Instant> {
        self.attempts
            .values()
            .flat_map(|a| {
                let relay_at = a.relay_at.filter(|_| a.relay_planned);
                let v4_at = a.v4_wave.as_ref().map(|w| w.at);
                [
                    Some(a.deadline),
                    a.reverse_at,
                    a.reverse_deadline,
                    relay_at,
                    v4_at,
                ]
            })
            .flatten()
            .chain(self.upgrade_retries.values().map(|r| r.at))
            .min()
    }

    /// Runs due connect timers: the second wave, the relay, the reverse try's and the
    /// connect's deadlines, and relayed sessions' upgrades tried again.
    pub(super) fn connect_timers(&mut self, now: Instant) {
        self.upgrade_retry_timers(now);
        let waves: Vec<ConnectId> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.v4_wave.as_ref().is_some_and(|w| w.at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in waves {
            self.start_v4_wave(now, id);
        }
        let due: Vec<ConnectId> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.reverse_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.start_second_wave(now, id);
        }
        let relays: Vec<ConnectId> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.relay_planned && a.relay_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in relays {
            self.start_relay(now, id);
        }
        let unanswered: Vec<ConnectId> = self
            .attempts
            .iter_mut()
            .filter(|(_, a)| a.reverse_deadline.is_some_and(|t| t <= now))
            .map(|(id, a)| {
                a.reverse_deadline = None;
                *id
            })
            .collect();
        for id in unanswered {
            let why = format!(
                "they did not connect to us within {:?} of the request",
                self.config.reverse_timeout
            );
            self.try_failed(now, id, Method::Reverse, None, &why);
        }
        let expired: Vec<ConnectId> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let after = self.config.unl_connect_timeout;
            self.finish(
                now,
                id,
                Err(format!("no method succeeded within {after:?}")),
            );
        }
    }

    /// Starts the reverse connect and the punch of `id`, whichever are planned.
    fn start_second_wave(&mut self, now: Instant, id: ConnectId) {
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        if a.reverse_at.take().is_none() {
            return;
        }
        let planned = |m: Method| {
            a.tries
                .iter()
                .any(|t| t.method == m && t.result == TryResult::Pending && t.started_ms.is_none())
        };
        let (reverse, punch) = (planned(Method::Reverse), planned(Method::Punch));
        if reverse {
            self.start_reverse(now, id);
        }
        if punch {
            self.start_punch(now, id);
        }
    }

    /// Whether any try of `id` has started and not ended.
    fn tries_running(&self, id: ConnectId) -> bool {
        self.attempts.get(&id).is_some_and(|a| {
            a.tries
                .iter()
                .any(|t| t.result == TryResult::Pending && t.started_ms.is_some())
        })
    }

    /// A try of `id` ended badly. When nothing is left running, the reverse try starts at
    /// once (if it waits), else the connect fails.
    pub(super) fn try_failed(
        &mut self,
        now: Instant,
        id: ConnectId,
        method: Method,
        addr: Option<SocketAddr>,
        reason: &str,
    ) {
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        let ms = millis(now - a.started);
        if let Some(t) = a.tries.iter_mut().find(|t| {
            t.method == method
                && t.result == TryResult::Pending
                && (addr.is_none() || t.addr == addr)
        }) {
            t.result = TryResult::Failed(reason.to_owned());
            t.ended_ms = Some(ms);
        }
        if self.tries_running(id) {
            return;
        }
        // The IPv6 try failed within its head start: the IPv4 tries start now.
        if self.attempts.get(&id).is_some_and(|a| a.v4_wave.is_some()) {
            self.start_v4_wave(now, id);
            if self.tries_running(id) {
                return;
            }
        }
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        if a.reverse_at.is_some() {
            a.reverse_at = Some(now);
            self.start_second_wave(now, id);
            return;
        }
        if a.relay_planned {
            self.start_relay(now, id);
            return;
        }
        let summary = self
            .attempts
            .get(&id)
            .map(|a| {
                a.tries
                    .iter()
                    .filter_map(|t| match &t.result {
                        TryResult::Failed(why) => Some(format!("{}: {why}", t.method)),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        self.finish(now, id, Err(format!("every method failed ({summary})")));
    }

    /// Ends connect `id`: marks the winner (or the failure), stops the other tries, reports.
    pub(super) fn finish(
        &mut self,
        now: Instant,
        id: ConnectId,
        result: Result<(ConnId, Method, SocketAddr), String>,
    ) {
        if self.finish_upgrading(now, id, &result) {
            return;
        }
        let Some(mut a) = self.attempts.remove(&id) else {
            return;
        };
        let ms = millis(now - a.started);
        let us = u64::try_from((now - a.started).as_micros()).unwrap_or(u64::MAX);
        self.stop_tries(now, id, &a, result.as_ref().ok().map(|w| w.0));
        for t in &mut a.tries {
            if t.result == TryResult::Pending {
                match (&result, t.started_ms) {
                    (Ok((_, m, addr)), Some(_))
                        if *m == t.method && (t.addr.is_none() || t.addr == Some(*addr)) =>
                    {
                        t.result = TryResult::Won;
                    }
                    (Ok(_), Some(_)) => t.result = TryResult::Cancelled,
                    (Err(_), Some(_)) => {
                        t.result = TryResult::Failed("no answer before the deadline".to_owned());
                    }
                    (_, None) => {
                        t.result = TryResult::Skipped("not started".to_owned());
                        continue;
                    }
                }
                t.ended_ms = Some(ms);
            }
        }
        a.tries.sort_by_key(|t| t.method);
        let outcome = match result {
            Ok((conn, method, addr)) => ConnectOutcome {
                id,
                target: a.target_text(),
                connected: true,
                conn: Some(conn),
                method: Some(method),
                addr: Some(addr),
                error: None,
                ms,
                us,
                tries: a.tries,
            },
            Err(error) => ConnectOutcome {
                id,
                target: a.target_text(),
                connected: false,
                conn: None,
                method: None,
                addr: None,
                error: Some(error),
                ms,
                us,
                tries: a.tries,
            },
        };
        if let Some(conn) = outcome.conn {
            self.reported.insert(conn);
        }
        self.out
            .push_back(Output::Event(Event::ConnectDone(outcome)));
    }
}
