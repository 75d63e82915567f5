//! The line protocol (`REGISTER`, `CHALLENGE`, `REGISTER_KEY`, `SUBSCRIBE`, `PUT`, `LIST`,
//! `ACK`, `PING`, `QUIT`; see
//! [`wire::mailbox`]), and pushing a subscriber's messages with back-pressure.

use std::io::Write as _;
use std::time::Instant;

use server_kit::ConnId;
use wire::line::LineError;
use wire::mailbox::{NodeId, Reply, Request, WireError};

use super::{Core, Denied, Mode, Subscription};

impl Core {
    // ----- line protocol -------------------------------------------------------------------

    pub(super) fn line_input(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(conn) = self.live_conn(id) else {
                return;
            };
            let Mode::Line(framer) = &mut conn.mode else {
                return;
            };
            let item = match framer.next_str() {
                None => return,
                Some(Ok(line)) => Ok(line.parse::<Request>()),
                Some(Err(e)) => Err(e),
            };
            conn.last_activity = now;
            match item {
                Ok(Ok(request)) => {
                    self.stats.lines += 1;
                    self.stats.line_requests[super::stats::verb_index(&request)] += 1;
                    self.handle_request(now, id, request);
                }
                Ok(Err(parse_error)) => {
                    if let WireError::Signed { .. } = parse_error {
                        self.stats.key_refusals[super::keys::reason::MALFORMED] += 1;
                    }
                    self.bad_line(id, &parse_error);
                }
                Err(e @ LineError::NotUtf8 { .. }) => self.bad_line(id, &e),
                Err(e @ LineError::TooLong { .. }) => {
                    self.stats.bad_lines += 1;
                    self.stats.closed_by_limit[0] += 1;
                    self.send(id, &Reply::error(&e));
                    self.finish(id);
                    return;
                }
            }
        }
    }

    pub(super) fn refuse(&mut self, id: ConnId, denied: &Denied) {
        self.stats.bad_lines += 1;
        self.stats.refusals[denied.kind()] += 1;
        self.send(id, &Reply::error(&denied.reason));
    }

    pub(super) fn owner(&self, id: ConnId) -> Option<NodeId> {
        self.conn(id).and_then(|c| c.owner.clone())
    }

    pub(super) fn handle_request(&mut self, now: Instant, id: ConnId, request: Request) {
        let Some(peer) = self.conn(id).map(|c| c.peer) else {
            return;
        };
        let owner = self.owner(id);
        if let Some(owner) = &owner {
            self.touch(now, owner);
        }
        let need_owner = |verb: &str| {
            Denied::new(
                403,
                format!("{verb}: this connection has not proven a mailbox (REGISTER first)"),
            )
        };
        match request {
            Request::Register { node_id, secret } => {
                match self.register(now, peer.ip(), &node_id, &secret, None) {
                    Ok(created) => {
                        if owner.as_ref() != Some(&node_id) {
                            self.unsubscribe(id);
                        }
                        if let Some(conn) = self.conn_mut(id) {
                            conn.owner = Some(node_id.clone());
                        }
                        self.send(id, &Reply::Registered { node_id, created });
                    }
                    Err(denied) => self.refuse(id, &denied),
                }
            }
            Request::Challenge => self.send_challenge(id),
            Request::RegisterKey(proof) => self.register_key(now, id, &proof),
            Request::Subscribe => match owner {
                Some(owner) => self.subscribe(id, &owner),
                None => self.refuse(id, &need_owner("SUBSCRIBE")),
            },
            Request::Put { to, body } => match self.put(now, peer.ip(), &to, owner, &body) {
                Ok(message_id) => {
                    self.send(id, &Reply::Stored { id: message_id });
                }
                Err(denied) => self.refuse(id, &denied),
            },
            Request::List => match owner {
                Some(owner) => {
                    let pending = self.pending(&owner);
                    let count = pending.len();
                    for delivery in pending {
                        if !self.send(id, &Reply::Msg(delivery)) {
                            return;
                        }
                    }
                    self.send(id, &Reply::Listed { count });
                }
                None => self.refuse(id, &need_owner("LIST")),
            },
            Request::Ack { id: message_id } => {
                let Some(owner) = owner else {
                    self.refuse(id, &need_owner("ACK"));
                    return;
                };
                let mine = self
                    .messages
                    .get(&message_id.0)
                    .is_some_and(|m| m.to == owner);
                if mine {
                    self.remove_message(message_id.0);
                    self.stats.deleted += 1;
                    self.send(id, &Reply::Acked { id: message_id });
                } else {
                    let denied = Denied::new(
                        404,
                        format!("ACK: no message {message_id} in mailbox {owner}"),
                    );
                    self.refuse(id, &denied);
                }
            }
            Request::Ping => {
                self.send(id, &Reply::Pong);
            }
            Request::Quit => self.finish(id),
        }
    }

    pub(super) fn subscribe(&mut self, id: ConnId, owner: &NodeId) {
        let Some(mailbox) = self.mailboxes.get_mut(owner) else {
            return;
        };
        let previous = mailbox.subscriber.replace(id);
        if let Some(previous) = previous
            && previous != id
        {
            if let Some(conn) = self.conn_mut(previous) {
                conn.subscription = None;
            }
            self.send(
                previous,
                &Reply::error(&format!(
                    "SUBSCRIBE: mailbox {owner} was taken over by a newer subscription"
                )),
            );
        }
        let pending = self.mailboxes.get(owner).map_or(0, |m| m.messages.len());
        if let Some(conn) = self.conn_mut(id) {
            conn.subscription = Some(Subscription::default());
        }
        self.send(id, &Reply::Subscribed { pending });
        self.push_pending(id);
    }

    /// Pushes the subscriber's messages it has not been sent yet, oldest first (see
    /// [`push_ids`](Self::push_ids)). A scan of the whole mailbox: for `SUBSCRIBE` and for a
    /// paused subscription resuming; a message arriving for a subscription that is not paused
    /// is pushed alone (every older one was pushed already).
    pub(super) fn push_pending(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let (Some(sub), Some(owner)) = (&conn.subscription, &conn.owner) else {
            return;
        };
        let Some(mailbox) = self.mailboxes.get(owner) else {
            return;
        };
        let unpushed: Vec<u64> = mailbox
            .messages
            .iter()
            .filter(|mid| !sub.pushed.contains(mid))
            .copied()
            .collect();
        self.push_ids(id, unpushed);
    }

    /// Pushes messages `ids` to subscriber `id`, in that order, until its unread output
    /// reaches half the output cap; [`consume_output`](Self::consume_output) resumes once the
    /// client has read most of it. So a slow reader is never disconnected for its own mailbox,
    /// and memory per subscriber stays bounded. Nothing while paused.
    pub(super) fn push_ids(&mut self, id: ConnId, ids: impl IntoIterator<Item = u64>) {
        let high_water = self.config.max_output_bytes / 2;
        let Some(conn) = self.conn(id) else {
            return;
        };
        match &conn.subscription {
            Some(sub) if !sub.paused && !conn.closing => {}
            _ => return,
        }
        let mut lines = Vec::new();
        let mut sent = Vec::new();
        let mut paused = false;
        let mut queued = conn.out.len();
        for mid in ids {
            let Some(message) = self.messages.get(&mid) else {
                continue;
            };
            let mut line = Vec::with_capacity(message.body.len() + 96);
            let _ = write!(line, "{}\r\n", message.delivery(mid));
            if queued > 0 && queued + line.len() > high_water {
                paused = true;
                break;
            }
            queued += line.len();
            sent.push(mid);
            lines.push(line);
        }
        if let Some(sub) = self.conn_mut(id).and_then(|c| c.subscription.as_mut()) {
            sub.pushed.extend(sent);
            sub.paused = paused;
        }
        for line in lines {
            if !self.queue(id, &line) {
                return;
            }
            self.stats.pushed += 1;
        }
    }

    pub(super) fn unsubscribe(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.subscription.take().is_none() {
            return;
        }
        if let Some(owner) = conn.owner.clone()
            && let Some(mailbox) = self.mailboxes.get_mut(&owner)
            && mailbox.subscriber == Some(id)
        {
            mailbox.subscriber = None;
        }
    }
}
