//! Builder-style changes to a topology, for tests that name what they need:
//!
//! ```
//! use netns_sim::{Link, LinkProfile, NatKind, Topology, TwoNats, Unsolicited, WanProfile};
//! let t = Topology::two_nats(TwoNats {
//!     a: NatKind::PortRestricted,
//!     cgnat_a: Some(NatKind::FullCone), // alice: home NAT behind an EIM carrier NAT
//!     b: NatKind::PortRestricted,
//!     ntp: true,
//!     ..TwoNats::default()
//! })
//! .with_wan(&WanProfile::internet()) // 20-60 ms per access link and direction, 3 ms, 1 %
//! .with_link("pub", Link::symmetric(LinkProfile::delay_ms(5)))
//! .with_router("nat-b", |r| r.unsolicited = Unsolicited::Rst);
//! assert!(t.links.contains_key("nat-a") && !t.links.contains_key("cgn-a"));
//! ```

use super::{Link, Router, Topology, WanProfile};
use crate::ipv6::Family;

impl Topology {
    /// Gives `host`'s uplink this link (replacing any). An unknown host is reported by
    /// [`Topology::resolve`] (and so by `Lab::up`).
    #[must_use]
    pub fn with_link(mut self, host: &str, link: Link) -> Topology {
        self.links.insert(host.to_owned(), link);
        self
    }

    /// Applies a WAN profile: every access link (the uplink of each router no other router
    /// names as `upstream`) gets [`WanProfile::link_for`] its name; the stages are seeded with
    /// the profile's seed.
    #[must_use]
    pub fn with_wan(mut self, wan: &WanProfile) -> Topology {
        let homes: Vec<String> = self
            .routers
            .iter()
            .filter(|r| !self.is_carrier(&r.name))
            .map(|r| r.name.clone())
            .collect();
        for name in homes {
            let link = wan.link_for(&name);
            self.links.insert(name, link);
        }
        self.seed = wan.seed;
        self
    }

    /// Seeds the WAN stages' randomness.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Topology {
        self.seed = seed;
        self
    }

    /// Turns IPv6 on everywhere (see [`crate::ipv6`]).
    #[must_use]
    pub fn with_ipv6(mut self) -> Topology {
        self.ipv6 = true;
        self
    }

    /// Makes host `name` (public or private) IPv4-only, IPv6-only or dual-stack.
    ///
    /// # Panics
    /// If there is no such host (routers are always dual-stack): a mistake in the calling
    /// test.
    #[must_use]
    pub fn with_family(mut self, name: &str, family: Family) -> Topology {
        if let Some(h) = self.public.iter_mut().find(|h| h.name == name) {
            h.family = family;
            return self;
        }
        match self
            .routers
            .iter_mut()
            .flat_map(|r| r.hosts.iter_mut())
            .find(|h| h.name == name)
        {
            Some(h) => h.family = family,
            None => panic!("with_family: no public or private host {name:?}"),
        }
        self
    }

    /// Changes router `name` with `change` (hairpin, timeouts, unsolicited answer, ...).
    ///
    /// # Panics
    /// If there is no router of that name: a mistake in the calling test.
    #[must_use]
    pub fn with_router(mut self, name: &str, change: impl FnOnce(&mut Router)) -> Topology {
        let known: Vec<String> = self.routers.iter().map(|r| r.name.clone()).collect();
        match self.routers.iter_mut().find(|r| r.name == name) {
            Some(r) => change(r),
            None => panic!(
                "with_router: no router {name:?} (routers: {})",
                known.join(", ")
            ),
        }
        self
    }
}
