//! `p2p-node reachability`.

use std::net::IpAddr;

use anyhow::{Context, Result};
use clap::Args;
use node::{Config, Net};

use crate::flags::{ReachFlags, ServerFlags};

#[derive(Debug, Args)]
pub(crate) struct ReachArgs {
    #[command(flatten)]
    servers: ServerFlags,
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
    /// "ms", "steps": [{"method", "step", "at_ms", "ms", "outcome", "detail"}]}, and with
    /// --rendezvous "role", "role_reason", "observed_wan_ip" (what `run` would choose).
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
    // What `run` would choose with the same servers (role `auto`): the probe's verdict where
    // it proved a port, else what the rendezvous told the node about itself.
    let ready = if net.servers().is_empty() {
        None
    } else {
        Some(net.wait_ready(crate::READY_LIMIT)?)
    };
    // The probe's mapping is deleted now: this command only tells.
    net.stop();
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let (Some(ready), Some(object)) = (&ready, value.as_object_mut()) {
            object.insert("role".into(), ready.role.clone().into());
            object.insert("role_reason".into(), ready.reason.clone().into());
            object.insert(
                "observed_wan_ip".into(),
                ready.wan_ip.map(|ip| ip.to_string()).into(),
            );
        }
        println!("{value}");
    } else {
        print!("{}", report.to_text());
        if let Some(ready) = ready {
            println!(
                "role run would take: {} ({})",
                ready.role,
                ready.reason.as_deref().unwrap_or("as configured")
            );
            if let Some(ip) = ready.wan_ip {
                println!("WAN address (as the rendezvous sees us): {ip}");
            }
        }
    }
    Ok(())
}
