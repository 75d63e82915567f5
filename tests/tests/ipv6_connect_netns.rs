//! Connects over IPv6 in a real lab (netns-sim `--ipv6`: global addresses, home routers that
//! route IPv6 untranslated behind a stateful firewall that drops unsolicited inbound, and
//! NAT IPv4 as usual). Both nodes run with only the server addresses, as a user would:
//! - a dual-stack pair, both behind IPv6 firewalls, connects over IPv6 by a simultaneous open
//!   (each dials the other's IPv6 address from its listening port; the request goes through
//!   alice's mailbox) and exchanges lines; the outcome says `ipv6`;
//! - an IPv4-only alice (`--bind 0.0.0.0`) and a dual-stack bob still connect, over IPv4.
//!
//! Needs root: skipped with a message without it, unless `CI` is set (then it fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::pairs::{PairLab, PairSpec};
use integration_tests::{binary, lab_preconditions};
use netns_sim::NatKind;

fn spec() -> PairSpec {
    PairSpec::new(NatKind::PortRestricted, NatKind::PortRestricted).ipv6()
}

#[test]
fn a_dual_stack_pair_behind_two_ipv6_firewalls_connects_over_ipv6() {
    over_ipv6(spec());
}

/// The same under the internet profile (20-60 ms per access link, jitter, 1 % loss, on IPv6
/// as on IPv4): the SYNs meet across real round trips. A lost packet can hold IPv6 up past
/// its head start so that IPv4 wins (2 of 20 in `punch-bench ipv6`): that is happy eyeballs
/// doing its job, so here at least 2 of 6 connects must be by IPv6, and every one must have
/// tried it.
#[test]
fn a_dual_stack_pair_behind_two_ipv6_firewalls_connects_over_ipv6_wan() {
    over_ipv6(spec().internet());
}

fn over_ipv6(spec: PairSpec) {
    let lossy = spec.wan.is_some();
    let runs = if lossy { 6 } else { 3 };
    let mut by_ipv6 = 0;
    // alice's IPv6 address and port, as bob's IPv6 try dialed it.
    let mut peer = None;
    if !lab_preconditions(&[]) {
        return;
    }
    let mut lab = PairLab::up(spec, &[]);
    let alice_log = lab.alice.stderr();
    assert!(
        alice_log.contains("IPv6 addresses in the UNL chosen=[2001:db8:1::2]"),
        "{alice_log}"
    );
    for run in 0..runs {
        let (mut bob, outcome) = lab.connect(&[]);
        let tried = outcome
            .line
            .split("\"addr\":\"")
            .filter_map(|rest| rest.split('"').next())
            .find(|a| a.starts_with("[2001:db8:1::2]:"))
            .unwrap_or_else(|| panic!("no IPv6 try: {}", outcome.line));
        peer = Some(tried.to_owned());
        if outcome.method.as_deref() != Some("ipv6") {
            assert!(lossy, "{}", outcome.line);
            assert!(outcome.connected, "{}", outcome.line);
            eprintln!("run {run}: IPv4 won: {}", outcome.line);
            lab.exchange_tagged(&mut bob, &format!("run {run}"));
            bob.kill();
            continue;
        }
        by_ipv6 += 1;
        lab.exchange_tagged(&mut bob, &format!("run {run}"));
        eprintln!(
            "{}: connected in {} us (RTT {:?}): {}",
            spec.name(),
            outcome.us,
            lab.rtt,
            outcome.line
        );
        bob.kill();
    }
    assert!(by_ipv6 >= 2, "only {by_ipv6} of {runs} connects by IPv6");
    // The firewall is real: a plain connect from bob to alice's port is dropped.
    let peer = peer.expect("an IPv6 try");
    let probe = lab
        .lab
        .exec(
            "bob",
            &[
                binary("netns-sim").to_str().unwrap(),
                "probe",
                "connect",
                &peer,
                "--send",
                "hello",
                "--timeout-ms",
                "500",
            ],
        )
        .unwrap();
    let err = String::from_utf8_lossy(&probe.stderr);
    assert!(
        !probe.status.success() && err.contains("timed out"),
        "bob's plain connect to {peer} was not dropped: {err}"
    );
}

#[test]
fn an_ipv4_only_peer_and_a_dual_stack_peer_connect_over_ipv4() {
    if !lab_preconditions(&[]) {
        return;
    }
    let mut lab = PairLab::up(spec(), &["--bind", "0.0.0.0"]);
    let (mut bob, outcome) = lab.connect(&[]);
    let method = outcome.method.as_deref();
    assert!(
        matches!(method, Some("punch" | "relay")),
        "{}",
        outcome.line
    );
    assert!(!outcome.line.contains("2001:db8"), "{}", outcome.line);
    lab.exchange_tagged(&mut bob, "v4");
}
