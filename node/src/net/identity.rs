//! What the node tells others about itself: its identity, its UNL (v3, signed by its key: key,
//! role, NAT type, forwarding, WAN and LAN addresses with the advertised port, its rendezvous
//! and mailbox servers; and the v2 form for PyP2P peers), its role and public port, and how it
//! finds its LAN address. The UNL is rebuilt and handed to the core whenever one of these
//! changes, and signed again only then.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::Net;
use crate::config::Role;
use crate::identity::Identity;
use wire::key::PublicKey;
use wire::rendezvous::NodeType;
use wire::unl::v3::{Endpoint, MAX_SERVERS, Scope, UnlAddr, UnlBody, UnlV3};
use wire::unl::{Forwarding, NodeId, Unl};

impl Net {
    /// This node's UNL, v3 (after [`Net::start`]): its key, role, NAT type (once detected),
    /// forwarding, WAN address (see [`Net::set_wan_ip`]) and LAN address with the advertised
    /// port, its rendezvous and mailbox servers, signed by its key. What to hand to peers that
    /// run this software; [`Net::unl_v2`] for PyP2P peers.
    pub fn unl(&mut self) -> UnlV3 {
        self.refresh_unl();
        self.signed_unl
            .clone()
            .unwrap_or_else(|| unreachable!("refresh_unl sets it"))
    }

    /// This node's UNL in PyP2P's v2 format (node id, role, NAT type, forwarding, port, WAN
    /// and LAN address; no key: a node that connects with it gets a plain-text connection).
    pub fn unl_v2(&mut self) -> Unl {
        self.refresh_unl();
        self.core
            .local_unl()
            .unwrap_or_else(|| unreachable!("refresh_unl sets it"))
    }

    /// This node's key pair.
    pub fn identity(&self) -> &Identity {
        self.core.identity()
    }

    /// This node's public key (its identity; every id is derived from it).
    pub fn key(&self) -> PublicKey {
        self.core.identity().key()
    }

    /// This node's node id (derived from its key): the id in its UNL, its mailbox name (in
    /// hex) and, hashed, its overlay peer id.
    pub fn node_id(&self) -> NodeId {
        self.core.node_id()
    }

    /// Sets our WAN address (a configured one, or one a gateway or the forwarding check
    /// reported); the rendezvous' own observation (`SOURCE ADDR`) replaces it unless one was
    /// configured. Until any is known the UNL carries the LAN address, which is right only
    /// without a NAT.
    pub fn set_wan_ip(&mut self, ip: Ipv4Addr) {
        self.wan_ip = Some(ip);
        self.refresh_unl();
    }

    /// The rendezvous saw us come from `ip`: our WAN address from now on, unless one was
    /// configured.
    pub(super) fn observed_wan_ip(&mut self, ip: IpAddr) {
        let IpAddr::V4(ip) = ip else { return };
        if self.config.wan_ip.is_some() {
            if self.config.wan_ip != Some(ip) {
                warn!(
                    configured = ?self.config.wan_ip,
                    observed = %ip,
                    "the rendezvous sees another WAN address than the one configured"
                );
            }
            return;
        }
        self.wan_ip = Some(ip);
        self.refresh_unl();
    }

    /// Sets how our port was made reachable (for the UNL).
    pub fn set_forwarding(&mut self, forwarding: Forwarding) {
        self.forwarding = forwarding;
        self.refresh_unl();
    }

    /// Sets the node's role and the port peers reach it on from outside, e.g. after
    /// [`crate::reach`] found a forwarded port: `set_reachability(Role::Passive, Some(port))`.
    /// Takes effect at the next advertise, bootstrap and handshake.
    pub fn set_reachability(&mut self, role: Role, public_port: Option<u16>) {
        let node_type = match role {
            Role::Passive => NodeType::Passive,
            Role::Active | Role::Auto => NodeType::Active,
            Role::Simultaneous => NodeType::Simultaneous,
        };
        self.config.node_type = role;
        self.core.set_reachability(node_type, public_port);
        if self.started && self.local_addr.is_some() {
            let now = Instant::now();
            match role {
                Role::Simultaneous => self.core.enable_simultaneous(now),
                Role::Auto => self.core.enable_auto(now),
                Role::Passive | Role::Active => {}
            }
            self.apply_outputs(now);
        }
        self.refresh_unl();
    }

    /// The node's role now: the configured one, or what an auto node chose (active until
    /// it has).
    pub fn role(&self) -> NodeType {
        self.core.config().node_type
    }

    /// The port peers are told to dial (the forwarded public port if set, else the listening
    /// port; 0 when not listening).
    pub fn advertised_port(&self) -> u16 {
        self.core.advertised_port()
    }

    pub(super) fn refresh_unl(&mut self) {
        let lan_ip = self.lan_ip();
        // The role the core holds now (an auto node's choice, or the configured one), and
        // only what is established: simultaneous once registered.
        let node_type = match self.core.config().node_type {
            NodeType::Passive if self.local_addr.is_some() => NodeType::Passive,
            NodeType::Simultaneous if self.core.registered() => NodeType::Simultaneous,
            _ => NodeType::Active,
        };
        let port = self.core.advertised_port();
        let wan_ip = self.wan_ip.unwrap_or(lan_ip);
        let mut body = UnlBody::new(0);
        body.node_type = node_type;
        body.nat_type = self.nat_type;
        body.forwarding = self.forwarding;
        // Both with the advertised port, as the v2 form has one port (port 0: not listening;
        // the addresses still say where the node is, for the same-network test).
        body.addrs = vec![
            UnlAddr {
                scope: Scope::Wan,
                addr: SocketAddr::from((wan_ip, port)),
            },
            UnlAddr {
                scope: Scope::Lan,
                addr: SocketAddr::from((lan_ip, port)),
            },
        ];
        let listen_port = self.local_addr.map_or(0, |a| a.port());
        let v6 = super::dual_stack::ipv6_unl_addrs(&self.ipv6, listen_port, body.addrs.len());
        body.addrs.extend(v6);
        body.rendezvous = self
            .servers
            .iter()
            .take(MAX_SERVERS)
            .map(|a| Endpoint::Addr(*a))
            .collect();
        body.mailboxes = self
            .mailbox_server
            .iter()
            .map(|a| Endpoint::Addr(*a))
            .collect();
        let unchanged = self.signed_unl.as_ref().is_some_and(|u| {
            let mut old = u.body().clone();
            old.seq = 0;
            old == body
        });
        if !unchanged {
            // A newer UNL has a larger sequence: Unix milliseconds when signed.
            body.seq = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            match UnlV3::sign(body, self.core.identity().secret()) {
                Ok(unl) => {
                    self.core.set_local_unl_v3(unl.clone());
                    self.signed_unl = Some(unl);
                }
                Err(e) => unreachable!("at most MAX_ADDRS addresses and four servers sign: {e}"),
            }
        }
    }

    /// Our LAN address: the bind address if it is a specific IPv4 one, else the source address
    /// the kernel picks for the first configured server (a UDP `connect` sends nothing), else
    /// loopback.
    pub(super) fn lan_ip(&self) -> Ipv4Addr {
        if let IpAddr::V4(ip) = self.config.bind
            && !ip.is_unspecified()
        {
            return ip;
        }
        let target = self.servers.first().copied().or(self.mailbox_server);
        target
            .and_then(|server| {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
                socket.connect(server).ok()?;
                match socket.local_addr().ok()?.ip() {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                }
            })
            .unwrap_or(Ipv4Addr::LOCALHOST)
    }
}
