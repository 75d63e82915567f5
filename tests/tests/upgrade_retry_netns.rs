//! A relayed connection whose punch missed punches again on the live session, and moves to
//! the direct path when that works. In a real lab (two port-restricted NATs, default flags):
//! nat-b drops everything between bob and alice's WAN address, so the relay (through `pub`)
//! wins and the punch fails; once bob logs that the punch is tried again, the block goes, and
//! the next try moves the session off the relay while lines flow.
//!
//! This found a real bug: the retry ran on bob's registration port again, the same pair of
//! addresses and ports as the failed punch, and nat-a still tracked that one (an unanswered
//! SYN, 2 minutes, with the old sequence numbers), so alice's SYN-ACK was dropped as invalid.
//! A retry now always takes a fresh port. `RETRY_DEBUG=1` prints both hosts' sockets (`ss`) and
//! both routers' conntrack tables a moment after the block goes.
//!
//! Needs root: skipped with a message without it, unless `CI` is set (then it fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use integration_tests::lab_preconditions;
use integration_tests::pairs::{PairLab, PairSpec};
use netns_sim::NatKind;

#[test]
fn a_missed_punch_is_tried_again_and_the_session_moves_off_the_relay() {
    if !lab_preconditions(&["nft"]) {
        return;
    }
    let mut lab = PairLab::up(
        PairSpec::new(NatKind::PortRestricted, NatKind::PortRestricted),
        &[],
    );
    let alice_wan = lab.lab.addr("nat-a").to_string();
    let nft = |args: &str| {
        let argv: Vec<&str> = std::iter::once("nft").chain(args.split(' ')).collect();
        lab.lab.exec_ok("nat-b", &argv).unwrap();
    };
    nft("add table inet block");
    nft("add chain inet block forward_block { type filter hook prerouting priority -300 ; }");
    nft(&format!(
        "add rule inet block forward_block ip daddr {alice_wan} drop"
    ));
    nft(&format!(
        "add rule inet block forward_block ip saddr {alice_wan} drop"
    ));
    let (mut bob, outcome) = lab.connect(&[]);
    assert_eq!(outcome.method.as_deref(), Some("relay"), "{}", outcome.line);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bob.stderr().contains("the punch is tried again") {
        assert!(
            Instant::now() < deadline,
            "the punch was not tried again: {}",
            bob.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    nft("delete table inet block");
    if std::env::var_os("RETRY_DEBUG").is_some() {
        std::thread::sleep(Duration::from_millis(1200));
        for (host, argv) in [
            ("alice", vec!["ss", "-tan"]),
            ("bob", vec!["ss", "-tan"]),
            ("nat-a", vec!["conntrack", "-L", "-p", "tcp"]),
            ("nat-b", vec!["conntrack", "-L", "-p", "tcp"]),
        ] {
            let out = lab.lab.exec(host, &argv).unwrap();
            eprintln!("--- {host}:\n{}", String::from_utf8_lossy(&out.stdout));
        }
    }
    lab.exchange_tagged(&mut bob, "before the move");
    let upgraded = bob
        .wait_for_stdout("\"upgraded\":true", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\nalice: {}", lab.alice.stderr()));
    assert!(bob.stderr().contains("punching again"), "{}", bob.stderr());
    assert!(upgraded.contains(&alice_wan), "{upgraded}");
    lab.exchange_tagged(&mut bob, "after the move");
}
