//! The core in virtual time: no sockets, no sleeps.
#![allow(clippy::too_many_lines)]

use super::*;
use std::collections::HashMap;

pub(super) struct Harness {
    core: Core,
    now: Instant,
    wall: SystemTime,
    replies: HashMap<ConnId, Vec<String>>,
    closed: Vec<ConnId>,
}

pub(super) fn config() -> Config {
    Config {
        seed: Some(7),
        ..Config::default()
    }
}

impl Harness {
    fn new(config: Config) -> Self {
        let now = Instant::now();
        let wall = SystemTime::now();
        Harness {
            core: Core::new(config, now, wall),
            now,
            wall,
            replies: HashMap::new(),
            closed: Vec::new(),
        }
    }

    fn open(&mut self, peer: &str) -> ConnId {
        let id = self
            .core
            .handle_open(self.now, peer.parse().unwrap())
            .unwrap();
        // Ids are reused: forget what an earlier connection with this id received.
        self.replies.remove(&id);
        self.closed.retain(|&c| c != id);
        id
    }

    fn line(&mut self, id: ConnId, line: &str) {
        self.core
            .handle_data(self.now, id, format!("{line}\r\n").as_bytes());
        self.drain();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.wall += by;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(action) = self.core.poll_action() {
            let id = match action {
                Action::Flush(id) | Action::Close(id) => id,
                // Relay actions: see core/relay/tests.rs.
                Action::Read(_) | Action::ShutdownWrite(_) => continue,
            };
            let text = String::from_utf8(self.core.pending_output(id).to_vec()).unwrap();
            self.core.consume_output(self.now, id, text.len());
            self.replies
                .entry(id)
                .or_default()
                .extend(text.lines().map(str::to_string));
            if let Action::Close(id) = action {
                self.closed.push(id);
                self.core.handle_closed(id);
            }
        }
    }

    fn take(&mut self, id: ConnId) -> Vec<String> {
        self.replies.remove(&id).unwrap_or_default()
    }

    fn ask(&mut self, id: ConnId, line: &str) -> Vec<String> {
        self.line(id, line);
        self.take(id)
    }

    fn unix(&self) -> f64 {
        self.wall.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    }
}

pub(super) fn nodes(reply: &[String]) -> Vec<SocketAddr> {
    assert_eq!(reply.len(), 1, "one reply line expected: {reply:?}");
    match reply[0].parse::<Response>().unwrap() {
        Response::Nodes(entries) => entries.into_iter().map(|e| e.addr).collect(),
        other => panic!("not NODES: {other:?}"),
    }
}

#[test]
fn bootstrap_returns_passive_nodes_but_never_the_asker() {
    let mut h = Harness::new(config());
    let a = h.open("10.0.0.1:40000");
    h.line(a, "PASSIVE READY 5000 10");
    let b = h.open("10.0.0.2:40001");
    h.line(b, "PASSIVE READY 6000 10");
    assert_eq!(
        h.take(a),
        Vec::<String>::new(),
        "PASSIVE READY has no reply"
    );

    let mut got = nodes(&h.ask(a, "BOOTSTRAP 10"));
    got.sort();
    assert_eq!(got, vec!["10.0.0.2:6000".parse().unwrap()]);
    let asker = h.open("10.0.0.3:1");
    let mut got = nodes(&h.ask(asker, "BOOTSTRAP 10"));
    got.sort();
    assert_eq!(
        got,
        vec![
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:6000".parse().unwrap()
        ]
    );
    assert_eq!(nodes(&h.ask(asker, "BOOTSTRAP 1")).len(), 1);
}

#[test]
fn several_nodes_behind_one_ip_register_and_see_each_other_by_port() {
    let mut h = Harness::new(config());
    let c = h.open("127.0.0.1:50000");
    for port in [7001, 7002, 7003] {
        h.line(c, &format!("PASSIVE READY {port} 5"));
    }
    // A PyP2P client (no own port) excludes its whole IP.
    assert_eq!(h.ask(c, "BOOTSTRAP 10"), vec!["NODES EMPTY"]);
    // Our extension excludes only the asker's own registration.
    let mut got = nodes(&h.ask(c, "BOOTSTRAP 10 7002"));
    got.sort();
    assert_eq!(
        got,
        vec![
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.1:7003".parse().unwrap()
        ]
    );
    // Re-registering refreshes rather than duplicating.
    h.line(c, "PASSIVE READY 7001 5");
    assert_eq!(h.core.stats().passive, 3);
}

#[test]
fn bootstrap_samples_without_duplicates() {
    let mut h = Harness::new(config());
    for i in 0..200u16 {
        let c = h.open(&format!("10.1.{}.{}:1", i / 250, i % 250));
        h.line(c, "PASSIVE READY 8000 1");
    }
    let asker = h.open("10.9.9.9:9");
    let got = nodes(&h.ask(asker, "BOOTSTRAP 100"));
    assert_eq!(got.len(), 100);
    let unique: std::collections::HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 100);
}

#[test]
fn clear_removes_the_ip_or_one_port() {
    let mut h = Harness::new(config());
    let c = h.open("10.0.0.1:1");
    h.line(c, "PASSIVE READY 1001 1");
    h.line(c, "PASSIVE READY 1002 1");
    h.line(c, "PASSIVE READY 1003 1");
    let fresh = h.open("10.0.0.1:2");
    h.line(fresh, "CLEAR 1002");
    assert_eq!(h.core.stats().passive, 2);
    h.line(fresh, "CLEAR");
    assert_eq!(h.core.stats().passive, 0);
    // Clearing what is not there is harmless.
    h.line(fresh, "CLEAR 9");
    assert!(h.take(fresh).is_empty());
}

#[test]
fn registrations_expire_with_time_passed_in() {
    let mut h = Harness::new(Config {
        node_lifetime: Duration::from_secs(10),
        ..config()
    });
    let c = h.open("10.0.0.1:1");
    h.line(c, "PASSIVE READY 1001 1");
    h.line(c, "SIMULTANEOUS READY 0 0");
    h.advance(Duration::from_secs(9));
    assert_eq!(h.core.stats().passive, 1);
    assert_eq!(h.core.stats().simultaneous, 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.core.stats().passive, 0);
    assert_eq!(h.core.stats().simultaneous, 0);
}

#[test]
fn source_tcp_reports_the_observed_port() {
    let mut h = Harness::new(config());
    let c = h.open("192.0.2.7:34567");
    assert_eq!(h.ask(c, "SOURCE TCP 1234"), vec!["REMOTE TCP 34567"]);
}

#[test]
fn source_addr_reports_the_observed_address_and_the_clock() {
    let mut h = Harness::new(config());
    h.advance(Duration::from_millis(1500));
    let c = h.open("192.0.2.7:34567");
    let reply = h.ask(c, "SOURCE ADDR");
    assert_eq!(reply.len(), 1);
    let Ok(Response::RemoteAddr { addr, time }) = reply[0].parse::<Response>() else {
        panic!("not REMOTE ADDR: {reply:?}");
    };
    assert_eq!(addr, "192.0.2.7:34567".parse().unwrap());
    let wall = h.wall.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(
        (time.secs() - wall).abs() < 1e-3,
        "{} vs {wall}",
        time.secs()
    );
    assert_eq!(
        h.ask(c, "SOURCE ADDR x"),
        vec!["ERROR SOURCE ADDR: unexpected extra argument \"x\""]
    );
}

#[test]
fn candidate_challenge_accept_fight() {
    let mut h = Harness::new(config());
    let node = h.open("10.0.0.1:1000");
    h.line(node, "SIMULTANEOUS READY 0 0");
    let cand = h.open("10.0.0.2:2000");
    assert_eq!(
        h.ask(cand, "CANDIDATE 10.0.0.1 TCP 3000 3001"),
        vec!["PREDICTION SET"]
    );
    assert_eq!(h.take(node), vec!["CHALLENGE 10.0.0.2 3000 3001 TCP"]);
    let t = h.unix() + 1.0;
    h.line(node, &format!("ACCEPT 10.0.0.2 4000 4001 TCP {t}"));
    assert!(h.take(node).is_empty());
    assert_eq!(
        h.take(cand),
        vec![format!("FIGHT 10.0.0.1 4000 4001 TCP {t}")]
    );
    // The candidate is consumed: a second ACCEPT has nothing to answer.
    let reply = h.ask(node, &format!("ACCEPT 10.0.0.2 4000 TCP {t}"));
    assert_eq!(
        reply,
        vec!["ERROR ACCEPT: no pending candidate from 10.0.0.2"]
    );
}

#[test]
fn candidate_errors_are_explained() {
    let mut h = Harness::new(Config {
        max_candidates_per_node: 2,
        ..config()
    });
    let cand = h.open("10.0.0.2:2000");
    assert_eq!(
        h.ask(cand, "CANDIDATE 10.0.0.1 TCP 3000"),
        vec!["ERROR CANDIDATE: no simultaneous node registered at 10.0.0.1"]
    );
    let node = h.open("10.0.0.1:1000");
    h.line(node, "SIMULTANEOUS READY 0 0");
    assert_eq!(
        h.ask(node, "CANDIDATE 10.0.0.1 TCP 3000"),
        vec!["ERROR CANDIDATE: a node cannot be its own candidate"]
    );
    for i in 3..5 {
        let c = h.open(&format!("10.0.0.{i}:1"));
        assert_eq!(h.ask(c, "CANDIDATE 10.0.0.1 TCP 1"), vec!["PREDICTION SET"]);
    }
    let c = h.open("10.0.0.9:1");
    assert_eq!(
        h.ask(c, "CANDIDATE 10.0.0.1 TCP 1"),
        vec!["ERROR CANDIDATE: too many pending candidates for 10.0.0.1:0 (limit 2)"]
    );
    h.line(node, "QUIT");
    assert!(h.closed.contains(&node));
    assert_eq!(
        h.ask(c, "CANDIDATE 10.0.0.1 TCP 1"),
        vec!["ERROR CANDIDATE: simultaneous node 10.0.0.1:0 is not connected"]
    );
    let stranger = h.open("10.0.0.50:1");
    assert_eq!(
        h.ask(stranger, "ACCEPT 1.2.3.4 5 TCP 100"),
        vec!["ERROR ACCEPT: you are not a registered simultaneous node"]
    );
}

#[test]
fn accept_with_a_time_far_off_is_refused() {
    let mut h = Harness::new(config());
    let node = h.open("10.0.0.1:1000");
    h.line(node, "SIMULTANEOUS READY 0 0");
    let cand = h.open("10.0.0.2:2000");
    h.line(cand, "CANDIDATE 10.0.0.1 TCP 3000");
    h.take(node);
    let late = h.unix() + 601.0;
    let reply = h.ask(node, &format!("ACCEPT 10.0.0.2 4000 TCP {late}"));
    assert!(reply[0].starts_with("ERROR ACCEPT: ntp_time"), "{reply:?}");
    assert!(h.take(cand).iter().all(|l| !l.starts_with("FIGHT")));
}

#[test]
fn a_stale_node_is_told_to_reconnect_and_challenged_when_back() {
    let mut h = Harness::new(config());
    let node = h.open("10.0.0.1:1000");
    h.line(node, "SIMULTANEOUS READY 0 0");
    h.advance(Duration::from_secs(121));
    let cand = h.open("10.0.0.2:2000");
    assert_eq!(
        h.ask(cand, "CANDIDATE 10.0.0.1 TCP 3000"),
        vec!["PREDICTION SET"]
    );
    assert_eq!(h.take(node), vec!["RECONNECT"]);
    // The node comes back on a fresh connection, as PyP2P does.
    h.line(node, "QUIT");
    let again = h.open("10.0.0.1:1001");
    h.line(again, "SIMULTANEOUS READY 0 0");
    assert_eq!(h.take(again), vec!["CHALLENGE 10.0.0.2 3000 TCP"]);
    let t = h.unix();
    h.line(again, &format!("ACCEPT 10.0.0.2 4000 TCP {t}"));
    assert_eq!(h.take(cand), vec![format!("FIGHT 10.0.0.1 4000 TCP {t}")]);
}

#[test]
fn candidates_expire_and_waiting_candidates_are_not_idle() {
    let mut h = Harness::new(Config {
        idle_timeout: Duration::from_secs(30),
        ..config()
    });
    let node = h.open("10.0.0.1:1000");
    h.line(node, "SIMULTANEOUS READY 0 0");
    let cand = h.open("10.0.0.2:2000");
    h.line(cand, "CANDIDATE 10.0.0.1 TCP 3000");
    h.advance(Duration::from_mins(1));
    assert!(
        h.closed.is_empty(),
        "a node and a waiting candidate are held"
    );
    h.advance(Duration::from_secs(61));
    assert_eq!(h.take(node), vec!["CHALLENGE 10.0.0.2 3000 TCP"]);
    // The candidate expired after 120 s; now it is an ordinary idle connection.
    let t = h.unix();
    let reply = h.ask(node, &format!("ACCEPT 10.0.0.2 1 TCP {t}"));
    assert_eq!(
        reply,
        vec!["ERROR ACCEPT: no pending candidate from 10.0.0.2"]
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(h.closed, vec![cand]);
}

#[test]
fn silent_connections_are_closed_after_the_idle_timeout() {
    let mut h = Harness::new(Config {
        idle_timeout: Duration::from_secs(5),
        ..config()
    });
    let silent = h.open("10.0.0.1:1");
    let chatty = h.open("10.0.0.2:1");
    h.advance(Duration::from_secs(4));
    h.line(chatty, "SOURCE TCP");
    h.advance(Duration::from_secs(2));
    assert_eq!(h.closed, vec![silent]);
    assert_eq!(h.core.stats().open, 1);
}

#[test]
fn connection_limits_refuse_with_a_reason() {
    let mut h = Harness::new(Config {
        max_connections: 3,
        max_connections_per_ip: 2,
        ..config()
    });
    h.open("10.0.0.1:1");
    let second = h.open("10.0.0.1:2");
    let refusal = h.core.handle_open(h.now, "10.0.0.1:3".parse().unwrap());
    assert_eq!(
        refusal.unwrap_err().to_string(),
        "too many connections from 10.0.0.1 (limit 2)"
    );
    h.open("10.0.0.2:1");
    let refusal = h.core.handle_open(h.now, "10.0.0.3:1".parse().unwrap());
    assert!(matches!(refusal, Err(Refusal::ServerFull { limit: 3 })));
    // Closing frees both counts.
    h.line(second, "QUIT");
    h.open("10.0.0.1:4");
    assert_eq!(h.core.stats().refused, 2);
}

#[test]
fn registrations_per_ip_are_capped() {
    let mut h = Harness::new(Config {
        max_registrations_per_ip: 2,
        ..config()
    });
    let c = h.open("10.0.0.1:1");
    h.line(c, "PASSIVE READY 1 1");
    h.line(c, "SIMULTANEOUS READY 2 1");
    assert_eq!(
        h.ask(c, "PASSIVE READY 3 1"),
        vec!["ERROR PASSIVE READY: too many registrations from 10.0.0.1 (limit 2)"]
    );
    assert_eq!(
        h.ask(c, "PASSIVE READY 0 1"),
        vec!["ERROR PASSIVE READY: port must be in 1..=65535, got 0"]
    );
}

#[test]
fn bad_lines_get_errors_then_the_connection_is_closed() {
    let mut h = Harness::new(Config {
        max_bad_lines: 3,
        max_line_bytes: 32,
        ..config()
    });
    let c = h.open("10.0.0.1:1");
    assert_eq!(h.ask(c, "HELLO"), vec!["ERROR unknown command: \"HELLO\""]);
    h.core.handle_data(h.now, c, b"\xff\xfe\r\n");
    h.drain();
    assert_eq!(
        h.take(c),
        vec!["ERROR line is not valid UTF-8 (first bad byte at offset 0)"]
    );
    assert!(h.closed.is_empty());
    assert_eq!(h.ask(c, "BOOTSTRAP 0").len(), 1);
    assert_eq!(h.closed, vec![c], "third bad line closes");

    let long = h.open("10.0.0.2:1");
    let reply = h.ask(long, &"A".repeat(100));
    assert_eq!(reply, vec!["ERROR line too long: 100 bytes (limit 32)"]);
    assert!(h.closed.contains(&long));

    let ok = h.open("10.0.0.3:1");
    assert_eq!(h.ask(ok, "SOURCE TCP"), vec!["REMOTE TCP 1"]);
}

#[test]
fn a_client_that_does_not_read_is_dropped_at_the_output_cap() {
    let mut h = Harness::new(Config {
        max_output_bytes: 1000,
        ..config()
    });
    let c = h.open("10.0.0.1:1");
    // Never drain: replies pile up as if the socket were full.
    for _ in 0..100 {
        h.core.handle_data(h.now, c, b"SOURCE TCP\r\n");
    }
    assert_eq!(h.core.stats().open, 0);
    assert!(h.core.pending_output(c).len() <= 1000);
}

#[test]
fn quit_closes_after_the_replies_before_it() {
    let mut h = Harness::new(config());
    let c = h.open("10.0.0.1:9");
    h.core
        .handle_data(h.now, c, b"SOURCE TCP\r\nQUIT\r\nSOURCE TCP\r\n");
    h.drain();
    assert_eq!(h.take(c), vec!["REMOTE TCP 9"]);
    assert_eq!(h.closed, vec![c]);
}

#[path = "tests_v6.rs"]
mod v6;
