//! What a lab looks like: public hosts, NAT routers, private hosts, read from TOML or a preset.
//!
//! A [`Topology`] is what the user writes; [`Topology::resolve`] checks it and fills in every
//! default address, giving the [`HostInfo`] list the lab is built from.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ipv6::Family;
use crate::net::{Ipv4Net, NetError};
use crate::timeouts::Timeouts;
use crate::unsolicited::Unsolicited;

mod build;
mod kinds;
mod link;
mod preset;
mod resolve;
#[cfg(test)]
mod tests;

pub use kinds::{MappingProtocols, NatKind, UnknownNatKind};
pub use link::{Link, LinkProfile, WanProfile};
pub use preset::TwoNats;
pub use resolve::{Segment, Uplink, segment_members, segment_of, uplink};

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
    /// A `[links]` entry names no host of the topology.
    #[error(
        "[links.{0}]: no host of that name (links belong to a public host, router or private host)"
    )]
    UnknownLinkHost(String),
    /// A router's `upstream` names no router, itself, or makes a loop.
    #[error("router {router:?}: upstream {upstream:?} {why}")]
    BadUpstream {
        /// The router.
        router: String,
        /// The upstream it names.
        upstream: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A router's conntrack timeout cannot be set.
    #[error("router {router:?}: {source}")]
    Timeout {
        /// The router.
        router: String,
        /// What is wrong.
        source: crate::timeouts::BadTimeout,
    },
    /// An IPv6-only host in a topology without IPv6.
    #[error(
        "host {0:?} is IPv6-only (family = \"ipv6\") but the topology has no IPv6 (set ipv6 = true, or --ipv6)"
    )]
    Ipv6Off(String),
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
    /// `dual` (default), `ipv4` (IPv4 only) or `ipv6` (IPv6 only; needs `ipv6 = true`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub family: Family,
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
    /// `dual` (default), `ipv4` (IPv4 only) or `ipv6` (IPv6 only; needs `ipv6 = true`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub family: Family,
}

impl PrivateHost {
    /// A dual-stack host called `name` with the next free LAN address.
    pub fn new(name: &str) -> PrivateHost {
        PrivateHost {
            name: name.to_owned(),
            addr: None,
            family: Family::Dual,
        }
    }
}

impl PublicHost {
    /// A dual-stack public host called `name` with the next free address, no NTP server.
    pub fn new(name: &str) -> PublicHost {
        PublicHost {
            name: name.to_owned(),
            addr: None,
            ntp: false,
            family: Family::Dual,
        }
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
    /// Its WAN address on the internet segment (default: the next free one from `.101`), or
    /// on its upstream router's LAN (default: the next free one from `.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan: Option<Ipv4Addr>,
    /// The router its WAN side hangs off instead of the internet: a carrier-grade NAT (see
    /// [`crate::cgnat`]). Default: none, the router is on the internet segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Its LAN subnet; the router takes the first host address (default `192.168.N.0/24`,
    /// N = 1 for the first router; `100.64.K.0/24` for the K-th router that others name as
    /// `upstream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<Ipv4Net>,
    /// Run miniupnpd (UPnP IGD + NAT-PMP) on the LAN side.
    #[serde(default)]
    pub upnp: bool,
    /// What that miniupnpd answers: `both` (default), `upnp` or `natpmp`.
    #[serde(default)]
    pub mapping_protocols: MappingProtocols,
    /// Hairpinning: a LAN host may reach another LAN host (or a router behind this one)
    /// through this router's public address and a mapping (see [`crate::hairpin`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub hairpin: bool,
    /// What it does with unsolicited packets from the WAN: `drop` (default) or `rst`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub unsolicited: Unsolicited,
    /// Conntrack (mapping) timeouts, e.g. `timeouts = { tcp_established = "60s" }`.
    #[serde(default, skip_serializing_if = "Timeouts::is_default")]
    pub timeouts: Timeouts,
    /// The hosts on its LAN.
    #[serde(default, rename = "host")]
    pub hosts: Vec<PrivateHost>,
}

impl Router {
    /// A router of `nat` kind called `name`, every option at its default, no hosts.
    pub fn new(name: &str, nat: NatKind) -> Router {
        Router {
            name: name.to_owned(),
            nat,
            wan: None,
            upstream: None,
            lan: None,
            upnp: false,
            mapping_protocols: MappingProtocols::Both,
            hairpin: false,
            unsolicited: Unsolicited::Drop,
            timeouts: Timeouts::default(),
            hosts: Vec::new(),
        }
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A whole lab: the internet segment, public hosts and routers with their LANs.
///
/// TOML form (see `examples/two-nats.toml`):
/// ```toml
/// internet = "11.0.0.0/24"
/// seed = 7                      # the WAN stages' randomness (loss, jitter)
/// # ipv6 = true                 # IPv6 everywhere (see netns_sim::ipv6; not with [links])
/// [[public]]
/// name = "pub"
/// ntp = true
/// [[router]]
/// name = "nat-a"
/// nat = "full-cone"
/// upstream = "cgn"              # behind a carrier NAT (100.64.0.0/10)
/// timeouts = { tcp_established = "60s", udp = "10s" }
/// unsolicited = "rst"
/// [[router.host]]
/// name = "alice"
/// [[router]]
/// name = "cgn"
/// nat = "full-cone"
/// hairpin = true
/// [links.nat-a]                 # nat-a's access line (to cgn)
/// delay = "40ms"
/// jitter = "5ms"
/// loss = "1%"
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
    /// WAN emulation: the uplink of each named host (see [`Link`]). Default: none, every link
    /// is instant and lossless.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, Link>,
    /// Seed of the WAN stages' randomness (which packets are lost, each packet's jitter): the
    /// same seed and the same packets give the same decisions.
    #[serde(default, skip_serializing_if = "is_default")]
    pub seed: u64,
    /// IPv6 on every segment, routed without translation, home routers with a stateful
    /// firewall (see [`crate::ipv6`]). Default off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ipv6: bool,
}

pub(crate) fn default_internet() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(11, 0, 0, 0), 24).unwrap_or_else(|_| unreachable!())
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
    /// `0.0.0.0` for an IPv6-only host.
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
    /// Routers behind a carrier NAT: that carrier's name (their `addr` is on its LAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Routers: hairpinning on.
    #[serde(default)]
    pub hairpin: bool,
    /// Routers: the answer to unsolicited WAN packets.
    #[serde(default)]
    pub unsolicited: Unsolicited,
    /// Routers: conntrack timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Which IP versions it has (routers: always dual).
    #[serde(default)]
    pub family: Family,
    /// With IPv6: public hosts' internet address, routers' WAN address, private hosts' LAN
    /// address (see [`crate::ipv6`] for the plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr6: Option<Ipv6Addr>,
    /// With IPv6, routers and private hosts: the LAN's /64 prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan6: Option<Ipv6Addr>,
    /// With IPv6, routers: LAN-side address; private hosts: their gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan_addr6: Option<Ipv6Addr>,
}

impl HostInfo {
    /// A host with every optional field empty.
    pub(crate) fn new(name: &str, role: Role, addr: Ipv4Addr) -> HostInfo {
        HostInfo {
            name: name.to_owned(),
            role,
            addr,
            lan: None,
            lan_addr: None,
            router: None,
            nat: NatKind::None,
            upnp: false,
            mapping_protocols: MappingProtocols::Both,
            ntp: false,
            upstream: None,
            hairpin: false,
            unsolicited: Unsolicited::Drop,
            timeouts: Timeouts::default(),
            family: Family::Dual,
            addr6: None,
            lan6: None,
            lan_addr6: None,
        }
    }
}

impl Topology {
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
}
