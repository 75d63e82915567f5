//! Connections before they are connections: the sniff of an accepted connection's first
//! bytes, and the Noise handshake ([`crate::secure::Handshake`]) every connection between
//! nodes of this software runs before the core hears of it.
//!
//! How a connection starts is the core's decision ([`Security`], carried by the output that
//! made the connection; an accepted one always sniffs). Here the driver feeds the sans-IO
//! handshake the bytes it reads, writes what it asks to send, and at the end either makes the
//! stream a [`Connection`] (plain lines, or the encrypted channel and the key the peer proved)
//! and tells the core (`handle_open`, `handle_secure_open`, `handle_relay_open`), or closes
//! it and reports why: a dial fails with the reason (`peer is key X, not the key Y we
//! dialed`), a relay fails, an accepted connection is logged. A handshake that stalls times
//! out (`handshake_timeout`) and frees its slot; at most `max_inbound` accepted connections
//! (`max_inbound_per_ip` from one IP) may be in their handshake at once.
//!
//! **Sniff rule** (PyP2P compatibility, see [`wire::frame::sniff`]): an accepted connection
//! whose first byte is NUL runs our handshake (as responder); any other first byte is a plain
//! line (PyP2P never starts with NUL), and the connection is plain text from there.

use std::io::{self, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;
use tracing::{debug, warn};

use super::Net;
use super::connection::Framer;
use crate::core::{Direction, Security};
use crate::ids::{ConnId, RelayId};
use crate::secure::{
    Handshake, HandshakeConfig, HandshakeError, HandshakeOutput, NOISE_PREAMBLE, Role, Sniff, sniff,
};
use wire::io::{READ_BUDGET_BYTES, ReadStep, read_step};
use wire::key::PublicKey;
use wire::line::LineFramer;

/// Where a connection came from (who is told when its handshake fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Accepted by our listener.
    Accepted,
    /// A dial of ours (plain, punch, birthday burst): the core hears of a failure as a
    /// failed dial.
    Dialed,
    /// A relayed stream past `RELAY OK`.
    Relay(RelayId),
    /// One guess of a birthday spray (failures are not reported).
    Guess,
}

/// Where a pending connection is.
#[derive(Debug)]
enum Stage {
    /// Waiting for the first bytes (the bytes so far: at most the preamble).
    Sniff(Vec<u8>),
    /// The handshake runs.
    Noise(Box<Handshake>),
}

/// A connection in its sniff or handshake.
#[derive(Debug)]
pub(super) struct Pending {
    addr: SocketAddr,
    direction: Direction,
    pub(super) origin: Origin,
    stream: TcpStream,
    stage: Stage,
    /// Bytes to write (handshake messages), and how many are written.
    out: Vec<u8>,
    written: usize,
    pub(super) deadline: Instant,
}

impl Pending {
    /// The peer's IP (for the per-IP cap on accepted connections in their handshake).
    pub(super) fn ip(&self) -> IpAddr {
        self.addr.ip().to_canonical()
    }
}

/// What feeding bytes to a pending connection led to.
enum Step {
    /// Still pending.
    Pending,
    /// It is a connection now (plain or encrypted).
    Open,
    /// It failed (and is gone).
    Failed,
}

impl Net {
    /// Starts connection `id` on `stream` (registered under `id`'s token): plain at once, or
    /// a sniff or handshake first. `first`: bytes already read from it (after `RELAY OK`).
    #[allow(clippy::too_many_arguments)] // each is one fact of the new connection
    pub(super) fn start_conn(
        &mut self,
        now: Instant,
        id: ConnId,
        stream: TcpStream,
        addr: SocketAddr,
        direction: Direction,
        security: Security,
        origin: Origin,
        first: &[u8],
    ) {
        let config = HandshakeConfig {
            timeout: self.config.handshake_timeout,
            max_line: self.config.max_line_bytes,
            ..HandshakeConfig::default()
        };
        let stage = match security {
            Security::Plain => {
                self.push_conn(
                    id,
                    stream,
                    addr,
                    direction,
                    Framer::Plain(LineFramer::new(self.config.max_line_bytes)),
                    Vec::new(),
                );
                self.open_in_core(now, id, origin, None);
                if let Some(&i) = self.index.get(&id) {
                    self.conns[i].framer.push(first);
                }
                // A connection may already have bytes (or a FIN) waiting: read until
                // WouldBlock.
                self.read_conn(now, id, true);
                return;
            }
            Security::Sniff => Stage::Sniff(Vec::new()),
            Security::Initiate { expect } | Security::Respond { expect } => {
                let role = if matches!(security, Security::Initiate { .. }) {
                    Role::Initiator
                } else {
                    Role::Responder
                };
                Stage::Noise(Box::new(Handshake::new(
                    now,
                    role,
                    &self.noise,
                    expect,
                    config,
                    rand::random(),
                )))
            }
        };
        debug!(%id, %addr, ?security, "handshake started");
        self.handshakes.insert(
            id,
            Pending {
                addr,
                direction,
                origin,
                stream,
                stage,
                out: Vec::new(),
                written: 0,
                deadline: now + config.timeout,
            },
        );
        if matches!(self.feed(now, id, first), Step::Pending) {
            self.drive_handshake(now, id, true);
        }
    }

    /// Reads what pending connection `id` has and feeds it on; writes what it has to send.
    pub(super) fn drive_handshake(&mut self, now: Instant, id: ConnId, closing: bool) {
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let Some(p) = self.handshakes.get_mut(&id) else {
                return;
            };
            let room = budget.min(self.read_buf.len());
            let step = read_step(&mut p.stream, &mut self.read_buf[..room], closing);
            let (bytes, more) = match step {
                ReadStep::Data { len, more } => (self.read_buf[..len].to_vec(), more),
                ReadStep::Blocked => break,
                ReadStep::Eof => {
                    self.handshake_closed(now, id, None);
                    return;
                }
                ReadStep::Failed(e) => {
                    self.handshake_closed(now, id, Some(format!("read failed: {e}")));
                    return;
                }
            };
            budget = budget.saturating_sub(bytes.len());
            match self.feed(now, id, &bytes) {
                Step::Pending if more && budget > 0 => {}
                Step::Pending if more => {
                    self.unfinished.push((id, closing));
                    break;
                }
                Step::Pending => break,
                Step::Open => {
                    // The rest (if any) is the connection's now.
                    if more || closing {
                        self.read_conn(now, id, closing);
                    }
                    return;
                }
                Step::Failed => return,
            }
        }
        self.flush_handshake(now, id);
    }

    /// Writes what pending connection `id` has to send.
    pub(super) fn flush_handshake(&mut self, now: Instant, id: ConnId) {
        let Some(p) = self.handshakes.get_mut(&id) else {
            return;
        };
        let mut failure = None;
        while p.written < p.out.len() {
            match p.stream.write(&p.out[p.written..]) {
                Ok(0) => {
                    failure = Some("write failed: connection closed".to_owned());
                    break;
                }
                Ok(n) => p.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(format!("write failed: {e}"));
                    break;
                }
            }
        }
        if let Some(why) = failure {
            self.handshake_failed(now, id, &why);
        }
    }

    /// Fails the handshakes whose time is up.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        let late: Vec<ConnId> = self
            .handshakes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(p) = self.handshakes.get_mut(&id) else {
                continue;
            };
            let why = match &mut p.stage {
                Stage::Sniff(seen) => format!(
                    "timed out after {:?}: the peer sent {} bytes, not enough to tell plain text \
                     from our handshake",
                    self.config.handshake_timeout,
                    seen.len()
                ),
                Stage::Noise(hs) => {
                    hs.handle_timeout(now);
                    match hs.poll_output() {
                        Some(HandshakeOutput::Failed(e)) => e.to_string(),
                        _ => format!("timed out after {:?}", self.config.handshake_timeout),
                    }
                }
            };
            crate::metrics::global().count_handshake("timeout");
            self.handshake_failed(now, id, &why);
        }
    }

    /// Feeds `bytes` to pending connection `id`.
    fn feed(&mut self, now: Instant, id: ConnId, bytes: &[u8]) -> Step {
        let bytes = match self.sniffed(now, id, bytes) {
            Ok(bytes) => bytes,
            Err(step) => return step,
        };
        let Some(p) = self.handshakes.get_mut(&id) else {
            return Step::Failed;
        };
        let Stage::Noise(hs) = &mut p.stage else {
            return Step::Pending;
        };
        if !bytes.is_empty() {
            hs.handle_bytes(now, &bytes);
        }
        let mut result = None;
        while let Some(output) = hs.poll_output() {
            match output {
                HandshakeOutput::Send(b) => p.out.extend_from_slice(&b),
                HandshakeOutput::Done(done) => {
                    result = Some(Ok(done));
                    break;
                }
                HandshakeOutput::Failed(e) => {
                    result = Some(Err(e));
                    break;
                }
            }
        }
        match result {
            None => {
                self.flush_handshake(now, id);
                if self.handshakes.contains_key(&id) {
                    Step::Pending
                } else {
                    Step::Failed
                }
            }
            Some(Ok(done)) => {
                crate::metrics::global().count_handshake("ok");
                let done = *done;
                let mut lines = done.lines;
                lines.push(&done.leftover);
                self.promote(
                    now,
                    id,
                    Framer::Secure {
                        lines: Box::new(lines),
                        peer: done.peer,
                    },
                    &[],
                );
                Step::Open
            }
            Some(Err(e)) => {
                crate::metrics::global().count_handshake("failed");
                self.handshake_failed(now, id, &e.to_string());
                Step::Failed
            }
        }
    }

    /// The sniff of an accepted connection: the bytes for its handshake (all of `bytes` when
    /// the handshake runs already), or what became of it (still too few bytes, plain text,
    /// garbage).
    fn sniffed(&mut self, now: Instant, id: ConnId, bytes: &[u8]) -> Result<Vec<u8>, Step> {
        let Some(p) = self.handshakes.get_mut(&id) else {
            return Err(Step::Failed);
        };
        let Stage::Sniff(seen) = &mut p.stage else {
            return Ok(bytes.to_vec());
        };
        seen.extend_from_slice(bytes);
        match sniff(seen) {
            Sniff::NeedMore => Err(Step::Pending),
            Sniff::Plain => {
                let first = std::mem::take(seen);
                crate::metrics::global().count_handshake("plain");
                let framer = Framer::Plain(LineFramer::new(self.config.max_line_bytes));
                self.promote(now, id, framer, &first);
                Err(Step::Open)
            }
            Sniff::Unknown => {
                let got = seen[..seen.len().min(NOISE_PREAMBLE.len())].escape_ascii();
                let why = format!(
                    "the peer sent {got} where our preamble \"\\0p2p-nx1\" belongs (another \
                     protocol or version?)"
                );
                crate::metrics::global().count_handshake("failed");
                self.handshake_failed(now, id, &why);
                Err(Step::Failed)
            }
            Sniff::Noise => {
                let config = HandshakeConfig {
                    timeout: self.config.handshake_timeout,
                    max_line: self.config.max_line_bytes,
                    ..HandshakeConfig::default()
                };
                let first = std::mem::take(seen);
                p.stage = Stage::Noise(Box::new(Handshake::new(
                    now,
                    Role::Responder,
                    &self.noise,
                    None,
                    config,
                    rand::random(),
                )));
                Ok(first)
            }
        }
    }

    /// The peer closed (or the read failed) during the handshake.
    fn handshake_closed(&mut self, now: Instant, id: ConnId, failure: Option<String>) {
        let why = match (failure, self.handshakes.get_mut(&id).map(|p| &mut p.stage)) {
            (Some(why), _) => why,
            (None, Some(Stage::Noise(hs))) => {
                hs.handle_eof(now);
                match hs.poll_output() {
                    Some(HandshakeOutput::Failed(e)) => e.to_string(),
                    _ => HandshakeError::Closed {
                        waiting_for: "the handshake",
                        received: 0,
                    }
                    .to_string(),
                }
            }
            (None, _) => "closed by peer before it sent anything".to_owned(),
        };
        crate::metrics::global().count_handshake("failed");
        self.handshake_failed(now, id, &why);
    }

    /// Ends pending connection `id`: closes it and tells whoever waits for it.
    fn handshake_failed(&mut self, now: Instant, id: ConnId, why: &str) {
        let Some(mut p) = self.handshakes.remove(&id) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut p.stream);
        let _ = p.stream.shutdown(Shutdown::Both);
        let reason = format!("handshake failed: {why}");
        match p.origin {
            Origin::Dialed => {
                debug!(%id, addr = %p.addr, reason, "dial refused");
                self.core.handle_dial_failed(now, p.addr, &reason);
            }
            Origin::Relay(relay) => {
                debug!(%id, addr = %p.addr, reason, "relayed connection refused");
                self.core.handle_relay_failed(now, relay, &reason);
            }
            Origin::Accepted => {
                warn!(%id, addr = %p.addr, reason, "inbound connection refused");
            }
            Origin::Guess => {
                // A birthday spray's guesses that connect to sockets the other side has
                // closed already: expected, many at a time.
                debug!(%id, addr = %p.addr, reason, "birthday guess dropped");
            }
        }
    }

    /// Pending connection `id` becomes a connection with `framer` (`first`: bytes already
    /// read for it) and the core hears of it.
    fn promote(&mut self, now: Instant, id: ConnId, framer: Framer, first: &[u8]) {
        let Some(p) = self.handshakes.remove(&id) else {
            return;
        };
        let key = framer.peer_key();
        debug!(%id, addr = %p.addr, key = ?key, "connection open");
        let out = if p.written < p.out.len() {
            p.out[p.written..].to_vec()
        } else {
            Vec::new()
        };
        self.push_conn(id, p.stream, p.addr, p.direction, framer, out);
        if let Some(&i) = self.index.get(&id) {
            self.conns[i].framer.push(first);
        }
        self.open_in_core(now, id, p.origin, key);
        // Lines already in the framer go to the core now.
        self.read_conn(now, id, false);
    }

    /// Tells the core connection `id` is open (`key`: what its handshake proved).
    fn open_in_core(&mut self, now: Instant, id: ConnId, origin: Origin, key: Option<PublicKey>) {
        let Some(&i) = self.index.get(&id) else {
            return;
        };
        let (addr, direction) = (self.conns[i].addr, self.conns[i].direction);
        match origin {
            Origin::Relay(relay) => {
                if self.core.handle_relay_open(now, relay, id, addr, key)
                    && let (Some(&i), Some(direction)) =
                        (self.index.get(&id), self.core.direction_of(id))
                {
                    // The core decides the logical direction; keep the record in step.
                    self.conns[i].direction = direction;
                }
                self.apply_outputs(now);
            }
            _ => {
                let _ = match key {
                    Some(key) => self.core.handle_secure_open(now, id, addr, direction, key),
                    None => self.core.handle_open(now, id, addr, direction),
                };
            }
        }
    }

    /// Accepted connections in their sniff or handshake now: in all, and from `ip`.
    pub(super) fn accepted_pending(&self, ip: IpAddr) -> (usize, usize) {
        let accepted = self
            .handshakes
            .values()
            .filter(|p| p.origin == Origin::Accepted);
        let (mut all, mut from_ip) = (0, 0);
        for p in accepted {
            all += 1;
            if p.ip() == ip.to_canonical() {
                from_ip += 1;
            }
        }
        (all, from_ip)
    }

    /// Whether a dial of ours to `addr` connected and is in its handshake.
    pub(super) fn dialed_handshake_to(&self, addr: SocketAddr) -> bool {
        self.handshakes
            .values()
            .any(|p| p.origin == Origin::Dialed && p.addr == addr)
    }

    /// Closes every pending connection (the node stops).
    pub(super) fn drop_handshakes(&mut self) {
        for (_, mut p) in self.handshakes.drain() {
            let _ = self.poll.registry().deregister(&mut p.stream);
        }
    }
}
