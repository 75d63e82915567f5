//! The two-NAT preset the CLI and most tests use.

use super::{
    MappingProtocols, NatKind, PrivateHost, PublicHost, Router, Topology, default_internet,
};

/// Options of the two-NAT preset: `pub` and `pub2` on the internet, `alice` behind `nat-a`,
/// `bob` behind `nat-b`, optionally `carol` next to alice.
// Plain independent switches, one per CLI flag: an enum per bool would only add noise.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TwoNats {
    /// NAT kind of router `nat-a` (alice's).
    pub a: NatKind,
    /// NAT kind of router `nat-b` (bob's).
    pub b: NatKind,
    /// miniupnpd on `nat-a`.
    pub upnp_a: bool,
    /// miniupnpd on `nat-b`.
    pub upnp_b: bool,
    /// What `nat-a`'s miniupnpd answers (default both).
    pub mapping_a: MappingProtocols,
    /// What `nat-b`'s miniupnpd answers (default both).
    pub mapping_b: MappingProtocols,
    /// chronyd NTP server on `pub`.
    pub ntp: bool,
    /// Add `carol` on alice's LAN.
    pub carol: bool,
    /// Put `nat-a` behind a carrier-grade NAT of this kind (its WAN side in `100.64.1.0/24`).
    pub cgnat_a: Option<NatKind>,
    /// Put `nat-b` behind a carrier-grade NAT of this kind. When `cgnat_a` and `cgnat_b` are the
    /// same kind, both homes share one carrier NAT `cgn`; otherwise each has its own (`cgn-a`,
    /// `cgn-b`).
    pub cgnat_b: Option<NatKind>,
    /// The carrier NAT(s) hairpin: one home reaches another through the carrier's public
    /// address.
    pub carrier_hairpin: bool,
    /// IPv6 everywhere (see [`crate::ipv6`]): `pub` `2001:db8::2`, alice `2001:db8:1::2`,
    /// bob `2001:db8:2::2`, ...
    pub ipv6: bool,
}

impl TwoNats {
    /// The carrier NATs this preset builds: `(name, kind, homes behind it)`.
    pub fn carriers(&self) -> Vec<(&'static str, NatKind, Vec<&'static str>)> {
        match (self.cgnat_a, self.cgnat_b) {
            (Some(a), Some(b)) if a == b => vec![("cgn", a, vec!["nat-a", "nat-b"])],
            (a, b) => {
                let mut out = Vec::new();
                if let Some(a) = a {
                    out.push(("cgn-a", a, vec!["nat-a"]));
                }
                if let Some(b) = b {
                    out.push(("cgn-b", b, vec!["nat-b"]));
                }
                out
            }
        }
    }
}

impl Topology {
    /// The two-NAT preset (see [`TwoNats`]). Addresses: internet `11.0.0.0/24` with `pub`
    /// `.2`, `pub2` `.3`, `nat-a` `.101`, `nat-b` `.102`; LANs `192.168.1.0/24` (alice `.2`,
    /// carol `.3`) and `192.168.2.0/24` (bob `.2`). With carrier NATs, the carriers take the
    /// internet addresses from `.101` (`cgn`, or `cgn-a` then `cgn-b`; a home behind a
    /// carrier has none) and the homes' WAN addresses are `100.64.K.2` on carrier K's LAN
    /// `100.64.K.0/24` (`.3` for the second home of a shared carrier).
    ///
    /// ```
    /// use netns_sim::{NatKind, Topology, TwoNats};
    /// let t = Topology::two_nats(TwoNats { a: NatKind::FullCone, ntp: true, ..TwoNats::default() });
    /// assert_eq!(t.routers[0].nat, NatKind::FullCone);
    /// ```
    pub fn two_nats(opts: TwoNats) -> Self {
        let host = PrivateHost::new;
        let mut alice_lan = vec![host("alice")];
        if opts.carol {
            alice_lan.push(host("carol"));
        }
        let mut routers = vec![
            Router {
                upnp: opts.upnp_a,
                mapping_protocols: opts.mapping_a,
                hosts: alice_lan,
                ..Router::new("nat-a", opts.a)
            },
            Router {
                upnp: opts.upnp_b,
                mapping_protocols: opts.mapping_b,
                hosts: vec![host("bob")],
                ..Router::new("nat-b", opts.b)
            },
        ];
        for (carrier, kind, homes) in opts.carriers() {
            for r in routers
                .iter_mut()
                .filter(|r| homes.contains(&r.name.as_str()))
            {
                r.upstream = Some(carrier.to_owned());
            }
            routers.push(Router {
                hairpin: opts.carrier_hairpin,
                ..Router::new(carrier, kind)
            });
        }
        Topology {
            internet: default_internet(),
            public: vec![
                PublicHost {
                    ntp: opts.ntp,
                    ..PublicHost::new("pub")
                },
                PublicHost::new("pub2"),
            ],
            routers,
            links: std::collections::BTreeMap::new(),
            seed: 0,
            ipv6: opts.ipv6,
        }
    }
}
