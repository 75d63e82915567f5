//! Helpers for the cross-crate integration tests in `tests/tests/`. They panic on failure,
//! as test helpers do.

#![allow(clippy::expect_used, clippy::missing_panics_doc)]

pub mod bench_cli;
pub mod hostile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use node::{Config, Net};
use server_kit::testkit::LineClient;

pub mod pairs;
pub mod prom;
pub mod redis;

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

/// `n` loopback nodes (seeds `seed`, `seed + 1`, ...) that know `rendezvous`, started,
/// advertised and bootstrapped; returns once every one has a connection (panics after 10 s).
pub fn connected_nodes(rendezvous: &[String], n: u64, seed: u64) -> Vec<Net> {
    let mut nets: Vec<Net> = (seed..seed + n)
        .map(|s| loopback_node(rendezvous, s))
        .collect();
    for net in &mut nets {
        net.start().expect("start");
        net.advertise().expect("advertise");
        net.bootstrap().expect("bootstrap");
    }
    assert!(
        turn_all(&mut nets, Duration::from_secs(10), |n| n
            .iter()
            .all(|n| n.connection_count() >= 1)),
        "not every node got a connection within 10 s"
    );
    nets
}

/// The secret [`mailbox_owner`] registers with.
pub const OWNER_SECRET: &str = "secretsecretsecret";

/// A dht-msg client from `ip` that registered the new mailbox `node_id` (secret
/// [`OWNER_SECRET`]) and subscribed with no message pending; panics otherwise.
pub fn mailbox_owner(ip: &str, server: SocketAddr, node_id: &str) -> LineClient {
    let mut owner = LineClient::from(ip, server);
    let registered = owner.ask(&format!("REGISTER {node_id} {OWNER_SECRET}"));
    assert!(
        registered == format!("OK REGISTERED {node_id} NEW"),
        "{registered}"
    );
    assert_eq!(owner.ask("SUBSCRIBE"), "OK SUBSCRIBED 0");
    owner
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

/// A directory of its own under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory named after `name`, the process and the time.
    pub fn new(name: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("p2p-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `p2p-node` to run on lab host `host`: its default identity file (no `--identity`, as a
/// user runs it) lives under a directory of that host's own (`XDG_DATA_HOME`), as it would on
/// a machine of its own. The lab's hosts share this machine's file system: without this, a
/// node started after another stopped would take that one's key file (the first free one)
/// and be that node.
pub fn node_command(lab: &netns_sim::Lab, host: &str) -> std::process::Command {
    let home = std::env::temp_dir()
        .join(format!("p2p-home-{}", lab.prefix()))
        .join(host);
    let mut command = std::process::Command::new(binary("p2p-node"));
    command.env("XDG_DATA_HOME", home);
    // The lab's IPv6 internet is 2001:db8::/32: let the node advertise it.
    command.env("P2P_NODE_LAB_IPV6", "1");
    command
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
