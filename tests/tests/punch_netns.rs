//! Connect by UNL between two nodes behind NATs (netns-sim, real NATs, real chrony, real processes):
//! the matrix of alice's × bob's NAT kinds, each with the method it must use. alice runs
//! `p2p-node run` behind nat-a (simultaneous when her NAT's ports are predictable, else
//! active); bob runs `p2p-node connect <alice's UNL>` from behind nat-b. Each run asserts the
//! connection opens by the expected method and that lines flow both ways. Punch pairs are run
//! [`PUNCH_RUNS`] times each to show they are not flaky.
//!
//! | alice (nat-a) | bob (nat-b) | expected | why |
//! |---|---|---|---|
//! | port-restricted | port-restricted | punch | both map ports predictably |
//! | full-cone | symmetric | punch | bob's port is random, but alice's NAT lets anyone reach her mapped port (alice told her WAN address, no forwarding check) |
//! | full-cone | symmetric | direct | with the forwarding check, alice finds her port reachable as it is (the registration keeps the full-cone mapping open) and becomes passive |
//! | sequential (delta 1) | port-restricted | punch | alice's NAT steps its ports; she predicts the next ones |
//! | port-restricted | sequential (delta 1) | punch | the same on bob's side |
//! | port-restricted | symmetric | relay | bob's port is random and alice's NAT filters by port |
//! | symmetric | symmetric | relay | nothing can be predicted |
//!
//! Needs root: skipped with a message without it, unless `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use integration_tests::lab_preconditions;
use integration_tests::pairs::{Outcome, PairLab};
use netns_sim::NatKind;

/// How often each punch pair is run.
const PUNCH_RUNS: usize = 10;
/// How often each relay pair is run (behind a port-restricted NAT the relay waits 0.5 s for
/// a punch that cannot meet).
const RELAY_RUNS: usize = 4;

/// Runs the pair `runs` times; each run must connect by `method` and carry a line each way.
fn pair(nat_a: NatKind, nat_b: NatKind, alice_type: &str, method: &str, runs: usize) {
    pair_with(nat_a, nat_b, alice_type, true, method, runs);
}

fn pair_with(
    nat_a: NatKind,
    nat_b: NatKind,
    alice_type: &str,
    alice_checks: bool,
    method: &str,
    runs: usize,
) {
    if !lab_preconditions(&[]) {
        return;
    }
    let mut lab = PairLab::up(nat_a, nat_b, alice_type, alice_checks, &[]);
    let mut times = Vec::new();
    for run in 0..runs {
        let (mut bob, outcome) = lab.connect(&[]);
        let Outcome {
            connected,
            method: got,
            us,
            line,
        } = outcome;
        assert!(
            connected && got.as_deref() == Some(method),
            "{} × {} run {run}: expected {method}, got {line}\nbob: {}\nalice: {}",
            nat_a.name(),
            nat_b.name(),
            bob.stderr(),
            lab.alice.stderr()
        );
        times.push(us);
        let to_alice = format!("run {run}: hello alice, from bob by {method}");
        bob.send_line(&to_alice).unwrap();
        lab.alice
            .wait_for_stdout(&to_alice, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\nbob: {}", bob.stderr()));
        let to_bob = format!("run {run}: hello bob, from alice");
        lab.alice.send_line(&to_bob).unwrap();
        bob.wait_for_stdout(&to_bob, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\nalice: {}", lab.alice.stderr()));
        bob.kill();
    }
    times.sort_unstable();
    eprintln!(
        "{} × {}: {runs}/{runs} by {method}; connect time min {} us, median {} us, max {} us",
        nat_a.name(),
        nat_b.name(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    if method == "relay" {
        let log = lab.server_log("rendezvous");
        assert!(
            log.contains("relay"),
            "the rendezvous logged no relay: {log}"
        );
    }
}

#[test]
fn port_restricted_and_port_restricted_punch() {
    pair(
        NatKind::PortRestricted,
        NatKind::PortRestricted,
        "simultaneous",
        "punch",
        PUNCH_RUNS,
    );
}

#[test]
fn full_cone_and_symmetric_punch() {
    pair_with(
        NatKind::FullCone,
        NatKind::Symmetric,
        "simultaneous",
        false,
        "punch",
        PUNCH_RUNS,
    );
}

#[test]
fn a_full_cone_node_proves_itself_reachable_and_is_dialed_directly() {
    pair(
        NatKind::FullCone,
        NatKind::Symmetric,
        "simultaneous",
        "direct",
        2,
    );
}

#[test]
fn sequential_and_port_restricted_punch() {
    pair(
        NatKind::Sequential,
        NatKind::PortRestricted,
        "simultaneous",
        "punch",
        PUNCH_RUNS,
    );
}

#[test]
fn port_restricted_and_sequential_punch() {
    pair(
        NatKind::PortRestricted,
        NatKind::Sequential,
        "simultaneous",
        "punch",
        PUNCH_RUNS,
    );
}

#[test]
fn port_restricted_and_symmetric_fall_back_to_the_relay() {
    pair(
        NatKind::PortRestricted,
        NatKind::Symmetric,
        "simultaneous",
        "relay",
        RELAY_RUNS,
    );
}

#[test]
fn symmetric_and_symmetric_fall_back_to_the_relay() {
    pair(
        NatKind::Symmetric,
        NatKind::Symmetric,
        "active",
        "relay",
        RELAY_RUNS,
    );
}
