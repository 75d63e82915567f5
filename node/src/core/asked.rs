//! Being asked to connect: reverse-connect and relay requests from our mailbox, and the
//! signed requests of our own (`REVERSE3`, `RELAY3`, [`wire::signal`]).
//!
//! **Signed** (from a node with a v3 UNL): the request carries the sender's signed UNL, our
//! node id, a timestamp and a nonce, signed by the UNL's key. It is acted on only when both
//! signatures verify, it names us, its time is within the window of our (rendezvous-
//! corrected) clock, it was not seen before ([`ReplayCache`]), and the sender's key and the IP
//! we would dial are both within their rate limits. The connection we then open must prove
//! the sender's key (our reverse dial initiates the handshake to it; on a relay we answer
//! the sender's handshake and check it), so a forged request cannot make us talk to anyone
//! else, and a mailbox server cannot make us dial an address of its choosing.
//!
//! **Unsigned** (`REVERSE_CONNECT`, `RELAY_CONNECT`: PyP2P's format, from a v2 peer): acted on
//! only when the mailbox server vouches that the sender owns the UNL's node id, within the
//! per-sender and per-IP limits, and answered in plain text (a v2 peer speaks no Noise).
//!
//! Every request, acted on or refused, is reported as [`Event::ReverseRequested`] with a
//! [`RequestCheck`] (the driver logs it and counts it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use super::Core;
use super::output::{Direction, Event, Output, RequestCheck, Security};
use super::state::{RelayRole, ReverseDial};
use crate::connect::{RELAY_CONNECT_PREFIX, REVERSE_CONNECT_PREFIX, RelayRequest, ReverseRequest};
use crate::ids::{ConnectId, RelayId};
use wire::key::{KeyError, PublicKey};
use wire::overlay::Nonce;
use wire::punch::relay_token;
use wire::rendezvous::NodeType;
use wire::signal::{RELAY_PREFIX, REVERSE_PREFIX, RequestKind, SignalError, SignedRequest};
use wire::unl::v3::UnlV3Error;
use wire::unl::{NodeId, Unl};

/// What a request asks for, once checked: who, with which nonce and key.
struct Asker {
    node: NodeId,
    nonce: Nonce,
    /// The key that signed it (`None`: unsigned, plain text).
    key: Option<PublicKey>,
}

impl Core {
    /// Sets the wall clock the core dates and checks signed requests by: `unix_ms` is the
    /// Unix time (in milliseconds, corrected to the rendezvous' or NTP's clock) at `now`.
    pub fn set_unix_time(&mut self, now: Instant, unix_ms: u64) {
        self.clock = Some((now, unix_ms));
    }

    /// Unix milliseconds at `now`, from the last [`Core::set_unix_time`].
    pub(super) fn unix_ms(&self, now: Instant) -> Option<u64> {
        let (at, ms) = self.clock?;
        Some(if now >= at {
            ms.saturating_add(super::millis(now - at))
        } else {
            ms.saturating_sub(super::millis(at - now))
        })
    }

    /// The signed request of connect `id` (`None`: send PyP2P's unsigned one, because the
    /// target or this node has no v3 UNL).
    pub(super) fn signed_request(
        &mut self,
        now: Instant,
        id: ConnectId,
        kind: RequestKind,
    ) -> Option<Result<String, String>> {
        let a = self.attempts.get(&id)?;
        let target = a.signed.as_ref()?;
        let Some(ours) = self.local_unl3.clone() else {
            return Some(Err(
                "this node has no signed UNL to put in a signed request".to_owned(),
            ));
        };
        let Some(now_ms) = self.unix_ms(now) else {
            return Some(Err("no wall clock to date a signed request".to_owned()));
        };
        let request = SignedRequest::sign(
            kind,
            ours,
            target.node_id(),
            now_ms,
            a.nonce,
            self.identity.secret(),
        );
        Some(request.map(|r| r.to_string()).map_err(|e| e.to_string()))
    }

    /// A message from our mailbox: act on a reverse-connect or relay request, or refuse it.
    pub(super) fn handle_mailbox_message(&mut self, now: Instant, from: Option<&str>, body: &str) {
        let word = body.split(' ').next().unwrap_or("");
        if word == REVERSE_PREFIX || word == RELAY_PREFIX {
            self.handle_signed_request(now, from, body);
        } else if body.starts_with(RELAY_CONNECT_PREFIX) || body.starts_with(REVERSE_CONNECT_PREFIX)
        {
            self.handle_unsigned(now, from, body);
        } else {
            self.request_refused(
                from,
                None,
                false,
                RequestCheck::Malformed,
                "not a REVERSE3, RELAY3, REVERSE_CONNECT or RELAY_CONNECT message",
            );
        }
    }

    /// `REVERSE3` / `RELAY3`: checked (signatures, recipient, time, replay, limits), then
    /// acted on with the sender's key as the one the connection must prove.
    fn handle_signed_request(&mut self, now: Instant, from: Option<&str>, body: &str) {
        let request = match body.parse::<SignedRequest>() {
            Ok(r) => r,
            Err(e) => {
                let check = match &e {
                    SignalError::Key(KeyError::BadSignature { .. })
                    | SignalError::Unl(UnlV3Error::Key(KeyError::BadSignature { .. })) => {
                        RequestCheck::Forged
                    }
                    _ => RequestCheck::Malformed,
                };
                self.request_refused(from, None, true, check, &e.to_string());
                return;
            }
        };
        let key = *request.unl().key();
        let sender = key.node_id().to_string();
        let Some(now_ms) = self.unix_ms(now) else {
            let why = "no wall clock to check the request's time";
            self.request_refused(Some(&sender), None, true, RequestCheck::Refused, why);
            return;
        };
        if let Err(e) = request.check(&self.node_id, now_ms, &mut self.replay) {
            let check = match e {
                SignalError::NotForMe { .. } => RequestCheck::NotForUs,
                SignalError::Stale { .. } | SignalError::FromFuture { .. } => RequestCheck::Stale,
                _ => RequestCheck::Replayed,
            };
            self.request_refused(Some(&sender), None, true, check, &e.to_string());
            return;
        }
        let asker = Asker {
            node: key.node_id(),
            nonce: request.nonce(),
            key: Some(key),
        };
        let unl = request.unl().to_v2();
        match request.kind() {
            RequestKind::Reverse => {
                let ipv6 = self.their_ipv6(request.unl());
                self.act_reverse(now, &asker, &unl, ipv6);
            }
            RequestKind::Relay { relay } => self.act_relay(now, &asker, &unl, relay),
        }
    }

    /// PyP2P's `REVERSE_CONNECT:<UNL>:<nonce>`, and our `RELAY_CONNECT:<UNL>:<nonce>:<relay>`
    /// from a node without a signed UNL: acted on when the mailbox vouches for the sender.
    fn handle_unsigned(&mut self, now: Instant, from: Option<&str>, body: &str) {
        let parsed = if body.starts_with(RELAY_CONNECT_PREFIX) {
            body.parse::<RelayRequest>()
                .map(|r| (r.unl, r.nonce, Some(r.relay)))
        } else {
            body.parse::<ReverseRequest>()
                .map(|r| (r.unl, r.nonce, None))
        };
        let (unl, nonce, relay) = match parsed {
            Ok(r) => r,
            Err(e) => {
                self.request_refused(from, None, false, RequestCheck::Malformed, &e);
                return;
            }
        };
        let Some(node) = self.proven_sender(from, &unl) else {
            return;
        };
        let asker = Asker {
            node,
            nonce,
            key: None,
        };
        match relay {
            Some(relay) => self.act_relay(now, &asker, &unl, relay),
            None => self.act_reverse(now, &asker, &unl, None),
        }
    }

    /// Dials the asker at its UNL's address (its LAN address when we share its WAN one),
    /// within the limits. With `ipv6` (both of us have an IPv6 address, see `ipv6.rs`), also
    /// dials that from our listening port, where the asker's own dial opened its firewall:
    /// then the IPv4 address only when the asker is passive (anything else drops the SYN).
    fn act_reverse(&mut self, now: Instant, asker: &Asker, unl: &Unl, ipv6: Option<SocketAddr>) {
        let (from, signed) = (asker.node.to_string(), asker.key.is_some());
        let same_wan = self
            .local_unl
            .is_some_and(|o| o.wan_ip == unl.wan_ip && !o.wan_ip.is_unspecified());
        let ip: Ipv4Addr = if same_wan && !unl.lan_ip.is_unspecified() {
            unl.lan_ip
        } else {
            unl.wan_ip
        };
        let v4 = (unl.port != 0 && !ip.is_unspecified())
            .then(|| SocketAddr::from((ip, unl.port)))
            .filter(|_| ipv6.is_none() || unl.node_type == NodeType::Passive);
        let Some(first) = ipv6.or(v4) else {
            let why = "the UNL has no address and port to dial";
            self.request_refused(Some(&from), None, signed, RequestCheck::Refused, why);
            return;
        };
        if let Err(why) = self.spend(now, asker, first.ip()) {
            let why = format!("too many reverse-connect requests {why}");
            self.request_refused(Some(&from), None, signed, RequestCheck::RateLimited, &why);
            return;
        }
        for addr in ipv6.into_iter().chain(v4) {
            self.out.push_back(Output::Event(Event::ReverseRequested {
                from: from.clone(),
                addr: Some(addr),
                refused: None,
                signed,
                check: RequestCheck::Accepted,
            }));
        }
        if let Some(addr) = ipv6 {
            // Reported inbound: the asker's dial shares this connection and begins the
            // handshake (to our key); we answer and check that it proves the asker's.
            self.out.push_back(Output::PunchDial {
                addr,
                from_port: self.config.listen_port,
                at: now,
                timeout: self.config.punch_timeout,
                direction: Direction::Inbound,
                fresh: false,
                security: Security::Respond { expect: asker.key },
            });
        }
        let Some(addr) = v4 else {
            return;
        };
        self.reverse_dials.insert(
            addr,
            ReverseDial {
                node: asker.node,
                nonce: asker.nonce,
                key: asker.key,
            },
        );
        // A dial already in flight to that address carries the nonce when it opens (and the
        // key is checked when its IAM arrives).
        if !self.dialing.contains(&addr) {
            self.dial(addr);
        }
    }

    /// Meets the asker at `relay`, if it is one of our own rendezvous servers, within the
    /// limits.
    fn act_relay(&mut self, now: Instant, asker: &Asker, unl: &Unl, relay: SocketAddr) {
        let (from, signed) = (asker.node.to_string(), asker.key.is_some());
        if !self.config.rendezvous.contains(&relay) {
            let why = format!("relay {relay} is not one of our rendezvous servers");
            self.request_refused(
                Some(&from),
                Some(relay),
                signed,
                RequestCheck::Refused,
                &why,
            );
            return;
        }
        if let Err(why) = self.spend(now, asker, IpAddr::V4(unl.wan_ip)) {
            let why = format!("too many relay requests {why}");
            self.request_refused(Some(&from), None, signed, RequestCheck::RateLimited, &why);
            return;
        }
        let id = RelayId(self.next_relay);
        self.next_relay += 1;
        self.relays.insert(
            id,
            RelayRole::Asked {
                node: asker.node,
                nonce: asker.nonce,
                key: asker.key,
            },
        );
        self.out.push_back(Output::Event(Event::ReverseRequested {
            from,
            addr: Some(relay),
            refused: None,
            signed,
            check: RequestCheck::Accepted,
        }));
        let security = self.relay_security(id);
        self.out.push_back(Output::RelayDial {
            relay: id,
            server: relay,
            token: relay_token(&asker.nonce),
            security,
        });
    }

    /// Spends one request of the asker's budget (per node, i.e. per key) and of the budget
    /// of the IP it makes us reach (so that many keys cannot aim us at one victim).
    /// Nothing is spent when either refuses.
    fn spend(&mut self, now: Instant, asker: &Asker, ip: IpAddr) -> Result<(), String> {
        let attempt = Some((asker.node, asker.nonce));
        self.reverse_budget.allows(now, asker.node, attempt)?;
        self.reverse_ip_budget
            .take(now, ip, Some(asker.nonce))
            .map_err(|why| format!("to {ip} {why}"))?;
        self.reverse_budget.take(now, asker.node, attempt)
    }

    /// The node id of an unsigned request's UNL, if the mailbox server vouched that `from`
    /// (the sender) owns it; else the request is refused (with an event) and `None` returned.
    fn proven_sender(&mut self, from: Option<&str>, unl: &Unl) -> Option<NodeId> {
        let Some(node) = unl.node_id else {
            let why = "the UNL has no node id";
            self.request_refused(from, None, false, RequestCheck::Malformed, why);
            return None;
        };
        if from != Some(node.mailbox_id().as_str()) {
            let why = "the sender did not prove it owns the UNL's node id";
            self.request_refused(from, None, false, RequestCheck::Unproven, why);
            return None;
        }
        Some(node)
    }

    fn request_refused(
        &mut self,
        from: Option<&str>,
        addr: Option<SocketAddr>,
        signed: bool,
        check: RequestCheck,
        why: &str,
    ) {
        self.out.push_back(Output::Event(Event::ReverseRequested {
            from: from.unwrap_or("-").to_owned(),
            addr,
            refused: Some(why.to_owned()),
            signed,
            check,
        }));
    }
}

#[cfg(test)]
mod tests;
