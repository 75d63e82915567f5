//! Reachability across real NATs (netns-sim, real miniupnpd, real processes): alice's node
//! maps its port with UPnP, or with NAT-PMP, proves it with the forwarding check on `pub`,
//! becomes passive and advertises; bob, behind another NAT, bootstraps from the rendezvous and
//! connects to her directly; when alice stops, the mapping is gone from the router. Without
//! miniupnpd, alice is not passive and the report says why; a router that refuses, a
//! forwarding check that is down: each ends quickly with a reason, and the node still starts.
//!
//! Needs root: skipped with a message without it, unless `CI` is set (then it fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{binary, lab_preconditions};
use netns_sim::{Lab, LabChild, MappingProtocols, NatKind, Topology, TwoNats};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
/// alice's listening port (also the external port asked of the router).
const PORT: &str = "50500";

/// alice behind `a` (miniupnpd answering `mapping` when given), bob behind a
/// port-restricted NAT.
fn lab(a: NatKind, mapping: Option<MappingProtocols>) -> Lab {
    Lab::up(&Topology::two_nats(TwoNats {
        a,
        b: NatKind::PortRestricted,
        upnp_a: mapping.is_some(),
        mapping_a: mapping.unwrap_or_default(),
        ..TwoNats::default()
    }))
    .unwrap()
}

/// The rendezvous and the forwarding check on `pub`.
struct Servers {
    rendezvous: String,
    check: String,
    _procs: Vec<LabChild>,
}

fn servers(lab: &Lab) -> Servers {
    let ip = lab.addr("pub");
    let rendezvous = format!("{ip}:8000");
    let rv = lab
        .spawn(
            "pub",
            Command::new(binary("rendezvous")).args(["--listen", &rendezvous]),
        )
        .unwrap();
    // A closed port is "no" after 500 ms instead of 2 s; a few probes per test need a burst.
    let fc = lab
        .spawn(
            "pub",
            Command::new(binary("forwarding-check")).args([
                "--listen",
                &format!("{ip}:8080"),
                "--connect-timeout",
                "500ms",
                "--check-burst",
                "20",
            ]),
        )
        .unwrap();
    wait_stderr(&rv, "rendezvous listening");
    wait_stderr(&fc, "forwarding-check listening");
    Servers {
        rendezvous,
        check: format!("http://{ip}:8080"),
        _procs: vec![rv, fc],
    }
}

fn wait_stderr(child: &LabChild, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while !child.stderr().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{:?} not seen within {WAIT:?} on {}: {}",
            needle,
            child.host(),
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `p2p-node reachability --json --port PORT` on `host`: the report and how long the
/// command took.
fn reachability(
    lab: &Lab,
    host: &str,
    s: &Servers,
    port: &str,
    extra: &[&str],
) -> (Value, Duration) {
    let mut args = vec![
        "reachability",
        "--json",
        "--rendezvous",
        &s.rendezvous,
        "--forwarding-check",
        &s.check,
        "--port",
        port,
    ];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let mut child = lab
        .spawn(host, Command::new(binary("p2p-node")).args(&args))
        .unwrap();
    let status = child.wait_timeout(WAIT).unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{status}: {}", child.stderr());
    let report: Value = serde_json::from_str(child.stdout().trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", child.stdout()));
    eprintln!("{host} {extra:?} in {took:?}: {report}");
    (report, took)
}

/// The report's step `method`/`step`.
fn step<'a>(report: &'a Value, method: &str, step: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|s| s["method"] == method && s["step"] == step)
        .unwrap_or_else(|| panic!("no {method} {step} step: {report}"))
}

/// `p2p-node run` for alice (passive if the probe proves her port) with `extra` flags.
fn run_alice(lab: &Lab, s: &Servers, extra: &[&str]) -> LabChild {
    let mut args = vec![
        "run",
        "--rendezvous",
        &s.rendezvous,
        "--forwarding-check",
        &s.check,
        "--port",
        PORT,
        "--json",
        "--show-events",
    ];
    args.extend_from_slice(extra);
    lab.spawn("alice", Command::new(binary("p2p-node")).args(&args))
        .unwrap()
}

/// bob (behind his own NAT, not listening) bootstraps from the rendezvous, which hands him
/// alice's advertised address: he must connect to it directly and exchange a line with her.
fn bob_connects_directly(lab: &Lab, s: &Servers, alice: &mut LabChild) {
    let wan_a = lab.addr("nat-a").to_string();
    let wan_b = lab.addr("nat-b").to_string();
    let mut bob = lab
        .spawn(
            "bob",
            Command::new(binary("p2p-node")).args([
                "run",
                "--rendezvous",
                &s.rendezvous,
                "--no-listen",
                "--json",
                "--show-events",
            ]),
        )
        .unwrap();
    let connected = bob
        .wait_for_stdout("\"event\":\"connected\"", WAIT)
        .unwrap_or_else(|e| panic!("bob: {e}; stderr: {}", bob.stderr()));
    // bob's peer is alice's router's public address and mapped port: a direct connection.
    assert!(
        connected.contains(&format!("\"peer\":\"{wan_a}:{PORT}\"")),
        "{connected}"
    );
    bob.send_line("hello alice, directly").unwrap();
    let got = alice
        .wait_for_stdout("hello alice, directly", WAIT)
        .unwrap();
    // alice sees it come from bob's router, not through pub.
    assert!(got.contains(&format!("\"from\":\"{wan_b}:")), "{got}");
    alice.send_line("hello bob").unwrap();
    bob.wait_for_stdout("hello bob", WAIT).unwrap();
}

/// Stops alice as Ctrl-C would (SIGTERM) and waits for her to exit.
fn stop(child: &mut LabChild) {
    let pid = child.id().to_string();
    let out = Command::new("kill").args(["-TERM", &pid]).output().unwrap();
    assert!(out.status.success(), "kill: {out:?}");
    let status = child.wait_timeout(WAIT).unwrap();
    assert!(status.success(), "{status}: {}", child.stderr());
}

/// The rules miniupnpd keeps in nat-a's nftables (the mappings as the router applies them).
fn router_rules(lab: &Lab) -> String {
    lab.exec_ok("nat-a", &["nft", "list", "table", "inet", "miniupnpd"])
        .unwrap()
}

#[test]
fn upnp_makes_alice_passive_and_bob_connects_to_her_directly_and_stop_removes_the_mapping() {
    if !lab_preconditions(&["miniupnpd", "upnpc", "nft"]) {
        return;
    }
    let started = Instant::now();
    let lab = lab(NatKind::PortRestricted, Some(MappingProtocols::Upnp));
    let s = servers(&lab);
    let wan = lab.addr("nat-a").to_string();

    // A router that says no: miniupnpd's rules refuse ports below 1024.
    let (report, took) = reachability(&lab, "alice", &s, "500", &[]);
    assert_ne!(report["node_type"], "passive", "{report}");
    assert!(report["forwarding"].is_null());
    let map = step(&report, "upnp", "map");
    assert_eq!(map["outcome"], "failed");
    assert!(
        map["detail"]
            .as_str()
            .unwrap()
            .contains("not authorized (606)"),
        "{map}"
    );
    // miniupnpd here answers UPnP only: NAT-PMP fails at once.
    let natpmp = step(&report, "natpmp", "discover");
    assert!(
        natpmp["detail"]
            .as_str()
            .unwrap()
            .contains("no NAT-PMP server at 192.168.1.1:5351"),
        "{natpmp}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");

    // The real thing: alice's node maps 50500, proves it, advertises it.
    let mut alice = run_alice(&lab, &s, &[]);
    wait_stderr(&alice, "advertised");
    let log = alice.stderr();
    assert!(log.contains("reachable: passive"), "{log}");
    assert!(log.contains("forwarding=upnp"), "{log}");
    let listed = lab.exec_ok("alice", &["upnpc", "-i", "-l"]).unwrap();
    assert!(
        listed.contains(&format!("TCP {PORT}->192.168.1.2:{PORT}")) && listed.contains("p2p-node"),
        "upnpc -l: {listed}"
    );
    assert!(router_rules(&lab).contains(&format!("dport {PORT}")));

    bob_connects_directly(&lab, &s, &mut alice);

    // On stop the mapping is deleted: gone from the IGD's list and from the router's rules.
    stop(&mut alice);
    assert!(
        alice.stderr().contains("port mapping deleted"),
        "{}",
        alice.stderr()
    );
    let listed = lab.exec_ok("alice", &["upnpc", "-i", "-l"]).unwrap();
    assert!(
        !listed.contains(&format!("TCP {PORT}->")),
        "upnpc -l: {listed}"
    );
    let rules = router_rules(&lab);
    assert!(!rules.contains(&format!("dport {PORT}")), "{rules}");
    eprintln!("upnp test: {:?} (WAN {wan})", started.elapsed());
}

#[test]
fn natpmp_makes_alice_passive_renews_the_lease_and_stop_removes_the_mapping() {
    if !lab_preconditions(&["miniupnpd", "nft"]) {
        return;
    }
    let lab = lab(NatKind::PortRestricted, Some(MappingProtocols::Natpmp));
    let s = servers(&lab);

    // A 4 s lease: renewed at half-life while the node runs.
    let mut alice = run_alice(&lab, &s, &["--mapping-lease", "4s"]);
    wait_stderr(&alice, "advertised");
    let mapped_at = Instant::now();
    let log = alice.stderr();
    assert!(log.contains("reachable: passive"), "{log}");
    assert!(log.contains("forwarding=natpmp"), "{log}");
    // UPnP is off on this router: its discovery does not delay the outcome.
    assert!(router_rules(&lab).contains(&format!("dport {PORT}")));
    wait_stderr(&alice, "port mapping renewed");

    // Past the first lease, the mapping still works: bob gets in directly.
    let lease_end = mapped_at + Duration::from_millis(4500);
    std::thread::sleep(lease_end.saturating_duration_since(Instant::now()));
    bob_connects_directly(&lab, &s, &mut alice);

    stop(&mut alice);
    assert!(
        alice.stderr().contains("port mapping deleted"),
        "{}",
        alice.stderr()
    );
    let rules = router_rules(&lab);
    assert!(!rules.contains(&format!("dport {PORT}")), "{rules}");
}

#[test]
fn without_miniupnpd_alice_is_not_passive_says_why_and_her_node_still_starts() {
    if !lab_preconditions(&["nft"]) {
        return;
    }
    // A symmetric NAT, no miniupnpd.
    let lab = lab(NatKind::Symmetric, None);
    let s = servers(&lab);
    let wan = lab.addr("nat-a").to_string();

    let (report, took) = reachability(&lab, "alice", &s, PORT, &[]);
    assert_eq!(report["node_type"], "active", "{report}");
    assert!(report["forwarding"].is_null());
    assert_eq!(report["wan_ip"], wan.as_str());
    assert_eq!(report["wan_ip_source"], "forwarding-check");
    assert_eq!(report["nat"], "random");
    let detail = |m: &str, st: &str| step(&report, m, st)["detail"].as_str().unwrap().to_owned();
    assert!(
        detail("upnp", "discover").contains("no UPnP gateway answered within 2.0 s on 192.168.1.2"),
        "{report}"
    );
    assert!(
        detail("natpmp", "discover").contains("no NAT-PMP server at 192.168.1.1:5351"),
        "{report}"
    );
    assert!(
        detail("manual", "check").contains("not reachable from outside"),
        "{report}"
    );
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("no UPnP gateway answered"), "{reason}");
    // Bounded: UPnP discovery gets 2/3 of the 3 s budget.
    assert!(took < Duration::from_millis(3500), "{took:?}");

    // A forwarding check that is down: a clear reason, and quickly.
    let down = Servers {
        rendezvous: s.rendezvous.clone(),
        check: format!("http://{}:9", lab.addr("pub")),
        _procs: Vec::new(),
    };
    let (report, took) = reachability(&lab, "alice", &down, PORT, &["--reach-timeout", "1s"]);
    assert_eq!(report["node_type"], "active", "{report}");
    assert!(
        step(&report, "forwarding-check", "wan-ip")["detail"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "cannot connect to the forwarding check at {}:9",
                lab.addr("pub")
            )),
        "{report}"
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // The node still starts: it warns and goes on with the role it was given.
    let mut alice = run_alice(&lab, &s, &[]);
    wait_stderr(&alice, "bootstrapped");
    assert!(
        alice.stderr().contains("not reachable from outside"),
        "{}",
        alice.stderr()
    );
    stop(&mut alice);
}
