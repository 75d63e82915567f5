//! [`Connection`]: one connection to a peer as the application sees it (read its lines, send
//! lines, close it), with the driver's buffers: the framer (plain lines, or the encrypted line
//! channel of a connection whose handshake is done), the lines received and not yet taken,
//! and the bounded output queue.
//!
//! Data and its own I/O only: the driver (`peers.rs`, `turn.rs`) registers, reads and reaps
//! connections; this module knows nothing of [`Net`](super::Net). A connection still in its
//! handshake is not one yet (see `handshake.rs`).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;

use super::error::SendError;
use crate::core::Direction;
use crate::ids::ConnId;
use crate::secure::{SecureError, SecureLines};
use wire::key::PublicKey;
use wire::line::LineFramer;

/// How a connection's bytes become lines and its lines bytes.
#[derive(Debug)]
pub(super) enum Framer {
    /// Plain lines (`\r\n`): a PyP2P peer, or plain-text mode.
    Plain(LineFramer),
    /// Encrypted frames carrying the lines, after a Noise handshake that proved `peer`.
    Secure {
        /// The channel.
        lines: Box<SecureLines>,
        /// The key the handshake proved.
        peer: PublicKey,
    },
}

impl Framer {
    /// Bytes from the peer.
    pub(super) fn push(&mut self, bytes: &[u8]) {
        match self {
            Framer::Plain(f) => f.push(bytes),
            Framer::Secure { lines, .. } => lines.push(bytes),
        }
    }

    /// The next complete line, or the error that ends the stream (after the lines before it).
    pub(super) fn next_str(&mut self) -> Option<Result<&str, SecureError>> {
        match self {
            Framer::Plain(f) => f.next_str().map(|r| r.map_err(SecureError::from)),
            Framer::Secure { lines, .. } => lines.next_str(),
        }
    }

    /// Queues `line` for the peer: plain lines straight into `out`; encrypted ones into the
    /// channel, sealed into `out` by [`Framer::seal`].
    fn queue(&mut self, out: &mut Vec<u8>, line: &str) {
        match self {
            Framer::Plain(_) => {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Framer::Secure { lines, .. } => lines.queue_line(line),
        }
    }

    /// Plaintext queued and not yet sealed (0 for plain lines).
    fn pending(&self) -> usize {
        match self {
            Framer::Plain(_) => 0,
            Framer::Secure { lines, .. } => lines.pending(),
        }
    }

    /// Encrypts what is queued into `out` (nothing to do for plain lines).
    fn seal(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Framer::Plain(_) => Ok(()),
            Framer::Secure { lines, .. } => lines.seal(out).map_err(io::Error::other),
        }
    }

    /// The key the connection proved, if encrypted.
    pub(super) fn peer_key(&self) -> Option<PublicKey> {
        match self {
            Framer::Plain(_) => None,
            Framer::Secure { peer, .. } => Some(*peer),
        }
    }
}

/// Bytes read per `read` call (and the output buffer kept between bursts).
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// A line received on a connection, and who wrote it when that is proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The line, without terminator.
    pub line: String,
    /// The key that signed it: set for an origin-signed broadcast whose signature verified
    /// ([`crate::Net::broadcast_signed`]), whichever nodes forwarded it; `None` for every
    /// other line (a line the peer sent directly was written by the peer: on an encrypted
    /// connection, the key of [`Connection::peer_key`]).
    pub signer: Option<PublicKey>,
}

/// One connection to a peer, as the application sees it.
#[derive(Debug)]
pub struct Connection {
    pub(super) id: ConnId,
    pub(super) addr: SocketAddr,
    pub(super) direction: Direction,
    /// `None` once closed.
    pub(super) stream: Option<TcpStream>,
    pub(super) framer: Framer,
    pub(super) inbox: VecDeque<Received>,
    pub(super) out: Vec<u8>,
    /// Bytes of `out` already written.
    pub(super) written: usize,
    pub(super) max_output: usize,
    /// Set when the application or an overflow asks to close; carried out next turn.
    pub(super) close_request: Option<String>,
    /// Set once closed.
    pub(super) closed: Option<String>,
    /// Lines queued on the current stream since it opened (a path switch tells the peer).
    pub(super) lines_out: u64,
}

impl Connection {
    /// The connection's number.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Who dialed.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The key the peer proved in the connection's handshake: `Some` for an encrypted
    /// connection (the default between nodes of this software), `None` for a plain-text one
    /// (a PyP2P peer).
    pub fn peer_key(&self) -> Option<PublicKey> {
        self.framer.peer_key()
    }

    /// Whether the connection is encrypted (see [`Connection::peer_key`]).
    pub fn is_encrypted(&self) -> bool {
        self.peer_key().is_some()
    }

    /// Whether the connection is still open (a closed one stays visible until its received
    /// lines are read).
    pub fn is_open(&self) -> bool {
        self.closed.is_none() && self.close_request.is_none()
    }

    /// Why it closed, once it did.
    pub fn close_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Bytes queued for the peer and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.out.len() - self.written + self.framer.pending()
    }

    /// Takes every line received so far (plain lines and broadcasts delivered here), oldest
    /// first, without terminators.
    pub fn lines(&mut self) -> impl Iterator<Item = String> + '_ {
        self.inbox.drain(..).map(|r| r.line)
    }

    /// Takes every line received so far as [`Connection::lines`] does, each with its signer
    /// when it is an origin-signed broadcast (who wrote it, checked).
    pub fn received(&mut self) -> std::collections::vec_deque::Drain<'_, Received> {
        self.inbox.drain(..)
    }

    /// Takes the oldest received line.
    pub fn recv_line(&mut self) -> Option<String> {
        self.inbox.pop_front().map(|r| r.line)
    }

    /// Queues `line` (`\r\n` is appended) to be written at the next turn of the loop.
    pub fn send_line(&mut self, line: &str) -> Result<(), SendError> {
        if line.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err(SendError::LineBreak);
        }
        self.queue(line)
    }

    /// Asks to close the connection (done at the next turn).
    pub fn close(&mut self) {
        if self.close_request.is_none() && self.closed.is_none() {
            self.close_request = Some("closed by the application".to_owned());
        }
    }

    pub(super) fn queue(&mut self, line: &str) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::Closed(self.id));
        }
        let bytes = self.queued_bytes() + line.len() + 2;
        if bytes > self.max_output {
            self.close_request = Some(format!(
                "peer does not read: {bytes} bytes queued (limit {})",
                self.max_output
            ));
            return Err(SendError::OutputFull {
                conn: self.id,
                bytes,
                limit: self.max_output,
            });
        }
        self.framer.queue(&mut self.out, line);
        self.lines_out += 1;
        Ok(())
    }

    /// Writes queued output until done or the socket is full. Err: the connection broke.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        self.framer.seal(&mut self.out)?;
        while self.written < self.out.len() {
            match stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
            if self.out.capacity() > READ_CHUNK {
                self.out.shrink_to(READ_CHUNK);
            }
        } else if self.written > READ_CHUNK && self.written * 2 >= self.out.len() {
            // Compact only once the written part is at least half: moving the unwritten rest
            // on every flush costs O(queued) per turn for a slow reader with a long queue.
            self.out.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    pub(super) fn has_output(&self) -> bool {
        self.written < self.out.len() || self.framer.pending() > 0
    }
}

impl Connection {
    /// Writes what is queued on `stream` (already taken out of the connection), blocking
    /// or not as the socket is; used when closing.
    pub(super) fn flush_on(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        self.framer.seal(&mut self.out)?;
        while self.written < self.out.len() {
            match stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
