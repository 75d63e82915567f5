//! Carrier-grade NAT: a home router whose WAN side is not on the internet but on a carrier
//! NAT's LAN in `100.64.0.0/10` (RFC 6598 shared address space), so the home's traffic is
//! translated twice and UPnP/NAT-PMP on the home router map only the inner NAT (miniupnpd even
//! refuses to forward with a `100.64` WAN address, as it does on real CGNAT lines).
//!
//! A carrier is an ordinary [`crate::topology::Router`] of any [`crate::NatKind`] (RFC 6888 asks
//! for endpoint-independent mapping; random-port CGNs exist too) that other routers name as
//! their `upstream`. Its LAN defaults to `100.64.K.0/24` and is a bridge like any LAN, with one
//! difference: the ports of the homes on it are *isolated* (`bridge link set dev lN isolated
//! on`), as subscriber lines are, so two homes behind one carrier reach each other only through
//! the carrier's public address, i.e. only when it hairpins ([`crate::hairpin`]). Several homes
//! may share one carrier. Teardown: everything lives in the lab's namespaces.
//!
//! ```no_run
//! use netns_sim::{Lab, NatKind, Topology, TwoNats};
//! // alice behind a port-restricted home NAT behind a full-cone (EIM) carrier NAT `cgn-a`:
//! let lab = Lab::up(&Topology::two_nats(TwoNats {
//!     cgnat_a: Some(NatKind::FullCone),
//!     ..TwoNats::default()
//! }))?;
//! assert_eq!(lab.public_addr("alice"), lab.addr("cgn-a"));
//! assert_eq!(lab.addr("nat-a").to_string(), "100.64.1.2");
//! # Ok::<(), netns_sim::LabError>(())
//! ```

use crate::sys::{self, SysError};

/// Isolates bridge port `port` in namespace `ns`: it can talk to the bridge (the carrier
/// itself) but not to other isolated ports (other homes).
pub(crate) fn isolate_port(ns: &str, port: &str) -> Result<(), SysError> {
    sys::run(
        std::process::Command::new("bridge")
            .args(["-n", ns, "link", "set", "dev", port, "isolated", "on"]),
    )
    .map(|_| ())
}
