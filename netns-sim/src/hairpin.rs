//! Hairpinning: a host reaches another host behind the same router through the router's
//! public address and the other host's mapping (RFC 4787 REQ-9; RFC 6888 asks carrier NATs for
//! it). Off by default, as on many home routers: without it, a LAN packet to the router's own
//! public address ends at the router itself.
//!
//! Built as three nftables pieces in the router's `netns_sim` table (see [`crate::nat`]):
//! - `hairpin_record` (postrouting, after SNAT): every outbound mapping, by protocol and
//!   external port, to the internal address and port (like the full-cone map);
//! - `hairpin_in` (prerouting, dstnat): a LAN packet to the public address and a recorded
//!   port is `DNAT`ed to that internal endpoint;
//! - `hairpin_out` (postrouting, srcnat): such a packet's source becomes the public address
//!   (port-preserving; fully random for the endpoint-dependent kinds), so the reply comes back
//!   through the router and both sides see each other's public endpoints.
//!
//! Filtering of hairpinned packets is endpoint-independent (any host behind the router may
//! use any recorded mapping). Teardown: the rules die with the namespace.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::nat::{CONE_MAPPING_TIMEOUT_SECS, LAN_IF, WAN_IF};
use crate::net::Ipv4Net;
use crate::topology::NatKind;

/// The hairpin pieces for a router of `kind` with public address `wan` and LAN `lan` (nothing
/// for `none`: its LAN hosts reach each other directly).
pub(crate) fn rules(kind: NatKind, wan: Ipv4Addr, lan: Ipv4Net) -> String {
    if kind == NatKind::None {
        return String::new();
    }
    let t = CONE_MAPPING_TIMEOUT_SECS;
    let random = if kind.endpoint_independent_mapping() {
        ""
    } else {
        " fully-random"
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  map hairpin {{ type inet_proto . inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout {t}s; }}"
    );
    let _ = writeln!(
        s,
        "  chain hairpin_record {{ type filter hook postrouting priority srcnat + 11; policy accept;\n    oifname \"{WAN_IF}\" meta l4proto {{ tcp, udp }} ct direction original update @hairpin {{ meta l4proto . ct reply proto-dst : ct original ip saddr . ct original proto-src }}\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain hairpin_in {{ type nat hook prerouting priority dstnat + 1; policy accept;\n    iifname \"{LAN_IF}\" ip daddr {wan} meta l4proto {{ tcp, udp }} dnat ip to meta l4proto . th dport map @hairpin\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain hairpin_out {{ type nat hook postrouting priority srcnat - 1; policy accept;\n    oifname \"{LAN_IF}\" ip saddr {lan} ip daddr {lan} ct status dnat snat ip to {wan}{random}\n  }}"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hairpin_records_dnats_and_snats() {
        let lan: Ipv4Net = "100.64.1.0/24".parse().unwrap();
        let wan = Ipv4Addr::new(11, 0, 0, 103);
        let r = rules(NatKind::PortRestricted, wan, lan);
        assert!(r.contains("iifname \"lan\" ip daddr 11.0.0.103 meta l4proto { tcp, udp } dnat ip to meta l4proto . th dport map @hairpin"));
        assert!(r.contains("ct status dnat snat ip to 11.0.0.103\n"));
        assert!(rules(NatKind::Symmetric, wan, lan).contains("snat ip to 11.0.0.103 fully-random"));
        assert!(rules(NatKind::None, wan, lan).is_empty());
    }
}
