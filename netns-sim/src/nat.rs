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
//! (Debian's `nft_init.sh` is broken, so the lab creates them).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::topology::{MappingProtocols, NatKind};

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

/// The nftables script for a router with NAT `kind` and WAN address `wan`.
pub fn router_ruleset(kind: NatKind, wan: Ipv4Addr) -> String {
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
    let _ = writeln!(
        s,
        "  chain input {{ type filter hook input priority filter; policy drop;\n    iif \"lo\" accept\n    iifname \"{LAN_IF}\" accept\n    ct state established,related accept\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain forward {{ type filter hook forward priority filter; policy drop;\n    iifname \"{LAN_IF}\" accept\n    ct state established,related accept\n    ct status dnat accept\n  }}"
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
        let _ = writeln!(
            s,
            "  chain record {{ type filter hook postrouting priority srcnat + 10; policy accept;\n    oifname \"{WAN_IF}\" meta l4proto {{ tcp, udp }} ct direction original update @{name} {{ {record_prefix} . ct reply proto-dst : ct original ip saddr . ct original proto-src }}\n  }}"
        );
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

/// A miniupnpd configuration for a router whose LAN is `lan` (e.g. `192.168.1.0/24`),
/// answering `protocols`.
pub fn miniupnpd_config(
    lan: &str,
    lease_file: &str,
    uuid: &str,
    protocols: MappingProtocols,
) -> String {
    let yes = |on: bool| if on { "yes" } else { "no" };
    let (upnp, natpmp) = (yes(protocols.upnp()), yes(protocols.natpmp()));
    format!(
        "ext_ifname={WAN_IF}
listening_ip={LAN_IF}
http_port={UPNP_HTTP_PORT}
enable_natpmp={natpmp}
enable_upnp={upnp}
secure_mode=yes
system_uptime=yes
notify_interval=60
uuid={uuid}
lease_file={lease_file}
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=miniupnpd
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
        let c = miniupnpd_config("192.168.1.0/24", "/tmp/l", "u", MappingProtocols::Both);
        assert!(c.contains("allow 1024-65535 192.168.1.0/24 1024-65535"));
        assert!(c.contains("enable_natpmp=yes\nenable_upnp=yes\n"));
        let c = miniupnpd_config("192.168.1.0/24", "/tmp/l", "u", MappingProtocols::Natpmp);
        assert!(c.contains("enable_natpmp=yes\nenable_upnp=no\n"));
        let c = miniupnpd_config("192.168.1.0/24", "/tmp/l", "u", MappingProtocols::Upnp);
        assert!(c.contains("enable_natpmp=no\nenable_upnp=yes\n"));
        assert!(miniupnpd_tables().contains("chain prerouting_miniupnpd"));
    }
}
