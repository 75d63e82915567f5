//! Several instances on one shared backend (`--backend redis://...`, see [`crate::shared`]):
//! what this instance tells the others ([`Update`], drained with [`Core::poll_updates`]) and
//! what it hears from them ([`Core::handle_remote`], [`Core::resync_remote`]).
//!
//! - **Passive registrations** are replicated: every instance holds them all, so `BOOTSTRAP`
//!   anywhere answers from memory (no round trip) with nodes registered anywhere.
//! - **Simultaneous registrations** live on the instance holding the node's connection; the
//!   others know which instance that is. A `CANDIDATE` for such a node is forwarded there
//!   (`CAND`), the challenge goes out on the node's connection, and the node's `ACCEPT` sends
//!   the `FIGHT` back to the candidate's instance (`FIGHT`), which writes it to the candidate.
//!   A refusal comes back the same way (`ERR`).
//! - Instances announce themselves every [`HEARTBEAT_INTERVAL`]; one not heard from for
//!   [`INSTANCE_TIMEOUT`] is taken for dead and its simultaneous registrations are dropped, so
//!   a node whose instance died is told "not registered" until it registers on another.
//! - Relays are not shared: both peers meet on the instance that `RELAY_CONNECT` names.
//!
//! The messages are text lines, one per pub/sub message (instances are hex `u64`s):
//! ```text
//!   events:   P+ <inst> <ip> <port> <expires unix ms>    P- <inst> <ip> <port>
//!             S+ <inst> <ip> <port>    S- <inst> <ip> <port>    HB <inst>
//!   to inst:  CAND <from inst> <serial> <candidate ip> <CANDIDATE line>
//!             FIGHT <serial> <FIGHT line>    ERR <serial> <reason>
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use wire::rendezvous::{NodeTarget, Proto, Request, Response};

use super::{CandRef, ConnId, Core, NodeKey};

/// How often an instance announces it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// An instance not heard from for this long is taken for dead.
pub const INSTANCE_TIMEOUT: Duration = Duration::from_secs(3);

/// Something the other instances must hear (the wrapper writes it to Redis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A passive registration (new or renewed), until this Unix time in milliseconds.
    Passive {
        /// The node.
        addr: SocketAddr,
        /// When it expires.
        expires_unix_ms: u64,
    },
    /// A passive registration removed (`CLEAR`).
    PassiveGone(SocketAddr),
    /// A simultaneous node registered on `inst` (this instance).
    Simultaneous {
        /// The instance holding its connection.
        inst: u64,
        /// The node.
        addr: SocketAddr,
    },
    /// A simultaneous registration of `inst` is gone.
    SimultaneousGone {
        /// The instance that held it.
        inst: u64,
        /// The node.
        addr: SocketAddr,
    },
    /// This instance is alive.
    Heartbeat,
    /// A line for one instance (`CAND`, `FIGHT`, `ERR`).
    ToInstance {
        /// The instance.
        inst: u64,
        /// The line.
        line: String,
    },
}

/// The replicated state as loaded from the backend (after subscribing).
#[derive(Debug, Clone, Default)]
pub struct RemoteState {
    /// Passive registrations and their expiry (Unix ms).
    pub passive: Vec<(SocketAddr, u64)>,
    /// Simultaneous registrations and the instance holding each.
    pub simultaneous: Vec<(SocketAddr, u64)>,
}

/// A shared-backend instance's extra state.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) instance: u64,
    updates: Vec<Update>,
    /// Simultaneous nodes held by other instances: which instance, and since when.
    remote_sim: HashMap<NodeKey, (u64, Instant)>,
    /// Other instances and when each was last heard from.
    instances: HashMap<u64, Instant>,
    /// Our connections waiting for a `FIGHT` from another instance, by serial.
    pub(super) waiting: HashMap<u64, (ConnId, Instant)>,
    next_serial: u64,
    next_heartbeat: Option<Instant>,
}

impl Core {
    /// Makes this core one instance of a shared backend, named `instance`.
    pub fn enable_shared(&mut self, instance: u64) {
        self.shared = Some(Shared {
            instance,
            ..Shared::default()
        });
    }

    /// Takes what the other instances must hear since the last call.
    pub fn poll_updates(&mut self) -> Vec<Update> {
        self.shared
            .as_mut()
            .map(|s| std::mem::take(&mut s.updates))
            .unwrap_or_default()
    }

    pub(super) fn publish(&mut self, update: Update) {
        if let Some(shared) = self.shared.as_mut() {
            self.stats.backend.published += 1;
            shared.updates.push(update);
        }
    }

    pub(super) fn publish_passive(&mut self, key: NodeKey, registered_at: Instant) {
        if self.shared.is_none() {
            return;
        }
        let expires_unix_ms = self.unix_ms(registered_at + self.config.node_lifetime);
        self.publish(Update::Passive {
            addr: SocketAddr::new(key.ip, key.port),
            expires_unix_ms,
        });
    }

    pub(super) fn publish_simultaneous(&mut self, key: NodeKey, gone: bool) {
        let Some(inst) = self.shared.as_ref().map(|s| s.instance) else {
            return;
        };
        let addr = SocketAddr::new(key.ip, key.port);
        self.publish(if gone {
            Update::SimultaneousGone { inst, addr }
        } else {
            Update::Simultaneous { inst, addr }
        });
    }

    /// Unix time in milliseconds at `at`.
    fn unix_ms(&self, at: Instant) -> u64 {
        let secs = self.unix_now(self.now) + at.saturating_duration_since(self.now).as_secs_f64()
            - self.now.saturating_duration_since(at).as_secs_f64();
        // Rounded to whole milliseconds; a negative time (before 1970) is 0.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = (secs * 1000.0).max(0.0) as u64;
        ms
    }

    /// The instant of Unix time `ms`.
    fn instant_of(&self, now: Instant, ms: u64) -> Instant {
        let now_ms = self.unix_ms(now);
        if ms >= now_ms {
            now + Duration::from_millis(ms - now_ms)
        } else {
            now.checked_sub(Duration::from_millis(now_ms - ms))
                .unwrap_or(now)
        }
    }

    /// A simultaneous node held by another instance that `target` names, and that instance.
    pub(super) fn find_remote_target(&self, target: NodeTarget) -> Option<(NodeKey, u64)> {
        let shared = self.shared.as_ref()?;
        match target {
            NodeTarget::Addr(addr) => {
                let key = NodeKey {
                    ip: addr.ip(),
                    port: addr.port(),
                };
                shared.remote_sim.get(&key).map(|&(inst, _)| (key, inst))
            }
            NodeTarget::Ip(ip) => shared
                .remote_sim
                .iter()
                .filter(|(k, _)| k.ip == ip)
                .max_by_key(|(_, (_, at))| *at)
                .map(|(k, (inst, _))| (*k, *inst)),
        }
    }

    /// Forwards a `CANDIDATE` from our connection `id` to the instance holding the node.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_candidate(
        &mut self,
        now: Instant,
        id: ConnId,
        ip: IpAddr,
        key: NodeKey,
        inst: u64,
        proto: Proto,
        ports: &[u16],
    ) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        shared.next_serial += 1;
        let serial = shared.next_serial;
        shared.waiting.insert(serial, (id, now));
        let from = shared.instance;
        let request = Request::Candidate {
            node: NodeTarget::Addr(SocketAddr::new(key.ip, key.port)),
            proto,
            ports: ports.to_vec(),
        };
        self.stats.backend.forwarded += 1;
        debug!(node = %key, inst = format!("{inst:x}"), "CANDIDATE forwarded to the node's instance");
        self.publish(Update::ToInstance {
            inst,
            line: format!("CAND {from:x} {serial} {ip} {request}"),
        });
        self.send(id, &Response::PredictionSet);
    }

    /// Sends a `FIGHT` to a candidate waiting on another instance.
    pub(super) fn send_fight_home(&mut self, inst: u64, serial: u64, fight: &Response) {
        self.stats.backend.forwarded += 1;
        self.publish(Update::ToInstance {
            inst,
            line: format!("FIGHT {serial} {fight}"),
        });
    }

    /// Whether connection `id` waits for a `FIGHT` from another instance.
    pub(super) fn waits_remotely(&self, id: ConnId) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|s| s.waiting.values().any(|&(c, _)| c == id))
    }

    /// A line another instance published (see the module docs). Malformed lines are logged
    /// and ignored.
    pub fn handle_remote(&mut self, now: Instant, line: &str) {
        self.tick(now);
        let Some(own) = self.shared.as_ref().map(|s| s.instance) else {
            return;
        };
        if let Err(why) = self.remote_line(now, own, line) {
            warn!(
                line,
                why, "ignored a malformed message from another instance"
            );
        }
    }

    fn remote_line(&mut self, now: Instant, own: u64, line: &str) -> Result<(), &'static str> {
        let mut words = line.splitn(2, ' ');
        let verb = words.next().unwrap_or_default();
        let rest = words.next().unwrap_or_default();
        let mut f = rest.split(' ');
        let hex = |w: Option<&str>| u64::from_str_radix(w.unwrap_or_default(), 16).ok();
        let addr = |ip: Option<&str>, port: Option<&str>| -> Option<NodeKey> {
            Some(NodeKey {
                ip: ip?.parse().ok()?,
                port: port?.parse().ok()?,
            })
        };
        match verb {
            "HB" | "P+" | "P-" | "S+" | "S-" => {
                let inst = hex(f.next()).ok_or("bad instance")?;
                if inst == own {
                    return Ok(());
                }
                self.stats.backend.received += 1;
                if let Some(shared) = self.shared.as_mut() {
                    shared.instances.insert(inst, now);
                }
                if verb == "HB" {
                    return Ok(());
                }
                let key = addr(f.next(), f.next()).ok_or("bad address")?;
                match verb {
                    "P+" => {
                        let ms = f.next().and_then(|w| w.parse().ok()).ok_or("bad expiry")?;
                        self.remote_passive(now, key, ms);
                    }
                    "P-" => self.remove_passive(key),
                    "S+" => self.remote_simultaneous(now, key, inst),
                    _ => {
                        if let Some(shared) = self.shared.as_mut()
                            && shared.remote_sim.get(&key).is_some_and(|&(i, _)| i == inst)
                        {
                            shared.remote_sim.remove(&key);
                        }
                    }
                }
            }
            "CAND" => {
                self.stats.backend.received += 1;
                let from = hex(f.next()).ok_or("bad instance")?;
                let serial: u64 = f.next().and_then(|w| w.parse().ok()).ok_or("bad serial")?;
                let ip: IpAddr = f.next().and_then(|w| w.parse().ok()).ok_or("bad ip")?;
                let request: Vec<&str> = f.collect();
                let Ok(Request::Candidate { node, proto, ports }) = request.join(" ").parse()
                else {
                    return Err("bad CANDIDATE line");
                };
                let who = CandRef::Remote { inst: from, serial };
                let result = match self.find_target(node) {
                    Some(key) => self.candidate_for(now, key, who, ip, proto, ports),
                    None => Err(format!(
                        "CANDIDATE: no simultaneous node registered at {node}"
                    )),
                };
                if let Err(why) = result {
                    self.publish(Update::ToInstance {
                        inst: from,
                        line: format!("ERR {serial} {why}"),
                    });
                }
            }
            "FIGHT" | "ERR" => {
                self.stats.backend.received += 1;
                let serial: u64 = f.next().and_then(|w| w.parse().ok()).ok_or("bad serial")?;
                let text: Vec<&str> = f.collect();
                let text = text.join(" ");
                let waiting = self.shared.as_mut().and_then(|s| s.waiting.remove(&serial));
                let Some((id, _)) = waiting else {
                    return Ok(());
                };
                if verb == "FIGHT" {
                    let fight: Response = text.parse().map_err(|_| "bad FIGHT line")?;
                    if !matches!(fight, Response::Fight { .. }) {
                        return Err("bad FIGHT line");
                    }
                    self.send(id, &fight);
                } else {
                    self.refuse(id, &text);
                }
            }
            _ => return Err("unknown verb"),
        }
        Ok(())
    }

    fn remote_passive(&mut self, now: Instant, key: NodeKey, expires_unix_ms: u64) {
        let lifetime = self.config.node_lifetime;
        let registered_at = self
            .instant_of(now, expires_unix_ms)
            .checked_sub(lifetime)
            .unwrap_or(now);
        if let Some(entry) = self.passive.get_mut(key) {
            entry.registered_at = entry.registered_at.max(registered_at);
            return;
        }
        self.insert_passive(key, registered_at);
    }

    fn remote_simultaneous(&mut self, now: Instant, key: NodeKey, inst: u64) {
        // The node moved here from us: our registration without a connection is stale.
        let stale_here = self.simultaneous_mut(key).is_some_and(|n| n.conn.is_none());
        if stale_here {
            self.drop_simultaneous(key);
        }
        if let Some(shared) = self.shared.as_mut() {
            shared.remote_sim.insert(key, (inst, now));
        }
    }

    /// Replaces the replicated state with what the backend holds (after (re)subscribing).
    pub fn resync_remote(&mut self, now: Instant, state: RemoteState) {
        self.tick(now);
        let Some(own) = self.shared.as_ref().map(|s| s.instance) else {
            return;
        };
        for (addr, ms) in state.passive {
            let key = NodeKey {
                ip: addr.ip(),
                port: addr.port(),
            };
            self.remote_passive(now, key, ms);
        }
        if let Some(shared) = self.shared.as_mut() {
            shared.remote_sim.clear();
            for (addr, inst) in state.simultaneous {
                if inst == own {
                    continue;
                }
                let key = NodeKey {
                    ip: addr.ip(),
                    port: addr.port(),
                };
                shared.remote_sim.insert(key, (inst, now));
                // Heard of: alive until proven otherwise by silence.
                shared.instances.entry(inst).or_insert(now);
            }
        }
    }

    /// The shared part of the timers: heartbeats, dead instances, stale forwarded candidacies.
    pub(super) fn shared_timers(&mut self, now: Instant) {
        let candidate_lifetime = self.config.candidate_lifetime;
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        if shared.next_heartbeat.is_none_or(|t| now >= t) {
            shared.next_heartbeat = Some(now + HEARTBEAT_INTERVAL);
            self.publish(Update::Heartbeat);
        }
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        shared
            .waiting
            .retain(|_, (_, since)| now.saturating_duration_since(*since) <= candidate_lifetime);
        let dead: Vec<u64> = shared
            .instances
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) >= INSTANCE_TIMEOUT)
            .map(|(inst, _)| *inst)
            .collect();
        for inst in dead {
            shared.instances.remove(&inst);
            let keys: Vec<NodeKey> = shared
                .remote_sim
                .iter()
                .filter(|(_, (i, _))| *i == inst)
                .map(|(k, _)| *k)
                .collect();
            info!(
                inst = format!("{inst:x}"),
                registrations = keys.len(),
                "another instance went silent; dropping its simultaneous registrations"
            );
            for key in keys {
                shared.remote_sim.remove(&key);
            }
        }
    }

    /// When the shared timers next need a turn.
    pub(super) fn shared_timeout(&self) -> Option<Instant> {
        self.shared.as_ref().and_then(|s| s.next_heartbeat)
    }

    /// The shared backend's figures for [`Core::stats`](super::Core::stats).
    pub(super) fn shared_counts(&self) -> (usize, usize) {
        self.shared
            .as_ref()
            .map_or((0, 0), |s| (s.remote_sim.len(), s.instances.len()))
    }
}
