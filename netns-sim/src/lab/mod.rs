//! A running lab: namespaces, links, NAT rules and daemons, torn down on drop.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::sys::{self, SysError};
use crate::topology::{HostInfo, Topology, TopologyError};

mod access;
mod build;
mod child;
mod daemons;
mod wan;

pub use child::LabChild;
pub use wan::STAGE_DAEMON;

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
    /// The WAN emulation could not be set up.
    #[error("WAN emulation: {0}")]
    Wan(String),
    /// A WAN stage daemon died: the links it served carry nothing now.
    #[error(
        "the WAN stage on {host:?} (pid {pid}) is dead, so its links carry nothing; its log {log} ends: {tail}"
    )]
    StageDied {
        /// The namespace's host.
        host: String,
        /// Its pid.
        pid: u32,
        /// Its log file.
        log: String,
        /// The last lines of its log.
        tail: String,
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
    /// exists, else `chronyd` in PATH). The WAN stages' binary is found by
    /// [`crate::wan::stage_binary`].
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
        if hosts.iter().any(|h| h.upstream.is_some()) {
            sys::require_tool("bridge")?;
        }
        if !crate::wan::plan(&hosts, &topology.links).is_empty() {
            sys::require_tool("iptables")?;
            crate::wan::stage_binary().map_err(|e| LabError::Wan(e.to_string()))?;
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
    ///
    /// A WAN stage that died while the lab was up is reported ([`LabError::StageDied`]) after
    /// the teardown.
    pub fn down(mut self) -> Result<(), LabError> {
        self.owned = false;
        let stages = self.check_stages();
        self.reap_daemons();
        Self::teardown(&self.state.prefix, &self.run_dir)?;
        stages
    }

    /// Leaves the lab running after this value is dropped (for `netns-sim up`); returns its
    /// prefix. Daemons keep running; `netns-sim down` removes everything later.
    pub fn detach(mut self) -> String {
        self.owned = false;
        self.daemons.clear();
        self.state.prefix.clone()
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
