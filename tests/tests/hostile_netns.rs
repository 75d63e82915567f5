//! Hostile peers across a real NAT (netns-sim): per-IP limits see the NAT's public address,
//! half-open connections (the attacker's router drops everything after the attacker dies) are
//! reaped by the idle timeout, and the forwarding check never dials a third address named in a
//! request or a header. Needs root: skipped with a message without it, unless `CI` is set.
//!
//! alice (attacker) and carol sit behind one port-restricted NAT (`nat-a`), bob (victim)
//! behind another; the rendezvous and forwarding-check servers run on `pub`, a bystander
//! listens on `pub2`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{binary, lab_preconditions, node_command};
use netns_sim::{Lab, LabChild, NatKind, Topology, TwoNats};

fn spawn_server(lab: &Lab, host: &str, bin: &str, args: &[&str]) -> LabChild {
    let child = lab
        .spawn(
            host,
            Command::new(binary(bin)).args(args).env("RUST_LOG", "info"),
        )
        .unwrap();
    let started = Instant::now();
    while !child.stderr().contains("listening") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{bin} on {host} never listened: {}",
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A bystander on `pub2` (port 9000) that says whom it accepted.
fn bystander(lab: &Lab, ip: &str) -> LabChild {
    let child = lab
        .spawn(
            "pub2",
            Command::new(binary("netns-sim")).args([
                "probe",
                "serve",
                "--listen",
                &format!("{ip}:9000"),
            ]),
        )
        .unwrap();
    child
        .wait_for_stdout("listening on", Duration::from_secs(5))
        .unwrap();
    child
}

/// `hostile-peer ask` on `host`: every reply, and the p50 and max latency in microseconds.
fn ask(lab: &Lab, host: &str, server: &str, n: usize, line: &str) -> (Vec<String>, u64, u64) {
    let peer = binary("hostile-peer");
    let out = lab
        .exec_ok(
            host,
            &[peer.to_str().unwrap(), "ask", server, &n.to_string(), line],
        )
        .unwrap();
    let mut replies = Vec::new();
    let (mut p50, mut max) = (0, 0);
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("ok ") {
            replies.push(rest.split_once(' ').map_or("", |(_, r)| r).to_owned());
        } else if let Some(rest) = l.strip_prefix("p50_us=") {
            let (a, b) = rest.split_once(" max_us=").unwrap();
            p50 = a.parse().unwrap();
            max = b.parse().unwrap();
        } else {
            panic!("{host}: {l}");
        }
    }
    (replies, p50, max)
}

/// `hostile-peer get` on `host`: (status, body).
fn get(lab: &Lab, host: &str, server: &str, target: &str, header: Option<&str>) -> (u16, String) {
    let peer = binary("hostile-peer");
    let mut argv = vec![peer.to_str().unwrap(), "get", server, target];
    argv.extend(header);
    let out = lab.exec_ok(host, &argv).unwrap();
    let (status, body) = out.split_once('\n').unwrap();
    (status.parse().unwrap(), body.trim().to_owned())
}

#[test]
fn per_ip_limits_see_the_nat_half_open_connections_are_reaped_and_no_third_address_is_dialed() {
    if !lab_preconditions(&[]) {
        return;
    }
    let lab = Lab::up(&Topology::two_nats(TwoNats {
        a: NatKind::PortRestricted,
        b: NatKind::PortRestricted,
        carol: true,
        ..TwoNats::default()
    }))
    .unwrap();
    let pub_ip = lab.addr("pub").to_string();
    let bystander_ip = lab.addr("pub2").to_string();
    let nat_a = lab.public_addr("alice").to_string();
    let rv = format!("{pub_ip}:8000");
    let fc = format!("{pub_ip}:8080");
    let _rv = spawn_server(
        &lab,
        "pub",
        "rendezvous",
        &[
            "--listen",
            &rv,
            "--max-connections-per-ip",
            "8",
            "--idle-timeout",
            "3s",
        ],
    );
    let _fc = spawn_server(
        &lab,
        "pub",
        "forwarding-check",
        &["--listen", &fc, "--connect-timeout", "1s"],
    );
    let bystander = bystander(&lab, &bystander_ip);

    // The victim, bob, behind the other NAT.
    let (_, before_p50, before_max) = ask(&lab, "bob", &rv, 20, "SOURCE TCP");

    // alice opens 20 connections: 8 are served, 12 refused, under the NAT's public address.
    let attacker = lab
        .spawn(
            "alice",
            Command::new(binary("hostile-peer")).args(["hold", &rv, "20", "SOURCE TCP"]),
        )
        .unwrap();
    attacker
        .wait_for_stdout("holding", Duration::from_secs(15))
        .unwrap();
    let out = attacker.stdout();
    let served = out.matches(" REMOTE TCP ").count();
    let refusal = format!("ERROR too many connections from {nat_a} (limit 8)");
    let refused = out.matches(&refusal).count();
    assert_eq!((served, refused), (8, 12), "{out}");
    let (replies, during_p50, during_max) = ask(&lab, "bob", &rv, 20, "SOURCE TCP");
    assert!(
        replies.iter().all(|r| r.starts_with("REMOTE TCP")),
        "{replies:?}"
    );
    assert!(during_max < 2_000_000, "bob waited {during_max} us");

    // alice dies, and her router drops everything from and to her: the server never hears a
    // FIN. Her neighbour carol shares the NAT's address, so for now she is refused too...
    lab.exec_ok("nat-a", &["nft", "add", "table", "inet", "hostile"])
        .unwrap();
    lab.exec_ok(
        "nat-a",
        &[
            "nft",
            "add chain inet hostile blackhole { type filter hook forward priority -10 ; policy accept ; }",
        ],
    )
    .unwrap();
    let alice = lab.addr("alice").to_string();
    for dir in ["saddr", "daddr"] {
        lab.exec_ok(
            "nat-a",
            &[
                "nft",
                "add",
                "rule",
                "inet",
                "hostile",
                "blackhole",
                "ip",
                dir,
                &alice,
                "drop",
            ],
        )
        .unwrap();
    }
    drop(attacker);
    let dead_at = Instant::now();
    let (first, _, _) = ask(&lab, "carol", &rv, 1, "SOURCE TCP");
    assert_eq!(
        first,
        vec![refusal.clone()],
        "the half-open connections were not counted"
    );
    // ...until the idle timeout reaps the half-open connections.
    let mut reaped = None;
    while dead_at.elapsed() < Duration::from_secs(8) {
        let (r, _, _) = ask(&lab, "carol", &rv, 1, "SOURCE TCP");
        if r.first().is_some_and(|r| r.starts_with("REMOTE TCP")) {
            reaped = Some(dead_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let reaped = reaped.expect("half-open connections were never reaped");

    // The forwarding check only ever dials the caller's own (public) address.
    let (status, body) = get(
        &lab,
        "carol",
        &fc,
        &format!("/v1/check?port=9000&ip={bystander_ip}"),
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("never dials an address named in the request"),
        "{body}"
    );
    let (status, body) = get(
        &lab,
        "carol",
        &fc,
        "/net.php?action=is_port_forwarded&port=9000&proto=TCP",
        Some(&format!("X-Forwarded-For: {bystander_ip}")),
    );
    assert_eq!((status, body.as_str()), (200, r#"{"result": "no"}"#));
    let (status, body) = get(&lab, "carol", &fc, "/v1/check?port=9000", None);
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!(r#""ip":"{nat_a}""#)) && body.contains(r#""open":false"#),
        "{body}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let seen = bystander.stdout();
    assert!(
        !seen.contains("accepted from"),
        "the bystander was dialed: {seen}"
    );

    println!(
        "HOSTILE netns rendezvous / 20 connections from behind a NAT (cap 8 per IP): victim \
         behind another NAT before: p50 {before_p50} us, max {before_max} us; during: p50 \
         {during_p50} us, max {during_max} us; refusals name the NAT's address {nat_a}; \
         half-open connections of a dead attacker reaped {} ms after its death (idle timeout \
         3 s), its NAT neighbour refused until then",
        reaped.as_millis()
    );
    println!(
        "HOSTILE netns forwarding-check / third address {bystander_ip}:9000 named in a parameter or \
         an X-Forwarded-For header: 400 or a check of {nat_a}:9000 instead; the bystander was \
         never dialed"
    );
}

/// Signed requests across a real NAT: the attacker (alice, behind nat-a) posts forged, wrongly
/// signed, tampered, stale, misaddressed and replayed `REVERSE3` requests, and genuine ones by
/// its own key naming a bystander's address (`pub2`), to the mailbox of bob's node (behind
/// nat-b, default flags). bob logs each refusal with the check that failed; the bystander is
/// dialed only for the genuine ones, and sees our handshake, not a line.
#[test]
fn signed_requests_forged_replayed_or_wrongly_signed_are_refused_across_nats() {
    if !lab_preconditions(&[]) {
        return;
    }
    let lab = Lab::up(&Topology::two_nats(TwoNats {
        a: NatKind::PortRestricted,
        b: NatKind::PortRestricted,
        ..TwoNats::default()
    }))
    .unwrap();
    let pub_ip = lab.addr("pub").to_string();
    let bystander_ip = lab.addr("pub2").to_string();
    let (rv, dht) = (format!("{pub_ip}:8000"), format!("{pub_ip}:8090"));
    let _rv = spawn_server(&lab, "pub", "rendezvous", &["--listen", &rv]);
    let _dht = spawn_server(&lab, "pub", "dht-msg", &["--listen", &dht]);
    let bystander = bystander(&lab, &bystander_ip);
    let bob = lab
        .spawn(
            "bob",
            node_command(&lab, "bob")
                .args(["run", "--rendezvous", &rv, "--dht-msg", &dht])
                .env("RUST_LOG", "info"),
        )
        .unwrap();
    let started = Instant::now();
    while !bob.stderr().contains("mailbox registered") {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "bob: {}",
            bob.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = bob.stderr();
    let node_id: node::wire::unl::NodeId = log
        .split("node_id=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("bob logs his node id")
        .parse()
        .unwrap();
    let third: std::net::SocketAddr = format!("{bystander_ip}:9000").parse().unwrap();
    let mallory = node::identity::Identity::from_secret_bytes(&[66; 32]);
    let alice = node::identity::Identity::from_secret_bytes(&[2; 32]);
    let rounds = 3u8;
    let mut posted = 0;
    for round in 0..rounds {
        for attack in integration_tests::hostile::signed::signed_request_attacks(
            node_id, third, &mallory, &alice, round,
        ) {
            let put = format!("PUT {} {}", node_id.mailbox_id(), attack.body);
            let (replies, _, _) = ask(&lab, "alice", &dht, 1, &put);
            assert!(
                replies.first().is_some_and(|r| r.starts_with("OK PUT")),
                "{replies:?}"
            );
            posted += 1;
        }
    }
    let refusals = |log: &str, check: &str| {
        log.lines()
            .filter(|l| l.contains("request refused") && l.contains(&format!("check=\"{check}\"")))
            .count()
    };
    let rounds = usize::from(rounds);
    let started = Instant::now();
    loop {
        let log = bob.stderr();
        let refused = log.matches("request refused").count();
        let acted = log.matches("reverse connect requested; dialing").count();
        if refused + acted >= posted {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bob saw {refused} refused and {acted} acted on of {posted}: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = bob.stderr();
    assert_eq!(refusals(&log, "forged"), 3 * rounds, "{log}");
    assert_eq!(refusals(&log, "stale"), rounds, "{log}");
    assert_eq!(refusals(&log, "not_for_us"), rounds, "{log}");
    assert_eq!(refusals(&log, "replayed"), rounds, "{log}");
    let acted = log.matches("reverse connect requested; dialing").count();
    assert_eq!(
        acted, rounds,
        "mallory's burst covers her genuine requests: {log}"
    );
    // Each dial to the bystander was refused by our handshake (it cannot prove mallory's key).
    let accepted = bystander.stdout().matches("accepted from").count();
    assert!(accepted <= rounds, "{}", bystander.stdout());
    println!(
        "HOSTILE netns node / {posted} signed requests from behind a NAT (forged, wrongly signed, \
         tampered, stale, misaddressed, replayed, genuine to a bystander): {} forged, {rounds} \
         stale, {rounds} misaddressed, {rounds} replayed refused and logged; {acted} genuine acted \
         on; the bystander saw {accepted} connections, each a handshake expecting mallory's key",
        refusals(&log, "forged")
    );
}
