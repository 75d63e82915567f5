//! Every server answers an IPv6 client across a real IPv6 lab (netns-sim `--ipv6`: global
//! addresses from `2001:db8::/32`, home routers that route IPv6 untranslated behind a stateful
//! firewall). The rendezvous, dht-msg and forwarding-check run on `pub` on `[::]`; alice,
//! dual-stack behind nat-a, is told her global IPv6 address by the rendezvous (and her
//! router's IPv4 address over IPv4), registers over IPv6 where only the `BOOTSTRAP <family>`
//! forms hand her out, talks to dht-msg over IPv6 (whose key challenge names the address she
//! dialed), and the forwarding check dials back in her
//! family: her firewall drops it ("no"), while a port on `pub` itself (no firewall) is "yes"
//! over IPv6.
//!
//! Needs root: skipped with a message without it, unless `CI` is set (then it fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv6Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{binary, lab_preconditions};
use netns_sim::{Lab, LabChild, NatKind, Topology, TwoNats};

const WAIT: Duration = Duration::from_secs(10);

/// `netns-sim probe connect TO --send LINE` on `host`: the first line the server answers.
fn ask(lab: &Lab, host: &str, to: &str, line: &str) -> String {
    let out = lab
        .exec(
            host,
            &[
                binary("netns-sim").to_str().unwrap(),
                "probe",
                "connect",
                to,
                "--send",
                line,
                "--timeout-ms",
                "3000",
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{host} -> {to} {line:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `GET target` from `host` to `[ip]:port` (bash's `/dev/tcp`, which resolves IPv6 too):
/// the body.
fn get(lab: &Lab, host: &str, ip: &str, port: u16, target: &str) -> String {
    let script =
        "exec 3<>/dev/tcp/$0/$1 && printf 'GET %s HTTP/1.0\\r\\n\\r\\n' \"$2\" >&3 && cat <&3";
    let out = lab
        .exec_ok(
            host,
            &[
                "timeout",
                "8",
                "bash",
                "-c",
                script,
                ip,
                &port.to_string(),
                target,
            ],
        )
        .unwrap();
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {out:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

fn spawn_server(lab: &Lab, name: &str, args: &[&str], ready: &str) -> LabChild {
    let child = lab
        .spawn(
            "pub",
            Command::new(binary(name))
                .args(args)
                .env("RUST_LOG", "info"),
        )
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !child.stderr().contains(ready) {
        assert!(Instant::now() < deadline, "{name}: {}", child.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn every_server_answers_an_ipv6_client_and_the_rendezvous_tells_alice_her_global_address() {
    if !lab_preconditions(&["nft", "bash", "timeout"]) {
        return;
    }
    let lab = Lab::up(&Topology::two_nats(TwoNats {
        a: NatKind::PortRestricted,
        b: NatKind::PortRestricted,
        ipv6: true,
        ..TwoNats::default()
    }))
    .unwrap();
    let (pub6, pub4) = (lab.addr6("pub"), lab.addr("pub"));
    let alice6 = lab.addr6("alice");
    let _servers = [
        spawn_server(
            &lab,
            "rendezvous",
            &["--listen", "[::]:8000"],
            "rendezvous listening",
        ),
        spawn_server(
            &lab,
            "dht-msg",
            &["--listen", "[::]:8090"],
            "dht-msg listening",
        ),
        spawn_server(
            &lab,
            "forwarding-check",
            &["--listen", "[::]:8080", "--connect-timeout", "500ms"],
            "forwarding-check listening",
        ),
    ];
    let rv6 = format!("[{pub6}]:8000");
    let rv4 = format!("{pub4}:8000");

    // Over IPv6 the rendezvous sees alice's own global address (no NAT66); over IPv4 her
    // router's.
    let remote6 = ask(&lab, "alice", &rv6, "SOURCE ADDR");
    assert!(
        remote6.starts_with(&format!("REMOTE ADDR {alice6} ")),
        "{remote6}"
    );
    assert_eq!(alice6.to_string(), "2001:db8:1::2");
    let remote4 = ask(&lab, "alice", &rv4, "SOURCE ADDR");
    let nat_a4 = lab.addr("nat-a");
    assert!(
        remote4.starts_with(&format!("REMOTE ADDR {nat_a4} ")),
        "{remote4}"
    );

    // Alice registers over IPv6; bob's PyP2P-style BOOTSTRAP (over IPv4) never sees her,
    // the family forms do.
    let registered = ask(
        &lab,
        "alice",
        &rv6,
        "PASSIVE READY 50500 4\r\nBOOTSTRAP IPV6 5",
    );
    assert_eq!(registered, "NODES EMPTY", "alice is never handed herself");
    assert_eq!(ask(&lab, "bob", &rv4, "BOOTSTRAP 5"), "NODES EMPTY");
    assert_eq!(
        ask(&lab, "bob", &rv4, "BOOTSTRAP ANY 5"),
        format!("NODES p:[{alice6}]:50500")
    );

    // dht-msg over IPv6; its key challenge names the address alice dialed.
    let dht6 = format!("[{pub6}]:8090");
    assert_eq!(ask(&lab, "alice", &dht6, "PING"), "PONG");
    let challenge = ask(&lab, "alice", &dht6, "CHALLENGE");
    assert!(
        challenge.starts_with(&format!("CHALLENGE {dht6} ")),
        "{challenge}"
    );
    assert_eq!(
        ask(&lab, "alice", &dht6, "REGISTER alice6 secret-of-alice"),
        "OK REGISTERED alice6 NEW"
    );

    forwarding_check_dials_back_in_alices_family(&lab, pub6, alice6);
}

/// The forwarding check on pub over IPv6: alice's address, and a dial-back in her family that
/// her firewall drops; a port on pub (no firewall) is open over IPv6.
fn forwarding_check_dials_back_in_alices_family(lab: &Lab, pub6: Ipv6Addr, alice6: Ipv6Addr) {
    let fc6 = pub6.to_string();
    assert_eq!(
        get(lab, "alice", &fc6, 8080, "/v1/wan-ip"),
        format!(r#"{{"wan_ip":"{alice6}"}}"#)
    );
    let _alice_port = lab
        .spawn(
            "alice",
            Command::new(binary("netns-sim")).args(["probe", "serve", "--listen", "[::]:7001"]),
        )
        .unwrap();
    let _pub_port = lab
        .spawn(
            "pub",
            Command::new(binary("netns-sim")).args(["probe", "serve", "--listen", "[::]:7002"]),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let closed = get(lab, "alice", &fc6, 8080, "/v1/check?port=7001");
    assert!(
        closed.starts_with(&format!(
            r#"{{"ip":"{alice6}","port":7001,"proto":"TCP","open":false,"#
        )),
        "{closed}"
    );
    let open = get(lab, "pub", &fc6, 8080, "/v1/check?port=7002");
    assert!(
        open.starts_with(&format!(
            r#"{{"ip":"{pub6}","port":7002,"proto":"TCP","open":true,"#
        )),
        "{open}"
    );
}
