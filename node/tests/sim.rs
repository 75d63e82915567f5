//! Deterministic simulation of many node cores in virtual time (no sockets, no sleeps).
//!
//! `SimNet` plays the network and the rendezvous server: dials open links after a seeded
//! random latency, lines on a link arrive in order, and rendezvous requests get `NODES` lists
//! of random other nodes. Every run with the same seed is the same run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use node::core::{ConnId, Core, CoreConfig, Direction, LineVerdict, Output, QueryReply};
use node::wire::rendezvous::{NodeEntry, NodeType, Request, Response};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const RENDEZVOUS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)), 8000);

fn addr_of(i: usize) -> SocketAddr {
    let i = u32::try_from(i).unwrap();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i + 1)), 4000)
}

#[derive(Debug)]
enum Delivery {
    Open {
        node: usize,
        conn: ConnId,
        from: SocketAddr,
        direction: Direction,
    },
    Line {
        node: usize,
        conn: ConnId,
        line: String,
    },
    Closed {
        node: usize,
        conn: ConnId,
    },
    Query {
        node: usize,
        id: node::core::QueryId,
        result: Result<QueryReply, String>,
    },
}

struct SimNet {
    t0: Instant,
    now: Instant,
    rng: StdRng,
    nodes: Vec<Core>,
    alive: Vec<bool>,
    /// (node, conn) → (peer node, peer conn).
    links: HashMap<(usize, ConnId), (usize, ConnId)>,
    /// Per directed link, the time of the last delivery (TCP keeps order).
    link_clock: HashMap<(usize, ConnId), Instant>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    pending: HashMap<usize, Delivery>,
    seq: u64,
    next_conn: u64,
    /// (node, line) → how many times delivered.
    delivered: BTreeMap<(usize, String), usize>,
    /// Control lines sent (each forward of a broadcast counts).
    sends: usize,
    /// (node, time) of each rendezvous request.
    queries: Vec<(usize, Instant, String)>,
    rendezvous_up: bool,
}

impl SimNet {
    fn new(seed: u64, n: usize, config: impl Fn(usize) -> CoreConfig) -> SimNet {
        let t0 = Instant::now();
        let nodes = (0..n)
            .map(|i| {
                let mut c = config(i);
                c.seed = seed * 1000 + i as u64;
                c.rendezvous = vec![RENDEZVOUS];
                c.listen_port = 4000;
                c.node_type = NodeType::Passive;
                Core::new(c)
            })
            .collect();
        SimNet {
            t0,
            now: t0,
            rng: StdRng::seed_from_u64(seed),
            nodes,
            alive: vec![true; n],
            links: HashMap::new(),
            link_clock: HashMap::new(),
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            seq: 0,
            next_conn: 1,
            delivered: BTreeMap::new(),
            sends: 0,
            queries: Vec::new(),
            rendezvous_up: true,
        }
    }

    fn latency(&mut self) -> Duration {
        Duration::from_micros(self.rng.random_range(500..20_000))
    }

    fn schedule(&mut self, at: Instant, d: Delivery) {
        self.seq += 1;
        let key = usize::try_from(self.seq).unwrap();
        self.pending.insert(key, d);
        self.queue.push(Reverse((at, self.seq, key)));
    }

    /// Opens a link from `a` to `b` (as if `a` dialed `b` and it connected).
    fn link(&mut self, a: usize, b: usize) {
        let ca = ConnId(self.next_conn);
        let cb = ConnId(self.next_conn + 1);
        self.next_conn += 2;
        self.links.insert((a, ca), (b, cb));
        self.links.insert((b, cb), (a, ca));
        let at = self.now + self.latency();
        self.schedule(
            at,
            Delivery::Open {
                node: a,
                conn: ca,
                from: addr_of(b),
                direction: Direction::Outbound,
            },
        );
        self.schedule(
            at,
            Delivery::Open {
                node: b,
                conn: cb,
                from: addr_of(a),
                direction: Direction::Inbound,
            },
        );
    }

    /// Drains a node's outputs into the network.
    fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].poll_output() {
            match out {
                Output::Send { conn, line } => {
                    self.sends += 1;
                    if let Some(&(peer, pconn)) = self.links.get(&(i, conn)) {
                        let at = (self.now + self.latency())
                            .max(*self.link_clock.get(&(i, conn)).unwrap_or(&self.now));
                        self.link_clock.insert((i, conn), at);
                        self.schedule(
                            at,
                            Delivery::Line {
                                node: peer,
                                conn: pconn,
                                line,
                            },
                        );
                    }
                }
                Output::Deliver { line, .. } | Output::DeliverSigned { line, .. } => {
                    *self.delivered.entry((i, line)).or_default() += 1;
                }
                Output::Close { conn, .. } => self.cut(i, conn),
                Output::Dial { addr, .. } => {
                    let target = (0..self.nodes.len()).find(|j| addr_of(*j) == addr);
                    match target {
                        Some(j) if self.alive[j] => self.link(i, j),
                        _ => {
                            let now = self.now;
                            self.nodes[i].handle_dial_failed(now, addr, "refused");
                        }
                    }
                }
                Output::Query { id, lines, .. } => {
                    self.queries.push((i, self.now, lines.join(" | ")));
                    let result = if self.rendezvous_up {
                        Ok(QueryReply {
                            local: addr_of(i),
                            line: Some(self.answer(i, &lines[0])),
                        })
                    } else {
                        Err("connection refused".to_owned())
                    };
                    let at = self.now + self.latency();
                    self.schedule(
                        at,
                        Delivery::Query {
                            node: i,
                            id,
                            result,
                        },
                    );
                }
                // No mailbox server, simultaneous nodes or relays in this simulation (the
                // punch and relay exchanges have their own virtual-time tests in the core).
                Output::Event(_)
                | Output::MailboxDial { .. }
                | Output::MailboxSend { .. }
                | Output::MailboxClose { .. }
                | Output::SessionOpen { .. }
                | Output::SessionSend { .. }
                | Output::SessionClose { .. }
                | Output::PunchDial { .. }
                | Output::CancelDials { .. }
                | Output::RelayDial { .. }
                | Output::ClockSample { .. }
                | Output::SwitchPath { .. }
                | Output::BirthdayDial { .. }
                | Output::BirthdaySpray { .. }
                | Output::CancelSpray { .. } => {}
            }
        }
    }

    /// The rendezvous, reduced to what the core asks: random alive nodes for BOOTSTRAP.
    fn answer(&mut self, asker: usize, line: &str) -> String {
        match line.parse::<Request>().unwrap() {
            Request::Bootstrap { count, .. } => {
                let others: Vec<usize> = (0..self.nodes.len())
                    .filter(|j| *j != asker && self.alive[*j])
                    .collect();
                let picked: Vec<NodeEntry> = others
                    .choose_multiple(&mut self.rng, usize::from(count))
                    .map(|j| NodeEntry {
                        node_type: NodeType::Passive,
                        addr: addr_of(*j),
                    })
                    .collect();
                Response::Nodes(picked).to_string()
            }
            _ => Response::RemoteTcp { port: 4000 }.to_string(),
        }
    }

    /// Closes the link `(i, conn)` from `i`'s side; the peer learns after a latency.
    fn cut(&mut self, i: usize, conn: ConnId) {
        if let Some((peer, pconn)) = self.links.remove(&(i, conn)) {
            self.links.remove(&(peer, pconn));
            let at = self.now + self.latency();
            self.schedule(
                at,
                Delivery::Closed {
                    node: peer,
                    conn: pconn,
                },
            );
        }
    }

    /// Kills node `i`: every link closes.
    fn kill(&mut self, i: usize) {
        self.alive[i] = false;
        let conns: Vec<ConnId> = self
            .links
            .keys()
            .filter(|(n, _)| *n == i)
            .map(|(_, c)| *c)
            .collect();
        for c in conns {
            self.cut(i, c);
        }
    }

    /// Restarts node `i` as a fresh process (new core, new id).
    fn revive(&mut self, i: usize) {
        let mut config = self.nodes[i].config().clone();
        config.seed += 1_000_000;
        self.nodes[i] = Core::new(config);
        self.alive[i] = true;
    }

    /// Runs until `until` (virtual), delivering in time order and firing timers.
    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            let next_timer = (0..self.nodes.len())
                .filter(|i| self.alive[*i])
                .filter_map(|i| self.nodes[i].poll_timeout().map(|t| (t, i)))
                .min();
            let next_delivery = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let step = match (next_delivery, next_timer) {
                (Some(dt), Some((tt, _))) if tt < dt => Some((tt, false)),
                (Some(dt), _) => Some((dt, true)),
                (None, Some((tt, _))) => Some((tt, false)),
                (None, None) => None,
            };
            let Some((at, is_delivery)) = step else { break };
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            if is_delivery {
                let Reverse((_, _, key)) = self.queue.pop().unwrap();
                let d = self.pending.remove(&key).unwrap();
                self.deliver(d);
            } else {
                let (_, i) = next_timer.unwrap();
                let now = self.now;
                self.nodes[i].handle_timeout(now);
                self.drain(i);
            }
        }
        self.now = until;
    }

    fn deliver(&mut self, d: Delivery) {
        let now = self.now;
        let i = match d {
            Delivery::Open {
                node,
                conn,
                from,
                direction,
            } => {
                if !self.alive[node] {
                    return;
                }
                self.nodes[node].handle_open(now, conn, from, direction);
                node
            }
            Delivery::Line { node, conn, line } => {
                if !self.alive[node] || !self.links.contains_key(&(node, conn)) {
                    return;
                }
                if self.nodes[node].handle_line(now, conn, &line) == LineVerdict::Deliver {
                    *self.delivered.entry((node, line)).or_default() += 1;
                }
                node
            }
            Delivery::Closed { node, conn } => {
                if !self.alive[node] {
                    return;
                }
                self.nodes[node].handle_closed(now, conn, "closed by peer");
                node
            }
            Delivery::Query { node, id, result } => {
                if !self.alive[node] {
                    return;
                }
                self.nodes[node].handle_query_done(now, id, result);
                node
            }
        };
        self.drain(i);
    }

    fn broadcast(&mut self, i: usize, line: &str) {
        let now = self.now;
        self.nodes[i].broadcast(now, line);
        self.drain(i);
    }

    /// Whether the overlay of alive nodes is connected (BFS over links).
    fn connected(&self) -> bool {
        let alive: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive[*i]).collect();
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = vec![alive[0]];
        seen[alive[0]] = true;
        while let Some(n) = stack.pop() {
            for ((a, _), (b, _)) in &self.links {
                if *a == n && !seen[*b] {
                    seen[*b] = true;
                    stack.push(*b);
                }
            }
        }
        alive.iter().all(|i| seen[*i])
    }

    fn count(&self, node: usize, line: &str) -> usize {
        self.delivered
            .get(&(node, line.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

fn overlay_config(_: usize) -> CoreConfig {
    CoreConfig {
        max_outbound: 4,
        max_inbound: 64,
        bootstrap_count: 10,
        ..CoreConfig::default()
    }
}

#[test]
fn broadcast_on_a_100_node_random_overlay_reaches_every_node_exactly_once() {
    for seed in 1..=3 {
        let mut sim = SimNet::new(seed, 100, overlay_config);
        for i in 0..100 {
            let now = sim.now;
            sim.nodes[i].bootstrap(now);
            sim.drain(i);
        }
        sim.run_for(Duration::from_secs(10));
        assert!(sim.connected(), "seed {seed}: the overlay is not connected");
        let links = sim.links.len() / 2;
        assert!(links >= 150, "seed {seed}: only {links} links");

        let sends_before = sim.sends;
        for origin in [0, 42, 99] {
            sim.broadcast(origin, &format!("hello from {origin}"));
        }
        sim.run_for(Duration::from_secs(5));
        for origin in [0, 42, 99] {
            let line = format!("hello from {origin}");
            for i in 0..100 {
                let expected = usize::from(i != origin);
                assert_eq!(
                    sim.count(i, &line),
                    expected,
                    "seed {seed}: node {i} got {line:?} {} times",
                    sim.count(i, &line)
                );
            }
        }
        // Every node forwards each broadcast once, to its other links: the flood stops at
        // the seen-cache instead of looping (3 broadcasts × at most 2 sends per link).
        let sends = sim.sends - sends_before;
        assert!(
            sends <= 3 * 2 * links,
            "seed {seed}: {sends} sends for {links} links"
        );
        assert!(sends >= 3 * 99, "seed {seed}: {sends} sends");
        println!(
            "seed {seed}: {} links, {sends} sends for 3 broadcasts to 100 nodes, t = {:?}",
            links,
            sim.now - sim.t0
        );
    }
}

#[test]
fn duplicates_and_loops_stop_at_the_seen_cache() {
    // A ring with chords: many loops. TTL is high, so only the seen-cache stops copies.
    let n = 12;
    let mut sim = SimNet::new(7, n, |_| CoreConfig {
        broadcast_ttl: 255,
        ..CoreConfig::default()
    });
    for i in 0..n {
        sim.link(i, (i + 1) % n);
        sim.link(i, (i + 5) % n);
    }
    sim.run_for(Duration::from_secs(1));
    let links = sim.links.len() / 2;
    assert_eq!(links, 2 * n);
    let before = sim.sends;
    sim.broadcast(3, "round and round");
    sim.run_for(Duration::from_secs(5));
    for i in 0..n {
        assert_eq!(
            sim.count(i, "round and round"),
            usize::from(i != 3),
            "node {i}"
        );
    }
    // The origin sends on its 4 links; every other node forwards once, on its 3 other links.
    assert_eq!(sim.sends - before, 4 + (n - 1) * 3);
    // A replayed copy (same id) arriving later is dropped too.
    let before = sim.delivered.len();
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.delivered.len(), before);
}

#[test]
fn ttl_stops_propagation() {
    // A chain 0 - 1 - 2 - ... - 9; TTL 3 reaches nodes 1, 2 and 3 only.
    let n = 10;
    let mut sim = SimNet::new(3, n, |_| CoreConfig {
        broadcast_ttl: 3,
        ..CoreConfig::default()
    });
    for i in 0..n - 1 {
        sim.link(i, i + 1);
    }
    sim.run_for(Duration::from_secs(1));
    sim.broadcast(0, "short trip");
    sim.run_for(Duration::from_secs(5));
    for i in 0..n {
        let expected = usize::from((1..=3).contains(&i));
        assert_eq!(sim.count(i, "short trip"), expected, "node {i}");
    }
}

#[test]
fn a_node_whose_peers_all_drop_bootstraps_again() {
    let mut sim = SimNet::new(11, 6, |_| CoreConfig {
        max_outbound: 5,
        rebootstrap_interval: Duration::from_hours(1),
        alone_rebootstrap_delay: Duration::from_secs(5),
        ..CoreConfig::default()
    });
    let now = sim.now;
    sim.nodes[0].bootstrap(now);
    sim.drain(0);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.nodes[0].count(Direction::Outbound), 5);
    let first = sim.queries.iter().filter(|(n, _, _)| *n == 0).count();
    assert_eq!(first, 1);

    // Every peer dies. Node 0 bootstraps again 5 s after its last bootstrap at the
    // earliest, not an hour later; while the rendezvous is down it keeps retrying.
    for i in 1..6 {
        sim.kill(i);
    }
    sim.rendezvous_up = false;
    let killed_at = sim.now;
    sim.run_for(Duration::from_secs(20));
    let retries: Vec<Duration> = sim
        .queries
        .iter()
        .filter(|(n, t, _)| *n == 0 && *t > killed_at)
        .map(|(_, t, _)| *t - killed_at)
        .collect();
    assert!(retries.len() >= 3, "retries: {retries:?}");
    assert!(retries[0] <= Duration::from_secs(4), "{retries:?}");
    for pair in retries.windows(2) {
        assert!(
            pair[1].checked_sub(pair[0]).unwrap() >= Duration::from_secs(5),
            "{retries:?}"
        );
    }

    // New nodes appear and the rendezvous is back: node 0 reconnects.
    for i in 1..6 {
        sim.revive(i);
    }
    sim.rendezvous_up = true;
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.nodes[0].count(Direction::Outbound), 5);
}
