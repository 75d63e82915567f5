//! What a lab looks like: public hosts, NAT routers, private hosts, read from TOML or a preset.
//!
//! A [`Topology`] is what the user writes; [`Topology::resolve`] checks it and fills in every
//! default address, giving the [`HostInfo`] list the lab is built from.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::net::{Ipv4Net, NetError};

/// Errors from reading or checking a topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The topology file could not be read.
    #[error("cannot read topology file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown fields.
    #[error("invalid topology TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// A host name is empty, too long or has characters other than `a-z0-9-`.
    #[error(
        "invalid host name {0:?}: use 1 to 12 characters a-z, 0-9 and '-', starting with a letter"
    )]
    BadName(String),
    /// Two hosts share a name.
    #[error("host name {0:?} is used twice")]
    DuplicateName(String),
    /// Two interfaces on one segment share an address.
    #[error("address {addr} is used twice (by {first:?} and {second:?})")]
    DuplicateAddr {
        /// The address.
        addr: Ipv4Addr,
        /// The first user.
        first: String,
        /// The second user.
        second: String,
    },
    /// An address lies outside the subnet it must be in.
    #[error("address {addr} of {host:?} is not a host address of {net}")]
    OutsideSubnet {
        /// The host.
        host: String,
        /// The address.
        addr: Ipv4Addr,
        /// The subnet.
        net: Ipv4Net,
    },
    /// A subnet ran out of addresses.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The topology has no host at all.
    #[error("topology has no hosts")]
    Empty,
}

/// A NAT behaviour, named after RFC 4787 mapping and filtering behaviour.
///
/// Every kind silently drops unsolicited inbound packets that its filtering does not admit,
/// as home routers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// Endpoint-independent mapping and endpoint-independent filtering: once alice sent from a
    /// port, anyone may reach her through its mapping. nftables dynamic map + DNAT.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering: any port of a host alice
    /// contacted may reach her. nftables dynamic map keyed by remote address + DNAT.
    RestrictedCone,
    /// Endpoint-independent mapping (port-preserving), address-and-port-dependent filtering:
    /// Linux `masquerade` as is, the common home router.
    #[default]
    PortRestricted,
    /// Endpoint-dependent mapping with a random port per destination:
    /// `masquerade fully-random`.
    Symmetric,
    /// Endpoint-dependent mapping with sequential ports (each new connection gets the previous
    /// external port + 1, 20000 to 20999), for port-prediction tests: `snat` to `numgen inc`.
    Sequential,
    /// No translation and no filtering: a plain router, its LAN is routed from the internet.
    None,
}

impl NatKind {
    /// Every kind, in documentation order.
    pub const ALL: [NatKind; 6] = [
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestricted,
        NatKind::Symmetric,
        NatKind::Sequential,
        NatKind::None,
    ];

    /// The kebab-case name used in TOML and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::FullCone => "full-cone",
            NatKind::RestrictedCone => "restricted-cone",
            NatKind::PortRestricted => "port-restricted",
            NatKind::Symmetric => "symmetric",
            NatKind::Sequential => "sequential",
            NatKind::None => "none",
        }
    }

    /// Whether the same internal ip:port keeps one external port for all destinations.
    pub fn endpoint_independent_mapping(self) -> bool {
        matches!(
            self,
            NatKind::FullCone | NatKind::RestrictedCone | NatKind::PortRestricted | NatKind::None
        )
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown NAT kind name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown NAT kind {0:?}: use full-cone, restricted-cone, port-restricted, symmetric, sequential or none"
)]
pub struct UnknownNatKind(pub String);

impl FromStr for NatKind {
    type Err = UnknownNatKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NatKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownNatKind(s.to_owned()))
    }
}

/// A host on the internet segment, with a public address and no NAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicHost {
    /// Host name, also the last part of its namespace name.
    pub name: String,
    /// Its address on the internet segment (default: the next free one from `.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Ipv4Addr>,
    /// Run a local NTP server (chronyd, never touching the host clock) on this host.
    #[serde(default)]
    pub ntp: bool,
}

/// A private host on a router's LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateHost {
    /// Host name.
    pub name: String,
    /// Its LAN address (default: the next free one from `.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Ipv4Addr>,
}

/// Which protocols a router's miniupnpd answers (when its `upnp` is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingProtocols {
    /// UPnP IGD and NAT-PMP (miniupnpd's usual setup).
    #[default]
    Both,
    /// UPnP IGD only (`enable_natpmp=no`: UDP 5351 is closed).
    Upnp,
    /// NAT-PMP only (`enable_upnp=no`: no SSDP, no HTTP).
    Natpmp,
}

impl MappingProtocols {
    /// Whether miniupnpd answers UPnP.
    pub fn upnp(self) -> bool {
        self != MappingProtocols::Natpmp
    }

    /// Whether miniupnpd answers NAT-PMP.
    pub fn natpmp(self) -> bool {
        self != MappingProtocols::Upnp
    }

    /// The name used in TOML and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            MappingProtocols::Both => "both",
            MappingProtocols::Upnp => "upnp",
            MappingProtocols::Natpmp => "natpmp",
        }
    }
}

impl std::str::FromStr for MappingProtocols {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            MappingProtocols::Both,
            MappingProtocols::Upnp,
            MappingProtocols::Natpmp,
        ]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| format!("unknown mapping protocols {s:?}: use both, upnp or natpmp"))
    }
}

/// A NAT router between the internet segment and one LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    /// Router name.
    pub name: String,
    /// Its NAT behaviour.
    pub nat: NatKind,
    /// Its WAN address on the internet segment (default: the next free one from `.101`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan: Option<Ipv4Addr>,
    /// Its LAN subnet; the router takes the first host address (default `192.168.N.0/24`,
    /// N = 1 for the first router).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<Ipv4Net>,
    /// Run miniupnpd (UPnP IGD + NAT-PMP) on the LAN side.
    #[serde(default)]
    pub upnp: bool,
    /// What that miniupnpd answers: `both` (default), `upnp` or `natpmp`.
    #[serde(default)]
    pub mapping_protocols: MappingProtocols,
    /// The hosts on its LAN.
    #[serde(default, rename = "host")]
    pub hosts: Vec<PrivateHost>,
}

/// A whole lab: the internet segment, public hosts and routers with their LANs.
///
/// TOML form (see `examples/two-nats.toml`):
/// ```toml
/// internet = "11.0.0.0/24"
/// [[public]]
/// name = "pub"
/// ntp = true
/// [[router]]
/// name = "nat-a"
/// nat = "full-cone"
/// [[router.host]]
/// name = "alice"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The public "internet" subnet (default `11.0.0.0/24`, addresses miniupnpd accepts as
    /// public; nothing in the lab is routed outside its namespaces).
    #[serde(default = "default_internet")]
    pub internet: Ipv4Net,
    /// Hosts directly on the internet segment.
    #[serde(default, rename = "public")]
    pub public: Vec<PublicHost>,
    /// NAT routers.
    #[serde(default, rename = "router")]
    pub routers: Vec<Router>,
}

fn default_internet() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(11, 0, 0, 0), 24).unwrap_or_else(|_| unreachable!())
}

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
}

/// The role of a host in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// On the internet segment.
    Public,
    /// A NAT router.
    Router,
    /// Behind a router.
    Private,
}

/// One host of a resolved topology, every address filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Host name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Public hosts: internet address; routers: WAN address; private hosts: LAN address.
    pub addr: Ipv4Addr,
    /// Routers and private hosts: the LAN subnet.
    pub lan: Option<Ipv4Net>,
    /// Routers: LAN-side address; private hosts: their gateway (the router's LAN address).
    pub lan_addr: Option<Ipv4Addr>,
    /// Private hosts: the router's name.
    pub router: Option<String>,
    /// Routers: their NAT; private hosts: their router's NAT; public hosts: `none`.
    pub nat: NatKind,
    /// Routers: runs miniupnpd.
    pub upnp: bool,
    /// Routers: what its miniupnpd answers.
    #[serde(default)]
    pub mapping_protocols: MappingProtocols,
    /// Public hosts: runs chronyd.
    pub ntp: bool,
}

impl Topology {
    /// The two-NAT preset (see [`TwoNats`]). Addresses: internet `11.0.0.0/24` with `pub`
    /// `.2`, `pub2` `.3`, `nat-a` `.101`, `nat-b` `.102`; LANs `192.168.1.0/24` (alice `.2`,
    /// carol `.3`) and `192.168.2.0/24` (bob `.2`).
    ///
    /// ```
    /// use netns_sim::{NatKind, Topology, TwoNats};
    /// let t = Topology::two_nats(TwoNats { a: NatKind::FullCone, ntp: true, ..TwoNats::default() });
    /// assert_eq!(t.routers[0].nat, NatKind::FullCone);
    /// ```
    pub fn two_nats(opts: TwoNats) -> Self {
        let host = |name: &str| PrivateHost {
            name: name.to_owned(),
            addr: None,
        };
        let mut alice_lan = vec![host("alice")];
        if opts.carol {
            alice_lan.push(host("carol"));
        }
        Topology {
            internet: default_internet(),
            public: vec![
                PublicHost {
                    name: "pub".into(),
                    addr: None,
                    ntp: opts.ntp,
                },
                PublicHost {
                    name: "pub2".into(),
                    addr: None,
                    ntp: false,
                },
            ],
            routers: vec![
                Router {
                    name: "nat-a".into(),
                    nat: opts.a,
                    wan: None,
                    lan: None,
                    upnp: opts.upnp_a,
                    mapping_protocols: opts.mapping_a,
                    hosts: alice_lan,
                },
                Router {
                    name: "nat-b".into(),
                    nat: opts.b,
                    wan: None,
                    lan: None,
                    upnp: opts.upnp_b,
                    mapping_protocols: opts.mapping_b,
                    hosts: vec![host("bob")],
                },
            ],
        }
    }

    /// Parses a TOML topology.
    pub fn from_toml(text: &str) -> Result<Self, TopologyError> {
        Ok(toml::from_str(text)?)
    }

    /// Reads and parses a TOML topology file.
    pub fn from_file(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Every name valid, none twice.
    fn check_names(&self) -> Result<(), TopologyError> {
        let mut names: Vec<&str> = Vec::new();
        let all_names =
            self.public
                .iter()
                .map(|h| h.name.as_str())
                .chain(self.routers.iter().flat_map(|r| {
                    std::iter::once(r.name.as_str()).chain(r.hosts.iter().map(|h| h.name.as_str()))
                }));
        for name in all_names {
            check_name(name)?;
            if names.contains(&name) {
                return Err(TopologyError::DuplicateName(name.to_owned()));
            }
            names.push(name);
        }
        Ok(())
    }

    /// Checks names and addresses and fills in every default: public hosts first, then each
    /// router followed by its private hosts.
    pub fn resolve(&self) -> Result<Vec<HostInfo>, TopologyError> {
        if self.public.is_empty() && self.routers.is_empty() {
            return Err(TopologyError::Empty);
        }
        self.check_names()?;

        // Internet segment: explicit addresses first, then defaults.
        let mut wan_used: Vec<(Ipv4Addr, String)> = Vec::new();
        let explicit = self
            .public
            .iter()
            .map(|h| (&h.name, h.addr))
            .chain(self.routers.iter().map(|r| (&r.name, r.wan)));
        for (name, addr) in explicit {
            if let Some(addr) = addr {
                claim(&mut wan_used, self.internet, name, addr)?;
            }
        }
        let mut out = Vec::new();
        for h in &self.public {
            let addr = match h.addr {
                Some(a) => a,
                None => auto(&mut wan_used, self.internet, 2, &h.name)?,
            };
            out.push(HostInfo {
                name: h.name.clone(),
                role: Role::Public,
                addr,
                lan: None,
                lan_addr: None,
                router: None,
                nat: NatKind::None,
                upnp: false,
                mapping_protocols: MappingProtocols::Both,
                ntp: h.ntp,
            });
        }
        let mut lans: Vec<Ipv4Net> = Vec::new();
        for (i, r) in self.routers.iter().enumerate() {
            let wan = match r.wan {
                Some(a) => a,
                None => auto(&mut wan_used, self.internet, 101, &r.name)?,
            };
            let lan = if let Some(l) = r.lan {
                l
            } else {
                let third = u8::try_from(i + 1).map_err(|_| NetError::Full(self.internet))?;
                Ipv4Net::new(Ipv4Addr::new(192, 168, third, 0), 24)?
            };
            lans.push(lan);
            let mut lan_used: Vec<(Ipv4Addr, String)> = Vec::new();
            let gw = lan.host(1).ok_or(NetError::Full(lan))?;
            claim(&mut lan_used, lan, &r.name, gw)?;
            for h in &r.hosts {
                if let Some(a) = h.addr {
                    claim(&mut lan_used, lan, &h.name, a)?;
                }
            }
            out.push(HostInfo {
                name: r.name.clone(),
                role: Role::Router,
                addr: wan,
                lan: Some(lan),
                lan_addr: Some(gw),
                router: None,
                nat: r.nat,
                upnp: r.upnp,
                mapping_protocols: r.mapping_protocols,
                ntp: false,
            });
            for h in &r.hosts {
                let addr = match h.addr {
                    Some(a) => a,
                    None => auto(&mut lan_used, lan, 2, &h.name)?,
                };
                out.push(HostInfo {
                    name: h.name.clone(),
                    role: Role::Private,
                    addr,
                    lan: Some(lan),
                    lan_addr: Some(gw),
                    router: Some(r.name.clone()),
                    nat: r.nat,
                    upnp: false,
                    mapping_protocols: MappingProtocols::Both,
                    ntp: false,
                });
            }
        }
        Ok(out)
    }
}

fn check_name(name: &str) -> Result<(), TopologyError> {
    let ok = (1..=12).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name != "internet";
    if ok {
        Ok(())
    } else {
        Err(TopologyError::BadName(name.to_owned()))
    }
}

fn claim(
    used: &mut Vec<(Ipv4Addr, String)>,
    net: Ipv4Net,
    host: &str,
    addr: Ipv4Addr,
) -> Result<(), TopologyError> {
    if !net.contains_host(addr) {
        return Err(TopologyError::OutsideSubnet {
            host: host.to_owned(),
            addr,
            net,
        });
    }
    if let Some((_, first)) = used.iter().find(|(a, _)| *a == addr) {
        return Err(TopologyError::DuplicateAddr {
            addr,
            first: first.clone(),
            second: host.to_owned(),
        });
    }
    used.push((addr, host.to_owned()));
    Ok(())
}

fn auto(
    used: &mut Vec<(Ipv4Addr, String)>,
    net: Ipv4Net,
    start: u32,
    host: &str,
) -> Result<Ipv4Addr, TopologyError> {
    let taken: Vec<Ipv4Addr> = used.iter().map(|(a, _)| *a).collect();
    let addr = net.next_free(start, &taken)?;
    used.push((addr, host.to_owned()));
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_nats_resolves_to_documented_addresses() {
        let t = Topology::two_nats(TwoNats {
            carol: true,
            ..TwoNats::default()
        });
        let hosts = t.resolve().unwrap();
        let addr = |n: &str| hosts.iter().find(|h| h.name == n).unwrap().addr.to_string();
        assert_eq!(addr("pub"), "11.0.0.2");
        assert_eq!(addr("pub2"), "11.0.0.3");
        assert_eq!(addr("nat-a"), "11.0.0.101");
        assert_eq!(addr("nat-b"), "11.0.0.102");
        assert_eq!(addr("alice"), "192.168.1.2");
        assert_eq!(addr("carol"), "192.168.1.3");
        assert_eq!(addr("bob"), "192.168.2.2");
    }

    #[test]
    fn example_file_parses_and_round_trips() {
        let text = include_str!("../examples/two-nats.toml");
        let t = Topology::from_toml(text).unwrap();
        assert_eq!(t.routers.len(), 2);
        let again = Topology::from_toml(&toml::to_string(&t).unwrap()).unwrap();
        assert_eq!(t, again);
        t.resolve().unwrap();
    }

    #[test]
    fn rejects_bad_topologies() {
        let err = |s: &str| {
            Topology::from_toml(s)
                .and_then(|t| t.resolve())
                .unwrap_err()
        };
        assert!(matches!(err(""), TopologyError::Empty));
        assert!(matches!(
            err("[[public]]\nname = \"Pub\""),
            TopologyError::BadName(n) if n == "Pub"
        ));
        assert!(matches!(
            err("[[public]]\nname = \"a\"\n[[public]]\nname = \"a\""),
            TopologyError::DuplicateName(_)
        ));
        assert!(matches!(
            err("[[public]]\nname = \"a\"\naddr = \"1.2.3.4\""),
            TopologyError::OutsideSubnet { .. }
        ));
        assert!(matches!(
            err(
                "[[public]]\nname = \"a\"\naddr = \"11.0.0.5\"\n[[public]]\nname = \"b\"\naddr = \"11.0.0.5\""
            ),
            TopologyError::DuplicateAddr { .. }
        ));
        assert!(matches!(
            err("[[router]]\nname = \"r\"\nnat = \"cone\""),
            TopologyError::Toml(_)
        ));
        assert!(matches!(err("colour = 1"), TopologyError::Toml(_)));
    }

    #[test]
    fn nat_kind_names_round_trip() {
        for k in NatKind::ALL {
            assert_eq!(k.name().parse::<NatKind>(), Ok(k));
        }
        assert_eq!(
            "cone".parse::<NatKind>(),
            Err(UnknownNatKind("cone".into()))
        );
    }
}
