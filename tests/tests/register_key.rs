//! Signed mailbox registration end to end over real loopback TCP: a node's real Ed25519 key
//! registers through the client state machine (`wire::mailbox::KeyRegistration`) with a
//! dht-msg server in memory, over IPv4 and IPv6; each refusal on the wire; the key's mailbox
//! survives a restart with a data directory (redb) and is shared by two instances on a real
//! `redis-server`; a secret never opens it anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dht_msg::{Config, RunningServer};
use integration_tests::redis::RedisServer;
use server_kit::testkit::{LineClient, ipv6_loopback_or_skip, loopback_pair};
use wire::key::{PublicKey, SigningKey};
use wire::mailbox::{KeyRegistration, RegisterStep, Reply, Request};
use wire::signal::{RegisterChallenge, RegisterProof};

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// Registers `secret`'s key on a fresh connection from `ip` to `server`, through the client
/// state machine, expecting the challenge to name `name`; returns the connection and NEW or
/// EXISTING.
fn register(ip: &str, server: SocketAddr, name: &str, secret: &SigningKey) -> (LineClient, bool) {
    let mut c = LineClient::from(ip, server);
    let mut reg = KeyRegistration::new(secret, name);
    let mut line = reg.first_request().to_string();
    loop {
        let reply: Reply = c.ask(&line).parse().unwrap();
        match reg.handle_reply(&reply).unwrap() {
            RegisterStep::Send(next) => line = next.to_string(),
            RegisterStep::Registered { node_id, created } => {
                assert_eq!(node_id, PublicKey::of(secret).mailbox_name());
                return (c, created);
            }
        }
    }
}

fn challenge(c: &mut LineClient) -> RegisterChallenge {
    c.ask("CHALLENGE").parse().unwrap()
}

fn prove(c: &mut LineClient, secret: &SigningKey, challenge: &RegisterChallenge) -> String {
    c.ask(&Request::RegisterKey(RegisterProof::sign(secret, challenge)).to_string())
}

#[test]
fn a_real_key_registers_over_both_families_and_each_refusal_is_explained() {
    let server = RunningServer::start("[::]:0".parse().unwrap(), Config::default()).unwrap();
    let (v4, v6) = loopback_pair(server.addr());
    let alice = key(1);
    let name = PublicKey::of(&alice).mailbox_name();
    // The challenge names the address dialed: 127.0.0.1:PORT over IPv4.
    let (mut owner, created) = register("127.0.0.1", v4, &v4.to_string(), &alice);
    assert!(created);
    assert_eq!(owner.ask("SUBSCRIBE"), "OK SUBSCRIBED 0");
    let mut anon = LineClient::from("127.0.0.2", v4);
    assert_eq!(anon.ask(&format!("PUT {name} REVERSE3 ...")), "OK PUT 1");
    assert_eq!(owner.recv(), "MSG 1 - REVERSE3 ...");
    if ipv6_loopback_or_skip("register_key over IPv6") {
        let (_c, created) = register("::1", v6, &v6.to_string(), &alice);
        assert!(!created, "the same mailbox over IPv6");
        // A client that dialed one name and is challenged with another refuses to sign.
        let mut c = LineClient::from("::1", v6);
        let mut reg = KeyRegistration::new(&alice, "mailbox.example.net:8090");
        let reply: Reply = c.ask("CHALLENGE").parse().unwrap();
        let err = reg.handle_reply(&reply).unwrap_err();
        assert!(err.to_string().contains("not signing"), "{err}");
    }

    // Each refusal, on the wire.
    let mut c = LineClient::from("127.0.0.3", v4);
    let stale = RegisterChallenge {
        server: v4.to_string(),
        nonce: wire::overlay::Nonce([7; 32]),
    };
    let reply = prove(&mut c, &alice, &stale);
    assert!(
        reply.starts_with("ERROR REGISTER_KEY: no CHALLENGE"),
        "{reply}"
    );
    let _ = challenge(&mut c);
    let reply = prove(&mut c, &alice, &stale);
    assert!(
        reply.contains("does not answer this connection's challenge"),
        "{reply}"
    );
    let mut other_name = challenge(&mut c);
    other_name.server = "[2001:db8::99]:8090".into();
    let reply = prove(&mut c, &alice, &other_name);
    assert!(reply.contains("another server name"), "{reply}");
    let fresh = challenge(&mut c);
    let proof = Request::RegisterKey(RegisterProof::sign(&alice, &fresh)).to_string();
    assert_eq!(c.ask(&proof), format!("OK REGISTERED {name} EXISTING"));
    let reply = LineClient::from("127.0.0.4", v4).ask(&proof);
    assert!(
        reply.starts_with("ERROR REGISTER_KEY: replayed proof"),
        "{reply}"
    );
    let reply = c.ask(&format!("REGISTER {name} a-secret"));
    assert!(reply.contains("belongs to a key"), "{reply}");

    let stats = server.stop().unwrap();
    assert_eq!(
        stats.key_refusals.iter().sum::<u64>(),
        5,
        "{:?}",
        stats.key_refusals
    );
}

#[test]
fn a_keys_mailbox_survives_a_restart_with_a_data_directory() {
    let dir = std::env::temp_dir().join(format!("register-key-redb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = || Config {
        data_dir: Some(dir.clone()),
        ..Config::default()
    };
    let alice = key(2);
    let name = PublicKey::of(&alice).mailbox_name();
    let server = RunningServer::start("127.0.0.1:0".parse().unwrap(), config()).unwrap();
    let addr = server.addr();
    let (mut c, created) = register("127.0.0.1", addr, &addr.to_string(), &alice);
    assert!(created);
    assert_eq!(c.ask(&format!("PUT {name} kept")), "OK PUT 1");
    drop(c);
    server.stop().unwrap();

    let server = RunningServer::start("127.0.0.1:0".parse().unwrap(), config()).unwrap();
    let addr = server.addr();
    let mut squatter = LineClient::from("127.0.0.5", addr);
    let reply = squatter.ask(&format!("REGISTER {name} guess"));
    assert!(reply.contains("belongs to a key"), "{reply}");
    let (mut c, created) = register("127.0.0.1", addr, &addr.to_string(), &alice);
    assert!(!created);
    assert_eq!(c.ask("LIST"), format!("MSG 1 {name} kept"));
    assert_eq!(c.recv(), "OK LIST 1");
    server.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_instances_on_redis_share_a_keys_mailbox() {
    let Some(redis) = RedisServer::start("register-key") else {
        return;
    };
    let config = || Config {
        backend: Some(redis.url()),
        name: Some("mailbox.example.net:8090".into()),
        ..Config::default()
    };
    let a = RunningServer::start("127.0.0.1:0".parse().unwrap(), config()).unwrap();
    let b = RunningServer::start("127.0.0.1:0".parse().unwrap(), config()).unwrap();
    let alice = key(3);
    let name = PublicKey::of(&alice).mailbox_name();
    // Both instances are one server to the client: one configured name.
    let (mut on_a, created) = register("127.0.0.1", a.addr(), "mailbox.example.net:8090", &alice);
    assert!(created);
    assert_eq!(on_a.ask("SUBSCRIBE"), "OK SUBSCRIBED 0");
    // B learns the key's mailbox through Redis: a secret is refused there, the key works.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = LineClient::from("127.0.0.6", b.addr()).ask(&format!("REGISTER {name} guess"));
        if reply.contains("belongs to a key") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never learnt the mailbox: {reply}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_on_b, created) = register("127.0.0.2", b.addr(), "mailbox.example.net:8090", &alice);
    assert!(!created);
    // A message PUT on B is pushed by A to the key's subscriber.
    let mut anon = LineClient::from("127.0.0.3", b.addr());
    assert!(
        anon.ask(&format!("PUT {name} via redis"))
            .starts_with("OK PUT ")
    );
    let msg = on_a.recv();
    assert!(msg.ends_with(" - via redis"), "{msg}");
    let (sa, sb) = (a.stop().unwrap(), b.stop().unwrap());
    assert_eq!((sa.registrations[1], sb.registrations[1]), (1, 1));
}
