//! The relay in virtual time: simulated clients with kernel-like buffers, no sockets, no sleeps.
#![allow(
    clippy::too_many_lines,
    clippy::struct_excessive_bools,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use super::*;
use crate::config::Config;
use crate::core::Refusal;
use proptest::prelude::*;

const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn token(n: u8) -> String {
    RelayToken::from_bytes([n; 32]).to_string()
}

/// One simulated client: what it sent that the server has not read yet, what it received.
#[derive(Debug, Default)]
struct Client {
    inbound: Vec<u8>,
    eof_sent: bool,
    eof_seen: bool,
    received: Vec<u8>,
    /// Its receive window is full: the server cannot write to it.
    stalled: bool,
    /// The server shut down its write side (the client saw a FIN).
    shut: bool,
    closed: bool,
}

/// A driver in miniature: reads as far as `read_budget` allows in chunks of `chunk` bytes,
/// writes straight through when `relay_direct_target` allows, carries out every action.
struct Sim {
    core: Core,
    now: Instant,
    clients: HashMap<ConnId, Client>,
    chunk: usize,
}

fn config() -> Config {
    Config {
        seed: Some(7),
        relay_rate: None,
        ..Config::default()
    }
}

impl Sim {
    fn new(config: Config) -> Sim {
        let now = Instant::now();
        Sim {
            core: Core::new(config, now, std::time::SystemTime::now()),
            now,
            clients: HashMap::new(),
            chunk: 16 * 1024,
        }
    }

    fn open(&mut self, peer: &str) -> ConnId {
        let id = self
            .core
            .handle_open(self.now, peer.parse().unwrap())
            .unwrap();
        self.clients.insert(id, Client::default());
        id
    }

    fn client(&mut self, id: ConnId) -> &mut Client {
        self.clients.get_mut(&id).unwrap()
    }

    /// The client sends bytes (a readable event follows).
    fn send(&mut self, id: ConnId, bytes: &[u8]) {
        self.client(id).inbound.extend_from_slice(bytes);
        self.readable(id);
        self.drain();
    }

    /// The client closes its write side.
    fn send_eof(&mut self, id: ConnId) {
        self.client(id).eof_sent = true;
        self.readable(id);
        self.drain();
    }

    /// The client's connection breaks.
    fn fail(&mut self, id: ConnId) {
        self.core
            .handle_failed(self.now, id, &"connection reset by peer");
        self.drain();
    }

    fn stall(&mut self, id: ConnId, stalled: bool) {
        self.client(id).stalled = stalled;
        if !stalled {
            self.flush(id);
            self.drain();
        }
    }

    /// Takes what a client received so far.
    fn take(&mut self, id: ConnId) -> Vec<u8> {
        std::mem::take(&mut self.client(id).received)
    }

    fn take_str(&mut self, id: ConnId) -> String {
        String::from_utf8(self.take(id)).unwrap()
    }

    fn readable(&mut self, id: ConnId) {
        loop {
            if self.clients[&id].closed {
                return;
            }
            let budget = self.core.read_budget(self.now, id);
            if budget == 0 {
                return;
            }
            let chunk = self.chunk;
            let c = self.client(id);
            if c.inbound.is_empty() {
                if c.eof_sent && !c.eof_seen {
                    c.eof_seen = true;
                    self.core.handle_eof(self.now, id);
                }
                return;
            }
            let n = budget.min(c.inbound.len()).min(chunk);
            let data: Vec<u8> = c.inbound.drain(..n).collect();
            match self.core.relay_direct_target(id) {
                Some(dst) if !self.clients[&dst].stalled && !self.clients[&dst].closed => {
                    self.client(dst).received.extend_from_slice(&data);
                    self.core.handle_relay_read(self.now, id, &data, data.len());
                }
                _ => self.core.handle_data(self.now, id, &data),
            }
        }
    }

    fn flush(&mut self, id: ConnId) {
        loop {
            let c = &self.clients[&id];
            if c.stalled || c.closed {
                return;
            }
            let pending = self.core.pending_output(id).to_vec();
            if pending.is_empty() {
                return;
            }
            self.client(id).received.extend_from_slice(&pending);
            self.core.consume_output(self.now, id, pending.len());
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Flush(id) => self.flush(id),
                Action::Read(id) => self.readable(id),
                Action::ShutdownWrite(id) => self.client(id).shut = true,
                Action::Close(id) => {
                    self.flush(id);
                    self.client(id).closed = true;
                    self.core.handle_closed(id);
                }
            }
        }
    }

    /// Moves virtual time forward, firing every timer on the way.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            let next = self.core.poll_timeout();
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            self.core.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    fn closed(&self, id: ConnId) -> bool {
        self.clients[&id].closed
    }

    /// Two clients paired with `token`; their `RELAY` replies already taken.
    fn pair(&mut self, a_peer: &str, b_peer: &str, token: &str) -> (ConnId, ConnId) {
        let a = self.open(a_peer);
        self.send(a, format!("RELAY {token}\r\n").as_bytes());
        assert_eq!(self.take_str(a), "RELAY WAITING\r\n");
        let b = self.open(b_peer);
        self.send(b, format!("RELAY {token}\r\n").as_bytes());
        assert_eq!(self.take_str(a), "RELAY OK\r\n");
        assert_eq!(self.take_str(b), "RELAY OK\r\n");
        (a, b)
    }
}

#[test]
fn two_connections_with_one_token_are_spliced_both_ways() {
    let mut sim = Sim::new(config());
    let (a, b) = sim.pair("10.0.0.1:1000", "10.0.0.2:2000", TOKEN);
    assert_eq!(sim.core.stats().relay_active, 1);
    assert_eq!(sim.core.stats().relay_waiting, 0);
    sim.send(a, b"hello from a\r\n");
    assert_eq!(sim.take_str(b), "hello from a\r\n");
    // Not lines any more: no parsing, no CRLF needed, any bytes, even a RELAY or QUIT line.
    sim.send(b, b"\xff\x00QUIT\r\nRELAY x");
    assert_eq!(sim.take(a), b"\xff\x00QUIT\r\nRELAY x");
    assert!(!sim.closed(a) && !sim.closed(b));
    assert_eq!(sim.core.stats().relay_bytes, 14 + 15);
}

#[test]
fn bytes_sent_before_the_pairing_are_delivered_in_order_after_relay_ok() {
    let mut sim = Sim::new(config());
    let a = sim.open("10.0.0.1:1000");
    sim.send(a, format!("RELAY {TOKEN}\r\nearly-a ").as_bytes());
    sim.send(a, b"more-a");
    assert_eq!(sim.take_str(a), "RELAY WAITING\r\n");
    assert_eq!(sim.core.stats().relay_queued_bytes, 14);
    let b = sim.open("10.0.0.2:2000");
    sim.send(
        b,
        &[format!("RELAY {TOKEN}\nearly-b").as_bytes(), b"\xff"].concat(),
    );
    assert_eq!(sim.take(a), b"RELAY OK\r\nearly-b\xff");
    assert_eq!(sim.take(b), b"RELAY OK\r\nearly-a more-a");
    sim.send(a, b"after");
    assert_eq!(sim.take(b), b"after");
    assert_eq!(sim.core.stats().relay_queued_bytes, 0);
}

#[test]
fn the_waiting_reply_not_yet_written_still_comes_before_relay_ok() {
    let mut sim = Sim::new(config());
    let a = sim.open("10.0.0.1:1000");
    sim.stall(a, true);
    sim.send(a, format!("RELAY {TOKEN}\r\n").as_bytes());
    let b = sim.open("10.0.0.2:2000");
    sim.send(b, format!("RELAY {TOKEN}\r\nhi").as_bytes());
    sim.stall(a, false);
    assert_eq!(sim.take_str(a), "RELAY WAITING\r\nRELAY OK\r\nhi");
}

#[test]
fn too_many_bytes_before_the_pairing_close_with_a_reason() {
    let mut sim = Sim::new(Config {
        relay_early_bytes: 100,
        ..config()
    });
    let a = sim.open("10.0.0.1:1000");
    sim.send(a, format!("RELAY {TOKEN}\r\n").as_bytes());
    sim.send(a, &[7u8; 100]);
    assert!(!sim.closed(a));
    sim.send(a, &[7u8]);
    assert_eq!(
        sim.take_str(a),
        "RELAY WAITING\r\nERROR relay: 101 bytes sent before the pairing (limit 100)\r\n"
    );
    assert!(sim.closed(a));
    let stats = sim.core.stats();
    assert_eq!(
        (stats.relay_waiting, stats.relay_queued_bytes, stats.open),
        (0, 0, 0)
    );
    // The token is free again.
    let c = sim.open("10.0.0.1:1001");
    sim.send(c, format!("RELAY {TOKEN}\r\n").as_bytes());
    assert_eq!(sim.take_str(c), "RELAY WAITING\r\n");
}

#[test]
fn nobody_joining_within_the_wait_timeout_closes_with_a_reason() {
    let mut sim = Sim::new(config());
    let a = sim.open("10.0.0.1:1000");
    sim.send(a, format!("RELAY {TOKEN}\r\n").as_bytes());
    sim.take(a);
    sim.advance(Duration::from_secs(29));
    assert!(!sim.closed(a));
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.take_str(a), "ERROR relay: nobody joined within 30s\r\n");
    assert!(sim.closed(a));
    assert_eq!(sim.core.stats().relay_waiting, 0);
    assert_eq!(sim.core.stats().relay_refused, 1);
    // A late peer waits afresh instead of joining a dead connection.
    let b = sim.open("10.0.0.2:2000");
    sim.send(b, format!("RELAY {TOKEN}\r\n").as_bytes());
    assert_eq!(sim.take_str(b), "RELAY WAITING\r\n");
}

#[test]
fn a_waiting_client_that_leaves_frees_its_token() {
    let mut sim = Sim::new(config());
    let a = sim.open("10.0.0.1:1000");
    sim.send(a, format!("RELAY {TOKEN}\r\nbye").as_bytes());
    sim.send_eof(a);
    assert!(sim.closed(a));
    assert_eq!(sim.core.stats().relay_waiting, 0);
    assert_eq!(sim.core.stats().relay_queued_bytes, 0);
    let b = sim.open("10.0.0.2:2000");
    sim.send(b, format!("RELAY {TOKEN}\r\n").as_bytes());
    assert_eq!(sim.take_str(b), "RELAY WAITING\r\n");
}

#[test]
fn a_third_connection_with_a_paired_token_is_refused_and_the_pair_keeps_working() {
    let mut sim = Sim::new(config());
    let (a, b) = sim.pair("10.0.0.1:1000", "10.0.0.2:2000", TOKEN);
    let c = sim.open("10.0.0.3:3000");
    sim.send(c, format!("RELAY {TOKEN}\r\n").as_bytes());
    assert_eq!(sim.take_str(c), "ERROR relay: token already in use\r\n");
    assert!(sim.closed(c));
    sim.send(a, b"still here");
    assert_eq!(sim.take(b), b"still here");
    // Single pairing per session; once it ends the token may pair afresh.
    sim.send_eof(a);
    sim.send_eof(b);
    assert!(sim.closed(a) && sim.closed(b));
    let d = sim.open("10.0.0.4:4000");
    sim.send(d, format!("RELAY {TOKEN}\r\n").as_bytes());
    assert_eq!(sim.take_str(d), "RELAY WAITING\r\n");
}

#[test]
fn relay_must_be_the_first_line() {
    let mut sim = Sim::new(config());
    let c = sim.open("10.0.0.3:3000");
    sim.send(c, format!("SOURCE TCP\r\nRELAY {TOKEN}\r\n").as_bytes());
    assert_eq!(
        sim.take_str(c),
        "REMOTE TCP 3000\r\nERROR relay: RELAY must be the first line on a connection \
         (this was line 2)\r\n"
    );
    assert!(sim.closed(c));
    // Empty lines do not count (the framer skips them).
    let d = sim.open("10.0.0.3:3001");
    sim.send(d, format!("\r\n\r\nRELAY {TOKEN}\r\n").as_bytes());
    assert_eq!(sim.take_str(d), "RELAY WAITING\r\n");
}

#[test]
fn a_malformed_token_is_an_ordinary_bad_line() {
    let mut sim = Sim::new(config());
    let c = sim.open("10.0.0.3:3000");
    sim.send(c, format!("RELAY {}\r\n", TOKEN.to_uppercase()).as_bytes());
    assert_eq!(
        sim.take_str(c),
        "ERROR RELAY: <token> must be lowercase hex, got uppercase 'A' at position 20\r\n"
    );
    assert!(!sim.closed(c));
}

#[test]
fn relays_per_ip_are_capped_while_other_ips_are_served() {
    let mut sim = Sim::new(Config {
        max_relays_per_ip: 2,
        ..config()
    });
    let first = sim.open("10.0.0.1:1");
    sim.send(first, format!("RELAY {}\r\n", token(1)).as_bytes());
    let second = sim.open("10.0.0.1:2");
    sim.send(second, format!("RELAY {}\r\n", token(2)).as_bytes());
    let third = sim.open("10.0.0.1:3");
    sim.send(third, format!("RELAY {}\r\n", token(3)).as_bytes());
    assert_eq!(
        sim.take_str(third),
        "ERROR relay: too many relays from 10.0.0.1 (limit 2)\r\n"
    );
    assert!(sim.closed(third));
    // Another IP is served, and may join 10.0.0.1's waiting tokens.
    let other = sim.open("10.0.0.2:1");
    sim.send(other, format!("RELAY {}\r\n", token(1)).as_bytes());
    assert_eq!(sim.take_str(other), "RELAY OK\r\n");
    // A capped IP cannot join either.
    let waiting = sim.open("10.0.0.2:2");
    sim.send(waiting, format!("RELAY {}\r\n", token(4)).as_bytes());
    let joiner = sim.open("10.0.0.1:4");
    sim.send(joiner, format!("RELAY {}\r\n", token(4)).as_bytes());
    assert!(
        sim.take_str(joiner)
            .starts_with("ERROR relay: too many relays from 10.0.0.1")
    );
    // When one ends, the IP may relay again.
    sim.send_eof(second);
    let again = sim.open("10.0.0.1:5");
    sim.send(again, format!("RELAY {}\r\n", token(4)).as_bytes());
    assert_eq!(sim.take_str(again), "RELAY OK\r\n");
    assert_eq!(sim.core.stats().relay_refused, 2);
}

#[test]
fn the_global_cap_counts_waiting_and_active_but_lets_a_peer_join() {
    let mut sim = Sim::new(Config {
        max_relays: 2,
        ..config()
    });
    let (_a, _b) = sim.pair("10.0.0.1:1", "10.0.0.2:1", &token(1));
    let w = sim.open("10.0.0.3:1");
    sim.send(w, format!("RELAY {}\r\n", token(2)).as_bytes());
    assert_eq!(sim.take_str(w), "RELAY WAITING\r\n");
    let full = sim.open("10.0.0.4:1");
    sim.send(full, format!("RELAY {}\r\n", token(3)).as_bytes());
    assert_eq!(
        sim.take_str(full),
        "ERROR relay: server full (2 relays), try later\r\n"
    );
    // Joining the waiting token adds no entry.
    let join = sim.open("10.0.0.5:1");
    sim.send(join, format!("RELAY {}\r\n", token(2)).as_bytes());
    assert_eq!(sim.take_str(join), "RELAY OK\r\n");
    assert_eq!(sim.core.stats().relay_active, 2);
}

#[test]
fn a_disabled_relay_refuses_and_the_rest_still_works() {
    let mut sim = Sim::new(Config {
        relay_enabled: false,
        ..config()
    });
    let c = sim.open("10.0.0.3:3000");
    sim.send(c, format!("RELAY {TOKEN}\r\n").as_bytes());
    assert_eq!(
        sim.take_str(c),
        "ERROR relay: relay disabled on this server\r\n"
    );
    assert!(sim.closed(c));
    let d = sim.open("10.0.0.3:3001");
    sim.send(d, b"SOURCE TCP\r\n");
    assert_eq!(sim.take_str(d), "REMOTE TCP 3001\r\n");
}

#[test]
fn relay_connections_count_against_the_connection_caps() {
    let mut sim = Sim::new(Config {
        max_connections_per_ip: 2,
        max_connections: 3,
        ..config()
    });
    let (_a, _b) = sim.pair("10.0.0.1:1", "10.0.0.1:2", TOKEN);
    let refusal = sim.core.handle_open(sim.now, "10.0.0.1:3".parse().unwrap());
    assert!(matches!(
        refusal,
        Err(Refusal::TooManyFromIp { limit: 2, .. })
    ));
    sim.open("10.0.0.2:1");
    let refusal = sim.core.handle_open(sim.now, "10.0.0.3:1".parse().unwrap());
    assert!(matches!(refusal, Err(Refusal::ServerFull { limit: 3 })));
}

#[test]
fn a_closed_connection_is_never_read() {
    let mut sim = Sim::new(config());
    let c = sim.open("10.0.0.1:1");
    assert_eq!(sim.core.read_budget(sim.now, c), usize::MAX);
    sim.send(c, b"QUIT\r\n");
    assert!(sim.closed(c));
    assert_eq!(sim.core.read_budget(sim.now, c), 0);
}

#[test]
fn an_idle_session_is_closed_and_relays_ignore_the_line_idle_timeout() {
    let mut sim = Sim::new(Config {
        idle_timeout: Duration::from_secs(5),
        relay_idle_timeout: Duration::from_mins(1),
        ..config()
    });
    let (a, b) = sim.pair("10.0.0.1:1", "10.0.0.2:1", TOKEN);
    let w = sim.open("10.0.0.3:1");
    sim.send(w, format!("RELAY {}\r\n", token(9)).as_bytes());
    sim.advance(Duration::from_secs(20));
    assert!(
        !sim.closed(a) && !sim.closed(w),
        "not subject to the 5 s line idle timeout"
    );
    sim.send(b, b"x");
    sim.advance(Duration::from_secs(59));
    assert!(!sim.closed(a), "a byte 59 s ago keeps it alive");
    sim.advance(Duration::from_secs(2));
    assert!(sim.closed(a) && sim.closed(b));
    assert_eq!(
        sim.take(a),
        b"x",
        "no error text is injected into a raw pipe"
    );
    assert_eq!(sim.core.stats().relay_active, 0);
    assert_eq!(sim.core.stats().open, 0);
}

#[test]
fn eof_is_forwarded_after_the_data_and_the_other_direction_stays_open() {
    let mut sim = Sim::new(config());
    let (a, b) = sim.pair("10.0.0.1:1", "10.0.0.2:1", TOKEN);
    sim.stall(b, true);
    sim.send(a, b"last words");
    sim.send_eof(a);
    assert!(!sim.client(b).shut, "the FIN waits behind the data");
    sim.stall(b, false);
    assert_eq!(sim.take(b), b"last words");
    assert!(sim.client(b).shut);
    assert!(!sim.client(a).shut && !sim.closed(a));
    // Half-close: b can still answer.
    sim.send(b, b"reply");
    assert_eq!(sim.take(a), b"reply");
    sim.send_eof(b);
    assert!(sim.client(a).shut);
    assert!(sim.closed(a) && sim.closed(b));
    assert_eq!(sim.core.stats().relay_active, 0);
}

#[test]
fn a_reader_that_stalls_pauses_its_partner_and_memory_stays_bounded() {
    let cap = 64 * 1024;
    let mut sim = Sim::new(Config {
        relay_buffer_bytes: cap,
        ..config()
    });
    let (a, b) = sim.pair("10.0.0.1:1", "10.0.0.2:1", TOKEN);
    sim.stall(b, true);
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    sim.send(a, &data);
    let stats = sim.core.stats();
    assert_eq!(stats.relay_queued_bytes, cap, "queue fills to the cap");
    assert!(stats.relay_queued_peak <= cap + 64);
    assert_eq!(
        sim.clients[&a].inbound.len(),
        data.len() - cap,
        "the rest stays with the sender (its kernel buffer): it stalls, nothing is dropped"
    );
    // The other direction still works while this one is stalled.
    sim.send(b, b"ping");
    assert_eq!(sim.take(a), b"ping");
    sim.stall(b, false);
    assert_eq!(sim.take(b), data, "all of it, in order");
    assert_eq!(sim.core.stats().relay_queued_bytes, 0);
    assert!(sim.core.stats().relay_queued_peak <= cap + 64);
}

#[test]
fn a_failed_side_drops_its_queue_forwards_the_rest_and_lingers_at_most_5s() {
    let mut sim = Sim::new(config());
    let (a, b) = sim.pair("10.0.0.1:1", "10.0.0.2:1", TOKEN);
    sim.stall(a, true);
    sim.stall(b, true);
    sim.send(b, b"for a, never delivered");
    sim.send(a, b"for b");
    sim.fail(a);
    assert_eq!(sim.core.stats().relay_queued_bytes, 5);
    sim.stall(b, false);
    assert_eq!(sim.take(b), b"for b");
    assert!(sim.client(b).shut, "b sees EOF after a's bytes");
    // b keeps sending: read and dropped, until the linger ends the session.
    sim.send(b, b"into the void");
    assert!(!sim.closed(b));
    sim.advance(Duration::from_secs(6));
    assert!(sim.closed(a) && sim.closed(b));
    assert_eq!(sim.core.stats().relay_queued_bytes, 0);

    // If the survivor closes promptly, the session ends at once.
    let (c, d) = sim.pair("10.0.0.1:2", "10.0.0.2:2", &token(1));
    sim.fail(d);
    assert!(sim.client(c).shut);
    sim.send_eof(c);
    assert!(sim.closed(c) && sim.closed(d));
}

#[test]
fn the_rate_limit_pauses_reads_and_never_drops() {
    let rate = 100_000;
    let mut sim = Sim::new(Config {
        relay_rate: Some(rate),
        ..config()
    });
    let (a, b) = sim.pair("10.0.0.1:1", "10.0.0.2:1", TOKEN);
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let start = sim.now;
    sim.send(a, &data);
    let burst = MIN_RELAY_BURST_BYTES.max(rate / 4);
    assert_eq!(sim.take(b).len() as u64, burst, "the first burst");
    let mut got = Vec::new();
    let mut done_at = None;
    for _ in 0..200 {
        sim.advance(Duration::from_millis(100));
        got.extend(sim.take(b));
        if got.len() as u64 + burst == data.len() as u64 {
            done_at.get_or_insert(sim.now);
        }
    }
    let took = done_at.unwrap().duration_since(start).as_secs_f64();
    let ideal = (data.len() as u64 - burst) as f64 / rate as f64;
    assert!(
        took >= ideal - 0.01 && took <= ideal + 0.2,
        "{took} s for ideal {ideal} s"
    );
    // The other direction has its own bucket.
    sim.send(b, &[1u8; 1000]);
    assert_eq!(sim.take(a).len(), 1000);
}

#[test]
fn shutdown_ends_sessions_and_tells_waiting_clients() {
    let mut sim = Sim::new(config());
    let (a, b) = sim.pair("10.0.0.1:1", "10.0.0.2:1", TOKEN);
    let w = sim.open("10.0.0.3:1");
    sim.send(w, format!("RELAY {}\r\n", token(1)).as_bytes());
    sim.take(w);
    sim.core.handle_shutdown(sim.now);
    sim.drain();
    assert_eq!(sim.take_str(w), "ERROR relay: server shutting down\r\n");
    assert!(sim.closed(a) && sim.closed(b) && sim.closed(w));
    let stats = sim.core.stats();
    assert_eq!(
        (stats.open, stats.relay_active, stats.relay_waiting),
        (0, 0, 0)
    );
}

#[test]
fn error_texts_name_their_values() {
    assert_eq!(
        RelayError::WaitTimeout {
            waited: Duration::from_millis(300)
        }
        .to_string(),
        "nobody joined within 300ms"
    );
    assert_eq!(
        RelayError::TooManyFromIp {
            ip: "::1".parse().unwrap(),
            limit: 8
        }
        .to_string(),
        "too many relays from ::1 (limit 8)"
    );
}

// ---- TokenBucket ----

#[test]
fn bucket_starts_full_and_refills_at_the_rate_up_to_the_burst() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(1_000, 500, t0);
    assert_eq!(b.available(t0), 500);
    b.take(500);
    assert_eq!(b.available(t0), 0);
    assert_eq!(b.available(t0 + Duration::from_millis(1)), 1);
    assert_eq!(b.available(t0 + Duration::from_millis(250)), 250);
    assert_eq!(b.available(t0 + Duration::from_secs(10)), 500, "capped");
    b.take(10_000);
    assert_eq!(
        b.available(t0 + Duration::from_secs(10)),
        0,
        "take saturates"
    );
}

#[test]
fn bucket_keeps_fractions_of_a_byte() {
    // 3 bytes/s polled every millisecond: each poll earns 0.003 bytes, which must add up.
    let t0 = Instant::now();
    let mut b = TokenBucket::new(3, 100, t0);
    b.take(100);
    for ms in 1..=1000 {
        b.available(t0 + Duration::from_millis(ms));
    }
    // (Rounding the time spent up may cost a nanosecond per refill: 3 bytes by 1.001 s.)
    assert_eq!(b.available(t0 + Duration::from_millis(1001)), 3);
}

#[test]
fn bucket_ready_at_is_exact() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(1_000_000, 64 * 1024, t0);
    b.take(64 * 1024);
    let at = b.ready_at(16 * 1024);
    assert_eq!(at, t0 + Duration::from_micros(16_384));
    assert_eq!(
        b.available(at.checked_sub(Duration::from_micros(1)).unwrap()),
        16 * 1024 - 1
    );
    assert_eq!(b.available(at), 16 * 1024);
    assert_eq!(b.ready_at(10), at, "already there: no wait");
    assert_eq!(
        b.ready_at(u64::MAX),
        t0 + Duration::from_micros(65_536),
        "capped at burst"
    );
    // Huge rates and long gaps do not overflow.
    let mut fast = TokenBucket::new(u64::MAX, u64::MAX, t0);
    fast.take(u64::MAX);
    assert_eq!(
        fast.available(t0 + Duration::from_hours(24 * 365)),
        u64::MAX
    );
    let zero = TokenBucket::new(0, 0, t0);
    assert_eq!((zero.rate(), zero.burst()), (1, 1), "raised to 1");
}

proptest! {
    /// Whatever the polling pattern, a bucket grants at most `burst + rate * elapsed` bytes;
    /// and a greedy taker whose polls never let the bucket fill loses nothing to rounding
    /// beyond a byte plus a nanosecond's worth per poll.
    #[test]
    fn bucket_grants_exactly_the_rate(
        rate in 1u64..10_000_000,
        burst in 1u64..1_000_000,
        steps in proptest::collection::vec(0u64..50_000_000, 1..200),
    ) {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate, burst, t0);
        let mut now = t0;
        let mut granted = b.available(now);
        b.take(granted);
        let mut capped = false;
        for &step in &steps {
            now += Duration::from_nanos(step);
            capped |= u128::from(rate) * u128::from(step) / 1_000_000_000 + 1 >= u128::from(burst);
            let got = b.available(now);
            granted += got;
            b.take(got);
        }
        let elapsed = now.duration_since(t0).as_nanos();
        let earned = u128::from(rate) * elapsed / 1_000_000_000;
        prop_assert!(u128::from(granted) <= u128::from(burst) + earned);
        if !capped {
            let slack = 1 + (steps.len() as u128 * u128::from(rate)).div_ceil(1_000_000_000);
            prop_assert!(u128::from(granted) + slack >= u128::from(burst) + earned);
        }
    }
}
