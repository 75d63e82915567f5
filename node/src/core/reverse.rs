//! Reverse connects and relays, from both ends.
//!
//! **Asking** (a try of a connect by UNL): the reverse try posts
//! `REVERSE_CONNECT:<our UNL>:<nonce>` to the target's mailbox and waits for them to dial us
//! (the connection wins in `iam.rs` when it opens with that nonce); the relay try posts
//! `RELAY_CONNECT:<our UNL>:<nonce>:<rendezvous>` and goes to that rendezvous itself with
//! `RELAY <token>` ([`Output::RelayDial`]).
//!
//! Between nodes that both have a signed UNL (v3) the requests are signed (`REVERSE3`,
//! `RELAY3`, see [`wire::signal`]) and the connection that answers must prove the key.
//!
//! **Being asked** is in `asked.rs`.

use std::net::SocketAddr;
use std::time::Instant;

use super::output::{Direction, Event, Output, RequestCheck};
use super::state::{RelayRole, ReverseDial};
use super::{Core, millis};
use crate::connect::{Method, RelayRequest, ReverseRequest};
use crate::ids::{ConnId, ConnectId, RelayId};
use wire::key::PublicKey;
use wire::mailbox::{self, Request};
use wire::punch::relay_token;
use wire::signal::RequestKind;

impl Core {
    pub(super) fn start_reverse(&mut self, now: Instant, id: ConnectId) {
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
        if a.request_posted {
            // The IPv6 try posted the request (see `ipv6.rs`): they dial both our addresses.
            return;
        }
        let Some(node) = a.target.node_id else { return };
        let nonce = a.nonce;
        let body = match self.signed_request(now, id, RequestKind::Reverse) {
            Some(Ok(body)) => body,
            Some(Err(why)) => {
                self.try_failed(now, id, Method::Reverse, None, &why);
                return;
            }
            None => ReverseRequest { unl: ours, nonce }.to_string(),
        };
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
        let body = match self.signed_request(now, id, RequestKind::Relay { relay: server }) {
            Some(Ok(body)) => body,
            Some(Err(why)) => {
                self.relays.remove(&relay);
                self.try_failed(now, id, Method::Relay, None, &why);
                return;
            }
            None => RelayRequest {
                unl: ours,
                nonce,
                relay: server,
            }
            .to_string(),
        };
        match node.mailbox_id().parse::<mailbox::NodeId>() {
            Ok(to) => {
                self.relays.insert(relay, RelayRole::Asker(id));
                let security = self.relay_security(relay);
                self.out.push_back(Output::RelayDial {
                    relay,
                    server,
                    token: relay_token(&nonce),
                    security,
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

    /// A relayed connection is through (and its handshake, if any, done: `key` is the key it
    /// proved): `conn` is now a connection like any other (its address is the relay's).
    /// Returns false when the core closed it at once.
    pub fn handle_relay_open(
        &mut self,
        now: Instant,
        relay: RelayId,
        conn: ConnId,
        server: SocketAddr,
        key: Option<PublicKey>,
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
        if let RelayRole::Asked { node, nonce, key } = role {
            self.reverse_dials
                .insert(server, ReverseDial { node, nonce, key });
        }
        let open = self.open_conn(now, conn, server, direction, key);
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
            Some(RelayRole::Asked { node, key, .. }) => {
                self.out.push_back(Output::Event(Event::ReverseRequested {
                    from: node.to_string(),
                    addr: None,
                    refused: Some(format!("relay failed: {reason}")),
                    signed: key.is_some(),
                    check: RequestCheck::Refused,
                }));
            }
            None => {}
        }
    }
}
