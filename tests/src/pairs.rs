//! A two-NAT lab with every server on `pub` and a node on alice, for connect-by-UNL tests and
//! benchmarks: `rendezvous` (with its relay), `dht-msg`, `forwarding-check` and chrony (NTP)
//! on `pub`; alice runs `p2p-node run` behind nat-a; bob connects to her UNL from behind nat-b
//! with `p2p-node connect`, once per [`PairLab::connect`].
//!
//! Used by `tests/tests/punch_netns.rs` and the `punch-bench` binary.

#![allow(clippy::expect_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};

use crate::binary;
use std::process::Command;
use std::time::{Duration, Instant};

use netns_sim::{Lab, LabChild, NatKind, Topology, TwoNats};

/// Servers every node of the lab is given.
const RENDEZVOUS: &str = "11.0.0.2:8000";
const DHT_MSG: &str = "11.0.0.2:8090";
const FORWARDING_CHECK: &str = "http://11.0.0.2:8080";
const NTP: &str = "11.0.0.2:123";

/// What one `p2p-node connect` printed: its JSON outcome line, parsed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The whole line.
    pub line: String,
    /// Whether it connected.
    pub connected: bool,
    /// The method that won (`punch`, `relay`, ...).
    pub method: Option<String>,
    /// Microseconds from `connect()` to the confirmed connection (or to the failure).
    pub us: u64,
}

impl Outcome {
    fn parse(line: &str) -> Outcome {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or(serde_json::Value::Null);
        Outcome {
            line: line.to_owned(),
            connected: value["connected"].as_bool().unwrap_or(false),
            method: value["method"].as_str().map(str::to_owned),
            us: value["us"].as_u64().unwrap_or(0),
        }
    }
}

/// The lab, its servers and alice's node.
pub struct PairLab {
    /// The lab (torn down when dropped, after the processes).
    pub lab: Lab,
    /// alice's `p2p-node run`.
    pub alice: LabChild,
    /// alice's UNL.
    pub alice_unl: String,
    servers: Vec<LabChild>,
    scratch: PathBuf,
}

impl PairLab {
    /// alice behind `nat_a` (running as `alice_type`: `simultaneous` or `active`), bob behind
    /// `nat_b`; every server started on `pub`; returns once alice has written her UNL.
    ///
    /// With `alice_checks`, alice learns her WAN address from the forwarding check, which
    /// also tests whether her port is reachable as it is (behind a full-cone NAT it is, once
    /// her registration opened the mapping, and she becomes passive). Without it she is told
    /// her WAN address (`--wan-ip`) and keeps the type she was given.
    /// `alice_extra`: more flags for alice's `p2p-node run`.
    pub fn up(
        nat_a: NatKind,
        nat_b: NatKind,
        alice_type: &str,
        alice_checks: bool,
        alice_extra: &[&str],
    ) -> PairLab {
        let lab = Lab::up(&Topology::two_nats(TwoNats {
            a: nat_a,
            b: nat_b,
            ntp: true,
            ..TwoNats::default()
        }))
        .expect("the lab comes up");
        let scratch = std::env::temp_dir().join(format!("pairlab-{}", lab.prefix()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).expect("a scratch directory");
        let servers = vec![
            start_server(&lab, "rendezvous", &["--listen", RENDEZVOUS]),
            start_server(&lab, "dht-msg", &["--listen", DHT_MSG]),
            start_server(
                &lab,
                "forwarding-check",
                &[
                    "--listen",
                    FORWARDING_CHECK.trim_start_matches("http://"),
                    // Dial-backs inside the lab answer in microseconds; a closed port (the
                    // NAT drops the SYN) is known after this, not after the default 2 s.
                    "--connect-timeout",
                    "300ms",
                ],
            ),
        ];
        let unl_file = scratch.join("alice.unl");
        let wan = lab.public_addr("alice").to_string();
        let mut args = vec![
            "run",
            "--node-type",
            alice_type,
            "--unl-file",
            unl_file.to_str().expect("a UTF-8 path"),
            // No UPnP router in this lab.
            "--no-upnp",
            "--no-natpmp",
        ];
        if alice_checks {
            args.extend(server_flags());
        } else {
            args.extend(
                server_flags()
                    .chunks(2)
                    .filter(|f| f[0] != "--forwarding-check")
                    .flatten(),
            );
            args.extend(["--wan-ip", wan.as_str()]);
        }
        args.extend_from_slice(alice_extra);
        let alice = lab
            .spawn("alice", Command::new(binary("p2p-node")).args(&args))
            .expect("alice starts");
        let alice_unl = wait_for_unl(&unl_file, &alice);
        PairLab {
            lab,
            alice,
            alice_unl,
            servers,
            scratch,
        }
    }

    /// bob runs `p2p-node connect <alice's UNL> --json` (plus `extra`); returns the process
    /// (still exchanging lines unless `--no-stdin` was given) and its outcome.
    pub fn connect(&self, extra: &[&str]) -> (LabChild, Outcome) {
        let mut args = vec![
            "connect",
            self.alice_unl.as_str(),
            "--json",
            "--no-upnp",
            "--no-natpmp",
        ];
        args.extend(server_flags());
        args.extend_from_slice(extra);
        let bob = self
            .lab
            .spawn("bob", Command::new(binary("p2p-node")).args(&args))
            .expect("bob starts");
        let line = bob
            .wait_for_stdout("\"connected\":", Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("bob: no outcome: {e}; stderr: {}", bob.stderr()));
        (bob, Outcome::parse(&line))
    }

    /// The log of a server on `pub` (`rendezvous`, `dht-msg`, `forwarding-check`).
    pub fn server_log(&self, name: &str) -> String {
        let i = ["rendezvous", "dht-msg", "forwarding-check"]
            .iter()
            .position(|n| *n == name)
            .expect("a known server");
        self.servers[i].stderr()
    }
}

impl Drop for PairLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn server_flags() -> [&'static str; 8] {
    [
        "--rendezvous",
        RENDEZVOUS,
        "--dht-msg",
        DHT_MSG,
        "--forwarding-check",
        FORWARDING_CHECK,
        "--ntp",
        NTP,
    ]
}

fn start_server(lab: &Lab, name: &str, args: &[&str]) -> LabChild {
    let child = lab
        .spawn("pub", Command::new(binary(name)).args(args))
        .expect("the server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !child.stderr().contains("listening") {
        assert!(
            Instant::now() < deadline,
            "{name} did not start: {}",
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn wait_for_unl(path: &Path, alice: &LabChild) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
            && alice.stderr().contains("mailbox registered")
        {
            return text.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "alice wrote no UNL or did not register her mailbox: {}",
            alice.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `p`-th percentile (0.0..=1.0) of sorted values (nearest rank).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}
