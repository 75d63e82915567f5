//! `unl-connect-bench`: time from `connect()` to an established connection, by method, in a
//! netns-sim lab (needs root). alice has no NAT (passive), bob sits behind a port-restricted
//! NAT; dht-msg runs on `pub`. Each run is a fresh `p2p-node connect --no-stdin --json`
//! process; the time is the one the node measured from its `connect` call to the outcome.
//!
//! ```text
//! sudo target/release/unl-connect-bench [RUNS]     (default 20; build with
//!                                                 `cargo build --release --workspace` first)
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::bench_cli::BenchCli;
use integration_tests::binary;
use integration_tests::pairs::percentile;
use netns_sim::{Lab, NatKind, Topology, TwoNats};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `p2p-node connect` from `from` to `to`; the microseconds it measured, if it connected
/// by `method`.
fn connect_once(
    lab: &Lab,
    node: &std::path::Path,
    from: &str,
    to: &str,
    dht: &str,
    method: &str,
) -> Option<u64> {
    let out = lab
        .exec(
            from,
            &[
                node.to_str().unwrap(),
                "connect",
                to,
                "--dht-msg",
                dht,
                "--json",
                "--no-stdin",
            ],
        )
        .expect("connect ran");
    let text = String::from_utf8_lossy(&out.stdout);
    let ok =
        text.contains("\"connected\":true") && text.contains(&format!("\"method\":\"{method}\""));
    let us = text
        .split("\"us\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.parse::<u64>().ok());
    if !ok || us.is_none() {
        eprintln!(
            "{method} run failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    us
}

const CLI: BenchCli = BenchCli {
    name: "unl-connect-bench",
    usage: "\
usage: unl-connect-bench [RUNS]   (default 20)

Time from connect() to an established connection, by method (LAN, direct, reverse), in a
netns-sim lab (needs root). Build first: cargo build --release --workspace",
};

fn main() {
    let args = CLI.args();
    let runs: usize = CLI
        .number(args.first().map(String::as_str), "RUNS", 20)
        .max(1);
    if let Some(extra) = args.get(1) {
        CLI.fail(&format!("unexpected argument {extra:?}"));
    }
    CLI.require_root();
    let lab = Lab::up(&Topology::two_nats(TwoNats {
        a: NatKind::None,
        b: NatKind::PortRestricted,
        ..TwoNats::default()
    }))
    .expect("a lab");
    let dir = std::env::temp_dir().join(format!("unl-connect-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    let dht = format!("{}:8090", lab.addr("pub"));
    let dht_child = lab
        .spawn(
            "pub",
            Command::new(binary("dht-msg")).args(["--listen", &dht]),
        )
        .expect("dht-msg");
    wait_until("dht-msg", || dht_child.stderr().contains("listening"));
    let node = binary("p2p-node");
    let mut children = Vec::new();
    let mut unls = Vec::new();
    for (host, extra) in [("alice", "passive"), ("bob", "active")] {
        let file = dir.join(format!("{host}.unl"));
        let child = lab
            .spawn(
                host,
                Command::new(&node).args([
                    "run",
                    "--dht-msg",
                    &dht,
                    "--node-type",
                    extra,
                    "--max-reverse-per-minute",
                    "1000",
                    "--unl-file",
                    file.to_str().unwrap(),
                ]),
            )
            .expect("a node");
        wait_until("a UNL and a mailbox", || {
            file.is_file() && child.stderr().contains("mailbox registered")
        });
        unls.push(std::fs::read_to_string(&file).unwrap().trim().to_owned());
        children.push(child);
    }
    println!(
        "unl-connect-bench: {runs} runs per method, lab: alice (no NAT) and bob (port-restricted NAT), dht-msg on pub"
    );
    println!(
        "{:<8} {:>8} {:>10} {:>10} {:>10}",
        "method", "ok", "p50 us", "p99 us", "max us"
    );
    for (method, from, to) in [("direct", "bob", &unls[0]), ("reverse", "alice", &unls[1])] {
        let mut times: Vec<u64> = (0..runs)
            .filter_map(|_| connect_once(&lab, &node, from, to, &dht, method))
            .collect();
        times.sort_unstable();
        println!(
            "{:<8} {:>5}/{:<2} {:>10} {:>10} {:>10}",
            method,
            times.len(),
            runs,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times.last().copied().unwrap_or(0)
        );
    }
    drop(children);
    drop(dht_child);
    let _ = std::fs::remove_dir_all(&dir);
}
