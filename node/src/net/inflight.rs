//! What the driver has in flight besides connections: dials (plain and hole-punch), punch
//! dials waiting for their meeting time, and short requests to a rendezvous server, each with
//! its deadline.
//!
//! Data and its own I/O only (a [`Query`] steps itself through connect, write and read); the
//! driver's side is in `dial.rs`. This module knows nothing of [`Net`](super::Net).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::core::{Direction, QueryReply, Security};
use crate::ids::QueryId;
use wire::line::LineFramer;

/// An outbound dial in progress.
#[derive(Debug)]
pub(super) struct Dial {
    pub(super) addr: SocketAddr,
    pub(super) stream: TcpStream,
    pub(super) deadline: Instant,
    /// How the connection is reported to the core (punch dials of a simultaneous node are
    /// reported as inbound).
    pub(super) direction: Direction,
    /// How the connection starts once connected.
    pub(super) security: Security,
}

/// A hole-punch dial waiting for its meeting time.
#[derive(Debug)]
pub(super) struct PendingPunch {
    pub(super) addr: SocketAddr,
    pub(super) from_port: u16,
    pub(super) at: Instant,
    pub(super) timeout: Duration,
    pub(super) direction: Direction,
    /// Replaces a dial to `addr` under way (see `Output::PunchDial`).
    pub(super) fresh: bool,
    /// How the connection starts once connected.
    pub(super) security: Security,
}

/// A short request to a rendezvous server in progress.
#[derive(Debug)]
pub(super) struct Query {
    pub(super) id: QueryId,
    pub(super) server: SocketAddr,
    pub(super) stream: TcpStream,
    pub(super) connected: bool,
    pub(super) out: Vec<u8>,
    pub(super) written: usize,
    pub(super) want_reply: bool,
    pub(super) reply: LineFramer,
    pub(super) deadline: Instant,
}

impl Query {
    /// Advances the request: connect, write, read one line. `None`: not finished yet.
    pub(super) fn step(&mut self, buf: &mut [u8]) -> Option<Result<QueryReply, String>> {
        if !self.connected {
            match self.stream.take_error() {
                Ok(Some(e)) | Err(e) => return Some(Err(format!("cannot connect: {e}"))),
                Ok(None) => {}
            }
            match self.stream.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e)
                    if e.kind() == io::ErrorKind::NotConnected
                        || e.raw_os_error() == Some(libc_einprogress()) =>
                {
                    return None;
                }
                Err(e) => return Some(Err(format!("cannot connect: {e}"))),
            }
        }
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(format!("write failed: {e}"))),
            }
        }
        let local = match self.stream.local_addr() {
            Ok(a) => a,
            Err(e) => return Some(Err(e.to_string())),
        };
        if !self.want_reply {
            let _ = self.stream.shutdown(Shutdown::Write);
            return Some(Ok(QueryReply { local, line: None }));
        }
        loop {
            match self.reply.next_str() {
                Some(Ok(line)) => {
                    return Some(Ok(QueryReply {
                        local,
                        line: Some(line.to_owned()),
                    }));
                }
                Some(Err(e)) => return Some(Err(format!("bad reply: {e}"))),
                None => {}
            }
            match self.stream.read(buf) {
                Ok(0) => return Some(Err("the server closed without answering".to_owned())),
                Ok(n) => self.reply.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(format!("read failed: {e}"))),
            }
        }
    }
}

/// A non-blocking connect still in flight reports `EINPROGRESS` (see DESIGN.md).
pub(super) fn libc_einprogress() -> i32 {
    libc::EINPROGRESS
}
