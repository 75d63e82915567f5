//! A two-NAT lab with every server on `pub` and a node on alice, for connect-by-UNL tests and
//! benchmarks: `rendezvous` (with its relay), `dht-msg`, `forwarding-check` and chrony (NTP)
//! on `pub`; alice runs `p2p-node run` behind nat-a (optionally behind a carrier NAT too);
//! bob connects to her UNL from behind nat-b with `p2p-node connect`, once per
//! [`PairLab::connect`]. The links can carry a WAN profile (delay, jitter, loss).
//!
//! Both nodes get only the server addresses (`--rendezvous`, `--dht-msg`, `--ntp`), as a new
//! user would type them: each works out its own role, WAN address and NAT.
//!
//! Used by `tests/tests/punch_netns.rs` and the `punch-bench` binary.

#![allow(clippy::expect_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};

use crate::{binary, node_command};
use std::process::Command;
use std::time::{Duration, Instant};

use netns_sim::{Lab, LabChild, NatKind, Topology, TwoNats, WanProfile};

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
    /// Tries still running when it connected (a relayed connection may move to a direct
    /// path later).
    pub pending: bool,
}

/// A relayed connection's move to a direct path, as `p2p-node connect` printed it.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// How the direct path opened (`punch`, ...).
    pub method: String,
    /// Milliseconds from `connect()` to the proven direct path.
    pub ms: u64,
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
            pending: value["tries"].as_array().is_some_and(|tries| {
                tries
                    .iter()
                    .any(|t| t["result"]["state"].as_str() == Some("pending"))
            }),
        }
    }
}

impl Upgrade {
    fn parse(line: &str) -> Option<Upgrade> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(Upgrade {
            method: value["method"].as_str()?.to_owned(),
            ms: value["ms"].as_u64()?,
        })
    }
}

/// Which lab: the NAT kinds, a carrier NAT in front of alice's, and the WAN profile.
#[derive(Debug, Clone, Copy)]
pub struct PairSpec {
    /// alice's NAT (`nat-a`).
    pub nat_a: NatKind,
    /// bob's NAT (`nat-b`).
    pub nat_b: NatKind,
    /// A carrier-grade NAT of this kind in front of `nat-a`.
    pub cgnat_a: Option<NatKind>,
    /// The access links' profile ([`WanProfile::internet`] or none: instant and lossless).
    pub wan: Option<WanProfile>,
    /// Both home routers forget an idle established TCP connection after this (conntrack).
    pub tcp_timeout: Option<Duration>,
    /// IPv6 everywhere too (netns-sim `--ipv6`: global addresses, home routers that route
    /// IPv6 behind a stateful firewall).
    pub ipv6: bool,
}

impl PairSpec {
    /// alice behind `nat_a`, bob behind `nat_b`, instant links.
    pub fn new(nat_a: NatKind, nat_b: NatKind) -> PairSpec {
        PairSpec {
            nat_a,
            nat_b,
            cgnat_a: None,
            wan: None,
            tcp_timeout: None,
            ipv6: false,
        }
    }

    /// With IPv6 everywhere too (dual stack; the routers are stateful IPv6 firewalls).
    #[must_use]
    pub fn ipv6(mut self) -> PairSpec {
        self.ipv6 = true;
        self
    }

    /// With both home routers forgetting idle TCP connections after `timeout`.
    #[must_use]
    pub fn tcp_timeout(mut self, timeout: Duration) -> PairSpec {
        self.tcp_timeout = Some(timeout);
        self
    }

    /// With [`WanProfile::internet`] on the access links.
    #[must_use]
    pub fn internet(mut self) -> PairSpec {
        self.wan = Some(WanProfile::internet());
        self
    }

    /// With a carrier NAT of `kind` in front of alice's.
    #[must_use]
    pub fn cgnat_a(mut self, kind: NatKind) -> PairSpec {
        self.cgnat_a = Some(kind);
        self
    }

    /// `alice-nat x bob-nat`, with the carrier and the profile when there are.
    pub fn name(&self) -> String {
        let mut name = match self.cgnat_a {
            Some(c) => format!("{}+cgn-{}", self.nat_a.name(), c.name()),
            None => self.nat_a.name().to_owned(),
        };
        name.push_str(" x ");
        name.push_str(self.nat_b.name());
        if self.wan.is_some() {
            name.push_str(" (wan)");
        }
        if self.ipv6 {
            name.push_str(" (dual stack)");
        }
        name
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
    /// The round trip between alice and bob the links impose (their delays, without jitter).
    pub rtt: Duration,
    servers: Vec<LabChild>,
    scratch: PathBuf,
}

impl PairLab {
    /// bob → alice and alice → bob, one line each; both must arrive within 10 s (a panic
    /// names the line and shows the other side's log).
    pub fn exchange(&mut self, bob: &mut LabChild, to_alice: &str, to_bob: &str) {
        bob.send_line(to_alice).expect("bob's stdin");
        self.alice
            .wait_for_stdout(to_alice, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\nbob: {}", bob.stderr()));
        self.alice.send_line(to_bob).expect("alice's stdin");
        bob.wait_for_stdout(to_bob, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\nalice: {}", self.alice.stderr()));
    }

    /// [`PairLab::exchange`] with lines tagged `tag` (`"<tag>: hello alice, from bob"`).
    pub fn exchange_tagged(&mut self, bob: &mut LabChild, tag: &str) {
        let to_alice = format!("{tag}: hello alice, from bob");
        let to_bob = format!("{tag}: hello bob, from alice");
        self.exchange(bob, &to_alice, &to_bob);
    }

    /// The lab of `spec` with every server started on `pub`; returns once alice has written
    /// her UNL. alice runs with only the server addresses, plus `alice_extra`.
    pub fn up(spec: PairSpec, alice_extra: &[&str]) -> PairLab {
        let mut topology = Topology::two_nats(TwoNats {
            a: spec.nat_a,
            b: spec.nat_b,
            cgnat_a: spec.cgnat_a,
            ntp: true,
            ipv6: spec.ipv6,
            ..TwoNats::default()
        });
        if let Some(wan) = &spec.wan {
            topology = topology.with_wan(wan);
        }
        if let Some(timeout) = spec.tcp_timeout {
            for router in ["nat-a", "nat-b"] {
                topology =
                    topology.with_router(router, |r| r.timeouts.tcp_established = Some(timeout));
            }
        }
        let rtt = ["nat-a", "nat-b"]
            .iter()
            .filter_map(|r| topology.links.get(*r))
            .flat_map(|l| [l.up, l.down])
            .flatten()
            .map(|p| p.delay)
            .sum();
        let lab = Lab::up(&topology).expect("the lab comes up");
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
        let mut args = vec![
            "run",
            "--unl-file",
            unl_file.to_str().expect("a UTF-8 path"),
        ];
        args.extend(server_flags());
        args.extend_from_slice(alice_extra);
        let alice = lab
            .spawn("alice", node_command(&lab, "alice").args(&args))
            .expect("alice starts");
        let alice_unl = wait_for_unl(&unl_file, &alice);
        PairLab {
            lab,
            alice,
            alice_unl,
            rtt,
            servers,
            scratch,
        }
    }

    /// The forwarding check's URL on `pub`, for a node that should prove its port.
    pub fn forwarding_check() -> &'static str {
        FORWARDING_CHECK
    }

    /// bob runs `p2p-node connect <alice's UNL> --json` with the server addresses (plus
    /// `extra`); returns the process (still exchanging lines unless `--no-stdin` was given)
    /// and its outcome.
    pub fn connect(&self, extra: &[&str]) -> (LabChild, Outcome) {
        let mut args = vec!["connect", self.alice_unl.as_str(), "--json"];
        args.extend(server_flags());
        args.extend_from_slice(extra);
        let bob = self
            .lab
            .spawn("bob", node_command(&self.lab, "bob").args(&args))
            .expect("bob starts");
        let line = bob
            .wait_for_stdout("\"connected\":", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("bob: no outcome: {e}; stderr: {}", bob.stderr()));
        (bob, Outcome::parse(&line))
    }

    /// Kills the rendezvous (SIGKILL: its registrations are gone) and starts it again on the
    /// same address.
    pub fn restart_rendezvous(&mut self) {
        self.servers[0].kill();
        self.servers[0] = start_server(&self.lab, "rendezvous", &["--listen", RENDEZVOUS]);
    }

    /// As [`PairLab::connect`], then, when the connection opened relayed with direct tries
    /// still running, waits (up to `within`) for its move to a direct path.
    pub fn connect_and_upgrade(
        &self,
        extra: &[&str],
        within: Duration,
    ) -> (LabChild, Outcome, Option<Upgrade>) {
        let (bob, outcome) = self.connect(extra);
        let upgrade = if outcome.method.as_deref() == Some("relay") && outcome.pending {
            bob.wait_for_stdout("\"upgraded\":true", within)
                .ok()
                .and_then(|line| Upgrade::parse(&line))
        } else {
            None
        };
        (bob, outcome, upgrade)
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

/// The servers, as a new user gives them: nothing else.
fn server_flags() -> [&'static str; 6] {
    [
        "--rendezvous",
        RENDEZVOUS,
        "--dht-msg",
        DHT_MSG,
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
    let deadline = Instant::now() + Duration::from_secs(30);
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
