//! One turn of the event loop ([`Net::poll`]) and the loops built on it.
//!
//! A turn carries out what the core asked for, flushes, reaps, waits for readiness (at most
//! until the next timer of the core, a dial, a request, a link, a punch, the clock or the
//! reachability probe), then hands each ready socket to its owner (listener, dial, request,
//! mailbox, session, relay handshake or connection), fires due timers and carries out the
//! core's outputs again. [`Output`]s are translated into socket work in `apply_outputs`; the
//! driver never looks at protocol verbs.

use std::io;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mio::Token;
use tracing::debug;

use super::connection::Received;
use super::inflight::PendingPunch;
use super::{LISTENER, Net, NetError, WAKER};
use crate::core::Output;
use crate::ids::ConnId;

impl Net {
    /// Runs one turn of the loop, waiting up to `timeout` for something to happen (`None`:
    /// until something does). Zero does not wait.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<(), NetError> {
        self.start()?;
        let now = Instant::now();
        self.tell_core_the_time(now);
        self.apply_outputs(now);
        self.flush_all();
        self.reap();
        let wait = self.next_wait(now, timeout);
        match self.poll.poll(&mut self.mio_events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        let ready: Vec<(Token, bool, bool, bool)> = self
            .mio_events
            .iter()
            .map(|e| {
                (
                    e.token(),
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable(),
                    e.is_read_closed() || e.is_error(),
                )
            })
            .collect();
        for (token, readable, writable, closing) in ready {
            match token {
                LISTENER => self.accept_all(now),
                WAKER => {}
                t if self.dials.contains_key(&t) => self.finish_dial(now, t),
                t if self.queries.contains_key(&t) => self.drive_query(now, t),
                t if self.mailbox.as_ref().is_some_and(|m| m.token == t) => {
                    self.drive_mailbox(now, closing);
                }
                t if self.sessions.contains_key(&t) => self.drive_session(now, t, closing),
                t if self.relay_links.contains_key(&t) => self.drive_relay(now, t, closing),
                t if self.burst_tokens.contains_key(&t) => self.finish_burst_socket(now, t),
                t if self.handshakes.contains_key(&ConnId(t.0 as u64)) => {
                    let id = ConnId(t.0 as u64);
                    if readable {
                        self.drive_handshake(now, id, closing);
                    }
                    if writable {
                        self.flush_handshake(now, id);
                    }
                }
                t if self.old_paths.contains_key(&ConnId(t.0 as u64)) => {
                    let id = ConnId(t.0 as u64);
                    if readable {
                        self.read_old_path(now, id);
                    }
                    if writable {
                        self.flush_old_path(now, id);
                    }
                }
                t => {
                    let conn = ConnId(t.0 as u64);
                    if readable {
                        self.read_conn(now, conn, closing);
                    }
                    if writable
                        && let Some(&i) = self.index.get(&conn)
                        && let Err(e) = self.conns[i].flush()
                    {
                        self.lost(now, conn, &format!("write failed: {e}"));
                    }
                }
            }
        }
        for (conn, closing) in std::mem::take(&mut self.unfinished) {
            if self.handshakes.contains_key(&conn) {
                self.drive_handshake(now, conn, closing);
            } else {
                self.read_conn(now, conn, closing);
            }
        }
        self.expire(now);
        self.start_due_punches(now);
        self.drive_bursts(now);
        self.check_clock(now);
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        self.apply_outputs(now);
        self.start_due_punches(now);
        self.drive_bursts(now);
        // After the outputs: a NAT detection that just ended is in `outcomes` now.
        self.drive_reach(now);
        self.flush_all();
        Ok(())
    }

    /// Calls [`Net::poll`] until `done(self)` is true or `timeout` passes; returns whether it
    /// became true.
    pub fn poll_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Net) -> bool,
    ) -> Result<bool, NetError> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.poll(Some(deadline - now))?;
        }
    }

    /// Runs the loop until `handler` breaks: after every turn, `handler(self)` reads lines,
    /// sends, broadcasts. Blocks between turns (no spinning); use [`Net::waker`] to wake it from
    /// another thread.
    pub fn run(
        &mut self,
        mut handler: impl FnMut(&mut Net) -> ControlFlow<()>,
    ) -> Result<(), NetError> {
        loop {
            self.poll(None)?;
            if handler(self).is_break() {
                return Ok(());
            }
        }
    }

    fn next_wait(&self, now: Instant, timeout: Option<Duration>) -> Option<Duration> {
        if !self.unfinished.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut wait = timeout;
        let mut consider = |at: Instant| {
            let d = at.saturating_duration_since(now);
            wait = Some(wait.map_or(d, |w| w.min(d)));
        };
        if let Some(t) = self.core.poll_timeout() {
            consider(t);
        }
        for d in self.dials.values() {
            consider(d.deadline);
        }
        for q in self.queries.values() {
            consider(q.deadline);
        }
        if let Some(m) = self.mailbox.as_ref().filter(|m| !m.connected) {
            consider(m.deadline);
        }
        for (_, link) in self.sessions.values().filter(|(_, l)| !l.connected) {
            consider(link.deadline);
        }
        for (_, link, _) in self.relay_links.values() {
            consider(link.deadline);
        }
        for p in &self.punches {
            consider(p.at);
        }
        for p in self.handshakes.values() {
            consider(p.deadline);
        }
        for b in self.bursts.values() {
            consider(b.wake_at());
        }
        if let Some(t) = self.next_ntp {
            consider(t);
        }
        if let Some(t) = self.reach.poll_timeout() {
            consider(t);
        }
        // Lines left unread by a closed connection keep it listed; nothing to wait for.
        wait
    }

    /// Carries out what the core asked for.
    pub(super) fn apply_outputs(&mut self, now: Instant) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { conn, line } => {
                    if let Some(&i) = self.index.get(&conn)
                        && let Err(e) = self.conns[i].queue(&line)
                    {
                        debug!(conn = %conn, error = %e, "not sent");
                    }
                }
                Output::Deliver { conn, line } => {
                    if let Some(&i) = self.index.get(&conn) {
                        self.conns[i]
                            .inbox
                            .push_back(Received { line, signer: None });
                    }
                }
                Output::DeliverSigned { conn, line, signer } => {
                    if let Some(&i) = self.index.get(&conn) {
                        let signer = Some(signer);
                        self.conns[i].inbox.push_back(Received { line, signer });
                    }
                }
                Output::Close { conn, reason } => {
                    if !self.close_old_path(conn, &reason) {
                        self.close_conn(conn, &reason);
                    }
                }
                Output::SwitchPath { session, path } => self.switch_path(now, session, path),
                Output::Dial { addr, security } => self.start_dial(now, addr, security),
                Output::Query {
                    id,
                    server,
                    lines,
                    want_reply,
                } => self.start_query(now, id, server, &lines, want_reply),
                Output::MailboxDial { server } => self.start_mailbox(now, server),
                Output::MailboxSend { line } => {
                    if let Some(m) = self.mailbox.as_mut() {
                        m.queue(&line);
                    }
                    if self.mailbox.as_ref().is_some_and(|m| m.connected) {
                        self.drive_mailbox(now, false);
                    }
                }
                Output::SessionOpen {
                    session,
                    server,
                    bind_port,
                } => self.start_session(now, session, server, bind_port),
                Output::SessionSend { session, line } => self.session_send(now, session, &line),
                Output::SessionClose { session, reason } => self.session_close(session, &reason),
                Output::ClockSample {
                    server,
                    offset,
                    rtt,
                } => self.clock_sample(server, offset, rtt),
                Output::PunchDial {
                    addr,
                    from_port,
                    at,
                    timeout,
                    direction,
                    fresh,
                    security,
                } => {
                    debug!(%addr, from_port, in_us = at.saturating_duration_since(now).as_micros(), fresh, "punch dial scheduled");
                    self.punches.push(PendingPunch {
                        addr,
                        from_port,
                        at,
                        timeout,
                        direction,
                        fresh,
                        security,
                    });
                }
                Output::CancelDials { addrs } => {
                    self.cancel_dials(&addrs);
                    self.cancel_bursts(&addrs);
                }
                out @ (Output::BirthdayDial { .. }
                | Output::BirthdaySpray { .. }
                | Output::CancelSpray { .. }) => self.birthday_output(&out),
                Output::RelayDial {
                    relay,
                    server,
                    token,
                    security,
                } => self.start_relay(now, relay, server, token, security),
                Output::MailboxClose { reason } => {
                    if let Some(mut m) = self.mailbox.take() {
                        let _ = m.flush();
                        debug!(server = %m.server, reason, "mailbox connection closed");
                        let _ = self.poll.registry().deregister(&mut m.stream);
                    }
                }
                Output::Event(event) => self.record(event),
            }
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        self.expire_handshakes(now);
        if self
            .mailbox
            .as_ref()
            .is_some_and(|m| !m.connected && m.deadline <= now)
        {
            let reason = format!("no answer within {:?}", self.config.connect_timeout);
            self.mailbox_lost(now, &reason);
        }
        let late: Vec<Token> = self
            .sessions
            .iter()
            .filter(|(_, (_, l))| !l.connected && l.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some((session, mut link)) = self.sessions.remove(&token) {
                self.session_tokens.remove(&session);
                let _ = self.poll.registry().deregister(&mut link.stream);
                let reason = format!(
                    "no answer from {} within {:?}",
                    link.server, self.config.connect_timeout
                );
                self.core.handle_session_closed(now, session, &reason);
            }
        }
        let late: Vec<Token> = self
            .relay_links
            .iter()
            .filter(|(_, (_, l, _))| l.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some((relay, mut link, _)) = self.relay_links.remove(&token) {
                let _ = self.poll.registry().deregister(&mut link.stream);
                let reason = format!("the other end did not come to relay {}", link.server);
                self.core.handle_relay_failed(now, relay, &reason);
            }
        }
        let late: Vec<Token> = self
            .dials
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some(mut dial) = self.dials.remove(&token) {
                let _ = self.poll.registry().deregister(&mut dial.stream);
                self.core.handle_dial_failed(
                    now,
                    dial.addr,
                    "no answer before the dial's deadline",
                );
            }
        }
        let late: Vec<Token> = self
            .queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some(mut q) = self.queries.remove(&token) {
                let _ = self.poll.registry().deregister(&mut q.stream);
                let reason = format!("no answer within {:?}", self.config.query_timeout);
                self.core.handle_query_done(now, q.id, Err(reason));
            }
        }
    }
}
