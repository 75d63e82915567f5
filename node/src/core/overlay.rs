//! The overlay: connections as the core sees them (open, HELLO, close, the inbound caps),
//! lines received from peers, and flooding broadcasts across the overlay.
//!
//! Every connection opens with `IAM` (see `iam.rs`) and `HELLO`; `HELLO` names the peer's
//! overlay id, so that two connections to one peer are noticed and one of them (the same one
//! on both ends) is closed. A broadcast goes to every other connection once, with its TTL
//! lowered, and is delivered to the application once (the seen-cache drops repeats).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::Rng;

use super::Core;
use super::output::{Direction, Event, LineVerdict, Output};
use super::state::Peer;
use crate::broadcast::{SIGNED_PREFIX, SignedBroadcast};
use crate::ids::ConnId;
use wire::key::PublicKey;
use wire::overlay::{CONTROL_PREFIX, Control, MessageId, PeerId};

impl Core {
    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Who opened `conn` (for relayed and punched connections: who logically dialed).
    pub fn direction_of(&self, conn: ConnId) -> Option<Direction> {
        self.conns.get(&conn).map(|p| p.direction)
    }

    /// Whether `conn` runs through a relay.
    pub fn is_relayed(&self, conn: ConnId) -> bool {
        self.relayed.contains(&conn)
    }

    /// Open connections in `direction`.
    pub fn count(&self, direction: Direction) -> usize {
        self.conns
            .values()
            .filter(|p| p.direction == direction)
            .count()
    }

    /// Open inbound connections from `ip`.
    fn inbound_from(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.conns
            .values()
            .filter(|p| p.direction == Direction::Inbound && p.addr.ip().to_canonical() == ip)
            .count()
    }

    /// Asks the driver to dial `addr` (an application's direct connect: encrypted unless
    /// `plaintext_dials`; a dial for a connect by UNL: as the UNL says).
    pub fn dial(&mut self, addr: SocketAddr) {
        if self.dialing.insert(addr) {
            let security = self.dial_security(addr);
            self.out.push_back(Output::Dial { addr, security });
        }
    }

    /// A plain-text connection opened (a PyP2P peer, or a plain-text dial). Inbound
    /// connections over `max_inbound` are closed at once (returns false).
    pub fn handle_open(
        &mut self,
        now: Instant,
        conn: ConnId,
        addr: SocketAddr,
        direction: Direction,
    ) -> bool {
        self.open_conn(now, conn, addr, direction, None)
    }

    /// An encrypted connection opened: its handshake proved the peer's `key` (its node id and
    /// overlay id must match it). As [`Core::handle_open`] otherwise.
    pub fn handle_secure_open(
        &mut self,
        now: Instant,
        conn: ConnId,
        addr: SocketAddr,
        direction: Direction,
        key: PublicKey,
    ) -> bool {
        self.open_conn(now, conn, addr, direction, Some(key))
    }

    /// The key `conn`'s handshake proved (`None`: plain text, or not open).
    pub fn peer_key(&self, conn: ConnId) -> Option<PublicKey> {
        self.conns.get(&conn).and_then(|p| p.key)
    }

    pub(super) fn open_conn(
        &mut self,
        _now: Instant,
        conn: ConnId,
        addr: SocketAddr,
        direction: Direction,
        key: Option<PublicKey>,
    ) -> bool {
        if direction == Direction::Outbound {
            self.dialing.remove(&addr);
        } else if self.count(Direction::Inbound) >= self.config.max_inbound {
            self.out.push_back(Output::Close {
                conn,
                reason: format!(
                    "inbound limit reached ({} connections)",
                    self.config.max_inbound
                ),
            });
            return false;
        } else if self.inbound_from(addr.ip()) >= self.config.max_inbound_per_ip {
            self.out.push_back(Output::Close {
                conn,
                reason: format!(
                    "inbound limit per IP reached ({} connections from {})",
                    self.config.max_inbound_per_ip,
                    addr.ip().to_canonical()
                ),
            });
            return false;
        }
        self.conns.insert(
            conn,
            Peer {
                addr,
                direction,
                id: None,
                listen: (direction == Direction::Outbound).then_some(addr),
                node: None,
                iam: false,
                key,
                lines_in: 0,
            },
        );
        self.unl_on_open(conn, addr, direction);
        self.out.push_back(Output::Send {
            conn,
            line: Control::Hello {
                peer: self.me,
                listen_port: self.advertised_port(),
            }
            .to_string(),
        });
        self.out.push_back(Output::Event(Event::Connected {
            conn,
            addr,
            direction,
        }));
        true
    }

    /// A dial did not connect.
    pub fn handle_dial_failed(&mut self, now: Instant, addr: SocketAddr, reason: &str) {
        self.dialing.remove(&addr);
        self.out.push_back(Output::Event(Event::DialFailed {
            addr,
            reason: reason.to_owned(),
        }));
        self.unl_on_dial_failed(now, addr, reason);
    }

    /// A connection closed (by the peer, an I/O error, or the driver). Unknown or already
    /// closed connections are ignored.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if !self.switching.is_empty() && self.switch_path_closed(now, conn, reason) {
            return;
        }
        self.pending_follows.remove(&conn);
        if let Some(s) = self.switching.remove(&conn) {
            // The session itself closed (its new path died after the move): its old path
            // goes too.
            if let Some(old) = s.old.filter(|_| !s.old_closed) {
                self.out.push_back(Output::Close {
                    conn: old,
                    reason: format!("the session closed: {reason}"),
                });
            }
        }
        let Some(peer) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(id) = peer.id
            && self.by_peer.get(&id) == Some(&conn)
        {
            self.by_peer.remove(&id);
            // A duplicate the peer has not closed yet stands in (see `handle_hello`).
            if let Some((&other, _)) = self.conns.iter().find(|(_, p)| p.id == Some(id)) {
                self.by_peer.insert(id, other);
            }
        }
        self.out.push_back(Output::Event(Event::Disconnected {
            conn,
            addr: peer.addr,
            reason: reason.to_owned(),
        }));
        self.relayed.remove(&conn);
        self.early_switches.remove(&conn);
        self.moved.remove(&conn);
        self.reported.remove(&conn);
        self.unl_on_closed(now, conn, peer.addr, reason);
        self.after_loss(now);
    }

    /// A line arrived on `conn` (without terminator). Plain lines come back as
    /// [`LineVerdict::Deliver`]; control lines are handled here. While a session moves to
    /// another path (see `switch.rs`), its lines are routed by path there.
    pub fn handle_line(&mut self, now: Instant, conn: ConnId, line: &str) -> LineVerdict {
        if !self.switching.is_empty()
            && let Some(role) = self.switch_role(conn)
        {
            return self.switch_line(now, role, line);
        }
        if !self.pending_follows.is_empty() && self.hold_for_follow(conn, line) {
            return LineVerdict::Consumed;
        }
        let Some(p) = self.conns.get_mut(&conn) else {
            // A connection the core closed (a duplicate, a protocol error) whose socket
            // still had lines read in the same pass: they are not the session's. A
            // broadcast among them must not count as seen: its copy on the connection
            // that stays is the one delivered.
            tracing::debug!(%conn, "line on a closed connection dropped");
            return LineVerdict::Consumed;
        };
        p.lines_in += 1;
        self.process_line(now, conn, line)
    }

    /// [`Core::handle_line`] for a line of session `conn`, wherever it came from.
    pub(super) fn process_line(&mut self, now: Instant, conn: ConnId, line: &str) -> LineVerdict {
        if !line.starts_with(CONTROL_PREFIX) {
            return LineVerdict::Deliver;
        }
        match Control::parse(line) {
            None => LineVerdict::Deliver,
            Some(Err(e)) => {
                self.close(now, conn, &format!("protocol error: {e}"));
                LineVerdict::Consumed
            }
            Some(Ok(Control::Hello { peer, listen_port })) => {
                self.handle_hello(now, conn, peer, listen_port);
                if self.conns.contains_key(&conn) {
                    self.unl_on_hello(now, conn);
                }
                LineVerdict::Consumed
            }
            Some(Ok(Control::Iam { node, nonce })) => {
                self.handle_iam(now, conn, node, nonce);
                if !self.pending_follows.is_empty() {
                    self.retry_follows(now, conn, node);
                }
                LineVerdict::Consumed
            }
            Some(Ok(Control::Broadcast { id, ttl, payload })) => {
                self.handle_broadcast(now, conn, id, ttl, payload);
                LineVerdict::Consumed
            }
            Some(Ok(Control::Switch { .. })) if self.relayed.contains(&conn) => {
                // The peer moved to a direct path we have not seen prove itself yet: nothing
                // more comes here from it (see `switch.rs`).
                self.early_switches.insert(conn);
                LineVerdict::Consumed
            }
            Some(Ok(Control::Switch { .. })) => {
                // On a direct connection from a node we talk to through a relay: the peer
                // chose this path for the session; follow (see `switch.rs`).
                if self.follow_switch(now, conn, line) {
                    return LineVerdict::Consumed;
                }
                self.close(
                    now,
                    conn,
                    "protocol error: SWITCH on a connection that is not moving to another path",
                );
                LineVerdict::Consumed
            }
        }
    }

    fn handle_hello(&mut self, now: Instant, conn: ConnId, peer: PeerId, listen_port: u16) {
        let Some(p) = self.conns.get(&conn) else {
            return;
        };
        if p.id.is_some() {
            self.close(now, conn, "protocol error: a second HELLO");
            return;
        }
        if let Some(key) = p.key
            && key.peer_id() != peer
        {
            let why = format!(
                "protocol error: HELLO names peer {peer}, but the connection proved key {key} \
                 (peer {})",
                key.peer_id()
            );
            self.close(now, conn, &why);
            return;
        }
        if peer == self.me {
            if p.direction == Direction::Outbound {
                self.self_addrs.insert(p.addr);
            }
            self.close(now, conn, "connection to self");
            return;
        }
        let direction = p.direction;
        let ip = p.addr.ip();
        if let Some(&other) = self.by_peer.get(&peer)
            && other != conn
            && self.relayed.contains(&other) != self.relayed.contains(&conn)
        {
            // A relayed and a direct connection to one peer: the direct one is a path the
            // relayed session may move to (see `switch.rs`), not a duplicate.
        } else if let Some(&other) = self.by_peer.get(&peer)
            && other != conn
            && self.switch_role(conn).is_some()
        {
            // A path of a session being moved: not a duplicate either.
        } else if let Some(&other) = self.by_peer.get(&peer)
            && other != conn
        {
            // Two connections to one peer. Both ends keep the one dialed by the smaller id,
            // so they agree on the survivor without talking. Same direction: the side that
            // dialed both decides (it keeps the older; a connect keeps the one it reported),
            // the other keeps both until that side closes one: when each side chose by its
            // own order (handshakes finishing in different orders), they could close the two
            // different ones and keep none.
            let other_dir = self.conns.get(&other).map(|o| o.direction);
            if other_dir == Some(direction) && direction == Direction::Inbound {
                if let Some(p) = self.conns.get_mut(&conn) {
                    p.id = Some(peer);
                    if listen_port != 0 {
                        p.listen = Some(SocketAddr::new(ip, listen_port));
                    }
                }
                return;
            }
            let dialer = |d: Direction| {
                if d == Direction::Outbound {
                    self.me
                } else {
                    peer
                }
            };
            let keep_new = match other_dir {
                Some(od) if od != direction => dialer(direction) < dialer(od),
                // Both dialed by this side (a connect's dial beside the overlay's to the same
                // peer): this side alone decides, and keeps what a connect reported to the
                // application, else the older.
                _ => self.reported.contains(&conn) && !self.reported.contains(&other),
            };
            // A session that moves or moved to a direct path is what the application holds:
            // it stays, whatever else the rule above would keep (both ends keep their
            // session; a second direct connection next to it is the duplicate).
            let keep_new = if self.is_session_on_the_move(other) {
                false
            } else {
                keep_new || self.is_session_on_the_move(conn)
            };
            let (loser, winner) = if keep_new {
                (other, conn)
            } else {
                (conn, other)
            };
            tracing::debug!(%conn, %other, ?direction, ?other_dir, %loser, moved_conn = self.moved.contains(&conn), moved_other = self.moved.contains(&other), relayed_conn = self.relayed.contains(&conn), relayed_other = self.relayed.contains(&other), "duplicate connection");
            self.close(now, loser, &format!("duplicate connection to peer {peer}"));
            if loser == conn {
                return;
            }
            self.by_peer.insert(peer, winner);
        }
        if let Some(p) = self.conns.get_mut(&conn) {
            p.id = Some(peer);
            if listen_port != 0 {
                p.listen = Some(SocketAddr::new(ip, listen_port));
            }
        }
        self.by_peer.entry(peer).or_insert(conn);
    }

    /// Closes a connection the core decided to drop.
    pub(super) fn close(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.out.push_back(Output::Close {
            conn,
            reason: reason.to_owned(),
        });
        self.handle_closed(now, conn, reason);
    }

    /// Floods `payload` to the whole overlay; returns its id. The origin does not deliver its
    /// own broadcast to itself.
    pub fn broadcast(&mut self, now: Instant, payload: &str) -> MessageId {
        let id = MessageId(self.rng.random());
        self.flood(now, id, payload);
        id
    }

    /// Floods `line` signed by our key (see [`crate::broadcast`]): every receiver can check
    /// that we wrote it. Dated by the clock the driver gives ([`Core::set_unix_time`]).
    pub fn broadcast_signed(&mut self, now: Instant, line: &str) -> MessageId {
        let id = MessageId(self.rng.random());
        let unix_ms = self.unix_ms(now).unwrap_or(0);
        let signed = SignedBroadcast::sign(&self.identity, id, unix_ms, line);
        self.flood(now, id, &signed.to_string());
        id
    }

    fn flood(&mut self, now: Instant, id: MessageId, payload: &str) {
        self.seen.insert(id, now);
        let line = Control::Broadcast {
            id,
            ttl: self.config.broadcast_ttl.max(1),
            payload: payload.to_owned(),
        }
        .to_string();
        let mut targets: Vec<ConnId> = self.conns.keys().copied().collect();
        targets.sort_unstable();
        for conn in targets {
            self.out.push_back(Output::Send {
                conn,
                line: line.clone(),
            });
        }
    }

    fn handle_broadcast(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: MessageId,
        ttl: u8,
        payload: String,
    ) {
        if !self.seen.insert(id, now) {
            return;
        }
        // An origin-signed line: delivered with its writer's key, or dropped (and not
        // forwarded) when the signature or its time does not hold.
        let mut signer = None;
        if payload.starts_with(SIGNED_PREFIX) {
            let limit_ms = super::millis(self.config.seen_lifetime);
            let checked = payload.parse::<SignedBroadcast>().and_then(|b| {
                if let Some(now_ms) = self.unix_ms(now) {
                    b.check_time(now_ms, limit_ms)?;
                }
                b.verify(id).map(|key| (key, b.into_line()))
            });
            match checked {
                Ok(ok) => signer = Some(ok),
                Err(e) => {
                    tracing::warn!(%conn, %id, error = %e, "signed broadcast refused");
                    return;
                }
            }
        }
        if ttl > 1 {
            let line = Control::Broadcast {
                id,
                ttl: ttl - 1,
                payload: payload.clone(),
            }
            .to_string();
            let mut targets: Vec<ConnId> =
                self.conns.keys().copied().filter(|c| *c != conn).collect();
            targets.sort_unstable();
            for target in targets {
                self.out.push_back(Output::Send {
                    conn: target,
                    line: line.clone(),
                });
            }
        }
        let output = match signer {
            Some((signer, line)) => Output::DeliverSigned { conn, line, signer },
            None => Output::Deliver {
                conn,
                line: payload,
            },
        };
        self.out.push_back(output);
    }
}
