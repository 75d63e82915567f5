//! The nftables rules that make a router behave like each [`NatKind`].
//!
//! Every router gets one `table ip netns_sim`:
//! - `input` and `forward`, policy **drop**: anything from the LAN is accepted, from the WAN
//!   only `ct state established,related` and (forward) `ct status dnat`, i.e. replies and
//!   inbound packets the NAT itself chose to translate. Unsolicited packets vanish silently.
//! - `postrouting` (nat): the mapping behaviour.
//!   - full-cone, restricted-cone, port-restricted: `masquerade` (port-preserving when free,
//!     so one internal ip:port keeps one external port for every destination).
//!   - symmetric: `masquerade fully-random` (a random port per new connection).
//!   - sequential: `snat to WAN:numgen inc mod 1000 map { 0 : 20000, 1 : 20001, .. }`: each
//!     new connection through the router gets the next port (20000, 20001, ..., 20999, 20000).
//! - full-cone and restricted-cone also record every outbound mapping, after SNAT, in a
//!   dynamic map (`record` chain at `srcnat + 10`), and `prerouting` DNATs new inbound
//!   packets through that map: keyed by external port only (full cone: anyone may come in)
//!   or by remote address + external port (restricted cone: only hosts alice contacted).
//!
//! With miniupnpd, a second `table inet miniupnpd` holds the hooks miniupnpd fills itself
//! (Debian's `nft_init.sh` is broken, so the lab creates them). With IPv6, miniupnpd's filter
//! rules (PCP and IGD2 pinholes) go to the home router's IPv6 firewall instead (see
//! [`crate::ipv6`]), where its accepts come before the drop.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::net::Ipv4Net;
use crate::timeouts::Timeouts;
use crate::topology::{MappingProtocols, NatKind};
use crate::unsolicited::Unsolicited;

/// Name of the WAN interface of every router.
pub const WAN_IF: &str = "wan";
/// Name of the LAN bridge of every router.
pub const LAN_IF: &str = "lan";
/// First external port of the `sequential` NAT.
pub const SEQUENTIAL_FIRST_PORT: u16 = 20000;
/// How many ports the `sequential` NAT cycles through (20000..=20999, then 20000 again).
pub const SEQUENTIAL_PORTS: u16 = 1000;
/// How long full-cone/restricted-cone mappings outlive their last outbound packet.
pub const CONE_MAPPING_TIMEOUT_SECS: u32 = 300;

/// A router's options that change its ruleset; the default changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterRules {
    /// The router's LAN (needed for hairpinning).
    pub lan: Option<Ipv4Net>,
    /// Hairpinning on (see [`crate::hairpin`]).
    pub hairpin: bool,
    /// The answer to unsolicited WAN packets (see [`crate::unsolicited`]).
    pub unsolicited: Unsolicited,
    /// Conntrack timeouts, which the cone kinds' mapping table follows (see
    /// [`crate::timeouts`]).
    pub timeouts: Timeouts,
}

/// The nftables script for a router with NAT `kind` and WAN address `wan`.
pub fn router_ruleset(kind: NatKind, wan: Ipv4Addr) -> String {
    router_ruleset_with(kind, wan, &RouterRules::default())
}

/// The nftables script for a router with NAT `kind`, WAN address `wan` and `opts`.
pub fn router_ruleset_with(kind: NatKind, wan: Ipv4Addr, opts: &RouterRules) -> String {
    let mut s = String::from("table ip netns_sim {\n");
    let t = CONE_MAPPING_TIMEOUT_SECS;
    let map = match kind {
        NatKind::FullCone => Some(("cone", "inet_proto . inet_service", "meta l4proto")),
        NatKind::RestrictedCone => Some((
            "cone",
            "ipv4_addr . inet_proto . inet_service",
            "ip saddr . meta l4proto",
        )),
        _ => None,
    };
    if let Some((name, key_type, _)) = map {
        let _ = writeln!(
            s,
            "  map {name} {{ type {key_type} : ipv4_addr . inet_service; flags dynamic,timeout; timeout {t}s; }}"
        );
    }
    if kind == NatKind::None {
        s.push_str(
            "  chain forward { type filter hook forward priority filter; policy accept; }\n}\n",
        );
        return s;
    }
    let answer = opts.unsolicited.rules(WAN_IF);
    let _ = writeln!(
        s,
        "  chain input {{ type filter hook input priority filter; policy drop;\n    iif \"lo\" accept\n    iifname \"{LAN_IF}\" accept\n    ct state established,related accept\n{answer}  }}"
    );
    let _ = writeln!(
        s,
        "  chain forward {{ type filter hook forward priority filter; policy drop;\n    iifname \"{LAN_IF}\" accept\n    ct state established,related accept\n    ct status dnat accept\n{answer}  }}"
    );
    if let Some((name, _, key_prefix)) = map {
        let _ = writeln!(
            s,
            "  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n    iifname \"{WAN_IF}\" ip daddr {wan} meta l4proto {{ tcp, udp }} dnat ip to {key_prefix} . th dport map @{name}\n  }}"
        );
        let record_prefix = if kind == NatKind::RestrictedCone {
            "ip daddr . meta l4proto"
        } else {
            "meta l4proto"
        };
        let record = |protos: &str, timeout: String| {
            format!(
                "    oifname \"{WAN_IF}\" meta l4proto {protos} ct direction original update @{name} {{ {record_prefix} . ct reply proto-dst{timeout} : ct original ip saddr . ct original proto-src }}\n"
            )
        };
        let t = &opts.timeouts;
        let records = if t.tcp_established.is_none() && t.udp.is_none() && t.udp_stream.is_none() {
            record("{ tcp, udp }", String::new())
        } else {
            // The mapping lives as long as the router's conntrack keeps such a flow.
            let secs = |d: Option<std::time::Duration>| {
                format!(
                    " timeout {}s",
                    d.map_or(u64::from(CONE_MAPPING_TIMEOUT_SECS), |d| d.as_secs())
                )
            };
            record("tcp", secs(t.tcp_established)) + &record("udp", secs(t.udp_stream.or(t.udp)))
        };
        let _ = writeln!(
            s,
            "  chain record {{ type filter hook postrouting priority srcnat + 10; policy accept;\n{records}  }}"
        );
    }
    if let (true, Some(lan)) = (opts.hairpin, opts.lan) {
        s.push_str(&crate::hairpin::rules(kind, wan, lan));
    }
    let translate = match kind {
        NatKind::Symmetric => format!("oifname \"{WAN_IF}\" masquerade fully-random"),
        NatKind::Sequential => {
            // `numgen` yields a host-order integer while a NAT port is big-endian, and nft
            // does not convert (20000 came out as port 8270): go through a map instead.
            let ports: Vec<String> = (0..SEQUENTIAL_PORTS)
                .map(|i| format!("{i} : {}", SEQUENTIAL_FIRST_PORT + i))
                .collect();
            format!(
                "oifname \"{WAN_IF}\" meta l4proto {{ tcp, udp }} snat ip to {wan} : numgen inc mod {SEQUENTIAL_PORTS} map {{ {} }}\n    oifname \"{WAN_IF}\" masquerade",
                ports.join(", ")
            )
        }
        _ => format!("oifname \"{WAN_IF}\" masquerade"),
    };
    let _ = writeln!(
        s,
        "  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n    {translate}\n  }}\n}}"
    );
    s
}

/// The nftables skeleton miniupnpd's nftables backend fills (its table and chain names match
/// [`miniupnpd_config`]).
pub fn miniupnpd_tables() -> String {
    "table inet miniupnpd {
  chain forward { type filter hook forward priority filter; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority dstnat; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
"
    .to_owned()
}

/// HTTP port of miniupnpd's IGD description (`http://LAN_ADDR:5000/rootDesc.xml`).
pub const UPNP_HTTP_PORT: u16 = 5000;

/// Where a router's miniupnpd speaks IPv6 (PCP on port 5351, UPnP's HTTP): its LAN address,
/// and whether its pinholes go to the router's IPv6 firewall ([`crate::ipv6::PINHOLE_CHAIN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MiniupnpdIpv6 {
    /// The router's LAN IPv6 address.
    pub listen: Ipv6Addr,
    /// The router filters IPv6: pinholes go to its firewall table.
    pub firewall: bool,
}

/// A miniupnpd configuration for a router whose LAN is `lan` (e.g. `192.168.1.0/24`),
/// answering `protocols` (`natpmp` means NAT-PMP and PCP: miniupnpd 2.3.1 serves both on port
/// 5351 under one switch), on IPv6 too when `ipv6` is given. PCP lifetimes may be as short as
/// 1 s (`min_lifetime`; miniupnpd's default of 120 s would stretch a test's short lease).
pub fn miniupnpd_config(
    lan: &str,
    lease_file: &str,
    uuid: &str,
    protocols: MappingProtocols,
    ipv6: Option<MiniupnpdIpv6>,
) -> String {
    let yes = |on: bool| if on { "yes" } else { "no" };
    let (upnp, natpmp) = (yes(protocols.upnp()), yes(protocols.natpmp()));
    let (filter_table, filter_chain) = match ipv6 {
        Some(MiniupnpdIpv6 { firewall: true, .. }) => {
            (crate::ipv6::TABLE, crate::ipv6::PINHOLE_CHAIN)
        }
        _ => ("miniupnpd", "miniupnpd"),
    };
    let listen6 = ipv6.map_or_else(
        || "ipv6_disable=yes\n".to_owned(),
        |v| format!("ipv6_listening_ip={}\n", v.listen),
    );
    format!(
        "ext_ifname={WAN_IF}
listening_ip={LAN_IF}
{listen6}http_port={UPNP_HTTP_PORT}
enable_natpmp={natpmp}
enable_upnp={upnp}
secure_mode=yes
system_uptime=yes
notify_interval=60
min_lifetime=1
uuid={uuid}
lease_file={lease_file}
upnp_table_name={filter_table}
upnp_nat_table_name=miniupnpd
upnp_forward_chain={filter_chain}
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 {lan} 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAN: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 101);

    #[test]
    fn every_kind_drops_unsolicited_except_none() {
        for kind in NatKind::ALL {
            let rules = router_ruleset(kind, WAN);
            let drops = rules.matches("policy drop").count();
            if kind == NatKind::None {
                assert_eq!(drops, 0, "{rules}");
            } else {
                assert_eq!(drops, 2, "{kind}: {rules}");
            }
        }
    }

    #[test]
    fn mapping_rules_match_kind() {
        assert!(router_ruleset(NatKind::Symmetric, WAN).contains("masquerade fully-random"));
        assert!(
            router_ruleset(NatKind::Sequential, WAN)
                .contains("numgen inc mod 1000 map { 0 : 20000, 1 : 20001,")
        );
        let pr = router_ruleset(NatKind::PortRestricted, WAN);
        assert!(pr.contains("masquerade\n") && !pr.contains("map"));
        let fc = router_ruleset(NatKind::FullCone, WAN);
        assert!(fc.contains("dnat ip to meta l4proto . th dport map @cone"));
        let rc = router_ruleset(NatKind::RestrictedCone, WAN);
        assert!(rc.contains("dnat ip to ip saddr . meta l4proto . th dport map @cone"));
        assert!(rc.contains("ip daddr . meta l4proto . ct reply proto-dst"));
    }

    #[test]
    fn miniupnpd_config_names_its_tables_and_lan() {
        let lan = "192.168.1.0/24";
        let c = miniupnpd_config(lan, "/tmp/l", "u", MappingProtocols::Both, None);
        assert!(c.contains("allow 1024-65535 192.168.1.0/24 1024-65535"));
        assert!(c.contains("enable_natpmp=yes\nenable_upnp=yes\n"));
        assert!(c.contains("ipv6_disable=yes\n") && c.contains("upnp_table_name=miniupnpd\n"));
        let c = miniupnpd_config(lan, "/tmp/l", "u", MappingProtocols::Natpmp, None);
        assert!(c.contains("enable_natpmp=yes\nenable_upnp=no\n"));
        let c = miniupnpd_config(lan, "/tmp/l", "u", MappingProtocols::Upnp, None);
        assert!(c.contains("enable_natpmp=no\nenable_upnp=yes\n"));
        assert!(miniupnpd_tables().contains("chain prerouting_miniupnpd"));
        let v6 = MiniupnpdIpv6 {
            listen: "2001:db8:1::1".parse().unwrap(),
            firewall: true,
        };
        let c = miniupnpd_config(lan, "/tmp/l", "u", MappingProtocols::Both, Some(v6));
        assert!(c.contains("ipv6_listening_ip=2001:db8:1::1\n"), "{c}");
        assert!(c.contains("upnp_table_name=netns_sim6\nupnp_nat_table_name=miniupnpd\n"));
        assert!(c.contains("upnp_forward_chain=pinholes\n"));
    }
}
