//! Real-traffic tests of the lab: each NAT kind's mapping and filtering, miniupnpd (UPnP and
//! NAT-PMP), chronyd, the CLI, and teardown. They need root: without it they are skipped with a
//! message, unless the environment variable `CI` is set, in which case they fail.
//!
//! Every test builds its own lab (unique prefix), so they run in parallel; each lab is torn
//! down by `Drop` even when an assertion fails.

// Test helpers panic on purpose; names like pub/pub2 are the lab's own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::similar_names,
    clippy::too_many_lines
)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use netns_sim::lab::{LabOptions, namespace_name};
use netns_sim::{Lab, NatKind, RUN_DIR, Topology, TwoNats, sys};

const PROBE: &str = env!("CARGO_BIN_EXE_netns-sim");
/// How long a connection that must be dropped is given before we call it dropped.
const DROPPED_MS: &str = "1000";

/// Whether the test can run: root and every tool present. Skips (prints, returns false)
/// unless `CI` is set, where a missing precondition is a failure.
fn preconditions(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !sys::is_root() {
        missing.push("root (run the tests with sudo)".to_owned());
    }
    for t in tools {
        let found = if *t == "chronyd" {
            LabOptions::default().chronyd.is_some_and(|p| p.is_file())
                || sys::find_in_path("chronyd").is_some()
        } else {
            sys::find_in_path(t).is_some()
        };
        if !found {
            missing.push(format!("{t} (Debian package {})", sys::package_of(t)));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("netns-sim lab test needs: {}", missing.join(", "));
    assert!(
        std::env::var_os("CI").is_none(),
        "{msg} (CI is set, so this fails)"
    );
    eprintln!("SKIPPED: {msg}");
    false
}

/// Runs `netns-sim probe ARGS` on `host`: Ok(stdout line) or Err(stderr).
fn probe(lab: &Lab, host: &str, args: &[&str]) -> Result<String, String> {
    let mut argv = vec![PROBE, "probe"];
    argv.extend_from_slice(args);
    let out = lab.exec(host, &argv).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn serve(lab: &Lab, host: &str, port: u16) -> netns_sim::LabChild {
    let child = lab
        .spawn(
            host,
            Command::new(PROBE).args(["probe", "serve", "--listen", &format!("0.0.0.0:{port}")]),
        )
        .unwrap();
    child
        .wait_for_stdout("listening", Duration::from_secs(5))
        .unwrap();
    child
}

fn split(seen: &str) -> (Ipv4Addr, u16) {
    let (ip, port) = seen
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("not ip:port: {seen:?}"));
    (ip.parse().unwrap(), port.parse().unwrap())
}

fn assert_gone(prefix: &str) {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        !list.contains(&format!("{prefix}-")),
        "namespaces of {prefix} left behind:\n{list}"
    );
    assert!(!Path::new(RUN_DIR).join(format!("{prefix}.json")).exists());
}

/// Mapping (seen from pub and pub2) and filtering (unsolicited connects) of NAT `kind` on
/// alice's router, with real TCP.
fn nat_behaviour(kind: NatKind) {
    if !preconditions(&[]) {
        return;
    }
    let lab = Lab::up(&Topology::two_nats(TwoNats {
        a: kind,
        ..TwoNats::default()
    }))
    .unwrap();
    let prefix = lab.prefix().to_owned();
    let (pub_ip, pub2_ip, wan) = (lab.addr("pub"), lab.addr("pub2"), lab.addr("nat-a"));
    let _s1 = serve(&lab, "pub", 7000);
    let _s2 = serve(&lab, "pub2", 7000);

    // Mapping: one local port, two destinations.
    let m1 = probe(
        &lab,
        "alice",
        &["connect", &format!("{pub_ip}:7000"), "--bind-port", "40000"],
    )
    .unwrap();
    let m2 = probe(
        &lab,
        "alice",
        &[
            "connect",
            &format!("{pub2_ip}:7000"),
            "--bind-port",
            "40000",
        ],
    )
    .unwrap();
    let ((ip1, p1), (ip2, p2)) = (split(&m1), split(&m2));
    let expected_ip = if kind == NatKind::None {
        lab.addr("alice")
    } else {
        wan
    };
    assert_eq!((ip1, ip2), (expected_ip, expected_ip), "{kind}: {m1} {m2}");
    match kind {
        NatKind::FullCone | NatKind::RestrictedCone | NatKind::PortRestricted | NatKind::None => {
            assert_eq!(p1, 40000, "{kind} should preserve the port: {m1}");
            assert_eq!(
                p2, p1,
                "{kind} should map independently of the endpoint: {m1} {m2}"
            );
        }
        NatKind::Symmetric => assert_ne!(p1, p2, "symmetric must map per destination: {m1} {m2}"),
        NatKind::Sequential => {
            assert!(p1 >= netns_sim::nat::SEQUENTIAL_FIRST_PORT, "{m1}");
            assert_eq!(
                p2,
                p1 + 1,
                "sequential must allocate the next port: {m1} {m2}"
            );
        }
    }

    // Filtering: alice talks to pub only, from port 41000, and listens there.
    let alice = serve(&lab, "alice", 41000);
    let seen = probe(
        &lab,
        "alice",
        &["connect", &format!("{pub_ip}:7000"), "--bind-port", "41000"],
    )
    .unwrap();
    let (_, mapped) = split(&seen);
    let target = format!(
        "{}:{mapped}",
        if kind == NatKind::None {
            lab.addr("alice")
        } else {
            wan
        }
    );
    // pub2 was never contacted from that port.
    let from_pub2 = probe(
        &lab,
        "pub2",
        &["connect", &target, "--timeout-ms", DROPPED_MS],
    );
    // pub, but from another port than the one alice talked to.
    let from_pub = probe(
        &lab,
        "pub",
        &["connect", &target, "--timeout-ms", DROPPED_MS],
    );
    let (pub2_may, pub_may) = match kind {
        NatKind::FullCone | NatKind::None => (true, true),
        NatKind::RestrictedCone => (false, true),
        NatKind::PortRestricted | NatKind::Symmetric | NatKind::Sequential => (false, false),
    };
    for (who, result, may, ip) in [
        ("pub2", &from_pub2, pub2_may, pub2_ip),
        ("pub", &from_pub, pub_may, pub_ip),
    ] {
        if may {
            let reply = result
                .as_ref()
                .unwrap_or_else(|e| panic!("{kind}: {who} must reach alice via {target}: {e}"));
            assert_eq!(split(reply).0, ip, "{kind}: alice should see {who} itself");
        } else {
            let err = result
                .as_ref()
                .expect_err(&format!("{kind}: {who} must NOT reach alice via {target}"));
            assert!(
                err.contains("timed out"),
                "{kind}: {who} must be dropped silently, got: {err}"
            );
        }
    }
    let log = alice.stdout();
    assert_eq!(
        log.contains(&pub2_ip.to_string()),
        pub2_may,
        "{kind}: alice's log: {log}"
    );
    drop(alice);
    lab.down().unwrap();
    assert_gone(&prefix);
}

#[test]
fn full_cone_maps_independently_and_admits_anyone() {
    nat_behaviour(NatKind::FullCone);
}

#[test]
fn restricted_cone_admits_only_contacted_addresses() {
    nat_behaviour(NatKind::RestrictedCone);
}

#[test]
fn port_restricted_admits_only_the_contacted_ip_and_port() {
    nat_behaviour(NatKind::PortRestricted);
}

#[test]
fn symmetric_maps_per_destination_and_admits_nobody() {
    nat_behaviour(NatKind::Symmetric);
}

#[test]
fn sequential_allocates_consecutive_ports() {
    nat_behaviour(NatKind::Sequential);
}

#[test]
fn none_is_a_plain_router() {
    nat_behaviour(NatKind::None);
}

#[test]
fn upnp_and_natpmp_mappings_reach_alice() {
    if !preconditions(&["miniupnpd", "upnpc", "natpmpc"]) {
        return;
    }
    let lab = Lab::up(&Topology::two_nats(TwoNats {
        a: NatKind::PortRestricted,
        upnp_a: true,
        ..TwoNats::default()
    }))
    .unwrap();
    let wan = lab.addr("nat-a");
    let pub_ip = lab.addr("pub").to_string();
    let gw = lab.host("alice").unwrap().lan_addr.unwrap().to_string();
    let alice = lab.addr("alice").to_string();
    let _u = serve(&lab, "alice", 5555);
    let _n = serve(&lab, "alice", 5556);

    // Control: without a mapping, pub cannot get in.
    let err = probe(
        &lab,
        "pub",
        &[
            "connect",
            &format!("{wan}:6555"),
            "--timeout-ms",
            DROPPED_MS,
        ],
    )
    .unwrap_err();
    assert!(err.contains("timed out"), "{err}");

    // UPnP, with real SSDP discovery across alice's LAN bridge.
    let out = lab
        .exec_ok(
            "alice",
            &[
                "upnpc",
                "-e",
                "netns-sim test",
                "-a",
                &alice,
                "5555",
                "6555",
                "TCP",
            ],
        )
        .unwrap();
    assert!(out.contains("is redirected"), "upnpc: {out}");
    assert!(
        out.contains(&format!("ExternalIPAddress = {wan}")),
        "upnpc: {out}"
    );
    let seen = probe(&lab, "pub", &["connect", &format!("{wan}:6555")]).unwrap();
    assert_eq!(split(&seen).0.to_string(), pub_ip);

    // NAT-PMP.
    let out = lab
        .exec_ok(
            "alice",
            &["natpmpc", "-g", &gw, "-a", "6556", "5556", "tcp", "60"],
        )
        .unwrap();
    assert!(out.contains("Mapped public port 6556"), "natpmpc: {out}");
    let seen = probe(&lab, "pub", &["connect", &format!("{wan}:6556")]).unwrap();
    assert_eq!(split(&seen).0.to_string(), pub_ip);
    assert!(lab.status_text().contains("miniupnpd on nat-a"));
}

#[test]
fn ntp_from_alice_to_pub_answers() {
    if !preconditions(&["chronyd"]) {
        return;
    }
    let lab = Lab::up(&Topology::two_nats(TwoNats {
        ntp: true,
        ..TwoNats::default()
    }))
    .unwrap();
    let reply = probe(&lab, "alice", &["ntp", &format!("{}:123", lab.addr("pub"))]).unwrap();
    assert!(reply.starts_with("stratum 8 "), "{reply}");
    // Nobody else serves NTP: pub2 stays silent.
    let err = probe(
        &lab,
        "alice",
        &[
            "ntp",
            &format!("{}:123", lab.addr("pub2")),
            "--timeout-ms",
            "500",
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("timed out") || err.contains("refused"),
        "{err}"
    );
}

#[test]
fn api_exec_spawn_addresses_and_carol() {
    if !preconditions(&[]) {
        return;
    }
    let lab = Lab::up(&Topology::two_nats(TwoNats {
        carol: true,
        ..TwoNats::default()
    }))
    .unwrap();
    assert_eq!(lab.public_addr("alice"), lab.addr("nat-a"));
    assert_eq!(lab.public_addr("pub"), lab.addr("pub"));
    assert_eq!(
        lab.namespace("bob").unwrap(),
        namespace_name(lab.prefix(), "bob")
    );
    let err = lab.host("mallory").unwrap_err().to_string();
    assert!(
        err.contains("\"mallory\"") && err.contains("alice"),
        "{err}"
    );

    let routes = lab.exec_ok("carol", &["ip", "route"]).unwrap();
    assert!(routes.contains("default via 192.168.1.1"), "{routes}");
    // No namespace has a way out: only lab subnets are routed anywhere.
    for h in lab.hosts() {
        let r = lab.exec_ok(&h.name, &["ip", "route"]).unwrap();
        assert!(
            r.lines()
                .all(|l| l.contains("11.0.0.") || l.contains("192.168.")),
            "{}: {r}",
            h.name
        );
    }
    // carol reaches alice directly on their LAN (no NAT in between).
    let _a = serve(&lab, "alice", 9000);
    let seen = probe(&lab, "carol", &["connect", "192.168.1.2:9000"]).unwrap();
    assert_eq!(split(&seen).0, lab.addr("carol"));

    // A spawned process: stdin in, stdout out, killed on drop.
    let mut cat = lab.spawn("bob", &Command::new("cat")).unwrap();
    cat.send_line("hello from the test").unwrap();
    let line = cat
        .wait_for_stdout("hello", Duration::from_secs(5))
        .unwrap();
    assert_eq!(line, "hello from the test");
    let pid = cat.id();
    drop(cat);
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
            std::thread::sleep(Duration::from_millis(100));
            !Path::new(&format!("/proc/{pid}")).exists()
        }
    );
    let out = lab.exec("bob", &["sh", "-c", "exit 3"]).unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(lab.exec_ok("bob", &["sh", "-c", "exit 3"]).is_err());
}

#[test]
fn drop_tears_down_even_on_panic() {
    if !preconditions(&[]) {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let lab = Lab::up(&Topology::two_nats(TwoNats::default())).unwrap();
        tx.send(lab.prefix().to_owned()).unwrap();
        // A process the lab did not start itself must not keep a namespace alive.
        let _sleeper = lab.spawn("alice", Command::new("sleep").arg("60")).unwrap();
        panic!("deliberate panic inside a test holding a lab");
    })
    .join();
    assert!(result.is_err());
    let prefix = rx.recv().unwrap();
    assert_gone(&prefix);
}

#[test]
fn cli_up_status_exec_down() {
    if !preconditions(&[]) {
        return;
    }
    let run = |args: &[&str]| {
        let out = Command::new(PROBE).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let topo = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/two-nats.toml");
    // The example runs miniupnpd and chronyd; this test must not depend on them.
    let text = std::fs::read_to_string(topo)
        .unwrap()
        .replace("ntp = true", "ntp = false")
        .replace("upnp = true", "upnp = false");
    let file = std::env::temp_dir().join(format!("netns-sim-test-{}.toml", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let (code, stdout, stderr) = run(&["up", "--topology", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let prefix = stdout.trim().to_owned();
    // Make sure the lab goes away even if an assertion below fails.
    let _guard =
        Lab::attach(&prefix, Path::new(RUN_DIR)).map(|lab| TeardownGuard(lab.prefix().to_owned()));
    assert!(prefix.starts_with("nsim"), "{stdout}");
    let (code, status, _) = run(&["status", "--lab", &prefix]);
    assert_eq!(code, Some(0));
    for want in [
        "carol",
        "port-restricted",
        "symmetric",
        "11.0.0.101",
        "192.168.1.3",
    ] {
        assert!(
            status.contains(want),
            "{want} missing from status:\n{status}"
        );
    }
    let (code, out, _) = run(&[
        "exec", "--lab", &prefix, "carol", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert_eq!(code, Some(0));
    assert!(out.contains("192.168.1.3/24"), "{out}");
    let (code, _, _) = run(&["exec", "--lab", &prefix, "bob", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code, Some(7));
    let (_, _, err) = run(&["exec", "--lab", &prefix, "mallory", "--", "true"]);
    assert!(err.contains("\"mallory\""), "{err}");
    let (code, out, _) = run(&["down", &prefix]);
    assert_eq!(code, Some(0), "{out}");
    assert_gone(&prefix);
    let (code, _, _) = run(&["down", &prefix]);
    assert_eq!(code, Some(0), "down must be idempotent");
    let _ = std::fs::remove_file(file);
}

struct TeardownGuard(String);

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        let _ = Lab::teardown(&self.0, Path::new(RUN_DIR));
    }
}

#[test]
fn parallel_labs_do_not_clash() {
    if !preconditions(&[]) {
        return;
    }
    let start = Instant::now();
    let labs: Vec<Lab> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| Lab::up(&Topology::two_nats(TwoNats::default())).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut prefixes: Vec<&str> = labs.iter().map(Lab::prefix).collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    assert_eq!(prefixes.len(), 3);
    for lab in &labs {
        let _s = serve(lab, "pub", 7000);
        let seen = probe(
            lab,
            "bob",
            &["connect", &format!("{}:7000", lab.addr("pub"))],
        )
        .unwrap();
        assert_eq!(split(&seen).0, lab.addr("nat-b"));
    }
    eprintln!("3 labs up and checked in {:?}", start.elapsed());
}
