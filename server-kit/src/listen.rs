//! Both address families on one port: the listening socket ([`bind_listener`]), and how a
//! client's address is seen by every core ([`canonical`]) and counted by per-IP limits
//! ([`caller_key`]).
//!
//! `--listen [::]:PORT` serves IPv6 and IPv4 clients on one socket: `IPV6_V6ONLY` is switched
//! off explicitly (whatever `net.ipv6.bindv6only` says), so an IPv4 client arrives as the
//! IPv4-mapped address `::ffff:a.b.c.d`. The driver turns that back into `a.b.c.d`
//! ([`canonical`]) before a core sees it, so registrations, replies that name an observed
//! address (PyP2P's `NODES`, `CHALLENGE`, `REMOTE ...`), per-IP limits and dial-backs treat
//! an IPv4 client exactly as on an IPv4 socket. On a host with IPv6 switched off
//! (`ipv6.disable=1`), `[::]:PORT` falls back to `0.0.0.0:PORT` with a warning; a specific
//! address is bound as given.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: i32 = 65_535;

/// A listening TCP socket on `addr` (port 0: any), with `SO_REUSEADDR` (as the standard
/// library sets it) and, for IPv6, `IPV6_V6ONLY` off: `[::]` takes IPv4 clients too.
///
/// ```
/// let listener = server_kit::bind_listener("[::1]:0".parse().unwrap())?;
/// assert!(listener.local_addr()?.is_ipv6());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)) {
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) && is_any_v6(addr) => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            warn!("IPv6 is not available on this host ({e}): listening on {v4} instead of {addr}");
            return bind_listener(v4);
        }
        other => other?,
    };
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

fn is_any_v6(addr: SocketAddr) -> bool {
    addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
}

/// `addr` with an IPv4-mapped IPv6 address (`[::ffff:192.0.2.1]:80`, how a dual-stack socket
/// sees an IPv4 client) turned into the IPv4 address it is (`192.0.2.1:80`); any other
/// address unchanged.
///
/// ```
/// use server_kit::canonical;
/// let mapped = "[::ffff:192.0.2.1]:80".parse().unwrap();
/// assert_eq!(canonical(mapped).to_string(), "192.0.2.1:80");
/// let v6 = "[2001:db8::1]:80".parse().unwrap();
/// assert_eq!(canonical(v6), v6);
/// ```
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The identity a client is counted under by per-IP limits: an IPv4 address as is (an
/// IPv4-mapped IPv6 address is its IPv4 address), an IPv6 address by its /64 prefix, since one
/// subscriber usually holds a whole /64 (as a household holds one public IPv4 address).
///
/// ```
/// use server_kit::caller_key;
/// let a = caller_key("2001:db8:1:2:aaaa::1".parse().unwrap());
/// let b = caller_key("2001:db8:1:2:bbbb::9".parse().unwrap());
/// assert_eq!(a, b);
/// assert_eq!(a.to_string(), "2001:db8:1:2::");
/// assert_eq!(caller_key("::ffff:192.0.2.1".parse().unwrap()).to_string(), "192.0.2.1");
/// ```
pub fn caller_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// The address families, as metric label values, in the order of [`family_index`].
pub const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];

/// Where a client's address family counts in per-family arrays (a server's counters by
/// [`FAMILIES`]): 0 for IPv4 (an IPv4-mapped IPv6 address is IPv4), 1 for IPv6.
///
/// ```
/// use server_kit::{FAMILIES, family_index};
/// assert_eq!(FAMILIES[family_index("192.0.2.1".parse().unwrap())], "ipv4");
/// assert_eq!(FAMILIES[family_index("::ffff:192.0.2.1".parse().unwrap())], "ipv4");
/// assert_eq!(FAMILIES[family_index("2001:db8::1".parse().unwrap())], "ipv6");
/// ```
pub fn family_index(ip: IpAddr) -> usize {
    usize::from(ip.to_canonical().is_ipv6())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn one_socket_on_any_v6_takes_both_families() {
        let listener = bind_listener("[::]:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        for (client, seen) in [("127.0.0.1", "127.0.0.1"), ("::1", "::1")] {
            let ip: IpAddr = client.parse().unwrap();
            let mut c = TcpStream::connect(SocketAddr::new(ip, port)).unwrap();
            let (mut s, peer) = listener.accept().unwrap();
            assert_eq!(canonical(peer).ip().to_string(), seen, "{peer}");
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
        }
    }

    #[test]
    fn v4_listeners_and_specific_v6_addresses_bind_as_given() {
        let v4 = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(v4.local_addr().unwrap().is_ipv4());
        let v6 = bind_listener("[::1]:0".parse().unwrap()).unwrap();
        assert_eq!(v6.local_addr().unwrap().ip().to_string(), "::1");
        let taken = v6.local_addr().unwrap();
        let err = bind_listener(taken).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[test]
    fn keys_group_a_v6_prefix_and_unmap_v4() {
        let key = |s: &str| caller_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.9"), "192.0.2.9");
        assert_eq!(key("::ffff:192.0.2.9"), "192.0.2.9");
        assert_eq!(key("2001:db8::1"), "2001:db8::");
        assert_ne!(key("2001:db8:0:1::1"), key("2001:db8::1"));
    }
}
