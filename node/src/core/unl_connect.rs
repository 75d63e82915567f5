//! Connect by UNL and the dht-msg mailbox client, as part of the sans-IO [`Core`].
//!
//! See [`crate::connect`] for the methods and their order. Everything here is driven by the
//! same `handle_*`/`poll_*` calls as the rest of the core.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::Rng;

use super::punch::PunchTry;
use super::{ConnId, Core, Direction, Event, Output, RelayId};
use crate::connect::{
    ConnectId, ConnectOutcome, Method, RELAY_CONNECT_PREFIX, REVERSE_CONNECT_PREFIX, RelayRequest,
    ReverseRequest, Try, TryResult,
};
use crate::proto::mailbox::{self, Reply, Request};
use crate::proto::overlay::{Control, Nonce};
use crate::proto::punch::relay_token;
use crate::unl::{NodeId, NodeType, Unl};

/// First reconnect delay of the mailbox connection; doubles up to [`MAILBOX_MAX_RETRY`].
const MAILBOX_FIRST_RETRY: Duration = Duration::from_secs(1);
const MAILBOX_MAX_RETRY: Duration = Duration::from_mins(1);
/// Keep-alive on the mailbox connection (the server closes idle ones after 5 min).
const MAILBOX_PING: Duration = Duration::from_mins(2);
/// The relay's head start when our own NAT maps ports at random (see `start_second_wave`).
const RANDOM_NAT_RELAY_HEAD_START: Duration = Duration::from_millis(500);
/// PUTs queued while the mailbox is down, at most.
const MAILBOX_MAX_QUEUED: usize = 256;

/// One connect in progress.
#[derive(Debug)]
pub(super) struct Attempt {
    pub(super) target: Unl,
    pub(super) started: Instant,
    deadline: Instant,
    nonce: Nonce,
    pub(super) tries: Vec<Try>,
    /// When the second wave (reverse connect and hole punch, whichever are planned) starts;
    /// `None` once started or when neither is planned.
    reverse_at: Option<Instant>,
    /// The reverse try fails at this time unless they dialed us.
    reverse_deadline: Option<Instant>,
    /// The punch try, once started.
    pub(super) punch: Option<PunchTry>,
    /// A relay is planned (it starts when every other try has failed, or at `relay_at`).
    relay_planned: bool,
    relay_at: Option<Instant>,
    /// The relayed connection being opened.
    relay: Option<RelayId>,
}

/// Which end of a relayed connection we are.
#[derive(Debug, Clone, Copy)]
pub(super) enum RelayRole {
    /// We asked for it (connect `ConnectId`).
    Asker(ConnectId),
    /// `node` asked us; we open with `nonce`.
    Asked { node: NodeId, nonce: Nonce },
}

/// A reverse connect we make because someone asked.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReverseDial {
    node: NodeId,
    nonce: Nonce,
}

/// What a request on the mailbox connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Awaiting {
    Register,
    Subscribe,
    Put(Option<(ConnectId, Method)>),
    Ack,
    Ping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MailboxState {
    /// Not connected; reconnect at the given time.
    Down(Instant),
    Connecting,
    /// Connected, registering/subscribing.
    Opening,
    Up,
}

/// The persistent connection to our dht-msg mailbox.
#[derive(Debug)]
pub(super) struct MailboxClient {
    server: SocketAddr,
    secret: String,
    state: MailboxState,
    retry: Duration,
    /// Requests sent and not yet answered, in order.
    awaiting: VecDeque<Awaiting>,
    /// PUTs waiting for the connection.
    queued: VecDeque<(String, Option<(ConnectId, Method)>)>,
    next_ping: Option<Instant>,
}

impl Core {
    /// This node's UNL node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Sets the UNL we hand out (the driver rebuilds it when our address or role changes).
    pub fn set_local_unl(&mut self, unl: Unl) {
        self.local_unl = Some(unl);
    }

    /// The UNL we hand out, once the driver set it.
    pub fn local_unl(&self) -> Option<Unl> {
        self.local_unl
    }

    /// Keeps a connection to the dht-msg server `server`: registers our mailbox, subscribes to
    /// it (reverse-connect requests arrive there) and reconnects when it drops.
    pub fn enable_mailbox(&mut self, now: Instant, server: SocketAddr) {
        let secret: String = (0..32)
            .map(|_| char::from(b"0123456789abcdef"[self.rng.random_range(0..16)]))
            .collect();
        self.mailbox = Some(MailboxClient {
            server,
            secret,
            state: MailboxState::Down(now),
            retry: MAILBOX_FIRST_RETRY,
            awaiting: VecDeque::new(),
            queued: VecDeque::new(),
            next_ping: None,
        });
        self.mailbox_timers(now);
    }

    /// Whether the mailbox connection is registered and subscribed.
    pub fn mailbox_up(&self) -> bool {
        self.mailbox
            .as_ref()
            .is_some_and(|m| m.state == MailboxState::Up)
    }

    /// Starts connecting to the node `target` names; the outcome comes as
    /// [`Event::ConnectDone`].
    pub fn connect_unl(&mut self, now: Instant, target: Unl) -> ConnectId {
        let id = ConnectId(self.next_attempt);
        self.next_attempt += 1;
        let nonce = Nonce(self.rng.random());
        let mut attempt = Attempt {
            target,
            started: now,
            deadline: now + self.config.unl_connect_timeout,
            nonce,
            tries: Vec::new(),
            reverse_at: None,
            reverse_deadline: None,
            punch: None,
            relay_planned: false,
            relay_at: None,
            relay: None,
        };
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
        for (_, addr) in &dials {
            self.attempt_dials.insert(*addr, id);
        }
        let nothing = dials.is_empty() && attempt.reverse_at.is_none();
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
        for (_, addr) in dials {
            self.dial(addr);
        }
        self.connect_timers(now);
        id
    }

    /// Fills `attempt.tries` (skipped ones with the reason) and returns the addresses to dial.
    fn plan(&self, now: Instant, attempt: &mut Attempt) -> Vec<(Method, SocketAddr)> {
        let target = attempt.target;
        let ours = self.local_unl;
        let same_wan =
            ours.is_some_and(|o| o.wan_ip == target.wan_ip && !o.wan_ip.is_unspecified());
        let mut dials = Vec::new();
        // LAN.
        let lan = (same_wan && target.port != 0 && !target.lan_ip.is_unspecified())
            .then(|| SocketAddr::from((target.lan_ip, target.port)));
        match lan {
            Some(addr) => dials.push((Method::Lan, addr)),
            None => attempt.tries.push(skipped(
                Method::Lan,
                if same_wan {
                    "their UNL has no LAN address and port"
                } else {
                    "different WAN address"
                },
            )),
        }
        // Direct.
        if target.node_type != NodeType::Passive {
            attempt
                .tries
                .push(skipped(Method::Direct, "they are not passive"));
        } else if target.port == 0 || target.wan_ip.is_unspecified() {
            attempt.tries.push(skipped(
                Method::Direct,
                "their UNL has no WAN address and port",
            ));
        } else if lan.is_some() {
            attempt.tries.push(skipped(
                Method::Direct,
                "same WAN address: the LAN address is dialed instead",
            ));
        } else {
            dials.push((
                Method::Direct,
                SocketAddr::from((target.wan_ip, target.port)),
            ));
        }
        // Reverse.
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
        for (method, addr) in &dials {
            attempt.tries.push(Try {
                method: *method,
                addr: Some(*addr),
                started_ms: Some(0),
                ended_ms: None,
                result: TryResult::Pending,
            });
        }
        let mut second_wave = false;
        if let Some(why) = reverse_blocker {
            attempt.tries.push(skipped(Method::Reverse, why));
        } else {
            attempt.tries.push(planned(Method::Reverse));
            second_wave = true;
        }
        // Punch.
        if let Some(why) = self.punch_blocker(&target) {
            attempt.tries.push(skipped(Method::Punch, why));
        } else {
            attempt.tries.push(planned(Method::Punch));
            second_wave = true;
        }
        if second_wave {
            attempt.reverse_at = Some(if dials.is_empty() {
                now
            } else {
                now + self.config.reverse_head_start
            });
        }
        // Relay: the last resort.
        let relay_blocker = if target.node_id.is_none() {
            Some("their UNL has no node id (no mailbox to ask them through)")
        } else if self.mailbox.is_none() {
            Some("no dht-msg server configured")
        } else if self.config.rendezvous.is_empty() {
            Some("no rendezvous server configured to relay through")
        } else if ours.is_none() {
            Some("this node has no UNL yet")
        } else {
            None
        };
        if let Some(why) = relay_blocker {
            attempt.tries.push(skipped(Method::Relay, why));
        } else {
            attempt.tries.push(planned(Method::Relay));
            attempt.relay_planned = true;
        }
        dials
    }

    /// The timers of connects and the mailbox, for [`Core::poll_timeout`].
    pub(super) fn unl_timeout(&self) -> Option<Instant> {
        let attempts = self
            .attempts
            .values()
            .flat_map(|a| {
                let relay_at = a.relay_at.filter(|_| a.relay_planned);
                [Some(a.deadline), a.reverse_at, a.reverse_deadline, relay_at]
            })
            .flatten();
        let mailbox = self.mailbox.iter().flat_map(|m| {
            let retry = match m.state {
                MailboxState::Down(at) => Some(at),
                _ => None,
            };
            [retry, m.next_ping]
        });
        attempts.chain(mailbox.flatten()).min()
    }

    /// Runs due connect and mailbox timers.
    pub(super) fn unl_handle_timeout(&mut self, now: Instant) {
        self.connect_timers(now);
        self.mailbox_timers(now);
    }

    fn connect_timers(&mut self, now: Instant) {
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
        // Behind a NAT that maps ports at random, a punch can only meet a full-cone NAT, and
        // does so within one meeting delay: give the relay a shorter head start.
        let head_start = if self.nat_mapping == Some(crate::proto::nat::NatMapping::Random) {
            self.config
                .relay_head_start
                .min(RANDOM_NAT_RELAY_HEAD_START)
        } else {
            self.config.relay_head_start
        };
        a.relay_at = Some(now + head_start);
        if reverse {
            self.start_reverse(now, id);
        }
        if punch {
            self.start_punch(now, id);
        }
    }

    fn start_reverse(&mut self, now: Instant, id: ConnectId) {
        let Some(ours) = self.local_unl else { return };
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        let ms = millis(now - a.started);
        let Some(t) = a.tries.iter_mut().find(|t| t.method == Method::Reverse) else {
            return;
        };
        t.started_ms = Some(ms);
        a.reverse_deadline = Some(now + self.config.reverse_timeout);
        let Some(node) = a.target.node_id else { return };
        let body = ReverseRequest {
            unl: ours,
            nonce: a.nonce,
        }
        .to_string();
        let to = node.mailbox_id().parse::<mailbox::NodeId>();
        let to = to.map(|to| (id, Method::Reverse, to));
        match to {
            Ok((id, method, to)) => self.mailbox_put(
                now,
                Request::Put { to, body }.to_string(),
                Some((id, method)),
            ),
            Err(e) => self.try_failed(now, id, Method::Reverse, None, &e.to_string()),
        }
    }

    /// Starts the relay try of `id`: ask them through their mailbox to meet us at our
    /// rendezvous server, and go there ourselves.
    pub(super) fn start_relay(&mut self, now: Instant, id: ConnectId) {
        let Some(ours) = self.local_unl else { return };
        if self.config.rendezvous.is_empty() {
            return;
        }
        let server = self.config.rendezvous[self.preferred % self.config.rendezvous.len()];
        let relay = RelayId(self.next_relay);
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        if !a.relay_planned || a.relay.is_some() {
            return;
        }
        a.relay_planned = false;
        let ms = millis(now - a.started);
        let Some(t) = a.tries.iter_mut().find(|t| t.method == Method::Relay) else {
            return;
        };
        t.started_ms = Some(ms);
        t.addr = Some(server);
        let Some(node) = a.target.node_id else { return };
        let nonce = a.nonce;
        a.relay = Some(relay);
        self.next_relay += 1;
        let body = RelayRequest {
            unl: ours,
            nonce,
            relay: server,
        }
        .to_string();
        match node.mailbox_id().parse::<mailbox::NodeId>() {
            Ok(to) => {
                self.relays.insert(relay, RelayRole::Asker(id));
                self.out.push_back(Output::RelayDial {
                    relay,
                    server,
                    token: relay_token(&nonce),
                });
                self.mailbox_put(
                    now,
                    Request::Put { to, body }.to_string(),
                    Some((id, Method::Relay)),
                );
            }
            Err(e) => self.try_failed(now, id, Method::Relay, None, &e.to_string()),
        }
    }

    /// A relayed connection is through: `conn` is now a connection like any other (its
    /// address is the relay's). Returns false when the core closed it at once.
    pub fn handle_relay_open(
        &mut self,
        now: Instant,
        relay: RelayId,
        conn: ConnId,
        server: SocketAddr,
    ) -> bool {
        let Some(role) = self.relays.remove(&relay) else {
            self.out.push_back(Output::Close {
                conn,
                reason: "relay no longer wanted".to_owned(),
            });
            return false;
        };
        // The asker sees the peer come in (it opens with the nonce), the asked one dialed.
        let direction = match role {
            RelayRole::Asker(_) => Direction::Inbound,
            RelayRole::Asked { .. } => Direction::Outbound,
        };
        self.relayed.insert(conn);
        if let RelayRole::Asked { node, nonce } = role {
            self.reverse_dials
                .insert(server, ReverseDial { node, nonce });
        }
        let open = self.handle_open(now, conn, server, direction);
        if !open {
            self.relayed.remove(&conn);
        } else if let RelayRole::Asker(id) = role {
            // If it closes before the peer proved itself, the relay try has failed.
            self.conn_attempt.insert(conn, id);
        }
        open
    }

    /// A relayed connection could not be opened.
    pub fn handle_relay_failed(&mut self, now: Instant, relay: RelayId, reason: &str) {
        match self.relays.remove(&relay) {
            Some(RelayRole::Asker(id)) => {
                self.try_failed(now, id, Method::Relay, None, reason);
            }
            Some(RelayRole::Asked { node, .. }) => {
                self.out.push_back(Output::Event(Event::ReverseRequested {
                    from: node.to_string(),
                    addr: None,
                    refused: Some(format!("relay failed: {reason}")),
                }));
            }
            None => {}
        }
    }

    fn mailbox_put(&mut self, now: Instant, line: String, id: Option<(ConnectId, Method)>) {
        let Some(m) = self.mailbox.as_mut() else {
            if let Some((id, method)) = id {
                self.try_failed(now, id, method, None, "no dht-msg server");
            }
            return;
        };
        if m.state == MailboxState::Up {
            m.awaiting.push_back(Awaiting::Put(id));
            self.out.push_back(Output::MailboxSend { line });
        } else if m.queued.len() < MAILBOX_MAX_QUEUED {
            m.queued.push_back((line, id));
        } else if let Some((id, method)) = id {
            self.try_failed(now, id, method, None, "the mailbox server is unreachable");
        }
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
        let running = a
            .tries
            .iter()
            .any(|t| t.result == TryResult::Pending && t.started_ms.is_some());
        if running {
            return;
        }
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
    fn finish(
        &mut self,
        now: Instant,
        id: ConnectId,
        result: Result<(ConnId, Method, SocketAddr), String>,
    ) {
        let Some(mut a) = self.attempts.remove(&id) else {
            return;
        };
        let ms = millis(now - a.started);
        let us = u64::try_from((now - a.started).as_micros()).unwrap_or(u64::MAX);
        let unfinished: Vec<SocketAddr> = self
            .attempt_dials
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(addr, _)| *addr)
            .collect();
        self.attempt_dials.retain(|_, v| *v != id);
        if !unfinished.is_empty() {
            self.out
                .push_back(Output::CancelDials { addrs: unfinished });
        }
        if let Some(session) = a.punch.as_ref().and_then(|p| p.session) {
            self.session_close(session, "the connect ended");
        }
        if let Some(relay) = a.relay {
            // Not yet through: forget it (a late `RELAY OK` is closed).
            self.relays.remove(&relay);
        }
        let losers: Vec<ConnId> = self
            .conn_attempt
            .iter()
            .filter(|(c, v)| **v == id && result.as_ref().map_or(true, |w| w.0 != **c))
            .map(|(c, _)| *c)
            .collect();
        self.conn_attempt.retain(|_, v| *v != id);
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
        for conn in losers {
            self.close(now, conn, "another connect method won");
        }
        a.tries.sort_by_key(|t| t.method);
        let outcome = match result {
            Ok((conn, method, addr)) => ConnectOutcome {
                id,
                target: a.target.to_string(),
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
                target: a.target.to_string(),
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
        self.out
            .push_back(Output::Event(Event::ConnectDone(outcome)));
    }

    /// Lines to send first on a new connection: `IAM` (with the nonce when this is a reverse
    /// connect someone asked for). Also binds outbound connections to connects.
    pub(super) fn unl_on_open(&mut self, conn: ConnId, addr: SocketAddr, direction: Direction) {
        let mut nonce = None;
        self.punch_on_open(addr);
        if direction == Direction::Outbound {
            if let Some(id) = self.attempt_dials.remove(&addr) {
                self.conn_attempt.insert(conn, id);
            }
            if let Some(r) = self.reverse_dials.remove(&addr) {
                nonce = Some(r.nonce);
                self.conn_expect.insert(conn, r.node);
            }
        }
        self.out.push_back(Output::Send {
            conn,
            line: Control::Iam {
                node: self.node_id,
                nonce,
            }
            .to_string(),
        });
    }

    /// A dial failed: the try that made it fails.
    pub(super) fn unl_on_dial_failed(&mut self, now: Instant, addr: SocketAddr, reason: &str) {
        self.reverse_dials.remove(&addr);
        self.punch_on_dial_failed(addr);
        if let Some(id) = self.attempt_dials.remove(&addr) {
            match self.method_of(id, addr) {
                Method::Punch => self.punch_dial_failed(now, id, reason),
                method => self.try_failed(now, id, method, Some(addr), reason),
            }
        }
    }

    /// A connection closed: a try waiting on it fails.
    pub(super) fn unl_on_closed(
        &mut self,
        now: Instant,
        conn: ConnId,
        addr: SocketAddr,
        reason: &str,
    ) {
        self.conn_expect.remove(&conn);
        if let Some(id) = self.conn_attempt.remove(&conn) {
            match self.method_of(id, addr) {
                Method::Punch => self.punch_dial_failed(now, id, &format!("closed: {reason}")),
                method => {
                    self.try_failed(now, id, method, Some(addr), &format!("closed: {reason}"));
                }
            }
        }
    }

    /// The peer's HELLO arrived. A connect whose target has no node id wins here; one that
    /// expected an `IAM` first fails.
    pub(super) fn unl_on_hello(&mut self, now: Instant, conn: ConnId) {
        let Some(&id) = self.conn_attempt.get(&conn) else {
            return;
        };
        let Some(addr) = self.conns.get(&conn).map(|p| p.addr) else {
            return;
        };
        let method = self.method_of(id, addr);
        let wants_id = self
            .attempts
            .get(&id)
            .is_some_and(|a| a.target.node_id.is_some());
        if wants_id {
            self.close(
                now,
                conn,
                "the peer did not say its node id (no IAM before HELLO)",
            );
        } else {
            self.conn_attempt.remove(&conn);
            self.finish(now, id, Ok((conn, method, addr)));
        }
    }

    /// `P2P/1 IAM <node> [<nonce>]` arrived on `conn`.
    pub(super) fn handle_iam(
        &mut self,
        now: Instant,
        conn: ConnId,
        node: NodeId,
        nonce: Option<Nonce>,
    ) {
        let Some(p) = self.conns.get_mut(&conn) else {
            return;
        };
        if p.node.is_some() || p.id.is_some() {
            self.close(
                now,
                conn,
                "protocol error: IAM must come once, before HELLO",
            );
            return;
        }
        p.node = Some(node);
        let (addr, direction) = (p.addr, p.direction);
        if let Some(nonce) = nonce {
            if direction != Direction::Inbound {
                self.close(
                    now,
                    conn,
                    "protocol error: a nonce on a connection we dialed",
                );
                return;
            }
            let found = self
                .attempts
                .iter()
                .find(|(_, a)| a.nonce == nonce)
                .map(|(id, a)| (*id, a.target.node_id));
            match found {
                None => self.close(now, conn, "unknown or expired reverse-connect nonce"),
                Some((_, expected)) if expected != Some(node) => {
                    self.close(
                        now,
                        conn,
                        "reverse connect from a node other than the one asked",
                    );
                }
                Some((id, _)) => {
                    let method = if self.relayed.contains(&conn) {
                        Method::Relay
                    } else {
                        Method::Reverse
                    };
                    self.finish(now, id, Ok((conn, method, addr)));
                }
            }
            return;
        }
        if let Some(expected) = self.conn_expect.remove(&conn)
            && expected != node
        {
            self.close(
                now,
                conn,
                &format!("reverse connect reached node {node}, not {expected} who asked"),
            );
            return;
        }
        if let Some(id) = self.conn_attempt.remove(&conn) {
            let method = self.method_of(id, addr);
            let expected = self.attempts.get(&id).and_then(|a| a.target.node_id);
            if expected.is_none_or(|e| e == node) {
                self.finish(now, id, Ok((conn, method, addr)));
            } else {
                let why = format!("reached node {node} there, not the one in the UNL");
                self.close(now, conn, &why);
                self.try_failed(now, id, method, Some(addr), &why);
            }
        }
    }

    fn method_of(&self, id: ConnectId, addr: SocketAddr) -> Method {
        let Some(a) = self.attempts.get(&id) else {
            return Method::Direct;
        };
        if a.punch.as_ref().is_some_and(|p| p.dials.contains(&addr)) {
            return Method::Punch;
        }
        a.tries
            .iter()
            .find(|t| t.addr == Some(addr))
            .map_or(Method::Direct, |t| t.method)
    }

    // ---- the mailbox connection ----

    fn mailbox_timers(&mut self, now: Instant) {
        let Some(m) = self.mailbox.as_mut() else {
            return;
        };
        if let MailboxState::Down(at) = m.state
            && at <= now
        {
            m.state = MailboxState::Connecting;
            self.out.push_back(Output::MailboxDial { server: m.server });
        }
        if m.next_ping.is_some_and(|t| t <= now) {
            m.next_ping = Some(now + MAILBOX_PING);
            m.awaiting.push_back(Awaiting::Ping);
            self.out.push_back(Output::MailboxSend {
                line: Request::Ping.to_string(),
            });
        }
    }

    /// The mailbox connection opened: register and subscribe.
    pub fn handle_mailbox_open(&mut self, _now: Instant) {
        let node = self.node_id.mailbox_id();
        let Some(m) = self.mailbox.as_mut() else {
            return;
        };
        m.state = MailboxState::Opening;
        m.awaiting.clear();
        m.awaiting.push_back(Awaiting::Register);
        m.awaiting.push_back(Awaiting::Subscribe);
        self.out.push_back(Output::MailboxSend {
            line: format!("REGISTER {node} {}", m.secret),
        });
        self.out.push_back(Output::MailboxSend {
            line: Request::Subscribe.to_string(),
        });
    }

    /// The mailbox connection failed or closed: try again later, with backoff.
    pub fn handle_mailbox_closed(&mut self, now: Instant, reason: &str) {
        let Some(m) = self.mailbox.as_mut() else {
            return;
        };
        let was_up = m.state == MailboxState::Up;
        m.state = MailboxState::Down(now + m.retry);
        m.retry = if was_up {
            MAILBOX_FIRST_RETRY
        } else {
            (m.retry * 2).min(MAILBOX_MAX_RETRY)
        };
        m.next_ping = None;
        let lost: Vec<Option<(ConnectId, Method)>> = m
            .awaiting
            .drain(..)
            .filter_map(|w| match w {
                Awaiting::Put(id) => Some(id),
                _ => None,
            })
            .collect();
        let server = m.server;
        self.out.push_back(Output::Event(Event::MailboxDown {
            server,
            reason: reason.to_owned(),
        }));
        for (id, method) in lost.into_iter().flatten() {
            self.try_failed(
                now,
                id,
                method,
                None,
                &format!("the mailbox connection closed: {reason}"),
            );
        }
    }

    /// A line from the mailbox server.
    pub fn handle_mailbox_line(&mut self, now: Instant, line: &str) {
        let reply = match line.parse::<Reply>() {
            Ok(r) => r,
            Err(e) => {
                self.mailbox_fail(now, &format!("bad reply {line:?}: {e}"));
                return;
            }
        };
        if let Reply::Msg(delivery) = reply {
            if let Some(m) = self.mailbox.as_mut() {
                m.awaiting.push_back(Awaiting::Ack);
            }
            self.out.push_back(Output::MailboxSend {
                line: Request::Ack { id: delivery.id }.to_string(),
            });
            let from = delivery.from.as_ref().map(|f| f.as_str().to_owned());
            self.handle_mailbox_message(now, from.as_deref(), &delivery.body);
            return;
        }
        let Some(m) = self.mailbox.as_mut() else {
            return;
        };
        let Some(waiting) = m.awaiting.pop_front() else {
            self.mailbox_fail(now, &format!("unexpected reply {line:?}"));
            return;
        };
        match (waiting, reply) {
            (Awaiting::Register, Reply::Registered { .. })
            | (Awaiting::Ack, Reply::Acked { .. } | Reply::Error(_))
            | (Awaiting::Ping, Reply::Pong)
            | (Awaiting::Put(_), Reply::Stored { .. }) => {}
            (Awaiting::Subscribe, Reply::Subscribed { .. }) => {
                m.state = MailboxState::Up;
                m.retry = MAILBOX_FIRST_RETRY;
                m.next_ping = Some(now + MAILBOX_PING);
                let server = m.server;
                let queued: Vec<(String, Option<(ConnectId, Method)>)> =
                    m.queued.drain(..).collect();
                for (line, id) in queued {
                    m.awaiting.push_back(Awaiting::Put(id));
                    self.out.push_back(Output::MailboxSend { line });
                }
                self.out
                    .push_back(Output::Event(Event::MailboxUp { server }));
            }
            (Awaiting::Put(id), Reply::Error(reason)) => {
                if let Some((id, method)) = id {
                    self.try_failed(
                        now,
                        id,
                        method,
                        None,
                        &format!("the mailbox server refused the request: {reason}"),
                    );
                }
            }
            (w, reply) => {
                self.mailbox_fail(now, &format!("{reply} in answer to {w:?}"));
            }
        }
    }

    fn mailbox_fail(&mut self, now: Instant, reason: &str) {
        if self.mailbox.is_some() {
            self.out.push_back(Output::MailboxClose {
                reason: reason.to_owned(),
            });
            self.handle_mailbox_closed(now, reason);
        }
    }

    /// A message from our mailbox: act on a reverse-connect request.
    fn handle_mailbox_message(&mut self, now: Instant, from: Option<&str>, body: &str) {
        if body.starts_with(RELAY_CONNECT_PREFIX) {
            self.handle_relay_request(now, from, body);
            return;
        }
        if !body.starts_with(REVERSE_CONNECT_PREFIX) {
            self.reverse_refused(from, None, "not a REVERSE_CONNECT or RELAY_CONNECT message");
            return;
        }
        let request = match body.parse::<ReverseRequest>() {
            Ok(r) => r,
            Err(e) => {
                self.reverse_refused(from, None, &e);
                return;
            }
        };
        let Some(node) = self.proven_sender(from, &request.unl) else {
            return;
        };
        if let Err(why) = self.reverse_allowed(now, node) {
            self.reverse_refused(
                from,
                None,
                &format!("too many reverse-connect requests {why}"),
            );
            return;
        }
        let same_wan = self
            .local_unl
            .is_some_and(|o| o.wan_ip == request.unl.wan_ip && !o.wan_ip.is_unspecified());
        let ip: Ipv4Addr = if same_wan && !request.unl.lan_ip.is_unspecified() {
            request.unl.lan_ip
        } else {
            request.unl.wan_ip
        };
        if request.unl.port == 0 || ip.is_unspecified() {
            self.reverse_refused(from, None, "the UNL has no address and port to dial");
            return;
        }
        let addr = SocketAddr::from((ip, request.unl.port));
        self.reverse_window.push_back((now, node));
        self.reverse_dials.insert(
            addr,
            ReverseDial {
                node,
                nonce: request.nonce,
            },
        );
        self.out.push_back(Output::Event(Event::ReverseRequested {
            from: node.to_string(),
            addr: Some(addr),
            refused: None,
        }));
        // A dial already in flight to that address carries the nonce when it opens.
        if !self.dialing.contains(&addr) {
            self.dial(addr);
        }
    }

    /// The reverse/relay rate limit: whether one more request from `sender` may be acted on
    /// now: at most `max_reverse_per_minute` in all, and a quarter of that (at least one) per
    /// sender, so that one mailbox owner cannot spend the whole budget. `Err` says which.
    fn reverse_allowed(&mut self, now: Instant, sender: NodeId) -> Result<(), String> {
        while self
            .reverse_window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= Duration::from_mins(1))
        {
            self.reverse_window.pop_front();
        }
        let max = self.config.max_reverse_per_minute;
        if self.reverse_window.len() >= max {
            return Err(format!("this minute (limit {max})"));
        }
        let per_sender = max.div_ceil(4).max(1);
        let from_sender = self
            .reverse_window
            .iter()
            .filter(|(_, n)| *n == sender)
            .count();
        if from_sender >= per_sender {
            return Err(format!(
                "from {sender} this minute (limit {per_sender} per sender)"
            ));
        }
        Ok(())
    }

    /// The node id of a request's UNL, if the mailbox server vouched that `from` (the sender)
    /// owns it; else the request is refused (with an event) and `None` returned.
    fn proven_sender(&mut self, from: Option<&str>, unl: &Unl) -> Option<NodeId> {
        let Some(node) = unl.node_id else {
            self.reverse_refused(from, None, "the UNL has no node id");
            return None;
        };
        if from != Some(node.mailbox_id().as_str()) {
            self.reverse_refused(
                from,
                None,
                "the sender did not prove it owns the UNL's node id",
            );
            return None;
        }
        Some(node)
    }

    /// `RELAY_CONNECT` from our mailbox: meet the sender at the relay it names, if it is a
    /// rendezvous server we use ourselves.
    fn handle_relay_request(&mut self, now: Instant, from: Option<&str>, body: &str) {
        let request = match body.parse::<RelayRequest>() {
            Ok(r) => r,
            Err(e) => {
                self.reverse_refused(from, None, &e);
                return;
            }
        };
        let Some(node) = self.proven_sender(from, &request.unl) else {
            return;
        };
        if !self.config.rendezvous.contains(&request.relay) {
            let why = format!(
                "relay {} is not one of our rendezvous servers",
                request.relay
            );
            self.reverse_refused(from, Some(request.relay), &why);
            return;
        }
        if let Err(why) = self.reverse_allowed(now, node) {
            self.reverse_refused(from, None, &format!("too many relay requests {why}"));
            return;
        }
        self.reverse_window.push_back((now, node));
        let relay = RelayId(self.next_relay);
        self.next_relay += 1;
        self.relays.insert(
            relay,
            RelayRole::Asked {
                node,
                nonce: request.nonce,
            },
        );
        self.out.push_back(Output::Event(Event::ReverseRequested {
            from: node.to_string(),
            addr: Some(request.relay),
            refused: None,
        }));
        self.out.push_back(Output::RelayDial {
            relay,
            server: request.relay,
            token: relay_token(&request.nonce),
        });
    }

    fn reverse_refused(&mut self, from: Option<&str>, addr: Option<SocketAddr>, why: &str) {
        self.out.push_back(Output::Event(Event::ReverseRequested {
            from: from.unwrap_or("-").to_owned(),
            addr,
            refused: Some(why.to_owned()),
        }));
    }
}

fn planned(method: Method) -> Try {
    Try {
        method,
        addr: None,
        started_ms: None,
        ended_ms: None,
        result: TryResult::Pending,
    }
}

fn skipped(method: Method, why: &str) -> Try {
    Try {
        method,
        addr: None,
        started_ms: None,
        ended_ms: None,
        result: TryResult::Skipped(why.to_owned()),
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
