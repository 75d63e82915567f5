//! Checking a topology and filling in every default address.

use std::net::Ipv4Addr;

use super::{HostInfo, Role, Topology, TopologyError};
use crate::ipv6::{self, Family};
use crate::net::{Ipv4Net, NetError};

impl Topology {
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

    /// Every `upstream` names another router, and following them never loops.
    fn check_upstreams(&self) -> Result<(), TopologyError> {
        for r in &self.routers {
            let mut seen = vec![r.name.as_str()];
            let mut cur = r;
            while let Some(up) = &cur.upstream {
                let bad = |why| TopologyError::BadUpstream {
                    router: r.name.clone(),
                    upstream: up.clone(),
                    why,
                };
                let next = self
                    .routers
                    .iter()
                    .find(|x| &x.name == up)
                    .ok_or_else(|| bad("is not a router of this topology"))?;
                if seen.contains(&next.name.as_str()) {
                    return Err(bad("leads back to itself"));
                }
                seen.push(&next.name);
                cur = next;
            }
        }
        Ok(())
    }

    /// Whether some router names `router` as its upstream (then `router` is a carrier NAT).
    pub fn is_carrier(&self, router: &str) -> bool {
        self.routers
            .iter()
            .any(|r| r.upstream.as_deref() == Some(router))
    }

    /// Names, upstreams, timeouts and link hosts.
    fn check(&self) -> Result<(), TopologyError> {
        self.check_names()?;
        self.check_upstreams()?;
        for r in &self.routers {
            r.timeouts
                .check()
                .map_err(|source| TopologyError::Timeout {
                    router: r.name.clone(),
                    source,
                })?;
        }
        for name in self.links.keys() {
            let known = self.public.iter().any(|h| &h.name == name)
                || self
                    .routers
                    .iter()
                    .any(|r| &r.name == name || r.hosts.iter().any(|h| &h.name == name));
            if !known {
                return Err(TopologyError::UnknownLinkHost(name.clone()));
            }
        }
        if !self.ipv6 {
            let v6_only = self
                .public
                .iter()
                .map(|h| (&h.name, h.family))
                .chain(
                    self.routers
                        .iter()
                        .flat_map(|r| r.hosts.iter().map(|h| (&h.name, h.family))),
                )
                .find(|(_, f)| *f == Family::Ipv6);
            if let Some((name, _)) = v6_only {
                return Err(TopologyError::Ipv6Off(name.clone()));
            }
        }

        Ok(())
    }

    /// Each router's LAN, explicit or default.
    fn lans(&self) -> Result<Vec<Ipv4Net>, TopologyError> {
        let mut lans: Vec<Ipv4Net> = Vec::new();
        let mut carriers = 0u8;
        for (i, r) in self.routers.iter().enumerate() {
            let lan = if let Some(l) = r.lan {
                l
            } else if self.is_carrier(&r.name) {
                carriers = carriers
                    .checked_add(1)
                    .ok_or(NetError::Full(self.internet))?;
                Ipv4Net::new(Ipv4Addr::new(100, 64, carriers, 0), 24)?
            } else {
                let third = u8::try_from(i + 1).map_err(|_| NetError::Full(self.internet))?;
                Ipv4Net::new(Ipv4Addr::new(192, 168, third, 0), 24)?
            };
            lans.push(lan);
        }
        Ok(lans)
    }

    /// Checks names, upstreams, links and addresses and fills in every default: public hosts
    /// first, then each router followed by its private hosts.
    pub fn resolve(&self) -> Result<Vec<HostInfo>, TopologyError> {
        if self.public.is_empty() && self.routers.is_empty() {
            return Err(TopologyError::Empty);
        }
        self.check()?;
        // Every LAN first: a router behind a carrier takes its WAN address from it.
        let lans = self.lans()?;
        // Explicit addresses first, then defaults. Pools: the internet, then one per LAN.
        let mut wan_used: Vec<(Ipv4Addr, String)> = Vec::new();
        let mut lan_used: Vec<Vec<(Ipv4Addr, String)>> = vec![Vec::new(); lans.len()];
        for (i, r) in self.routers.iter().enumerate() {
            let gw = lans[i].host(1).ok_or(NetError::Full(lans[i]))?;
            claim(&mut lan_used[i], lans[i], &r.name, gw)?;
        }
        let pool_of = |r: &super::Router| {
            r.upstream
                .as_ref()
                .and_then(|u| self.routers.iter().position(|x| &x.name == u))
        };
        for h in &self.public {
            if let Some(addr) = h.addr {
                claim(&mut wan_used, self.internet, &h.name, addr)?;
            }
        }
        for (i, r) in self.routers.iter().enumerate() {
            if let Some(addr) = r.wan {
                match pool_of(r) {
                    Some(p) => claim(&mut lan_used[p], lans[p], &r.name, addr)?,
                    None => claim(&mut wan_used, self.internet, &r.name, addr)?,
                }
            }
            for h in &r.hosts {
                if let Some(a) = h.addr {
                    claim(&mut lan_used[i], lans[i], &h.name, a)?;
                }
            }
        }
        let mut out = Vec::new();
        for h in &self.public {
            let addr = match h.addr {
                Some(a) => a,
                None => auto(&mut wan_used, self.internet, 2, &h.name)?,
            };
            out.push(HostInfo {
                ntp: h.ntp,
                family: h.family,
                ..HostInfo::new(&h.name, Role::Public, addr)
            });
        }
        for (i, r) in self.routers.iter().enumerate() {
            let wan = match (r.wan, pool_of(r)) {
                (Some(a), _) => a,
                (None, Some(p)) => auto(&mut lan_used[p], lans[p], 2, &r.name)?,
                (None, None) => auto(&mut wan_used, self.internet, 101, &r.name)?,
            };
            let lan = lans[i];
            let gw = lan.host(1).ok_or(NetError::Full(lan))?;
            out.push(HostInfo {
                lan: Some(lan),
                lan_addr: Some(gw),
                nat: r.nat,
                upnp: r.upnp,
                mapping_protocols: r.mapping_protocols,
                upstream: r.upstream.clone(),
                hairpin: r.hairpin,
                unsolicited: r.unsolicited,
                timeouts: r.timeouts,
                ..HostInfo::new(&r.name, Role::Router, wan)
            });
            for h in &r.hosts {
                let addr = match h.addr {
                    Some(a) => a,
                    None => auto(&mut lan_used[i], lan, 2, &h.name)?,
                };
                out.push(HostInfo {
                    lan: Some(lan),
                    lan_addr: Some(gw),
                    router: Some(r.name.clone()),
                    nat: r.nat,
                    family: h.family,
                    ..HostInfo::new(&h.name, Role::Private, addr)
                });
            }
        }
        if self.ipv6 {
            self.add_ipv6(&mut out, &lans)?;
        }
        Ok(out)
    }

    /// Fills in the IPv6 addresses (see [`crate::ipv6`]): each mirrors its IPv4 host number;
    /// an IPv6-only host then drops its IPv4 address.
    fn add_ipv6(&self, out: &mut [HostInfo], lans: &[Ipv4Net]) -> Result<(), TopologyError> {
        let index = |name: &str| self.routers.iter().position(|r| r.name == name);
        let prefix = |i: usize| ipv6::lan_prefix(i).ok_or(NetError::Full(lans[i]));
        let snapshot: Vec<HostInfo> = out.to_vec();
        for h in out.iter_mut() {
            match h.role {
                Role::Public => {
                    if h.family.has_v6() {
                        h.addr6 =
                            Some(ipv6::mirror(ipv6::internet_prefix(), h.addr, self.internet));
                    }
                }
                Role::Router => {
                    let i = index(&h.name).ok_or(NetError::Full(self.internet))?;
                    let net6 = prefix(i)?;
                    h.lan6 = Some(net6);
                    h.lan_addr6 = h.lan_addr.map(|gw| ipv6::mirror(net6, gw, lans[i]));
                    h.addr6 = Some(match h.upstream.as_deref().and_then(index) {
                        Some(up) => ipv6::mirror(prefix(up)?, h.addr, lans[up]),
                        None => ipv6::mirror(ipv6::internet_prefix(), h.addr, self.internet),
                    });
                }
                Role::Private => {
                    let Some(i) = h.router.as_deref().and_then(index) else {
                        continue;
                    };
                    let router = snapshot.iter().find(|r| r.name == self.routers[i].name);
                    let net6 = prefix(i)?;
                    h.lan6 = Some(net6);
                    h.lan_addr6 = router
                        .and_then(|r| r.lan_addr)
                        .map(|gw| ipv6::mirror(net6, gw, lans[i]));
                    if h.family.has_v6() {
                        h.addr6 = Some(ipv6::mirror(net6, h.addr, lans[i]));
                    }
                }
            }
            if h.family == Family::Ipv6 {
                h.addr = Ipv4Addr::UNSPECIFIED;
            }
        }
        Ok(())
    }
}

/// A layer-2 segment (a bridge) that hosts' uplinks plug into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// The internet bridge, in namespace `<prefix>-internet`.
    Internet,
    /// A router's LAN bridge, in that router's namespace.
    Lan(String),
}

impl Segment {
    /// The host whose namespace holds the bridge (`internet` for the internet).
    pub fn host(&self) -> &str {
        match self {
            Segment::Internet => crate::lab::INTERNET,
            Segment::Lan(r) => r,
        }
    }
}

/// Where a host's uplink plugs in: the segment, the bridge port (a veth in the segment's
/// namespace) and the interface inside the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// The segment.
    pub segment: Segment,
    /// The bridge port in the segment's namespace: `pN` on the internet, `lN` on a LAN.
    pub port: String,
    /// The interface in the host: `wan` for routers, `eth0` for other hosts.
    pub iface: &'static str,
    /// That interface's MAC address, fixed by the host's place in the lab
    /// (`02:4e:53:00:HH:LL`), so rules can name the sender on a LAN bridge.
    pub mac: String,
}

/// The segment `h`'s uplink plugs into.
pub fn segment_of(h: &HostInfo) -> Segment {
    match (h.role, &h.router, &h.upstream) {
        (Role::Private, Some(r), _) | (Role::Router, _, Some(r)) => Segment::Lan(r.clone()),
        _ => Segment::Internet,
    }
}

/// The hosts plugged into `segment`, in lab order (which fixes their port numbers).
pub fn segment_members<'a>(hosts: &'a [HostInfo], segment: &Segment) -> Vec<&'a HostInfo> {
    hosts.iter().filter(|h| &segment_of(h) == segment).collect()
}

/// Where `host`'s uplink plugs in (`None` if there is no such host).
pub fn uplink(hosts: &[HostInfo], host: &str) -> Option<Uplink> {
    let i = hosts.iter().position(|h| h.name == host)?;
    let h = &hosts[i];
    let segment = segment_of(h);
    let index = segment_members(hosts, &segment)
        .iter()
        .position(|m| m.name == host)?;
    let port = match segment {
        Segment::Internet => format!("p{index}"),
        Segment::Lan(_) => format!("l{index}"),
    };
    let iface = if h.role == Role::Router {
        crate::nat::WAN_IF
    } else {
        "eth0"
    };
    Some(Uplink {
        segment,
        port,
        iface,
        mac: format!("02:4e:53:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff),
    })
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
