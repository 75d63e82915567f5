//! Running system tools (`ip`, `nft`, daemons) and checking the preconditions: root, tools.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Errors from running system tools.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// The process does not run as root.
    #[error(
        "netns-sim needs root (network namespaces, nftables): effective uid is {euid}; run it with sudo"
    )]
    NotRoot {
        /// The effective uid found.
        euid: u32,
    },
    /// A required tool is not installed.
    #[error("required tool {tool:?} not found in PATH: install the Debian package {package:?}")]
    MissingTool {
        /// The executable.
        tool: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// A command could not be started.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// The effective uid of this process, read from `/proc/self/status` (0 if unreadable is not
/// assumed: unreadable gives `u32::MAX`).
pub fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|euid| euid.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    effective_uid() == 0
}

/// Fails with [`SysError::NotRoot`] unless running as root.
pub fn require_root() -> Result<(), SysError> {
    match effective_uid() {
        0 => Ok(()),
        euid => Err(SysError::NotRoot { euid }),
    }
}

/// The Debian package that provides `tool`, for error messages.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "ip" | "ss" | "bridge" => "iproute2",
        "nft" => "nftables",
        "iptables" => "iptables",
        "conntrack" => "conntrack",
        "miniupnpd" => "miniupnpd (with miniupnpd-nftables)",
        "upnpc" => "miniupnpc",
        "natpmpc" => "natpmpc",
        "chronyd" => "chrony (or `apt-get download chrony` + `dpkg -x`, then NETNS_SIM_CHRONYD)",
        "kill" => "procps",
        _ => "unknown",
    }
}

/// Looks `name` up in `PATH` (and in `/usr/sbin`, `/sbin`, which non-root PATHs often lack).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Finds `tool` or fails naming the Debian package to install.
pub fn require_tool(tool: &str) -> Result<PathBuf, SysError> {
    find_in_path(tool).ok_or_else(|| SysError::MissingTool {
        tool: tool.to_owned(),
        package: package_of(tool).to_owned(),
    })
}

/// A shell-like rendering of a command, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let _ = write!(s, " {}", a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, capturing output; fails unless it exits with status 0.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, SysError> {
    run_with_input(cmd, None)
}

/// Like [`run`], writing `input` to the command's standard input first.
pub(crate) fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Result<Output, SysError> {
    let shown = describe(cmd);
    tracing::debug!(cmd = %shown, "run");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| SysError::Spawn {
        cmd: shown.clone(),
        source,
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| SysError::Spawn {
                cmd: shown.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| SysError::Spawn {
        cmd: shown.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(SysError::Failed {
            cmd: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// `ip` with the given arguments.
pub(crate) fn ip(args: &[&str]) -> Result<Output, SysError> {
    run(Command::new("ip").args(args))
}

/// `ip -n NS` with the given arguments.
pub(crate) fn ip_in(ns: &str, args: &[&str]) -> Result<Output, SysError> {
    run(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// A command that runs `program` inside namespace `ns` (`ip netns exec NS PROGRAM`).
pub(crate) fn in_netns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// The names of all network namespaces (`ip netns list`).
pub(crate) fn list_netns() -> Result<Vec<String>, SysError> {
    let out = ip(&["netns", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// The pids of processes living in namespace `ns` (`ip netns pids`).
pub(crate) fn netns_pids(ns: &str) -> Vec<u32> {
    ip(&["netns", "pids", ns])
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `signal` (e.g. `TERM`, `KILL`) to each pid, ignoring pids that are gone.
pub(crate) fn kill_pids(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{signal}"));
    for p in pids {
        cmd.arg(p.to_string());
    }
    // Some pids may already have exited: that is fine.
    let _ = run(&mut cmd);
}

/// Whether a process with this pid exists (and is not a zombie).
pub(crate) fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Whether something listens on `port` (`tcp` or `udp`) inside namespace `ns`.
pub(crate) fn listening(ns: &str, proto: &str, port: u16) -> bool {
    let flag = if proto == "udp" { "-lunH" } else { "-ltnH" };
    let Ok(out) = run(in_netns(ns, "ss").arg(flag)) else {
        return false;
    };
    let suffix = format!(":{port}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .any(|local| local.ends_with(&suffix))
}

/// Writes a file, for configuration files of daemons.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), SysError> {
    std::fs::write(path, text).map_err(|source| SysError::Spawn {
        cmd: format!("write {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_names_packages() {
        assert!(find_in_path("sh").is_some());
        let err = require_tool("surely-not-a-tool-xyz").unwrap_err();
        assert!(err.to_string().contains("surely-not-a-tool-xyz"));
        assert_eq!(package_of("upnpc"), "miniupnpc");
    }

    #[test]
    fn failed_command_reports_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("oops") && msg.contains('3'), "{msg}");
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(effective_uid() != u32::MAX);
    }
}
