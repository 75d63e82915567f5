//! Listening on IPv4 and IPv6 at once, and the IPv6 addresses a node advertises (issue 17).
//!
//! With the bind address `::` the node listens on `[::]` with `IPV6_V6ONLY` off, so one port
//! takes IPv4 (as `::ffff:a.b.c.d`, canonicalized on accept) and IPv6 connections; a host
//! without IPv6 gets `0.0.0.0`. The global, stable addresses of [`crate::ipv6::choose`] go
//! into the UNL v3 with the listening port.
//!
//! `::` is the default bind address. (It was held back while a birthday-punch lab test lost
//! lines with it: that was a duplicate connection carrying the peer's broadcast, fixed in the
//! core, see `core/switch.rs`.)

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::Socket;
use tracing::info;
use wire::unl::v3::{MAX_ADDRS, Scope, UnlAddr};

use super::Net;
use super::links::bind_reusable;
use crate::ipv6;

/// The environment variable that makes the node treat `2001:db8::/32` (the documentation
/// prefix, which netns-sim's `--ipv6` lab uses as its internet) as global addresses. For
/// labs only: on a real host such an address is never reachable from outside.
const LAB_IPV6_ENV: &str = "P2P_NODE_LAB_IPV6";

/// Whether [`LAB_IPV6_ENV`] is set (to anything but empty or `0`).
fn lab_ipv6() -> bool {
    std::env::var(LAB_IPV6_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The listening socket for `bind`:`port`: dual stack on `::` (IPv4 only when the host has
/// no IPv6), else `bind` itself.
pub(super) fn bind_listener(bind: IpAddr, port: u16) -> io::Result<Socket> {
    if bind != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return bind_reusable(bind, port);
    }
    match bind_reusable(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port) {
        Ok(socket) => Ok(socket),
        Err(e) => {
            info!(error = %e, "no IPv6 on this host ([::] refused): listening on IPv4 only");
            bind_reusable(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
        }
    }
}

/// The UNL addresses for the IPv6 addresses `chosen`, with `port`, as many as fit beside
/// `taken` other addresses.
pub(super) fn ipv6_unl_addrs(chosen: &[Ipv6Addr], port: u16, taken: usize) -> Vec<UnlAddr> {
    chosen
        .iter()
        .take(MAX_ADDRS.saturating_sub(taken))
        .map(|ip| UnlAddr {
            scope: Scope::Wan,
            addr: SocketAddr::from((*ip, port)),
        })
        .collect()
}

impl Net {
    /// After listening on `local`: the global IPv6 addresses to advertise when `local` takes
    /// IPv6, logging which were chosen and which skipped and why.
    pub(super) fn choose_ipv6(&mut self, local: SocketAddr) {
        if !local.is_ipv6() {
            return;
        }
        let addrs = match ipv6::interface_addresses() {
            Ok(addrs) => addrs,
            Err(e) => {
                info!(error = %e, "cannot list this host's IPv6 addresses: advertising none");
                return;
            }
        };
        let choice = ipv6::choose(&addrs, lab_ipv6());
        for (addr, why) in &choice.skipped {
            info!(%addr, why, "IPv6 address left out of the UNL");
        }
        info!(chosen = ?choice.chosen, port = local.port(), "IPv6 addresses in the UNL");
        self.ipv6 = choice.chosen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::key::SigningKey;
    use wire::unl::v3::{UnlBody, UnlV3};

    #[test]
    fn the_chosen_ipv6_addresses_go_into_the_unl_with_the_listening_port() {
        // `/proc/net/if_inet6` of a host with a global, a temporary, a link-local and a
        // deprecated address (documentation prefixes, allowed here).
        let text = "\
20010db8000000000000000000000001 02 40 00 80 eth0
20010db8000000000000000000000002 02 40 00 01 eth0
fe800000000000000000000000000001 02 40 20 80 eth0
20010db8000000000000000000000003 02 40 00 20 eth0
";
        let choice = ipv6::choose(&ipv6::parse_if_inet6(text), true);
        let one: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(choice.chosen, vec![one]);
        assert_eq!(choice.skipped.len(), 3, "{:?}", choice.skipped);
        let mut body = UnlBody::new(1);
        body.addrs = vec![UnlAddr {
            scope: Scope::Wan,
            addr: "203.0.113.5:4000".parse().unwrap(),
        }];
        let extra = ipv6_unl_addrs(&choice.chosen, 4001, body.addrs.len());
        body.addrs.extend(extra);
        let unl = UnlV3::sign(body, &SigningKey::from_bytes(&[3; 32])).unwrap();
        let decoded: UnlV3 = unl.to_string().parse().unwrap();
        assert_eq!(
            decoded.body().addrs[1],
            UnlAddr {
                scope: Scope::Wan,
                addr: "[2001:db8::1]:4001".parse().unwrap(),
            }
        );
    }

    #[test]
    fn no_more_addresses_than_a_unl_holds() {
        let many: Vec<Ipv6Addr> = (1..=20)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i))
            .collect();
        assert_eq!(ipv6_unl_addrs(&many, 1, 2).len(), MAX_ADDRS - 2);
        assert!(ipv6_unl_addrs(&many, 1, MAX_ADDRS).is_empty());
    }
}
