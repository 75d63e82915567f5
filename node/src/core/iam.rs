//! Who is on a connection: how it starts (plain or encrypted, see [`Security`]), the `IAM`
//! line, and which connect a connection belongs to.
//!
//! Every connection opens with `P2P/1 IAM <our node id> [<nonce>]` (before `HELLO`): the nonce
//! only on a reverse connect or relay someone asked us for. A connection dialed for a connect
//! by UNL wins when the peer's `IAM` names the node id in the UNL; an inbound connection wins
//! a reverse or relay try only with the nonce we posted, from the node we asked. On an
//! encrypted connection the handshake proved the peer's key: its `IAM` must name that key's
//! node id, and a connect to a v3 UNL wins only on a connection that proved the UNL's key (a
//! plain-text one never does). Anything else is closed with the reason. A dial or connection
//! that fails makes its try fail.

use std::net::SocketAddr;
use std::time::Instant;

use super::Core;
use super::output::{Direction, Output, Security};
use super::state::{Attempt, RelayRole};
use crate::connect::Method;
use crate::ids::{ConnId, ConnectId, RelayId};
use wire::key::PublicKey;
use wire::overlay::{Control, Nonce};
use wire::unl::NodeId;

impl Core {
    /// How a dial to `addr` starts: for a connect by UNL, encrypted to the UNL's key (v3) or
    /// plain (v2); for a reverse connect someone asked for, encrypted to the key that signed
    /// the request or plain (an unsigned PyP2P request); else (bootstrap, by address)
    /// encrypted to whoever answers, unless `plaintext_dials`.
    pub(super) fn dial_security(&self, addr: SocketAddr) -> Security {
        let to = |key: Option<PublicKey>| match key {
            Some(key) => Security::Initiate { expect: Some(key) },
            None => Security::Plain,
        };
        if let Some(a) = self
            .attempt_dials
            .get(&addr)
            .and_then(|id| self.attempts.get(id))
        {
            return to(a.key());
        }
        if let Some(r) = self.reverse_dials.get(&addr) {
            return to(r.key);
        }
        if self.config.plaintext_dials {
            Security::Plain
        } else {
            Security::Initiate { expect: None }
        }
    }

    /// How relayed connection `relay` starts: the asked side begins the handshake (the
    /// asker's key, from its signed request, is the one it expects) the moment the relay
    /// splices the streams, and the asker answers and checks that the target's key arrived;
    /// plain text for PyP2P requests and v2 targets.
    ///
    /// Why the asked side begins, unlike a dial: the asker learns the other key from the
    /// third message, which carries the asked side's `IAM` right behind it, so the asker's
    /// connect ends one round trip after the splice (the other way round it would end one
    /// and a half round trips after it, the asked side's `IAM` having to wait for the third
    /// message to arrive there).
    pub(super) fn relay_security(&self, relay: RelayId) -> Security {
        match self.relays.get(&relay) {
            Some(RelayRole::Asker(id)) => match self.attempts.get(id).and_then(Attempt::key) {
                Some(key) => Security::Respond { expect: Some(key) },
                None => Security::Plain,
            },
            Some(RelayRole::Asked { key: Some(key), .. }) => {
                Security::Initiate { expect: Some(*key) }
            }
            _ => Security::Plain,
        }
    }

    /// Whether connection `conn` (which proved `key`, `None`: plain text) may be the one
    /// connect `id` wanted: a connect to a v3 UNL needs the UNL's key.
    fn proves_target(&self, id: ConnectId, key: Option<PublicKey>) -> Result<(), String> {
        match (self.attempts.get(&id).and_then(Attempt::key), key) {
            (None, _) => Ok(()),
            (Some(want), Some(got)) if want == got => Ok(()),
            (Some(want), Some(got)) => Err(format!(
                "the connection proved key {got}, not the key {want} in the UNL"
            )),
            (Some(want), None) => Err(format!(
                "a plain-text connection cannot prove the key {want} in the UNL"
            )),
        }
    }

    /// Lines to send first on a new connection: `IAM` (with the nonce when this is a reverse
    /// connect someone asked for). Also binds outbound connections to connects.
    ///
    /// A connect wins when the peer's `IAM` arrives, on an encrypted connection too (where the
    /// handshake proved the key already): the peer sends it once its side of the handshake is
    /// done, so when the connect reports the connection, the peer has it as well (a line it
    /// writes to its connections at once reaches us).
    pub(super) fn unl_on_open(&mut self, conn: ConnId, addr: SocketAddr, direction: Direction) {
        let mut nonce = None;
        self.punch_on_open(addr);
        if direction == Direction::Outbound {
            if let Some(id) = self.attempt_dials.remove(&addr) {
                self.conn_attempt.insert(conn, id);
                self.punch_dial_opened(id, addr);
            }
            if let Some(r) = self.reverse_dials.remove(&addr) {
                nonce = Some(r.nonce);
                self.conn_expect.insert(conn, (r.node, r.key));
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
        self.punch_on_dial_failed(now, addr);
        if let Some(&id) = self.attempt_dials.get(&addr) {
            match self.method_of(id, addr) {
                Method::Punch => {
                    if self.punch_dial_failed(now, id, addr, reason) {
                        self.attempt_dials.remove(&addr);
                    }
                }
                method => {
                    self.attempt_dials.remove(&addr);
                    self.try_failed(now, id, method, Some(addr), reason);
                }
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
                Method::Punch => {
                    self.punch_dial_failed(now, id, addr, &format!("closed: {reason}"));
                }
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
        if p.iam || p.id.is_some() {
            self.close(
                now,
                conn,
                "protocol error: IAM must come once, before HELLO",
            );
            return;
        }
        p.iam = true;
        p.node = Some(node);
        let (addr, direction, key) = (p.addr, p.direction, p.key);
        if let Some(key) = key
            && key.node_id() != node
        {
            let why = format!(
                "protocol error: IAM names node {node}, but the connection proved key {key} \
                 (node {})",
                key.node_id()
            );
            self.close(now, conn, &why);
            return;
        }
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
                Some((id, _)) if self.proves_target(id, key).is_err() => {
                    let why = self.proves_target(id, key).err().unwrap_or_default();
                    self.close(now, conn, &format!("reverse connect: {why}"));
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
        if let Some((expected, expected_key)) = self.conn_expect.remove(&conn) {
            if expected != node {
                self.close(
                    now,
                    conn,
                    &format!("reverse connect reached node {node}, not {expected} who asked"),
                );
                return;
            }
            if expected_key.is_some() && expected_key != key {
                self.close(
                    now,
                    conn,
                    "reverse connect: the connection did not prove the key that signed the request",
                );
                return;
            }
        }
        if let Some(id) = self.conn_attempt.remove(&conn) {
            let method = self.method_of(id, addr);
            let expected = self.attempts.get(&id).and_then(|a| a.target.node_id);
            let proof = self.proves_target(id, key);
            if expected.is_some_and(|e| e != node) {
                let why = format!("reached node {node} there, not the one in the UNL");
                self.close(now, conn, &why);
                self.try_failed(now, id, method, Some(addr), &why);
            } else if let Err(why) = proof {
                self.close(now, conn, &why);
                self.try_failed(now, id, method, Some(addr), &why);
            } else {
                self.finish(now, id, Ok((conn, method, addr)));
            }
        }
        // Otherwise, a direct connection from a node we talk to through a relay: the side
        // that asked for the connect decides whether the session moves here (it sends
        // `SWITCH` on the path it keeps, see `switch.rs`); this side follows.
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
}

#[cfg(test)]
mod tests;
