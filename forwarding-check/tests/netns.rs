//! The forwarding-check server across a real NAT, in a netns-sim lab: the server on `pub`,
//! alice behind a port-restricted NAT whose router runs miniupnpd. A port is "no" until alice
//! maps it with UPnP (`upnpc`), then "yes". Needs root: without it the test is skipped with a
//! message, unless the environment variable `CI` is set, in which case it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use forwarding_check::core::{PYP2P_NO, PYP2P_YES};
use netns_sim::{Lab, NatKind, Topology, TwoNats, sys};

const BIN: &str = env!("CARGO_BIN_EXE_forwarding-check");

/// Whether the test can run: root and every tool present. Skips (prints, returns false)
/// unless `CI` is set, where a missing precondition is a failure.
fn preconditions(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !sys::is_root() {
        missing.push("root (run the tests with sudo)".to_owned());
    }
    for t in tools {
        if sys::find_in_path(t).is_none() {
            missing.push(format!("{t} (Debian package {})", sys::package_of(t)));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("forwarding-check lab test needs: {}", missing.join(", "));
    assert!(
        std::env::var_os("CI").is_none(),
        "{msg} (CI is set, so this fails)"
    );
    eprintln!("SKIPPED: {msg}");
    false
}

/// Starts the forwarding-check binary on `host` and waits until it listens.
fn spawn_server(lab: &Lab, host: &str, args: &[&str]) -> netns_sim::LabChild {
    let child = lab
        .spawn(host, Command::new(BIN).args(args).env("RUST_LOG", "info"))
        .unwrap();
    let started = Instant::now();
    while !child.stderr().contains("forwarding-check listening") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "forwarding-check on {host} never listened: {}",
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// `GET target` from `host` to `server` with nothing but bash (`/dev/tcp`): (status, body).
fn get(lab: &Lab, host: &str, server: &str, target: &str) -> (u16, String) {
    let script = "exec 3<>/dev/tcp/${0%:*}/${0##*:} && \
                  printf 'GET %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' \"$1\" \"$0\" >&3 && cat <&3";
    let out = lab
        .exec_ok(
            host,
            &["timeout", "5", "bash", "-c", script, server, target],
        )
        .unwrap();
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {out:?}"));
    (head[9..12].parse().unwrap(), body.to_owned())
}

#[test]
fn a_port_is_no_until_alice_maps_it_with_upnp_then_yes() {
    if !preconditions(&["miniupnpd", "upnpc", "bash", "timeout"]) {
        return;
    }
    let lab = Lab::up(&Topology::two_nats(TwoNats {
        a: NatKind::PortRestricted,
        upnp_a: true,
        ..TwoNats::default()
    }))
    .unwrap();
    let server = format!("{}:8080", lab.addr("pub"));
    let wan = lab.addr("nat-a").to_string();
    let alice = lab.addr("alice").to_string();
    let _checker = spawn_server(
        &lab,
        "pub",
        &["--listen", "0.0.0.0:8080", "--connect-timeout", "500ms"],
    );
    // Something for the dial-back to reach on alice: another forwarding-check will do.
    let _service = spawn_server(&lab, "alice", &["--listen", "0.0.0.0:5555"]);

    // The server sees alice as her router's WAN address.
    assert_eq!(
        get(&lab, "alice", &server, "/net.php?action=get_wan_ip"),
        (200, wan.clone())
    );
    assert_eq!(
        get(&lab, "alice", &server, "/v1/wan-ip"),
        (200, format!(r#"{{"wan_ip":"{wan}"}}"#))
    );

    // No mapping: the NAT drops the dial-back, so after the connect timeout: no.
    let started = Instant::now();
    let pyp2p = "/net.php?action=is_port_forwarded&port=6555&proto=TCP";
    assert_eq!(
        get(&lab, "alice", &server, pyp2p),
        (200, PYP2P_NO.to_owned())
    );
    assert!(started.elapsed() >= Duration::from_millis(450));

    // Map WAN 6555 -> alice:5555 with UPnP (real SSDP discovery on alice's LAN).
    let out = lab
        .exec_ok(
            "alice",
            &[
                "upnpc",
                "-e",
                "forwarding-check test",
                "-a",
                &alice,
                "5555",
                "6555",
                "TCP",
            ],
        )
        .unwrap();
    assert!(out.contains("is redirected"), "upnpc: {out}");

    assert_eq!(
        get(&lab, "alice", &server, pyp2p),
        (200, PYP2P_YES.to_owned())
    );
    let (status, body) = get(&lab, "alice", &server, "/v1/check?port=6555");
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!(
            r#"{{"ip":"{wan}","port":6555,"proto":"TCP","open":true,"#
        )),
        "{body}"
    );
    // Another port stays closed.
    let (_, body) = get(&lab, "alice", &server, "/v1/check?port=6556");
    assert!(body.contains(r#""open":false"#), "{body}");
}
