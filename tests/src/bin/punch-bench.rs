//! `punch-bench`: for each pair of NAT kinds in the hole-punching matrix, how many of N connects
//! by UNL open by the expected method, and how long they take (p50/p99, and p50 over the round
//! trip between alice and bob), in a netns-sim lab (needs root), **with default flags**: both
//! nodes get only the server addresses. Each pair runs without a WAN profile and under
//! `WanProfile::internet()` (access links 20-60 ms one way, 3 ms jitter, 1 % loss). Each run
//! is a fresh `p2p-node connect --no-stdin --json` process on bob; the time is the one the
//! node measured from its `connect` call to the confirmed connection. Each pair runs twice in
//! the same lab: by alice's v3 UNL (encrypted, the default) and by her v2 UNL (plain text, as
//! a PyP2P peer), so the cost of the handshake shows beside the plain figure.
//!
//! ```text
//! sudo target/release/punch-bench [RUNS] [wan|lan|both]   (default 20 both; build with
//!                                                         `cargo build --release --workspace`)
//! sudo target/release/punch-bench birthday [RUNS] [wan|lan|both]
//! sudo target/release/punch-bench ipv6 [RUNS] [wan|lan|both]
//! ```
//!
//! `birthday`: the easy × hard pairs (one side's NAT maps ports at random): for each budget
//! N = M ∈ {64, 128, 256, 512, 1024} (`--max-punch-sockets` on both), the share of connects
//! that end on a direct path, the time to the first line (the relay, which starts at once)
//! and to the direct path (p50/p99), and the SYNs sent per attempt; then the other easy ×
//! hard pairs at the default budget.
//!
//! `ipv6`: dual-stack labs (netns-sim `--ipv6`: the home routers are stateful IPv6
//! firewalls; a `none` router routes without one): the time to connect over IPv6 through two
//! firewalls (a simultaneous open) and directly (alice without a firewall), each beside the
//! same pair over IPv4 (alice run with `--bind 0.0.0.0`: the punch, the direct dial).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use integration_tests::bench_cli::BenchCli;
use integration_tests::pairs::{PairLab, PairSpec, percentile};
use netns_sim::NatKind;

const CLI: BenchCli = BenchCli {
    name: "punch-bench",
    usage: "\
usage: punch-bench [RUNS] [wan|lan|both]            the hole-punching matrix (default 20 both)
       punch-bench birthday [RUNS] [wan|lan|both]   the birthday punch: budgets, then pairs
       punch-bench ipv6 [RUNS] [wan|lan|both]       IPv6 (firewalls, direct) beside IPv4

Connects by UNL in a netns-sim lab (needs root) with default flags; each pair without a WAN
profile (lan), under the internet profile (wan: 20-60 ms per access link, 3 ms jitter, 1 %
loss), or both. Build first: cargo build --release --workspace",
};

fn main() {
    let mut args = CLI.args();
    let mode = match args.first().map(String::as_str) {
        Some(m @ ("birthday" | "ipv6")) => {
            let m = m.to_owned();
            args.remove(0);
            m
        }
        _ => "matrix".to_owned(),
    };
    let runs: usize = CLI
        .number(args.first().map(String::as_str), "RUNS", 20)
        .max(1);
    let profiles: Vec<bool> = match args.get(1).map(String::as_str) {
        Some("wan") => vec![true],
        Some("lan") => vec![false],
        None | Some("both") => vec![false, true],
        Some(other) => CLI.fail(&format!("profile {other:?}: wan, lan or both")),
    };
    if let Some(extra) = args.get(2) {
        CLI.fail(&format!("unexpected argument {extra:?}"));
    }
    CLI.require_root();
    match mode.as_str() {
        "birthday" => birthday_bench(runs, &profiles),
        "ipv6" => ipv6_bench(runs, &profiles),
        _ => matrix_bench(runs, &profiles),
    }
}

/// IPv6 beside IPv4: each pair in a dual-stack lab, then the same pair with alice on IPv4
/// only (bob is dual stack in both).
fn ipv6_bench(runs: usize, profiles: &[bool]) {
    let pairs = [
        (
            PairSpec::new(NatKind::PortRestricted, NatKind::PortRestricted).ipv6(),
            "punch",
        ),
        (
            PairSpec::new(NatKind::None, NatKind::PortRestricted).ipv6(),
            "direct",
        ),
    ];
    println!("{runs} connects per line (bob -> alice by v3 UNL), default flags");
    table_header("alice");
    for &wan in profiles {
        for (spec, v4_method) in pairs {
            let spec = if wan { spec.internet() } else { spec };
            let lab = PairLab::up(spec, &[]);
            matrix_line(&lab, spec, "ipv6", "dual", runs);
            drop(lab);
            let lab = PairLab::up(spec, &["--bind", "0.0.0.0"]);
            matrix_line(&lab, spec, v4_method, "IPv4 only", runs);
        }
    }
}

/// The matrix of pairs a punch (or a dial, or the relay alone) connects.
fn matrix_bench(runs: usize, profiles: &[bool]) {
    let matrix = [
        (
            PairSpec::new(NatKind::PortRestricted, NatKind::PortRestricted),
            "punch",
        ),
        (
            PairSpec::new(NatKind::Sequential, NatKind::PortRestricted),
            "punch",
        ),
        (
            PairSpec::new(NatKind::PortRestricted, NatKind::Sequential),
            "punch",
        ),
        (
            PairSpec::new(NatKind::PortRestricted, NatKind::PortRestricted)
                .cgnat_a(NatKind::PortRestricted),
            "punch",
        ),
        (
            PairSpec::new(NatKind::None, NatKind::PortRestricted),
            "direct",
        ),
        (
            PairSpec::new(NatKind::Symmetric, NatKind::Symmetric),
            "relay",
        ),
    ];
    println!("{runs} connects per pair (bob -> alice by UNL), default flags");
    table_header("UNL");
    for &wan in profiles {
        for (spec, method) in matrix {
            let spec = if wan { spec.internet() } else { spec };
            let v2_file = std::env::temp_dir().join(format!(
                "punch-bench-{}-{}.v2",
                std::process::id(),
                spec.name().replace(' ', "_")
            ));
            let mut lab = PairLab::up(spec, &["--unl-v2-file", v2_file.to_str().expect("UTF-8")]);
            let v3 = lab.alice_unl.clone();
            // Written just after the v3 UNL the lab waited for.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let v2 = loop {
                match std::fs::read_to_string(&v2_file) {
                    Ok(text) if !text.trim().is_empty() => break text,
                    _ if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    other => panic!("alice's v2 UNL: {other:?}"),
                }
            };
            let _ = std::fs::remove_file(&v2_file);
            for (kind, unl) in [("v3 (enc)", v3), ("v2 (plain)", v2.trim().to_owned())] {
                lab.alice_unl = unl;
                matrix_line(&lab, spec, method, kind, runs);
            }
        }
    }
}

/// The header of the tables [`matrix_line`] prints; `kind`: the title of its third column.
fn table_header(kind: &str) {
    println!(
        "{:<36} {:<8} {:<9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "pair (alice x bob)",
        "expected",
        kind,
        "ok",
        "p50 ms",
        "p99 ms",
        "max ms",
        "RTT ms",
        "p50/RTT"
    );
}

/// One line of the matrix: `runs` connects of `spec` to the UNL `lab.alice_unl` (`kind`).
fn matrix_line(lab: &PairLab, spec: PairSpec, method: &str, kind: &str, runs: usize) {
    let mut times = Vec::new();
    let mut ok = 0;
    let mut others = Vec::new();
    // alice's refusals of challenges and of reverse/relay requests (her per-sender budgets,
    // ...), counted from her log: "why" of each.
    let refused = || -> Vec<String> {
        lab.alice
            .stderr()
            .lines()
            .filter(|l| {
                l.contains("challenge refused") || l.contains("reverse-connect request refused")
            })
            .map(|l| l.split("why=").nth(1).unwrap_or("?").to_owned())
            .collect()
    };
    let refused_before = refused().len();
    for _ in 0..runs {
        let (_bob, outcome) = lab.connect(&["--no-stdin"]);
        if outcome.connected && outcome.method.as_deref() == Some(method) {
            ok += 1;
            times.push(outcome.us);
        } else {
            others.push(outcome.method.unwrap_or_else(|| "failed".to_owned()));
            eprintln!("{}: {}", spec.name(), outcome.line);
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let ms = |us: u64| us as f64 / 1000.0;
    // Every sample on stderr, in run order: a slow tail shows whether it is one lost packet,
    // the norm, or a drift over the runs.
    let each: Vec<String> = times.iter().map(|us| format!("{:.0}", ms(*us))).collect();
    eprintln!(
        "{} {kind}: each ms in run order {}",
        spec.name(),
        each.join(" ")
    );
    let refused = refused().split_off(refused_before);
    if let Some(why) = refused.first() {
        eprintln!(
            "{} {kind}: alice refused {} challenges or requests, the first: {why}",
            spec.name(),
            refused.len()
        );
    }
    times.sort_unstable();
    let rtt = lab.rtt.as_secs_f64() * 1000.0;
    let p50 = ms(percentile(&times, 0.5));
    let ratio = if rtt > 0.0 {
        format!("{:.2}", p50 / rtt)
    } else {
        "-".to_owned()
    };
    println!(
        "{:<36} {:<8} {:<9} {:>4}/{:<2} {:>9.2} {:>9.2} {:>9.2} {:>9.1} {:>8}{}",
        spec.name(),
        method,
        kind,
        ok,
        runs,
        p50,
        ms(percentile(&times, 0.99)),
        ms(times.last().copied().unwrap_or(0)),
        rtt,
        ratio,
        if others.is_empty() {
            String::new()
        } else {
            format!("  (others: {})", others.join(", "))
        },
    );
}

/// The birthday punch: success curve by budget, then every easy × hard pair.
fn birthday_bench(runs: usize, profiles: &[bool]) {
    println!("{runs} connects per line (bob, behind a symmetric NAT, -> alice by UNL)");
    println!(
        "{:<40} {:>6} {:>8} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "pair (alice x bob)",
        "N=M",
        "direct",
        "1st line p50",
        "1st line p99",
        "direct p50",
        "direct p99",
        "SYNs/try"
    );
    let cone = PairSpec::new(NatKind::PortRestricted, NatKind::Symmetric);
    let others = [
        PairSpec::new(NatKind::RestrictedCone, NatKind::Symmetric),
        PairSpec::new(NatKind::FullCone, NatKind::Symmetric),
        PairSpec::new(NatKind::PortRestricted, NatKind::Symmetric).cgnat_a(NatKind::PortRestricted),
    ];
    for &wan in profiles {
        let with = |spec: PairSpec| if wan { spec.internet() } else { spec };
        for budget in [64u32, 128, 256, 512, 1024] {
            birthday_line(with(cone), budget, runs);
        }
        for spec in others {
            birthday_line(with(spec), node::core::DEFAULT_PUNCH_SOCKETS, runs);
        }
    }
}

/// One line of the birthday table: `runs` connects of `spec` with budget `budget`.
fn birthday_line(spec: PairSpec, budget: u32, runs: usize) {
    let n = budget.to_string();
    let lab = PairLab::up(spec, &["--max-punch-sockets", &n]);
    let (mut first, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (_bob, outcome, upgrade) = lab.connect_and_upgrade(
            &["--no-stdin", "--max-punch-sockets", &n],
            Duration::from_secs(8),
        );
        if !outcome.connected {
            eprintln!("{}: {}", spec.name(), outcome.line);
            continue;
        }
        first.push(outcome.us / 1000);
        match (outcome.method.as_deref(), upgrade) {
            (Some("relay"), Some(up)) => direct.push(up.ms),
            (Some("relay"), None) => {}
            _ => direct.push(outcome.us / 1000),
        }
    }
    first.sort_unstable();
    direct.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let ms = |v: u64| v as f64;
    // The hard side's burst (N) plus its eager SYN and 3 fresh ones; the easy side's guesses
    // (M) and its dial to the predicted port at once and at the meeting.
    let syns = 2 * budget + 4 + 2;
    println!(
        "{:<40} {:>6} {:>5}/{:<2} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>10}",
        spec.name(),
        budget,
        direct.len(),
        runs,
        ms(percentile(&first, 0.5)),
        ms(percentile(&first, 0.99)),
        ms(percentile(&direct, 0.5)),
        ms(percentile(&direct, 0.99)),
        syns
    );
}
