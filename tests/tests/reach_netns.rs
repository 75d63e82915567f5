//! Reachability across real NATs (netns-sim, real miniupnpd, real processes): alice's node
//! maps its port with PCP, UPnP or NAT-PMP, proves it with the forwarding check on `pub`,
//! becomes passive and advertises; bob, behind another NAT, bootstraps from the rendezvous and
//! connects to her directly; when alice stops, the mapping is gone from the router. Without
//! miniupnpd, alice is not passive and the report says why; a router that refuses, a
//! forwarding check that is down: each ends quickly with a reason, and the node still starts.
//! PCP also opens an IPv6 pinhole in the router's firewall (`pcp-pinhole`, the library's
//! client) that lets `pub` in until it expires.
//!
//! Needs root: skipped with a message without it, unless `CI` is set (then it fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{binary, lab_preconditions, node_command};
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
        .spawn(host, node_command(lab, host).args(&args))
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
    lab.spawn("alice", node_command(lab, "alice").args(&args))
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
            node_command(lab, "bob").args([
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
    wait_stderr(&alice, "events: advertised");
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

    // miniupnpd answers PCP on the same port (one switch in 2.3.1): --no-pcp leaves NAT-PMP.
    short_lease_renewed_bob_gets_in_and_stop_deletes(&lab, &s, "natpmp", &["--no-pcp"]);
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

#[test]
fn pcp_is_used_first_renews_the_lease_and_stop_removes_the_mapping() {
    if !lab_preconditions(&["miniupnpd", "nft"]) {
        return;
    }
    let lab = lab(NatKind::PortRestricted, Some(MappingProtocols::Both));
    let s = servers(&lab);
    let wan = lab.addr("nat-a").to_string();

    // The report: PCP first (UPnP and NAT-PMP answer too), the router's address from the
    // mapping, every step with its time; the mapping is deleted when the command exits.
    let (report, took) = reachability(&lab, "alice", &s, PORT, &[]);
    assert_eq!(report["node_type"], "passive", "{report}");
    assert_eq!(report["forwarding"], "pcp");
    assert_eq!(report["proven"], true);
    assert_eq!(report["mapping"]["protocol"], "pcp");
    assert_eq!(report["mapping"]["external_ip"], wan.as_str());
    assert_eq!(
        (&report["wan_ip"], &report["wan_ip_source"]),
        (&serde_json::json!(wan), &serde_json::json!("pcp"))
    );
    for st in ["discover", "map", "check"] {
        assert_eq!(step(&report, "pcp", st)["outcome"], "ok", "{report}");
    }
    assert!(took < Duration::from_secs(3), "{took:?}");
    let rules = router_rules(&lab);
    assert!(!rules.contains(&format!("dport {PORT}")), "{rules}");

    // Without PCP the same port speaks NAT-PMP, its fallback.
    let (report, _) = reachability(&lab, "alice", &s, PORT, &["--no-pcp", "--no-upnp"]);
    assert_eq!(report["forwarding"], "natpmp", "{report}");
    assert_eq!(step(&report, "pcp", "discover")["outcome"], "skipped");

    // The node: a 4 s lease renewed at half-life with the same nonce.
    short_lease_renewed_bob_gets_in_and_stop_deletes(&lab, &s, "pcp", &[]);
}

/// alice runs with a 4 s lease (and `extra`) and becomes passive through `forwarding`: the
/// mapping is on the router, renewed at half-life, still lets bob in directly past the first
/// lease, and is gone from the router once she stops.
fn short_lease_renewed_bob_gets_in_and_stop_deletes(
    lab: &Lab,
    s: &Servers,
    forwarding: &str,
    extra: &[&str],
) {
    let mut args = vec!["--mapping-lease", "4s"];
    args.extend_from_slice(extra);
    let mut alice = run_alice(lab, s, &args);
    wait_stderr(&alice, "events: advertised");
    let mapped_at = Instant::now();
    let log = alice.stderr();
    assert!(log.contains("reachable: passive"), "{log}");
    assert!(log.contains(&format!("forwarding={forwarding}")), "{log}");
    assert!(router_rules(lab).contains(&format!("dport {PORT}")));
    wait_stderr(&alice, "port mapping renewed");
    let lease_end = mapped_at + Duration::from_millis(4500);
    std::thread::sleep(lease_end.saturating_duration_since(Instant::now()));
    bob_connects_directly(lab, s, &mut alice);
    stop(&mut alice);
    assert!(
        alice.stderr().contains("port mapping deleted"),
        "{}",
        alice.stderr()
    );
    let rules = router_rules(lab);
    assert!(!rules.contains(&format!("dport {PORT}")), "{rules}");
}

/// `netns-sim probe connect` from pub to `to`: what alice's server saw, or why not.
fn pub_connects(lab: &Lab, to: &str) -> Result<String, String> {
    let out = lab
        .exec(
            "pub",
            &[
                binary("netns-sim").to_str().unwrap(),
                "probe",
                "connect",
                to,
                "--timeout-ms",
                "1000",
            ],
        )
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// The pinholes in nat-a's IPv6 firewall (see `netns_sim::ipv6`).
fn pinholes(lab: &Lab) -> String {
    lab.exec_ok(
        "nat-a",
        &["nft", "list", "chain", "inet", "netns_sim6", "pinholes"],
    )
    .unwrap()
}

#[test]
fn pcp_opens_an_ipv6_pinhole_that_lets_pub_in_until_it_goes() {
    if !lab_preconditions(&["miniupnpd", "nft"]) {
        return;
    }
    let lab = Lab::up(&Topology::two_nats(TwoNats {
        a: NatKind::PortRestricted,
        upnp_a: true,
        ipv6: true,
        ..TwoNats::default()
    }))
    .unwrap();
    let alice6 = lab.addr6("alice");
    let internal = format!("[{alice6}]:50600");
    let server = lab
        .spawn(
            "alice",
            Command::new(binary("netns-sim")).args(["probe", "serve", "--listen", "[::]:50600"]),
        )
        .unwrap();
    wait_stdout_line(&server, "listening");
    let err = pub_connects(&lab, &internal).unwrap_err();
    assert!(err.contains("timed out"), "the firewall drops it: {err}");

    // The IPv6 default gateway is the PCP server; the grant names alice's own address (no
    // translation) and the lifetime asked for.
    let mut hole = lab
        .spawn(
            "alice",
            Command::new(binary("pcp-pinhole")).args(["--internal", &internal, "--lifetime", "6"]),
        )
        .unwrap();
    let opened: Value = serde_json::from_str(&wait_stdout_line(&hole, "\"opened\"")).unwrap();
    let opened_at = Instant::now();
    assert_eq!(opened["server"], "[2001:db8:1::1]:5351", "{opened}");
    assert_eq!(opened["external"], internal.as_str());
    assert_eq!(opened["lifetime"], 6);
    assert!(pinholes(&lab).contains("dport 50600"), "{}", pinholes(&lab));
    let seen = pub_connects(&lab, &internal).unwrap();
    assert!(seen.starts_with("[2001:db8::2]:"), "{seen}");

    // Renewal at half-life: the same nonce, granted again, and the pinhole outlives its
    // first lifetime.
    std::thread::sleep(
        (opened_at + Duration::from_secs(3)).saturating_duration_since(Instant::now()),
    );
    hole.send_line("renew").unwrap();
    let renewed: Value = serde_json::from_str(&wait_stdout_line(&hole, "\"renewed\"")).unwrap();
    assert_eq!(renewed["nonce"], opened["nonce"]);
    assert_eq!(renewed["lifetime"], 6);
    let renewed_at = Instant::now();
    std::thread::sleep(
        (opened_at + Duration::from_millis(7500)).saturating_duration_since(Instant::now()),
    );
    assert!(
        pinholes(&lab).contains("dport 50600"),
        "renewed, still open"
    );
    assert!(pub_connects(&lab, &internal).is_ok());

    // Deletion: miniupnpd 2.3.1's nftables backend cannot find its own pinhole and answers
    // NOT_AUTHORIZED; then the pinhole goes when its lifetime ends. A server that deletes it
    // must close it at once.
    hole.send_line("delete").unwrap();
    let line = wait_stdout_line(&hole, "\"delete");
    let gone_by = if line.contains("\"deleted\"") {
        Instant::now()
    } else {
        assert!(line.contains("NOT_AUTHORIZED (2)"), "{line}");
        renewed_at + Duration::from_secs(6 + 3)
    };
    loop {
        if !pinholes(&lab).contains("dport 50600") {
            break;
        }
        assert!(Instant::now() < gone_by, "still open: {}", pinholes(&lab));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "pinhole open {:?} after the grant, {:?} after the renewal: {line}",
        opened_at.elapsed(),
        renewed_at.elapsed()
    );
    let err = pub_connects(&lab, &internal).unwrap_err();
    assert!(err.contains("timed out"), "closed again: {err}");
    hole.send_line("quit").unwrap();
    assert!(hole.wait_timeout(WAIT).unwrap().success());
}

/// Waits for a stdout line of `child` containing `needle`; returns that line.
fn wait_stdout_line(child: &LabChild, needle: &str) -> String {
    child
        .wait_for_stdout(needle, WAIT)
        .unwrap_or_else(|e| panic!("{e}; stderr: {}", child.stderr()))
}
