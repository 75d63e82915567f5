//! The driver's side of peer connections: accept them, register them with the poll, read
//! their bytes into lines for the core (at most [`READ_BUDGET_BYTES`] per connection per turn),
//! flush what the application queued, close them, and drop closed ones once their lines were
//! read.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tracing::{debug, warn};

use super::Net;
use super::connection::{Connection, Framer, Received};
use super::handshake::Origin;
use crate::core::{Direction, LineVerdict, Security};
use crate::ids::ConnId;
use crate::secure::SecureError;
use wire::io::{READ_BUDGET_BYTES, ReadStep, read_step};

impl Net {
    pub(super) fn accept_all(&mut self, now: Instant) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => {
                    // An IPv4 peer on the dual-stack listener comes as `::ffff:a.b.c.d`.
                    let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                    let (all, from_ip) = self.accepted_pending(addr.ip());
                    if all >= self.config.max_inbound || from_ip >= self.config.max_inbound_per_ip {
                        // Dropped at once: too many connections are in their handshake
                        // already (each frees its slot when done or timed out).
                        debug!(%addr, all, from_ip, "accepted and closed: too many handshakes");
                        crate::metrics::global().count_handshake("refused");
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    debug!(%addr, "accepted");
                    self.add_conn(
                        now,
                        stream,
                        addr,
                        Direction::Inbound,
                        Security::Sniff,
                        Origin::Accepted,
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog until the next event.
                    warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    /// A new TCP stream to a peer (accepted, dialed, punched): registered, then started as
    /// `security` says (see `handshake.rs`).
    pub(super) fn add_conn(
        &mut self,
        now: Instant,
        mut stream: TcpStream,
        addr: SocketAddr,
        dir: Direction,
        security: Security,
        origin: Origin,
    ) {
        let token = self.token();
        let id = ConnId(token.0 as u64);
        let _ = stream.set_nodelay(true);
        // Keep-alive probes keep the NAT mappings on the path of an idle connection (and
        // find a dead peer: after the probes' retries go unanswered, the read fails).
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(self.config.keepalive)
            .with_interval((self.config.keepalive / 3).max(Duration::from_secs(1)))
            .with_retries(3);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            debug!(%addr, error = %e, "cannot set TCP keep-alive");
        }
        if let Err(e) = self.register(&mut stream, token) {
            warn!(%addr, error = %e, "cannot register connection");
            if origin == Origin::Dialed {
                self.core
                    .handle_dial_failed(now, addr, &format!("cannot register: {e}"));
            }
            return;
        }
        self.start_conn(now, id, stream, addr, dir, security, origin, &[]);
    }

    /// Lists a connection (its handshake, if any, done); `out`: bytes still to write (the
    /// end of the handshake).
    pub(super) fn push_conn(
        &mut self,
        id: ConnId,
        stream: TcpStream,
        addr: SocketAddr,
        dir: Direction,
        framer: Framer,
        out: Vec<u8>,
    ) {
        self.index.insert(id, self.conns.len());
        self.conns.push(Connection {
            id,
            addr,
            direction: dir,
            stream: Some(stream),
            framer,
            inbox: VecDeque::new(),
            out,
            written: 0,
            max_output: self.config.max_output_bytes,
            close_request: None,
            closed: None,
            lines_out: 0,
        });
    }

    /// Reads what `conn` has into the core. `closing`: the event also reported the peer's FIN
    /// (or an error), which raises no further edge, so read on until EOF. At most
    /// [`READ_BUDGET_BYTES`] per turn: a peer with more waiting is read again next turn.
    pub(super) fn read_conn(&mut self, now: Instant, conn: ConnId, closing: bool) {
        let Some(&i) = self.index.get(&conn) else {
            return;
        };
        let mut failure: Option<String> = None;
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            let mut drained = false;
            let room = budget.min(self.read_buf.len());
            match read_step(stream, &mut self.read_buf[..room], closing) {
                ReadStep::Data { len, more } => {
                    c.framer.push(&self.read_buf[..len]);
                    drained = !more;
                    budget = budget.saturating_sub(len);
                    if more && budget == 0 {
                        self.unfinished.push((conn, closing));
                        drained = true;
                    }
                }
                ReadStep::Eof => failure = Some("closed by peer".to_owned()),
                ReadStep::Blocked => drained = true,
                ReadStep::Failed(e) => failure = Some(format!("read failed: {e}")),
            }
            // Hand complete lines to the core (even those before an EOF: nothing is lost).
            loop {
                let c = &mut self.conns[i];
                match c.framer.next_str() {
                    None => break,
                    Some(Ok(line)) => {
                        if self.core.handle_line(now, conn, line) == LineVerdict::Deliver
                            && !self.core.deliver_behind_queued(conn, line)
                        {
                            c.inbox.push_back(Received {
                                line: line.to_owned(),
                                signer: None,
                            });
                        }
                    }
                    Some(Err(SecureError::Line(e))) => {
                        failure = Some(format!("protocol error: {e}"));
                        break;
                    }
                    Some(Err(e)) => {
                        failure = Some(format!("protocol error: {e}"));
                        break;
                    }
                }
            }
            if drained || failure.is_some() || !self.conns[i].is_open() {
                break;
            }
        }
        if let Some(reason) = failure {
            self.lost(now, conn, &reason);
        }
    }

    /// A connection broke or misbehaved: close it and tell the core.
    pub(super) fn lost(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if self.close_conn(conn, reason) {
            self.core.handle_closed(now, conn, reason);
        }
    }

    /// Closes the socket; the connection stays listed until its lines are read. Returns
    /// whether it was open.
    pub(super) fn close_conn(&mut self, conn: ConnId, reason: &str) -> bool {
        let Some(&i) = self.index.get(&conn) else {
            return false;
        };
        let c = &mut self.conns[i];
        let Some(mut stream) = c.stream.take() else {
            return false;
        };
        let _ = c.flush_on(&mut stream);
        let _ = self.poll.registry().deregister(&mut stream);
        let _ = stream.shutdown(Shutdown::Both);
        c.close_request = None;
        c.closed = Some(reason.to_owned());
        c.out = Vec::new();
        c.written = 0;
        if reason.starts_with("protocol error") || reason.starts_with("peer does not read") {
            warn!(conn = %conn, addr = %c.addr, reason, "disconnected");
        } else {
            debug!(conn = %conn, addr = %c.addr, reason, "disconnected");
        }
        true
    }

    pub(super) fn flush_all(&mut self) {
        let now = Instant::now();
        let old: Vec<ConnId> = self
            .old_paths
            .iter()
            .filter(|(_, c)| c.has_output())
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.flush_old_path(now, id);
        }
        let pending: Vec<ConnId> = self.handshakes.keys().copied().collect();
        for id in pending {
            self.flush_handshake(now, id);
        }
        let mut broken = Vec::new();
        for c in &mut self.conns {
            if c.has_output()
                && let Err(e) = c.flush()
            {
                broken.push((c.id, format!("write failed: {e}")));
            }
        }
        for (conn, reason) in broken {
            self.lost(now, conn, &reason);
        }
    }

    /// Carries out close requests, times out dials and queries, and drops closed connections
    /// whose lines have all been read.
    pub(super) fn reap(&mut self) {
        let now = Instant::now();
        let requests: Vec<(ConnId, String)> = self
            .conns
            .iter()
            .filter_map(|c| c.close_request.clone().map(|r| (c.id, r)))
            .collect();
        for (conn, reason) in requests {
            self.lost(now, conn, &reason);
        }
        self.expire(now);
        let mut i = 0;
        while i < self.conns.len() {
            if self.conns[i].closed.is_some() && self.conns[i].inbox.is_empty() {
                let gone = self.conns.swap_remove(i);
                self.index.remove(&gone.id);
                if let Some(moved) = self.conns.get(i) {
                    self.index.insert(moved.id, i);
                }
            } else {
                i += 1;
            }
        }
    }
}
