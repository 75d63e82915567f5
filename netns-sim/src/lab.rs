//! A running lab: namespaces, links, NAT rules and daemons, torn down on drop.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::nat;
use crate::sys::{self, SysError};
use crate::topology::{HostInfo, NatKind, Role, Topology, TopologyError};

/// Where lab state files live by default: `/run/netns-sim/<prefix>.json` and a work
/// directory `/run/netns-sim/<prefix>/` (daemon configs and logs).
pub const RUN_DIR: &str = "/run/netns-sim";
/// Every lab prefix starts with this, followed by 6 hex digits.
pub const PREFIX_STEM: &str = "nsim";
/// Environment variable naming the `chronyd` binary to use.
pub const CHRONYD_ENV: &str = "NETNS_SIM_CHRONYD";

/// Where `scripts/install-deps.sh` unpacks chrony (`apt-get download` + `dpkg -x`, so the host's
/// time service is left alone). Used when `$NETNS_SIM_CHRONYD` is unset and the file exists.
pub const UNPACKED_CHRONYD: &str = "/opt/p2p-lab/chrony/usr/sbin/chronyd";
/// Name of the namespace holding the internet bridge: `<prefix>-internet`.
pub const INTERNET: &str = "internet";

const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(10);
const KILL_GRACE: Duration = Duration::from_millis(1500);

/// Errors from building, using or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A system tool failed or is missing, or we are not root.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The topology is invalid.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// No host of that name in this lab.
    #[error("host {host:?} not found in lab {prefix:?} (hosts: {known})")]
    UnknownHost {
        /// The name asked for.
        host: String,
        /// The lab.
        prefix: String,
        /// The hosts that exist, comma-separated.
        known: String,
    },
    /// No state file for that prefix.
    #[error("lab {0:?} not found in {RUN_DIR} (is it up? see `netns-sim status`)")]
    NotFound(String),
    /// No lab is up.
    #[error("no lab is up (start one with `netns-sim up`)")]
    NoLab,
    /// Several labs are up and none was named.
    #[error("several labs are up ({0}): choose one with --lab PREFIX")]
    Ambiguous(String),
    /// The state file could not be read or written.
    #[error("lab state file {path}: {detail}")]
    State {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// A daemon did not start.
    #[error("{daemon} on {host:?} did not start: {detail} (log: {log})")]
    Daemon {
        /// The daemon name.
        daemon: String,
        /// The host.
        host: String,
        /// What went wrong.
        detail: String,
        /// Its log file.
        log: String,
    },
    /// A process spawned in the lab failed to start or be read.
    #[error("process {cmd:?} on {host:?}: {source}")]
    Process {
        /// The host.
        host: String,
        /// The command.
        cmd: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Waiting for something timed out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        after: Duration,
    },
}

/// A daemon the lab started (miniupnpd, chronyd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// `miniupnpd` or `chronyd`.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its pid (in the host's pid namespace: namespaces here are network-only).
    pub pid: u32,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
}

/// Everything `status` and `down` need to know about a lab, persisted as JSON in
/// `/run/netns-sim/<prefix>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// The unique prefix, e.g. `nsim3fa9c1`.
    pub prefix: String,
    /// The topology as given.
    pub topology: Topology,
    /// Every host, resolved.
    pub hosts: Vec<HostInfo>,
    /// Every namespace of the lab, including `<prefix>-internet`.
    pub namespaces: Vec<String>,
    /// Daemons started.
    pub daemons: Vec<DaemonInfo>,
    /// Directory with daemon configs and logs.
    pub workdir: PathBuf,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Use this prefix instead of a random `nsimXXXXXX` one.
    pub prefix: Option<String>,
    /// The `chronyd` binary (default: `$NETNS_SIM_CHRONYD`, else [`UNPACKED_CHRONYD`] if it
    /// exists, else `chronyd` in PATH).
    pub chronyd: Option<PathBuf>,
    /// Directory for state files (default [`RUN_DIR`]).
    pub run_dir: PathBuf,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            prefix: None,
            chronyd: std::env::var_os(CHRONYD_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    let unpacked = PathBuf::from(UNPACKED_CHRONYD);
                    unpacked.is_file().then_some(unpacked)
                }),
            run_dir: PathBuf::from(RUN_DIR),
        }
    }
}

/// A running lab. Dropping an owned lab tears it down (daemons killed by pid, namespaces
/// deleted), also while unwinding from a panic.
///
/// ```no_run
/// use netns_sim::{Lab, NatKind, Topology, TwoNats};
/// let lab = Lab::up(&Topology::two_nats(TwoNats { a: NatKind::FullCone, ..TwoNats::default() }))?;
/// let out = lab.exec("alice", &["ping", "-c1", &lab.addr("pub").to_string()])?;
/// assert!(out.status.success());
/// lab.down()?;
/// # Ok::<(), netns_sim::LabError>(())
/// ```
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    run_dir: PathBuf,
    owned: bool,
    daemons: Vec<Child>,
}

/// The namespace name of `host` in lab `prefix`.
pub fn namespace_name(prefix: &str, host: &str) -> String {
    format!("{prefix}-{host}")
}

fn state_path(run_dir: &Path, prefix: &str) -> PathBuf {
    run_dir.join(format!("{prefix}.json"))
}

fn is_lab_prefix(s: &str) -> bool {
    s.strip_prefix(PREFIX_STEM)
        .is_some_and(|hex| hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

impl Lab {
    /// Builds a lab from `topology` with default options. Needs root.
    pub fn up(topology: &Topology) -> Result<Lab, LabError> {
        Self::up_with(topology, &LabOptions::default())
    }

    /// Builds a lab from `topology`. On error, whatever was built is torn down.
    pub fn up_with(topology: &Topology, opts: &LabOptions) -> Result<Lab, LabError> {
        sys::require_root()?;
        sys::require_tool("ip")?;
        sys::require_tool("nft")?;
        sys::require_tool("ss")?;
        sys::require_tool("kill")?;
        let hosts = topology.resolve()?;
        if hosts.iter().any(|h| h.upnp) {
            sys::require_tool("miniupnpd")?;
        }
        let chronyd = if hosts.iter().any(|h| h.ntp) {
            Some(match &opts.chronyd {
                Some(p) if p.is_file() => p.clone(),
                Some(p) => {
                    return Err(SysError::MissingTool {
                        tool: p.display().to_string(),
                        package: sys::package_of("chronyd").to_owned(),
                    }
                    .into());
                }
                None => sys::require_tool("chronyd")?,
            })
        } else {
            None
        };
        std::fs::create_dir_all(&opts.run_dir).map_err(|e| LabError::State {
            path: opts.run_dir.display().to_string(),
            detail: e.to_string(),
        })?;
        let prefix = match &opts.prefix {
            Some(p) => p.clone(),
            None => fresh_prefix(&opts.run_dir)?,
        };
        let workdir = opts.run_dir.join(&prefix);
        std::fs::create_dir_all(&workdir).map_err(|e| LabError::State {
            path: workdir.display().to_string(),
            detail: e.to_string(),
        })?;
        let mut namespaces = vec![namespace_name(&prefix, INTERNET)];
        namespaces.extend(hosts.iter().map(|h| namespace_name(&prefix, &h.name)));
        let mut lab = Lab {
            state: LabState {
                prefix,
                topology: topology.clone(),
                hosts,
                namespaces,
                daemons: Vec::new(),
                workdir,
                created_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            },
            run_dir: opts.run_dir.clone(),
            owned: true,
            daemons: Vec::new(),
        };
        // Persist first, so that `down` can clean up even a half-built lab.
        lab.save()?;
        let started = Instant::now();
        lab.build(chronyd.as_deref())?;
        lab.save()?;
        tracing::info!(prefix = %lab.state.prefix, elapsed = ?started.elapsed(), "lab up");
        Ok(lab)
    }

    /// Attaches to a lab started elsewhere (e.g. by `netns-sim up`). The returned value does
    /// not own the lab: dropping it leaves the lab running; [`Lab::down`] still tears it down.
    pub fn attach(prefix: &str, run_dir: &Path) -> Result<Lab, LabError> {
        let path = state_path(run_dir, prefix);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LabError::NotFound(prefix.to_owned())
            } else {
                LabError::State {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                }
            }
        })?;
        let state: LabState = serde_json::from_str(&text).map_err(|e| LabError::State {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Ok(Lab {
            state,
            run_dir: run_dir.to_owned(),
            owned: false,
            daemons: Vec::new(),
        })
    }

    /// The prefixes of all labs with a state file in `run_dir`, sorted.
    pub fn list(run_dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(run_dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .filter(|p| is_lab_prefix(p))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The one lab that is up, or the one named: what `exec` and `status` act on.
    pub fn find(prefix: Option<&str>, run_dir: &Path) -> Result<Lab, LabError> {
        if let Some(p) = prefix {
            return Self::attach(p, run_dir);
        }
        let labs = Self::list(run_dir);
        match labs.as_slice() {
            [] => Err(LabError::NoLab),
            [one] => Self::attach(one, run_dir),
            many => Err(LabError::Ambiguous(many.join(", "))),
        }
    }

    /// Tears down lab `prefix`: kills every process in its namespaces (daemons by their
    /// recorded pid too), deletes the namespaces (and so their veths), removes its state.
    /// Idempotent: also cleans a half-built lab or stray `<prefix>-*` namespaces.
    pub fn teardown(prefix: &str, run_dir: &Path) -> Result<(), LabError> {
        let mut namespaces: Vec<String> = Vec::new();
        let mut pids: Vec<u32> = Vec::new();
        if let Ok(lab) = Self::attach(prefix, run_dir) {
            namespaces.extend(lab.state.namespaces.iter().cloned());
            pids.extend(lab.state.daemons.iter().map(|d| d.pid));
        }
        let stem = format!("{prefix}-");
        for ns in sys::list_netns()? {
            if ns.starts_with(&stem) && !namespaces.contains(&ns) {
                namespaces.push(ns);
            }
        }
        let existing = sys::list_netns()?;
        namespaces.retain(|ns| existing.contains(ns));
        // Only kill recorded pids that still live in one of our namespaces (pids get reused).
        let mut in_ns: Vec<u32> = namespaces
            .iter()
            .flat_map(|ns| sys::netns_pids(ns))
            .collect();
        pids.retain(|p| in_ns.contains(p));
        in_ns.extend(pids);
        in_ns.sort_unstable();
        in_ns.dedup();
        if !in_ns.is_empty() {
            sys::kill_pids(&in_ns, "TERM");
            let deadline = Instant::now() + KILL_GRACE;
            while Instant::now() < deadline && in_ns.iter().any(|p| sys::pid_alive(*p)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let left: Vec<u32> = in_ns.into_iter().filter(|p| sys::pid_alive(*p)).collect();
            sys::kill_pids(&left, "KILL");
        }
        let mut first_err = None;
        for ns in &namespaces {
            if let Err(e) = sys::ip(&["netns", "del", ns]) {
                first_err.get_or_insert(e);
            }
        }
        let _ = std::fs::remove_file(state_path(run_dir, prefix));
        let _ = std::fs::remove_dir_all(run_dir.join(prefix));
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Tears down every lab found in `run_dir` and every stray `nsimXXXXXX-*` namespace.
    /// Returns the prefixes torn down.
    pub fn teardown_all(run_dir: &Path) -> Result<Vec<String>, LabError> {
        let mut prefixes = Self::list(run_dir);
        for ns in sys::list_netns()? {
            if let Some((p, _)) = ns.split_once('-')
                && is_lab_prefix(p)
                && !prefixes.iter().any(|x| x == p)
            {
                prefixes.push(p.to_owned());
            }
        }
        for p in &prefixes {
            Self::teardown(p, run_dir)?;
        }
        Ok(prefixes)
    }

    /// Tears the lab down now, reporting errors (drop does the same, silently).
    pub fn down(mut self) -> Result<(), LabError> {
        self.owned = false;
        self.reap_daemons();
        Self::teardown(&self.state.prefix, &self.run_dir)
    }

    /// Leaves the lab running after this value is dropped (for `netns-sim up`); returns its
    /// prefix. Daemons keep running; `netns-sim down` removes everything later.
    pub fn detach(mut self) -> String {
        self.owned = false;
        self.daemons.clear();
        self.state.prefix.clone()
    }

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

    /// The address under which `host` appears on the internet: its router's WAN address for a
    /// private host behind a NAT, else [`Lab::addr`].
    ///
    /// # Panics
    /// If there is no such host.
    pub fn public_addr(&self, host: &str) -> Ipv4Addr {
        let h = match self.host(host) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        };
        match (&h.router, h.nat) {
            (Some(r), kind) if kind != NatKind::None => self.addr(r),
            _ => h.addr,
        }
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

    fn save(&self) -> Result<(), LabError> {
        let path = state_path(&self.run_dir, &self.state.prefix);
        let err = |detail: String| LabError::State {
            path: path.display().to_string(),
            detail,
        };
        let text = serde_json::to_string_pretty(&self.state).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))
    }

    fn ns(&self, host: &str) -> String {
        namespace_name(&self.state.prefix, host)
    }

    fn build(&mut self, chronyd: Option<&Path>) -> Result<(), LabError> {
        let internet = self.state.topology.internet;
        let sw = self.ns(INTERNET);
        for ns in &self.state.namespaces {
            sys::ip(&["netns", "add", ns])?;
        }
        for ns in &self.state.namespaces {
            sys::ip_in(ns, &["link", "set", "lo", "up"])?;
            let forward = if ns == &sw { "0" } else { "1" };
            sys::run(sys::in_netns(ns, "sysctl").args([
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                &format!("net.ipv4.ip_forward={forward}"),
            ]))?;
        }
        sys::ip_in(
            &sw,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        sys::ip_in(&sw, &["link", "set", "br0", "up"])?;
        let hosts = self.state.hosts.clone();
        let len = internet.prefix_len().to_string();
        for (port, h) in hosts.iter().filter(|h| h.role != Role::Private).enumerate() {
            let ns = self.ns(&h.name);
            let ifname = if h.role == Role::Router {
                nat::WAN_IF
            } else {
                "eth0"
            };
            let p = format!("p{port}");
            sys::ip_in(
                &sw,
                &[
                    "link", "add", &p, "type", "veth", "peer", "name", ifname, "netns", &ns,
                ],
            )?;
            sys::ip_in(&sw, &["link", "set", &p, "master", "br0", "up"])?;
            sys::ip_in(
                &ns,
                &["addr", "add", &format!("{}/{len}", h.addr), "dev", ifname],
            )?;
            sys::ip_in(&ns, &["link", "set", ifname, "up"])?;
        }
        for r in hosts.iter().filter(|h| h.role == Role::Router) {
            self.build_router(r, &hosts)?;
        }
        for r in hosts.iter().filter(|h| h.upnp) {
            self.start_miniupnpd(r)?;
        }
        if let Some(chronyd) = chronyd {
            for h in hosts.iter().filter(|h| h.ntp) {
                self.start_chronyd(h, chronyd)?;
            }
        }
        Ok(())
    }

    fn build_router(&self, r: &HostInfo, hosts: &[HostInfo]) -> Result<(), LabError> {
        let ns = self.ns(&r.name);
        let (Some(lan), Some(gw)) = (r.lan, r.lan_addr) else {
            return Ok(());
        };
        let lan_len = lan.prefix_len().to_string();
        sys::ip_in(
            &ns,
            &[
                "link",
                "add",
                nat::LAN_IF,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        sys::ip_in(
            &ns,
            &[
                "addr",
                "add",
                &format!("{gw}/{lan_len}"),
                "dev",
                nat::LAN_IF,
            ],
        )?;
        sys::ip_in(&ns, &["link", "set", nat::LAN_IF, "up"])?;
        let lan_hosts = hosts
            .iter()
            .filter(|h| h.router.as_deref() == Some(r.name.as_str()));
        for (j, h) in lan_hosts.enumerate() {
            let hns = self.ns(&h.name);
            let l = format!("l{j}");
            sys::ip_in(
                &ns,
                &[
                    "link", "add", &l, "type", "veth", "peer", "name", "eth0", "netns", &hns,
                ],
            )?;
            sys::ip_in(&ns, &["link", "set", &l, "master", nat::LAN_IF, "up"])?;
            sys::ip_in(
                &hns,
                &[
                    "addr",
                    "add",
                    &format!("{}/{lan_len}", h.addr),
                    "dev",
                    "eth0",
                ],
            )?;
            sys::ip_in(&hns, &["link", "set", "eth0", "up"])?;
            sys::ip_in(&hns, &["route", "add", "default", "via", &gw.to_string()])?;
        }
        sys::run_with_input(
            sys::in_netns(&ns, "nft").args(["-f", "-"]),
            Some(&nat::router_ruleset(r.nat, r.addr)),
        )?;
        if r.nat == NatKind::None {
            // A plain router: everyone on the internet segment routes its LAN through it.
            for other in hosts
                .iter()
                .filter(|o| o.role != Role::Private && o.name != r.name)
            {
                sys::ip_in(
                    &self.ns(&other.name),
                    &["route", "add", &lan.to_string(), "via", &r.addr.to_string()],
                )?;
            }
        }
        Ok(())
    }

    fn start_daemon(
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

    fn start_miniupnpd(&mut self, router: &HostInfo) -> Result<(), LabError> {
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
        sys::write_file(
            &conf,
            &nat::miniupnpd_config(
                &lan,
                &leases.display().to_string(),
                &uuid,
                router.mapping_protocols,
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

    fn start_chronyd(&mut self, host: &HostInfo, chronyd: &Path) -> Result<(), LabError> {
        let wd = &self.state.workdir;
        let conf = wd.join(format!("{}-chrony.conf", host.name));
        let text = format!(
            "# netns-sim: a local NTP server that never touches the host clock (chronyd -x)\n\
             local stratum 8\nallow all\nbindaddress {addr}\nport 123\ncmdport 0\n\
             pidfile {wd}/{name}-chronyd.pid\ndriftfile {wd}/{name}-chrony.drift\n",
            addr = host.addr,
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

    fn reap_daemons(&mut self) {
        for mut c in self.daemons.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            self.reap_daemons();
            if let Err(e) = Self::teardown(&self.state.prefix, &self.run_dir) {
                tracing::warn!(prefix = %self.state.prefix, error = %e, "lab teardown failed");
            }
        }
    }
}

fn fresh_prefix(run_dir: &Path) -> Result<String, LabError> {
    let existing = sys::list_netns()?;
    loop {
        let p = format!("{PREFIX_STEM}{:06x}", rand::random::<u32>() & 0x00ff_ffff);
        let stem = format!("{p}-");
        if !state_path(run_dir, &p).exists() && !existing.iter().any(|n| n.starts_with(&stem)) {
            return Ok(p);
        }
    }
}

#[derive(Debug, Default)]
struct Captured {
    data: Mutex<CapturedData>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct CapturedData {
    stdout: String,
    stderr: String,
    open_streams: u8,
}

impl Captured {
    fn lock(&self) -> MutexGuard<'_, CapturedData> {
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn reader_thread(
    mut r: impl Read + Send + 'static,
    shared: Arc<Captured>,
    is_err: bool,
) -> JoinHandle<()> {
    shared.lock().open_streams += 1;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let mut d = shared.lock();
                    if is_err {
                        d.stderr.push_str(&text);
                    } else {
                        d.stdout.push_str(&text);
                    }
                    drop(d);
                    shared.changed.notify_all();
                }
            }
        }
        shared.lock().open_streams -= 1;
        shared.changed.notify_all();
    })
}

/// A process running inside a lab host (see [`Lab::spawn`]). Killed and reaped on drop.
#[derive(Debug)]
pub struct LabChild {
    child: Child,
    host: String,
    cmd: String,
    shared: Arc<Captured>,
    readers: Vec<JoinHandle<()>>,
}

impl LabChild {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The host it runs on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Its standard input.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.child.stdin.as_mut()
    }

    /// Writes `line` and a newline to its standard input.
    pub fn send_line(&mut self, line: &str) -> Result<(), LabError> {
        let err = |source| LabError::Process {
            host: self.host.clone(),
            cmd: self.cmd.clone(),
            source,
        };
        let stdin = self.child.stdin.as_mut().ok_or_else(|| {
            err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdin closed",
            ))
        })?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(err)
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.shared.lock().stdout.clone()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.shared.lock().stderr.clone()
    }

    /// Waits until a line of its stdout contains `needle`; returns that line. Fails on
    /// timeout or when its stdout closes first.
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> Result<String, LabError> {
        let deadline = Instant::now() + timeout;
        let mut d = self.shared.lock();
        loop {
            if let Some(line) = d.stdout.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            let now = Instant::now();
            if now >= deadline || d.open_streams == 0 {
                let why = if d.open_streams == 0 {
                    "output closed"
                } else {
                    "no match"
                };
                return Err(LabError::Timeout {
                    what: format!(
                        "{needle:?} in stdout of {:?} on {:?} ({why}; stdout: {:?}; stderr: {:?})",
                        self.cmd, self.host, d.stdout, d.stderr
                    ),
                    after: timeout,
                });
            }
            d = self
                .shared
                .changed
                .wait_timeout(d, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LabError> {
        self.child.try_wait().map_err(|source| LabError::Process {
            host: self.host.clone(),
            cmd: self.cmd.clone(),
            source,
        })
    }

    /// Waits up to `timeout` for it to exit (then all its output has been collected).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("{:?} on {:?} to exit", self.cmd, self.host),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        self.kill();
    }
}
