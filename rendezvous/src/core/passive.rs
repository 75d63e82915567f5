//! The passive registrations, one table per address family, so that a `BOOTSTRAP` samples
//! uniformly among the nodes of the family it asks for (PyP2P's `BOOTSTRAP <n>`: IPv4 only;
//! `BOOTSTRAP <family> <n>`: see [`wire::rendezvous::Family`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng;
use wire::rendezvous::{Family, NodeEntry, NodeType};

use super::NodeKey;

/// The index of an address's family in per-family arrays (`server_kit::FAMILIES`).
pub(super) use server_kit::family_index as family_slot;

#[derive(Debug)]
pub(super) struct Passive {
    pub(super) key: NodeKey,
    pub(super) registered_at: Instant,
    /// This entry as it appears in a `NODES` reply (`p:<ip>:<port> `, `p:[<ipv6>]:<port> `),
    /// rendered once at registration so that a `BOOTSTRAP` reply is a copy of bytes, not
    /// formatting.
    pub(super) wire: Box<[u8]>,
}

impl Passive {
    fn new(key: NodeKey, registered_at: Instant) -> Passive {
        let entry = NodeEntry {
            node_type: NodeType::Passive,
            addr: SocketAddr::new(key.ip, key.port),
        };
        Passive {
            key,
            registered_at,
            wire: format!("{entry} ").into_bytes().into_boxed_slice(),
        }
    }
}

/// Every passive registration: a vector per family (for sampling) and an index by key.
#[derive(Debug, Default)]
pub(super) struct Passives {
    by_family: [Vec<Passive>; 2],
    index: HashMap<NodeKey, usize>,
}

impl Passives {
    /// Registrations held, of both families.
    pub(super) fn len(&self) -> usize {
        self.by_family[0].len() + self.by_family[1].len()
    }

    /// Registrations held, by family (in the order of [`FAMILIES`]).
    pub(super) fn counts(&self) -> [usize; 2] {
        [self.by_family[0].len(), self.by_family[1].len()]
    }

    pub(super) fn contains(&self, key: NodeKey) -> bool {
        self.index.contains_key(&key)
    }

    pub(super) fn get_mut(&mut self, key: NodeKey) -> Option<&mut Passive> {
        let i = *self.index.get(&key)?;
        self.by_family[family_slot(key.ip)].get_mut(i)
    }

    /// Adds a registration not held yet.
    pub(super) fn insert(&mut self, key: NodeKey, registered_at: Instant) {
        let table = &mut self.by_family[family_slot(key.ip)];
        self.index.insert(key, table.len());
        table.push(Passive::new(key, registered_at));
    }

    /// Removes a registration; false if it was not held.
    pub(super) fn remove(&mut self, key: NodeKey) -> bool {
        let Some(i) = self.index.remove(&key) else {
            return false;
        };
        let table = &mut self.by_family[family_slot(key.ip)];
        table.swap_remove(i);
        if let Some(moved) = table.get(i) {
            self.index.insert(moved.key, i);
        }
        true
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Passive> {
        self.by_family.iter().flatten()
    }

    /// `k` distinct registrations chosen uniformly at random among those of `family` (fewer
    /// when it holds fewer).
    pub(super) fn sample<'a>(
        &'a self,
        rng: &mut impl Rng,
        family: Family,
        k: usize,
    ) -> impl Iterator<Item = &'a Passive> {
        let (v4, v6) = (&self.by_family[0], &self.by_family[1]);
        let (first, second): (&[Passive], &[Passive]) = match family {
            Family::Ipv4 => (v4, &[]),
            Family::Ipv6 => (v6, &[]),
            Family::Any => (v4, v6),
        };
        let n = first.len() + second.len();
        rand::seq::index::sample(rng, n, k.min(n))
            .into_iter()
            .map(move |i| first.get(i).unwrap_or_else(|| &second[i - first.len()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn key(addr: &str) -> NodeKey {
        let addr: SocketAddr = addr.parse().unwrap();
        NodeKey {
            ip: addr.ip(),
            port: addr.port(),
        }
    }

    #[test]
    fn families_are_sampled_apart_and_together() {
        let now = Instant::now();
        let mut p = Passives::default();
        for a in [
            "192.0.2.1:1",
            "192.0.2.2:2",
            "[2001:db8::1]:3",
            "[2001:db8::2]:4",
        ] {
            p.insert(key(a), now);
        }
        assert_eq!(p.counts(), [2, 2]);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut take = |family| {
            let mut got: Vec<String> = p
                .sample(&mut rng, family, 10)
                .map(|e| String::from_utf8(e.wire.to_vec()).unwrap())
                .collect();
            got.sort();
            got
        };
        assert_eq!(take(Family::Ipv4), ["p:192.0.2.1:1 ", "p:192.0.2.2:2 "]);
        assert_eq!(
            take(Family::Ipv6),
            ["p:[2001:db8::1]:3 ", "p:[2001:db8::2]:4 "]
        );
        assert_eq!(take(Family::Any).len(), 4);
        assert!(p.remove(key("192.0.2.1:1")));
        assert!(!p.remove(key("192.0.2.1:1")));
        assert!(
            p.get_mut(key("192.0.2.2:2")).is_some(),
            "the moved entry is indexed"
        );
        assert_eq!(p.counts(), [1, 2]);
        assert_eq!(p.iter().count(), 3);
    }
}
