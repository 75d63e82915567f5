//! The forwarding-check server's request handling (`forwarding_check::core::Core`): request
//! heads from bytes (any split), routing, limits, dial-back results.
//!
//! The input is a `p2p_fuzz::Script` of connection events from four peers (IPv4, IPv6 and an
//! IPv4-mapped IPv6 address). The property that matters: **every dial-back goes to the
//! observed IP of the connection whose request caused it**, never to an address the request
//! names, and never to port 0. Also: every response is one well-formed HTTP response, and the
//! number of dial-backs in flight stays within the configured cap.
//! `Other { kind: 0 }` reports a result for the oldest dial-back in flight.

#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use forwarding_check::Config;
use forwarding_check::core::{Action, CheckId, ConnId, Core, DialOutcome};
use libfuzzer_sys::fuzz_target;
use p2p_fuzz::{Script, Step, assert_http_response, trace};

const SLOTS: usize = 4;

struct Client {
    id: ConnId,
    ip: IpAddr,
    received: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let config = Config {
        connect_timeout: Duration::from_millis(500),
        checks_per_minute: 10,
        check_burst: 3,
        max_concurrent_checks: 2,
        max_connections: 3,
        max_connections_per_ip: 2,
        idle_timeout: Duration::from_secs(2),
        max_head_bytes: 512,
        max_tracked_ips: 2,
    };
    let peers: [SocketAddr; SLOTS] = [
        "198.51.100.7:40001"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
        "198.51.100.7:40002"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
        "[2001:db8::1]:40003"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
        "[::ffff:203.0.113.5]:40004"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    ];
    let mut now = Instant::now();
    let mut core = Core::new(config.clone(), now);
    let mut slots: [Option<Client>; SLOTS] = [None, None, None, None];
    let mut dials: Vec<(CheckId, SocketAddr)> = Vec::new();
    for step in Script::new(data) {
        // The connection whose input this step is (dial-backs may only go to its IP).
        let mut cause: Option<IpAddr> = None;
        match step {
            Step::Open { peer } => {
                let slot = usize::from(peer) % SLOTS;
                if slots[slot].is_none() {
                    match core.handle_open(now, peers[slot]) {
                        Ok(id) => {
                            slots[slot] = Some(Client {
                                id,
                                ip: peers[slot].ip().to_canonical(),
                                received: Vec::new(),
                            });
                        }
                        Err(refusal) => {
                            assert_http_response(&refusal.response().render());
                        }
                    }
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
                    let pending = core.pending_output(c.id).to_vec();
                    c.received.extend_from_slice(&pending);
                    core.handle_written(now, c.id, pending.len());
                }
            }
            Step::Advance { millis } => {
                now += Duration::from_millis(u64::from(millis));
                core.handle_timeout(now);
            }
            Step::Other { arg, .. } => {
                if !dials.is_empty() {
                    let (check, _) = dials.remove(0);
                    let outcome = match arg % 5 {
                        0 => DialOutcome::Connected,
                        1 => DialOutcome::Refused,
                        2 => DialOutcome::TimedOut,
                        3 => DialOutcome::Unreachable("no route".into()),
                        _ => DialOutcome::LocalError("out of sockets".into()),
                    };
                    core.handle_dial_result(now, check, outcome);
                }
            }
        }
        while let Some(action) = core.poll_action() {
            match action {
                Action::Flush(_) | Action::ShutdownWrite(_) => {}
                Action::Dial { check, addr } => {
                    assert_eq!(
                        Some(addr.ip()),
                        cause,
                        "dial-back to {addr} not caused by a request from that IP"
                    );
                    assert_ne!(addr.port(), 0, "dial-back to port 0");
                    trace(&format!("dial {addr}"));
                    dials.push((check, addr));
                }
                Action::CancelDial(check) => dials.retain(|(c, _)| *c != check),
                Action::Close(id) => {
                    if let Some(slot) = slots
                        .iter()
                        .position(|c| c.as_ref().is_some_and(|c| c.id == id))
                    {
                        if let Some(c) = slots[slot].take() {
                            let mut all = c.received;
                            all.extend_from_slice(core.pending_output(id));
                            if !all.is_empty() {
                                trace(&String::from_utf8_lossy(&all));
                                assert_http_response(&all);
                            }
                        }
                    }
                    core.handle_closed(id);
                }
            }
        }
        assert!(core.stats().checks_in_flight <= config.max_concurrent_checks);
        for c in slots.iter().flatten() {
            let pending = core.pending_output(c.id);
            assert!(pending.len() <= 4096, "{} bytes queued", pending.len());
        }
    }
});
