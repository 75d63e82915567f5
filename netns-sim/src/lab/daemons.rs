//! Daemons the lab runs (miniupnpd, chronyd): started in a host, ready-checked, reaped.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{DaemonInfo, Lab, LabError};
use crate::nat;
use crate::sys;
use crate::topology::HostInfo;

const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Lab {
    pub(super) fn start_daemon(
        &mut self,
        name: &str,
        host: &str,
        program: &Path,
        args: &[&str],
        ready: &dyn Fn() -> bool,
    ) -> Result<(), LabError> {
        let log = self.state.workdir.join(format!("{host}-{name}.log"));
        let derr = |detail: String| LabError::Daemon {
            daemon: name.to_owned(),
            host: host.to_owned(),
            detail,
            log: log.display().to_string(),
        };
        let file = File::create(&log).map_err(|e| derr(e.to_string()))?;
        let file2 = file.try_clone().map_err(|e| derr(e.to_string()))?;
        let mut cmd = sys::in_netns(&self.ns(host), program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            // Its own process group: a Ctrl-C meant for the CLI must not kill it before the
            // lab tears down in order.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| derr(e.to_string()))?;
        let pid = child.id();
        self.state.daemons.push(DaemonInfo {
            name: name.to_owned(),
            host: host.to_owned(),
            pid,
            log: log.clone(),
        });
        self.save()?;
        let deadline = Instant::now() + DAEMON_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                self.daemons.push(child);
                return Err(derr(format!(
                    "exited with {status}: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            if ready() {
                break;
            }
            if Instant::now() > deadline {
                self.daemons.push(child);
                return Err(derr(format!("not ready after {DAEMON_READY_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.daemons.push(child);
        Ok(())
    }

    pub(super) fn start_miniupnpd(&mut self, router: &HostInfo) -> Result<(), LabError> {
        let ns = self.ns(&router.name);
        sys::run_with_input(
            sys::in_netns(&ns, "nft").args(["-f", "-"]),
            Some(&nat::miniupnpd_tables()),
        )?;
        let wd = &self.state.workdir;
        let conf = wd.join(format!("{}-miniupnpd.conf", router.name));
        let leases = wd.join(format!("{}-upnp.leases", router.name));
        let pidfile = wd.join(format!("{}-miniupnpd.pid", router.name));
        let lan = router.lan.map(|l| l.to_string()).unwrap_or_default();
        let uuid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            rand::random::<u32>(),
            rand::random::<u64>() & 0xffff_ffff_ffff
        );
        let ipv6 = router.lan_addr6.map(|listen| nat::MiniupnpdIpv6 {
            listen,
            firewall: crate::ipv6::is_firewalled(router, &self.state.hosts),
        });
        sys::write_file(
            &conf,
            &nat::miniupnpd_config(
                &lan,
                &leases.display().to_string(),
                &uuid,
                router.mapping_protocols,
                ipv6,
            ),
        )?;
        let program = sys::require_tool("miniupnpd")?;
        let conf_s = conf.display().to_string();
        let pid_s = pidfile.display().to_string();
        let ready_ns = ns.clone();
        let protocols = router.mapping_protocols;
        self.start_daemon(
            "miniupnpd",
            &router.name,
            &program,
            &["-d", "-f", &conf_s, "-P", &pid_s],
            &move || {
                (!protocols.upnp() || sys::listening(&ready_ns, "tcp", nat::UPNP_HTTP_PORT))
                    && (!protocols.natpmp() || sys::listening(&ready_ns, "udp", 5351))
            },
        )
    }

    pub(super) fn start_chronyd(
        &mut self,
        host: &HostInfo,
        chronyd: &Path,
    ) -> Result<(), LabError> {
        let wd = &self.state.workdir;
        let conf = wd.join(format!("{}-chrony.conf", host.name));
        // One bind address per family the host has.
        let mut binds = String::new();
        let addrs = [
            host.family.has_v4().then(|| host.addr.to_string()),
            host.addr6.map(|a| a.to_string()),
        ];
        for a in addrs.into_iter().flatten() {
            let _ = writeln!(binds, "bindaddress {a}");
        }
        let text = format!(
            "# netns-sim: a local NTP server that never touches the host clock (chronyd -x)\n\
             local stratum 8\nallow all\n{binds}port 123\ncmdport 0\n\
             pidfile {wd}/{name}-chronyd.pid\ndriftfile {wd}/{name}-chrony.drift\n",
            wd = wd.display(),
            name = host.name
        );
        sys::write_file(&conf, &text)?;
        let conf_s = conf.display().to_string();
        let ns = self.ns(&host.name);
        self.start_daemon(
            "chronyd",
            &host.name.clone(),
            chronyd,
            &["-x", "-d", "-u", "root", "-f", &conf_s],
            &move || sys::listening(&ns, "udp", 123),
        )
    }

    pub(super) fn reap_daemons(&mut self) {
        for mut c in self.daemons.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
