//! Mappings that stay open, and registrations that come back (netns-sim, real NATs, real
//! processes, default flags plus `--keepalive`): both home routers forget an idle TCP
//! connection after 6 s, as carrier NATs and some home routers do (RFC 5382 asks for 2 h 4 min).
//!
//! - With `--keepalive 2s` (below the routers' timeout), an idle punched connection still
//!   carries lines after 15 s, and alice's registration and mailbox still reach her: a new
//!   connect punches again.
//! - With the default 30 s (above it), the same idle connection is dead after 15 s (its lines
//!   are dropped by a NAT that forgot it), and the next connect cannot punch.
//! - A rendezvous that restarts (forgetting every registration) gets alice's registration
//!   back, and bob punches to her again.
//!
//! Needs root: skipped with a message without it, unless `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use integration_tests::lab_preconditions;
use integration_tests::pairs::{PairLab, PairSpec};
use netns_sim::NatKind;

/// The routers' established-TCP timeout.
const NAT_TIMEOUT: Duration = Duration::from_secs(6);
/// How long the connection stays idle: more than twice the timeout.
const IDLE: Duration = Duration::from_secs(15);

fn spec() -> PairSpec {
    PairSpec::new(NatKind::PortRestricted, NatKind::PortRestricted).tcp_timeout(NAT_TIMEOUT)
}

/// Whether a line from bob reaches alice within `within`.
fn bob_reaches_alice(
    lab: &mut PairLab,
    bob: &mut netns_sim::LabChild,
    line: &str,
    within: Duration,
) -> bool {
    bob.send_line(line).unwrap();
    lab.alice.wait_for_stdout(line, within).is_ok()
}

#[test]
fn keepalives_below_the_nat_timeout_keep_an_idle_node_reachable() {
    if !lab_preconditions(&[]) {
        return;
    }
    let mut lab = PairLab::up(spec(), &["--keepalive", "2s"]);
    let (mut bob, outcome) = lab.connect(&["--keepalive", "2s"]);
    assert_eq!(outcome.method.as_deref(), Some("punch"), "{}", outcome.line);
    assert!(bob_reaches_alice(
        &mut lab,
        &mut bob,
        "before the pause",
        Duration::from_secs(5)
    ));
    std::thread::sleep(IDLE);
    assert!(
        bob_reaches_alice(
            &mut lab,
            &mut bob,
            "after the pause",
            Duration::from_secs(5)
        ),
        "the idle connection died\nbob: {}\nalice: {}",
        bob.stderr(),
        lab.alice.stderr()
    );
    lab.alice.send_line("alice after the pause").unwrap();
    bob.wait_for_stdout("alice after the pause", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let (_bob2, again) = lab.connect(&["--no-stdin", "--keepalive", "2s"]);
    assert_eq!(
        again.method.as_deref(),
        Some("punch"),
        "alice's registration did not survive the pause: {}\nalice: {}",
        again.line,
        lab.alice.stderr()
    );
}

#[test]
fn keepalives_above_the_nat_timeout_lose_the_idle_mappings() {
    if !lab_preconditions(&[]) {
        return;
    }
    let mut lab = PairLab::up(spec(), &[]);
    let (mut bob, outcome) = lab.connect(&[]);
    assert_eq!(outcome.method.as_deref(), Some("punch"), "{}", outcome.line);
    assert!(bob_reaches_alice(
        &mut lab,
        &mut bob,
        "before the pause",
        Duration::from_secs(5)
    ));
    std::thread::sleep(IDLE);
    assert!(
        !bob_reaches_alice(
            &mut lab,
            &mut bob,
            "after the pause",
            Duration::from_secs(3)
        ),
        "the NATs should have forgotten the idle connection"
    );
    let (_bob2, again) = lab.connect(&["--no-stdin"]);
    assert_ne!(
        again.method.as_deref(),
        Some("punch"),
        "alice's registration should be unreachable: {}",
        again.line
    );
}

#[test]
fn a_restarted_rendezvous_gets_the_registration_back_and_punches_work_again() {
    if !lab_preconditions(&[]) {
        return;
    }
    let mut lab = PairLab::up(
        PairSpec::new(NatKind::PortRestricted, NatKind::PortRestricted),
        &[],
    );
    let (_bob, first) = lab.connect(&["--no-stdin"]);
    assert_eq!(first.method.as_deref(), Some("punch"), "{}", first.line);
    lab.restart_rendezvous();
    // alice notices the lost session, reconnects after the first retry delay (1 s) and
    // registers again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lab
        .alice
        .stderr()
        .matches("registered as a simultaneous node")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "alice did not register again: {}",
            lab.alice.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_bob2, again) = lab.connect(&["--no-stdin"]);
    assert_eq!(
        again.method.as_deref(),
        Some("punch"),
        "{}\nalice: {}",
        again.line,
        lab.alice.stderr()
    );
}
