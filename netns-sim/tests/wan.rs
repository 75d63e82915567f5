//! WAN emulation measured with real traffic: delay, jitter and loss within tolerance, an
//! asymmetric link seen as an NTP offset, a dead stage reported instead of looking like loss,
//! and teardown of stages even on panic. Root needed (skipped without, failing with `CI`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TimedLab, assert_gone, num, ready};
use netns_sim::{Lab, LabError, Link, LinkProfile, Topology, TwoNats};

#[test]
fn delay_jitter_and_loss_are_measured_within_tolerance() {
    if !ready(&[]) {
        return;
    }
    // alice: 30 ms ± 5 ms each way; bob: 10 % loss up, 0 ms delay; pub untouched.
    let t = Topology::two_nats(TwoNats::default())
        .with_link(
            "nat-a",
            Link::symmetric(LinkProfile::delay_ms(30).with_jitter_ms(5)),
        )
        .with_link(
            "nat-b",
            Link {
                up: Some(LinkProfile::ZERO.with_loss_percent(10.0)),
                down: None,
            },
        )
        .with_seed(42);
    let lab = TimedLab::up(&t, Duration::from_mins(1));
    let _echo = lab.server("pub", &["udp-echo", "--listen", "0.0.0.0:7100"]);
    let a = lab.ping("alice", "11.0.0.2:7100", 200, 20_000);
    assert_eq!((num(&a, "sent"), num(&a, "received")), (200, 200), "{a}");
    // RTT = 2 x (30 ms ± 5 ms): 50..70 ms plus scheduling slack.
    let (min, p50, p99) = (num(&a, "min_us"), num(&a, "p50_us"), num(&a, "p99_us"));
    assert!(min >= 49_000, "min {min} us: {a}");
    assert!((57_000..=63_000).contains(&p50), "p50 {p50} us: {a}");
    // A loaded two-core machine may delay a wake-up by a few ms now and then.
    assert!(p99 <= 76_000, "p99 {p99} us: {a}");
    assert!(num(&a, "max_us") <= 95_000, "{a}");
    // The sum of two uniform ±5 ms draws has a standard deviation of 4.1 ms.
    let sd = num(&a, "stddev_us");
    assert!((2_500..=6_000).contains(&sd), "stddev {sd} us: {a}");

    let b = lab.ping("bob", "11.0.0.2:7100", 1000, 2_000);
    let (sent, got) = (num(&b, "sent"), num(&b, "received"));
    assert_eq!(sent, 1000);
    // 10 % loss over 1000 packets: 100 ± 30 lost (3 standard deviations).
    assert!((870..=930).contains(&got), "{got} of {sent} arrived: {b}");
    assert!(
        num(&b, "p50_us") < 5_000,
        "no delay configured for bob: {b}"
    );
    assert!(
        lab.lab
            .status_text()
            .contains("link nat-a: up delay 30ms jitter 5ms loss 0%")
    );
    lab.finish();
}

#[test]
fn asymmetric_delay_shows_in_an_ntp_offset() {
    if !ready(&["chronyd"]) {
        return;
    }
    // alice's uplink: 5 ms up, 45 ms down. NTP assumes a symmetric path, so it puts pub's
    // clock (5 - 45) / 2 = -20 ms off, on one machine where the clocks agree.
    let t = Topology::two_nats(TwoNats {
        ntp: true,
        ..TwoNats::default()
    })
    .with_link(
        "nat-a",
        Link::asymmetric(LinkProfile::delay_ms(5), LinkProfile::delay_ms(45)),
    );
    let lab = TimedLab::up(&t, Duration::from_secs(40));
    let field = |line: &str, key: &str| -> f64 {
        let v = line
            .split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .unwrap_or_else(|| panic!("{key} in {line:?}"));
        v.trim_end_matches('s').parse().unwrap()
    };
    let alice = lab.probe("alice", &["ntp", "11.0.0.2:123"]).unwrap();
    let offset = field(&alice, "ntp-offset");
    let delay = field(&alice, "delay");
    assert!(
        (-0.025..=-0.015).contains(&offset),
        "offset {offset}: {alice}"
    );
    // 50 ms configured; a busy 2-core machine (a parallel build) adds up to ~15 ms of
    // scheduling to the stage's release times.
    assert!((0.048..=0.075).contains(&delay), "delay {delay}: {alice}");
    let bob = lab.probe("bob", &["ntp", "11.0.0.2:123"]).unwrap();
    let offset = field(&bob, "ntp-offset");
    assert!(
        offset.abs() < 0.003,
        "bob has no WAN delay, offset {offset}: {bob}"
    );
    lab.finish();
}

#[test]
fn a_dead_stage_is_reported_not_mistaken_for_loss() {
    if !ready(&[]) {
        return;
    }
    let t = Topology::two_nats(TwoNats::default())
        .with_link("nat-a", Link::symmetric(LinkProfile::delay_ms(1)));
    let lab = TimedLab::up(&t, Duration::from_secs(30));
    assert!(
        lab.probe("alice", &["ntp", "11.0.0.2:123", "--timeout-ms", "200"])
            .is_err()
    );
    let stage = lab
        .lab
        .state()
        .daemons
        .iter()
        .find(|d| d.name == netns_sim::lab::STAGE_DAEMON && d.host == "internet")
        .expect("a stage in the internet namespace")
        .clone();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &stage.pid.to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(200));
    let err = lab.lab.exec("alice", &["true"]).unwrap_err();
    assert!(
        matches!(&err, LabError::StageDied { host, .. } if host == "internet"),
        "{err}"
    );
    assert!(err.to_string().contains("carry nothing"), "{err}");
    assert!(lab.lab.status_text().contains("DEAD"));
    let TimedLab { lab: inner, .. } = lab;
    let prefix = inner.prefix().to_owned();
    assert!(matches!(inner.down(), Err(LabError::StageDied { .. })));
    assert_gone(&prefix, &[stage.pid]);
}

#[test]
fn teardown_leaves_no_namespace_rule_or_stage_even_on_panic() {
    if !ready(&[]) {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let t = Topology::two_nats(TwoNats::default())
            .with_link("nat-a", Link::symmetric(LinkProfile::delay_ms(20)))
            .with_link("pub", Link::symmetric(LinkProfile::delay_ms(5)));
        let lab = Lab::up(&t).unwrap();
        let pids: Vec<u32> = lab.state().daemons.iter().map(|d| d.pid).collect();
        let ns = netns_sim::lab::namespace_name(lab.prefix(), "internet");
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "iptables",
                "-t",
                "raw",
                "-S",
                "PREROUTING",
            ])
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&out.stdout).into_owned();
        tx.send((lab.prefix().to_owned(), pids, rules)).unwrap();
        panic!("deliberate panic holding a lab with WAN stages");
    })
    .join();
    assert!(result.is_err());
    let (prefix, pids, rules) = rx.recv().unwrap();
    assert_eq!(
        pids.len(),
        3,
        "stages: internet (ups), nat-a and pub (downs)"
    );
    assert!(rules.contains("-j NFQUEUE --queue-num"), "{rules}");
    assert_gone(&prefix, &pids);
}
