//! Real processes behind real NATs (netns-sim): the rendezvous and a passive node on `pub`,
//! alice and bob behind two different NATs join the overlay and flood lines; `nat-type` tells
//! the NAT kinds apart. Needs root: skipped with a message without it, unless `CI` is set.
//!
//! The binaries come from the workspace's target directory (`cargo test --workspace` builds
//! them next to this test's own directory).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use integration_tests::{binary, lab_preconditions};
use netns_sim::{Lab, NatKind, Topology, TwoNats};

fn lab(a: NatKind, b: NatKind) -> Lab {
    Lab::up(&Topology::two_nats(TwoNats {
        a,
        b,
        ..TwoNats::default()
    }))
    .unwrap()
}

#[test]
fn alice_and_bob_behind_different_nats_flood_lines_through_the_overlay() {
    if !lab_preconditions(&[]) {
        return;
    }
    let lab = lab(NatKind::PortRestricted, NatKind::Symmetric);
    let node = binary("p2p-node");
    let pub_ip = lab.addr("pub").to_string();
    let rendezvous = format!("{pub_ip}:8000");
    let _rv = lab
        .spawn(
            "pub",
            Command::new(binary("rendezvous")).args(["--listen", &rendezvous]),
        )
        .unwrap();
    let wait = Duration::from_secs(10);
    // The rendezvous needs a moment to bind; the hub's advertise would fail before that.
    let mut hub = None;
    for _ in 0..50 {
        let child = lab
            .spawn(
                "pub",
                Command::new(&node).args([
                    "run",
                    "--rendezvous",
                    &rendezvous,
                    "--bind",
                    &pub_ip,
                    "--port",
                    "7100",
                ]),
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        if child.stderr().contains("events: advertised") {
            hub = Some(child);
            break;
        }
    }
    let _hub = hub.expect("the hub node never advertised");
    let mut peers: Vec<_> = ["alice", "bob"]
        .iter()
        .map(|who| {
            let child = lab
                .spawn(
                    who,
                    Command::new(&node).args([
                        "run",
                        "--rendezvous",
                        &rendezvous,
                        "--no-listen",
                        "--show-events",
                        "--json",
                    ]),
                )
                .unwrap();
            child
                .wait_for_stdout("\"event\":\"connected\"", wait)
                .unwrap();
            child
        })
        .collect();
    peers[0].send_line("alice says hi").unwrap();
    let got = peers[1].wait_for_stdout("alice says hi", wait).unwrap();
    // bob sees the line on its connection to the hub on pub (7100), not from alice directly.
    assert!(got.contains(&format!("{pub_ip}:7100")), "{got}");
    peers[1].send_line("bob says hi").unwrap();
    peers[0].wait_for_stdout("bob says hi", wait).unwrap();
    // Exactly once each.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(peers[1].stdout().matches("alice says hi").count(), 1);
    assert_eq!(peers[0].stdout().matches("bob says hi").count(), 1);
}

#[test]
fn nat_type_tells_preserving_random_and_delta_apart() {
    if !lab_preconditions(&[]) {
        return;
    }
    for (kind, expected) in [
        (NatKind::PortRestricted, "\"kind\":\"preserving\""),
        (NatKind::Symmetric, "\"kind\":\"random\""),
        (NatKind::Sequential, "\"kind\":\"delta\",\"delta\":1"),
    ] {
        let lab = lab(kind, NatKind::None);
        let rendezvous = format!("{}:8000", lab.addr("pub"));
        let _rv = lab
            .spawn(
                "pub",
                Command::new(binary("rendezvous")).args(["--listen", &rendezvous]),
            )
            .unwrap();
        let mut last = String::new();
        for _ in 0..50 {
            let out = lab
                .exec(
                    "alice",
                    &[
                        binary("p2p-node").to_str().unwrap(),
                        "nat-type",
                        "--rendezvous",
                        &rendezvous,
                        "--json",
                    ],
                )
                .unwrap();
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(last.contains(expected), "{kind:?}: {last}");
    }
}
