//! Connection bookkeeping every core needs, sans-IO: a [`Slab`] that hands out [`ConnId`]s
//! and reuses them, and [`Admission`], the global and per-IP connection caps with their
//! [`Refusal`] (one wording, as an error line or an HTTP response).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use wire::http::Response;

use crate::core::ConnId;

/// Per-connection state of a core, by [`ConnId`]. Ids of removed entries are reused (the
/// smallest-numbered tokens stay in use, as mio wants them small).
///
/// ```
/// use server_kit::Slab;
///
/// let mut conns = Slab::default();
/// let a = conns.insert("a");
/// let b = conns.insert("b");
/// assert_eq!(conns.remove(a), Some("a"));
/// assert_eq!(conns.insert("c"), a);
/// assert_eq!(conns.ids(), vec![a, b]);
/// ```
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    /// Stores `value` under a free id.
    pub fn insert(&mut self, value: T) -> ConnId {
        if let Some(slot) = self.free.pop() {
            self.slots[slot] = Some(value);
            ConnId(slot)
        } else {
            self.slots.push(Some(value));
            ConnId(self.slots.len() - 1)
        }
    }

    /// The entry of `id`, if it is in use.
    pub fn get(&self, id: ConnId) -> Option<&T> {
        self.slots.get(id.0).and_then(Option::as_ref)
    }

    /// The entry of `id`, if it is in use.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        self.slots.get_mut(id.0).and_then(Option::as_mut)
    }

    /// Takes the entry of `id` out; its id is free from now on.
    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let value = self.slots.get_mut(id.0).and_then(Option::take)?;
        self.free.push(id.0);
        Some(value)
    }

    /// Every id in use, in order.
    pub fn ids(&self) -> Vec<ConnId> {
        self.iter().map(|(id, _)| id).collect()
    }

    /// Every entry in use, with its id, in order.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| slot.as_ref().map(|v| (ConnId(i), v)))
    }
}

/// Why a new connection was refused. Its `Display` is the reason a client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The global connection cap is reached.
    ServerFull {
        /// The configured limit.
        limit: usize,
    },
    /// The cap on connections from one IP (or one IPv6 prefix, see [`Admission::keyed_by`])
    /// is reached.
    TooManyFromIp {
        /// The client's IP.
        ip: IpAddr,
        /// The configured limit.
        limit: usize,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ServerFull { limit } => {
                write!(f, "server full ({limit} connections), try later")
            }
            Refusal::TooManyFromIp { ip, limit } => {
                write!(f, "too many connections from {ip} (limit {limit})")
            }
        }
    }
}

impl Refusal {
    /// The refusal as a line-protocol error: `ERROR <reason>\r\n`.
    pub fn error_line(&self) -> Vec<u8> {
        format!("ERROR {self}\r\n").into_bytes()
    }

    /// The refusal as an HTTP response: 503 for a full server (not the caller's fault), 429
    /// for too many connections from one IP, both with `Retry-After: 1`.
    ///
    /// ```
    /// use server_kit::Refusal;
    ///
    /// let full = Refusal::ServerFull { limit: 8 };
    /// assert_eq!(full.response().status, 503);
    /// assert_eq!(full.error_line(), b"ERROR server full (8 connections), try later\r\n");
    /// ```
    pub fn response(&self) -> Response {
        let status = match self {
            Refusal::ServerFull { .. } => 503,
            Refusal::TooManyFromIp { .. } => 429,
        };
        Response::text(status, format!("{self}\n")).with_header("Retry-After", "1")
    }
}

/// The connection caps of a server: at most `max` open at once, at most `max_per_ip` from one
/// IP (an IPv6 client counts under its /64 by default: see [`crate::caller_key`]). It also
/// counts what it admitted and refused.
///
/// ```
/// use server_kit::{Admission, Refusal};
///
/// let mut caps = Admission::new(3, 1);
/// let ip = "192.0.2.1".parse().unwrap();
/// caps.admit(ip).unwrap();
/// assert_eq!(caps.admit(ip), Err(Refusal::TooManyFromIp { ip, limit: 1 }));
/// caps.release(ip);
/// caps.admit(ip).unwrap();
/// assert_eq!((caps.open(), caps.accepted(), caps.refused()), (1, 2, 1));
/// ```
#[derive(Debug)]
pub struct Admission {
    max: usize,
    max_per_ip: usize,
    key: fn(IpAddr) -> IpAddr,
    per_key: HashMap<IpAddr, usize>,
    open: usize,
    accepted: u64,
    refused_full: u64,
    refused_per_ip: u64,
}

impl Admission {
    /// Caps of `max` connections in all and `max_per_ip` from one IP.
    pub fn new(max: usize, max_per_ip: usize) -> Admission {
        Admission {
            max,
            max_per_ip,
            key: crate::caller_key,
            per_key: HashMap::new(),
            open: 0,
            accepted: 0,
            refused_full: 0,
            refused_per_ip: 0,
        }
    }

    /// Counts connections by `key(ip)` rather than by [`crate::caller_key`] (the IP; an IPv6
    /// address's /64, which one subscriber usually holds whole). Refusals still name the IP.
    #[must_use]
    pub fn keyed_by(mut self, key: fn(IpAddr) -> IpAddr) -> Admission {
        self.key = key;
        self
    }

    /// Admits a connection from `ip`, or says why not (and counts the refusal).
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.open >= self.max {
            self.refused_full += 1;
            return Err(Refusal::ServerFull { limit: self.max });
        }
        let from_ip = self.per_key.entry((self.key)(ip)).or_insert(0);
        if *from_ip >= self.max_per_ip {
            self.refused_per_ip += 1;
            return Err(Refusal::TooManyFromIp {
                ip,
                limit: self.max_per_ip,
            });
        }
        *from_ip += 1;
        self.open += 1;
        self.accepted += 1;
        Ok(())
    }

    /// A connection from `ip` that was admitted is gone (or no longer counts).
    pub fn release(&mut self, ip: IpAddr) {
        let key = (self.key)(ip);
        if let Some(n) = self.per_key.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(&key);
            }
            self.open -= 1;
        }
    }

    /// Connections admitted and not released.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Connections admitted and not released from `ip` (from its key).
    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.per_key.get(&(self.key)(ip)).copied().unwrap_or(0)
    }

    /// Whether any admitted connection from `ip` (from its key) is still counted.
    pub fn has(&self, ip: IpAddr) -> bool {
        self.from_ip(ip) > 0
    }

    /// Connections admitted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused_full + self.refused_per_ip
    }

    /// Connections refused since start, by reason: `server_full` (the global cap) and
    /// `too_many_from_ip` (the per-IP cap), as metric label values.
    pub fn refused_by_reason(&self) -> [(&'static str, u64); 2] {
        [
            ("server_full", self.refused_full),
            ("too_many_from_ip", self.refused_per_ip),
        ]
    }
}
