//! Helpers for the cross-crate integration tests in `tests/tests/`. They panic on failure,
//! as test helpers do.

#![allow(clippy::expect_used, clippy::missing_panics_doc)]

pub mod hostile;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use node::{Config, Net};

pub mod pairs;

/// A passive node on 127.0.0.1 that knows `rendezvous`, with short timers for tests.
pub fn loopback_node(rendezvous: &[String], seed: u64) -> Net {
    let mut config = Config::new()
        .with_bind("127.0.0.1".parse().expect("a valid address"))
        .with_max_outbound(2)
        .with_rebootstrap_interval(Duration::from_millis(200))
        .with_alone_rebootstrap_delay(Duration::from_millis(200))
        .with_readvertise_interval(Duration::from_millis(500))
        .with_query_timeout(Duration::from_secs(2))
        .with_seed(seed);
    for r in rendezvous {
        config = config.with_rendezvous(r.clone());
    }
    Net::new(config).expect("a node")
}

/// Turns every node's loop (without waiting) until `done` or `timeout`; returns whether
/// `done` became true.
pub fn turn_all(
    nets: &mut [Net],
    timeout: Duration,
    mut done: impl FnMut(&mut [Net]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for net in nets.iter_mut() {
            net.poll(Some(Duration::ZERO)).expect("a loop turn");
        }
        if done(nets) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Every line received so far on `net`, from any connection.
pub fn take_lines(net: &mut Net) -> Vec<String> {
    net.connections()
        .flat_map(|c| c.lines().collect::<Vec<_>>())
        .collect()
}

/// `target/<profile>/NAME` (a binary of the workspace), from a test (`target/<profile>/deps`)
/// or a bench binary (`target/<profile>`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let mut dir = exe.parent().expect("a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the profile directory");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not built: run `cargo test --workspace` (or `cargo build --workspace`)",
        path.display()
    );
    path
}

/// Whether a netns lab test can run: root and every tool in `tools`. Otherwise it is skipped
/// with a message, or fails when `CI` is set (CI must run it).
pub fn lab_preconditions(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !netns_sim::sys::is_root() {
        missing.push("root (run the tests with sudo)".to_owned());
    }
    for t in tools {
        if netns_sim::sys::find_in_path(t).is_none() {
            missing.push(format!(
                "{t} (Debian package {})",
                netns_sim::sys::package_of(t)
            ));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("netns lab test needs: {}", missing.join(", "));
    assert!(
        std::env::var_os("CI").is_none(),
        "{msg} (CI is set, so this fails)"
    );
    eprintln!("SKIPPED: {msg}");
    false
}
