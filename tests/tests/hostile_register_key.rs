//! Hostile clients against signed mailbox registration (dht-msg, in-process, real loopback
//! TCP), in the style of the hostile suite: an attacker on one IP floods proofs that name the
//! victim's key but are signed by another key (a forged key), and proofs for a challenge it
//! was never sent (a wrong challenge), while the victim on another IP registers with its real
//! key and receives a message. Every forgery is refused with an `ERROR` naming why; once the
//! attacker's IP budget is spent it is refused before any signature is checked; the victim's
//! key budget is untouched (forgeries never count against the key they name), and the victim
//! waits no longer than the suite's bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use dht_msg::{Config, RunningServer};
use integration_tests::hostile::{Attack, Latency, LineClient, lo, report};
use wire::key::{PublicKey, SigningKey};
use wire::mailbox::{KeyRegistration, RegisterStep, Reply, Request};
use wire::overlay::Nonce;
use wire::signal::{RegisterChallenge, RegisterProof};

/// The victim registers its key from 127.0.0.2 (the client state machine, as a node would).
fn register(addr: SocketAddr, name: &str, victim: &SigningKey) -> std::io::Result<()> {
    let mut c = LineClient::connect(lo(2), addr)?;
    let mut reg = KeyRegistration::new(victim, name);
    let mut line = reg.first_request().to_string();
    loop {
        let reply: Reply = c.ask(&line)?.parse().map_err(std::io::Error::other)?;
        match reg.handle_reply(&reply).map_err(std::io::Error::other)? {
            RegisterStep::Send(next) => line = next.to_string(),
            RegisterStep::Registered { .. } => return Ok(()),
        }
    }
}

#[test]
fn forged_keys_and_wrong_challenges_are_refused_and_the_victim_registers() {
    let server = RunningServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Config {
            register_burst_per_ip: 10,
            register_rate_per_ip: 1.0,
            register_burst_per_key: 20,
            ..Config::default()
        },
    )
    .unwrap();
    let addr = server.addr();
    let victim = SigningKey::from_bytes(&[11; 32]);
    let victim_key = PublicKey::of(&victim);
    let mallory = SigningKey::from_bytes(&[66; 32]);
    let name = addr.to_string();

    let register_victim = || register(addr, &name, &victim);
    let before = Latency::measure(5, &register_victim);

    // The attacker: forged keys and wrong challenges, on fresh challenges, from 127.0.0.66.
    let refusals = Arc::new(Mutex::new(Vec::<String>::new()));
    let attack = {
        let refusals = Arc::clone(&refusals);
        Attack::start(move |round| {
            let Ok(mut c) = LineClient::connect(lo(66), addr) else {
                return 0;
            };
            let Ok(challenge) = c.ask("CHALLENGE") else {
                return 0;
            };
            let challenge: RegisterChallenge = challenge.parse().unwrap();
            let proof = if round % 2 == 0 {
                // Forged: the victim's key, mallory's signature.
                RegisterProof {
                    key: victim_key,
                    signature: RegisterProof::sign(&mallory, &challenge).signature,
                }
            } else {
                // Wrong challenge: a nonce this server never sent.
                let mut nonce = [0u8; 32];
                nonce[..8].copy_from_slice(&round.to_be_bytes());
                let wrong = RegisterChallenge {
                    nonce: Nonce(nonce),
                    ..challenge
                };
                RegisterProof::sign(&mallory, &wrong)
            };
            let Ok(reply) = c.ask(&Request::RegisterKey(proof).to_string()) else {
                return 0;
            };
            assert!(
                reply.starts_with("ERROR REGISTER_KEY: "),
                "accepted: {reply}"
            );
            refusals.lock().unwrap().push(reply);
            1
        })
    };
    while attack.count() < 40 {
        std::thread::yield_now();
    }
    let during = Latency::measure(5, &register_victim);
    let forged = attack.stop();
    let refusals = refusals.lock().unwrap();
    let bad_proof = refusals
        .iter()
        .filter(|r| r.contains("does not answer this connection's challenge"))
        .count();
    let rate_limited = refusals
        .iter()
        .filter(|r| r.contains("too many registrations or failed proofs from 127.0.0.66"))
        .count();
    assert!(
        bad_proof >= 10,
        "the burst of bad proofs is checked and refused"
    );
    assert!(rate_limited > 0, "then the IP is refused before any check");
    assert_eq!(bad_proof + rate_limited, refusals.len(), "{refusals:?}");

    // The victim's mailbox works: a message reaches it.
    let mut anon = LineClient::connect(lo(3), addr).unwrap();
    let to = victim_key.mailbox_name();
    assert!(
        anon.ask(&format!("PUT {to} hello"))
            .unwrap()
            .starts_with("OK PUT ")
    );
    let stats = server.stop().unwrap();
    assert_eq!(
        stats.registrations[1], 10,
        "every victim registration succeeded"
    );
    report(
        "dht-msg",
        "forged keys and wrong challenges",
        &before,
        &during,
        &format!(
            "{forged} forged proofs: {bad_proof} checked and refused, {rate_limited} refused by \
             the IP budget"
        ),
    );
}
