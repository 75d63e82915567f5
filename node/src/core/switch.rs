//! Moving a live session to another path: a relayed connection upgraded to a direct one to
//! the same node, without the application seeing a new connection and without losing,
//! duplicating or reordering a line.
//!
//! When a direct connection (the *new path*) proves with `IAM` that it reaches the node a
//! relayed connection (the *session*, on its *old path*) talks to, the core decides to move
//! the session ([`Output::SwitchPath`]). Each direction moves on its own:
//!
//! ```text
//!  sender:   ... line k on the old path, then  P2P/1 SWITCH k  (last line on the old path)
//!                                              P2P/1 SWITCH k  (first session line on the new)
//!                                              every later line on the new path
//!  receiver: delivers the old path's lines until its SWITCH; the new path's lines before the
//!            peer's SWITCH there are the path's own set-up (HELLO) and are dropped; after it
//!            they wait until the old path is done, then follow in order.
//! ```
//!
//! The peer's `SWITCH` may come on the old path before this side has seen the new path prove
//! itself: it is remembered, and the move starts with the old path already done.
//! `k` counts every line the sender wrote on the old path, so a receiver whose old path
//! dies before its `SWITCH` arrives still knows whether anything was lost (it is logged; TCP
//! delivers everything written before a clean close). Both sides may switch at once: the
//! directions are independent. The driver carries out the move (the session's id keeps the
//! new path's stream, the old stream is kept aside under a new id until done, see
//! [`Core::handle_switched`]) and writes the two `SWITCH` lines; the core closes the old path
//! once the peer's `SWITCH` came through it. A new path that dies before the move cancels it;
//! one that dies after takes the session with it.

use std::collections::VecDeque;
use std::time::Instant;

use super::Core;
use super::output::{Event, LineVerdict, Output};
use super::state::Switching;
use crate::ids::ConnId;
use wire::overlay::Control;
use wire::unl::NodeId;

/// Lines a direct path may hold while its `SWITCH` waits for the relayed session.
const MAX_HELD_LINES: usize = 4096;

/// Which path of which moving session a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathRole {
    /// The old path of `session`.
    Old(ConnId),
    /// The new path of `session`.
    New(ConnId),
}

impl Core {
    /// Whether `conn` is a path of a session being moved, and which.
    pub(super) fn switch_role(&self, conn: ConnId) -> Option<PathRole> {
        if let Some(s) = self.switching.get(&conn) {
            // Before the driver moved the streams, the session's own id is its old path.
            return Some(if s.old.is_none() {
                PathRole::Old(conn)
            } else {
                PathRole::New(conn)
            });
        }
        self.switching.iter().find_map(|(session, s)| {
            if s.pending == Some(conn) {
                Some(PathRole::New(*session))
            } else if s.old == Some(conn) {
                Some(PathRole::Old(*session))
            } else {
                None
            }
        })
    }

    /// A direct connection `path` proved it reaches `node`: if a relayed session to that
    /// node is open (and not already moving), move it there. Returns whether it did.
    pub(super) fn upgrade_to(&mut self, now: Instant, path: ConnId, node: NodeId) -> bool {
        if self.relayed.contains(&path) {
            return false;
        }
        let session = self.conns.iter().find_map(|(c, p)| {
            (p.node == Some(node) && self.relayed.contains(c) && !self.switching.contains_key(c))
                .then_some(*c)
        });
        let Some(session) = session else {
            return false;
        };
        // The new path must reach the same key the session did (its own handshake proved
        // it): a node id alone is no proof where the session was encrypted.
        let session_key = self.conns.get(&session).and_then(|p| p.key);
        let path_key = self.conns.get(&path).and_then(|p| p.key);
        if session_key != path_key {
            let why = format!(
                "the direct path proved {}, the session {}: not moving it",
                path_key.map_or("no key (plain text)".to_owned(), |k| format!("key {k}")),
                session_key.map_or("no key (plain text)".to_owned(), |k| format!("key {k}")),
            );
            tracing::warn!(%session, %path, why, "upgrade refused");
            self.close(now, path, &why);
            return false;
        }
        let Some(new) = self.conns.remove(&path) else {
            return false;
        };
        // The new path is not a connection of its own: no HELLO, no events, no overlay peer.
        if let Some(id) = new.id
            && self.by_peer.get(&id) == Some(&path)
        {
            self.by_peer.remove(&id);
        }
        // The peer may have moved first: its SWITCH came on the relayed path already.
        let early = self.early_switches.remove(&session);
        let received_old = self
            .conns
            .get(&session)
            .map_or(0, |p| p.lines_in - u64::from(early));
        let old_addr = self.conns.get(&session).map_or(new.addr, |p| p.addr);
        if let Some(p) = self.conns.get_mut(&session) {
            p.addr = new.addr;
        }
        self.relayed.remove(&session);
        self.switching.insert(
            session,
            Switching {
                old_addr,
                pending: Some(path),
                old: None,
                received_old,
                old_done: early,
                old_closed: false,
                peer_sent_old: None,
                held: VecDeque::new(),
            },
        );
        tracing::debug!(%session, %path, addr = %new.addr, "moving the session to a direct path");
        self.out.push_back(Output::SwitchPath { session, path });
        self.spray_done(new.addr.ip());
        self.close_other_paths(now, session, node);
        true
    }

    /// Whether `conn` is a session that is moving, or moved, to a direct path.
    pub(super) fn is_session_on_the_move(&self, conn: ConnId) -> bool {
        self.moved.contains(&conn) || self.switching.contains_key(&conn)
    }

    /// The session to `node` moves to a direct path: every other direct connection we
    /// dialed to that node (a second punch or dial that connected too: the eager dial and a
    /// birthday burst both reach a cone NAT's port) is a duplicate, closed now. Left open,
    /// the peer's lines (its broadcasts go to every connection) could arrive on it rather
    /// than on the session. Connections the peer dialed are the peer's to close: it does
    /// the same when it moves its side.
    fn close_other_paths(&mut self, now: Instant, session: ConnId, node: NodeId) {
        let peer = self.conns.get(&session).and_then(|p| p.id);
        let mut extra: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(c, p)| {
                **c != session
                    && p.direction == crate::core::Direction::Outbound
                    && (p.node == Some(node) || peer.is_some() && p.id == peer)
                    && !self.relayed.contains(c)
                    && self.switch_role(**c).is_none()
            })
            .map(|(c, _)| *c)
            .collect();
        extra.sort_unstable();
        for conn in extra {
            tracing::debug!(%session, %conn, "another direct connection to the peer: closed");
            self.close(
                now,
                conn,
                &format!("duplicate connection to node {node} (its session moved to another path)"),
            );
        }
    }

    /// The session a pending new path belongs to.
    pub(super) fn session_of_path(&self, path: ConnId) -> Option<ConnId> {
        self.switching
            .iter()
            .find_map(|(session, s)| (s.pending == Some(path)).then_some(*session))
    }

    /// `P2P/1 SWITCH` on the direct connection `path`: if its node is one we talk to
    /// through a relay, the peer chose this path for the session: move there too, and take
    /// the line as the new path's `SWITCH`. Returns whether it did.
    pub(super) fn follow_switch(&mut self, now: Instant, path: ConnId, line: &str) -> bool {
        let Some((node, addr, direction)) = self
            .conns
            .get(&path)
            .and_then(|p| p.node.map(|n| (n, p.addr, p.direction)))
        else {
            return false;
        };
        if !self.upgrade_to(now, path, node) {
            if self.relayed.contains(&path) {
                return false;
            }
            // The relayed session to that node is not proven here yet (its IAM comes through
            // the relay, slower than the direct path): wait for it, holding this path's lines.
            tracing::debug!(%path, %node, "SWITCH before the relayed session is known: waiting");
            self.pending_follows
                .insert(path, (node, vec![line.to_owned()]));
            return true;
        }
        let Some(session) = self.session_of_path(path) else {
            return false;
        };
        self.out.push_back(Output::Event(Event::Upgraded {
            id: None,
            conn: session,
            method: if direction == crate::core::Direction::Inbound {
                crate::connect::Method::Punch
            } else {
                crate::connect::Method::Direct
            },
            addr,
            ms: None,
        }));
        self.switch_line(now, PathRole::New(session), line);
        true
    }

    /// A line on a direct path whose `SWITCH` waits for its relayed session: held.
    /// Returns whether `conn` is such a path.
    pub(super) fn hold_for_follow(&mut self, conn: ConnId, line: &str) -> bool {
        let Some((_, held)) = self.pending_follows.get_mut(&conn) else {
            return false;
        };
        if held.len() < MAX_HELD_LINES {
            held.push(line.to_owned());
        } else {
            tracing::warn!(%conn, "too many lines before the relayed session was known; dropping");
        }
        true
    }

    /// The relayed connection `conn` proved it reaches `node`: a direct path of that node
    /// whose `SWITCH` came first follows now, with the lines it held.
    pub(super) fn retry_follows(&mut self, now: Instant, conn: ConnId, node: NodeId) {
        if !self.relayed.contains(&conn) {
            return;
        }
        let Some(&path) = self
            .pending_follows
            .iter()
            .find_map(|(path, (n, _))| (*n == node).then_some(path))
        else {
            return;
        };
        let Some((_, held)) = self.pending_follows.remove(&path) else {
            return;
        };
        let mut lines = held.into_iter();
        let Some(marker) = lines.next() else {
            return;
        };
        if !self.follow_switch(now, path, &marker) {
            return;
        }
        if let Some(session) = self.session_of_path(path) {
            for line in lines {
                self.switch_line(now, PathRole::New(session), &line);
            }
        }
    }

    /// The driver moved the streams: the session's id now reads and writes the new path;
    /// the old one goes on as `old` (for the lines still on their way) until done.
    pub fn handle_switched(&mut self, now: Instant, session: ConnId, old: ConnId) {
        let Some(s) = self.switching.get_mut(&session) else {
            return;
        };
        s.pending = None;
        s.old = Some(old);
        self.try_finish_switch(now, session);
    }

    /// The driver could not move the streams (one of them closed meanwhile).
    pub fn handle_switch_failed(&mut self, now: Instant, session: ConnId, reason: &str) {
        if self.switching.remove(&session).is_some() {
            tracing::debug!(%session, reason, "the path switch did not happen");
            // The session is whatever the driver still has: if it is gone, say so.
            if !self.conns.contains_key(&session) {
                return;
            }
            self.close(now, session, &format!("path switch failed: {reason}"));
        }
    }

    /// A line on a path of a moving session (see the module docs).
    pub(super) fn switch_line(&mut self, now: Instant, role: PathRole, line: &str) -> LineVerdict {
        match role {
            PathRole::Old(session) => {
                let Some(s) = self.switching.get_mut(&session) else {
                    return LineVerdict::Consumed;
                };
                s.received_old += 1;
                if let Some(Ok(Control::Switch { .. })) = Control::parse(line) {
                    s.received_old -= 1;
                    s.old_done = true;
                    self.try_finish_switch(now, session);
                    return LineVerdict::Consumed;
                }
                self.session_line(now, session, line);
            }
            PathRole::New(session) => {
                let Some(s) = self.switching.get_mut(&session) else {
                    return LineVerdict::Consumed;
                };
                if s.peer_sent_old.is_none() {
                    if let Some(Ok(Control::Switch { sent })) = Control::parse(line) {
                        s.peer_sent_old = Some(sent);
                        self.try_finish_switch(now, session);
                    } else {
                        tracing::debug!(%session, line, "new path: set-up line dropped");
                    }
                } else {
                    s.held.push_back(line.to_owned());
                }
            }
        }
        LineVerdict::Consumed
    }

    /// A line of `session` that came on a path other than its own id: handled as the
    /// session's, delivered to the session.
    fn session_line(&mut self, now: Instant, session: ConnId, line: &str) {
        if let Some(p) = self.conns.get_mut(&session) {
            p.lines_in += 1;
        }
        if self.process_line(now, session, line) == LineVerdict::Deliver {
            self.out.push_back(Output::Deliver {
                conn: session,
                line: line.to_owned(),
            });
        }
    }

    /// A path of a moving session closed. Returns whether it was one (then it is no
    /// connection of its own).
    pub(super) fn switch_path_closed(&mut self, now: Instant, conn: ConnId, reason: &str) -> bool {
        match self.switch_role(conn) {
            Some(PathRole::Old(session)) => {
                if let Some(s) = self.switching.get_mut(&session) {
                    s.old_closed = true;
                }
                if conn == session {
                    // The relayed stream died before the driver moved it aside: the session
                    // lives on the new path once moved.
                    tracing::debug!(%session, reason, "the old path closed before the move");
                }
                self.try_finish_switch(now, session);
                conn != session
            }
            Some(PathRole::New(session)) if conn != session => {
                // The new path died before the move: the session stays where it is.
                if let Some(s) = self.switching.remove(&session)
                    && let Some(p) = self.conns.get_mut(&session)
                {
                    p.addr = s.old_addr;
                }
                self.relayed.insert(session);
                tracing::debug!(%session, reason, "the new path closed before the move");
                true
            }
            _ => false,
        }
    }

    /// Ends the move of `session` when the peer's `SWITCH` came on the new path and the old
    /// path has nothing more to give (its `SWITCH` came too, or it closed). The
    /// held lines of the new path follow; the old path is closed.
    fn try_finish_switch(&mut self, now: Instant, session: ConnId) {
        let Some(s) = self.switching.get(&session) else {
            return;
        };
        // The peer's SWITCH on the new path must have come (the lines before it there are
        // the path's set-up, not the session's), and the old path must have nothing left.
        let done = s.peer_sent_old.is_some() && (s.old_done || s.old_closed);
        if !done || s.old.is_none() && !s.old_closed {
            return;
        }
        let Some(s) = self.switching.remove(&session) else {
            return;
        };
        self.moved.insert(session);
        if let Some(sent) = s.peer_sent_old
            && s.received_old < sent
        {
            tracing::warn!(
                %session,
                lost = sent - s.received_old,
                "the old path closed before delivering every line the peer wrote there"
            );
        }
        if let Some(old) = s.old
            && !s.old_closed
        {
            self.out.push_back(Output::Close {
                conn: old,
                reason: "the session moved to a direct path".to_owned(),
            });
        }
        self.out.push_back(Output::Event(Event::PathSwitched {
            conn: session,
            lost: s
                .peer_sent_old
                .map_or(0, |sent| sent.saturating_sub(s.received_old)),
        }));
        for line in s.held {
            self.session_line(now, session, &line);
        }
    }
}

#[cfg(test)]
impl Core {
    /// Marks `conn` as relayed (the tests' stand-in for a `RELAY` handshake).
    pub(crate) fn mark_relayed(&mut self, conn: ConnId) {
        self.relayed.insert(conn);
    }

    /// What the side that asked for the connect does when a direct path proves itself
    /// (`upgrade.rs`), without a connect attempt: move the session to `path` if its `IAM`
    /// came. Returns whether it did.
    pub(crate) fn owner_upgrade(&mut self, now: Instant, path: ConnId) -> bool {
        let Some(node) = self.conns.get(&path).and_then(|p| p.node) else {
            return false;
        };
        self.upgrade_to(now, path, node)
    }
}

#[cfg(test)]
mod tests;
