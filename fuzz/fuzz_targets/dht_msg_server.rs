//! The dht-msg server's input handling (`dht_msg::core::Core`): protocol sniffing, the line
//! protocol and the PyP2P HTTP API (query parsing included) on one port, with small limits so
//! that they are reached.
//!
//! The input is a `p2p_fuzz::Script` of connection events from four peers on three IPs.
//! `Other` steps of kind 1 make the client of slot `arg & 3` answer the last `CHALLENGE` it
//! received with a real signed `REGISTER_KEY` (key number `arg >> 4`), correct or, by bit 2 of
//! `arg`, signed for another server name; kind 2 sends that client's last proof again (a
//! replay). So the fuzzer reaches signed registration, its refusals and key-owned mailboxes.
//! Checked after every step: no line-protocol client is ever queued more than the output cap;
//! every line the server sends parses as a `Reply`; every HTTP answer is one well-formed
//! response; stored bytes and messages stay within the limits.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dht_msg::Config;
use dht_msg::core::{Action, ConnId, Core};
use wire::key::SigningKey;
use wire::mailbox::{Reply, Request};
use wire::signal::{RegisterChallenge, RegisterProof};
use libfuzzer_sys::fuzz_target;
use p2p_fuzz::{Script, Step, assert_http_response, complete_lines, trace};

const SLOTS: usize = 4;

fn config() -> Config {
    Config {
        max_connections: 3,
        max_connections_per_ip: 2,
        max_message_bytes: 64,
        max_messages_per_mailbox: 4,
        max_mailbox_bytes: 200,
        max_stored_bytes: 4096,
        max_mailboxes: 3,
        message_ttl: Duration::from_secs(60),
        mailbox_ttl: Duration::from_secs(600),
        put_rate_per_ip: 2.0,
        put_burst_per_ip: 8,
        register_rate_per_ip: 1.0,
        register_burst_per_ip: 4,
        register_rate_per_key: 1.0,
        register_burst_per_key: 2,
        name: None,
        idle_timeout: Duration::from_secs(5),
        max_output_bytes: 1024,
        max_bad_lines: 4,
        max_list_wait: Duration::from_secs(2),
        data_dir: None,
        backend: None,
    }
}

struct Client {
    id: ConnId,
    received: Vec<u8>,
    checked: usize,
    /// The last `REGISTER_KEY` line this client sent.
    last_proof: Option<String>,
}

struct World {
    core: Core,
    config: Config,
    now: Instant,
    slots: [Option<Client>; SLOTS],
}

impl World {
    /// The client of `slot` answers its last `CHALLENGE` (see the module docs).
    fn prove(&mut self, slot: usize, arg: u8) {
        let Some(client) = self.slots[slot].as_mut() else {
            return;
        };
        let text = String::from_utf8_lossy(&client.received);
        let Some(mut challenge) = text
            .lines()
            .filter_map(|l| l.trim_end().parse::<RegisterChallenge>().ok())
            .last()
        else {
            return;
        };
        if arg & 4 != 0 {
            challenge.server.push_str("0");
        }
        let secret = SigningKey::from_bytes(&[1 + (arg >> 4); 32]);
        let line = format!("{}\r\n", Request::RegisterKey(RegisterProof::sign(&secret, &challenge)));
        client.last_proof = Some(line.clone());
        let id = client.id;
        self.core.handle_data(self.now, id, line.as_bytes());
    }

    /// The client of `slot` sends its last proof again.
    fn replay(&mut self, slot: usize) {
        if let Some(client) = &self.slots[slot]
            && let Some(line) = client.last_proof.clone()
        {
            self.core.handle_data(self.now, client.id, line.as_bytes());
        }
    }

    fn slot_of(&self, id: ConnId) -> Option<usize> {
        self.slots
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.id == id))
    }

    /// The client reads everything pending.
    fn read(&mut self, slot: usize) {
        let Some(client) = self.slots[slot].as_mut() else {
            return;
        };
        let pending = self.core.pending_output(client.id).to_vec();
        client.received.extend_from_slice(&pending);
        let id = client.id;
        self.core.consume_output(id, pending.len());
        self.check_lines(slot, false);
    }

    /// Every complete line-protocol line parses; a closed HTTP connection got one response.
    fn check_lines(&mut self, slot: usize, closed: bool) {
        let Some(client) = self.slots[slot].as_mut() else {
            return;
        };
        if client.received.starts_with(b"HTTP/") {
            if closed {
                trace(&String::from_utf8_lossy(&client.received));
                assert_http_response(&client.received);
            }
            return;
        }
        let (lines, used) = complete_lines(&client.received[client.checked..]);
        for line in lines {
            trace(&line);
            if let Err(e) = line.parse::<Reply>() {
                panic!("server line {line:?} does not parse: {e}");
            }
        }
        client.checked += used;
    }

    fn settle(&mut self) {
        let _ = self.core.poll_store();
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Flush(_) => {}
                Action::Close(id) => {
                    if let Some(slot) = self.slot_of(id) {
                        self.read(slot);
                        self.check_lines(slot, true);
                        self.slots[slot] = None;
                    }
                    self.core.handle_closed(id);
                }
            }
        }
        for client in self.slots.iter().flatten() {
            let pending = self.core.pending_output(client.id);
            let http = client.received.starts_with(b"HTTP/") || pending.starts_with(b"HTTP/");
            assert!(
                http || pending.len() <= self.config.max_output_bytes,
                "{} bytes queued for a line client (cap {})",
                pending.len(),
                self.config.max_output_bytes
            );
        }
        let stats = self.core.stats();
        assert!(stats.stored_bytes <= self.config.max_stored_bytes);
        assert!(stats.mailboxes <= self.config.max_mailboxes);
        assert!(stats.messages <= stats.mailboxes * self.config.max_messages_per_mailbox);
        assert!(stats.open <= self.config.max_connections);
        assert!(stats.registered <= stats.registrations.iter().sum::<u64>());
    }
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    assert_eq!(config.validate(), Ok(()));
    let now = Instant::now();
    let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = SystemTime::now;
    let peers: [SocketAddr; SLOTS] = [
        "127.0.0.2:40001".parse().unwrap_or_else(|_| unreachable!()),
        "127.0.0.2:40002".parse().unwrap_or_else(|_| unreachable!()),
        "127.0.0.3:40003".parse().unwrap_or_else(|_| unreachable!()),
        "[::1]:40004".parse().unwrap_or_else(|_| unreachable!()),
    ];
    let local: SocketAddr = "[2001:db8::2]:8090".parse().unwrap_or_else(|_| unreachable!());
    let mut world = World {
        core: Core::new(config.clone(), [7; 32], true, now, wall),
        config,
        now,
        slots: [None, None, None, None],
    };
    for step in Script::new(data) {
        match step {
            Step::Open { peer } => {
                let slot = usize::from(peer) % SLOTS;
                if world.slots[slot].is_none()
                    && let Ok(id) = world.core.handle_open(world.now, peers[slot], local)
                {
                    world.slots[slot] = Some(Client {
                        id,
                        received: Vec::new(),
                        checked: 0,
                        last_proof: None,
                    });
                }
            }
            Step::Data { slot, bytes } => {
                if let Some(c) = &world.slots[usize::from(slot) % SLOTS] {
                    world.core.handle_data(world.now, c.id, &bytes);
                }
            }
            Step::Eof { slot } => {
                if let Some(c) = &world.slots[usize::from(slot) % SLOTS] {
                    world.core.handle_eof(c.id);
                }
            }
            Step::Read { slot } => world.read(usize::from(slot) % SLOTS),
            Step::Advance { millis } => {
                world.now += Duration::from_millis(u64::from(millis));
                world.core.handle_timeout(world.now);
            }
            Step::Other { kind: 1, arg } => world.prove(usize::from(arg & 3), arg),
            Step::Other { kind: 2, arg } => world.replay(usize::from(arg & 3)),
            Step::Other { .. } => {
                let t = world.core.poll_timeout();
                if t > world.now {
                    world.now = t;
                }
                world.core.handle_timeout(world.now);
            }
        }
        world.settle();
    }
});
