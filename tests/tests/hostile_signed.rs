//! The hostile-peer suite, signed requests (issue 16): an attacker posts `REVERSE3` requests
//! to a node's mailbox that are forged, wrongly signed (another key than the one in their
//! UNL), replayed, stale, for another node or with a tampered UNL, plus genuine ones by its
//! own key that name a third party's address. The node refuses each with the check that
//! failed (a log line and a counter), acts on the genuine ones only within the per-key limit,
//! and the third party sees nothing but a handshake that expects the attacker's key: no line
//! in clear. A bystander's line exchange with the node stays served throughout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::hostile::signed::signed_request_attacks;
use integration_tests::hostile::{LineClient, lo, third_party, wait_for};
use node::core::{Event, RequestCheck};
use node::identity::Identity;
use node::secure::NOISE_PREAMBLE;
use node::{Config, Net, Role};

/// Rounds of attacks (7 requests each).
const ROUNDS: u8 = 20;

#[test]
fn forged_wrongly_signed_and_replayed_requests_are_refused_and_a_third_party_sees_no_line() {
    let mailbox =
        dht_msg::RunningServer::start("127.0.0.1:0".parse().unwrap(), dht_msg::Config::default())
            .unwrap();
    let mut config = Config::new()
        .with_bind(lo(1))
        .with_node_type(Role::Passive)
        .with_dht_msg(mailbox.addr().to_string())
        .with_identity(Identity::from_secret_bytes(&[1; 32]));
    // A burst of 1 per sender, 5 in all a minute.
    config.max_reverse_per_minute = 5;
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let mut net = Net::new(config).unwrap();
    net.start().unwrap();
    let victim_id = net.node_id();
    let node_addr = net.local_addr().unwrap();
    assert!(
        net.poll_until(Duration::from_secs(5), |n| n.mailbox_ready())
            .unwrap()
    );
    let node = {
        let (stop, events) = (Arc::clone(&stop), Arc::clone(&events));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                net.poll(Some(Duration::from_millis(5))).unwrap();
                for con in &mut net {
                    let lines: Vec<String> = con.lines().collect();
                    for line in lines {
                        let _ = con.send_line(&format!("echo: {line}"));
                    }
                }
                let new: Vec<Event> = net.events().collect();
                events.lock().unwrap().extend(new);
            }
            net.stop();
        })
    };
    // The third party: records the first bytes of every connection made to it.
    let (third_addr, seen) = third_party(lo(5));
    // A bystander, a plain-text peer, keeps talking to the node.
    let mut bystander = LineClient::connect(lo(3), node_addr).unwrap();
    let mallory = Identity::from_secret_bytes(&[66; 32]);
    let alice = Identity::from_secret_bytes(&[2; 32]);
    let mut attacker = LineClient::connect(lo(10), mailbox.addr()).unwrap();
    let mut expected: HashMap<&'static str, Vec<RequestCheck>> = HashMap::new();
    let mut posted = 0;
    for round in 0..ROUNDS {
        for attack in signed_request_attacks(victim_id, third_addr, &mallory, &alice, round) {
            let reply = attacker
                .ask(&format!("PUT {} {}", victim_id.mailbox_id(), attack.body))
                .unwrap();
            assert!(reply.starts_with("OK PUT "), "{reply}");
            posted += 1;
            expected.entry(attack.label).or_default().push(attack.check);
        }
        bystander.send(&format!("still there {round}")).unwrap();
        let want = format!("echo: still there {round}");
        while bystander.recv().unwrap() != want {}
    }
    let counted = || {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::ReverseRequested { .. }))
            .count()
    };
    assert!(wait_for(Duration::from_secs(10), || counted() >= posted));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    node.join().unwrap();
    let checks: Vec<(RequestCheck, bool, Option<String>)> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::ReverseRequested {
                check,
                signed,
                refused,
                ..
            } => Some((*check, *signed, refused.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(checks.len(), posted);
    assert!(checks.iter().all(|(_, signed, _)| *signed));
    let count = |c: RequestCheck| checks.iter().filter(|(k, _, _)| *k == c).count();
    let rounds = usize::from(ROUNDS);
    // Every spoiled request refused for what it is.
    assert_eq!(count(RequestCheck::Forged), 3 * rounds, "{checks:?}");
    assert_eq!(count(RequestCheck::Stale), rounds);
    assert_eq!(count(RequestCheck::NotForUs), rounds);
    assert_eq!(count(RequestCheck::Replayed), rounds);
    // mallory's genuine requests: her burst (1), then the limit.
    assert_eq!(count(RequestCheck::Accepted), 1, "{checks:?}");
    assert_eq!(count(RequestCheck::RateLimited), rounds - 1);
    // The third party: one dial, which began our handshake (expecting mallory's key): no
    // line in clear, no IAM.
    let dials = seen.lock().unwrap().clone();
    assert_eq!(dials.len(), 1, "{dials:?}");
    assert!(dials[0].starts_with(&NOISE_PREAMBLE), "{:?}", dials[0]);
    assert!(
        !dials[0].windows(5).any(|w| w == b"P2P/1"),
        "{:?}",
        dials[0]
    );
    println!(
        "HOSTILE node / signed requests ({posted} posts: forged, wrongly signed, tampered, stale, \
         misaddressed, replayed, genuine to a third address): {} forged, {} stale, {} for \
         another node, {} replayed, {} over the limit refused; 1 acted on; the third address \
         got 1 handshake and no line in clear; the bystander was served every round",
        count(RequestCheck::Forged),
        count(RequestCheck::Stale),
        count(RequestCheck::NotForUs),
        count(RequestCheck::Replayed),
        count(RequestCheck::RateLimited),
    );
}
