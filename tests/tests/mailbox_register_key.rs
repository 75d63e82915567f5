//! A node's mailbox client against the real `dht-msg` binary on loopback (issue 16 item 4):
//! it registers its mailbox by signing the server's challenge (`CHALLENGE`, `REGISTER_KEY`),
//! the mailbox is then the key's (a secret no longer opens it), and a reverse-connect request
//! posted there reaches it. Behind a server that refuses `CHALLENGE` (a PyP2P-era dht-msg, here
//! the real server behind a line filter that answers `CHALLENGE` as an old server does) it
//! falls back to `REGISTER <id> <secret>` and still gets its messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use integration_tests::{binary, turn_all};
use node::connect::Method;
use node::core::Event;
use node::identity::Identity;
use node::{Config, Net, Role};
use server_kit::testkit::{LineClient, ServerProcess};

fn dht_msg() -> ServerProcess {
    ServerProcess::spawn(binary("dht-msg").to_str().unwrap(), &[]).unwrap()
}

/// A node with key `secret` using the mailbox server at `mailbox`, started, its mailbox up.
fn node(secret: u8, role: Role, mailbox: SocketAddr) -> Net {
    let mut config = Config::new()
        .with_node_type(role)
        .with_dht_msg(mailbox.to_string())
        .with_identity(Identity::from_secret_bytes(&[secret; 32]));
    config = match role {
        Role::Passive => config.with_bind("127.0.0.1".parse().unwrap()),
        _ => config.with_listen(false),
    };
    let mut net = Net::new(config).unwrap();
    net.start().unwrap();
    assert!(
        net.poll_until(Duration::from_secs(10), |n| n.mailbox_ready())
            .unwrap(),
        "node {secret}: the mailbox at {mailbox} did not come up"
    );
    net
}

/// bob (passive, on `bob_mailbox`) connects to alice (active, no listener): the only way is a
/// reverse connect through alice's mailbox, so it succeeds only if alice gets the request.
fn reverse_connect_reaches(alice: Net, bob_mailbox: SocketAddr) {
    let bob = node(32, Role::Passive, bob_mailbox);
    let mut nets = vec![alice, bob];
    let alice_unl = nets[0].unl();
    nets[1].connect(&alice_unl);
    let mut outcome = None;
    turn_all(&mut nets, Duration::from_secs(10), |n| {
        for e in n[1].events() {
            if let Event::ConnectDone(o) = e {
                outcome = Some(o);
            }
        }
        outcome.is_some()
    });
    let outcome = outcome.expect("a connect outcome");
    assert!(outcome.connected, "{}", outcome.describe_tries());
    assert_eq!(outcome.method, Some(Method::Reverse));
}

#[test]
fn a_node_registers_its_mailbox_by_key_and_gets_a_reverse_connect() {
    let server = dht_msg();
    let mut alice = node(31, Role::Active, server.addr());
    let key = alice.key();
    let name = key.mailbox_name();
    assert_eq!(name.as_str(), alice.unl().node_id().mailbox_id());
    let log = server.log();
    assert!(
        log.contains("mailbox registered by key") && log.contains(&key.to_string()),
        "the server's log shows no registration by {key}:\n{log}"
    );
    // The mailbox is the key's: a secret does not open it.
    let mut thief = LineClient::from("127.0.0.2", server.addr());
    let reply = thief.ask(&format!("REGISTER {name} {}", "s".repeat(32)));
    assert!(reply.starts_with("ERROR"), "{reply}");
    reverse_connect_reaches(alice, server.addr());
}

/// Listens on loopback and relays every connection to `upstream`, except that `CHALLENGE`
/// is answered with the `ERROR` a server without signed registration gives.
fn without_challenge(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(upstream).unwrap();
            let (mut to_client, mut from_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut from_server, &mut to_client));
            let (mut to_client, mut to_server) = (client.try_clone().unwrap(), server);
            std::thread::spawn(move || {
                for line in BufReader::new(client).lines() {
                    let Ok(line) = line else { return };
                    let written = if line == "CHALLENGE" {
                        to_client.write_all(b"ERROR unknown command \"CHALLENGE\"\n")
                    } else {
                        to_server.write_all(format!("{line}\n").as_bytes())
                    };
                    if written.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn behind_a_server_without_challenge_a_node_falls_back_to_register_with_a_secret() {
    let server = dht_msg();
    let old = without_challenge(server.addr());
    let alice = node(33, Role::Active, old);
    let key = alice.key();
    let log = server.log();
    assert!(
        !log.contains(&key.to_string()),
        "{key} registered by key through a server that refuses CHALLENGE:\n{log}"
    );
    // The fallback registered the key's mailbox name with a secret: the server holds it.
    let name = key.mailbox_name();
    let mut other = LineClient::from("127.0.0.2", server.addr());
    let reply = other.ask(&format!("REGISTER {name} {}", "s".repeat(32)));
    assert!(reply.starts_with("ERROR"), "{reply}");
    reverse_connect_reaches(alice, server.addr());
}
