//! Virtual-time tests of the core: every rule, no sockets, no clock.

use std::collections::HashMap;

use super::*;

/// Drives a [`Core`] like the mio driver does, with a virtual clock, recording what it asks
/// for. Every flush writes everything (the client reads at once).
struct Harness {
    core: Core,
    now: Instant,
    written: HashMap<ConnId, Vec<u8>>,
    dials: Vec<(CheckId, SocketAddr)>,
    cancelled: Vec<CheckId>,
    shut: Vec<ConnId>,
    closed: Vec<ConnId>,
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Harness {
    fn new(config: Config) -> Harness {
        let now = Instant::now();
        Harness {
            core: Core::new(config, now),
            now,
            written: HashMap::new(),
            dials: Vec::new(),
            cancelled: Vec::new(),
            shut: Vec::new(),
            closed: Vec::new(),
        }
    }

    fn open(&mut self, peer: &str) -> ConnId {
        let id = self
            .core
            .handle_open(self.now, peer.parse().unwrap())
            .unwrap();
        self.written.remove(&id);
        self.shut.retain(|c| *c != id);
        self.closed.retain(|c| *c != id);
        id
    }

    fn send(&mut self, id: ConnId, bytes: &[u8]) {
        self.core.handle_data(self.now, id, bytes);
        self.pump();
    }

    /// Opens a connection from `peer` and sends `GET target`.
    fn get(&mut self, peer: &str, target: &str) -> ConnId {
        let id = self.open(peer);
        self.send(
            id,
            format!("GET {target} HTTP/1.1\r\nHost: fc\r\n\r\n").as_bytes(),
        );
        id
    }

    /// A request answered at once; the client then closes, as a real one does.
    fn ask(&mut self, peer: &str, target: &str) -> Reply {
        let id = self.get(peer, target);
        let reply = self.must_reply(id);
        self.core.handle_eof(self.now, id);
        self.pump();
        assert!(self.closed.contains(&id));
        reply
    }

    fn pump(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Flush(id) => self.write_all(id),
                Action::ShutdownWrite(id) => self.shut.push(id),
                Action::Close(id) => {
                    self.write_all(id);
                    self.closed.push(id);
                    self.core.handle_closed(id);
                }
                Action::Dial { check, addr } => self.dials.push((check, addr)),
                Action::CancelDial(check) => self.cancelled.push(check),
            }
        }
    }

    fn write_all(&mut self, id: ConnId) {
        let out = self.core.pending_output(id).to_vec();
        if !out.is_empty() {
            self.written.entry(id).or_default().extend_from_slice(&out);
            self.core.handle_written(self.now, id, out.len());
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
        self.pump();
    }

    fn dial_result(&mut self, check: CheckId, outcome: DialOutcome) {
        self.core.handle_dial_result(self.now, check, outcome);
        self.pump();
    }

    fn last_dial(&self) -> (CheckId, SocketAddr) {
        *self.dials.last().expect("a dial")
    }

    fn reply(&self, id: ConnId) -> Option<Reply> {
        let bytes = self.written.get(&id)?;
        let text = String::from_utf8(bytes.clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len(), "Content-Length matches the body");
        assert!(head.contains("\r\nConnection: close"), "{head}");
        Some(Reply {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        })
    }

    fn must_reply(&self, id: ConnId) -> Reply {
        self.reply(id)
            .unwrap_or_else(|| panic!("no reply on {id:?}"))
    }
}

fn harness() -> Harness {
    Harness::new(Config::default())
}

const ALICE: &str = "203.0.113.9:40000";
const BOB: &str = "198.51.100.4:40001";

#[test]
fn wan_ip_in_both_styles_then_linger_and_close() {
    let mut h = harness();
    let id = h.get(ALICE, "/v1/wan-ip");
    let r = h.must_reply(id);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"wan_ip":"203.0.113.9"}"#);
    assert!(r.head.contains("Content-Type: application/json"));
    // Written, half-closed, lingering until the client closes.
    assert_eq!(h.shut, vec![id]);
    assert!(h.closed.is_empty());
    h.core.handle_eof(h.now, id);
    h.pump();
    assert_eq!(h.closed, vec![id]);

    let id = h.get(ALICE, "/net.php?action=get_wan_ip");
    let r = h.must_reply(id);
    assert_eq!((r.status, r.body.as_str()), (200, "203.0.113.9"));
    assert!(r.head.contains("Content-Type: text/plain"));
    // A client that never closes is closed after the linger time.
    h.advance(LINGER_TIMEOUT);
    assert!(h.closed.contains(&id));
    assert_eq!(h.core.stats().open, 0);
    assert!(h.dials.is_empty(), "wan-ip never dials");
}

#[test]
fn check_dials_the_observed_ip_and_says_yes_pyp2p_style() {
    let mut h = harness();
    let id = h.get(
        ALICE,
        "/net.php?action=is_port_forwarded&port=50500&proto=TCP",
    );
    assert_eq!(h.dials.len(), 1);
    let (check, addr) = h.last_dial();
    assert_eq!(addr, "203.0.113.9:50500".parse().unwrap());
    assert!(h.reply(id).is_none(), "no answer before the dial ends");
    assert_eq!(h.core.stats().checks_in_flight, 1);
    h.advance(Duration::from_millis(30));
    h.dial_result(check, DialOutcome::Connected);
    let r = h.must_reply(id);
    assert_eq!((r.status, r.body.as_str()), (200, PYP2P_YES));
    assert_eq!(h.core.stats().checks_open, 1);
    assert_eq!(h.core.stats().checks_in_flight, 0);
}

#[test]
fn check_json_style_reports_ip_port_open_and_ms() {
    let mut h = harness();
    let id = h.get(ALICE, "/v1/check?port=8080&proto=tcp");
    let (check, _) = h.last_dial();
    h.advance(Duration::from_millis(42));
    h.dial_result(check, DialOutcome::Connected);
    assert_eq!(
        h.must_reply(id).body,
        r#"{"ip":"203.0.113.9","port":8080,"proto":"TCP","open":true,"ms":42}"#
    );
    // proto is optional.
    let id = h.get(BOB, "/v1/check?port=22");
    let (check, addr) = h.last_dial();
    assert_eq!(addr, "198.51.100.4:22".parse().unwrap());
    h.dial_result(check, DialOutcome::Refused);
    assert_eq!(
        h.must_reply(id).body,
        r#"{"ip":"198.51.100.4","port":22,"proto":"TCP","open":false,"ms":0}"#
    );
}

#[test]
fn refused_unreachable_and_timeout_all_say_no() {
    let mut h = harness();
    let pyp2p = "/net.php?action=is_port_forwarded&port=1234&proto=TCP";
    let id = h.get(ALICE, pyp2p);
    h.dial_result(h.last_dial().0, DialOutcome::Refused);
    assert_eq!(h.must_reply(id).body, PYP2P_NO);

    let id = h.get(ALICE, pyp2p);
    h.dial_result(
        h.last_dial().0,
        DialOutcome::Unreachable("No route to host".into()),
    );
    assert_eq!(h.must_reply(id).body, PYP2P_NO);

    let id = h.get(ALICE, "/v1/check?port=1234");
    let (check, _) = h.last_dial();
    h.advance(Duration::from_millis(1999));
    assert!(h.reply(id).is_none());
    assert!(h.cancelled.is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(
        h.cancelled,
        vec![check],
        "the driver is told to drop the socket"
    );
    assert_eq!(
        h.must_reply(id).body,
        r#"{"ip":"203.0.113.9","port":1234,"proto":"TCP","open":false,"ms":2000}"#
    );
    // A late report is ignored: one answer only.
    let before = h.written[&id].len();
    h.dial_result(check, DialOutcome::Connected);
    assert_eq!(h.written[&id].len(), before);
}

#[test]
fn a_local_failure_is_503_never_a_false_no() {
    let mut h = harness();
    let id = h.get(
        ALICE,
        "/net.php?action=is_port_forwarded&port=1234&proto=TCP",
    );
    h.dial_result(
        h.last_dial().0,
        DialOutcome::LocalError("Too many open files".into()),
    );
    let r = h.must_reply(id);
    assert_eq!(r.status, 503);
    assert!(
        !r.body.contains("yes") && !r.body.contains("\"no\""),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("could not run the check: Too many open files")
    );
}

#[test]
fn parameters_naming_an_address_are_refused_and_nothing_is_dialed() {
    let mut h = harness();
    for extra in [
        "ip=10.0.0.1",
        "host=example.com",
        "addr=10.0.0.1%3A22",
        "address=x",
        "target=10.0.0.1",
        "dest_ip=1.2.3.4",
        "IP=1.2.3.4",
        "to=somewhere",
        "x=10.0.0.1",
        "y=%5B2001%3Adb8%3A%3A1%5D%3A80",
    ] {
        for base in [
            "/v1/check?port=22",
            "/net.php?action=is_port_forwarded&port=22&proto=TCP",
        ] {
            let r = h.ask(ALICE, &format!("{base}&{extra}"));
            assert_eq!(r.status, 400, "{extra}");
            assert!(
                r.body
                    .contains("never dials an address named in the request"),
                "{extra}: {}",
                r.body
            );
            assert!(r.body.contains("(203.0.113.9)"), "{}", r.body);
        }
    }
    // Even before the port: order does not matter.
    assert_eq!(h.ask(ALICE, "/v1/check?host=10.0.0.1&port=22").status, 400);
    assert!(h.dials.is_empty());
    assert_eq!(h.core.stats().checks, 0);
}

#[test]
fn bad_parameters_get_400_with_a_clear_message() {
    let cases: &[(&str, u16, &str)] = &[
        ("/v1/check", 400, "missing parameter `port`"),
        (
            "/v1/check?port=0",
            400,
            "must be a TCP port in 1..=65535, got \\\"0\\\"",
        ),
        ("/v1/check?port=65536", 400, "got \\\"65536\\\""),
        ("/v1/check?port=80a", 400, "got \\\"80a\\\""),
        ("/v1/check?port=%2B80", 400, "got \\\"+80\\\""),
        ("/v1/check?port=", 400, "got \\\"\\\""),
        ("/v1/check?port=80&proto=UDP", 400, "UDP is not supported"),
        (
            "/v1/check?port=80&proto=sctp",
            400,
            "must be TCP, got \\\"sctp\\\"",
        ),
        (
            "/v1/check?port=80&port=81",
            400,
            "`port` given more than once",
        ),
        (
            "/v1/check?port=80&verbose=1",
            400,
            "unknown parameter `verbose`: this endpoint takes port, proto",
        ),
        ("/v1/wan-ip?x=1", 400, "takes no parameters"),
        ("/net.php", 400, "missing parameter `action`"),
        ("/net.php?action=hack", 400, "unknown action \"hack\""),
        (
            "/net.php?action=is_port_forwarded&port=5&proto=UDP",
            400,
            "UDP is not supported",
        ),
        (
            "/net.php?action=get_wan_ip&port=5",
            400,
            "unknown parameter `port`",
        ),
        ("/admin", 404, "no such endpoint: \"/admin\""),
        ("/v1/nope", 404, "no such endpoint"),
    ];
    let mut h = harness();
    for (target, status, needle) in cases {
        let r = h.ask(ALICE, target);
        assert_eq!(r.status, *status, "{target}: {}", r.body);
        assert!(
            r.body.contains(needle),
            "{target}: {} lacks {needle}",
            r.body
        );
        if target.starts_with("/v1/") {
            assert!(r.body.starts_with(r#"{"error":""#), "{target}: {}", r.body);
        } else {
            assert!(r.head.contains("text/plain"), "{target}");
        }
    }
    let id = h.open(ALICE);
    h.send(
        id,
        b"POST /v1/check?port=80 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    let r = h.must_reply(id);
    assert_eq!(r.status, 405);
    assert!(r.head.contains("\r\nAllow: GET"));
    assert!(h.dials.is_empty());
    assert_eq!(
        h.core.stats().bad_requests,
        u64::try_from(cases.len()).unwrap() + 1
    );
}

#[test]
fn the_root_explains_the_endpoints() {
    let mut h = harness();
    let id = h.get(ALICE, "/");
    let r = h.must_reply(id);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, USAGE);
}

#[test]
fn a_head_split_into_single_bytes_is_waited_for() {
    let mut h = harness();
    let id = h.open(ALICE);
    let wire = b"GET /v1/wan-ip HTTP/1.0\r\nHost: x\r\n\r\n";
    for byte in &wire[..wire.len() - 1] {
        h.send(id, std::slice::from_ref(byte));
        assert!(h.reply(id).is_none());
    }
    h.send(id, &wire[wire.len() - 1..]);
    assert_eq!(h.must_reply(id).status, 200);
}

#[test]
fn malformed_and_oversized_heads_get_400_and_431() {
    let mut h = Harness::new(Config {
        max_head_bytes: 256,
        ..Config::default()
    });
    let id = h.open(ALICE);
    h.send(id, b"HELLO THERE\r\n\r\n");
    let r = h.must_reply(id);
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("malformed request head:"), "{}", r.body);

    let id = h.open(ALICE);
    h.send(id, b"GET /v1/check?port=8%G0 HTTP/1.1\r\n\r\n");
    let r = h.must_reply(id);
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("bad percent-encoding in query"),
        "{}",
        r.body
    );

    let id = h.open(ALICE);
    h.send(id, b"GET / HTTP/1.1\r\nX-Pad: ");
    h.send(id, &[b'a'; 1000]);
    let r = h.must_reply(id);
    assert_eq!(r.status, 431);
    assert_eq!(r.body, "request head too large: over 256 bytes\n");
    // More bytes after the verdict are ignored, and the connection goes away.
    h.send(id, &[b'a'; 1000]);
    h.core.handle_eof(h.now, id);
    h.pump();
    assert!(h.closed.contains(&id));
    assert!(h.dials.is_empty());
}

#[test]
fn per_ip_rate_limit_gives_429_with_retry_after_and_spares_others() {
    let mut h = harness(); // 10 a minute, bursts of 5
    for i in 0..5 {
        let id = h.get(ALICE, "/v1/check?port=7000");
        h.dial_result(h.last_dial().0, DialOutcome::Refused);
        assert_eq!(h.must_reply(id).status, 200, "check {i}");
    }
    let id = h.get(
        ALICE,
        "/net.php?action=is_port_forwarded&port=7000&proto=TCP",
    );
    let r = h.must_reply(id);
    assert_eq!(r.status, 429);
    assert!(r.head.contains("\r\nRetry-After: 6"), "{}", r.head);
    assert_eq!(
        r.body,
        "rate limit: at most 10 port checks per minute from one IP (bursts of 5); \
         203.0.113.9 may check again in 6 s\n"
    );
    // Same IP, another source port: same bucket. JSON style for JSON endpoints.
    let id = h.get("203.0.113.9:50000", "/v1/check?port=7000");
    let r = h.must_reply(id);
    assert_eq!(r.status, 429);
    assert!(r.body.starts_with(r#"{"error":"rate limit"#));
    // wan-ip is not rate limited, and bob is unaffected.
    let id = h.get(ALICE, "/v1/wan-ip");
    assert_eq!(h.must_reply(id).status, 200);
    let id = h.get(BOB, "/v1/check?port=7000");
    h.dial_result(h.last_dial().0, DialOutcome::Connected);
    assert_eq!(h.must_reply(id).status, 200);
    assert_eq!(h.core.stats().rate_limited, 2);
    assert_eq!(h.dials.len(), 6);
    // One token back after 6 s.
    h.advance(Duration::from_secs(6));
    let id = h.get(ALICE, "/v1/check?port=7000");
    assert_eq!(h.dials.len(), 7);
    h.dial_result(h.last_dial().0, DialOutcome::Connected);
    assert_eq!(h.must_reply(id).status, 200);
}

#[test]
fn the_global_cap_on_dial_backs_gives_503() {
    let mut h = Harness::new(Config {
        max_concurrent_checks: 2,
        ..Config::default()
    });
    let a = h.get("192.0.2.1:1000", "/v1/check?port=1");
    let _b = h.get("192.0.2.2:1000", "/v1/check?port=1");
    let c = h.get("192.0.2.3:1000", "/v1/check?port=1");
    let r = h.must_reply(c);
    assert_eq!(r.status, 503);
    assert!(
        r.body
            .contains("server busy: 2 port checks already in progress"),
        "{}",
        r.body
    );
    assert!(r.head.contains("Retry-After: 1"));
    assert_eq!(h.dials.len(), 2);
    // The busy answer did not cost the caller a token: after a slot frees, it is served.
    h.dial_result(h.dials[0].0, DialOutcome::Refused);
    assert_eq!(h.must_reply(a).status, 200);
    h.get("192.0.2.3:1001", "/v1/check?port=1");
    assert_eq!(h.dials.len(), 3);
    assert_eq!(h.core.stats().busy, 1);
}

#[test]
fn connection_limits_refuse_with_429_per_ip_and_503_globally() {
    let mut h = Harness::new(Config {
        max_connections: 3,
        max_connections_per_ip: 2,
        ..Config::default()
    });
    let a1 = h.open("192.0.2.1:1");
    let _a2 = h.open("192.0.2.1:2");
    let refusal = h
        .core
        .handle_open(h.now, "192.0.2.1:3".parse().unwrap())
        .unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "too many connections from 192.0.2.1 (limit 2)"
    );
    assert_eq!(refusal.response().status, 429);
    let _b = h.open("192.0.2.2:1");
    let refusal = h
        .core
        .handle_open(h.now, "192.0.2.3:1".parse().unwrap())
        .unwrap_err();
    assert_eq!(refusal.response().status, 503);
    assert_eq!(h.core.stats().refused, 2);
    // Closing one frees both its global and its per-IP slot.
    h.core.handle_reset(a1, "test");
    h.pump();
    h.open("192.0.2.1:3");
}

#[test]
fn idle_connections_are_closed_and_partial_heads_get_408() {
    let mut h = harness(); // idle timeout 10 s
    let silent = h.open(ALICE);
    let partial = h.open(BOB);
    h.send(partial, b"GET /v1/wan-ip HTTP/1.1\r\n");
    h.advance(Duration::from_millis(9_999));
    assert!(h.closed.is_empty());
    h.advance(Duration::from_millis(1));
    assert!(h.closed.contains(&silent));
    assert!(
        h.reply(silent).is_none(),
        "nothing said to a silent connection"
    );
    let r = h.must_reply(partial);
    assert_eq!(r.status, 408);
    assert_eq!(r.body, "request head not complete after 10000 ms\n");
    h.advance(LINGER_TIMEOUT);
    assert!(h.closed.contains(&partial));
}

#[test]
fn a_client_that_does_not_read_its_answer_is_closed() {
    let mut h = harness();
    let id = h.open(ALICE);
    h.core
        .handle_data(h.now, id, b"GET /v1/wan-ip HTTP/1.1\r\n\r\n");
    // Do not write: drop the Flush on the floor, as if the socket never became writable.
    while h.core.poll_action().is_some() {}
    h.advance(Duration::from_secs(10));
    assert_eq!(h.closed, vec![id]);
}

#[test]
fn a_client_that_goes_away_mid_check_cancels_its_dial() {
    let mut h = harness();
    let id = h.get(ALICE, "/v1/check?port=9");
    let (check, _) = h.last_dial();
    h.core.handle_reset(id, "connection reset");
    h.pump();
    assert_eq!(h.cancelled, vec![check]);
    assert_eq!(h.core.stats().checks_in_flight, 0);
    h.dial_result(check, DialOutcome::Connected); // late, ignored
    assert!(h.reply(id).is_none());
}

#[test]
fn a_half_closed_client_still_gets_its_answer() {
    let mut h = harness();
    let id = h.get(ALICE, "/v1/check?port=9");
    h.core.handle_eof(h.now, id);
    h.pump();
    assert!(h.closed.is_empty());
    h.dial_result(h.last_dial().0, DialOutcome::Connected);
    assert_eq!(h.must_reply(id).status, 200);
    // It has closed its side already, so no lingering: closed right after the answer.
    assert_eq!(h.closed, vec![id]);
    assert!(h.shut.is_empty());

    // EOF in the middle of a head: 400, then closed.
    let id = h.open(BOB);
    h.send(id, b"GET /v1/wan-ip HT");
    h.core.handle_eof(h.now, id);
    h.pump();
    let r = h.must_reply(id);
    assert_eq!(r.status, 400);
    assert!(
        r.body
            .contains("closed before the request head was complete")
    );
    assert!(h.closed.contains(&id));
}

#[test]
fn shutdown_closes_connections_and_cancels_dials() {
    let mut h = harness();
    let a = h.get(ALICE, "/v1/check?port=9");
    let b = h.open(BOB);
    h.core.handle_shutdown();
    h.pump();
    assert_eq!(h.cancelled, vec![h.last_dial().0]);
    assert!(h.closed.contains(&a) && h.closed.contains(&b));
    assert_eq!(h.core.stats().open, 0);
    assert_eq!(h.core.stats().checks_in_flight, 0);
}

#[test]
fn ipv4_mapped_peers_are_treated_as_ipv4() {
    let mut h = harness();
    let id = h.get("[::ffff:203.0.113.9]:4000", "/v1/check?port=80");
    assert_eq!(h.last_dial().1, "203.0.113.9:80".parse().unwrap());
    h.dial_result(h.last_dial().0, DialOutcome::Connected);
    assert!(h.must_reply(id).body.starts_with(r#"{"ip":"203.0.113.9","#));
    let id = h.get("[2001:db8::7]:4000", "/v1/wan-ip");
    assert_eq!(h.must_reply(id).body, r#"{"wan_ip":"2001:db8::7"}"#);
}

#[test]
fn rate_state_of_quiet_callers_is_forgotten() {
    let mut h = harness();
    let id = h.get(ALICE, "/v1/check?port=80");
    h.dial_result(h.last_dial().0, DialOutcome::Connected);
    assert_eq!(h.must_reply(id).status, 200);
    assert_eq!(h.core.limiter.tracked(), 1);
    h.advance(Duration::from_secs(20));
    assert_eq!(h.core.limiter.tracked(), 0);
    assert!(h.core.poll_timeout() > h.now);
}

#[test]
fn arbitrary_bytes_never_panic_and_always_end_in_an_answer_or_a_close() {
    let alphabet = b"GET /net.php?v1/check=&%+:0123456789 \r\nHTTP/1.\xff\x00";
    let mut h = Harness::new(Config {
        max_head_bytes: 128,
        ..Config::default()
    });
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..3_000 {
        let id = h.open(&format!("10.{}.{}.1:1000", i % 200, i / 200));
        for _ in 0..(next() % 4) {
            let len = usize::try_from(next() % 64).unwrap();
            let chunk: Vec<u8> = (0..len)
                .map(|_| alphabet[usize::try_from(next()).unwrap() % alphabet.len()])
                .collect();
            h.send(id, &chunk);
        }
        h.core.handle_eof(h.now, id);
        h.pump();
        while let Some((check, _)) = h.dials.pop() {
            h.dial_result(check, DialOutcome::Refused);
        }
        h.advance(Duration::from_secs(3));
        assert!(h.closed.contains(&id), "connection {i} not closed");
    }
    assert_eq!(h.core.stats().open, 0);
}
