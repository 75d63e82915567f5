//! Connect by UNL between two nodes behind NATs (netns-sim, real NATs, real chrony, real
//! processes), **with default flags**: alice runs `p2p-node run` and bob `p2p-node connect
//! <alice's UNL>`, each given only `--rendezvous`, `--dht-msg` and `--ntp`, as a new user
//! would. Each node works out its own role, WAN address and NAT from the rendezvous. Each pair
//! runs without a WAN profile and under [`netns_sim::WanProfile::internet`] (every access link
//! 20-60 ms one way, 3 ms of jitter, 1 % loss); each run asserts the expected method and that
//! lines flow both ways (under the WAN profile one run per pair may end on the relay instead:
//! a lost SYN plus the handshake round trip, see [`WAN_RELAYED_ALLOWED`]). Punch pairs run
//! [`PUNCH_RUNS`] times each.
//!
//! | alice (nat-a) | bob (nat-b) | expected | why |
//! |---|---|---|---|
//! | port-restricted | port-restricted | punch | both map ports predictably: both are simultaneous |
//! | sequential (delta 1) | port-restricted | punch | alice's NAT steps its ports; she probes and predicts the next ones |
//! | port-restricted | sequential (delta 1) | punch | the same on bob's side (his candidacy observes his counter) |
//! | symmetric | symmetric | relay | nothing can be predicted (both active: the relay starts at once) |
//! | none | port-restricted | direct | alice has no NAT: the rendezvous sees her own address, she is passive |
//! | port-restricted behind a carrier NAT (endpoint-independent) | port-restricted | punch | two NATs deep, both keep one mapping per port |
//!
//! The pairs with one side behind a NAT that maps ports at random and the other behind one
//! that keeps a mapping per port (the birthday punch, relay first, then the upgrade) are in
//! `birthday_netns.rs`.
//!
//! Needs root: skipped with a message without it, unless `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::lab_preconditions;
use integration_tests::pairs::{Outcome, PairLab, PairSpec};
use netns_sim::NatKind;

/// How often each punch pair is run.
const PUNCH_RUNS: usize = 10;
/// How often each relay or direct pair is run.
const OTHER_RUNS: usize = 3;

/// Under the WAN profile (1 % loss per link and direction), how many runs of a pair may
/// end on the relay instead of `method`: a lost SYN waits 1 s for its retransmission, and
/// with the handshake's round trip on top the relay can win. `punch-bench` measures the
/// same share (19 or 20 of 20 by the expected method).
const WAN_RELAYED_ALLOWED: usize = 1;

/// Runs the pair `runs` times; each run must connect by `method` (under the WAN profile, at
/// most [`WAN_RELAYED_ALLOWED`] runs by the relay instead) and carry a line each way.
fn pair(spec: PairSpec, method: &str, runs: usize) {
    if !lab_preconditions(&[]) {
        return;
    }
    let mut lab = PairLab::up(spec, &[]);
    let mut times = Vec::new();
    let mut relayed = 0;
    for run in 0..runs {
        let (mut bob, outcome) = lab.connect(&[]);
        let Outcome {
            connected,
            method: got,
            us,
            line,
            ..
        } = outcome;
        let fallback =
            spec.wan.is_some() && got.as_deref() == Some("relay") && relayed < WAN_RELAYED_ALLOWED;
        assert!(
            connected && (got.as_deref() == Some(method) || fallback),
            "{} run {run}: expected {method}, got {line}\nbob: {}\nalice: {}",
            spec.name(),
            bob.stderr(),
            lab.alice.stderr()
        );
        if got.as_deref() != Some(method) {
            relayed += 1;
            eprintln!(
                "{} run {run}: relayed under loss: {line}\nbob: {}\nalice: {}",
                spec.name(),
                bob.stderr(),
                lab.alice.stderr()
            );
        }
        times.push(us);
        lab.exchange_tagged(&mut bob, &format!("run {run}"));
        bob.kill();
    }
    times.sort_unstable();
    eprintln!(
        "{}: {}/{runs} by {method}; connect time min {} us, median {} us, max {} us \
         (alice-bob round trip {:?})",
        spec.name(),
        runs - relayed,
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        lab.rtt
    );
    if method == "relay" {
        let log = lab.server_log("rendezvous");
        assert!(
            log.contains("relay"),
            "the rendezvous logged no relay: {log}"
        );
    }
}

/// Each pair of the matrix, without a WAN profile and under the internet profile.
macro_rules! matrix {
    ($($name:ident, $wan_name:ident: $spec:expr => $method:expr, $runs:expr;)*) => {
        $(
            #[test]
            fn $name() {
                pair($spec, $method, $runs);
            }

            #[test]
            fn $wan_name() {
                pair($spec.internet(), $method, $runs);
            }
        )*
    };
}

matrix! {
    cone_x_cone_punch, cone_x_cone_punch_wan:
        PairSpec::new(NatKind::PortRestricted, NatKind::PortRestricted) => "punch", PUNCH_RUNS;
    sequential_x_cone_punch, sequential_x_cone_punch_wan:
        PairSpec::new(NatKind::Sequential, NatKind::PortRestricted) => "punch", PUNCH_RUNS;
    cone_x_sequential_punch, cone_x_sequential_punch_wan:
        PairSpec::new(NatKind::PortRestricted, NatKind::Sequential) => "punch", PUNCH_RUNS;
    symmetric_x_symmetric_relay, symmetric_x_symmetric_relay_wan:
        PairSpec::new(NatKind::Symmetric, NatKind::Symmetric) => "relay", OTHER_RUNS;
    no_nat_x_cone_direct, no_nat_x_cone_direct_wan:
        PairSpec::new(NatKind::None, NatKind::PortRestricted) => "direct", OTHER_RUNS;
    cgnat_cone_x_cone_punch, cgnat_cone_x_cone_punch_wan:
        PairSpec::new(NatKind::PortRestricted, NatKind::PortRestricted)
            .cgnat_a(NatKind::PortRestricted) => "punch", PUNCH_RUNS;
}
