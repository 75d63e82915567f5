//! Reading a lab and running things in it: hosts, addresses, exec, spawn, status.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use super::child::{Captured, LabChild, reader_thread};
use super::{Lab, LabError, LabState, namespace_name, state_path};
use crate::sys::{self, SysError};
use crate::topology::{HostInfo, NatKind, Role};

impl Lab {
    /// The lab's unique prefix, e.g. `nsim3fa9c1`.
    pub fn prefix(&self) -> &str {
        &self.state.prefix
    }

    /// The persisted state: hosts, namespaces, daemons.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// Every host, public hosts first, then each router followed by its LAN.
    pub fn hosts(&self) -> &[HostInfo] {
        &self.state.hosts
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Result<&HostInfo, LabError> {
        self.state
            .hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| LabError::UnknownHost {
                host: name.to_owned(),
                prefix: self.state.prefix.clone(),
                known: self
                    .state
                    .hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The namespace of `host`, for `ip netns exec` by hand.
    pub fn namespace(&self, host: &str) -> Result<String, LabError> {
        self.host(host)
            .map(|h| namespace_name(&self.state.prefix, &h.name))
    }

    /// The address of `host`: internet address for public hosts, WAN address for routers,
    /// LAN address for private hosts.
    ///
    /// # Panics
    /// If there is no such host (a test bug); use [`Lab::host`] to handle that case.
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        match self.host(host) {
            Ok(h) => h.addr,
            Err(e) => panic!("{e}"),
        }
    }

    /// The IPv6 address of `host` (see [`crate::ipv6`]): internet address for public hosts,
    /// WAN address for routers, LAN address (also its public one: no NAT66) for private hosts.
    ///
    /// # Panics
    /// If there is no such host, or it has no IPv6 (the lab has none, or the host is
    /// IPv4-only): a test bug; read [`HostInfo::addr6`] to handle that case.
    pub fn addr6(&self, host: &str) -> Ipv6Addr {
        match self.host(host) {
            Ok(HostInfo { addr6: Some(a), .. }) => *a,
            Ok(h) => panic!(
                "host {host:?} of lab {} has no IPv6 address (lab ipv6: {}, family: {})",
                self.state.prefix, self.state.topology.ipv6, h.family
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// The address under which `host` appears on the internet: the WAN address of the outermost
    /// translating router on its way out (its router's, or behind a carrier NAT the
    /// carrier's), else [`Lab::addr`].
    ///
    /// # Panics
    /// If there is no such host.
    pub fn public_addr(&self, host: &str) -> Ipv4Addr {
        let h = match self.host(host) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        };
        let mut addr = h.addr;
        let mut cur = h;
        for _ in 0..self.state.hosts.len() {
            let next = match cur.role {
                Role::Private => cur.router.as_deref(),
                Role::Router => cur.upstream.as_deref(),
                Role::Public => None,
            };
            let Some(up) = next.and_then(|n| self.host(n).ok()) else {
                break;
            };
            if up.nat != NatKind::None {
                addr = up.addr;
            }
            cur = up;
        }
        addr
    }

    /// A [`Command`] that runs `program` inside `host`'s namespace (stdio inherited by default).
    pub fn command(
        &self,
        host: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command, LabError> {
        Ok(sys::in_netns(&self.namespace(host)?, program))
    }

    /// Runs `argv` in `host` to completion and returns its output, whatever its exit status.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Result<Output, LabError> {
        self.check_stages()?;
        let (program, rest) = argv.split_first().ok_or_else(|| LabError::Process {
            host: host.to_owned(),
            cmd: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let mut cmd = self.command(host, program)?;
        cmd.args(rest).stdin(Stdio::null());
        cmd.output().map_err(|source| LabError::Process {
            host: host.to_owned(),
            cmd: argv.join(" "),
            source,
        })
    }

    /// Runs `argv` in `host`; fails unless it exits 0; returns its standard output.
    pub fn exec_ok(&self, host: &str, argv: &[&str]) -> Result<String, LabError> {
        let out = self.exec(host, argv)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(SysError::Failed {
                cmd: format!("[{host}] {}", argv.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }
            .into())
        }
    }

    /// Starts `cmd` (program, arguments, environment and directory are taken from it) inside
    /// `host`. Its stdin is a pipe, stdout and stderr are collected; it is killed on drop.
    ///
    /// ```no_run
    /// # use netns_sim::{Lab, Topology, TwoNats};
    /// # use std::{process::Command, time::Duration};
    /// # let lab = Lab::up(&Topology::two_nats(TwoNats::default()))?;
    /// let server = lab.spawn("pub", Command::new("rendezvous").args(["--listen", "0.0.0.0:8000"]))?;
    /// server.wait_for_stdout("listening", Duration::from_secs(5))?;
    /// # Ok::<(), netns_sim::LabError>(())
    /// ```
    pub fn spawn(&self, host: &str, cmd: &Command) -> Result<LabChild, LabError> {
        self.check_stages()?;
        let mut real = self.command(host, cmd.get_program())?;
        real.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => real.env(k, v),
                None => real.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            real.current_dir(dir);
        }
        real.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = sys::describe(cmd);
        let mut child = real.spawn().map_err(|source| LabError::Process {
            host: host.to_owned(),
            cmd: shown.clone(),
            source,
        })?;
        let shared = Arc::new(Captured::default());
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(reader_thread(out, Arc::clone(&shared), false));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(reader_thread(err, Arc::clone(&shared), true));
        }
        Ok(LabChild {
            child,
            host: host.to_owned(),
            cmd: shown,
            shared,
            readers,
        })
    }

    /// A human-readable table of hosts, addresses, NAT kinds and daemons.
    pub fn status_text(&self) -> String {
        let s = &self.state;
        let mut out = format!(
            "lab {} (state {})\n",
            s.prefix,
            state_path(&self.run_dir, &s.prefix).display()
        );
        let _ = writeln!(
            out,
            "  {:<8} {:<8} {:<16} {:<20} {:<16} namespace",
            "host", "role", "address", "nat", "lan"
        );
        for h in &s.hosts {
            let role = match h.role {
                Role::Public => "public",
                Role::Router => "router",
                Role::Private => "private",
            };
            let nat = match h.role {
                Role::Public => "-".to_owned(),
                Role::Router => h.nat.to_string(),
                Role::Private => format!("behind {}", h.router.as_deref().unwrap_or("?")),
            };
            let lan = match h.role {
                Role::Router => format!(
                    "{} ({})",
                    h.lan.map(|l| l.to_string()).unwrap_or_default(),
                    h.lan_addr.map(|a| a.to_string()).unwrap_or_default()
                ),
                Role::Private => format!(
                    "gw {}",
                    h.lan_addr.map(|a| a.to_string()).unwrap_or_default()
                ),
                Role::Public => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<8} {:<8} {:<16} {:<20} {:<16} {}",
                h.name,
                role,
                h.addr,
                nat,
                lan,
                namespace_name(&s.prefix, &h.name)
            );
        }
        out.push_str(&crate::ipv6::status(&s.hosts));
        for h in s.hosts.iter().filter(|h| h.role == Role::Router) {
            let mut opts = Vec::new();
            if let Some(up) = &h.upstream {
                opts.push(format!("behind carrier {up}"));
            }
            if h.hairpin {
                opts.push("hairpin".to_owned());
            }
            if h.unsolicited != crate::Unsolicited::Drop {
                opts.push(format!("unsolicited {}", h.unsolicited));
            }
            if !h.timeouts.is_default() {
                opts.push(format!("timeouts {}", h.timeouts));
            }
            if !opts.is_empty() {
                let _ = writeln!(out, "  router {}: {}", h.name, opts.join(", "));
            }
        }
        for (host, link) in &s.topology.links {
            let show =
                |p: Option<crate::LinkProfile>| p.map_or("instant".to_owned(), |p| p.to_string());
            let _ = writeln!(
                out,
                "  link {host}: up {}; down {}",
                show(link.up),
                show(link.down)
            );
        }
        if !s.topology.links.is_empty() {
            let _ = writeln!(out, "  wan seed {}", s.topology.seed);
        }
        if s.daemons.is_empty() {
            out.push_str("  daemons: none\n");
        }
        for d in &s.daemons {
            let alive = if sys::pid_alive(d.pid) {
                "running"
            } else {
                "DEAD"
            };
            let _ = writeln!(
                out,
                "  daemon {} on {} pid {} {} (log {})",
                d.name,
                d.host,
                d.pid,
                alive,
                d.log.display()
            );
        }
        out
    }
}
