//! `p2p-node reachability`, and the reachability flags `run` shares.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use node::{Config, Net};

/// How the node finds out whether peers can reach it (see `p2p-node reachability --help`).
#[derive(Debug, Args)]
pub(crate) struct ReachFlags {
    /// Do not try UPnP IGD port mapping.
    #[arg(long)]
    pub(crate) no_upnp: bool,
    /// Do not try NAT-PMP port mapping.
    #[arg(long)]
    pub(crate) no_natpmp: bool,
    /// The router's port that reaches our listening port: forwarded by hand (with --no-upnp
    /// --no-natpmp), or the external port to ask UPnP/NAT-PMP for (default: the listening
    /// port). Checked with the forwarding check when one is given, else trusted.
    #[arg(long, value_name = "PORT")]
    pub(crate) external_port: Option<u16>,
    /// Bound on the whole probe: gateways (at most 2/3 of it), mapping and proof.
    /// [default: 3s, or `reach_timeout` from --config]
    #[arg(long, value_name = "DURATION", value_parser = node::units::parse_duration)]
    pub(crate) reach_timeout: Option<Duration>,
    /// Lease asked for a mapping (renewed at half-life while the node runs, deleted on stop;
    /// never 0). [default: 1h, or `mapping_lease` from --config]
    #[arg(long, value_name = "DURATION", value_parser = node::units::parse_duration)]
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

#[derive(Debug, Args)]
pub(crate) struct ReachArgs {
    #[command(flatten)]
    servers: crate::unl_cmd::ServerFlags,
    #[command(flatten)]
    reach: ReachFlags,
    /// Address to listen on while probing (its LAN address is the mapping's target when it
    /// is a specific one).
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Port to listen on while probing (0: any free port). Use the port `run` will use to
    /// test exactly that.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Print one JSON object: {"node_type", "forwarding", "proven", "wan_ip",
    /// "wan_ip_source", "external_port", "lan_ip", "listen_port", "nat", "mapping", "reason",
    /// "ms", "steps": [{"method", "step", "at_ms", "ms", "outcome", "detail"}]}.
    #[arg(long)]
    json: bool,
}

pub(crate) fn reachability(args: &ReachArgs) -> Result<()> {
    let mut config = Config::new().with_bind(args.bind).with_port(args.port);
    args.servers.apply(&mut config);
    args.reach.apply(&mut config);
    let mut net = Net::new(config)?;
    net.start()?;
    let report = net.probe_reachability().context("reachability probe")?;
    // The probe's mapping is deleted now: this command only tells.
    net.stop();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
