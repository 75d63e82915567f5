//! The flags several subcommands share: the servers a node talks to ([`ServerFlags`]: `run`,
//! `unl`, `connect`, `reachability`), how it finds out whether peers can reach it
//! ([`ReachFlags`]: `run`, `connect`, `reachability`) and its key ([`IdentityFlags`]: `run`,
//! `unl`, `connect`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use node::Config;
use node::identity::{ClaimedIdentity, DEFAULT_FILE_NAME, Identity, default_dir};
use tracing::info;

/// The node's key: every id it has (node id, mailbox name, overlay id) and its UNL come from
/// it, and every encrypted connection proves it.
#[derive(Debug, Args)]
pub(crate) struct IdentityFlags {
    /// The node's key file (Ed25519). Created on first run with mode 0600 (a file that
    /// group or others can read or write is refused) and held locked while the node runs,
    /// so two nodes never share a key. [default: $XDG_DATA_HOME/p2p-node/identity, else
    /// ~/.local/share/p2p-node/identity; when another running node holds it, identity-2,
    /// identity-3, ... in the same directory]
    #[arg(long, value_name = "FILE")]
    pub(crate) identity: Option<PathBuf>,
    /// Use a fresh key for this run only, kept in no file: a new node id every run (peers
    /// that kept the old UNL cannot reach this node).
    #[arg(long, conflicts_with = "identity")]
    pub(crate) ephemeral_identity: bool,
}

/// An identity the CLI loaded, and the lock on its file (kept while the node runs).
#[derive(Debug)]
pub(crate) struct LoadedIdentity {
    pub(crate) identity: Identity,
    _claim: Option<ClaimedIdentity>,
}

impl IdentityFlags {
    /// Loads (or creates) and locks the key file, or makes an ephemeral key when asked.
    pub(crate) fn claim(&self) -> Result<LoadedIdentity> {
        if self.ephemeral_identity {
            let identity = Identity::ephemeral();
            info!(node_id = %identity.node_id(), key = %identity.key(), "ephemeral identity (this run only)");
            return Ok(LoadedIdentity {
                identity,
                _claim: None,
            });
        }
        let claim = if let Some(path) = &self.identity {
            ClaimedIdentity::claim(path)?
        } else {
            let dir = default_dir().context(
                "no default place for the identity file (neither XDG_DATA_HOME nor HOME \
                 is set): give --identity FILE or --ephemeral-identity",
            )?;
            ClaimedIdentity::claim_default(dir)?
        };
        let identity = claim.identity().clone();
        info!(
            path = %claim.path().display(),
            node_id = %identity.node_id(),
            key = %identity.key(),
            "identity"
        );
        Ok(LoadedIdentity {
            identity,
            _claim: Some(claim),
        })
    }

    /// Loads (or creates) the key file without locking it: for `unl`, which prints what the
    /// node that holds the file says (the default is the first default file).
    pub(crate) fn load(&self) -> Result<Identity> {
        if self.ephemeral_identity {
            return Ok(Identity::ephemeral());
        }
        let path = match &self.identity {
            Some(path) => path.clone(),
            None => default_dir()
                .context(
                    "no default place for the identity file (neither XDG_DATA_HOME nor HOME \
                     is set): give --identity FILE or --ephemeral-identity",
                )?
                .join(DEFAULT_FILE_NAME),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Identity::load_or_create(&path)?)
    }
}

/// The servers a node talks to. None has a default: nothing is contacted unless named here.
#[derive(Debug, Args)]
pub(crate) struct ServerFlags {
    /// Rendezvous server HOST:PORT; repeat for failover (tried in order).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) rendezvous: Vec<String>,
    /// dht-msg mailbox server HOST:PORT: this node registers its mailbox there and acts on
    /// reverse-connect requests; `connect` posts its own requests there.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) dht_msg: Option<String>,
    /// Forwarding-check server URL (http://HOST:PORT): proves a forwarded port and tells the
    /// WAN address.
    #[arg(long, value_name = "URL")]
    pub(crate) forwarding_check: Option<String>,
    /// NTP server HOST:PORT whose clock times hole punches (both ends should use the same
    /// one; without it, the system clocks are trusted to agree).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) ntp: Option<String>,
    /// This node's WAN address, when known beforehand (else: as the rendezvous sees it,
    /// else from the forwarding check, else the LAN address).
    #[arg(long, value_name = "IPV4")]
    pub(crate) wan_ip: Option<Ipv4Addr>,
    /// How often idle connections show the NATs on their path that they are alive (the
    /// rendezvous registration, the mailbox, peer connections' TCP keep-alive). Keep it below
    /// the shortest TCP mapping timeout on the path. [default: 30s, or `keepalive` from
    /// --config]
    #[arg(long, value_name = "DURATION", value_parser = node::wire::units::parse_duration)]
    pub(crate) keepalive: Option<Duration>,
}

impl ServerFlags {
    /// Adds these flags to `config` (flags win over the config file).
    pub(crate) fn apply(&self, config: &mut Config) {
        config.rendezvous.extend(self.rendezvous.iter().cloned());
        if self.dht_msg.is_some() {
            config.dht_msg.clone_from(&self.dht_msg);
        }
        if self.forwarding_check.is_some() {
            config.forwarding_check.clone_from(&self.forwarding_check);
        }
        if self.ntp.is_some() {
            config.ntp.clone_from(&self.ntp);
        }
        if self.wan_ip.is_some() {
            config.wan_ip = self.wan_ip;
        }
        if let Some(k) = self.keepalive {
            config.keepalive = k;
        }
    }
}

/// How the node finds out whether peers can reach it (see `p2p-node reachability --help`).
#[derive(Debug, Args)]
pub(crate) struct ReachFlags {
    /// Do not try UPnP IGD port mapping.
    #[arg(long)]
    pub(crate) no_upnp: bool,
    /// Do not try NAT-PMP port mapping.
    #[arg(long)]
    pub(crate) no_natpmp: bool,
    /// Do not try PCP port mapping (RFC 6887; by default it is tried first where the gateway
    /// speaks it, NAT-PMP being its fallback on the same port).
    #[arg(long)]
    pub(crate) no_pcp: bool,
    /// The router's port that reaches our listening port: forwarded by hand (with --no-upnp
    /// --no-natpmp --no-pcp), or the external port to ask UPnP/NAT-PMP/PCP for (default: the
    /// listening port). Checked with the forwarding check when one is given, else trusted.
    #[arg(long, value_name = "PORT")]
    pub(crate) external_port: Option<u16>,
    /// Bound on the whole probe: gateways (at most 2/3 of it), mapping and proof.
    /// [default: 3s, or `reach_timeout` from --config]
    #[arg(long, value_name = "DURATION", value_parser = node::wire::units::parse_duration)]
    pub(crate) reach_timeout: Option<Duration>,
    /// Lease asked for a mapping (renewed at half-life while the node runs, deleted on stop;
    /// never 0). [default: 1h, or `mapping_lease` from --config]
    #[arg(long, value_name = "DURATION", value_parser = node::wire::units::parse_duration)]
    pub(crate) mapping_lease: Option<Duration>,
}

impl ReachFlags {
    /// Adds these flags to `config` (flags win over the config file).
    pub(crate) fn apply(&self, config: &mut Config) {
        if self.no_upnp {
            config.upnp = false;
        }
        if self.no_natpmp {
            config.natpmp = false;
        }
        if self.no_pcp {
            config.pcp = false;
        }
        if self.external_port.is_some() {
            config.external_port = self.external_port;
        }
        if let Some(t) = self.reach_timeout {
            config.reach_timeout = t;
        }
        if let Some(l) = self.mapping_lease {
            config.mapping_lease = l;
        }
    }

    /// Whether `run` probes at start: only with a forwarding check, which is what can prove a
    /// mapping (without one nothing would be mapped, and a node with no gateway would wait for
    /// the UPnP discovery bound for nothing; `p2p-node reachability` still shows the gateways).
    pub(crate) fn run_probes(config: &Config) -> bool {
        config.listen && config.forwarding_check.is_some()
    }
}
