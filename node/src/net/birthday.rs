//! The driver's side of the birthday punch (see the core's `punch/birthday.rs`): bursts of
//! sockets opened in paced batches, each socket watched like a dial.
//!
//! - A **dial** burst ([`Output::BirthdayDial`]) opens its sockets from fresh local ports to
//!   one address; the first that connects becomes the connection (reported as that address)
//!   and every other socket closes at once; none by the deadline is one failed dial.
//! - A **spray** ([`Output::BirthdaySpray`]) connects from one local port to distinct random
//!   ports of one IP; each socket that connects becomes a connection (the peer decides which
//!   one the session keeps); the rest close at the deadline or at [`Output::CancelSpray`].
//!
//! [`Output::BirthdayDial`]: crate::core::Output::BirthdayDial
//! [`Output::BirthdaySpray`]: crate::core::Output::BirthdaySpray
//! [`Output::CancelSpray`]: crate::core::Output::CancelSpray

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::Token;
use mio::net::TcpStream;
use rand::Rng;
use tracing::debug;

use super::Net;
use super::handshake::Origin;
use super::inflight::libc_einprogress;
use super::links::{connect_from, punch_ip};
use crate::core::{Direction, Output, Security};

/// Batches a burst is split into (its sockets are opened `pace / BATCHES` apart).
const BATCHES: u32 = 16;
/// The lowest port a spray guesses (NATs map outbound connections above the well-known
/// ports).
const LOWEST_GUESS: u16 = 1024;

/// What a burst is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BurstKind {
    /// Sockets from fresh ports to `addr`; the first connected one wins.
    Dial { addr: SocketAddr },
    /// Sockets from `from_port` to random ports of `ip`; every connected one is kept.
    Spray { ip: IpAddr, from_port: u16 },
}

/// One birthday burst in progress.
#[derive(Debug)]
pub(super) struct Burst {
    kind: BurstKind,
    direction: Direction,
    /// How a connected socket starts (a spray's guesses sniff: the peer speaks first).
    security: Security,
    /// When the next batch is due.
    next: Instant,
    interval: Duration,
    per_batch: u32,
    /// Sockets still to open.
    remaining: u32,
    deadline: Instant,
    /// Sockets connecting: token → (stream, remote address).
    sockets: HashMap<Token, (TcpStream, SocketAddr)>,
    /// Ports guessed so far (sprays).
    guessed: HashSet<u16>,
}

impl Burst {
    pub(super) fn new(
        kind: BurstKind,
        direction: Direction,
        security: Security,
        count: u32,
        at: Instant,
        pace: Duration,
        timeout: Duration,
    ) -> Burst {
        let count = count.max(1);
        Burst {
            kind,
            direction,
            security,
            next: at,
            interval: pace / BATCHES,
            per_batch: count.div_ceil(BATCHES),
            remaining: count,
            deadline: at + timeout,
            sockets: HashMap::new(),
            guessed: HashSet::new(),
        }
    }

    /// Closes every socket (the node stops).
    pub(super) fn close_all(&mut self, registry: &mio::Registry) {
        for (_, (mut stream, _)) in self.sockets.drain() {
            let _ = registry.deregister(&mut stream);
        }
    }

    /// When this burst wants the loop to wake: the next batch, or its deadline.
    pub(super) fn wake_at(&self) -> Instant {
        if self.remaining > 0 {
            self.next.min(self.deadline)
        } else {
            self.deadline
        }
    }
}

impl Net {
    /// Opens the batches that are due, and ends bursts whose deadline passed.
    pub(super) fn drive_bursts(&mut self, now: Instant) {
        let ids: Vec<u64> = self.bursts.keys().copied().collect();
        for id in ids {
            let Some(b) = self.bursts.get(&id) else {
                continue;
            };
            if now >= b.deadline {
                self.end_burst(
                    now,
                    id,
                    Some("no birthday socket connected before the deadline"),
                );
                continue;
            }
            while self
                .bursts
                .get(&id)
                .is_some_and(|b| b.remaining > 0 && b.next <= now)
            {
                self.open_batch(now, id);
            }
        }
    }

    fn open_batch(&mut self, now: Instant, id: u64) {
        let Some(b) = self.bursts.get_mut(&id) else {
            return;
        };
        let n = b.per_batch.min(b.remaining);
        b.remaining -= n;
        b.next += b.interval;
        let kind = b.kind;
        let mut opened = Vec::new();
        for _ in 0..n {
            let target = match kind {
                BurstKind::Dial { addr } => Some((addr, TcpStream::connect(addr))),
                BurstKind::Spray { ip, from_port } => {
                    let Some(b) = self.bursts.get_mut(&id) else {
                        return;
                    };
                    let port = random_port(&mut b.guessed);
                    port.map(|port| {
                        let to = SocketAddr::new(ip, port);
                        (
                            to,
                            connect_from(punch_ip(self.config.bind, to), from_port, to),
                        )
                    })
                }
            };
            let Some((to, stream)) = target else {
                continue;
            };
            match stream {
                Ok(mut stream) => {
                    let token = self.token();
                    if self.register(&mut stream, token).is_ok() {
                        opened.push((token, stream, to));
                    }
                }
                Err(e) => debug!(%to, error = %e, "birthday socket not opened"),
            }
        }
        let _ = now;
        if let Some(b) = self.bursts.get_mut(&id) {
            for (token, stream, to) in opened {
                self.burst_tokens.insert(token, id);
                b.sockets.insert(token, (stream, to));
            }
        }
    }

    /// A socket of a burst is ready: connected, failed, or still connecting.
    pub(super) fn finish_burst_socket(&mut self, now: Instant, token: Token) {
        let Some(&id) = self.burst_tokens.get(&token) else {
            return;
        };
        let Some((stream, _)) = self.bursts.get(&id).and_then(|b| b.sockets.get(&token)) else {
            return;
        };
        let result = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => stream.peer_addr().map(|_| ()),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
            Err(_) => {
                self.drop_burst_socket(id, token);
                let exhausted = self
                    .bursts
                    .get(&id)
                    .is_some_and(|b| b.remaining == 0 && b.sockets.is_empty());
                if exhausted {
                    self.end_burst(now, id, Some("every birthday socket failed"));
                }
            }
            Ok(()) => {
                self.burst_tokens.remove(&token);
                let Some(b) = self.bursts.get_mut(&id) else {
                    return;
                };
                let Some((mut stream, to)) = b.sockets.remove(&token) else {
                    return;
                };
                let _ = self.poll.registry().deregister(&mut stream);
                let (kind, direction, security) = (b.kind, b.direction, b.security);
                match kind {
                    BurstKind::Dial { addr } => {
                        debug!(%addr, via = ?stream.local_addr().ok(), "birthday punch: connected");
                        self.end_burst(now, id, None);
                        self.add_conn(now, stream, addr, direction, security, Origin::Dialed);
                    }
                    BurstKind::Spray { .. } => {
                        debug!(%to, "birthday guess connected");
                        self.add_conn(now, stream, to, direction, security, Origin::Guess);
                    }
                }
            }
        }
    }

    fn drop_burst_socket(&mut self, id: u64, token: Token) {
        self.burst_tokens.remove(&token);
        if let Some((mut stream, _)) = self
            .bursts
            .get_mut(&id)
            .and_then(|b| b.sockets.remove(&token))
        {
            let _ = self.poll.registry().deregister(&mut stream);
        }
    }

    /// Ends burst `id`: closes its sockets; a dial burst that `failed` reports it.
    fn end_burst(&mut self, now: Instant, id: u64, failed: Option<&str>) {
        let Some(mut b) = self.bursts.remove(&id) else {
            return;
        };
        for (token, (mut stream, _)) in b.sockets.drain() {
            self.burst_tokens.remove(&token);
            let _ = self.poll.registry().deregister(&mut stream);
        }
        if let (BurstKind::Dial { addr }, Some(why)) = (b.kind, failed) {
            self.core.handle_dial_failed(now, addr, why);
        }
    }

    /// Stops bursts towards these addresses (dials) without reporting them.
    pub(super) fn cancel_bursts(&mut self, addrs: &[SocketAddr]) {
        let ids: Vec<u64> = self
            .bursts
            .iter()
            .filter(|(_, b)| matches!(b.kind, BurstKind::Dial { addr } if addrs.contains(&addr)))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end_burst(Instant::now(), id, None);
        }
    }

    /// Stops the spray towards `ip` (its connected sockets are connections already).
    pub(super) fn cancel_spray(&mut self, ip: IpAddr) {
        let ids: Vec<u64> = self
            .bursts
            .iter()
            .filter(|(_, b)| matches!(b.kind, BurstKind::Spray { ip: i, .. } if i == ip))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end_burst(Instant::now(), id, None);
        }
    }

    /// Carries out the core's birthday outputs.
    pub(super) fn birthday_output(&mut self, output: &Output) {
        match *output {
            Output::BirthdayDial {
                addr,
                count,
                at,
                pace,
                timeout,
                security,
            } => self.add_burst(Burst::new(
                BurstKind::Dial { addr },
                Direction::Outbound,
                security,
                count,
                at,
                pace,
                timeout,
            )),
            Output::BirthdaySpray {
                ip,
                from_port,
                count,
                at,
                pace,
                timeout,
                direction,
            } => self.add_burst(Burst::new(
                BurstKind::Spray { ip, from_port },
                direction,
                // The candidate's burst begins the handshake (see `Output::BirthdaySpray`).
                Security::Sniff,
                count,
                at,
                pace,
                timeout,
            )),
            Output::CancelSpray { ip } => self.cancel_spray(ip),
            _ => {}
        }
    }

    /// Starts a burst (its first batch at `at`).
    pub(super) fn add_burst(&mut self, burst: Burst) {
        let id = self.next_burst;
        self.next_burst += 1;
        debug!(kind = ?burst.kind, sockets = burst.remaining, "birthday burst scheduled");
        self.bursts.insert(id, burst);
    }
}

/// A port of 1024..=65535 not guessed yet (`None` when every one was).
fn random_port(guessed: &mut HashSet<u16>) -> Option<u16> {
    let span = usize::from(u16::MAX - LOWEST_GUESS) + 1;
    if guessed.len() >= span {
        return None;
    }
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(LOWEST_GUESS..=u16::MAX);
        if guessed.insert(port) {
            return Some(port);
        }
    }
}
