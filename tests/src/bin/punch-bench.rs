//! `punch-bench`: for each pair of NAT kinds in the hole-punching matrix, how many of N connects
//! by UNL open by the expected method, and how long they take (p50/p99), in a netns-sim lab
//! (needs root). Each run is a fresh `p2p-node connect --no-stdin --json` process on bob; the
//! time is the one the node measured from its `connect` call to the confirmed connection.
//!
//! ```text
//! sudo target/release/punch-bench [RUNS]     (default 20; build with
//!                                            `cargo build --release --workspace` first)
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)]

use integration_tests::pairs::{PairLab, percentile};
use netns_sim::{NatKind, sys};

fn main() {
    if !sys::is_root() {
        eprintln!("punch-bench: needs root (network namespaces)");
        std::process::exit(1);
    }
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(20, |a| a.parse().expect("RUNS is a number"));
    // (alice's NAT, bob's NAT, alice's node type, alice uses the forwarding check, expected)
    let matrix = [
        (
            NatKind::PortRestricted,
            NatKind::PortRestricted,
            "simultaneous",
            true,
            "punch",
        ),
        (
            NatKind::FullCone,
            NatKind::Symmetric,
            "simultaneous",
            false,
            "punch",
        ),
        (
            NatKind::Sequential,
            NatKind::PortRestricted,
            "simultaneous",
            true,
            "punch",
        ),
        (
            NatKind::PortRestricted,
            NatKind::Sequential,
            "simultaneous",
            true,
            "punch",
        ),
        (
            NatKind::PortRestricted,
            NatKind::Symmetric,
            "simultaneous",
            true,
            "relay",
        ),
        (
            NatKind::Symmetric,
            NatKind::Symmetric,
            "active",
            true,
            "relay",
        ),
        (
            NatKind::FullCone,
            NatKind::Symmetric,
            "simultaneous",
            true,
            "direct",
        ),
    ];
    println!("{runs} connects per pair (bob -> alice by UNL)");
    println!(
        "{:<16} {:<16} {:<8} {:>7} {:>10} {:>10} {:>10}",
        "alice NAT", "bob NAT", "method", "ok", "p50 ms", "p99 ms", "max ms"
    );
    // The limits are per minute: lift them for a bench that connects many times a minute.
    let lifted = [
        "--max-punch-per-minute",
        "10000",
        "--max-reverse-per-minute",
        "10000",
    ];
    for (a, b, alice_type, checks, method) in matrix {
        let lab = PairLab::up(a, b, alice_type, checks, &lifted);
        let mut times = Vec::new();
        let mut ok = 0;
        for _ in 0..runs {
            let (_bob, outcome) = lab.connect(&["--no-stdin"]);
            if outcome.connected && outcome.method.as_deref() == Some(method) {
                ok += 1;
                times.push(outcome.us);
            } else {
                eprintln!("{} x {}: {}", a.name(), b.name(), outcome.line);
            }
        }
        times.sort_unstable();
        #[allow(clippy::cast_precision_loss)]
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "{:<16} {:<16} {:<8} {:>4}/{:<2} {:>10.2} {:>10.2} {:>10.2}",
            a.name(),
            b.name(),
            method,
            ok,
            runs,
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(times.last().copied().unwrap_or(0)),
        );
    }
}
