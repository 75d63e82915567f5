//! `reach-bench`: time to a proven port mapping, by protocol, on a real miniupnpd in a
//! netns-sim lab (needs root). alice sits behind a port-restricted NAT whose router runs
//! miniupnpd (answering what each scenario says); the forwarding check and the rendezvous run
//! on `pub`. Each run is a fresh `p2p-node reachability --json` process, a second after the
//! last; the time is the end of the step that proved the mapping (the forwarding check's
//! yes), from the probe's start.
//!
//! ```text
//! sudo target/debug/reach-bench [RUNS]     (default 10; `cargo build --workspace` first, or
//!                                          --release and target/release/reach-bench)
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::bench_cli::BenchCli;
use integration_tests::binary;
use integration_tests::pairs::percentile;
use netns_sim::{Lab, LabChild, MappingProtocols, NatKind, Topology, TwoNats};
use serde_json::Value;

/// A scenario: what miniupnpd answers, the node's flags, the protocol expected to win.
struct Scenario {
    name: &'static str,
    router: MappingProtocols,
    flags: &'static [&'static str],
    expect: &'static str,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "PCP (miniupnpd with UPnP, NAT-PMP and PCP)",
        router: MappingProtocols::Both,
        flags: &[],
        expect: "pcp",
    },
    Scenario {
        name: "UPnP, NAT-PMP waiting (same router, --no-pcp)",
        router: MappingProtocols::Both,
        flags: &["--no-pcp"],
        expect: "upnp",
    },
    Scenario {
        name: "UPnP only (PCP and NAT-PMP closed)",
        router: MappingProtocols::Upnp,
        flags: &[],
        expect: "upnp",
    },
    Scenario {
        name: "NAT-PMP only (--no-pcp; UPnP's head start)",
        router: MappingProtocols::Natpmp,
        flags: &["--no-pcp"],
        expect: "natpmp",
    },
    Scenario {
        name: "PCP on a NAT-PMP/PCP router (no UPnP)",
        router: MappingProtocols::Natpmp,
        flags: &[],
        expect: "pcp",
    },
];

fn wait_stderr(child: &LabChild, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !child.stderr().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not seen: {}",
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One probe: (ms to the proving check's end, ms of the whole probe, ms of the command).
fn probe_once(lab: &Lab, flags: &[&str], expect: &str) -> Option<(u64, u64, u64)> {
    let node = binary("p2p-node");
    let mut args = vec![
        node.to_str().unwrap(),
        "reachability",
        "--json",
        "--rendezvous",
        "11.0.0.2:8000",
        "--forwarding-check",
        "http://11.0.0.2:8080",
        "--port",
        "50500",
    ];
    args.extend_from_slice(flags);
    let started = Instant::now();
    let out = lab.exec("alice", &args).expect("p2p-node ran");
    let wall = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let Ok(report) = serde_json::from_slice::<Value>(&out.stdout) else {
        eprintln!("no report: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    };
    if report["forwarding"] != expect {
        eprintln!("expected {expect}, got: {report}");
        return None;
    }
    // The mapping's own check, or the check of the port as it is when that one came back
    // yes after the mapping was made (it counts for the mapping).
    let proof = report["steps"].as_array()?.iter().find(|s| {
        (s["method"] == expect || s["method"] == "manual")
            && s["step"] == "check"
            && s["outcome"] == "ok"
    });
    let Some(proof) = proof else {
        eprintln!("no proving step: {report}");
        return None;
    };
    let end = proof["at_ms"].as_u64()? + proof["ms"].as_u64()?;
    Some((end, report["ms"].as_u64()?, wall))
}

fn stats(label: &str, mut v: Vec<u64>) -> String {
    v.sort_unstable();
    format!(
        "{label} p50 {} ms, p99 {} ms (min {}, max {})",
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.first().copied().unwrap_or(0),
        v.last().copied().unwrap_or(0)
    )
}

const CLI: BenchCli = BenchCli {
    name: "reach-bench",
    usage: "\
usage: reach-bench [RUNS]   (default 10)

Time to a proven port mapping, by protocol (PCP, UPnP, NAT-PMP), on a real miniupnpd in a
netns-sim lab (needs root). Build first: cargo build --release --workspace",
};

fn main() {
    let args = CLI.args();
    let runs: usize = CLI
        .number(args.first().map(String::as_str), "RUNS", 10)
        .max(1);
    if let Some(extra) = args.get(1) {
        CLI.fail(&format!("unexpected argument {extra:?}"));
    }
    CLI.require_root();
    for s in &SCENARIOS {
        let lab = Lab::up(&Topology::two_nats(TwoNats {
            a: NatKind::PortRestricted,
            b: NatKind::PortRestricted,
            upnp_a: true,
            mapping_a: s.router,
            ..TwoNats::default()
        }))
        .expect("lab up");
        let spawn = |name: &str, args: &[&str]| {
            lab.spawn("pub", Command::new(binary(name)).args(args))
                .expect("server starts")
        };
        let rv = spawn("rendezvous", &["--listen", "11.0.0.2:8000"]);
        let fc = spawn(
            "forwarding-check",
            &[
                "--listen",
                "11.0.0.2:8080",
                "--connect-timeout",
                "500ms",
                "--check-burst",
                "1000",
                "--checks-per-minute",
                "6000",
                // Back-to-back probes from one NAT address, each server socket lingering 2 s.
                "--max-connections-per-ip",
                "1000",
            ],
        );
        wait_stderr(&rv, "rendezvous listening");
        wait_stderr(&fc, "forwarding-check listening");
        let (mut proven, mut probe, mut wall) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            // The router's kernel answers a closed port with at most about one ICMP error per
            // second to one host (net.ipv4.icmp_ratelimit): back to back, a closed PCP port
            // would look silent. Real probes are seconds apart, so the runs are too.
            std::thread::sleep(Duration::from_secs(1));
            if let Some((p, r, w)) = probe_once(&lab, s.flags, s.expect) {
                proven.push(p);
                probe.push(r);
                wall.push(w);
            }
        }
        println!(
            "{} [{}/{runs} proven by {}]",
            s.name,
            proven.len(),
            s.expect
        );
        println!("  {}", stats("proven mapping", proven));
        println!("  {}", stats("whole probe   ", probe));
        println!("  {}", stats("command       ", wall));
        drop((rv, fc));
        lab.down().expect("lab down");
    }
}
