//! Shared helpers of the WAN, carrier-NAT and router-option lab tests: preconditions, probes
//! run inside lab hosts, and a watchdog that tears a lab down when a test overruns its
//! deadline (so even a hung test leaves no namespace behind).

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc
)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns_sim::{Lab, LabChild, RUN_DIR, Topology, sys};

/// The netns-sim binary (probes and WAN stages).
pub const BIN: &str = env!("CARGO_BIN_EXE_netns-sim");

/// Root and `tools`, or skip (fail when `CI` is set).
pub fn ready(tools: &[&str]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    if !sys::is_root() {
        missing.push("root".into());
    }
    missing.extend(
        tools
            .iter()
            .filter(|t| {
                if **t == "chronyd" {
                    netns_sim::LabOptions::default().chronyd.is_none()
                        && sys::find_in_path("chronyd").is_none()
                } else {
                    sys::find_in_path(t).is_none()
                }
            })
            .map(|t| format!("{t} ({})", sys::package_of(t))),
    );
    if missing.is_empty() {
        return true;
    }
    let msg = format!("needs {}", missing.join(", "));
    assert!(std::env::var_os("CI").is_none(), "{msg} (CI is set)");
    eprintln!("SKIPPED: {msg}");
    false
}

/// A lab with a deadline: past it, a watchdog tears the lab down (killing every process in
/// it, so blocked probes return) and the test fails.
pub struct TimedLab {
    pub lab: Lab,
    done: Watchdog,
    started: Instant,
    deadline: Duration,
}

impl TimedLab {
    /// Builds `topology` (the stages find `BIN` through `NETNS_SIM_BIN`) with `deadline`.
    pub fn up(topology: &Topology, deadline: Duration) -> TimedLab {
        // Cargo builds the binary for integration tests; the stages find it next to
        // target/<profile>/deps (see netns_sim::wan::stage_binary).
        assert!(Path::new(BIN).is_file());
        let lab = Lab::up(topology).expect("lab comes up");
        let done = Arc::new(AtomicBool::new(false));
        let (prefix, flag) = (lab.prefix().to_owned(), Arc::clone(&done));
        std::thread::spawn(move || {
            let end = Instant::now() + deadline;
            while Instant::now() < end {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("deadline of {deadline:?} passed: tearing lab {prefix} down");
            let _ = Lab::teardown(&prefix, Path::new(RUN_DIR));
        });
        TimedLab {
            lab,
            done: Watchdog(done),
            started: Instant::now(),
            deadline,
        }
    }

    /// `netns-sim probe ARGS` on `host`: its stdout line, or its stderr as the error.
    pub fn probe(&self, host: &str, args: &[&str]) -> Result<String, String> {
        let mut words = vec![BIN, "probe"];
        words.extend_from_slice(args);
        let out = self.lab.exec(host, &words).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Starts `netns-sim probe ARGS` on `host` and waits until it listens.
    pub fn server(&self, host: &str, args: &[&str]) -> LabChild {
        let child = self
            .lab
            .spawn(host, Command::new(BIN).arg("probe").args(args))
            .unwrap();
        child
            .wait_for_stdout("listening", Duration::from_secs(5))
            .unwrap();
        child
    }

    /// A UDP ping from `host` to the echo server at `to`: the parsed JSON report.
    pub fn ping(&self, host: &str, to: &str, count: u32, interval_us: u64) -> serde_json::Value {
        let line = self
            .probe(
                host,
                &[
                    "udp-ping",
                    to,
                    "--count",
                    &count.to_string(),
                    "--interval-us",
                    &interval_us.to_string(),
                ],
            )
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// Tears the lab down, checks nothing is left, and that the deadline held.
    pub fn finish(self) {
        let prefix = self.lab.prefix().to_owned();
        let pids: Vec<u32> = self.lab.state().daemons.iter().map(|d| d.pid).collect();
        self.done.0.store(true, Ordering::SeqCst);
        assert!(
            self.started.elapsed() < self.deadline,
            "test overran its deadline of {:?}",
            self.deadline
        );
        self.lab.down().unwrap();
        assert_gone(&prefix, &pids);
    }
}

/// Stops the watchdog when the test ends, however it ends.
struct Watchdog(Arc<AtomicBool>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// No namespace, state file or daemon of `prefix` is left.
pub fn assert_gone(prefix: &str, pids: &[u32]) {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        !list.contains(&format!("{prefix}-")),
        "namespaces left:\n{list}"
    );
    assert!(!Path::new(RUN_DIR).join(format!("{prefix}.json")).exists());
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "));
        assert!(!alive, "daemon pid {pid} of {prefix} still runs");
    }
}

/// `ip:port` split.
pub fn split(seen: &str) -> (Ipv4Addr, u16) {
    let (ip, port) = seen
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("not ip:port: {seen:?}"));
    (ip.parse().unwrap(), port.parse().unwrap())
}

/// A JSON number field as u64.
pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}
