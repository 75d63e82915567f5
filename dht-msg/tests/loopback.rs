//! The mailbox server over real loopback TCP, with real clients (and the real binary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use dht_msg::{Config, RunningServer};
use server_kit::testkit::{LineClient as Client, ServerProcess};
use wire::mailbox::Reply;

const DEADLINE: Duration = Duration::from_secs(10);

fn start(config: Config) -> RunningServer {
    RunningServer::start("127.0.0.1:0".parse().unwrap(), config).unwrap()
}

/// A client from `ip` that registered `node_id` with `secret`.
fn register(ip: &str, server: SocketAddr, node_id: &str, secret: &str) -> Client {
    let mut c = Client::from(ip, server);
    let reply = c.ask(&format!("REGISTER {node_id} {secret}"));
    assert!(
        reply.starts_with(&format!("OK REGISTERED {node_id} ")),
        "{reply}"
    );
    c
}

/// One HTTP GET on its own connection; returns the whole response.
fn http_get(server: SocketAddr, target: &str) -> String {
    let mut stream = TcpStream::connect(server).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(format!("GET {target} HTTP/1.1\r\nHost: dht\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").unwrap().1
}

#[test]
fn a_message_is_pushed_to_the_subscriber_without_polling() {
    let server = start(Config::default());
    let mut bob = register("127.0.0.2", server.addr(), "bob", "s3cret");
    assert_eq!(bob.ask("SUBSCRIBE"), "OK SUBSCRIBED 0");
    let mut alice = register("127.0.0.3", server.addr(), "alice", "pw");
    let sent = Instant::now();
    assert_eq!(alice.ask("PUT bob REVERSE_CONNECT:unl:nonce"), "OK PUT 1");
    // Bob sends nothing: the message just arrives.
    assert_eq!(bob.recv(), "MSG 1 alice REVERSE_CONNECT:unl:nonce");
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert_eq!(bob.ask("ACK 1"), "OK ACK 1");
    // An anonymous sender, and a receive by LIST after reconnecting.
    let mut anon = Client::from("127.0.0.4", server.addr());
    assert_eq!(anon.ask("PUT bob second"), "OK PUT 2");
    assert_eq!(bob.recv(), "MSG 2 - second");
    drop(bob);
    let mut bob = register("127.0.0.2", server.addr(), "bob", "s3cret");
    assert_eq!(bob.ask("LIST"), "MSG 2 - second");
    assert_eq!(bob.recv(), "OK LIST 1");
    match bob.ask("SUBSCRIBE").parse::<Reply>().unwrap() {
        Reply::Subscribed { pending } => assert_eq!(pending, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(bob.recv(), "MSG 2 - second");
}

#[test]
fn a_wrong_secret_is_refused() {
    let server = start(Config::default());
    let _bob = register("127.0.0.2", server.addr(), "bob", "s3cret");
    let mut mallory = Client::from("127.0.0.9", server.addr());
    assert_eq!(
        mallory.ask("REGISTER bob guess"),
        "ERROR REGISTER: wrong secret for mailbox bob"
    );
    assert!(mallory.ask("LIST").starts_with("ERROR LIST: "));
    let response = http_get(
        server.addr(),
        "/dht_msg.php?call=list&node_id=bob&password=guess",
    );
    assert!(response.starts_with("HTTP/1.1 403 "), "{response}");
    assert_eq!(body(&response), "failure");
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let server = start(Config {
        max_messages_per_mailbox: 3,
        max_message_bytes: 100,
        ..Config::default()
    });
    let mut bob = register("127.0.0.2", server.addr(), "bob", "s3cret");
    let mut c = Client::from("127.0.0.3", server.addr());
    for i in 1..=3 {
        assert_eq!(c.ask(&format!("PUT bob m{i}")), format!("OK PUT {i}"));
    }
    assert_eq!(
        c.ask("PUT bob m4"),
        "ERROR PUT: mailbox bob is full (3 messages, limit 3); its owner must read and ACK first"
    );
    assert_eq!(
        c.ask(&format!("PUT bob {}", "z".repeat(101))),
        "ERROR PUT: message is 101 bytes (limit 100)"
    );
    // Nothing older was dropped, and the sender's connection is still usable.
    bob.send("LIST");
    let listed: Vec<String> = (0..4).map(|_| bob.recv()).collect();
    assert_eq!(
        listed,
        ["MSG 1 - m1", "MSG 2 - m2", "MSG 3 - m3", "OK LIST 3"]
    );
    assert_eq!(c.ask("PING"), "PONG");
}

#[test]
fn the_http_api_works_on_the_same_port() {
    let server = start(Config::default());
    let id = "74416a6d75386d4850484656444a387437704b38";
    let response = http_get(
        server.addr(),
        &format!("/dht_msg.php?call=register&node_id={id}&password=pw&port=50500"),
    );
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert_eq!(body(&response), "success");
    // A line-protocol subscriber of the same mailbox sees HTTP puts pushed.
    let mut owner = register("127.0.0.1", server.addr(), id, "pw");
    owner.ask("SUBSCRIBE");
    let response = http_get(
        server.addr(),
        &format!("/dht_msg.php?call=put&node_id={id}&msg=hello+over+http"),
    );
    assert_eq!(body(&response), "success");
    assert_eq!(owner.recv(), "MSG 1 - hello over http");
    let mut line_client = Client::from("127.0.0.5", server.addr());
    assert_eq!(line_client.ask(&format!("PUT {id} over lines")), "OK PUT 2");
    let response = http_get(
        server.addr(),
        &format!("/dht_msg.php?call=list&node_id={id}&password=pw"),
    );
    assert_eq!(body(&response), r#"["hello over http","over lines"]"#);
    let response = http_get(
        server.addr(),
        &format!("/dht_msg.php?call=list&node_id={id}&password=pw"),
    );
    assert_eq!(body(&response), "[]");
}

#[test]
fn malformed_input_does_not_disturb_another_client() {
    let server = start(Config::default());
    let mut bob = register("127.0.0.2", server.addr(), "bob", "s3cret");
    bob.ask("SUBSCRIBE");
    let mut garbage = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        let junk: Vec<u8> = match i % 5 {
            0 => b"HELLO\r\nPUT\r\nACK x\r\n".to_vec(),
            1 => b"\xff\xfe\x00\x01\r\n".to_vec(),
            2 => vec![b'A'; 50_000],
            3 => b"GET /dht_msg.php?call=%zz HTTP/1.1\r\n\r\n".to_vec(),
            _ => b"GET / HTTP/1.1\r\nHost: a\r\nbroken header\r\n\r\n".to_vec(),
        };
        let _ = s.write_all(&junk);
        garbage.push(s);
    }
    let mut c = Client::from("127.0.0.3", server.addr());
    for i in 1..=100 {
        assert_eq!(c.ask(&format!("PUT bob n{i}")), format!("OK PUT {i}"));
        assert_eq!(bob.recv(), format!("MSG {i} - n{i}"));
        bob.send(&format!("ACK {i}"));
        assert_eq!(bob.recv(), format!("OK ACK {i}"));
    }
    let mut reader = BufReader::new(garbage.remove(0));
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert_eq!(first, "ERROR unknown command: \"HELLO\"\r\n");
}

#[test]
fn the_per_ip_connection_cap_refuses_with_a_reason() {
    let server = start(Config {
        max_connections_per_ip: 2,
        ..Config::default()
    });
    let mut held: Vec<Client> = (0..2)
        .map(|_| Client::from("127.0.0.14", server.addr()))
        .collect();
    for c in &mut held {
        assert_eq!(c.ask("PING"), "PONG");
    }
    let mut refused = Client::from("127.0.0.14", server.addr());
    assert_eq!(
        refused.recv(),
        "ERROR too many connections from 127.0.0.14 (limit 2)"
    );
    assert!(refused.is_closed());
    let mut other = Client::from("127.0.0.15", server.addr());
    assert_eq!(other.ask("PING"), "PONG");
}

#[test]
fn shutdown_closes_every_connection() {
    let server = start(Config::default());
    let mut c = register("127.0.0.2", server.addr(), "bob", "s3cret");
    c.ask("SUBSCRIBE");
    let stats = server.stop().unwrap();
    assert!(c.is_closed());
    assert_eq!(stats.mailboxes, 1);
}

// ----- the real binary ------------------------------------------------------------------------

/// The real binary on a port it picks itself (`server_kit::testkit`); killed when dropped.
fn spawn_binary(data_dir: Option<&PathBuf>) -> ServerProcess {
    let mut args = Vec::new();
    if let Some(dir) = data_dir {
        args.push("--data-dir");
        args.push(dir.to_str().unwrap());
    }
    ServerProcess::spawn(env!("CARGO_BIN_EXE_dht-msg"), &args).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dht-msg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Undelivered messages survive even a SIGKILL: `OK PUT` is only sent once the message is on
/// disk.
#[test]
fn a_restart_with_data_dir_keeps_undelivered_messages() {
    let dir = temp_dir("restart");
    let first = spawn_binary(Some(&dir));
    let mut bob = register("127.0.0.2", first.addr(), "bob", "s3cret");
    let mut alice = register("127.0.0.3", first.addr(), "alice", "pw");
    for i in 1..=3 {
        assert_eq!(
            alice.ask(&format!("PUT bob msg {i}")),
            format!("OK PUT {i}")
        );
    }
    assert_eq!(bob.ask("SUBSCRIBE"), "OK SUBSCRIBED 3");
    for i in 1..=3 {
        assert_eq!(bob.recv(), format!("MSG {i} alice msg {i}"));
    }
    // Only the first is acknowledged before the crash.
    assert_eq!(bob.ask("ACK 1"), "OK ACK 1");
    first.kill().unwrap();

    let second = spawn_binary(Some(&dir));
    let mut bob = register("127.0.0.2", second.addr(), "bob", "s3cret");
    bob.send("SUBSCRIBE");
    assert_eq!(bob.recv(), "OK SUBSCRIBED 2");
    assert_eq!(bob.recv(), "MSG 2 alice msg 2");
    assert_eq!(bob.recv(), "MSG 3 alice msg 3");
    // The secret was kept (hashed): a wrong one is still refused.
    let mut mallory = Client::from("127.0.0.9", second.addr());
    assert!(mallory.ask("REGISTER bob guess").contains("wrong secret"));
    // New ids continue after the old ones.
    let mut alice = register("127.0.0.3", second.addr(), "alice", "pw");
    assert_eq!(alice.ask("PUT bob msg 4"), "OK PUT 4");
    assert_eq!(bob.recv(), "MSG 4 alice msg 4");
    for i in 2..=4 {
        assert_eq!(bob.ask(&format!("ACK {i}")), format!("OK ACK {i}"));
    }
    let (status, log) = second.terminate().unwrap();
    assert!(status.success(), "{log}");

    // Nothing pending any more: ids still never repeat.
    let third = spawn_binary(Some(&dir));
    let mut alice = register("127.0.0.3", third.addr(), "alice", "pw");
    assert_eq!(alice.ask("PUT bob msg 5"), "OK PUT 5");
    drop(third);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_data_dir_a_restart_forgets() {
    let first = spawn_binary(None);
    let mut bob = register("127.0.0.2", first.addr(), "bob", "s3cret");
    assert_eq!(bob.ask("PUT bob x"), "OK PUT 1");
    drop(first);
    let second = spawn_binary(None);
    let mut bob = register("127.0.0.2", second.addr(), "bob", "other");
    assert_eq!(bob.ask("LIST"), "OK LIST 0");
}

#[test]
fn the_binary_stops_cleanly_on_sigterm() {
    let binary = spawn_binary(None);
    let mut c = register("127.0.0.2", binary.addr(), "bob", "s3cret");
    assert_eq!(c.ask("PING"), "PONG");
    let (status, log) = binary.terminate().unwrap();
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(c.is_closed());
}

#[test]
fn help_documents_the_limits_and_memory_only_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_dht-msg"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--listen",
        "--data-dir",
        "memory only",
        "--max-messages-per-mailbox",
        "--max-mailbox-bytes",
        "--max-stored-bytes",
        "--message-ttl",
        "[default: 24h]",
        "--put-rate-per-ip",
        "--max-connections-per-ip",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}
