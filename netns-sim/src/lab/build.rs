//! Building a lab: namespaces, the internet bridge, routers with their LANs (and the homes
//! behind carrier NATs), NAT rules and each router's options, then daemons and WAN stages.

use std::path::Path;

use super::{INTERNET, Lab, LabError};
use crate::nat::{self, RouterRules};
use crate::sys;
use crate::topology::{HostInfo, NatKind, Role, Segment, segment_members, uplink};

/// The switch that makes bridged IPv4 go through iptables (`br_netfilter`), per namespace.
pub(super) const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

impl Lab {
    pub(super) fn build(&mut self, chronyd: Option<&Path>) -> Result<(), LabError> {
        let internet = self.state.topology.internet;
        let sw = self.ns(INTERNET);
        for ns in &self.state.namespaces {
            sys::ip(&["netns", "add", ns])?;
        }
        for ns in &self.state.namespaces {
            sys::ip_in(ns, &["link", "set", "lo", "up"])?;
            let forward = if ns == &sw { "0" } else { "1" };
            sys::run(sys::in_netns(ns, "sysctl").args([
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                &format!("net.ipv4.ip_forward={forward}"),
            ]))?;
        }
        bridge(&sw, "br0")?;
        let hosts = self.state.hosts.clone();
        if self.state.topology.ipv6 {
            self.prepare_ipv6(&hosts)?;
        }
        let len = internet.prefix_len().to_string();
        for h in segment_members(&hosts, &Segment::Internet) {
            self.plug(&hosts, h, &sw, &len)?;
        }
        // Carriers before the homes behind them: a home's WAN veth comes from its carrier.
        for r in routers_outside_in(&hosts) {
            self.build_router(r, &hosts)?;
        }
        for route in crate::ipv6::routes(&hosts) {
            let mut args = vec!["-6".to_owned(), "route".to_owned(), "add".to_owned()];
            args.extend(route.args());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sys::ip_in(&self.ns(&route.host), &args)?;
        }
        for r in hosts.iter().filter(|h| h.upnp) {
            self.start_miniupnpd(r)?;
        }
        if let Some(chronyd) = chronyd {
            for h in hosts.iter().filter(|h| h.ntp) {
                self.start_chronyd(h, chronyd)?;
            }
        }
        self.start_wan()
    }

    /// Creates `h`'s uplink: a veth from its bridge port in `segment_ns` to its interface,
    /// with its address (prefix length `len`).
    fn plug(
        &self,
        hosts: &[HostInfo],
        h: &HostInfo,
        segment_ns: &str,
        len: &str,
    ) -> Result<(), LabError> {
        let Some(up) = uplink(hosts, &h.name) else {
            return Ok(());
        };
        let ns = self.ns(&h.name);
        let (port, ifname) = (up.port.as_str(), up.iface);
        let bridge = match up.segment {
            Segment::Internet => "br0",
            Segment::Lan(_) => nat::LAN_IF,
        };
        sys::ip_in(
            segment_ns,
            &[
                "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", &ns,
            ],
        )?;
        sys::ip_in(segment_ns, &["link", "set", port, "master", bridge, "up"])?;
        sys::ip_in(&ns, &["link", "set", ifname, "address", &up.mac])?;
        if h.family.has_v4() {
            sys::ip_in(
                &ns,
                &["addr", "add", &format!("{}/{len}", h.addr), "dev", ifname],
            )?;
        }
        if let Some(a6) = h.addr6 {
            add_ipv6(&ns, a6, ifname)?;
        }
        sys::ip_in(&ns, &["link", "set", ifname, "up"])?;
        if let Segment::Lan(_) = up.segment {
            let gw = h
                .lan_addr
                .filter(|_| h.family.has_v4())
                .map(|a| a.to_string());
            let gw = match (h.role, gw) {
                // A home behind a carrier: its gateway is the carrier's LAN address.
                (Role::Router, _) => hosts
                    .iter()
                    .find(|c| Some(&c.name) == h.upstream.as_ref())
                    .and_then(|c| c.lan_addr)
                    .map(|a| a.to_string()),
                (_, gw) => gw,
            };
            if let Some(gw) = gw {
                sys::ip_in(&ns, &["route", "add", "default", "via", &gw])?;
            }
            if h.role == Role::Router {
                crate::cgnat::isolate_port(segment_ns, port)?;
            }
        }
        Ok(())
    }

    fn build_router(&self, r: &HostInfo, hosts: &[HostInfo]) -> Result<(), LabError> {
        let ns = self.ns(&r.name);
        let (Some(lan), Some(gw)) = (r.lan, r.lan_addr) else {
            return Ok(());
        };
        let lan_len = lan.prefix_len().to_string();
        // A router routes: frames bridged between its LAN ports stay out of its netfilter
        // hooks (otherwise a DNAT back into the LAN, as hairpinning does, is short-cut into
        // bridging by br_netfilter and never reaches the forward and SNAT hooks).
        if Path::new(BRIDGE_NF).exists() {
            sys::run(
                sys::in_netns(&ns, "sysctl").args(["-qw", "net.bridge.bridge-nf-call-iptables=0"]),
            )?;
        }
        bridge(&ns, nat::LAN_IF)?;
        sys::ip_in(
            &ns,
            &[
                "addr",
                "add",
                &format!("{gw}/{lan_len}"),
                "dev",
                nat::LAN_IF,
            ],
        )?;
        if let Some(a6) = r.lan_addr6 {
            add_ipv6(&ns, a6, nat::LAN_IF)?;
        }
        sys::ip_in(&ns, &["link", "set", nat::LAN_IF, "up"])?;
        for h in segment_members(hosts, &Segment::Lan(r.name.clone())) {
            self.plug(hosts, h, &ns, &lan_len)?;
        }
        let rules = RouterRules {
            lan: Some(lan),
            hairpin: r.hairpin,
            unsolicited: r.unsolicited,
            timeouts: r.timeouts,
        };
        sys::run_with_input(
            sys::in_netns(&ns, "nft").args(["-f", "-"]),
            Some(&nat::router_ruleset_with(r.nat, r.addr, &rules)),
        )?;
        if crate::ipv6::is_firewalled(r, hosts) {
            sys::run_with_input(
                sys::in_netns(&ns, "nft").args(["-f", "-"]),
                Some(&crate::ipv6::firewall(r.unsolicited)),
            )?;
        }
        let sysctls = r.timeouts.sysctls();
        if !sysctls.is_empty() {
            sys::run(sys::in_netns(&ns, "sysctl").arg("-qw").args(&sysctls))?;
        }
        if r.nat == NatKind::None {
            // A plain router: the others on its uplink's segment route its LAN through it.
            let segment = crate::topology::segment_of(r);
            let neighbours: Vec<&HostInfo> = match &segment {
                Segment::Internet => segment_members(hosts, &segment)
                    .into_iter()
                    .filter(|o| o.name != r.name)
                    .collect(),
                Segment::Lan(c) => hosts.iter().filter(|o| &o.name == c).collect(),
            };
            for other in neighbours {
                sys::ip_in(
                    &self.ns(&other.name),
                    &["route", "add", &lan.to_string(), "via", &r.addr.to_string()],
                )?;
            }
        }
        Ok(())
    }
}

impl Lab {
    /// Per namespace, before any link exists (so that new interfaces inherit `default`): no
    /// duplicate address detection (addresses usable at once), IPv6 forwarding on routers,
    /// IPv6 off for IPv4-only hosts.
    fn prepare_ipv6(&self, hosts: &[HostInfo]) -> Result<(), LabError> {
        for h in hosts {
            let mut sysctls = vec![
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ];
            if h.role == Role::Router {
                sysctls.push("net.ipv6.conf.all.forwarding=1");
            }
            if !h.family.has_v6() {
                sysctls.push("net.ipv6.conf.all.disable_ipv6=1");
                sysctls.push("net.ipv6.conf.default.disable_ipv6=1");
            }
            sys::run(
                sys::in_netns(&self.ns(&h.name), "sysctl")
                    .arg("-qw")
                    .args(&sysctls),
            )?;
        }
        Ok(())
    }
}

/// Adds IPv6 address `addr`/64 to `dev` in `ns`, usable at once (`nodad`).
fn add_ipv6(ns: &str, addr: std::net::Ipv6Addr, dev: &str) -> Result<(), LabError> {
    let with_len = format!("{addr}/{}", crate::ipv6::PREFIX_LEN);
    sys::ip_in(ns, &["-6", "addr", "add", &with_len, "dev", dev, "nodad"])?;
    Ok(())
}

/// A bridge `name` in namespace `ns`, up, multicast snooping off (SSDP must reach miniupnpd).
fn bridge(ns: &str, name: &str) -> Result<(), LabError> {
    sys::ip_in(
        ns,
        &["link", "add", name, "type", "bridge", "mcast_snooping", "0"],
    )?;
    sys::ip_in(ns, &["link", "set", name, "up"])?;
    Ok(())
}

/// Routers ordered so that each comes after the router it hangs off.
fn routers_outside_in(hosts: &[HostInfo]) -> Vec<&HostInfo> {
    let depth = |h: &HostInfo| {
        let mut d = 0;
        let mut cur = h;
        while let Some(up) = cur
            .upstream
            .as_ref()
            .and_then(|u| hosts.iter().find(|x| &x.name == u))
        {
            d += 1;
            cur = up;
            if d > hosts.len() {
                break;
            }
        }
        d
    };
    let mut routers: Vec<&HostInfo> = hosts.iter().filter(|h| h.role == Role::Router).collect();
    routers.sort_by_key(|h| depth(h));
    routers
}
