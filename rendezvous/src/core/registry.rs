//! Registrations: passive nodes (`PASSIVE READY`, handed out by `BOOTSTRAP`), the per-IP
//! cap shared with simultaneous nodes, `CLEAR`, and the sweep that expires registrations,
//! candidates and idle connections.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use tracing::debug;
use wire::rendezvous::Family;

use super::{CandRef, ConnId, Core, NodeKey, RelayState, Update, family_slot};

impl Core {
    /// Registrations (passive and simultaneous) counted against `ip`'s cap: those at `ip`,
    /// or for an IPv6 address those anywhere in its /64 ([`server_kit::caller_key`]).
    pub(super) fn registrations_at(&self, ip: IpAddr) -> usize {
        let IpAddr::V6(prefix) = server_kit::caller_key(ip) else {
            return self.passive_ports_by_ip.get(&ip).map_or(0, Vec::len)
                + self.simultaneous.get(&ip).map_or(0, Vec::len);
        };
        let last = Ipv6Addr::from(u128::from(prefix) | u128::from(u64::MAX));
        let range = IpAddr::V6(prefix)..=IpAddr::V6(last);
        self.passive_ports_by_ip
            .range(range.clone())
            .map(|(_, ports)| ports.len())
            .sum::<usize>()
            + self
                .simultaneous
                .range(range)
                .map(|(_, nodes)| nodes.len())
                .sum::<usize>()
    }

    /// Answers `BOOTSTRAP` with up to `count` random passive nodes of `family`, never the
    /// asker: without `own_port` the asker is everyone at its IP (PyP2P), with it only that
    /// registration. PyP2P's form asks for [`Family::Ipv4`], so it never gets an IPv6 entry.
    ///
    /// The hot path of the server: the reply is assembled from pre-rendered entries straight
    /// into the output buffer. Its bytes are exactly `Response::Nodes(..)`'s `Display`.
    pub(super) fn reply_bootstrap(
        &mut self,
        now: Instant,
        id: ConnId,
        asker: IpAddr,
        family: Family,
        count: usize,
        own_port: Option<u16>,
    ) {
        let excluded_bound = self.passive_ports_by_ip.get(&asker).map_or(0, Vec::len);
        let lifetime = self.config.node_lifetime;
        let picks = self
            .passive
            .sample(&mut self.rng, family, count + excluded_bound);
        let mut reply = Vec::with_capacity(8 + count * 24);
        reply.extend_from_slice(b"NODES ");
        let mut found = 0;
        for p in picks {
            let is_asker = p.key.ip == asker && own_port.is_none_or(|o| o == p.key.port);
            if is_asker || now.saturating_duration_since(p.registered_at) >= lifetime {
                continue;
            }
            reply.extend_from_slice(&p.wire);
            found += 1;
            if found == count {
                break;
            }
        }
        if found == 0 {
            reply.truncate(0);
            reply.extend_from_slice(b"NODES EMPTY");
        }
        reply.extend_from_slice(b"\r\n");
        self.send_bytes(id, &reply);
    }

    /// Refuses connection `id`'s `verb` when `ip` holds `max_registrations_per_ip` already.
    pub(super) fn refused_over_cap(&mut self, id: ConnId, ip: IpAddr, verb: &str) -> bool {
        if self.registrations_at(ip) < self.config.max_registrations_per_ip {
            return false;
        }
        self.stats.limit_hits.registrations_per_ip += 1;
        let from = match server_kit::caller_key(ip) {
            IpAddr::V6(prefix) => format!("{prefix}/64"),
            IpAddr::V4(_) => ip.to_string(),
        };
        let text = format!(
            "{verb}: too many registrations from {from} (limit {})",
            self.config.max_registrations_per_ip
        );
        self.refuse(id, &text);
        true
    }

    /// Adds a passive registration not held yet (made here or on another instance).
    pub(super) fn insert_passive(&mut self, key: NodeKey, registered_at: Instant) {
        self.passive.insert(key, registered_at);
        self.passive_ports_by_ip
            .entry(key.ip)
            .or_default()
            .push(key.port);
    }

    pub(super) fn register_passive(
        &mut self,
        now: Instant,
        id: ConnId,
        peer: SocketAddr,
        port: u16,
    ) {
        if port == 0 {
            self.refuse(id, "PASSIVE READY: port must be in 1..=65535, got 0");
            return;
        }
        let key = NodeKey {
            ip: peer.ip(),
            port,
        };
        if let Some(entry) = self.passive.get_mut(key) {
            entry.registered_at = now;
            self.publish_passive(key, now);
            return;
        }
        if self.refused_over_cap(id, key.ip, "PASSIVE READY") {
            return;
        }
        self.insert_passive(key, now);
        self.stats.registered_passive += 1;
        self.stats.registered_by_family[family_slot(key.ip)] += 1;
        self.publish_passive(key, now);
        debug!(node = %key, "passive node registered");
    }

    pub(super) fn remove_passive(&mut self, key: NodeKey) {
        if !self.passive.remove(key) {
            return;
        }
        if let Some(ports) = self.passive_ports_by_ip.get_mut(&key.ip) {
            ports.retain(|&p| p != key.port);
            if ports.is_empty() {
                self.passive_ports_by_ip.remove(&key.ip);
            }
        }
        debug!(node = %key, "passive node removed");
    }

    pub(super) fn clear(&mut self, ip: IpAddr, port: Option<u16>) {
        let passive_ports: Vec<u16> = match port {
            Some(p) => vec![p],
            None => self
                .passive_ports_by_ip
                .get(&ip)
                .cloned()
                .unwrap_or_default(),
        };
        for p in passive_ports {
            let key = NodeKey { ip, port: p };
            if self.passive.contains(key) {
                self.remove_passive(key);
                self.publish(Update::PassiveGone(SocketAddr::new(ip, p)));
            }
        }
        let Some(nodes) = self.simultaneous.get_mut(&ip) else {
            return;
        };
        let mut removed = Vec::new();
        let mut i = 0;
        while i < nodes.len() {
            if port.is_none_or(|p| p == nodes[i].port) {
                removed.push(nodes.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if nodes.is_empty() {
            self.simultaneous.remove(&ip);
        }
        for node in removed {
            let key = NodeKey {
                ip,
                port: node.port,
            };
            self.forget_simultaneous(key, node);
            self.publish_simultaneous(key, true);
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        let node_lifetime = self.config.node_lifetime;
        let candidate_lifetime = self.config.candidate_lifetime;
        let expired: Vec<NodeKey> = self
            .passive
            .iter()
            .filter(|p| now.saturating_duration_since(p.registered_at) >= node_lifetime)
            .map(|p| p.key)
            .collect();
        for key in expired {
            self.remove_passive(key);
        }

        let mut gone_nodes = Vec::new();
        let mut gone_candidacies = Vec::new();
        self.simultaneous.retain(|&ip, nodes| {
            let mut i = 0;
            while i < nodes.len() {
                let node = &mut nodes[i];
                let key = NodeKey {
                    ip,
                    port: node.port,
                };
                node.candidates.retain(|c| {
                    let keep = now.saturating_duration_since(c.created_at) <= candidate_lifetime;
                    if !keep && let CandRef::Local(conn) = c.conn {
                        gone_candidacies.push((conn, key));
                    }
                    keep
                });
                if now.saturating_duration_since(node.refreshed_at) >= node_lifetime {
                    gone_nodes.push((key, nodes.swap_remove(i)));
                } else {
                    i += 1;
                }
            }
            !nodes.is_empty()
        });
        for (conn_id, key) in gone_candidacies {
            if let Some(conn) = self.conns.get_mut(conn_id) {
                conn.candidacies.retain(|&k| k != key);
            }
        }
        for (key, node) in gone_nodes {
            self.forget_simultaneous(key, node);
            self.publish_simultaneous(key, true);
        }

        let idle_timeout = self.config.idle_timeout;
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(id, c)| {
                // Relay connections have their own timeouts (wait, relay idle).
                let held = c.simultaneous.is_some()
                    || !c.candidacies.is_empty()
                    || self.waits_remotely(id)
                    || !matches!(c.relay, RelayState::None);
                let idle = now.saturating_duration_since(c.last_line_at) >= idle_timeout;
                (!c.closing && !held && idle).then_some(id)
            })
            .collect();
        for id in idle {
            self.stats.limit_hits.idle_timeout += 1;
            self.close(id, "idle timeout");
        }
    }
}
