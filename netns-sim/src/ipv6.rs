//! IPv6 in the lab (`--ipv6`, `ipv6 = true` in a topology): global addresses on the internet
//! segment and every LAN, routers that route IPv6 without translating it, and home routers
//! with a stateful firewall that drops unsolicited inbound packets (as RFC 6092 asks of home
//! routers, and as IPv6 home routers do).
//!
//! **Addresses.** Everything comes from the documentation prefix `2001:db8::/32` (RFC 3849):
//! the internet segment is `2001:db8::/64`, the LAN of the N-th router (topology order, from 1)
//! `2001:db8:N::/64`. A host's interface number mirrors its IPv4 host number, read as hex
//! digits: `pub` 11.0.0.2 is `2001:db8::2`, `nat-a` 11.0.0.101 is `2001:db8::101`, `alice`
//! 192.168.1.2 is `2001:db8:1::2`, her gateway `2001:db8:1::1`. The documentation prefix is
//! safe to use (nothing in the lab is routed anywhere else) and the tools accept it:
//! miniupnpd 2.3.1 calls documentation IPv4 addresses reserved and refuses to map on them
//! (why the IPv4 internet is 11.0.0.0/24), but has no such check for IPv6: its PCP pinholes
//! open and expire on `2001:db8::/32` addresses (checked in `tests/ipv6.rs`).
//!
//! **Usable at once.** Every address is added with `nodad` and every namespace has
//! `accept_dad=0`: duplicate address detection would leave new addresses `tentative` for
//! about a second, during which `bind` fails and neighbours are not answered.
//!
//! **Hosts.** A host is dual-stack by default; `family = "ipv4"` makes it IPv4-only (IPv6 is
//! disabled in its namespace: not even a link-local address) and `family = "ipv6"` IPv6-only
//! (no IPv4 address at all: its [`crate::HostInfo::addr`] is `0.0.0.0`). Routers are always
//! dual-stack.
//!
//! **Routing and filtering.** No NAT66: a LAN host's address is its public address. Each host
//! on the internet segment has a route to every LAN through the router that owns it (through
//! the carrier for a home behind a carrier NAT); LAN hosts and homes behind a carrier take a
//! default route to their router. Home routers (every router with a NAT kind other than
//! `none` that no other router names as `upstream`) filter: `table inet netns_sim6` accepts
//! what comes from the LAN, replies (`ct state established,related`), neighbour discovery
//! and `ICMPv6` errors, and what the [`PINHOLE_CHAIN`] chain accepts (miniupnpd's PCP and
//! IGD2 pinholes go there), and answers everything else from the WAN as the router's
//! [`Unsolicited`] says (drop by default). Carriers and `none` routers route IPv6 without
//! filtering, as ISPs do. TCP simultaneous open works through two such firewalls: each
//! side's outbound SYN makes the peer's SYN a reply.
//!
//! **With WAN emulation** the delay stages queue both families (the same rules in iptables
//! and ip6tables). Teardown: everything lives in the lab's namespaces.
//!
//! ```no_run
//! use netns_sim::{Family, Lab, NatKind, Topology, TwoNats};
//! let lab = Lab::up(
//!     &Topology::two_nats(TwoNats { a: NatKind::PortRestricted, b: NatKind::Symmetric, ..TwoNats::default() })
//!         .with_ipv6()
//!         .with_family("bob", Family::Ipv6),     // bob: IPv6 only
//! )?;
//! assert_eq!(lab.addr6("alice").to_string(), "2001:db8:1::2");
//! assert_eq!(lab.addr6("pub").to_string(), "2001:db8::2");
//! assert!(lab.addr("bob").is_unspecified());
//! # Ok::<(), netns_sim::LabError>(())
//! ```

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::nat::{LAN_IF, WAN_IF};
use crate::net::Ipv4Net;
use crate::topology::{HostInfo, NatKind, Role};
use crate::unsolicited::Unsolicited;

/// Prefix length of every lab IPv6 subnet.
pub const PREFIX_LEN: u8 = 64;
/// The nftables table of a home router's IPv6 firewall.
pub const TABLE: &str = "netns_sim6";
/// The chain of [`TABLE`] whose accepts open pinholes (miniupnpd writes into it).
pub const PINHOLE_CHAIN: &str = "pinholes";

/// Which IP versions a host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// IPv4 and (when the topology has IPv6) IPv6.
    #[default]
    Dual,
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
}

impl Family {
    /// Whether the host has IPv4.
    pub fn has_v4(self) -> bool {
        self != Family::Ipv6
    }

    /// Whether the host has IPv6 (in a topology with IPv6).
    pub fn has_v6(self) -> bool {
        self != Family::Ipv4
    }

    /// The name in TOML and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Family::Dual => "dual",
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Family::Dual, Family::Ipv4, Family::Ipv6]
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown address family {s:?}: use dual, ipv4 or ipv6"))
    }
}

/// The internet segment's prefix, `2001:db8::` (/64).
pub fn internet_prefix() -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0)
}

/// The LAN prefix of the router at `index` (0-based, topology order): `2001:db8:<index+1>::`
/// (/64); `None` past 65534 routers.
pub fn lan_prefix(index: usize) -> Option<Ipv6Addr> {
    let n = u16::try_from(index + 1).ok().filter(|n| *n < u16::MAX)?;
    Some(Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 0))
}

/// The address in `prefix` (/64) that mirrors `v4`'s host number in `net`: host 101 becomes
/// `prefix::101` (the decimal digits read as hex).
pub fn mirror(prefix: Ipv6Addr, v4: Ipv4Addr, net: Ipv4Net) -> Ipv6Addr {
    let host = u32::from(v4).wrapping_sub(u32::from(net.network()));
    // Decimal digits as hex digits: at most 10 digits, so it fits the 64-bit interface id.
    let id = u64::from_str_radix(&host.to_string(), 16).unwrap_or(u64::from(host));
    Ipv6Addr::from(u128::from(prefix) | u128::from(id))
}

/// Whether router `r` filters IPv6 (a home router: a NAT kind, and no other router behind it).
pub fn is_firewalled(r: &HostInfo, hosts: &[HostInfo]) -> bool {
    r.role == Role::Router
        && r.lan6.is_some()
        && r.nat != NatKind::None
        && !hosts
            .iter()
            .any(|h| h.upstream.as_deref() == Some(r.name.as_str()))
}

/// The firewall of a home router: `table inet netns_sim6` (IPv4 passes untouched: the
/// `ip netns_sim` table handles it).
pub fn firewall(unsolicited: Unsolicited) -> String {
    let answer = unsolicited.rules6(WAN_IF);
    format!(
        "table inet {TABLE} {{
  chain input {{ type filter hook input priority filter; policy drop;
    meta nfproto ipv4 accept
    iif \"lo\" accept
    iifname \"{LAN_IF}\" accept
    ct state established,related accept
    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, destination-unreachable, packet-too-big, time-exceeded, parameter-problem }} accept
{answer}  }}
  chain forward {{ type filter hook forward priority filter; policy drop;
    meta nfproto ipv4 accept
    iifname \"{LAN_IF}\" accept
    ct state established,related accept
    icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem }} accept
    jump {PINHOLE_CHAIN}
{answer}  }}
  chain {PINHOLE_CHAIN} {{
  }}
}}
"
    )
}

/// One IPv6 route to add: in `host`, to `to` (a /64 prefix, or `None` for the default
/// route) via `via`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The host whose namespace gets the route.
    pub host: String,
    /// The destination prefix (/64), or `None` for `default`.
    pub to: Option<Ipv6Addr>,
    /// The next hop.
    pub via: Ipv6Addr,
}

impl Route {
    /// The `ip -6 route add` arguments after `add`.
    pub fn args(&self) -> Vec<String> {
        let to = self
            .to
            .map_or_else(|| "default".to_owned(), |p| format!("{p}/{PREFIX_LEN}"));
        vec![to, "via".to_owned(), self.via.to_string()]
    }
}

/// Every IPv6 route of a resolved lab (see the module docs): LAN hosts and homes behind a
/// carrier point their default route at their router; the internet segment's hosts route each
/// LAN through the router on the internet that leads to it; carriers route their homes' LANs.
pub fn routes(hosts: &[HostInfo]) -> Vec<Route> {
    let by_name = |n: &str| hosts.iter().find(|h| h.name == n);
    let mut routes = Vec::new();
    for h in hosts.iter().filter(|h| h.addr6.is_some()) {
        let gateway = match (h.role, &h.router, &h.upstream) {
            (Role::Private, Some(r), _) | (Role::Router, _, Some(r)) => {
                by_name(r).and_then(|r| r.lan_addr6)
            }
            _ => None,
        };
        if let Some(via) = gateway {
            routes.push(Route {
                host: h.name.clone(),
                to: None,
                via,
            });
        }
    }
    for r in hosts.iter().filter(|h| h.role == Role::Router) {
        let Some(lan) = r.lan6 else { continue };
        let path = chain(hosts, r);
        // Each carrier on the way routes to the next router inward.
        for pair in path.windows(2) {
            let (inner, carrier) = (pair[0], pair[1]);
            if let Some(via) = inner.addr6 {
                routes.push(Route {
                    host: carrier.name.clone(),
                    to: Some(lan),
                    via,
                });
            }
        }
        // The internet segment routes through the outermost router.
        let Some(outer) = path.last() else { continue };
        let Some(via) = outer.addr6 else { continue };
        for other in hosts.iter().filter(|o| {
            o.addr6.is_some()
                && o.name != outer.name
                && ((o.role == Role::Public) || (o.role == Role::Router && o.upstream.is_none()))
        }) {
            routes.push(Route {
                host: other.name.clone(),
                to: Some(lan),
                via,
            });
        }
    }
    routes
}

/// The routers from `r` out to the internet: `r`, its upstream, that one's upstream, ...
fn chain<'a>(hosts: &'a [HostInfo], r: &'a HostInfo) -> Vec<&'a HostInfo> {
    let mut out = vec![r];
    while let Some(up) = out
        .last()
        .and_then(|c| c.upstream.as_deref())
        .and_then(|n| hosts.iter().find(|h| h.name == n))
    {
        if out.len() > hosts.len() {
            break;
        }
        out.push(up);
    }
    out
}

/// The IPv6 lines of `netns-sim status`: each host's address, each router's LAN and whether
/// it filters (empty without IPv6).
pub fn status(hosts: &[HostInfo]) -> String {
    let show = |a: Option<Ipv6Addr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
    let mut out = String::new();
    for h in hosts
        .iter()
        .filter(|h| h.addr6.is_some() || h.lan6.is_some())
    {
        let lan = if h.role == Role::Router {
            let filter = if is_firewalled(h, hosts) {
                "firewall"
            } else {
                "no filtering"
            };
            format!(
                "   lan {}/{PREFIX_LEN} ({}), {filter}",
                show(h.lan6),
                show(h.lan_addr6)
            )
        } else {
            String::new()
        };
        let only = if h.family == Family::Dual {
            String::new()
        } else {
            format!("   ({} only)", h.family)
        };
        let _ = writeln!(out, "  ipv6 {:<8} {:<24}{lan}{only}", h.name, show(h.addr6));
    }
    out
}

#[cfg(test)]
mod tests;
