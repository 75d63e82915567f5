//! Blocking UPnP (igd-next, sync API), NAT-PMP (natpmp, no tokio) and PCP (our own client,
//! [`super::pcp`]) operations, each bounded, for helper threads. Errors are sentences with
//! values, ready for a report.
//!
//! PCP: an ANNOUNCE to the default gateway's port 5351 tells whether it speaks PCP; a MAP
//! (with `PREFER_FAILURE` when the external port is fixed) makes or renews a mapping with its
//! nonce, and deletes it with lifetime 0.
//!
//! NAT-PMP: the `natpmp` crate's socket is non-blocking and its retries follow RFC 6886
//! (250 ms doubling nine times, about 128 s); here every exchange stops at an `until` instant
//! instead. TCP is opcode 2 (PyP2P swapped TCP and UDP).
//!
//! UPnP: discovery is bound to the LAN address and to a timeout (igd-next's default would
//! wait 10 s with no gateway); the SOAP requests after it have igd-next's own 10 s bound.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use igd_next::{
    AddAnyPortError, AddPortError, PortMappingProtocol, RemovePortError, SearchError, SearchOptions,
};
use natpmp::{Natpmp, Response};

use super::pcp::{self, MapSpec};
use super::probe::PcpAnswer;
use super::report::{Mapping, Protocol};
use wire::pcp::Nonce;

/// The description given to UPnP mappings (shown by `upnpc -l` and router pages).
pub const MAPPING_DESCRIPTION: &str = "p2p-node";

/// How often a NAT-PMP exchange looks for the answer while waiting.
const NATPMP_POLL: Duration = Duration::from_millis(5);

/// A UPnP gateway found by [`upnp_discover`].
#[derive(Debug, Clone)]
pub struct UpnpGateway {
    gateway: igd_next::Gateway,
    /// Its external IP, when it told it.
    pub external_ip: Option<Ipv4Addr>,
}

impl UpnpGateway {
    /// The address of its control server.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.addr
    }
}

/// SSDP discovery from `lan_ip` (the LAN interface's address), waiting at most `timeout`,
/// then the gateway's external IP.
pub fn upnp_discover(lan_ip: Ipv4Addr, timeout: Duration) -> Result<UpnpGateway, String> {
    let mut options = SearchOptions::default();
    options.bind_addr = SocketAddr::new(IpAddr::V4(lan_ip), 0);
    options.timeout = Some(timeout);
    options.single_search_timeout = Some(timeout);
    let gateway = igd_next::search_gateway(options).map_err(|e| match e {
        SearchError::NoResponseWithinTimeout => format!(
            "no UPnP gateway answered within {:.1} s on {lan_ip}",
            timeout.as_secs_f64()
        ),
        SearchError::IoError(e) => format!("UPnP discovery from {lan_ip} failed: {e}"),
        other => format!("UPnP discovery from {lan_ip} failed: {other}"),
    })?;
    let external_ip = match gateway.get_external_ip() {
        Ok(IpAddr::V4(ip)) if !ip.is_unspecified() => Some(ip),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(gateway = %gateway.addr, error = %e, "UPnP GetExternalIPAddress failed");
            None
        }
    };
    Ok(UpnpGateway {
        gateway,
        external_ip,
    })
}

/// `AddPortMapping` TCP `external_port` → `internal` with a finite lease. When the port is
/// taken and not `fixed`, any free external port will do (`AddAnyPortMapping`).
pub fn upnp_map(
    gw: &UpnpGateway,
    external_port: u16,
    internal: SocketAddrV4,
    lease_secs: u32,
    fixed: bool,
) -> Result<Mapping, String> {
    let at = gw.gateway.addr;
    let tcp = PortMappingProtocol::TCP;
    let local = SocketAddr::V4(internal);
    let lease = lease_secs.max(1);
    let mapped = |port| Mapping::new(Protocol::Upnp, port, internal, lease);
    match gw
        .gateway
        .add_port(tcp, external_port, local, lease, MAPPING_DESCRIPTION)
    {
        Ok(()) => Ok(mapped(external_port)),
        Err(AddPortError::PortInUse) if !fixed => {
            match gw
                .gateway
                .add_any_port(tcp, local, lease, MAPPING_DESCRIPTION)
            {
                Ok(port) => Ok(mapped(port)),
                Err(e) => Err(format!(
                    "UPnP gateway {at}: external port {external_port} is taken and no other \
                     was given: {}",
                    describe_any(&e)
                )),
            }
        }
        Err(e) => Err(format!(
            "UPnP gateway {at} refused TCP {external_port} -> {internal}: {}",
            describe_add(&e)
        )),
    }
}

fn describe_add(e: &AddPortError) -> String {
    match e {
        AddPortError::ActionNotAuthorized => "not authorized (606)".to_owned(),
        AddPortError::PortInUse => "the external port is mapped to another client (718)".to_owned(),
        AddPortError::SamePortValuesRequired => {
            "the router wants the external and internal ports equal (724)".to_owned()
        }
        AddPortError::OnlyPermanentLeasesSupported => {
            "the router accepts only permanent leases (725); a lease of 0 is never asked for"
                .to_owned()
        }
        other => other.to_string(),
    }
}

fn describe_any(e: &AddAnyPortError) -> String {
    match e {
        AddAnyPortError::OnlyPermanentLeasesSupported => {
            "the router accepts only permanent leases (725); a lease of 0 is never asked for"
                .to_owned()
        }
        other => other.to_string(),
    }
}

/// `DeletePortMapping` TCP `external_port`. A mapping that is already gone counts as done.
pub fn upnp_unmap(gw: &UpnpGateway, external_port: u16) -> Result<(), String> {
    match gw
        .gateway
        .remove_port(PortMappingProtocol::TCP, external_port)
    {
        Ok(()) | Err(RemovePortError::NoSuchPortMapping) => Ok(()),
        Err(e) => Err(format!(
            "UPnP gateway {}: DeletePortMapping TCP {external_port} failed: {e}",
            gw.gateway.addr
        )),
    }
}

/// The default gateway's IPv4 address, from the routing table.
pub fn default_gateway() -> Option<Ipv4Addr> {
    natpmp::get_default_gateway().ok()
}

/// Asks the NAT-PMP gateway (the default gateway unless given) for its public address.
/// Returns `(gateway, public address)`.
pub fn natpmp_discover(
    gateway: Option<Ipv4Addr>,
    until: Instant,
) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let gateway = gateway
        .or_else(default_gateway)
        .ok_or_else(|| "no default gateway to ask (no IPv4 default route)".to_owned())?;
    let mut client = natpmp_client(gateway)?;
    client
        .send_public_address_request()
        .map_err(|e| format!("NAT-PMP request to {gateway}:5351 failed: {e}"))?;
    match natpmp_wait(&mut client, gateway, until)? {
        Response::Gateway(g) => Ok((gateway, *g.public_address())),
        other => Err(format!(
            "NAT-PMP gateway {gateway}: unexpected answer {other:?}"
        )),
    }
}

/// Maps TCP `private_port` to `public_port` (a wish: the gateway may grant another) for
/// `lease_secs` (0 deletes: see [`natpmp_unmap`]).
pub fn natpmp_map(
    gateway: Ipv4Addr,
    internal: SocketAddrV4,
    public_port: u16,
    lease_secs: u32,
    until: Instant,
) -> Result<Mapping, String> {
    let mut client = natpmp_client(gateway)?;
    client
        .send_port_mapping_request(
            natpmp::Protocol::TCP,
            internal.port(),
            public_port,
            lease_secs.max(1),
        )
        .map_err(|e| format!("NAT-PMP request to {gateway}:5351 failed: {e}"))?;
    match natpmp_wait(&mut client, gateway, until)? {
        Response::TCP(m) if m.private_port() == internal.port() => {
            let granted = u32::try_from(m.lifetime().as_secs()).unwrap_or(u32::MAX);
            if granted == 0 || m.public_port() == 0 {
                return Err(format!(
                    "NAT-PMP gateway {gateway} answered with port {} for {granted} s: no \
                     mapping",
                    m.public_port()
                ));
            }
            Ok(Mapping::new(
                Protocol::Natpmp,
                m.public_port(),
                internal,
                granted,
            ))
        }
        other => Err(format!(
            "NAT-PMP gateway {gateway}: unexpected answer {other:?} to a TCP mapping request"
        )),
    }
}

/// Deletes the TCP mapping of `private_port` (RFC 6886: lifetime 0, public port 0).
pub fn natpmp_unmap(gateway: Ipv4Addr, private_port: u16, until: Instant) -> Result<(), String> {
    let mut client = natpmp_client(gateway)?;
    client
        .send_port_mapping_request(natpmp::Protocol::TCP, private_port, 0, 0)
        .map_err(|e| format!("NAT-PMP request to {gateway}:5351 failed: {e}"))?;
    natpmp_wait(&mut client, gateway, until).map(|_| ())
}

fn natpmp_client(gateway: Ipv4Addr) -> Result<Natpmp, String> {
    Natpmp::new_with(gateway).map_err(|e| format!("NAT-PMP client for {gateway}: {e}"))
}

/// Waits for the answer, letting the client resend on RFC 6886's schedule, until `until`.
fn natpmp_wait(client: &mut Natpmp, gateway: Ipv4Addr, until: Instant) -> Result<Response, String> {
    let started = Instant::now();
    loop {
        match client.read_response_or_retry() {
            Ok(response) => return Ok(response),
            Err(natpmp::Error::NATPMP_TRYAGAIN) => {}
            // The crate says this for an ICMP port unreachable, and after its last RFC 6886
            // retry (~128 s), which `until` never lets us reach.
            Err(natpmp::Error::NATPMP_ERR_NOGATEWAYSUPPORT) => {
                return Err(format!(
                    "no NAT-PMP server at {gateway}:5351 (port unreachable)"
                ));
            }
            Err(e) => return Err(format!("NAT-PMP gateway {gateway}:5351: {e}")),
        }
        let now = Instant::now();
        if now >= until {
            return Err(format!(
                "no NAT-PMP answer from {gateway}:5351 within {:.1} s",
                until.saturating_duration_since(started).as_secs_f64()
            ));
        }
        std::thread::sleep(NATPMP_POLL.min(until - now));
    }
}

/// Asks the default gateway (from `bind`, our LAN address) whether it speaks PCP: its PCP
/// server address when it does, and the answer for the probe (which tells whether NAT-PMP is
/// worth asking on the same port).
pub fn pcp_discover(bind: Ipv4Addr, until: Instant) -> (Option<SocketAddr>, PcpAnswer) {
    let Some(gateway) = default_gateway() else {
        let why = "no default gateway to ask (no IPv4 default route)".to_owned();
        return (
            None,
            PcpAnswer::Nothing {
                pcp: why.clone(),
                natpmp: why,
            },
        );
    };
    let server = pcp::server_v4(gateway);
    match pcp::announce(server, Some(IpAddr::V4(bind)), until) {
        Ok(_epoch) => (Some(server), PcpAnswer::Speaks),
        Err(e @ pcp::PcpClientError::NoServer { .. }) => (
            None,
            PcpAnswer::Nothing {
                pcp: e.to_string(),
                natpmp: format!("no NAT-PMP server at {server} (port unreachable)"),
            },
        ),
        Err(e) => (None, PcpAnswer::NotPcp(e.to_string())),
    }
}

/// Maps TCP `external_port` (a wish unless `fixed`) to `internal` for `lease_secs` on the PCP
/// server `server`; `nonce` is the mapping's own when renewing, `None` for a new one.
pub fn pcp_map(
    server: SocketAddr,
    internal: SocketAddrV4,
    external_port: u16,
    lease_secs: u32,
    fixed: bool,
    nonce: Option<Nonce>,
    until: Instant,
) -> Result<Mapping, String> {
    let spec = MapSpec {
        protocol: wire::pcp::Protocol::TCP,
        internal: SocketAddr::V4(internal),
        external_port,
        lifetime_secs: lease_secs.max(1),
        nonce: nonce.unwrap_or_else(pcp::random_nonce),
        prefer_failure: fixed,
    };
    let granted = pcp::map(server, spec, until).map_err(|e| e.to_string())?;
    let external_ip = match granted.external.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    };
    Ok(Mapping {
        external_ip,
        nonce: Some(granted.nonce),
        ..Mapping::new(
            Protocol::Pcp,
            granted.external.port(),
            internal,
            granted.lifetime_secs,
        )
    })
}

/// Deletes a PCP mapping (lifetime 0, its nonce). One without a nonce (not made by PCP)
/// cannot be named to the server.
pub fn pcp_unmap(server: SocketAddr, mapping: &Mapping, until: Instant) -> Result<(), String> {
    let nonce = mapping
        .nonce
        .ok_or_else(|| format!("{mapping}: no PCP nonce to delete it with"))?;
    let spec = MapSpec {
        protocol: wire::pcp::Protocol::TCP,
        internal: SocketAddr::V4(mapping.internal),
        external_port: mapping.external_port,
        lifetime_secs: 0,
        nonce,
        prefer_failure: false,
    };
    pcp::map(server, spec, until)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A UPnP, NAT-PMP or PCP gateway, for [`map`]/[`unmap`].
#[derive(Debug, Clone)]
pub enum Router {
    /// A UPnP gateway.
    Upnp(UpnpGateway),
    /// A NAT-PMP gateway's address.
    Natpmp(Ipv4Addr),
    /// A PCP server's address.
    Pcp(SocketAddr),
}

/// Makes a mapping on `router`, or renews one (the same request again; `nonce`: PCP's
/// mapping nonce, `None` for a new mapping).
pub fn map(
    router: &Router,
    external_port: u16,
    internal: SocketAddrV4,
    lease_secs: u32,
    fixed: bool,
    nonce: Option<Nonce>,
    until: Instant,
) -> Result<Mapping, String> {
    match router {
        Router::Upnp(gw) => upnp_map(gw, external_port, internal, lease_secs, fixed),
        Router::Natpmp(gw) => natpmp_map(*gw, internal, external_port, lease_secs, until),
        Router::Pcp(server) => pcp_map(
            *server,
            internal,
            external_port,
            lease_secs,
            fixed,
            nonce,
            until,
        ),
    }
}

/// Deletes `mapping` on `router`.
pub fn unmap(router: &Router, mapping: &Mapping, until: Instant) -> Result<(), String> {
    match router {
        Router::Upnp(gw) => upnp_unmap(gw, mapping.external_port),
        Router::Natpmp(gw) => natpmp_unmap(*gw, mapping.internal.port(), until),
        Router::Pcp(server) => pcp_unmap(*server, mapping, until),
    }
}
