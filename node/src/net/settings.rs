//! The node's [`Config`] turned into what the core and the driver use: the core's settings
//! ([`CoreConfig`]) and the servers' names resolved to addresses.

use std::net::{SocketAddr, ToSocketAddrs};

use super::NetError;
use crate::config::{Config, Role};
use crate::core::CoreConfig;
use wire::rendezvous::NodeType;

/// The core's settings from the node's (the listening port comes at start).
pub(super) fn core_config(config: &Config, servers: &[SocketAddr]) -> CoreConfig {
    let seed = config.seed.unwrap_or_else(rand::random);
    CoreConfig {
        node_type: match config.node_type {
            Role::Passive => NodeType::Passive,
            // Until it has chosen, an auto node claims nothing.
            Role::Active | Role::Auto => NodeType::Active,
            Role::Simultaneous => NodeType::Simultaneous,
        },
        listen_port: 0,
        public_port: config.external_port,
        rendezvous: servers.to_vec(),
        max_inbound: config.max_inbound,
        max_inbound_per_ip: config.max_inbound_per_ip,
        max_outbound: config.max_outbound,
        bootstrap_count: config.bootstrap_count,
        rebootstrap_interval: config.rebootstrap_interval,
        alone_rebootstrap_delay: config.alone_rebootstrap_delay,
        readvertise_interval: config.readvertise_interval,
        broadcast_ttl: config.broadcast_ttl,
        seen_capacity: config.seen_capacity,
        seen_lifetime: config.seen_lifetime,
        seed,
        identity: Some(
            config
                .identity
                .clone()
                .unwrap_or_else(|| match config.seed {
                    Some(seed) => crate::identity::Identity::from_seed(seed),
                    None => crate::identity::Identity::ephemeral(),
                }),
        ),
        unl_connect_timeout: config.unl_connect_timeout,
        max_reverse_per_minute: config.max_reverse_per_minute,
        max_punch_per_minute: config.max_punch_per_minute,
        keepalive: config.keepalive,
        max_punch_sockets: config.max_punch_sockets,
        upgrade_retries: config.upgrade_retries,
        plaintext_dials: config.plaintext_dials,
        ..CoreConfig::default()
    }
}

/// The first IPv4 address of server `name` (`what` names it in the error).
pub(super) fn resolve(what: &'static str, name: &str) -> Result<SocketAddr, NetError> {
    let err = |reason: String| NetError::ResolveServer {
        what,
        name: name.to_owned(),
        reason,
    };
    name.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| err("no IPv4 address".to_owned()))
}
