//! The combined process (`p2p-server`): one process, one config file; the alice/bob demo's
//! steps work against it (bootstrap, advertise, a line each way over the overlay, and a
//! mailbox message through its dht-msg), and its one metrics endpoint covers all three.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{binary, connected_nodes, mailbox_owner, prom, take_lines, turn_all};
use server_kit::testkit::{LineClient, ServerProcess};

/// Each server's address from the `p2p-server ready servers="name=addr ..."` log line.
fn addresses(server: &ServerProcess) -> HashMap<String, SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        if let Some(line) = log.lines().find(|l| l.contains("p2p-server ready")) {
            let list = line.split("servers=").nth(1).unwrap().trim_matches('"');
            return list
                .split(' ')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').parse().unwrap())
                })
                .collect();
        }
        assert!(Instant::now() < deadline, "no ready line: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn alice_and_bob_meet_through_one_server_process() {
    let dir = std::env::temp_dir().join(format!("p2p-server-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("p2p-server.toml");
    std::fs::write(
        &config,
        format!(
            "metrics-listen = \"127.0.0.1:0\"\n[rendezvous]\nlisten = \"127.0.0.1:0\"\n\
             [dht-msg]\nlisten = \"127.0.0.1:0\"\ndata-dir = {:?}\n\
             [forwarding-check]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("dht-msg").display().to_string()
        ),
    )
    .unwrap();
    let mut command = Command::new(binary("p2p-server"));
    command.arg("--config").arg(&config);
    let server = ServerProcess::spawn_command(command).unwrap();
    let addrs = addresses(&server);
    let rendezvous = addrs["rendezvous"].to_string();

    // alice and bob: start, advertise, bootstrap, one line each way.
    let servers = vec![rendezvous];
    let mut nets = connected_nodes(&servers, 2, 900);
    nets[0].broadcast("hello from alice").unwrap();
    nets[1].broadcast("hello from bob").unwrap();
    let mut got = [Vec::new(), Vec::new()];
    assert!(
        turn_all(&mut nets, Duration::from_secs(5), |nets| {
            for (i, net) in nets.iter_mut().enumerate() {
                got[i].extend(take_lines(net));
            }
            got[0].iter().any(|l| l == "hello from bob")
                && got[1].iter().any(|l| l == "hello from alice")
        }),
        "{got:?}"
    );

    // The mailbox of the same process.
    let mut owner = mailbox_owner("127.0.0.1", addrs["dht-msg"], "alice");
    let mut bob = LineClient::from("127.0.0.1", addrs["dht-msg"]);
    let put = bob.ask("PUT alice REVERSE_CONNECT:x:y");
    assert!(put.starts_with("OK PUT "), "{put}");
    assert!(owner.recv().ends_with(" - REVERSE_CONNECT:x:y"));

    // The forwarding check of the same process, and one metrics endpoint for all three.
    let metrics = addrs.get("metrics").copied();
    let mut s = TcpStream::connect(addrs["forwarding-check"]).unwrap();
    s.write_all(b"GET /v1/wan-ip HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("\"wan_ip\":\"127.0.0.1\""), "{answer}");
    let metrics = metrics
        .or_else(|| prom::endpoint_in_log(&server.log()))
        .expect("a metrics endpoint");
    let samples = prom::scrape(metrics).unwrap();
    for family in [
        "rendezvous_connections_accepted_total",
        "dht_msg_connections_accepted_total",
        "forwarding_check_connections_accepted_total",
    ] {
        assert!(
            prom::value(&samples, family, &[]).unwrap() >= 1.0,
            "{family}"
        );
    }
    let (status, log) = server.terminate().unwrap();
    assert!(status.success(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
