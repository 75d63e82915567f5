//! Hole-punch coordination: simultaneous nodes (`SIMULTANEOUS READY`, kept on their
//! persistent connection), candidates (`CANDIDATE` → `PREDICTION SET` and a `CHALLENGE` to the
//! node), and `ACCEPT` → `FIGHT` to the candidate. Every address sent is an observed one.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tracing::{debug, info};
use wire::rendezvous::{Family, NodeTarget, NtpTime, Proto, Response};

use super::{CandRef, Candidate, ConnId, Core, NodeKey, Simultaneous, family_slot};

/// `IPv4` or `IPv6`, for messages.
fn family_name(family: Family) -> &'static str {
    if family == Family::Ipv6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

impl Core {
    pub(super) fn simultaneous_mut(&mut self, key: NodeKey) -> Option<&mut Simultaneous> {
        self.simultaneous
            .get_mut(&key.ip)?
            .iter_mut()
            .find(|n| n.port == key.port)
    }

    pub(super) fn register_simultaneous(
        &mut self,
        now: Instant,
        id: ConnId,
        peer: SocketAddr,
        port: u16,
    ) {
        let key = NodeKey {
            ip: peer.ip(),
            port,
        };
        let previous = self.conns.get(id).and_then(|c| c.simultaneous);
        if let Some(old) = previous
            && old != key
            && let Some(node) = self.simultaneous_mut(old)
        {
            node.conn = None;
        }
        let replaced_conn = if let Some(node) = self.simultaneous_mut(key) {
            node.refreshed_at = now;
            node.conn.replace(id)
        } else {
            if self.refused_over_cap(id, key.ip, "SIMULTANEOUS READY") {
                return;
            }
            self.simultaneous
                .entry(key.ip)
                .or_default()
                .push(Simultaneous {
                    port,
                    refreshed_at: now,
                    conn: Some(id),
                    candidates: Vec::new(),
                });
            self.simultaneous_count += 1;
            self.stats.registered_simultaneous += 1;
            self.stats.registered_by_family[family_slot(key.ip)] += 1;
            debug!(node = %key, "simultaneous node registered");
            None
        };
        if let Some(old) = replaced_conn
            && old != id
            && let Some(conn) = self.conns.get_mut(old)
        {
            conn.simultaneous = None;
        }
        if let Some(conn) = self.conns.get_mut(id) {
            conn.simultaneous = Some(key);
        }
        self.publish_simultaneous(key, false);
        // Candidates that arrived while the node was stale or away are challenged now.
        self.challenge_pending(key, id);
    }

    pub(super) fn challenge_pending(&mut self, key: NodeKey, node_conn: ConnId) {
        let Some(node) = self.simultaneous_mut(key) else {
            return;
        };
        let mut challenges = Vec::new();
        for candidate in node.candidates.iter_mut().filter(|c| !c.challenged) {
            candidate.challenged = true;
            challenges.push(Response::Challenge {
                client_ip: candidate.ip,
                ports: candidate.ports.clone(),
                proto: candidate.proto,
            });
        }
        for challenge in challenges {
            self.stats.challenges += 1;
            self.send(node_conn, &challenge);
        }
    }

    /// The connected registration a `CANDIDATE` names: by exact address, or the most recently
    /// refreshed connected one at an IP.
    pub(super) fn find_target(&self, target: NodeTarget) -> Option<NodeKey> {
        let nodes = self.simultaneous.get(&target.ip())?;
        let node = match target {
            NodeTarget::Addr(addr) => nodes.iter().find(|n| n.port == addr.port()),
            NodeTarget::Ip(_) => nodes
                .iter()
                .filter(|n| n.conn.is_some())
                .max_by_key(|n| n.refreshed_at)
                .or_else(|| nodes.iter().max_by_key(|n| n.refreshed_at)),
        }?;
        Some(NodeKey {
            ip: target.ip(),
            port: node.port,
        })
    }

    pub(super) fn add_candidate(
        &mut self,
        now: Instant,
        id: ConnId,
        peer: SocketAddr,
        target: NodeTarget,
        proto: Proto,
        ports: Vec<u16>,
    ) {
        let (theirs, ours) = (Family::of(target.ip()), Family::of(peer.ip()));
        if theirs != ours {
            self.stats.cross_family_refused += 1;
            let why = format!(
                "CANDIDATE: {target} is {}, you asked over {}: a hole punch needs both ends \
                 in one address family (ask over {} to punch to it)",
                family_name(theirs),
                family_name(ours),
                family_name(theirs)
            );
            self.refuse(id, &why);
            return;
        }
        let Some(key) = self.find_target(target) else {
            if let Some((key, inst)) = self.find_remote_target(target) {
                self.forward_candidate(now, id, peer.ip(), key, inst, proto, &ports);
                return;
            }
            self.refuse(
                id,
                &format!("CANDIDATE: no simultaneous node registered at {target}"),
            );
            return;
        };
        let who = CandRef::Local(id);
        match self.candidate_for(now, key, who, peer.ip(), proto, ports) {
            Ok(()) => self.send(id, &Response::PredictionSet),
            Err(why) => self.refuse(id, &why),
        }
    }

    /// Adds a candidate (`who`, from `ip`) to the local simultaneous node `key` and challenges
    /// the node (or tells it to RECONNECT when its registration is stale). `Err`: why not.
    pub(super) fn candidate_for(
        &mut self,
        now: Instant,
        key: NodeKey,
        who: CandRef,
        ip: IpAddr,
        proto: Proto,
        ports: Vec<u16>,
    ) -> Result<(), String> {
        let max_candidates = self.config.max_candidates_per_node;
        let candidate_lifetime = self.config.candidate_lifetime;
        let Some(node) = self.simultaneous_mut(key) else {
            return Err(format!(
                "CANDIDATE: no simultaneous node registered at {key}"
            ));
        };
        let Some(node_conn) = node.conn else {
            return Err(format!(
                "CANDIDATE: simultaneous node {key} is not connected"
            ));
        };
        if who == CandRef::Local(node_conn) {
            return Err("CANDIDATE: a node cannot be its own candidate".to_owned());
        }
        // One pending candidate per client IP, as PyP2P: a newer one replaces it.
        let mut replaced = None;
        if let Some(i) = node.candidates.iter().position(|c| c.ip == ip) {
            replaced = Some(node.candidates.remove(i).conn);
        }
        if node.candidates.len() >= max_candidates {
            self.stats.limit_hits.candidates_per_node += 1;
            return Err(format!(
                "CANDIDATE: too many pending candidates for {key} (limit {max_candidates})"
            ));
        }
        let stale = now.saturating_duration_since(node.refreshed_at) > candidate_lifetime;
        node.candidates.push(Candidate {
            conn: who,
            ip,
            ports: ports.clone(),
            proto,
            created_at: now,
            challenged: !stale,
        });
        if let Some(CandRef::Local(old)) = replaced
            && who != CandRef::Local(old)
            && let Some(conn) = self.conns.get_mut(old)
        {
            conn.candidacies.retain(|&k| k != key);
        }
        if let CandRef::Local(id) = who
            && let Some(conn) = self.conns.get_mut(id)
            && !conn.candidacies.contains(&key)
        {
            conn.candidacies.push(key);
        }
        if stale {
            // PyP2P: the node's NAT mapping may be gone; it re-registers, then gets the challenge.
            self.stats.reconnects += 1;
            self.send(node_conn, &Response::Reconnect);
        } else {
            self.stats.challenges += 1;
            self.send(
                node_conn,
                &Response::Challenge {
                    client_ip: ip,
                    ports,
                    proto,
                },
            );
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn accept(
        &mut self,
        now: Instant,
        id: ConnId,
        peer: SocketAddr,
        client_ip: IpAddr,
        ports: Vec<u16>,
        proto: Proto,
        ntp_time: NtpTime,
    ) {
        let own = self.conns.get(id).and_then(|c| c.simultaneous);
        let key = own.or_else(|| self.find_target(NodeTarget::Ip(peer.ip())));
        let Some(key) = key else {
            self.refuse(id, "ACCEPT: you are not a registered simultaneous node");
            return;
        };
        let server_time = self.unix_now(now);
        let tolerance = self.config.ntp_tolerance.as_secs_f64();
        if (ntp_time.secs() - server_time).abs() > tolerance {
            self.refuse(
                id,
                &format!(
                    "ACCEPT: ntp_time {ntp_time} is more than {tolerance} s from server time {server_time:.3}"
                ),
            );
            return;
        }
        let Some(node) = self.simultaneous_mut(key) else {
            return;
        };
        let Some(i) = node.candidates.iter().rposition(|c| c.ip == client_ip) else {
            self.refuse(
                id,
                &format!("ACCEPT: no pending candidate from {client_ip}"),
            );
            return;
        };
        let candidate = node.candidates.remove(i);
        info!(node = %key, candidate = %client_ip, "hole punch accepted, sending FIGHT");
        self.stats.fights += 1;
        let fight = Response::Fight {
            node_ip: key.ip,
            ports,
            proto,
            ntp_time,
        };
        match candidate.conn {
            CandRef::Local(conn_id) => {
                if let Some(conn) = self.conns.get_mut(conn_id) {
                    conn.candidacies.retain(|&k| k != key);
                }
                self.send(conn_id, &fight);
            }
            CandRef::Remote { inst, serial } => self.send_fight_home(inst, serial, &fight),
        }
    }

    /// Removes a local simultaneous registration (its node registered on another instance).
    pub(super) fn drop_simultaneous(&mut self, key: NodeKey) {
        let Some(nodes) = self.simultaneous.get_mut(&key.ip) else {
            return;
        };
        let Some(i) = nodes.iter().position(|n| n.port == key.port) else {
            return;
        };
        let node = nodes.swap_remove(i);
        if nodes.is_empty() {
            self.simultaneous.remove(&key.ip);
        }
        self.forget_simultaneous(key, node);
    }

    /// Unlinks connections from a simultaneous registration that was just removed.
    pub(super) fn forget_simultaneous(&mut self, key: NodeKey, node: Simultaneous) {
        self.simultaneous_count -= 1;
        if let Some(conn_id) = node.conn
            && let Some(conn) = self.conns.get_mut(conn_id)
            && conn.simultaneous == Some(key)
        {
            conn.simultaneous = None;
        }
        for candidate in node.candidates {
            if let CandRef::Local(id) = candidate.conn
                && let Some(conn) = self.conns.get_mut(id)
            {
                conn.candidacies.retain(|&k| k != key);
            }
        }
        debug!(node = %key, "simultaneous node removed");
    }
}
