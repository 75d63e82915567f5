//! This host's IPv6 addresses that peers can dial: which of the interface addresses go in a
//! UNL, and why each other one does not.
//!
//! Linux lists every IPv6 address with its scope and flags in `/proc/net/if_inet6` (one line
//! per address: `addr ifindex prefixlen scope flags ifname`, hex). An address is **advertised**
//! when it is global unicast (`2000::/3` in practice: not loopback, link-local `fe80::/10`,
//! unique-local `fc00::/7`, multicast, or the documentation prefix outside a lab) and usable
//! for a long time: not tentative (duplicate address detection still runs), not failed DAD,
//! not deprecated (its preferred lifetime ended), not temporary (RFC 8981 privacy addresses
//! change every day and are meant for outgoing connections; the stable address of the same
//! prefix is advertised instead). [`choose`] keeps every skipped address with its reason, so
//! the node can say what it chose and why.
//!
//! ```
//! use node::ipv6::{choose, parse_if_inet6};
//! let text = "\
//! 20010db8000100000000000000000002 02 40 00 80 eth0
//! fe800000000000000000000000000001 02 40 20 80 eth0
//! 20010db8000100001111222233334444 02 40 00 01 eth0
//! ";
//! let choice = choose(&parse_if_inet6(text), true);
//! assert_eq!(choice.chosen, vec!["2001:db8:1::2".parse::<std::net::Ipv6Addr>().unwrap()]);
//! assert_eq!(choice.skipped.len(), 2);
//! ```

use std::io;
use std::net::Ipv6Addr;

/// Where Linux lists the interface addresses.
pub const IF_INET6: &str = "/proc/net/if_inet6";

/// `IFA_F_TEMPORARY`: an RFC 8981 privacy address.
const FLAG_TEMPORARY: u32 = 0x01;
/// `IFA_F_DADFAILED`: another host has this address.
const FLAG_DAD_FAILED: u32 = 0x08;
/// `IFA_F_DEPRECATED`: its preferred lifetime ended.
const FLAG_DEPRECATED: u32 = 0x20;
/// `IFA_F_TENTATIVE`: duplicate address detection still runs (not bindable yet).
const FLAG_TENTATIVE: u32 = 0x40;

/// One line of `/proc/net/if_inet6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// The address.
    pub addr: Ipv6Addr,
    /// The interface's name (`eth0`).
    pub interface: String,
    /// The `IFA_F_*` flags.
    pub flags: u32,
}

/// The addresses [`choose`] advertises, and every other one with the reason it was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    /// Global, stable, usable addresses, in the order the kernel lists them.
    pub chosen: Vec<Ipv6Addr>,
    /// Every other address and why it is not advertised.
    pub skipped: Vec<(Ipv6Addr, &'static str)>,
}

/// Parses `/proc/net/if_inet6`'s text; a line that does not have its six fields is ignored.
pub fn parse_if_inet6(text: &str) -> Vec<IfAddr> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [hex, _index, _prefix, _scope, flags, interface] = fields[..] else {
                return None;
            };
            let addr = Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            Some(IfAddr {
                addr,
                interface: interface.to_owned(),
                flags,
            })
        })
        .collect()
}

/// Why `addr` is not advertised (`None`: it is). `allow_documentation` accepts
/// `2001:db8::/32`, which the lab (`netns-sim --ipv6`) uses as its internet.
pub fn skip_reason(addr: &IfAddr, allow_documentation: bool) -> Option<&'static str> {
    let ip = addr.addr;
    let first = ip.segments()[0];
    let reason = if ip.is_loopback() || ip.is_unspecified() {
        "loopback"
    } else if ip.is_multicast() {
        "multicast"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local (fe80::/10): valid on one link only"
    } else if first & 0xfe00 == 0xfc00 {
        "unique-local (fc00::/7): not routed on the internet"
    } else if ip.to_ipv4_mapped().is_some() {
        "IPv4-mapped"
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 && !allow_documentation {
        "documentation prefix (2001:db8::/32)"
    } else if first & 0xe000 != 0x2000 {
        "not global unicast (2000::/3)"
    } else if addr.flags & FLAG_TENTATIVE != 0 {
        "tentative: duplicate address detection still runs"
    } else if addr.flags & FLAG_DAD_FAILED != 0 {
        "duplicate address detection failed"
    } else if addr.flags & FLAG_DEPRECATED != 0 {
        "deprecated: its preferred lifetime ended"
    } else if addr.flags & FLAG_TEMPORARY != 0 {
        "temporary (privacy) address: changes daily, the stable one is advertised"
    } else {
        return None;
    };
    Some(reason)
}

/// Splits `addrs` into the advertised addresses and the skipped ones (each once).
pub fn choose(addrs: &[IfAddr], allow_documentation: bool) -> Choice {
    let mut choice = Choice::default();
    for addr in addrs {
        match skip_reason(addr, allow_documentation) {
            None if !choice.chosen.contains(&addr.addr) => choice.chosen.push(addr.addr),
            None => {}
            Some(why) => choice.skipped.push((addr.addr, why)),
        }
    }
    choice
}

/// This host's addresses, from [`IF_INET6`]. A host without IPv6 (no such file) has none.
pub fn interface_addresses() -> io::Result<Vec<IfAddr>> {
    match std::fs::read_to_string(IF_INET6) {
        Ok(text) => Ok(parse_if_inet6(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(hex: &str, flags: u32) -> IfAddr {
        parse_if_inet6(&format!("{hex} 02 40 00 {flags:02x} eth0"))
            .pop()
            .unwrap()
    }

    #[test]
    fn this_hosts_file_parses_line_for_line() {
        let text = std::fs::read_to_string(IF_INET6).unwrap_or_default();
        assert_eq!(
            interface_addresses().unwrap().len(),
            text.lines().count(),
            "{text}"
        );
    }

    #[test]
    fn each_kind_of_address_is_skipped_for_its_reason() {
        let cases = [
            ("00000000000000000000000000000001", 0x80, Some("loopback")),
            ("fe8000000000000000fc00fffe000001", 0x80, Some("link-local")),
            (
                "fd000000000000000000000000000002",
                0x80,
                Some("unique-local"),
            ),
            ("ff020000000000000000000000000001", 0x80, Some("multicast")),
            (
                "00000000000000000000ffffc0000201",
                0x80,
                Some("IPv4-mapped"),
            ),
            (
                "20010db8000000000000000000000002",
                0x80,
                Some("documentation"),
            ),
            ("3fff0000000000000000000000000002", 0x80, None),
            ("2a010000000000000000000000000002", 0x00, None),
            ("2a010000000000000000000000000003", 0x40, Some("tentative")),
            ("2a010000000000000000000000000004", 0x08, Some("failed")),
            ("2a010000000000000000000000000005", 0x20, Some("deprecated")),
            ("2a010000000000000000000000000006", 0x01, Some("temporary")),
            ("40000000000000000000000000000001", 0x80, Some("not global")),
        ];
        for (hex, flags, want) in cases {
            let got = skip_reason(&one(hex, flags), false);
            match (got, want) {
                (None, None) => {}
                (Some(got), Some(want)) => assert!(got.contains(want), "{hex}: {got}"),
                _ => panic!("{hex}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn the_lab_prefix_is_accepted_when_asked_and_duplicates_are_chosen_once() {
        let lab = one("20010db8000100000000000000000002", 0x80);
        assert_eq!(skip_reason(&lab, true), None);
        let choice = choose(&[lab.clone(), lab], true);
        assert_eq!(choice.chosen.len(), 1);
        assert!(choice.skipped.is_empty());
    }

    #[test]
    fn short_or_garbled_lines_are_ignored() {
        assert!(parse_if_inet6("zz 01 80 10 80 lo\n0001 01\n\n").is_empty());
    }
}
