//! `netns-sim`: a NAT lab on one Linux machine, built from network namespaces, nftables,
//! miniupnpd and chrony. For users (`netns-sim up`, `exec`, `status`, `down`, `demo`) and for
//! integration tests ([`Lab`]).
//!
//! ```text
//!   namespace <prefix>-internet: bridge br0, subnet 11.0.0.0/24 (no route anywhere else)
//!   ┌──────────────┬───────────────┬──────────────────────┬──────────────────────┐
//!   pub 11.0.0.2   pub2 11.0.0.3   nat-a wan 11.0.0.101    nat-b wan 11.0.0.102
//!   (chronyd :123)                 nft NAT kind A           nft NAT kind B
//!                                  (miniupnpd on lan)       bridge lan 192.168.2.1
//!                                  bridge lan 192.168.1.1        │
//!                                    │             │           bob 192.168.2.2
//!                                  alice .2      carol .3
//! ```
//!
//! Every box is a network namespace `<prefix>-<host>` (prefix `nsimXXXXXX`, unique per lab,
//! so labs can run in parallel); links are veth pairs created directly inside their
//! namespaces (`eth0` in hosts, `wan`/`lan` in routers, `pN`/`lN` on bridges). Nothing is
//! connected to the host's own network. How each [`NatKind`] is made of nftables rules is
//! described in [`nat`].
//!
//! ```no_run
//! use netns_sim::{Lab, NatKind, Topology, TwoNats};
//! let lab = Lab::up(&Topology::two_nats(TwoNats {
//!     a: NatKind::PortRestricted,
//!     b: NatKind::Symmetric,
//!     upnp_a: true,
//!     ntp: true,
//!     ..TwoNats::default()
//! }))?;
//! let out = lab.exec_ok("alice", &["ip", "route"])?;
//! assert!(out.contains("default via 192.168.1.1"));
//! // `lab` tears everything down when dropped, even on panic; or call `lab.down()?`.
//! # Ok::<(), netns_sim::LabError>(())
//! ```

pub mod cgnat;
pub mod hairpin;
pub mod ipv6;
pub mod lab;
pub mod nat;
pub mod net;
pub mod probe;
pub mod sys;
pub mod timeouts;
pub mod topology;
pub mod units;
pub mod unsolicited;
pub mod wan;

pub use ipv6::Family;
pub use lab::{DaemonInfo, Lab, LabChild, LabError, LabOptions, LabState, RUN_DIR};
pub use net::Ipv4Net;
pub use timeouts::Timeouts;
pub use topology::{
    HostInfo, Link, LinkProfile, MappingProtocols, NatKind, Role, Router, Topology, TopologyError,
    TwoNats, WanProfile,
};
pub use units::Share;
pub use unsolicited::Unsolicited;
