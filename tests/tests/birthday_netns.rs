//! One side behind a NAT that maps every connection to a random port ("hard": symmetric),
//! the other behind one that keeps a mapping per port ("easy"): a birthday punch, with
//! default flags (netns-sim, real NATs, real processes). bob (hard) connects to alice (easy):
//! the relay starts at once, so the first line flows through it, and the session moves to
//! the punched path as soon as the burst of bob's mappings and alice's guesses meet (see
//! `node/src/core/punch/birthday.rs`, `switch.rs`). Each pair runs [`RUNS`] times, without a
//! WAN profile and under `WanProfile::internet()`; at least 90 % must end on a direct path,
//! and lines must flow both ways on the final connection.
//!
//! | alice (easy) | bob (hard) | expected |
//! |---|---|---|
//! | port-restricted | symmetric | relay, then direct (birthday punch) |
//! | restricted-cone | symmetric | relay, then direct |
//! | full-cone | symmetric | relay or the eager dial first, then direct |
//! | port-restricted behind a carrier NAT (endpoint-independent) | symmetric | relay, then direct |
//! | symmetric | symmetric | relay, and it stays (a hard side cannot guess a hard side's ports with sane budgets) |
//!
//! Also: a stream of numbered lines both ways across the upgrade arrives exactly once and in
//! order, and the rendezvous' relay session ends afterwards.
//!
//! Needs root: skipped with a message without it, unless `CI` is set.
//!
//! `BIRTHDAY_DEBUG=1` prints bob's log for every run that stayed relayed (with
//! `RUST_LOG=info,node=debug` and `-- --nocapture`: why the punch did not win).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use integration_tests::lab_preconditions;
use integration_tests::pairs::{PairLab, PairSpec};
use netns_sim::NatKind;

/// Runs per pair.
const RUNS: usize = 20;

/// Runs an easy × hard pair: every run connects; at least 90 % end on a direct path.
fn easy_hard(spec: PairSpec) {
    if !lab_preconditions(&[]) {
        return;
    }
    let mut lab = PairLab::up(spec, &[]);
    let mut direct = Vec::new();
    let mut relayed = 0;
    for run in 0..RUNS {
        let (mut bob, outcome, upgrade) = lab.connect_and_upgrade(&[], Duration::from_secs(8));
        assert!(
            outcome.connected,
            "{} run {run}: {}\nbob: {}",
            spec.name(),
            outcome.line,
            bob.stderr()
        );
        match (outcome.method.as_deref(), &upgrade) {
            (Some("relay"), Some(up)) => direct.push((up.method.clone(), up.ms)),
            (Some("relay"), None) => {
                relayed += 1;
                if std::env::var_os("BIRTHDAY_DEBUG").is_some() {
                    eprintln!("RELAYED RUN {run}\nbob: {}", bob.stderr());
                }
            }
            (Some(method), _) => direct.push((method.to_owned(), outcome.us / 1000)),
            (None, _) => unreachable!("connected without a method"),
        }
        lab.exchange_tagged(&mut bob, &format!("run {run}"));
        bob.kill();
    }
    let mut ms: Vec<u64> = direct.iter().map(|(_, ms)| *ms).collect();
    ms.sort_unstable();
    eprintln!(
        "{}: {}/{RUNS} direct ({:?}), {relayed} stayed relayed; direct path after p50 {} ms, \
         max {} ms (round trip {:?})",
        spec.name(),
        direct.len(),
        direct.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
        ms.get(ms.len() / 2).copied().unwrap_or(0),
        ms.last().copied().unwrap_or(0),
        lab.rtt
    );
    assert!(
        direct.len() * 10 >= RUNS * 9,
        "{}: only {}/{RUNS} runs ended on a direct path\nalice: {}",
        spec.name(),
        direct.len(),
        lab.alice.stderr()
    );
}

macro_rules! pairs {
    ($($name:ident, $wan_name:ident: $spec:expr;)*) => {
        $(
            #[test]
            fn $name() {
                easy_hard($spec);
            }

            #[test]
            fn $wan_name() {
                easy_hard($spec.internet());
            }
        )*
    };
}

pairs! {
    cone_x_symmetric, cone_x_symmetric_wan:
        PairSpec::new(NatKind::PortRestricted, NatKind::Symmetric);
    full_cone_x_symmetric, full_cone_x_symmetric_wan:
        PairSpec::new(NatKind::FullCone, NatKind::Symmetric);
    cgnat_cone_x_symmetric, cgnat_cone_x_symmetric_wan:
        PairSpec::new(NatKind::PortRestricted, NatKind::Symmetric).cgnat_a(NatKind::PortRestricted);
}

#[test]
fn restricted_cone_x_symmetric() {
    easy_hard(PairSpec::new(NatKind::RestrictedCone, NatKind::Symmetric));
}

#[test]
fn restricted_cone_x_symmetric_wan() {
    easy_hard(PairSpec::new(NatKind::RestrictedCone, NatKind::Symmetric).internet());
}

/// Two hard sides: relayed, and the outcome says why nothing direct was tried.
#[test]
fn symmetric_x_symmetric_stays_relayed_and_says_why() {
    if !lab_preconditions(&[]) {
        return;
    }
    let mut lab = PairLab::up(PairSpec::new(NatKind::Symmetric, NatKind::Symmetric), &[]);
    for run in 0..3 {
        let (mut bob, outcome, upgrade) = lab.connect_and_upgrade(&[], Duration::from_secs(2));
        assert_eq!(outcome.method.as_deref(), Some("relay"), "{}", outcome.line);
        assert!(upgrade.is_none());
        assert!(
            outcome.line.contains("they are not a simultaneous node"),
            "the punch's reason: {}",
            outcome.line
        );
        lab.exchange_tagged(&mut bob, &format!("run {run}"));
        bob.kill();
    }
}

/// Numbered lines both ways while the connection moves from the relay to the punched path:
/// each arrives once, in order; afterwards the rendezvous ends the relay session.
fn upgrade_keeps_the_stream(spec: PairSpec) {
    if !lab_preconditions(&[]) {
        return;
    }
    let mut lab = PairLab::up(spec, &[]);
    // The relay starts first and normally wins; under the WAN profile a lost packet on its
    // way can let the punch win outright, and then there is no move to test: connect again
    // (at most three times).
    let mut attempt = 1;
    let (mut bob, outcome) = loop {
        let (mut bob, outcome) = lab.connect(&[]);
        if outcome.method.as_deref() == Some("relay") || attempt == 3 {
            break (bob, outcome);
        }
        eprintln!("attempt {attempt}: the punch won before the relay; again");
        bob.kill();
        attempt += 1;
    };
    assert_eq!(outcome.method.as_deref(), Some("relay"), "{}", outcome.line);
    let alice = &mut lab.alice;
    // Both type lines until well after the upgrade (bob sends his to alice, alice
    // broadcasts hers: both ride the one session), so lines are in flight on both paths
    // while the session moves.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    let mut after_upgrade = None;
    while after_upgrade.is_none_or(|n| sent < n + 100) && std::time::Instant::now() < deadline {
        bob.send_line(&format!("b->a {sent}")).unwrap();
        alice.send_line(&format!("a->b {sent}")).unwrap();
        sent += 1;
        if sent % 5 == 0 {
            std::thread::sleep(Duration::from_millis(5));
            if after_upgrade.is_none() && bob.stdout().contains("\"upgraded\":true") {
                after_upgrade = Some(sent);
            }
        }
    }
    assert!(
        after_upgrade.is_some(),
        "no upgrade within 10 s: {}",
        bob.stderr()
    );
    let last = sent - 1;
    bob.wait_for_stdout(&format!("a->b {last}"), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}"));
    alice
        .wait_for_stdout(&format!("b->a {last}"), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = |text: String, prefix: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    };
    let expected =
        |prefix: &str| -> Vec<String> { (0..sent).map(|i| format!("{prefix} {i}")).collect() };
    assert_eq!(lines(alice.stdout(), "b->a"), expected("b->a"));
    assert_eq!(lines(bob.stdout(), "a->b"), expected("a->b"));
    eprintln!(
        "{}: {sent} lines each way, the upgrade after line {}; all arrived once, in order",
        spec.name(),
        after_upgrade.unwrap_or(0)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !lab.server_log("rendezvous").contains("relay session ended") {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay session did not end: {}",
            lab.server_log("rendezvous")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_upgrade_keeps_every_line_in_order_both_ways() {
    upgrade_keeps_the_stream(PairSpec::new(NatKind::PortRestricted, NatKind::Symmetric));
}

#[test]
fn an_upgrade_keeps_every_line_in_order_both_ways_wan() {
    upgrade_keeps_the_stream(PairSpec::new(NatKind::PortRestricted, NatKind::Symmetric).internet());
}
