//! Sockets the core has closed but the driver keeps for a moment (linger-then-close): their
//! write side is shut down (FIN sent after the last reply) and what the peer still sends is
//! read and dropped, until the peer closes or [`LINGER`] passes.
//!
//! Closing a socket whose receive queue holds unread bytes makes the kernel send a reset, and a
//! reset makes the peer's kernel throw away what it had received but the application had not
//! read yet: the reply the server just wrote (an `ERROR` line, a 431 to a 200 KB request) is
//! lost and the client sees `ECONNRESET`. Reading on until the peer's FIN avoids that.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// How long a closed connection may linger for its peer to close.
pub const LINGER: Duration = Duration::from_secs(2);
/// Most sockets lingering at once; past it a closed connection is closed at once (it may then
/// be reset). Lingering sockets hold file descriptors beyond the core's connection cap.
pub const MAX_LINGERING: usize = 1024;

#[derive(Debug)]
struct Entry {
    sock: TcpStream,
    /// Tells this use of a slot from earlier ones in the expiry queue.
    serial: u64,
}

/// The lingering sockets, each under token `bit | slot`.
#[derive(Debug)]
pub(crate) struct Lingering {
    bit: usize,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    /// (deadline, slot, serial), oldest first: every entry lingers equally long.
    expiry: VecDeque<(Instant, usize, u64)>,
    serial: u64,
    len: usize,
}

impl Lingering {
    /// An empty set whose tokens carry `bit`.
    pub(crate) fn new(bit: usize) -> Lingering {
        Lingering {
            bit,
            slots: Vec::new(),
            free: Vec::new(),
            expiry: VecDeque::new(),
            serial: 0,
            len: 0,
        }
    }

    /// How many sockets linger now.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no more may linger.
    pub(crate) fn is_full(&self) -> bool {
        self.len >= MAX_LINGERING
    }

    /// Moves `sock` (write side already shut) under a lingering token until `now + LINGER`.
    /// Returns its slot, or `None` if it could not be registered (it is dropped).
    pub(crate) fn add(
        &mut self,
        registry: &Registry,
        mut sock: TcpStream,
        now: Instant,
    ) -> Option<usize> {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if registry
            .reregister(&mut sock, Token(self.bit | slot), Interest::READABLE)
            .is_err()
        {
            let _ = registry.deregister(&mut sock);
            self.free.push(slot);
            return None;
        }
        self.serial += 1;
        self.slots[slot] = Some(Entry {
            sock,
            serial: self.serial,
        });
        self.expiry.push_back((now + LINGER, slot, self.serial));
        self.len += 1;
        Some(slot)
    }

    /// The socket in `slot`, if it still lingers.
    pub(crate) fn sock_mut(&mut self, slot: usize) -> Option<&mut TcpStream> {
        self.slots
            .get_mut(slot)
            .and_then(Option::as_mut)
            .map(|e| &mut e.sock)
    }

    /// Closes the socket in `slot` (its peer closed, or it failed).
    pub(crate) fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut entry) = self.slots.get_mut(slot).and_then(Option::take) {
            let _ = registry.deregister(&mut entry.sock);
            self.free.push(slot);
            self.len -= 1;
        }
    }

    /// When the oldest lingering socket is due.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_stale();
        self.expiry.front().map(|&(at, _, _)| at)
    }

    /// Closes every socket whose time is up.
    pub(crate) fn expire(&mut self, registry: &Registry, now: Instant) {
        self.drop_stale();
        while let Some(&(at, slot, _)) = self.expiry.front() {
            if at > now {
                break;
            }
            self.expiry.pop_front();
            self.close(registry, slot);
            self.drop_stale();
        }
    }

    /// Closes them all (server shutdown).
    pub(crate) fn clear(&mut self, registry: &Registry) {
        for slot in 0..self.slots.len() {
            self.close(registry, slot);
        }
        self.expiry.clear();
    }

    /// Pops expiry entries of sockets that closed earlier.
    fn drop_stale(&mut self) {
        while let Some(&(_, slot, serial)) = self.expiry.front() {
            let live = matches!(self.slots.get(slot), Some(Some(e)) if e.serial == serial);
            if live {
                return;
            }
            self.expiry.pop_front();
        }
    }
}
