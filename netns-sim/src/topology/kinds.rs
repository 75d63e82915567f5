//! NAT kinds and port-mapping protocols: the names used in TOML and on the command line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A NAT behaviour, named after RFC 4787 mapping and filtering behaviour.
///
/// Every kind silently drops unsolicited inbound packets that its filtering does not admit,
/// as home routers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// Endpoint-independent mapping and endpoint-independent filtering: once alice sent from a
    /// port, anyone may reach her through its mapping. nftables dynamic map + DNAT.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering: any port of a host alice
    /// contacted may reach her. nftables dynamic map keyed by remote address + DNAT.
    RestrictedCone,
    /// Endpoint-independent mapping (port-preserving), address-and-port-dependent filtering:
    /// Linux `masquerade` as is, the common home router.
    #[default]
    PortRestricted,
    /// Endpoint-dependent mapping with a random port per destination:
    /// `masquerade fully-random`.
    Symmetric,
    /// Endpoint-dependent mapping with sequential ports (each new connection gets the previous
    /// external port + 1, 20000 to 20999), for port-prediction tests: `snat` to `numgen inc`.
    Sequential,
    /// No translation and no filtering: a plain router, its LAN is routed from the internet.
    None,
}

impl NatKind {
    /// Every kind, in documentation order.
    pub const ALL: [NatKind; 6] = [
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestricted,
        NatKind::Symmetric,
        NatKind::Sequential,
        NatKind::None,
    ];

    /// The kebab-case name used in TOML and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::FullCone => "full-cone",
            NatKind::RestrictedCone => "restricted-cone",
            NatKind::PortRestricted => "port-restricted",
            NatKind::Symmetric => "symmetric",
            NatKind::Sequential => "sequential",
            NatKind::None => "none",
        }
    }

    /// Whether the same internal ip:port keeps one external port for all destinations.
    pub fn endpoint_independent_mapping(self) -> bool {
        matches!(
            self,
            NatKind::FullCone | NatKind::RestrictedCone | NatKind::PortRestricted | NatKind::None
        )
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown NAT kind name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown NAT kind {0:?}: use full-cone, restricted-cone, port-restricted, symmetric, sequential or none"
)]
pub struct UnknownNatKind(pub String);

impl FromStr for NatKind {
    type Err = UnknownNatKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NatKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownNatKind(s.to_owned()))
    }
}

/// Which protocols a router's miniupnpd answers (when its `upnp` is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingProtocols {
    /// UPnP IGD and NAT-PMP (miniupnpd's usual setup).
    #[default]
    Both,
    /// UPnP IGD only (`enable_natpmp=no`: UDP 5351 is closed).
    Upnp,
    /// NAT-PMP only (`enable_upnp=no`: no SSDP, no HTTP).
    Natpmp,
}

impl MappingProtocols {
    /// Whether miniupnpd answers UPnP.
    pub fn upnp(self) -> bool {
        self != MappingProtocols::Natpmp
    }

    /// Whether miniupnpd answers NAT-PMP.
    pub fn natpmp(self) -> bool {
        self != MappingProtocols::Upnp
    }

    /// The name used in TOML and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            MappingProtocols::Both => "both",
            MappingProtocols::Upnp => "upnp",
            MappingProtocols::Natpmp => "natpmp",
        }
    }
}

impl std::str::FromStr for MappingProtocols {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            MappingProtocols::Both,
            MappingProtocols::Upnp,
            MappingProtocols::Natpmp,
        ]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| format!("unknown mapping protocols {s:?}: use both, upnp or natpmp"))
    }
}
