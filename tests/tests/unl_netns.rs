//! Connect by UNL across real NATs (netns-sim, real processes): direct to a node with no NAT,
//! reverse connect through the dht-msg mailbox on `pub` towards a node behind a
//! port-restricted NAT, and LAN connect between two hosts behind one NAT. Needs root: skipped
//! with a message without it, unless `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{Scratch, binary, lab_preconditions, node_command};
use netns_sim::{Lab, LabChild, NatKind, Topology, TwoNats};

/// Starts dht-msg on `pub` and returns its `host:port` once it accepts connections.
fn start_dht_msg(lab: &Lab) -> (LabChild, String) {
    let addr = format!("{}:8090", lab.addr("pub"));
    let child = lab
        .spawn(
            "pub",
            Command::new(binary("dht-msg")).args(["--listen", &addr]),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !child.stderr().contains("listening") {
        assert!(
            Instant::now() < deadline,
            "dht-msg did not start: {}",
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

/// Runs `p2p-node run` on `host` with `args`, and waits for its UNL file.
fn run_node(lab: &Lab, host: &str, dir: &Path, args: &[&str]) -> (LabChild, String) {
    let unl_file = dir.join(format!("{host}.unl"));
    let mut all = vec!["run", "--unl-file", unl_file.to_str().unwrap()];
    all.extend_from_slice(args);
    let child = lab.spawn(host, node_command(lab, host).args(&all)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(&unl_file)
            && !text.trim().is_empty()
            && child.stderr().contains("mailbox registered")
        {
            return (child, text.trim().to_owned());
        }
        assert!(
            Instant::now() < deadline,
            "{host} wrote no UNL or did not register its mailbox: {}",
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `p2p-node connect UNL --json` on `host`; returns the process and its outcome line.
fn connect(lab: &Lab, host: &str, unl: &str, args: &[&str]) -> (LabChild, String) {
    let mut all = vec!["connect", unl, "--json"];
    all.extend_from_slice(args);
    let child = lab.spawn(host, node_command(lab, host).args(&all)).unwrap();
    let line = child
        .wait_for_stdout("\"connected\":", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{host}: no outcome: {e}; stderr: {}", child.stderr()));
    eprintln!("{host} -> {unl}: {line}");
    (child, line)
}

fn lab(a: NatKind, b: NatKind, carol: bool) -> Lab {
    Lab::up(&Topology::two_nats(TwoNats {
        a,
        b,
        carol,
        ..TwoNats::default()
    }))
    .unwrap()
}

#[test]
fn bob_connects_direct_and_alice_connects_back_by_reverse_connect() {
    if !lab_preconditions(&[]) {
        return;
    }
    // alice has no NAT (reachable: passive); bob is behind a port-restricted NAT.
    let lab = lab(NatKind::None, NatKind::PortRestricted, false);
    let dir = Scratch::new("direct-reverse");
    let (_dht, dht) = start_dht_msg(&lab);

    // bob -> alice: alice is passive, so bob dials her directly.
    let (mut alice, alice_unl) = run_node(&lab, "alice", &dir.0, &["--dht-msg", &dht]);
    let (mut bob_dialer, outcome) = connect(&lab, "bob", &alice_unl, &["--dht-msg", &dht]);
    assert!(outcome.contains("\"connected\":true"), "{outcome}");
    assert!(outcome.contains("\"method\":\"direct\""), "{outcome}");
    bob_dialer.send_line("hello alice, from bob").unwrap();
    alice
        .wait_for_stdout("hello alice, from bob", Duration::from_secs(5))
        .unwrap();
    alice.send_line("hello bob, from alice").unwrap();
    bob_dialer
        .wait_for_stdout("hello bob, from alice", Duration::from_secs(5))
        .unwrap();

    // alice -> bob: bob cannot be dialed (NAT), so alice asks him through his mailbox.
    let (mut bob, bob_unl) = run_node(
        &lab,
        "bob",
        &dir.0,
        &["--dht-msg", &dht, "--node-type", "active"],
    );
    let (mut alice_dialer, outcome) = connect(
        &lab,
        "alice",
        &bob_unl,
        &["--dht-msg", &dht, "--port", "7300"],
    );
    assert!(outcome.contains("\"connected\":true"), "{outcome}");
    assert!(outcome.contains("\"method\":\"reverse\""), "{outcome}");
    // The direct try was not even possible: bob is not passive.
    assert!(outcome.contains("they are not passive"), "{outcome}");
    alice_dialer.send_line("reverse works").unwrap();
    bob.wait_for_stdout("reverse works", Duration::from_secs(5))
        .unwrap();
    bob.send_line("both ways").unwrap();
    alice_dialer
        .wait_for_stdout("both ways", Duration::from_secs(5))
        .unwrap();
    assert!(
        bob.stderr().contains("reverse connect requested"),
        "{}",
        bob.stderr()
    );
}

#[test]
fn a_reverse_connect_without_a_mailbox_or_to_a_dead_node_fails_with_reasons() {
    if !lab_preconditions(&[]) {
        return;
    }
    let lab = lab(NatKind::None, NatKind::PortRestricted, false);
    let dir = Scratch::new("fail");
    let (_dht, dht) = start_dht_msg(&lab);
    let (mut bob, bob_unl) = run_node(
        &lab,
        "bob",
        &dir.0,
        &["--dht-msg", &dht, "--node-type", "active"],
    );
    // No --dht-msg: no method can reach an active node.
    let (_a, outcome) = connect(&lab, "alice", &bob_unl, &[]);
    assert!(outcome.contains("\"connected\":false"), "{outcome}");
    assert!(
        outcome.contains("no dht-msg server configured"),
        "{outcome}"
    );
    // bob gone: the request sits in his mailbox and nobody dials back before the timeout.
    bob.send_line("bye").unwrap();
    drop(bob);
    let (_a, outcome) = connect(
        &lab,
        "alice",
        &bob_unl,
        &["--dht-msg", &dht, "--timeout", "1500ms"],
    );
    assert!(outcome.contains("\"connected\":false"), "{outcome}");
    assert!(outcome.contains("\"method\":\"reverse\""), "{outcome}");
}

#[test]
fn carol_and_alice_behind_one_nat_connect_over_the_lan() {
    if !lab_preconditions(&[]) {
        return;
    }
    let lab = lab(NatKind::PortRestricted, NatKind::PortRestricted, true);
    let dir = Scratch::new("lan");
    let (_dht, dht) = start_dht_msg(&lab);
    let wan = lab.public_addr("alice").to_string();
    let (alice, alice_unl) = run_node(
        &lab,
        "alice",
        &dir.0,
        &["--dht-msg", &dht, "--wan-ip", &wan],
    );
    let (mut carol, outcome) = connect(
        &lab,
        "carol",
        &alice_unl,
        &["--dht-msg", &dht, "--wan-ip", &wan],
    );
    assert!(outcome.contains("\"connected\":true"), "{outcome}");
    assert!(outcome.contains("\"method\":\"lan\""), "{outcome}");
    // The peer is alice's LAN address, not the NAT's.
    assert!(
        outcome.contains(&format!("\"peer\":\"{}:", lab.addr("alice"))),
        "{outcome}"
    );
    carol.send_line("hi neighbour").unwrap();
    alice
        .wait_for_stdout("hi neighbour", Duration::from_secs(5))
        .unwrap();
}
