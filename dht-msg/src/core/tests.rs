//! The core in virtual time: no sockets, no sleeps.
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]

use super::*;
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use wire::mailbox::MessageId;

pub(super) struct Harness {
    core: Core,
    now: Instant,
    /// Everything each connection was sent, not yet read by the test.
    output: HashMap<ConnId, Vec<u8>>,
    closed: HashSet<ConnId>,
    /// Connections whose client does not read.
    stalled: HashSet<ConnId>,
    store: Vec<StoreOp>,
}

pub(super) const SALT: [u8; 32] = [42; 32];
/// The server's address every test connection dialed.
const LOCAL: &str = "192.0.2.100:8090";

impl Harness {
    fn new(config: Config) -> Self {
        Self::with_persist(config, false)
    }

    fn with_persist(config: Config, persist: bool) -> Self {
        let now = Instant::now();
        Harness {
            core: Core::new(config, SALT, persist, now, SystemTime::now()),
            now,
            output: HashMap::new(),
            closed: HashSet::new(),
            stalled: HashSet::new(),
            store: Vec::new(),
        }
    }

    fn open(&mut self, peer: &str) -> ConnId {
        let id = self
            .core
            .handle_open(self.now, peer.parse().unwrap(), LOCAL.parse().unwrap())
            .unwrap();
        self.output.remove(&id);
        self.closed.remove(&id);
        self.stalled.remove(&id);
        id
    }

    fn bytes(&mut self, id: ConnId, data: &[u8]) {
        self.core.handle_data(self.now, id, data);
        self.drain();
    }

    fn line(&mut self, id: ConnId, line: &str) {
        self.bytes(id, format!("{line}\r\n").as_bytes());
    }

    /// Sends a line and returns the lines it was answered with.
    fn ask(&mut self, id: ConnId, line: &str) -> Vec<String> {
        self.line(id, line);
        self.take_lines(id)
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    fn drain(&mut self) {
        self.store.extend(self.core.poll_store());
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Flush(id) => self.flush(id),
                Action::Close(id) => {
                    self.flush(id);
                    self.closed.insert(id);
                    self.core.handle_closed(id);
                }
            }
        }
    }

    fn flush(&mut self, id: ConnId) {
        if self.stalled.contains(&id) {
            return;
        }
        let pending = self.core.pending_output(id).to_vec();
        self.output
            .entry(id)
            .or_default()
            .extend_from_slice(&pending);
        self.core.consume_output(id, pending.len());
    }

    fn take_lines(&mut self, id: ConnId) -> Vec<String> {
        let bytes = self.output.remove(&id).unwrap_or_default();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.is_empty() || text.ends_with("\r\n"),
            "lines end in CRLF: {text:?}"
        );
        text.split_terminator("\r\n").map(str::to_string).collect()
    }

    fn take_text(&mut self, id: ConnId) -> String {
        String::from_utf8(self.output.remove(&id).unwrap_or_default()).unwrap()
    }

    /// A connection that registered `node_id` with secret `s3cret`.
    fn owner(&mut self, peer: &str, node_id: &str) -> ConnId {
        let id = self.open(peer);
        let reply = self.ask(id, &format!("REGISTER {node_id} s3cret"));
        assert!(
            reply[0].starts_with(&format!("OK REGISTERED {node_id} ")),
            "{reply:?}"
        );
        id
    }

    /// One HTTP GET on a fresh connection; returns (status, headers+body text).
    fn http(&mut self, peer: &str, target: &str) -> (u16, String) {
        let id = self.open(peer);
        self.bytes(
            id,
            format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
        );
        let text = self.take_text(id);
        assert!(self.closed.contains(&id), "one request per connection");
        let status = text[9..12].parse().unwrap();
        (status, text)
    }
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").unwrap().1
}

pub(super) fn config() -> Config {
    Config::default()
}

#[test]
fn a_put_is_pushed_to_the_subscriber_at_once() {
    let mut h = Harness::new(config());
    let bob = h.owner("10.0.0.2:5000", "bob");
    assert_eq!(h.ask(bob, "SUBSCRIBE"), vec!["OK SUBSCRIBED 0"]);
    let anon = h.open("10.0.0.3:5000");
    assert_eq!(h.ask(anon, "PUT bob hello bob"), vec!["OK PUT 1"]);
    // Pushed by the very call that handled the PUT: no timer, no poll.
    assert_eq!(h.take_lines(bob), vec!["MSG 1 - hello bob"]);
    let alice = h.owner("10.0.0.4:5000", "alice");
    assert_eq!(h.ask(alice, "PUT bob from alice"), vec!["OK PUT 2"]);
    assert_eq!(h.take_lines(bob), vec!["MSG 2 alice from alice"]);
    assert_eq!(h.core.stats().pushed, 2);
}

#[test]
fn pending_messages_wait_until_acknowledged() {
    let mut h = Harness::new(config());
    let bob = h.owner("10.0.0.2:5000", "bob");
    let anon = h.open("10.0.0.3:5000");
    h.ask(anon, "PUT bob one");
    h.ask(anon, "PUT bob two");
    assert_eq!(
        h.ask(bob, "LIST"),
        vec!["MSG 1 - one", "MSG 2 - two", "OK LIST 2"]
    );
    assert_eq!(h.ask(bob, "ACK 1"), vec!["OK ACK 1"]);
    assert_eq!(
        h.ask(bob, "ACK 1"),
        vec!["ERROR ACK: no message 1 in mailbox bob"]
    );
    // The subscriber drops before acknowledging: the next subscription gets it again.
    h.core.handle_eof(bob);
    h.drain();
    let bob2 = h.owner("10.0.0.2:5001", "bob");
    assert_eq!(
        h.ask(bob2, "SUBSCRIBE"),
        vec!["OK SUBSCRIBED 1", "MSG 2 - two"]
    );
    assert_eq!(h.core.stats().messages, 1);
}

#[test]
fn only_the_owner_reads_and_deletes() {
    let mut h = Harness::new(config());
    let bob = h.owner("10.0.0.2:5000", "bob");
    let mallory = h.open("10.0.0.9:5000");
    assert_eq!(
        h.ask(mallory, "REGISTER bob guess"),
        vec!["ERROR REGISTER: wrong secret for mailbox bob"]
    );
    assert_eq!(
        h.ask(mallory, "SUBSCRIBE"),
        vec!["ERROR SUBSCRIBE: this connection has not proven a mailbox (REGISTER first)"]
    );
    assert!(h.ask(mallory, "LIST")[0].starts_with("ERROR LIST: "));
    h.ask(mallory, "PUT bob for bob");
    // Mallory owns a mailbox of her own, but cannot ACK bob's message.
    assert_eq!(
        h.ask(mallory, "REGISTER mallory pw"),
        vec!["OK REGISTERED mallory NEW"]
    );
    assert_eq!(
        h.ask(mallory, "ACK 1"),
        vec!["ERROR ACK: no message 1 in mailbox mallory"]
    );
    assert_eq!(h.ask(bob, "LIST"), vec!["MSG 1 - for bob", "OK LIST 1"]);
    // Registering again with the right secret proves ownership.
    assert_eq!(
        h.ask(bob, "REGISTER bob s3cret"),
        vec!["OK REGISTERED bob EXISTING"]
    );
}

#[test]
fn secrets_are_stored_hashed_with_the_salt() {
    let mut h = Harness::with_persist(config(), true);
    h.owner("10.0.0.2:5000", "bob");
    let Some(StoreOp::PutMailbox(record)) = h.store.first() else {
        panic!("{:?}", h.store)
    };
    let Owner::Secret(hash) = record.owner else {
        panic!("{:?}", record.owner)
    };
    assert!(!hash.windows(6).any(|w| w == b"s3cret"));
    let mut want = Sha256::new();
    want.update(SALT);
    want.update([3u8]);
    want.update(b"bob");
    want.update(b"s3cret");
    assert_eq!(hash[..], want.finalize()[..]);
}

#[test]
fn put_to_an_unknown_mailbox_is_refused() {
    let mut h = Harness::new(config());
    let c = h.open("10.0.0.3:5000");
    assert_eq!(
        h.ask(c, "PUT nobody hi"),
        vec!["ERROR PUT: no mailbox nobody"]
    );
}

#[test]
fn a_full_mailbox_refuses_and_keeps_what_it_has() {
    let mut h = Harness::new(Config {
        max_messages_per_mailbox: 2,
        max_mailbox_bytes: 10,
        ..config()
    });
    let bob = h.owner("10.0.0.2:5000", "bob");
    let c = h.open("10.0.0.3:5000");
    assert_eq!(h.ask(c, "PUT bob 1234"), vec!["OK PUT 1"]);
    assert_eq!(
        h.ask(c, "PUT bob 1234567"),
        vec!["ERROR PUT: mailbox bob is full (4 bytes held + 7 would pass the limit 10)"]
    );
    assert_eq!(h.ask(c, "PUT bob 56"), vec!["OK PUT 2"]);
    assert_eq!(
        h.ask(c, "PUT bob 7"),
        vec![
            "ERROR PUT: mailbox bob is full (2 messages, limit 2); its owner must read and ACK first"
        ]
    );
    assert_eq!(
        h.ask(bob, "LIST"),
        vec!["MSG 1 - 1234", "MSG 2 - 56", "OK LIST 2"]
    );
    h.ask(bob, "ACK 1");
    assert_eq!(h.ask(c, "PUT bob 7"), vec!["OK PUT 3"]);
}

#[test]
fn an_oversized_message_is_refused_and_the_connection_stays() {
    let mut h = Harness::new(Config {
        max_message_bytes: 10,
        ..config()
    });
    h.owner("10.0.0.2:5000", "bob");
    let c = h.open("10.0.0.3:5000");
    assert_eq!(
        h.ask(c, &format!("PUT bob {}", "x".repeat(11))),
        vec!["ERROR PUT: message is 11 bytes (limit 10)"]
    );
    assert_eq!(h.ask(c, "PING"), vec!["PONG"]);
    // Far over the line cap (message + 256): an error, then that connection closes.
    let reply = h.ask(c, &format!("PUT bob {}", "x".repeat(1000)));
    assert_eq!(reply, vec!["ERROR line too long: 1008 bytes (limit 266)"]);
    assert!(h.closed.contains(&c));
}

#[test]
fn the_server_wide_cap_refuses_puts_and_registrations() {
    let mut h = Harness::new(Config {
        max_stored_bytes: MAILBOX_OVERHEAD_BYTES + 10 + MESSAGE_OVERHEAD_BYTES + 5,
        ..config()
    });
    h.owner("10.0.0.2:5000", "bob");
    let c = h.open("10.0.0.3:5000");
    assert_eq!(h.ask(c, "PUT bob 12345"), vec!["OK PUT 1"]);
    assert!(h.ask(c, "PUT bob 1")[0].starts_with("ERROR PUT: server storage full ("));
    assert!(h.ask(c, "REGISTER carol pw")[0].starts_with("ERROR REGISTER: server storage full"));
}

#[test]
fn messages_expire_after_their_ttl() {
    let mut h = Harness::with_persist(
        Config {
            message_ttl: Duration::from_mins(1),
            ..config()
        },
        true,
    );
    let bob = h.owner("10.0.0.2:5000", "bob");
    let c = h.open("10.0.0.3:5000");
    h.ask(c, "PUT bob old");
    h.advance(Duration::from_secs(30));
    h.ask(c, "PUT bob new");
    h.advance(Duration::from_secs(31));
    assert_eq!(h.ask(bob, "LIST"), vec!["MSG 2 - new", "OK LIST 1"]);
    assert!(h.store.contains(&StoreOp::DeleteMessage(MessageId(1))));
    h.advance(Duration::from_secs(30));
    assert_eq!(h.ask(bob, "LIST"), vec!["OK LIST 0"]);
    assert_eq!(h.core.stats().expired, 2);
    assert_eq!(h.core.stats().stored_bytes, MAILBOX_OVERHEAD_BYTES + 3 + 7);
}

#[test]
fn unused_mailboxes_expire() {
    let mut h = Harness::new(Config {
        mailbox_ttl: Duration::from_secs(100),
        idle_timeout: Duration::from_secs(1000),
        ..config()
    });
    let bob = h.owner("10.0.0.2:5000", "bob");
    h.owner("10.0.0.3:5000", "carol");
    for _ in 0..8 {
        h.advance(Duration::from_secs(20));
        h.ask(bob, "PING");
    }
    assert_eq!(h.core.stats().mailboxes, 1, "carol expired, bob is active");
    let c = h.open("10.0.0.4:5000");
    assert_eq!(
        h.ask(c, "PUT carol hi"),
        vec!["ERROR PUT: no mailbox carol"]
    );
}

#[test]
fn puts_are_rate_limited_per_ip() {
    let mut h = Harness::new(Config {
        put_rate_per_ip: 1.0,
        put_burst_per_ip: 3,
        ..config()
    });
    h.owner("10.0.0.2:5000", "bob");
    let c = h.open("10.0.0.3:5000");
    for _ in 0..3 {
        assert!(h.ask(c, "PUT bob x")[0].starts_with("OK PUT"));
    }
    assert_eq!(
        h.ask(c, "PUT bob x"),
        vec!["ERROR PUT: too many messages from 10.0.0.3 (limit 1/s, burst 3), retry in 1.0 s"]
    );
    // Another IP has its own budget.
    let other = h.open("10.0.0.4:5000");
    assert!(h.ask(other, "PUT bob x")[0].starts_with("OK PUT"));
    h.advance(Duration::from_secs(1));
    assert!(h.ask(c, "PUT bob x")[0].starts_with("OK PUT"));
}

#[test]
fn wrong_secrets_use_up_the_budget_then_wait() {
    let mut h = Harness::new(Config {
        register_rate_per_ip: 0.5,
        register_burst_per_ip: 3,
        ..config()
    });
    h.owner("10.0.0.2:5000", "bob");
    let m = h.open("10.0.0.9:5000");
    for _ in 0..3 {
        assert_eq!(
            h.ask(m, "REGISTER bob guess"),
            vec!["ERROR REGISTER: wrong secret for mailbox bob"]
        );
    }
    // Budget spent: even the right secret waits.
    assert_eq!(
        h.ask(m, "REGISTER bob s3cret"),
        vec!["ERROR REGISTER: too many wrong secrets from 10.0.0.9, retry later"]
    );
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.ask(m, "REGISTER bob s3cret"),
        vec!["OK REGISTERED bob EXISTING"]
    );
    // New mailboxes spend it too.
    let r = h.open("10.0.0.10:5000");
    for i in 0..3 {
        assert!(h.ask(r, &format!("REGISTER n{i} pw"))[0].starts_with("OK"));
    }
    assert!(h.ask(r, "REGISTER n9 pw")[0].starts_with("ERROR REGISTER: too many registrations"));
}

#[test]
fn a_newer_subscription_takes_over() {
    let mut h = Harness::new(config());
    let old = h.owner("10.0.0.2:5000", "bob");
    h.ask(old, "SUBSCRIBE");
    let new = h.owner("10.0.0.2:5001", "bob");
    assert_eq!(h.ask(new, "SUBSCRIBE"), vec!["OK SUBSCRIBED 0"]);
    assert_eq!(
        h.take_lines(old),
        vec!["ERROR SUBSCRIBE: mailbox bob was taken over by a newer subscription"]
    );
    let c = h.open("10.0.0.3:5000");
    h.ask(c, "PUT bob hi");
    assert_eq!(h.take_lines(new), vec!["MSG 1 - hi"]);
    assert!(h.take_lines(old).is_empty());
}

#[test]
fn malformed_lines_get_errors_then_the_connection_closes() {
    let mut h = Harness::new(Config {
        max_bad_lines: 3,
        ..config()
    });
    let c = h.open("10.0.0.3:5000");
    assert_eq!(h.ask(c, "HELLO"), vec!["ERROR unknown command: \"HELLO\""]);
    h.bytes(c, b"\xff\xfe\r\n");
    assert_eq!(
        h.take_lines(c),
        vec!["ERROR line is not valid UTF-8 (first bad byte at offset 0)"]
    );
    assert_eq!(h.ask(c, "PING"), vec!["PONG"]);
    assert_eq!(
        h.ask(c, "ACK x"),
        vec![
            "ERROR ACK: <message_id> must be an unsigned integer, got \"x\"",
            "ERROR too many malformed lines (3), closing"
        ]
    );
    assert!(h.closed.contains(&c));
    // Nobody else noticed.
    let d = h.open("10.0.0.3:5001");
    assert_eq!(h.ask(d, "PING"), vec!["PONG"]);
}

#[test]
fn idle_connections_close_and_pings_keep_them() {
    let mut h = Harness::new(Config {
        idle_timeout: Duration::from_secs(10),
        ..config()
    });
    let idle = h.open("10.0.0.3:5000");
    let busy = h.owner("10.0.0.2:5000", "bob");
    h.ask(busy, "SUBSCRIBE");
    for _ in 0..3 {
        h.advance(Duration::from_secs(5));
        h.ask(busy, "PING");
    }
    assert!(h.closed.contains(&idle));
    assert!(!h.closed.contains(&busy));
}

#[test]
fn pushes_to_a_slow_reader_pause_and_resume() {
    let mut h = Harness::new(Config {
        max_output_bytes: 200,
        ..config()
    });
    let bob = h.owner("10.0.0.2:5000", "bob");
    h.ask(bob, "SUBSCRIBE");
    h.stalled.insert(bob);
    let c = h.open("10.0.0.3:5000");
    for _ in 0..10 {
        assert!(h.ask(c, &format!("PUT bob {}", "y".repeat(30)))[0].starts_with("OK PUT"));
    }
    // Pushed up to half the output cap (two 40-byte lines), then paused: not disconnected.
    assert!(!h.closed.contains(&bob));
    assert_eq!(h.core.pending_output(bob).len(), 2 * 40);
    assert_eq!(h.core.stats().pushed, 2);
    // The client reads: the rest follows, in order, each once.
    h.stalled.remove(&bob);
    h.flush(bob);
    h.drain();
    let pushed = h.take_lines(bob);
    let ids: Vec<&str> = pushed
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
    assert_eq!(h.core.stats().messages, 10, "pushed is not acknowledged");
}

#[test]
fn a_subscription_remembers_only_pending_pushes_and_pushes_each_new_message_once() {
    let mut h = Harness::new(config());
    let bob = h.owner("10.0.0.2:5000", "bob");
    h.ask(bob, "SUBSCRIBE");
    let c = h.open("10.0.0.3:5000");
    let pushed_set = |h: &Harness| {
        h.core
            .conns
            .get(bob)
            .unwrap()
            .subscription
            .as_ref()
            .unwrap()
            .pushed
            .len()
    };
    for round in 1..=50u64 {
        assert!(h.ask(c, &format!("PUT bob m{round}"))[0].starts_with("OK PUT"));
        let lines = h.take_lines(bob);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let id = lines[0].split(' ').nth(1).unwrap().to_owned();
        // Every other round leaves one message unacknowledged.
        if round % 2 == 0 {
            assert_eq!(h.ask(bob, &format!("ACK {id}")), [format!("OK ACK {id}")]);
        }
        assert_eq!(pushed_set(&h), h.core.stats().messages);
    }
    assert_eq!(h.core.stats().messages, 25);
    assert_eq!(h.core.stats().pushed, 50);
}

#[test]
fn a_client_that_never_reads_its_replies_is_dropped() {
    let mut h = Harness::new(Config {
        max_output_bytes: 100,
        ..config()
    });
    let c = h.open("10.0.0.3:5000");
    h.stalled.insert(c);
    for _ in 0..20 {
        h.line(c, "PING");
    }
    assert!(h.closed.contains(&c));
    assert_eq!(h.core.stats().open, 0);
}

#[test]
fn connection_caps() {
    let mut h = Harness::new(Config {
        max_connections: 3,
        max_connections_per_ip: 2,
        ..config()
    });
    h.open("10.0.0.1:1");
    h.open("10.0.0.1:2");
    assert_eq!(
        h.core
            .handle_open(h.now, "10.0.0.1:3".parse().unwrap(), LOCAL.parse().unwrap())
            .unwrap_err()
            .to_string(),
        "too many connections from 10.0.0.1 (limit 2)"
    );
    h.open("10.0.0.2:1");
    assert_eq!(
        h.core
            .handle_open(h.now, "10.0.0.3:1".parse().unwrap(), LOCAL.parse().unwrap())
            .unwrap_err(),
        Refusal::ServerFull { limit: 3 }
    );
}

#[test]
fn one_port_tells_http_from_lines_however_the_bytes_arrive() {
    let mut h = Harness::new(config());
    let c = h.open("10.0.0.3:5000");
    for chunk in ["P", "I", "NG\r", "\n"] {
        h.bytes(c, chunk.as_bytes());
    }
    assert_eq!(h.take_lines(c), vec!["PONG"]);
    // "PUT " is also an HTTP method: a node id never starts with '/', so this is a line.
    h.owner("10.0.0.2:5000", "bob");
    let p = h.open("10.0.0.4:5000");
    for chunk in ["PU", "T b", "ob hi\r\n"] {
        h.bytes(p, chunk.as_bytes());
    }
    assert_eq!(h.take_lines(p), vec!["OK PUT 1"]);
    let g = h.open("10.0.0.5:5000");
    let request = "GET /dht_msg.php?call=register&node_id=carol&password=pw HTTP/1.1\r\n\r\n";
    for chunk in request.as_bytes().chunks(3) {
        h.bytes(g, chunk);
    }
    assert!(h.take_text(g).ends_with("\r\n\r\nsuccess"));
    // A short line that could still have become HTTP.
    let q = h.open("10.0.0.6:5000");
    assert_eq!(
        h.ask(q, "PUT"),
        vec!["ERROR PUT: missing argument <node_id>"]
    );
}

#[test]
fn pyp2p_http_api_register_put_list() {
    let mut h = Harness::new(config());
    let id = "74416a6d75386d4850484656444a387437704b38";
    let (status, text) = h.http(
        "10.0.0.2:5000",
        &format!("/dht_msg.php?call=register&node_id={id}&password=pw30&port=1337"),
    );
    assert_eq!((status, body(&text)), (200, "success"));
    // PyP2P's client: recipient in node_id, no password.
    let (status, text) = h.http(
        "10.0.0.3:5000",
        &format!("/dht_msg.php?call=put&node_id={id}&msg=REVERSE_CONNECT%3Aabc%3A123"),
    );
    assert_eq!((status, body(&text)), (200, "success"));
    // PROTOCOL.md's form: dest_node_id, with the sender's credentials.
    h.http(
        "10.0.0.4:5000",
        "/dht_msg.php?call=register&node_id=alice&password=apw",
    );
    let (status, _) = h.http(
        "10.0.0.4:5000",
        &format!(
            "/dht_msg.php?call=put&node_id=alice&password=apw&dest_node_id={id}&msg=two+words"
        ),
    );
    assert_eq!(status, 200);
    let (_, text) = h.http(
        "10.0.0.4:5000",
        &format!("/dht_msg.php?call=put&node_id=alice&password=wrong&dest_node_id={id}&msg=x"),
    );
    assert_eq!(body(&text), "failure");
    // The line protocol sees who sent what.
    let owner = h.open("10.0.0.2:5001");
    h.ask(owner, &format!("REGISTER {id} pw30"));
    assert_eq!(
        h.ask(owner, "LIST"),
        vec![
            "MSG 1 - REVERSE_CONNECT:abc:123",
            "MSG 2 alice two words",
            "OK LIST 2"
        ]
    );
    let (_, text) = h.http(
        "10.0.0.2:5000",
        &format!("/dht_msg.php?call=list&node_id={id}&password=pw30&list_pop=0"),
    );
    assert!(text.contains("Content-Type: application/json"), "{text}");
    assert_eq!(body(&text), r#"["REVERSE_CONNECT:abc:123","two words"]"#);
    let (_, text) = h.http(
        "10.0.0.2:5000",
        &format!("/dht_msg.php?call=list&node_id={id}&password=pw30"),
    );
    assert_eq!(body(&text), r#"["REVERSE_CONNECT:abc:123","two words"]"#);
    let (_, text) = h.http(
        "10.0.0.2:5000",
        &format!("/dht_msg.php?call=list&node_id={id}&password=pw30"),
    );
    assert_eq!(body(&text), "[]", "list_pop=1 (the default) deleted them");
    assert_eq!(h.core.stats().deleted, 2);
}

#[test]
fn http_refusals_say_why() {
    let mut h = Harness::new(Config {
        max_message_bytes: 5,
        ..config()
    });
    h.http(
        "10.0.0.2:5000",
        "/dht_msg.php?call=register&node_id=bob&password=pw",
    );
    let cases = [
        (
            "/dht_msg.php?call=list&node_id=bob&password=no",
            403,
            "list: wrong secret for mailbox bob",
        ),
        (
            "/dht_msg.php?call=list&node_id=bob",
            400,
            "list: missing parameter password",
        ),
        (
            "/dht_msg.php?call=put&node_id=nobody&msg=x",
            404,
            "PUT: no mailbox nobody",
        ),
        (
            "/dht_msg.php?call=put&node_id=bob&msg=123456",
            413,
            "PUT: message is 6 bytes (limit 5)",
        ),
        (
            "/dht_msg.php?call=put&node_id=bob",
            400,
            "put: missing parameter msg",
        ),
        (
            "/dht_msg.php?call=get_mutex&node_id=bob&password=pw",
            400,
            "unknown call \"get_mutex\"",
        ),
        (
            "/dht_msg.php?call=put&node_id=bob&msg=a%0Ab",
            400,
            "PUT: message must be",
        ),
    ];
    for (target, want_status, want_reason) in cases {
        let (status, text) = h.http("10.0.0.3:5000", target);
        assert_eq!(status, want_status, "{target}: {text}");
        assert_eq!(body(&text), "failure");
        assert!(
            text.contains(&format!("X-Dht-Msg-Error: {want_reason}")),
            "{target}: {text}"
        );
    }
    let (status, text) = h.http("10.0.0.3:5000", "/other.php");
    assert_eq!(status, 404, "{text}");
    let id = h.open("10.0.0.3:5000");
    h.bytes(
        id,
        b"POST /dht_msg.php HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(h.take_text(id).starts_with("HTTP/1.1 405 "));
    let id = h.open("10.0.0.3:5000");
    h.bytes(id, b"GET /dht_msg.php?x=%zz HTTP/1.1\r\n\r\n");
    assert!(h.take_text(id).starts_with("HTTP/1.1 400 "));
}

#[test]
fn http_list_can_wait_for_a_message() {
    let mut h = Harness::new(Config {
        max_list_wait: Duration::from_secs(10),
        ..config()
    });
    h.http(
        "10.0.0.2:5000",
        "/dht_msg.php?call=register&node_id=bob&password=pw",
    );
    let waiter = h.open("10.0.0.2:5001");
    h.bytes(
        waiter,
        b"GET /dht_msg.php?call=list&node_id=bob&password=pw&wait=60 HTTP/1.1\r\n\r\n",
    );
    assert!(h.take_text(waiter).is_empty(), "waits");
    h.advance(Duration::from_secs(5));
    assert!(h.take_text(waiter).is_empty(), "still waits");
    let c = h.open("10.0.0.3:5000");
    h.ask(c, "PUT bob ping");
    assert_eq!(body(&h.take_text(waiter)), r#"["ping"]"#);
    assert!(h.closed.contains(&waiter));
    assert_eq!(h.core.stats().messages, 0, "popped");
    // Nothing arrives: the wait ends at the cap (10 s), not at the 60 s asked for.
    let waiter = h.open("10.0.0.2:5002");
    h.bytes(
        waiter,
        b"GET /dht_msg.php?call=list&node_id=bob&password=pw&wait=60 HTTP/1.1\r\n\r\n",
    );
    h.advance(Duration::from_secs(9));
    assert!(h.take_text(waiter).is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(body(&h.take_text(waiter)), "[]");
}

#[test]
fn find_neighbours_lists_fresh_nodes_of_the_same_network() {
    let mut h = Harness::new(config());
    for (i, network) in ["a", "a", "b", "a"].iter().enumerate() {
        h.http(
            &format!("10.0.1.{i}:5000"),
            &format!(
                "/dht_msg.php?call=register&node_id=n{i}&password=pw&port={}&network_id={network}",
                1000 + i
            ),
        );
        h.advance(Duration::from_secs(1));
    }
    let (_, text) = h.http(
        "10.0.1.0:5000",
        "/dht_msg.php?call=find_neighbours&node_id=n0&password=pw&network_id=a",
    );
    let got: serde_json::Value = serde_json::from_str(body(&text)).unwrap();
    assert_eq!(
        got,
        serde_json::json!([
            {"ip": "10.0.1.3", "port": 1003, "id": "n3", "can_test": 0},
            {"ip": "10.0.1.1", "port": 1001, "id": "n1", "can_test": 0},
        ])
    );
    h.advance(NEIGHBOUR_FRESHNESS);
    let (_, text) = h.http(
        "10.0.1.0:5000",
        "/dht_msg.php?call=find_neighbours&node_id=n0&password=pw&network_id=a",
    );
    assert_eq!(body(&text), "[]");
}

#[test]
fn store_ops_follow_every_change_and_restore_rebuilds_the_state() {
    let mut h = Harness::with_persist(config(), true);
    let bob = h.owner("10.0.0.2:5000", "bob");
    let alice = h.owner("10.0.0.4:5000", "alice");
    h.ask(alice, "PUT bob one");
    h.ask(alice, "PUT bob two");
    h.ask(bob, "ACK 1");
    let mut mailboxes = HashMap::new();
    let mut messages = BTreeMap::new();
    for op in std::mem::take(&mut h.store) {
        match op {
            StoreOp::PutMailbox(m) => {
                mailboxes.insert(m.node_id.clone(), m);
            }
            StoreOp::DeleteMailbox(id) => {
                mailboxes.remove(&id);
            }
            StoreOp::PutMessage(m) => {
                messages.insert(m.id, m);
            }
            StoreOp::DeleteMessage(id) => {
                messages.remove(&id);
            }
        }
    }
    assert_eq!(messages.len(), 1);
    let expired = MessageRecord {
        id: MessageId(9),
        to: "bob".parse().unwrap(),
        from: None,
        body: "stale".into(),
        expires_unix_ms: 1,
    };
    // A fresh server, as after a restart.
    let mut h2 = Harness::with_persist(config(), true);
    let mut records: Vec<MessageRecord> = messages.into_values().collect();
    records.push(expired);
    let restored = h2
        .core
        .restore(h2.now, mailboxes.into_values().collect(), records, 1);
    assert_eq!(
        restored,
        Restored {
            mailboxes: 2,
            messages: 1,
            dropped: 1
        }
    );
    h2.drain();
    assert_eq!(h2.store, vec![StoreOp::DeleteMessage(MessageId(9))]);
    let bob = h2.owner("10.0.0.2:5000", "bob");
    assert_eq!(
        h2.ask(bob, "SUBSCRIBE"),
        vec!["OK SUBSCRIBED 1", "MSG 2 alice two"]
    );
    let c = h2.open("10.0.0.3:5000");
    assert_eq!(
        h2.ask(c, "PUT bob three"),
        vec!["OK PUT 10"],
        "ids continue"
    );
    let wrong = h2.open("10.0.0.5:5000");
    assert!(h2.ask(wrong, "REGISTER bob nope")[0].contains("wrong secret"));
}

#[test]
fn memory_only_queues_no_store_ops() {
    let mut h = Harness::new(config());
    let bob = h.owner("10.0.0.2:5000", "bob");
    h.ask(bob, "PUT bob x");
    assert!(h.store.is_empty());
}

proptest! {
    /// Arbitrary bytes on one connection never panic, and a well-behaved client beside it is
    /// served normally.
    #[test]
    fn garbage_never_disturbs_another_client(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)
    ) {
        let mut h = Harness::new(Config { max_message_bytes: 64, ..config() });
        let bob = h.owner("10.0.0.2:5000", "bob");
        h.ask(bob, "SUBSCRIBE");
        let bad = h.open("10.0.0.66:5000");
        for chunk in &chunks {
            h.bytes(bad, chunk);
        }
        h.advance(Duration::from_secs(1));
        let c = h.open("10.0.0.3:5000");
        let reply = h.ask(c, "PUT bob still here");
        prop_assert!(reply[0].starts_with("OK PUT "), "{:?}", reply);
        let pushed = h.take_lines(bob);
        prop_assert!(pushed.last().is_some_and(|l| l.ends_with(" - still here")), "{:?}", pushed);
    }
}

#[path = "tests_keys.rs"]
mod keys;
