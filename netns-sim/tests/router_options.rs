//! Router options with real TCP: a short established timeout closes an idle mapping (a later
//! inbound packet is dropped) while a keepalive keeps it; RST mode answers an unsolicited SYN.
//! Root needed (skipped without, failing with `CI`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TimedLab, ready};
use netns_sim::{NatKind, Timeouts, Topology, TwoNats, Unsolicited};

#[test]
fn a_short_established_timeout_closes_an_idle_mapping_and_a_keepalive_keeps_it() {
    if !ready(&[]) {
        return;
    }
    let t = Topology::two_nats(TwoNats {
        a: NatKind::PortRestricted,
        ..TwoNats::default()
    })
    .with_router("nat-a", |r| {
        r.timeouts = Timeouts {
            tcp_established: Some(Duration::from_secs(2)),
            ..Timeouts::default()
        };
    });
    let lab = TimedLab::up(&t, Duration::from_mins(1));
    let sysctl = lab
        .lab
        .exec_ok(
            "nat-a",
            &[
                "sysctl",
                "-n",
                "net.netfilter.nf_conntrack_tcp_timeout_established",
            ],
        )
        .unwrap();
    assert_eq!(sysctl.trim(), "2");
    // pub stays silent 4 s, then writes: alice's idle mapping is gone by then.
    let _idle = lab.server(
        "pub",
        &[
            "hold-serve",
            "--listen",
            "0.0.0.0:7200",
            "--after-ms",
            "4000",
        ],
    );
    let idle = lab.probe(
        "alice",
        &["hold-connect", "11.0.0.2:7200", "--timeout-ms", "7000"],
    );
    let err = idle.expect_err("the late line must be dropped by nat-a");
    assert!(err.contains("timed out"), "{err}");
    // The same with a byte from alice every second: the mapping stays.
    let _kept = lab.server(
        "pub",
        &[
            "hold-serve",
            "--listen",
            "0.0.0.0:7201",
            "--after-ms",
            "4000",
        ],
    );
    let kept = lab
        .probe(
            "alice",
            &[
                "hold-connect",
                "11.0.0.2:7201",
                "--keepalive-ms",
                "1000",
                "--timeout-ms",
                "7000",
            ],
        )
        .unwrap();
    assert_eq!(kept, "late line");
    // bob's router keeps the kernel default: his idle connection survives.
    let _b = lab.server(
        "pub",
        &[
            "hold-serve",
            "--listen",
            "0.0.0.0:7202",
            "--after-ms",
            "4000",
        ],
    );
    let bob = lab
        .probe(
            "bob",
            &["hold-connect", "11.0.0.2:7202", "--timeout-ms", "7000"],
        )
        .unwrap();
    assert_eq!(bob, "late line");
    lab.finish();
}

#[test]
fn rst_mode_answers_an_unsolicited_syn_with_a_reset() {
    if !ready(&[]) {
        return;
    }
    let t = Topology::two_nats(TwoNats::default())
        .with_router("nat-a", |r| r.unsolicited = Unsolicited::Rst);
    let lab = TimedLab::up(&t, Duration::from_secs(30));
    let started = Instant::now();
    let err = lab
        .probe(
            "pub",
            &["connect", "11.0.0.101:7300", "--timeout-ms", "3000"],
        )
        .unwrap_err();
    assert!(
        err.contains("refused"),
        "nat-a must answer with a RST: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a RST is immediate"
    );
    // nat-b keeps the default: silence.
    let err = lab
        .probe(
            "pub",
            &["connect", "11.0.0.102:7300", "--timeout-ms", "1000"],
        )
        .unwrap_err();
    assert!(err.contains("timed out"), "nat-b must drop silently: {err}");
    assert!(
        lab.lab
            .status_text()
            .contains("router nat-a: unsolicited rst")
    );
    lab.finish();
}
