//! The driver's line links to servers ([`LineLink`]): the persistent connection to the
//! dht-msg mailbox and the line sessions with rendezvous servers (the simultaneous
//! registration, hole-punch candidacies, port probes).
//!
//! Each link connects (from a given port with `SO_REUSEPORT` when the core asks, so punch
//! dials can share it), writes what the core queued, and hands every line it reads to the
//! core; a link that fails, or does not connect within `connect_timeout`, is reported closed.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::Token;
use mio::net::TcpStream;
use tracing::debug;

use super::links::{LineLink, connect_from, punch_ip};
use super::{MAX_REPLY_BYTES, Net};
use crate::ids::SessionId;

impl Net {
    /// Starts a line link to `server` (from `bind_port` with reuse, if given), registered
    /// with the poll under a new token.
    pub(super) fn open_link(
        &mut self,
        now: Instant,
        server: SocketAddr,
        bind_port: Option<u16>,
        timeout: Duration,
    ) -> io::Result<LineLink> {
        let mut stream = match bind_port {
            Some(port) => connect_from(punch_ip(self.config.bind, server), port, server)?,
            None => TcpStream::connect(server)?,
        };
        // Lines to servers are small requests that want an answer: never held back waiting
        // for the ACK of the previous one (a CANDIDATE right after SIMULTANEOUS READY, which
        // has no reply, waited for the server's delayed ACK: 40 ms).
        let _ = stream.set_nodelay(true);
        let token = self.token();
        self.register(&mut stream, token)?;
        Ok(LineLink::new(
            token,
            server,
            stream,
            now + timeout,
            MAX_REPLY_BYTES,
        ))
    }

    pub(super) fn start_mailbox(&mut self, now: Instant, server: SocketAddr) {
        if let Some(mut old) = self.mailbox.take() {
            let _ = self.poll.registry().deregister(&mut old.stream);
        }
        match self.open_link(now, server, None, self.config.connect_timeout) {
            Ok(link) => {
                debug!(%server, "connecting to the mailbox server");
                self.mailbox = Some(link);
            }
            Err(e) => self
                .core
                .handle_mailbox_closed(now, &format!("cannot connect: {e}")),
        }
    }

    /// Advances the mailbox connection: finish connecting, write, read lines into the core.
    pub(super) fn drive_mailbox(&mut self, now: Instant, closing: bool) {
        let Some(m) = self.mailbox.as_mut() else {
            return;
        };
        let progress = m.drive(&mut self.read_buf, closing, None);
        if progress.opened.is_some() {
            self.core.handle_mailbox_open(now);
            self.apply_outputs(now);
            if let Some(m) = self.mailbox.as_mut()
                && let Err(e) = m.flush()
            {
                self.mailbox_lost(now, &format!("write failed: {e}"));
                return;
            }
        }
        for line in progress.lines {
            self.core.handle_mailbox_line(now, &line);
        }
        if let Some(reason) = progress.failure {
            self.mailbox_lost(now, &reason);
        }
        self.apply_outputs(now);
    }

    pub(super) fn mailbox_lost(&mut self, now: Instant, reason: &str) {
        if let Some(mut m) = self.mailbox.take() {
            let _ = self.poll.registry().deregister(&mut m.stream);
            debug!(server = %m.server, reason, "mailbox connection lost");
            self.core.handle_mailbox_closed(now, reason);
        }
    }

    pub(super) fn start_session(
        &mut self,
        now: Instant,
        session: SessionId,
        server: SocketAddr,
        bind_port: Option<u16>,
    ) {
        match self.open_link(now, server, bind_port, self.config.connect_timeout) {
            Ok(link) => {
                debug!(%server, ?session, ?bind_port, "session connecting");
                self.session_tokens.insert(session, link.token);
                self.sessions.insert(link.token, (session, link));
            }
            Err(e) => {
                let reason = format!("cannot connect to {server}: {e}");
                self.core.handle_session_closed(now, session, &reason);
            }
        }
    }

    pub(super) fn drive_session(&mut self, now: Instant, token: Token, closing: bool) {
        let Some((session, link)) = self.sessions.get_mut(&token) else {
            return;
        };
        let session = *session;
        let progress = link.drive(&mut self.read_buf, closing, None);
        if let Some(local) = progress.opened {
            self.core.handle_session_open(now, session, local);
            self.apply_outputs(now);
        }
        let unix = self.unix_now();
        for line in progress.lines {
            self.core.handle_session_line(now, unix, session, &line);
        }
        if let Some(reason) = progress.failure
            && let Some((_, mut link)) = self.sessions.remove(&token)
        {
            self.session_tokens.remove(&session);
            let _ = self.poll.registry().deregister(&mut link.stream);
            debug!(server = %link.server, ?session, reason, "session lost");
            self.core.handle_session_closed(now, session, &reason);
        }
        self.apply_outputs(now);
    }

    /// Carries out [`Output::SessionSend`](crate::core::Output::SessionSend).
    pub(super) fn session_send(&mut self, now: Instant, session: SessionId, line: &str) {
        if let Some(token) = self.session_tokens.get(&session).copied()
            && let Some((_, link)) = self.sessions.get_mut(&token)
        {
            link.queue(line);
            if link.connected {
                self.drive_session(now, token, false);
            }
        }
    }

    /// Carries out [`Output::SessionClose`](crate::core::Output::SessionClose).
    pub(super) fn session_close(&mut self, session: SessionId, reason: &str) {
        if let Some(token) = self.session_tokens.remove(&session)
            && let Some((_, mut link)) = self.sessions.remove(&token)
        {
            let _ = link.flush();
            debug!(server = %link.server, ?session, reason, "session closed");
            let _ = self.poll.registry().deregister(&mut link.stream);
        }
    }
}
