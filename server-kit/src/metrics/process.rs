//! The process figures every metrics endpoint adds, under the names Prometheus' own client
//! libraries use (`process_*`), read from `/proc/self` (Linux). A figure that cannot be read is
//! left out rather than reported as 0.

use std::fs;

use super::{Exposition, gauge_value};

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, fixed at 100 in Linux's
/// user-space ABI whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// Adds `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_threads`, `process_cpu_seconds_total` and
/// `process_start_time_seconds`.
pub fn encode(out: &mut Exposition) {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        let kib = |key: &str| -> Option<i64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse::<i64>().ok()
        };
        if let Some(rss) = kib("VmRSS:") {
            out.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss * 1024,
            );
        }
        if let Some(vm) = kib("VmSize:") {
            out.gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                vm * 1024,
            );
        }
        if let Some(threads) = kib("Threads:") {
            out.gauge("process_threads", "Threads of the process.", threads);
        }
    }
    if let Ok(dir) = fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries while it is read.
        let open = dir.count().saturating_sub(1);
        out.gauge(
            "process_open_fds",
            "Open file descriptors (sockets included).",
            gauge_value(open),
        );
    }
    if let Some(max) = max_fds() {
        out.gauge(
            "process_max_fds",
            "The soft limit on open file descriptors (ulimit -n).",
            max,
        );
    }
    if let Some((cpu, start)) = cpu_and_start() {
        out.counter_f64(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds.",
            cpu,
        );
        if let Some(start) = start {
            out.gauge_f64(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                start,
            );
        }
    }
}

fn max_fds() -> Option<i64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU seconds, and the start time in Unix seconds when the boot time is known.
#[allow(clippy::cast_precision_loss)]
fn cpu_and_start() -> Option<(f64, Option<f64>)> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is fields[N - 3].
    let ticks = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let cpu = (ticks(14)? + ticks(15)?) as f64 / USER_HZ;
    let started = ticks(22).and_then(|since_boot| {
        let boot = fs::read_to_string("/proc/stat").ok()?;
        let btime: u64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(btime as f64 + since_boot as f64 / USER_HZ)
    });
    Some((cpu, started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let mut out = Exposition::default();
        encode(&mut out);
        let text = out.render();
        for name in [
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
