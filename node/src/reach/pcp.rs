//! A PCP client (RFC 6887, messages from [`wire::pcp`]): port mappings for the reachability
//! probe and IPv6 firewall pinholes, no tokio.
//!
//! ```text
//!   map / unmap / open_pinhole / announce        (blocking, bounded by `until`: helper threads)
//!        │ Request                ▲ Response
//!        ▼                        │
//!   Exchange (sans-IO): when to send, which datagram is the answer, when to give up
//!        │ poll_transmit          ▲ handle_datagram / handle_unreachable / handle_timeout
//!        ▼                        │
//!   a UDP socket bound to our address and connected to the server's port 5351
//! ```
//!
//! Retransmissions: RFC 6887 §8.1.1 starts at 3 s and doubles up to 1024 s, for ever. A probe
//! has 3 s in all and its gateway is one hop away, so here the first resend comes after
//! [`FIRST_RESEND`] and the interval doubles (RFC 6886's NAT-PMP schedule) until `until`.
//! Only a datagram from the server's address and port that answers this very request (same
//! opcode, nonce, protocol and internal port) ends the exchange; anything else is ignored, as
//! §8.3 says. A NAT-PMP answer (version 0) ends it with [`PcpClientError::NatPmpOnly`]: the
//! gateway speaks NAT-PMP, which the probe tries on the same port.
//!
//! IPv6 pinholes: a MAP whose client address is IPv6 asks a stateful firewall to let inbound
//! packets to that address and port through; no address is translated (the grant names the
//! internal address itself). [`open_pinhole`] makes one, [`renew`] renews it with the same
//! nonce, [`unmap`] deletes it. miniupnpd 2.3.1 (Debian's) opens and renews pinholes and lets
//! them expire with their lifetime, but answers a deletion with `NOT_AUTHORIZED` (its nftables
//! backend cannot find its own pinhole again): keep pinhole lifetimes short.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use node::reach::pcp;
//! use wire::pcp::Protocol;
//!
//! let gateway = pcp::gateway_v6().expect("an IPv6 default route");
//! let until = Instant::now() + Duration::from_secs(2);
//! let pinhole = pcp::open_pinhole(gateway, "[2001:db8:1::2]:50500".parse()?, Protocol::TCP, 120, until)?;
//! println!("open: {pinhole}"); // renew at half-life with pcp::renew, delete with pcp::unmap
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use wire::pcp::{
    Grant, MAX_MESSAGE_BYTES, MapRequest, Nonce, PcpError, PcpOption, Protocol, Request, Response,
    ResponseBody, SERVER_PORT,
};

#[cfg(test)]
mod tests;

/// The first resend of an unanswered request comes this long after the first send.
pub const FIRST_RESEND: Duration = Duration::from_millis(250);

/// Errors of a PCP exchange, each naming the server.
#[derive(Debug, thiserror::Error)]
pub enum PcpClientError {
    /// The socket could not be made, bound, connected or used.
    #[error("PCP client for {server}: {what}: {source}")]
    Socket {
        /// The server.
        server: SocketAddr,
        /// What failed (`bind to 192.168.1.2`, `send`, ...).
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Nothing listens on the server's port (ICMP port unreachable).
    #[error("no PCP server at {server} (port unreachable)")]
    NoServer {
        /// The server.
        server: SocketAddr,
    },
    /// No answer in time.
    #[error("no PCP answer from {server} within {:.1} s ({sends} requests sent)", after.as_secs_f64())]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// How long we waited.
        after: Duration,
        /// How many times the request was sent.
        sends: u32,
    },
    /// The server speaks NAT-PMP, not PCP.
    #[error(
        "the gateway at {server} speaks NAT-PMP only (it answered PCP with version 0, result {result_code})"
    )]
    NatPmpOnly {
        /// The server.
        server: SocketAddr,
        /// NAT-PMP's result code (1: unsupported version).
        result_code: u16,
    },
    /// The server speaks another PCP version.
    #[error("the PCP server at {server} speaks version {version} only (we speak 2)")]
    Version {
        /// The server.
        server: SocketAddr,
        /// The version it answered with.
        version: u8,
    },
    /// The server answered and said no (or granted nothing).
    #[error("PCP server {server}: {source}")]
    Refused {
        /// The server.
        server: SocketAddr,
        /// Its result code and lifetime ([`PcpError::Refused`]), or an empty grant.
        source: PcpError,
    },
}

/// One request and its answer, sans-IO (see the module docs).
#[derive(Debug)]
pub struct Exchange {
    server: SocketAddr,
    request: Request,
    datagram: Vec<u8>,
    started: Instant,
    until: Instant,
    next_send: Instant,
    interval: Duration,
    sends: u32,
    over: bool,
    outcome: Option<Result<Response, PcpClientError>>,
}

impl Exchange {
    /// An exchange of `request` with `server`, starting at `now` and giving up at `until`.
    pub fn new(now: Instant, server: SocketAddr, request: Request, until: Instant) -> Exchange {
        Exchange {
            server,
            datagram: request.encode(),
            request,
            started: now,
            until,
            next_send: now,
            interval: FIRST_RESEND,
            sends: 0,
            over: false,
            outcome: None,
        }
    }

    /// The datagram to send now, if one is due (the first at once, then each resend).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[u8]> {
        if self.over || now < self.next_send || now >= self.until {
            return None;
        }
        self.sends += 1;
        self.next_send = now + self.interval;
        self.interval = self.interval.saturating_mul(2);
        Some(&self.datagram)
    }

    /// When to call [`Exchange::handle_timeout`] (or send again) next; `None` once over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.over).then(|| self.next_send.min(self.until))
    }

    /// Time passed: past `until` without an answer, the exchange has timed out.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.over && now >= self.until {
            self.end(Err(PcpClientError::Timeout {
                server: self.server,
                after: now.saturating_duration_since(self.started),
                sends: self.sends,
            }));
        }
    }

    /// A datagram arrived from `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        if self.over || from != self.server {
            return;
        }
        let response = match Response::parse(bytes) {
            Ok(r) => r,
            Err(PcpError::NatPmpServer { result_code }) => {
                self.end(Err(PcpClientError::NatPmpOnly {
                    server: self.server,
                    result_code,
                }));
                return;
            }
            Err(PcpError::Version(version)) => {
                self.end(Err(PcpClientError::Version {
                    server: self.server,
                    version,
                }));
                return;
            }
            Err(e) => {
                tracing::debug!(server = %self.server, error = %e, "ignoring a PCP datagram");
                return;
            }
        };
        let ours = match &self.request {
            Request::Announce { .. } => response.body == ResponseBody::Announce,
            Request::Map(m) => m.check_answer(&response).is_ok(),
        };
        if ours {
            self.end(Ok(response));
        }
    }

    /// ICMP port unreachable from the server: nothing listens there.
    pub fn handle_unreachable(&mut self) {
        if !self.over {
            self.end(Err(PcpClientError::NoServer {
                server: self.server,
            }));
        }
    }

    fn end(&mut self, outcome: Result<Response, PcpClientError>) {
        self.over = true;
        self.outcome = Some(outcome);
    }

    /// The outcome, once the exchange is over (once: it is taken).
    pub fn take_outcome(&mut self) -> Option<Result<Response, PcpClientError>> {
        self.outcome.take()
    }
}

/// A UDP socket bound to our address (`bind`, or the one the kernel picks) and connected to
/// `server`, so that only its datagrams (and its ICMP errors) come back.
fn socket(server: SocketAddr, bind: Option<IpAddr>) -> Result<(UdpSocket, IpAddr), PcpClientError> {
    let io = |what: String| {
        move |source| PcpClientError::Socket {
            server,
            what,
            source,
        }
    };
    let any = match server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let local = bind.unwrap_or(any);
    let socket = UdpSocket::bind((local, 0)).map_err(io(format!("bind to {local}")))?;
    socket.connect(server).map_err(io("connect".to_owned()))?;
    let ip = socket
        .local_addr()
        .map_err(io("local address".to_owned()))?
        .ip();
    Ok((socket, ip))
}

/// Runs `exchange` over `socket` until it ends (at `until` at the latest).
fn run(socket: &UdpSocket, mut exchange: Exchange) -> Result<Response, PcpClientError> {
    let server = exchange.server;
    let io = |what: &'static str| {
        move |source| PcpClientError::Socket {
            server,
            what: what.to_owned(),
            source,
        }
    };
    let mut buf = vec![0; MAX_MESSAGE_BYTES + 4];
    loop {
        let now = Instant::now();
        if let Some(datagram) = exchange.poll_transmit(now) {
            match socket.send(datagram) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => exchange.handle_unreachable(),
                Err(e) => return Err(io("send")(e)),
            }
        }
        exchange.handle_timeout(now);
        if let Some(outcome) = exchange.take_outcome() {
            return outcome;
        }
        let Some(wake) = exchange.poll_timeout() else {
            continue;
        };
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        socket
            .set_read_timeout(Some(wait))
            .map_err(io("set read timeout"))?;
        match socket.recv(&mut buf) {
            Ok(n) => exchange.handle_datagram(server, &buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => exchange.handle_unreachable(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io("receive")(e)),
        }
    }
}

/// Whether the gateway at `server` speaks PCP: an ANNOUNCE, answered with version 2 (any
/// result code: a server that refuses ANNOUNCE still speaks PCP). Returns its epoch time.
pub fn announce(
    server: SocketAddr,
    bind: Option<IpAddr>,
    until: Instant,
) -> Result<u32, PcpClientError> {
    let (socket, client) = socket(server, bind)?;
    let request = Request::Announce { client };
    run(
        &socket,
        Exchange::new(Instant::now(), server, request, until),
    )
    .map(|r| r.epoch_secs)
}

/// A mapping (or an IPv6 pinhole) a PCP server granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcpMapping {
    /// The server that granted it.
    pub server: SocketAddr,
    /// What it forwards.
    pub protocol: Protocol,
    /// Our address and port.
    pub internal: SocketAddr,
    /// The address and port peers use (for a pinhole: `internal` itself).
    pub external: SocketAddr,
    /// The lifetime granted, in seconds (renew at half of it).
    pub lifetime_secs: u32,
    /// The nonce that names it to the server (for renewal and deletion).
    pub nonce: Nonce,
    /// The server's epoch time in the answer.
    pub epoch_secs: u32,
}

impl fmt::Display for PcpMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} for {} s (PCP server {})",
            self.protocol, self.external, self.internal, self.lifetime_secs, self.server
        )
    }
}

/// What to ask a server for: see [`map`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    /// What to forward.
    pub protocol: Protocol,
    /// Our address and port (the socket is bound to this address, so that it is the
    /// request's source and client address).
    pub internal: SocketAddr,
    /// The external port wished for (0: any).
    pub external_port: u16,
    /// The lifetime asked for, in seconds (0 deletes).
    pub lifetime_secs: u32,
    /// The nonce: a fresh random one for a new mapping, the mapping's own to renew or delete.
    pub nonce: Nonce,
    /// Fail rather than take another external port (`PREFER_FAILURE`).
    pub prefer_failure: bool,
}

/// Asks `server` for the mapping `spec` describes (a renewal when the nonce is an existing
/// mapping's). IPv4 mappings get the gateway's external address; IPv6 ones are pinholes.
pub fn map(
    server: SocketAddr,
    spec: MapSpec,
    until: Instant,
) -> Result<PcpMapping, PcpClientError> {
    let (socket, client) = socket(server, Some(spec.internal.ip()))?;
    let mut request = MapRequest::new(
        client,
        spec.nonce,
        spec.protocol,
        spec.internal.port(),
        spec.lifetime_secs,
    );
    request.map.external_port = spec.external_port;
    if spec.prefer_failure {
        request.map.options.push(PcpOption::PreferFailure);
    }
    let exchange = Exchange::new(Instant::now(), server, Request::Map(request.clone()), until);
    let response = run(&socket, exchange)?;
    let Grant {
        external,
        lifetime_secs,
        epoch_secs,
    } = request
        .grant(&response)
        .map_err(|source| PcpClientError::Refused { server, source })?;
    Ok(PcpMapping {
        server,
        protocol: spec.protocol,
        internal: SocketAddr::new(client, spec.internal.port()),
        external,
        lifetime_secs,
        nonce: spec.nonce,
        epoch_secs,
    })
}

/// Renews `mapping` (the same request again, same nonce, its external port wished for).
pub fn renew(mapping: &PcpMapping, until: Instant) -> Result<PcpMapping, PcpClientError> {
    map(
        mapping.server,
        spec_of(mapping, mapping.lifetime_secs),
        until,
    )
}

/// Deletes `mapping` (lifetime 0, same nonce).
pub fn unmap(mapping: &PcpMapping, until: Instant) -> Result<(), PcpClientError> {
    map(mapping.server, spec_of(mapping, 0), until).map(|_| ())
}

fn spec_of(mapping: &PcpMapping, lifetime_secs: u32) -> MapSpec {
    MapSpec {
        protocol: mapping.protocol,
        internal: mapping.internal,
        external_port: mapping.external.port(),
        lifetime_secs,
        nonce: mapping.nonce,
        prefer_failure: false,
    }
}

/// Opens an IPv6 firewall pinhole for `protocol` to `internal` (our global IPv6 address and
/// port) on the PCP server `server` (the IPv6 gateway, see [`gateway_v6`]) for
/// `lifetime_secs`, with a fresh random nonce.
pub fn open_pinhole(
    server: SocketAddr,
    internal: SocketAddrV6,
    protocol: Protocol,
    lifetime_secs: u32,
    until: Instant,
) -> Result<PcpMapping, PcpClientError> {
    map(
        server,
        MapSpec {
            protocol,
            internal: SocketAddr::V6(internal),
            external_port: internal.port(),
            lifetime_secs,
            nonce: random_nonce(),
            prefer_failure: false,
        },
        until,
    )
}

/// A fresh random mapping nonce.
pub fn random_nonce() -> Nonce {
    Nonce(rand::random())
}

/// The PCP server of an IPv4 gateway: its port 5351.
pub fn server_v4(gateway: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((gateway, SERVER_PORT))
}

/// The PCP server of the IPv6 default gateway (`/proc/net/ipv6_route`): its port 5351, with
/// the interface as scope when the gateway is link-local (as routers usually are).
pub fn gateway_v6() -> Option<SocketAddr> {
    let table = std::fs::read_to_string("/proc/net/ipv6_route").ok()?;
    let (gateway, dev) = default_route_v6(&table)?;
    let scope = if is_link_local(gateway) {
        std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex"))
            .ok()?
            .trim()
            .parse()
            .ok()?
    } else {
        0
    };
    Some(SocketAddr::V6(SocketAddrV6::new(
        gateway,
        SERVER_PORT,
        0,
        scope,
    )))
}

fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The next hop and device of the default route in `/proc/net/ipv6_route` text (columns:
/// destination, its prefix length, source, its length, next hop, metric, refcount, use,
/// flags, device). The lowest metric wins.
pub fn default_route_v6(table: &str) -> Option<(Ipv6Addr, String)> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [dest, len, _, _, hop, metric, _, _, _, dev] = f.as_slice() else {
                return None;
            };
            let hop = u128::from_str_radix(hop, 16).ok().map(Ipv6Addr::from)?;
            let default = u128::from_str_radix(dest, 16) == Ok(0) && *len == "00";
            let metric = u32::from_str_radix(metric, 16).ok()?;
            (default && !hop.is_unspecified() && *dev != "lo")
                .then(|| (metric, hop, dev.to_string()))
        })
        .min_by_key(|(metric, ..)| *metric)
        .map(|(_, hop, dev)| (hop, dev))
}
