//! The dht-msg mailbox client: one persistent line connection to our mailbox server.
//!
//! It registers our mailbox (named after our key) by signing the server's challenge
//! (`CHALLENGE`, then `REGISTER_KEY <key> <signature>`, see [`KeyRegistration`]); a server
//! without signed registration (it answers `CHALLENGE` with an `ERROR`: a PyP2P-era dht-msg)
//! gets `REGISTER <our mailbox id> <secret>` instead, logged once. Then it subscribes, so
//! reverse-connect and relay requests addressed to us arrive as they are posted (they are
//! acted on in `reverse.rs`); our own requests to other nodes go out as `PUT`s, queued while
//! the connection is down. Replies are matched to requests in order. A `PING` every
//! [`MAILBOX_PING`] keeps the connection alive; a lost connection is reopened with backoff
//! ([`MAILBOX_FIRST_RETRY`] doubling up to [`MAILBOX_MAX_RETRY`]), and the tries whose `PUT`
//! was lost with it fail.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Core;
use super::output::{Event, Output};
use super::state::{Awaiting, MailboxClient, MailboxState};
use crate::connect::Method;
use crate::ids::ConnectId;
use wire::mailbox::{KeyRegistration, RegisterStep, Reply, Request};

/// First reconnect delay of the mailbox connection; doubles up to [`MAILBOX_MAX_RETRY`].
const MAILBOX_FIRST_RETRY: Duration = Duration::from_secs(1);
const MAILBOX_MAX_RETRY: Duration = Duration::from_mins(1);
/// Keep-alive on the mailbox connection at most this far apart (the server closes idle ones
/// after 5 min); `keepalive` when that is shorter (NATs on the path may forget sooner).
const MAILBOX_PING: Duration = Duration::from_mins(2);
/// PUTs queued while the mailbox is down, at most.
const MAILBOX_MAX_QUEUED: usize = 256;

impl Core {
    /// Keeps a connection to the dht-msg server `server`: registers our mailbox, subscribes to
    /// it (reverse-connect requests arrive there) and reconnects when it drops.
    pub fn enable_mailbox(&mut self, now: Instant, server: SocketAddr) {
        // Derived from our key, so the mailbox (named after our key too) is ours again after
        // a restart: a random one would be refused by a server that keeps the mailbox.
        let secret = self
            .identity
            .derived_secret(&format!("mailbox {server}"), 32);
        self.mailbox = Some(MailboxClient {
            server,
            secret,
            registration: None,
            fallback_logged: false,
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

    /// The mailbox's timers (reconnect, keep-alive), for [`Core::poll_timeout`].
    pub(super) fn mailbox_next_timer(&self) -> Option<Instant> {
        self.mailbox
            .iter()
            .flat_map(|m| {
                let retry = match m.state {
                    MailboxState::Down(at) => Some(at),
                    _ => None,
                };
                [retry, m.next_ping]
            })
            .flatten()
            .min()
    }

    pub(super) fn mailbox_timers(&mut self, now: Instant) {
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
            m.next_ping = Some(now + MAILBOX_PING.min(self.config.keepalive));
            m.awaiting.push_back(Awaiting::Ping);
            self.out.push_back(Output::MailboxSend {
                line: Request::Ping.to_string(),
            });
        }
    }

    pub(super) fn mailbox_put(
        &mut self,
        now: Instant,
        line: String,
        id: Option<(ConnectId, Method)>,
    ) {
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

    /// The mailbox connection opened: ask for a challenge to sign (then register, subscribe).
    pub fn handle_mailbox_open(&mut self, _now: Instant) {
        let Some(m) = self.mailbox.as_mut() else {
            return;
        };
        // The server names itself in the challenge by the address we dialed.
        let registration = KeyRegistration::new(self.identity.secret(), m.server.to_string());
        m.state = MailboxState::Opening;
        m.awaiting.clear();
        m.awaiting.push_back(Awaiting::Challenge);
        self.out.push_back(Output::MailboxSend {
            line: registration.first_request().to_string(),
        });
        m.registration = Some(registration);
    }

    /// A reply to `CHALLENGE` or `REGISTER_KEY`: sign, subscribe, fall back or fail.
    fn mailbox_register_key(&mut self, now: Instant, waiting: Awaiting, reply: &Reply) {
        let name = self.identity.key().mailbox_name();
        let Some(m) = self.mailbox.as_mut() else {
            return;
        };
        if let (Awaiting::Challenge, Reply::Error(reason)) = (waiting, reply) {
            if !m.fallback_logged {
                m.fallback_logged = true;
                tracing::warn!(
                    server = %m.server,
                    reason,
                    "the mailbox server refused CHALLENGE (no signed registration): \
                     registering with REGISTER <id> <secret> instead"
                );
            }
            m.registration = None;
            m.awaiting.push_back(Awaiting::Register);
            m.awaiting.push_back(Awaiting::Subscribe);
            let line = format!("REGISTER {name} {}", m.secret);
            self.out.push_back(Output::MailboxSend { line });
            self.out.push_back(Output::MailboxSend {
                line: Request::Subscribe.to_string(),
            });
            return;
        }
        let step = match m.registration.as_mut() {
            Some(registration) => registration.handle_reply(reply).map_err(|e| e.to_string()),
            None => Err(format!("{reply} in answer to {waiting:?}")),
        };
        match step {
            Ok(RegisterStep::Send(request)) => {
                m.awaiting.push_back(Awaiting::RegisterKey);
                self.out.push_back(Output::MailboxSend {
                    line: request.to_string(),
                });
            }
            Ok(RegisterStep::Registered { .. }) => {
                m.registration = None;
                m.awaiting.push_back(Awaiting::Subscribe);
                self.out.push_back(Output::MailboxSend {
                    line: Request::Subscribe.to_string(),
                });
            }
            Err(reason) => self.mailbox_fail(now, &reason),
        }
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
        let name = self.identity.key().mailbox_name();
        match (waiting, reply) {
            (Awaiting::Challenge | Awaiting::RegisterKey, reply) => {
                self.mailbox_register_key(now, waiting, &reply);
            }
            (Awaiting::Register, Reply::Registered { node_id, .. }) if node_id == name => {}
            (Awaiting::Ack, Reply::Acked { .. } | Reply::Error(_))
            | (Awaiting::Ping, Reply::Pong)
            | (Awaiting::Put(_), Reply::Stored { .. }) => {}
            (Awaiting::Subscribe, Reply::Subscribed { .. }) => {
                m.state = MailboxState::Up;
                m.retry = MAILBOX_FIRST_RETRY;
                m.next_ping = Some(now + MAILBOX_PING.min(self.config.keepalive));
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
}

/// Brings `c`'s mailbox connection up in a test: opened, challenge signed, registered by key,
/// subscribed.
#[cfg(test)]
pub(super) fn register_for_test(c: &mut Core, now: Instant) {
    use wire::overlay::Nonce;
    use wire::signal::RegisterChallenge;
    let server = c.mailbox.as_ref().expect("enable_mailbox first").server;
    c.handle_mailbox_open(now);
    let challenge = RegisterChallenge {
        server: server.to_string(),
        nonce: Nonce([7; 32]),
    };
    c.handle_mailbox_line(now, &Reply::Challenge(challenge).to_string());
    let node_id = c.identity.key().mailbox_name();
    c.handle_mailbox_line(
        now,
        &Reply::Registered {
            node_id,
            created: true,
        }
        .to_string(),
    );
    c.handle_mailbox_line(now, "OK SUBSCRIBED 0");
    assert!(c.mailbox_up(), "the mailbox is not up: {:?}", c.mailbox);
}

#[cfg(test)]
mod tests;
