//! The rendezvous server's input handling (`rendezvous::core::Core`): framing, requests,
//! registrations, and the hole-punch messages (CANDIDATE / ACCEPT in, CHALLENGE / FIGHT out),
//! with small limits so that they are reached.
//!
//! The input is a `p2p_fuzz::Script` of connection events from five peers on four IPs
//! (`Other { kind: 0 }` is a client that stops reading; `kind: 1` resumes it). Checked after
//! every step:
//! - every line the server sends parses as a `Response`;
//! - a `FIGHT` names the observed IP of the connection whose `ACCEPT` caused it, and a
//!   `CHALLENGE` the observed IP of a connected client (never an address written in a
//!   request): a client can never make the server point a node at a third address;
//! - no client is ever queued more than the output cap.

#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use wire::rendezvous::Response;
use p2p_fuzz::{Script, Step, complete_lines, trace};
use rendezvous::Config;
use rendezvous::core::{Action, ConnId, Core};

const SLOTS: usize = 5;
/// The server's wall clock at the start (an `ACCEPT` time must be within the tolerance).
const WALL_SECS: u64 = 1_000_000_000;

struct Client {
    id: ConnId,
    ip: IpAddr,
    /// Bytes of its pending output already looked at.
    inspected: usize,
    reading: bool,
    /// The server said `RELAY OK`: from then on this connection carries raw relayed bytes.
    relayed: bool,
}

fuzz_target!(|data: &[u8]| {
    let config = Config {
        max_connections: 4,
        max_connections_per_ip: 2,
        max_registrations_per_ip: 2,
        max_candidates_per_node: 2,
        node_lifetime: Duration::from_secs(30),
        candidate_lifetime: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(3),
        max_line_bytes: 256,
        max_output_bytes: 512,
        max_bad_lines: 4,
        ntp_tolerance: Duration::from_secs(600),
        seed: Some(1),
        relay_buffer_bytes: 1024,
        ..Config::default()
    };
    let peers: [SocketAddr; SLOTS] = [
        "10.0.0.1:1001".parse().unwrap_or_else(|_| unreachable!()),
        "10.0.0.1:1002".parse().unwrap_or_else(|_| unreachable!()),
        "10.0.0.2:1003".parse().unwrap_or_else(|_| unreachable!()),
        "10.0.0.3:1004".parse().unwrap_or_else(|_| unreachable!()),
        "[2001:db8::9]:1005"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    ];
    let mut now = Instant::now();
    let mut core = Core::new(
        config.clone(),
        now,
        UNIX_EPOCH + Duration::from_secs(WALL_SECS),
    );
    let mut slots: [Option<Client>; SLOTS] = [None, None, None, None, None];
    for step in Script::new(data) {
        let mut cause: Option<IpAddr> = None;
        match step {
            Step::Open { peer } => {
                let slot = usize::from(peer) % SLOTS;
                if slots[slot].is_none()
                    && let Ok(id) = core.handle_open(now, peers[slot])
                {
                    slots[slot] = Some(Client {
                        id,
                        ip: peers[slot].ip(),
                        inspected: 0,
                        reading: true,
                        relayed: false,
                    });
                }
            }
            Step::Data { slot, bytes } => {
                if let Some(c) = &slots[usize::from(slot) % SLOTS] {
                    cause = Some(c.ip);
                    core.handle_data(now, c.id, &bytes);
                }
            }
            Step::Eof { slot } => {
                if let Some(c) = &slots[usize::from(slot) % SLOTS] {
                    core.handle_eof(now, c.id);
                }
            }
            Step::Read { slot } => {
                if let Some(c) = &mut slots[usize::from(slot) % SLOTS] {
                    c.reading = true;
                }
            }
            Step::Advance { millis } => {
                now += Duration::from_millis(u64::from(millis));
                core.handle_timeout(now);
            }
            Step::Other { kind, arg } => {
                if let Some(c) = &mut slots[usize::from(arg) % SLOTS] {
                    c.reading = kind != 0;
                }
            }
        }
        // Carry out the actions; reading clients take everything at once.
        let mut closed = Vec::new();
        while let Some(action) = core.poll_action() {
            if let Action::Close(id) = action {
                closed.push(id);
            }
        }
        for c in slots.iter_mut().flatten() {
            let pending = core.pending_output(c.id);
            if c.relayed {
                // Raw bytes from the other end of a relay, bounded by the relay's buffer.
                assert!(
                    pending.len() <= config.max_output_bytes + config.relay_buffer_bytes,
                    "{} relayed bytes queued",
                    pending.len()
                );
                if c.reading || closed.contains(&c.id) {
                    let n = pending.len();
                    core.consume_output(now, c.id, n);
                }
                continue;
            }
            assert!(
                pending.len() <= config.max_output_bytes,
                "{} bytes queued (cap {})",
                pending.len(),
                config.max_output_bytes
            );
            // Lines queued by this step: the server only ever queues whole lines.
            let (lines, used) = complete_lines(&pending[c.inspected..]);
            // After `RELAY OK` the rest is relayed bytes, whatever they are.
            let ok = lines.iter().position(|l| l == "RELAY OK");
            if ok.is_none() {
                assert_eq!(
                    used,
                    pending.len() - c.inspected,
                    "a partial line was queued"
                );
            }
            c.inspected = pending.len();
            let checked = ok.map_or(lines.len(), |i| i + 1);
            if ok.is_some() {
                c.relayed = true;
            }
            for line in lines.into_iter().take(checked) {
                let reply = line
                    .parse::<Response>()
                    .unwrap_or_else(|e| panic!("server line {line:?} does not parse: {e}"));
                trace(&line);
                match reply {
                    Response::Challenge { client_ip, .. } => {
                        assert!(
                            peers.iter().any(|p| p.ip() == client_ip),
                            "CHALLENGE names {client_ip}, which no client connected from"
                        );
                    }
                    Response::Fight { node_ip, .. } => {
                        assert_eq!(Some(node_ip), cause, "FIGHT names {node_ip}");
                    }
                    _ => {}
                }
            }
            if c.reading || closed.contains(&c.id) {
                let n = pending.len();
                core.consume_output(now, c.id, n);
                c.inspected = 0;
            }
        }
        for id in closed {
            if let Some(slot) = slots
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.id == id))
            {
                slots[slot] = None;
            }
            core.handle_closed(id);
        }
        assert!(core.stats().open <= config.max_connections);
    }
});
