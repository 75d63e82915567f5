//! The lab's side of WAN emulation ([`crate::wan`]): start one stage daemon per namespace that
//! holds queues, then (only once it is bound) insert the iptables rules that feed it; and
//! check that the stages still live.

use super::{Lab, LabError};
use crate::sys;
use crate::wan::{self, StageConfig};

/// The daemon name of a WAN stage in [`super::DaemonInfo`].
pub const STAGE_DAEMON: &str = "wan-stage";

impl Lab {
    pub(super) fn start_wan(&mut self) -> Result<(), LabError> {
        let plans = wan::plan(&self.state.hosts, &self.state.topology.links);
        if plans.is_empty() {
            return Ok(());
        }
        sys::require_tool("iptables")?;
        if self.state.topology.ipv6 {
            sys::require_tool("ip6tables")?;
        }
        let program = wan::stage_binary().map_err(|e| LabError::Wan(e.to_string()))?;
        for plan in plans {
            let config = StageConfig {
                lanes: plan.lanes.clone(),
                seed: self.state.topology.seed,
            };
            let path = self
                .state
                .workdir
                .join(format!("{}-wan-stage.json", plan.host));
            let text = serde_json::to_string_pretty(&config).map_err(|e| LabError::State {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
            sys::write_file(&path, &text)?;
            let log = self
                .state
                .workdir
                .join(format!("{}-{STAGE_DAEMON}.log", plan.host));
            let path_s = path.display().to_string();
            self.start_daemon(
                STAGE_DAEMON,
                &plan.host,
                &program,
                &["wan-stage", "--config", &path_s],
                &move || {
                    std::fs::read_to_string(&log).is_ok_and(|t| t.lines().any(|l| l == "ready"))
                },
            )?;
            let ns = self.ns(&plan.host);
            // Bridged IPv4 must pass iptables for the internet's physdev rules (the default,
            // made sure; routers turn it off, see build.rs).
            let ipv6 = self.state.topology.ipv6;
            if plan.host == super::INTERNET
                && std::path::Path::new(super::build::BRIDGE_NF).exists()
            {
                sys::run(
                    sys::in_netns(&ns, "sysctl")
                        .args(["-qw", "net.bridge.bridge-nf-call-iptables=1"]),
                )?;
                if ipv6 {
                    sys::run(
                        sys::in_netns(&ns, "sysctl")
                            .args(["-qw", "net.bridge.bridge-nf-call-ip6tables=1"]),
                    )?;
                }
            }
            // The same rules for IPv6 in an IPv6 lab: both families take the link's delay
            // and loss (the stage holds packets by queue, whatever their family).
            let tools: &[&str] = if ipv6 {
                &["iptables", "ip6tables"]
            } else {
                &["iptables"]
            };
            for rule in &plan.rules {
                for tool in tools {
                    sys::run(sys::in_netns(&ns, tool).arg("-w").args(rule))?;
                }
            }
        }
        Ok(())
    }

    /// Fails with [`LabError::StageDied`] when a WAN stage daemon of this lab is gone (its
    /// links then carry nothing: see [`crate::wan`]). `exec`, `exec_ok` and `spawn` call it.
    pub fn check_stages(&self) -> Result<(), LabError> {
        for d in self.state.daemons.iter().filter(|d| d.name == STAGE_DAEMON) {
            if !sys::pid_alive(d.pid) {
                let text = std::fs::read_to_string(&d.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                return Err(LabError::StageDied {
                    host: d.host.clone(),
                    pid: d.pid,
                    log: d.log.display().to_string(),
                    tail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                });
            }
        }
        Ok(())
    }
}
