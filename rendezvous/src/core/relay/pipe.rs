//! The byte path of a relay session: how much the driver may read from a side (flow control
//! and rate limit), bytes read and queued or written straight to the partner, the queue
//! drained, FINs forwarded, failures, and paused sources resumed.

use std::collections::VecDeque;
use std::time::Instant;

use tracing::debug;

use super::{Pause, Pipe, RELAY_LINGER, RETAINED_QUEUE_BYTES, Side};
use crate::core::{Action, ConnId, Core};

impl Core {
    /// (use your buffer's size), 0 for a connection that must not be read (closed or closing;
    /// relayed and its partner's queue is full, its rate budget is spent, or it sent EOF). A paused connection
    /// gets an [`Action::Read`] when it may be read again.
    pub fn read_budget(&mut self, now: Instant, id: ConnId) -> usize {
        if self.live_conn(id).is_none() {
            return 0;
        }
        let Some((sid, side)) = self.side_of(id) else {
            return usize::MAX;
        };
        let cap = self.config.relay_buffer_bytes;
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return usize::MAX;
        };
        let pipe = &mut session.pipes[side];
        if pipe.source_done {
            return 0;
        }
        if pipe.sink {
            return usize::MAX;
        }
        let room = cap.saturating_sub(pipe.queue.len());
        if room == 0 {
            pipe.paused = Some(Pause::Flow);
            return 0;
        }
        let Some(bucket) = &mut pipe.bucket else {
            return room;
        };
        let tokens = bucket.available(now);
        if tokens == 0 {
            let at = bucket.ready_at(bucket.burst() / 4);
            pipe.paused = Some(Pause::Rate(at));
            self.relays.timers.insert((at, id));
            return 0;
        }
        usize::try_from(tokens).map_or(room, |t| t.min(room))
    }

    /// Where bytes read from `id` may be written straight away, skipping the queue: the
    /// partner, when `id` is relayed and nothing is queued for the partner. Report what was
    /// written with [`handle_relay_read`](Self::handle_relay_read).
    pub fn relay_direct_target(&self, id: ConnId) -> Option<ConnId> {
        let (sid, side) = self.side_of(id)?;
        let session = self.relays.sessions.get(&sid)?;
        let pipe = &session.pipes[side];
        (pipe.queue.is_empty() && !pipe.sink && !pipe.shut).then_some(session.conns[1 - side])
    }

    /// `data` was read from relayed connection `src`, and its first `written` bytes were
    /// already written to the partner (see [`relay_direct_target`](Self::relay_direct_target));
    /// the rest is queued for it. [`handle_data`](Self::handle_data) is this with `written` 0.
    pub fn handle_relay_read(&mut self, now: Instant, src: ConnId, data: &[u8], written: usize) {
        let Some((sid, side)) = self.side_of(src) else {
            return;
        };
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return;
        };
        session.last_activity = now;
        let dst = session.conns[1 - side];
        let pipe = &mut session.pipes[side];
        pipe.read += data.len() as u64;
        if let Some(bucket) = &mut pipe.bucket {
            bucket.take(data.len() as u64);
        }
        if pipe.sink {
            return;
        }
        self.relays.bytes += data.len() as u64;
        let rest = &data[written.min(data.len())..];
        if rest.is_empty() {
            return;
        }
        let was_empty = pipe.queue.is_empty();
        pipe.queue.extend(rest);
        self.relays.add_queued(rest.len());
        if was_empty {
            self.actions.push_back(Action::Flush(dst));
        }
    }

    /// The bytes queued for relayed connection `id`.
    pub(in crate::core) fn relay_output(&self, id: ConnId) -> Option<&[u8]> {
        let (sid, side) = self.side_of(id)?;
        let pipe = &self.relays.sessions.get(&sid)?.pipes[1 - side];
        Some(if pipe.sink {
            &[]
        } else {
            pipe.queue.as_slices().0
        })
    }

    /// `n` bytes queued for relayed connection `id` were written. Returns false if `id` is not
    /// relayed.
    pub(in crate::core) fn relay_consumed(&mut self, now: Instant, id: ConnId, n: usize) -> bool {
        let Some((sid, side)) = self.side_of(id) else {
            return false;
        };
        let half = self.config.relay_buffer_bytes / 2;
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return false;
        };
        let src = session.conns[1 - side];
        let pipe = &mut session.pipes[1 - side];
        let n = n.min(pipe.queue.len());
        pipe.queue.drain(..n);
        self.relays.queued -= n;
        if n > 0 {
            session.last_activity = now;
        }
        if pipe.queue.is_empty() && pipe.queue.capacity() > RETAINED_QUEUE_BYTES {
            pipe.queue = VecDeque::new();
        }
        if pipe.paused == Some(Pause::Flow) && pipe.queue.len() <= half {
            pipe.paused = None;
            self.actions.push_back(Action::Read(src));
        }
        self.forward_fin(sid, 1 - side);
        true
    }

    /// If direction `dir` of session `sid` has nothing left to send and its source is done,
    /// shuts the destination's write side; ends the session when everything is finished.
    pub(super) fn forward_fin(&mut self, sid: u64, dir: usize) {
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return;
        };
        let dst = session.conns[1 - dir];
        let pipe = &mut session.pipes[dir];
        if pipe.source_done && !pipe.sink && !pipe.shut && pipe.queue.is_empty() {
            pipe.shut = true;
            self.actions.push_back(Action::ShutdownWrite(dst));
        }
        if session.pipes.iter().all(Pipe::finished) {
            let reason = session
                .first_end
                .clone()
                .unwrap_or_else(|| "both sides closed".to_string());
            self.end_session(sid, &reason);
        }
    }

    /// Relayed connection `id` sent EOF: forward it once what it sent is written.
    pub(in crate::core) fn relay_eof(&mut self, now: Instant, id: ConnId) -> bool {
        let Some((sid, side)) = self.side_of(id) else {
            return false;
        };
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return false;
        };
        session.last_activity = now;
        let peer = session.peers[side];
        session
            .first_end
            .get_or_insert_with(|| format!("{} closed", Side(&peer)));
        let pipe = &mut session.pipes[side];
        pipe.source_done = true;
        self.unpause(sid, side);
        debug!(conn = id.0, %peer, "relay side sent EOF");
        self.forward_fin(sid, side);
        true
    }

    /// Relayed connection `id` failed (read or write error): drop what is queued for it,
    /// forward what it sent, and read its partner to EOF (or [`RELAY_LINGER`]).
    pub(in crate::core) fn relay_failed(&mut self, now: Instant, id: ConnId, why: &str) -> bool {
        let Some((sid, side)) = self.side_of(id) else {
            return false;
        };
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return false;
        };
        let peer = session.peers[side];
        let partner = session.conns[1 - side];
        session
            .first_end
            .get_or_insert_with(|| format!("{} failed: {why}", Side(&peer)));
        session.linger_until.get_or_insert(now + RELAY_LINGER);
        let from = &mut session.pipes[side];
        from.source_done = true;
        let to = &mut session.pipes[1 - side];
        to.sink = true;
        let dropped = to.queue.len();
        to.queue = VecDeque::new();
        let resume = to.paused.take().is_some() && !to.source_done;
        self.relays.queued -= dropped;
        self.unpause(sid, side);
        if resume {
            self.actions.push_back(Action::Read(partner));
        }
        debug!(conn = id.0, %peer, why, "relay side failed");
        self.forward_fin(sid, side);
        self.forward_fin(sid, 1 - side);
        true
    }

    /// Forgets that direction `dir`'s source was paused (and its timer).
    pub(super) fn unpause(&mut self, sid: u64, dir: usize) {
        let Some(session) = self.relays.sessions.get_mut(&sid) else {
            return;
        };
        let src = session.conns[dir];
        if let Some(Pause::Rate(at)) = session.pipes[dir].paused.take() {
            self.relays.timers.remove(&(at, src));
        }
    }

    /// Fires due rate-limit timers: paused sources get an [`Action::Read`].
    pub(in crate::core) fn relay_timers(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.relays.timers.first() {
            if at > now {
                return;
            }
            self.relays.timers.pop_first();
            let Some((sid, side)) = self.side_of(id) else {
                continue;
            };
            if let Some(session) = self.relays.sessions.get_mut(&sid) {
                let pipe = &mut session.pipes[side];
                if pipe.paused == Some(Pause::Rate(at)) {
                    pipe.paused = None;
                    self.actions.push_back(Action::Read(id));
                }
            }
        }
    }
}
