//! Outbound connects the driver watches: dials to peers (plain, and hole-punch dials from a
//! shared port at their meeting time) and short requests to rendezvous servers.
//!
//! A dial finishes with `take_error()` then `peer_addr()` (mio's rule for non-blocking
//! connects) and becomes a connection, or is reported failed; a punch dial waits in
//! `punches` until its meeting time; a request ([`Query`]) connects, writes its lines, reads
//! one reply line and reports to the core. Each has a deadline (see `expire` in `turn.rs`).

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Token;
use mio::net::TcpStream;
use tracing::debug;

use super::handshake::Origin;
use super::inflight::{Dial, Query, libc_einprogress};
use super::links::{connect_from, punch_ip};
use super::{MAX_REPLY_BYTES, Net};
use crate::core::{Direction, Security};
use crate::ids::QueryId;
use wire::line::LineFramer;

impl Net {
    pub(super) fn start_dial(&mut self, now: Instant, addr: SocketAddr, security: Security) {
        debug!(%addr, "dialing");
        let stream = TcpStream::connect(addr).map_err(|e| e.to_string());
        let deadline = now + self.config.connect_timeout;
        self.track_dial(now, addr, stream, deadline, Direction::Outbound, security);
    }

    /// Watches a connect in flight until it finishes or `deadline` passes; a connect that
    /// could not even start is reported as failed at once.
    fn track_dial(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        stream: Result<TcpStream, String>,
        deadline: Instant,
        direction: Direction,
        security: Security,
    ) {
        let token = self.token();
        let registered = stream.and_then(|mut stream| {
            self.register(&mut stream, token)
                .map(|()| stream)
                .map_err(|e| e.to_string())
        });
        match registered {
            Ok(stream) => {
                let dial = Dial {
                    addr,
                    stream,
                    deadline,
                    direction,
                    security,
                };
                self.dials.insert(token, dial);
            }
            Err(e) => self.core.handle_dial_failed(now, addr, &e),
        }
    }

    pub(super) fn finish_dial(&mut self, now: Instant, token: Token) {
        let Some(dial) = self.dials.get(&token) else {
            return;
        };
        let result = match dial.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => dial.stream.peer_addr().map(|_| ()),
        };
        match result {
            Ok(()) => {
                if let Some(mut dial) = self.dials.remove(&token) {
                    let _ = self.poll.registry().deregister(&mut dial.stream);
                    debug!(addr = %dial.addr, direction = ?dial.direction, "connected");
                    self.add_conn(
                        now,
                        dial.stream,
                        dial.addr,
                        dial.direction,
                        dial.security,
                        Origin::Dialed,
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {} // still connecting
            Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
            Err(e) => {
                if let Some(mut dial) = self.dials.remove(&token) {
                    let _ = self.poll.registry().deregister(&mut dial.stream);
                    debug!(addr = %dial.addr, error = %e, "dial failed");
                    self.core.handle_dial_failed(now, dial.addr, &e.to_string());
                }
            }
        }
    }

    /// Starts the hole-punch dials whose meeting time has come.
    pub(super) fn start_due_punches(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.punches.len() {
            if self.punches[i].at <= now {
                due.push(self.punches.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for p in due {
            // The meeting's dial is not needed while a dial to the same address is still
            // under way (the eager dial of a punch): its SYN opened our NAT already, and a
            // handshake in progress must not be cut (a replacement would reset it). A fresh
            // dial replaces it instead (a retransmission where no handshake can be half done).
            let under_way: Vec<Token> = self
                .dials
                .iter()
                .filter(|(_, d)| d.addr == p.addr)
                .map(|(t, _)| *t)
                .collect();
            if !under_way.is_empty() && !p.fresh {
                debug!(addr = %p.addr, "meeting dial skipped: a dial to it is under way");
                continue;
            }
            // A dial to it that connected and is in its handshake: that is the punch (a
            // fresh SYN from the same port would only fail on the 4-tuple in use).
            if self.dialed_handshake_to(p.addr) {
                debug!(addr = %p.addr, "punch dial skipped: a connection to it is in its handshake");
                continue;
            }
            for token in under_way {
                if let Some(mut dial) = self.dials.remove(&token) {
                    let _ = self.poll.registry().deregister(&mut dial.stream);
                    debug!(addr = %dial.addr, "dial replaced by a fresh SYN");
                }
            }
            let late = now.saturating_duration_since(p.at);
            debug!(addr = %p.addr, from_port = p.from_port, late_us = late.as_micros(), "punch dial");
            let stream = connect_from(punch_ip(self.config.bind, p.addr), p.from_port, p.addr)
                .map_err(|e| format!("cannot dial from port {}: {e}", p.from_port));
            self.track_dial(
                now,
                p.addr,
                stream,
                now + p.timeout,
                p.direction,
                p.security,
            );
        }
        self.apply_outputs(now);
    }

    /// Drops dials (pending punches included) to `addrs` that have not connected.
    pub(super) fn cancel_dials(&mut self, addrs: &[SocketAddr]) {
        self.punches.retain(|p| !addrs.contains(&p.addr));
        let tokens: Vec<Token> = self
            .dials
            .iter()
            .filter(|(_, d)| addrs.contains(&d.addr))
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            if let Some(mut dial) = self.dials.remove(&token) {
                let _ = self.poll.registry().deregister(&mut dial.stream);
                debug!(addr = %dial.addr, "dial cancelled");
            }
        }
    }

    pub(super) fn start_query(
        &mut self,
        now: Instant,
        id: QueryId,
        server: SocketAddr,
        lines: &[String],
        want_reply: bool,
    ) {
        let mut stream = match TcpStream::connect(server) {
            Ok(s) => s,
            Err(e) => {
                self.core
                    .handle_query_done(now, id, Err(format!("cannot connect: {e}")));
                return;
            }
        };
        let token = self.token();
        if let Err(e) = self.register(&mut stream, token) {
            self.core.handle_query_done(now, id, Err(e.to_string()));
            return;
        }
        let mut out = Vec::new();
        for line in lines {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        debug!(%server, request = ?lines, "rendezvous request");
        self.queries.insert(
            token,
            Query {
                id,
                server,
                stream,
                connected: false,
                out,
                written: 0,
                want_reply,
                reply: LineFramer::new(MAX_REPLY_BYTES),
                deadline: now + self.config.query_timeout,
            },
        );
    }

    /// Advances a rendezvous request: connect, write, read one line.
    pub(super) fn drive_query(&mut self, now: Instant, token: Token) {
        let Some(q) = self.queries.get_mut(&token) else {
            return;
        };
        let result = q.step(&mut self.read_buf);
        if let Some(result) = result
            && let Some(mut q) = self.queries.remove(&token)
        {
            let _ = self.poll.registry().deregister(&mut q.stream);
            if let Err(e) = &result {
                debug!(server = %q.server, error = %e, "rendezvous request failed");
            }
            self.core.handle_query_done(now, q.id, result);
        }
    }
}
