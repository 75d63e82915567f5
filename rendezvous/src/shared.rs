//! The shared backend (`--backend redis://...`): several rendezvous instances behind one
//! Redis, so that a node registered on any instance is found, and punched to, from every
//! other. What is shared and how is in [`crate::core::shared`]; this module moves it.
//!
//! ```text
//!   loop ──commit: updates──▶ writer thread ──ZADD/HSET + PUBLISH──▶ Redis
//!   loop ◀──wake: lines──── subscriber thread ◀──────SUBSCRIBE────── Redis
//! ```
//! Neither direction ever blocks the event loop: updates are handed to a writer thread (a
//! channel send), and what other instances publish arrives through the kit's subscriber
//! thread. `BOOTSTRAP` costs no Redis round trip at all (every instance holds every passive
//! registration); a registration costs one pipelined write off the loop.
//!
//! Keys (prefix [`PREFIX`]): `passive` (sorted set: `"<ip> <port>"` scored by expiry in Unix
//! ms), `simultaneous` (hash: `"<ip> <port>"` → instance), channels `events` and `inst:<hex>`.
//! Entries of an instance that died stay in `simultaneous` until their node registers again;
//! a loading instance drops them when their instance stays silent for
//! [`INSTANCE_TIMEOUT`](crate::core::shared::INSTANCE_TIMEOUT).

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::Commands as _;
use server_kit::redis::{BackendError, RedisBackend};
use tracing::warn;

use crate::core::{RemoteState, Update};

/// Every key and channel starts with this.
pub const PREFIX: &str = "p2p:rendezvous:";

/// The channel every instance listens to.
pub fn events_channel() -> String {
    format!("{PREFIX}events")
}

/// The channel of one instance.
pub fn instance_channel(inst: u64) -> String {
    format!("{PREFIX}inst:{inst:x}")
}

fn member(addr: SocketAddr) -> String {
    format!("{} {}", addr.ip(), addr.port())
}

fn parse_member(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(' ')?;
    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Loads the replicated state: live passive registrations and simultaneous ones.
pub fn load(backend: &RedisBackend) -> Result<RemoteState, BackendError> {
    let mut conn = backend.connect()?;
    let passive: Vec<(String, u64)> = conn
        .zrangebyscore_withscores(format!("{PREFIX}passive"), unix_ms_now(), "+inf")
        .map_err(|e| backend.error("ZRANGEBYSCORE passive", e))?;
    let simultaneous: Vec<(String, String)> = conn
        .hgetall(format!("{PREFIX}simultaneous"))
        .map_err(|e| backend.error("HGETALL simultaneous", e))?;
    let mut state = RemoteState::default();
    for (m, ms) in passive {
        let addr = parse_member(&m).ok_or_else(|| backend.corrupt("passive", m.clone()))?;
        state.passive.push((addr, ms));
    }
    for (m, inst) in simultaneous {
        let addr = parse_member(&m).ok_or_else(|| backend.corrupt("simultaneous", m.clone()))?;
        let inst = u64::from_str_radix(&inst, 16)
            .map_err(|_| backend.corrupt(&format!("simultaneous/{m}"), inst.clone()))?;
        state.simultaneous.push((addr, inst));
    }
    Ok(state)
}

/// Hands updates to a thread that writes them to Redis in order, one pipeline per batch.
#[derive(Debug)]
pub struct Writer {
    tx: Option<mpsc::Sender<Vec<Update>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer of instance `inst`.
    pub fn start(backend: RedisBackend, inst: u64) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Vec<Update>>();
        let thread = std::thread::Builder::new()
            .name("redis-writer".into())
            .spawn(move || {
                let mut conn = None;
                let mut failures = 0u64;
                for batch in rx {
                    let pipe = pipeline(inst, &batch);
                    let result = match conn.as_mut() {
                        Some(c) => pipe.query::<()>(c).map_err(|e| backend.error("write", e)),
                        None => backend.connect().and_then(|mut c| {
                            let r = pipe
                                .query::<()>(&mut c)
                                .map_err(|e| backend.error("write", e));
                            conn = Some(c);
                            r
                        }),
                    };
                    if let Err(e) = result {
                        conn = None;
                        failures += 1;
                        if failures.is_power_of_two() {
                            warn!(
                                failures,
                                lost = batch.len(),
                                "shared backend: updates not written: {e}"
                            );
                        }
                    }
                }
            })?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a batch (never blocks).
    pub fn send(&self, batch: Vec<Update>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(batch);
        }
    }
}

impl Drop for Writer {
    /// Writes what is queued, then stops.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn pipeline(inst: u64, batch: &[Update]) -> redis::Pipeline {
    let events = events_channel();
    let mut pipe = redis::pipe();
    for update in batch {
        match update {
            Update::Passive {
                addr,
                expires_unix_ms,
            } => {
                pipe.zadd(format!("{PREFIX}passive"), member(*addr), *expires_unix_ms)
                    .ignore();
                let line = format!(
                    "P+ {inst:x} {} {} {expires_unix_ms}",
                    addr.ip(),
                    addr.port()
                );
                pipe.publish(&events, line).ignore();
            }
            Update::PassiveGone(addr) => {
                pipe.zrem(format!("{PREFIX}passive"), member(*addr))
                    .ignore();
                let line = format!("P- {inst:x} {} {}", addr.ip(), addr.port());
                pipe.publish(&events, line).ignore();
            }
            Update::Simultaneous { inst, addr } => {
                pipe.hset(
                    format!("{PREFIX}simultaneous"),
                    member(*addr),
                    format!("{inst:x}"),
                )
                .ignore();
                let line = format!("S+ {inst:x} {} {}", addr.ip(), addr.port());
                pipe.publish(&events, line).ignore();
            }
            Update::SimultaneousGone { inst, addr } => {
                pipe.hdel(format!("{PREFIX}simultaneous"), member(*addr))
                    .ignore();
                let line = format!("S- {inst:x} {} {}", addr.ip(), addr.port());
                pipe.publish(&events, line).ignore();
            }
            Update::Heartbeat => {
                pipe.zrembyscore(format!("{PREFIX}passive"), 0, unix_ms_now())
                    .ignore();
                pipe.publish(&events, format!("HB {inst:x}")).ignore();
            }
            Update::ToInstance { inst, line } => {
                pipe.publish(instance_channel(*inst), line).ignore();
            }
        }
    }
    pipe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip() {
        for addr in ["192.0.2.1:8000", "[2001:db8::1]:9"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(parse_member(&member(addr)), Some(addr));
        }
        assert_eq!(parse_member("nonsense"), None);
    }
}
