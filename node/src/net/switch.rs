//! The driver's side of moving a session to another path ([`Output::SwitchPath`], see the
//! core's `switch.rs`): the session's connection takes the new path's stream (re-registered
//! under the session's token, so the application's `Connection` and its id stay), its old
//! stream is kept aside in `old_paths` under a fresh id until the core closes it, and the two
//! `P2P/1 SWITCH <lines written on the old stream>` lines are queued.
//!
//! [`Output::SwitchPath`]: crate::core::Output::SwitchPath

use std::net::Shutdown;
use std::time::Instant;

use mio::{Interest, Token};
use tracing::debug;

use super::Net;
use super::connection::Framer;
use crate::ids::ConnId;
use wire::io::{ReadStep, read_step};
use wire::overlay::Control;

impl Net {
    /// Carries out [`Output::SwitchPath`](crate::core::Output::SwitchPath).
    pub(super) fn switch_path(&mut self, now: Instant, session: ConnId, path: ConnId) {
        let open = |net: &Net, c: ConnId| {
            net.index
                .get(&c)
                .is_some_and(|&i| net.conns[i].stream.is_some() && net.conns[i].is_open())
        };
        if !open(self, session) || !open(self, path) {
            if self.index.contains_key(&path) {
                self.close_conn(path, "the session it was to carry is gone");
            }
            self.core
                .handle_switch_failed(now, session, "a path closed before the move");
            return;
        }
        // The new path leaves the list: it is no connection of its own any more.
        let Some(pi) = self.index.remove(&path) else {
            return;
        };
        let mut new = self.conns.swap_remove(pi);
        if let Some(moved) = self.conns.get(pi) {
            self.index.insert(moved.id, pi);
        }
        let Some(&si) = self.index.get(&session) else {
            return;
        };
        let (Some(mut new_stream), Some(mut old_stream)) =
            (new.stream.take(), self.conns[si].stream.take())
        else {
            return;
        };
        let old_token = self.token();
        let old_id = ConnId(old_token.0 as u64);
        let session_token = Token(usize::try_from(session.0).unwrap_or(usize::MAX));
        let registry = self.poll.registry();
        let moved = registry
            .reregister(
                &mut new_stream,
                session_token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .and_then(|()| {
                registry.reregister(
                    &mut old_stream,
                    old_token,
                    Interest::READABLE | Interest::WRITABLE,
                )
            });
        if let Err(e) = moved {
            let _ = new_stream.shutdown(Shutdown::Both);
            self.conns[si].stream = Some(old_stream);
            self.core
                .handle_switch_failed(now, session, &format!("cannot move the streams: {e}"));
            return;
        }
        let s = &mut self.conns[si];
        let marker = Control::Switch { sent: s.lines_out }.to_string();
        // The old stream keeps what was queued on it, then our SWITCH as its last line.
        let mut old = super::connection::Connection {
            id: old_id,
            addr: s.addr,
            direction: s.direction,
            stream: Some(old_stream),
            framer: std::mem::replace(&mut s.framer, new.framer),
            inbox: std::collections::VecDeque::new(),
            out: std::mem::replace(&mut s.out, new.out),
            written: std::mem::replace(&mut s.written, new.written),
            max_output: s.max_output,
            close_request: None,
            closed: None,
            lines_out: 0,
        };
        let _ = old.queue(&marker);
        s.stream = Some(new_stream);
        s.addr = new.addr;
        s.lines_out = new.lines_out;
        let _ = s.queue(&marker);
        debug!(%session, %path, old = %old_id, addr = %s.addr, "session moved to the direct path");
        self.old_paths.insert(old_id, old);
        self.core.handle_switched(now, session, old_id);
        // Bytes of the new path already read but not yet split into lines, and lines in its
        // framer, belong to the session now.
        self.read_conn(now, session, false);
    }

    /// Reads an old path (until the peer's SWITCH or its end): its lines go to the core,
    /// which delivers them to the session.
    pub(super) fn read_old_path(&mut self, now: Instant, id: ConnId) {
        let mut failure = None;
        loop {
            let Some(c) = self.old_paths.get_mut(&id) else {
                return;
            };
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            let step = read_step(stream, &mut self.read_buf, true);
            let mut drained = false;
            match step {
                ReadStep::Data { len, more } => {
                    c.framer.push(&self.read_buf[..len]);
                    drained = !more;
                }
                ReadStep::Eof => failure = Some("closed by peer".to_owned()),
                ReadStep::Blocked => drained = true,
                ReadStep::Failed(e) => failure = Some(format!("read failed: {e}")),
            }
            let lines = drain_lines(&mut c.framer);
            for line in lines {
                match line {
                    Ok(line) => {
                        self.core.handle_line(now, id, &line);
                    }
                    Err(e) => {
                        failure = Some(format!("protocol error: {e}"));
                        break;
                    }
                }
            }
            if drained || failure.is_some() {
                break;
            }
        }
        if let Some(reason) = failure {
            self.close_old_path(id, &reason);
            self.core.handle_closed(now, id, &reason);
        }
    }

    /// Flushes an old path's output (the last lines and our SWITCH).
    pub(super) fn flush_old_path(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.old_paths.get_mut(&id) else {
            return;
        };
        if let Err(e) = c.flush() {
            let reason = format!("write failed: {e}");
            self.close_old_path(id, &reason);
            self.core.handle_closed(now, id, &reason);
        }
    }

    /// Closes an old path: what is queued on it is written first (our SWITCH among it).
    /// Returns whether `id` was one.
    pub(super) fn close_old_path(&mut self, id: ConnId, reason: &str) -> bool {
        let Some(mut c) = self.old_paths.remove(&id) else {
            return false;
        };
        if let Some(mut stream) = c.stream.take() {
            let _ = c.flush_on(&mut stream);
            let _ = self.poll.registry().deregister(&mut stream);
            let _ = stream.shutdown(Shutdown::Both);
        }
        debug!(old = %id, reason, "old path closed");
        true
    }
}

/// Every complete line in `framer`, as owned strings (or the error that stops it).
fn drain_lines(framer: &mut Framer) -> Vec<Result<String, crate::secure::SecureError>> {
    let mut lines = Vec::new();
    while let Some(line) = framer.next_str() {
        match line {
            Ok(line) => lines.push(Ok(line.to_owned())),
            Err(e) => {
                lines.push(Err(e));
                break;
            }
        }
    }
    lines
}
