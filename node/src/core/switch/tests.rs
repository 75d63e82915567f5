//! The path switch in virtual time: two cores joined by a relayed stream, then a direct one;
//! side 0 plays the side that asked for the connect (it moves the session when the direct
//! path's `IAM` arrives, as `upgrade.rs` does), side 1 follows its `SWITCH`; a small driver
//! here carries out `SwitchPath` as `net/switch.rs` does (the session's id
//! takes the new stream, the old one goes on under a new id, a `SWITCH <lines written>` line
//! on each), and streams deliver their lines in order, interleaved by a seeded schedule.
//! Numbered lines flow both ways throughout; every one must arrive once, in order.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::super::{ConnId, Core, CoreConfig, Direction, Event, Output};
use crate::core::tests::addr;
use wire::overlay::Control;
use wire::rendezvous::NodeType;

/// One TCP stream between the two cores: lines in flight each way, and whether each side
/// closed.
#[derive(Default)]
struct Stream {
    /// In flight towards side 0 and side 1.
    flight: [VecDeque<String>; 2],
    /// Side `i` closed (an EOF follows its last line).
    closed: [bool; 2],
    /// Side `i` saw the EOF.
    eof_seen: [bool; 2],
}

struct Side {
    core: Core,
    /// The core's connection id → stream.
    map: HashMap<ConnId, usize>,
    /// Lines written per stream (as `Connection::lines_out`).
    written: HashMap<usize, u64>,
    /// Lines delivered to the application, by connection.
    delivered: HashMap<ConnId, Vec<String>>,
    next_id: u64,
    events: Vec<Event>,
}

struct Harness {
    sides: [Side; 2],
    streams: Vec<Stream>,
    now: Instant,
    rng: StdRng,
}

const RELAYED: ConnId = ConnId(1);
const DIRECT: ConnId = ConnId(2);

impl Harness {
    fn new(seed: u64) -> Harness {
        let side = |seed: u64| Side {
            core: Core::new(CoreConfig {
                seed,
                listen_port: 4000,
                node_type: NodeType::Simultaneous,
                ..CoreConfig::default()
            }),
            map: HashMap::new(),
            written: HashMap::new(),
            delivered: HashMap::new(),
            next_id: 100,
            events: Vec::new(),
        };
        let mut h = Harness {
            sides: [side(seed * 2 + 1), side(seed * 2 + 2)],
            streams: Vec::new(),
            now: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
        };
        // The relayed stream: both ends see the relay's address; marked relayed.
        h.open(RELAYED, addr("10.0.0.1:8000"), addr("10.0.0.1:8000"));
        for side in &mut h.sides {
            side.core.mark_relayed(RELAYED);
        }
        h.settle();
        h
    }

    /// Opens a stream known as `conn` on both sides.
    fn open(&mut self, conn: ConnId, a_sees: SocketAddr, b_sees: SocketAddr) {
        self.streams.push(Stream::default());
        let stream = self.streams.len() - 1;
        for (i, (seen, direction)) in [(a_sees, Direction::Outbound), (b_sees, Direction::Inbound)]
            .into_iter()
            .enumerate()
        {
            self.sides[i].map.insert(conn, stream);
            let now = self.now;
            self.sides[i].core.handle_open(now, conn, seen, direction);
            self.drain(i);
        }
    }

    /// The application of side `i` sends `line` on `conn` (as `Connection::send_line`).
    fn app_send(&mut self, i: usize, conn: ConnId, line: &str) {
        let Some(&stream) = self.sides[i].map.get(&conn) else {
            panic!("side {i} has no {conn}: events {:?}", self.sides[i].events);
        };
        self.write(i, stream, line);
    }

    fn write(&mut self, i: usize, stream: usize, line: &str) {
        assert!(!self.streams[stream].closed[i], "write on a closed stream");
        *self.sides[i].written.entry(stream).or_default() += 1;
        self.streams[stream].flight[1 - i].push_back(line.to_owned());
    }

    /// Carries out side `i`'s outputs.
    fn drain(&mut self, i: usize) {
        while let Some(out) = self.sides[i].core.poll_output() {
            match out {
                Output::Send { conn, line } => {
                    if let Some(&stream) = self.sides[i].map.get(&conn)
                        && !self.streams[stream].closed[i]
                    {
                        self.write(i, stream, &line);
                    }
                }
                Output::Deliver { conn, line } => {
                    self.sides[i].delivered.entry(conn).or_default().push(line);
                }
                Output::Close { conn, .. } => {
                    if let Some(stream) = self.sides[i].map.remove(&conn) {
                        self.streams[stream].closed[i] = true;
                    }
                }
                Output::SwitchPath { session, path } => {
                    if !self.sides[i].map.contains_key(&path) {
                        let now = self.now;
                        self.sides[i]
                            .core
                            .handle_switch_failed(now, session, "the path is gone");
                        continue;
                    }
                    let side = &mut self.sides[i];
                    let old = side.map[&session];
                    let new = side.map.remove(&path).unwrap();
                    let old_id = ConnId(side.next_id);
                    side.next_id += 1;
                    side.map.insert(old_id, old);
                    side.map.insert(session, new);
                    let marker = Control::Switch {
                        sent: side.written.get(&old).copied().unwrap_or(0),
                    }
                    .to_string();
                    self.write(i, old, &marker);
                    self.write(i, new, &marker);
                    let now = self.now;
                    self.sides[i].core.handle_switched(now, session, old_id);
                    // As `net/switch.rs`: the new stream is read at once, before the rest
                    // of the outputs are carried out.
                    for _ in 0..self.rng.random_range(0..4) {
                        let Some(line) = self.streams[new].flight[i].pop_front() else {
                            break;
                        };
                        self.deliver(i, session, &line);
                    }
                }
                Output::Event(e) => self.sides[i].events.push(e),
                _ => {}
            }
        }
    }

    /// Delivers one line (or EOF) from a random stream with something in flight. Returns
    /// false when nothing is in flight.
    fn step(&mut self) -> bool {
        let mut candidates = Vec::new();
        for (s, stream) in self.streams.iter().enumerate() {
            for to in 0..2 {
                let eof_due = stream.closed[1 - to] && !stream.eof_seen[to];
                if !stream.flight[to].is_empty() || eof_due {
                    candidates.push((s, to));
                }
            }
        }
        if candidates.is_empty() {
            return false;
        }
        let (s, to) = candidates[self.rng.random_range(0..candidates.len())];
        let conn = self.sides[to]
            .map
            .iter()
            .find_map(|(c, st)| (*st == s).then_some(*c));
        let now = self.now;
        if let Some(line) = self.streams[s].flight[to].pop_front() {
            if let Some(conn) = conn {
                self.deliver(to, conn, &line);
                // A driver reads several lines before it carries out the core's outputs.
                for _ in 0..self.rng.random_range(0..4) {
                    let Some(line) = self.streams[s].flight[to].pop_front() else {
                        break;
                    };
                    self.deliver(to, conn, &line);
                }
            }
        } else {
            {
                self.streams[s].eof_seen[to] = true;
                if let Some(conn) = conn {
                    self.sides[to].map.remove(&conn);
                    self.streams[s].closed[to] = true;
                    self.sides[to]
                        .core
                        .handle_closed(now, conn, "closed by peer");
                }
            }
        }
        self.drain(to);
        true
    }

    /// Side `to` reads `line` on `conn`; side 0 moves the session once the direct path's
    /// `IAM` came (the connect's owner).
    fn deliver(&mut self, to: usize, conn: ConnId, line: &str) {
        let now = self.now;
        let verdict = self.sides[to].core.handle_line(now, conn, line);
        if verdict == super::super::LineVerdict::Deliver
            && !self.sides[to].core.deliver_behind_queued(conn, line)
        {
            self.sides[to]
                .delivered
                .entry(conn)
                .or_default()
                .push(line.to_owned());
        }
        if to == 0 && conn == DIRECT {
            self.sides[0].core.owner_upgrade(now, DIRECT);
        }
    }

    fn settle(&mut self) {
        while self.step() {}
    }

    /// Lines the application of side `i` got on `conn` that start with `prefix`.
    fn got(&self, i: usize, conn: ConnId, prefix: &str) -> Vec<String> {
        self.sides[i]
            .delivered
            .get(&conn)
            .map(|v| {
                v.iter()
                    .filter(|l| l.starts_with(prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn numbered(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("{prefix} {n}")).collect()
}

/// Runs the upgrade with `lines` numbered lines each way, `before` of them sent before the
/// direct path opens; returns the harness when everything is delivered.
fn run(seed: u64, lines: u32, before: u32) -> Harness {
    let mut h = Harness::new(seed);
    for n in 0..lines {
        if n == before {
            h.open(DIRECT, addr("192.0.2.2:5000"), addr("198.51.100.3:6000"));
        }
        h.app_send(0, RELAYED, &format!("a->b {n}"));
        h.app_send(1, RELAYED, &format!("b->a {n}"));
        // Deliver a little of what is in flight between sends: lines on both paths at once.
        for _ in 0..h.rng.random_range(0..4) {
            h.step();
        }
    }
    h.settle();
    h
}

#[test]
fn an_upgrade_keeps_every_line_once_and_in_order_both_ways() {
    for seed in 0..50 {
        let h = run(seed, 60, 20);
        assert_eq!(
            h.got(1, RELAYED, "a->b"),
            numbered("a->b", 0..60),
            "seed {seed}"
        );
        assert_eq!(
            h.got(0, RELAYED, "b->a"),
            numbered("b->a", 0..60),
            "seed {seed}"
        );
        for side in 0..2 {
            // The session now lives on the direct stream; the relayed one is closed.
            let core = &h.sides[side].core;
            assert!(!core.is_relayed(RELAYED), "seed {seed}");
            assert_eq!(h.sides[side].map.get(&RELAYED), Some(&1), "seed {seed}");
            assert!(
                h.streams[0].closed[side],
                "seed {seed}: old path open on side {side}"
            );
            assert!(
                h.sides[side].events.iter().any(
                    |e| matches!(e, Event::PathSwitched { conn, lost: 0 } if *conn == RELAYED)
                ),
                "seed {seed}"
            );
            // No stray connection: the direct one is the session's path, not its own.
            assert!(
                !h.sides[side].delivered.contains_key(&DIRECT),
                "seed {seed}"
            );
            assert_eq!(core.connection_count(), 1, "seed {seed}");
        }
    }
}

#[test]
fn lines_sent_after_the_switch_go_on_the_direct_path() {
    let mut h = run(7, 10, 5);
    for n in 10..20 {
        h.app_send(0, RELAYED, &format!("a->b {n}"));
    }
    h.settle();
    assert_eq!(h.got(1, RELAYED, "a->b"), numbered("a->b", 0..20));
    // Nothing went on the old stream after its SWITCH.
    assert!(h.streams[0].flight.iter().all(VecDeque::is_empty));
}

#[test]
fn an_old_path_that_dies_before_its_marker_still_hands_over() {
    // Both sides have moved (side 0 when the direct path proved itself, side 1 when side 0's
    // SWITCH came there); then the relay dies with a relayed line and both old-path SWITCH
    // lines still on it. Each side counts what it got on the old path against the new path's
    // SWITCH count, reports the loss, and goes on.
    let mut h = Harness::new(3);
    h.app_send(1, RELAYED, "b->a 0");
    h.open(DIRECT, addr("192.0.2.2:5000"), addr("198.51.100.3:6000"));
    let iam = h.streams[1].flight[0].pop_front().unwrap();
    h.deliver(0, DIRECT, &iam);
    h.drain(0);
    // Side 1 reads the direct path up to side 0's SWITCH, and follows.
    while let Some(line) = h.streams[1].flight[1].pop_front() {
        let marker = line.starts_with("P2P/1 SWITCH");
        h.deliver(1, DIRECT, &line);
        h.drain(1);
        if marker {
            break;
        }
    }
    assert!(!h.sides[1].core.is_relayed(RELAYED), "side 1 followed");
    h.streams[0].flight = [VecDeque::new(), VecDeque::new()];
    h.streams[0].closed = [true, true];
    h.settle();
    h.app_send(1, RELAYED, "b->a 1");
    h.settle();
    assert_eq!(h.got(0, RELAYED, "b->a"), vec!["b->a 1".to_owned()]);
    assert!(h.sides[0].events.iter().any(
        |e| matches!(e, Event::PathSwitched { conn, lost } if *conn == RELAYED && *lost == 1)
    ));
    assert!(h.sides[1].events.iter().any(
        |e| matches!(e, Event::PathSwitched { conn, lost } if *conn == RELAYED && *lost == 0)
    ));
}

#[test]
fn a_direct_path_that_dies_before_the_move_leaves_the_session_relayed() {
    let mut h = Harness::new(5);
    h.app_send(0, RELAYED, "a->b 0");
    h.settle();
    h.open(DIRECT, addr("192.0.2.2:5000"), addr("198.51.100.3:6000"));
    // Side 0 reads side 1's IAM on the direct path (the decision to move), then the direct
    // stream dies before side 0's driver moved anything; side 1's end dies too.
    let iam = h.streams[1].flight[0].pop_front().unwrap();
    let now = h.now;
    h.deliver(0, DIRECT, &iam);
    h.streams[1] = Stream {
        closed: [true, true],
        eof_seen: [true, true],
        ..Stream::default()
    };
    for side in 0..2 {
        h.sides[side].map.remove(&DIRECT);
        h.sides[side]
            .core
            .handle_closed(now, DIRECT, "connection reset");
        h.drain(side);
    }
    for side in 0..2 {
        assert!(h.sides[side].core.is_relayed(RELAYED), "side {side}");
    }
    h.app_send(0, RELAYED, "a->b 1");
    h.app_send(1, RELAYED, "b->a 0");
    h.settle();
    assert_eq!(h.got(1, RELAYED, "a->b"), numbered("a->b", 0..2));
    assert_eq!(h.got(0, RELAYED, "b->a"), numbered("b->a", 0..1));
}

/// A second direct connection, dialed by the connect's owner like the path it moves to (the
/// eager dial and a birthday burst both reach a cone NAT's port), opened before the move or
/// while it runs: it is closed as a duplicate, each side keeps one connection (the
/// session), and a broadcast reaches the peer on the session, not on the stray one.
#[test]
fn a_second_direct_connection_is_closed_when_the_session_moves() {
    const SECOND: ConnId = ConnId(3);
    for seed in 0..40 {
        let mut h = Harness::new(seed);
        let second_first = seed % 2 == 0;
        let mut second = 0;
        if second_first {
            h.open(SECOND, addr("192.0.2.2:5001"), addr("198.51.100.3:6001"));
            second = h.streams.len() - 1;
        }
        h.open(DIRECT, addr("192.0.2.2:5000"), addr("198.51.100.3:6000"));
        for _ in 0..h.rng.random_range(0..6) {
            h.step();
        }
        if !second_first {
            h.open(SECOND, addr("192.0.2.2:5001"), addr("198.51.100.3:6001"));
            second = h.streams.len() - 1;
        }
        h.settle();
        for side in 0..2 {
            assert_eq!(
                h.sides[side].core.connection_count(),
                1,
                "seed {seed}: side {side} kept a second connection"
            );
            assert!(!h.sides[side].core.is_relayed(RELAYED), "seed {seed}");
        }
        assert!(h.streams[second].closed.iter().all(|c| *c), "seed {seed}");
        let now = h.now;
        h.sides[1].core.broadcast(now, "hello from side 1");
        h.drain(1);
        h.settle();
        assert_eq!(
            h.got(0, RELAYED, "hello from side 1"),
            vec!["hello from side 1".to_owned()],
            "seed {seed}"
        );
    }
}
