//! Signed registration in virtual time: the flow with a real key, every refusal (each with
//! its own `ERROR` and counter), the per-key and per-IP limits, a secret refused for a key's
//! mailbox, a key claiming a squatted name, and the owner persisted.

use super::*;
use crate::core::keys::reason;
use wire::key::{PublicKey, SigningKey};
use wire::mailbox::Request;
use wire::overlay::Nonce;
use wire::signal::{RegisterChallenge, RegisterProof};

fn secret(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

impl Harness {
    /// Asks for a challenge on `id`; returns it.
    fn challenge(&mut self, id: ConnId) -> RegisterChallenge {
        let reply = self.ask(id, "CHALLENGE");
        assert_eq!(reply.len(), 1, "{reply:?}");
        reply[0].parse().unwrap()
    }

    /// Signs `challenge` with `key` and sends the proof; returns the reply lines.
    fn prove(
        &mut self,
        id: ConnId,
        key: &SigningKey,
        challenge: &RegisterChallenge,
    ) -> Vec<String> {
        let proof = RegisterProof::sign(key, challenge);
        self.ask(id, &Request::RegisterKey(proof).to_string())
    }
}

fn refusals(h: &Harness) -> [u64; KEY_REFUSALS.len()] {
    h.core.stats().key_refusals
}

#[test]
fn a_key_registers_its_mailbox_and_uses_it_like_a_secret_owner() {
    let mut h = Harness::with_persist(config(), true);
    let alice = secret(1);
    let name = PublicKey::of(&alice).mailbox_name();
    let c = h.open("10.0.0.2:5000");
    let challenge = h.challenge(c);
    assert_eq!(challenge.server, LOCAL, "named after the address dialed");
    assert_eq!(
        h.prove(c, &alice, &challenge),
        [format!("OK REGISTERED {name} NEW")]
    );
    assert_eq!(h.ask(c, "SUBSCRIBE"), ["OK SUBSCRIBED 0"]);
    let anon = h.open("10.0.0.3:5000");
    assert_eq!(h.ask(anon, &format!("PUT {name} hi")), ["OK PUT 1"]);
    assert_eq!(h.take_lines(c), ["MSG 1 - hi"]);
    // A message from the key's connection carries the key's mailbox as its sender.
    let bob = h.owner("10.0.0.4:1", "bob");
    assert_eq!(h.ask(c, "PUT bob from a key"), ["OK PUT 2"]);
    assert_eq!(
        h.ask(bob, "LIST"),
        [format!("MSG 2 {name} from a key"), "OK LIST 1".into()]
    );
    // Again on a new connection, with a new challenge: EXISTING.
    let again = h.open("10.0.0.2:5001");
    let challenge = h.challenge(again);
    assert_eq!(
        h.prove(again, &alice, &challenge),
        [format!("OK REGISTERED {name} EXISTING")]
    );
    let stats = h.core.stats();
    assert_eq!(stats.registrations, [1, 2]);
    assert_eq!(stats.line_requests[1..3], [2, 2], "CHALLENGE, REGISTER_KEY");
    // Persisted as a key owner, no secret anywhere.
    let stored = h.store.iter().find_map(|op| match op {
        StoreOp::PutMailbox(m) if m.node_id == name => Some(m.owner),
        _ => None,
    });
    assert_eq!(stored, Some(Owner::Key(PublicKey::of(&alice))));
}

#[test]
fn every_refusal_says_what_was_wrong() {
    let mut h = Harness::new(Config {
        name: Some("mailbox.example.net:8090".into()),
        ..config()
    });
    let (alice, mallory) = (secret(1), secret(2));
    let alice_key = PublicKey::of(&alice);
    let c = h.open("10.0.0.2:5000");

    // No challenge asked.
    let proof = RegisterProof::sign(
        &alice,
        &RegisterChallenge {
            server: "mailbox.example.net:8090".into(),
            nonce: Nonce([1; 32]),
        },
    );
    let reply = h.ask(c, &Request::RegisterKey(proof).to_string());
    assert!(
        reply[0].starts_with("ERROR REGISTER_KEY: no CHALLENGE to answer"),
        "{reply:?}"
    );

    // Another challenge (an earlier one of this connection: the new one replaced it).
    let first = h.challenge(c);
    assert_eq!(
        first.server, "mailbox.example.net:8090",
        "the configured name"
    );
    let _second = h.challenge(c);
    let reply = h.prove(c, &alice, &first);
    assert!(
        reply[0].contains("does not answer this connection's challenge"),
        "{reply:?}"
    );
    assert!(
        reply[0].contains("another challenge or another server name"),
        "{reply:?}"
    );

    // Another server name, the right nonce.
    let mut other_name = h.challenge(c);
    other_name.server = "other.example.net:8090".into();
    let reply = h.prove(c, &alice, &other_name);
    assert!(
        reply[0].contains("does not answer this connection's challenge"),
        "{reply:?}"
    );

    // A forged key: alice's key named, mallory's signature.
    let challenge = h.challenge(c);
    let forged = RegisterProof {
        key: alice_key,
        signature: RegisterProof::sign(&mallory, &challenge).signature,
    };
    let reply = h.ask(c, &Request::RegisterKey(forged).to_string());
    assert!(
        reply[0].contains(&format!("the signature by {alice_key} does not answer")),
        "{reply:?}"
    );

    // Right at last; then the same proof again, here and on another connection: a replay.
    let challenge = h.challenge(c);
    let proof = Request::RegisterKey(RegisterProof::sign(&alice, &challenge)).to_string();
    assert!(h.ask(c, &proof)[0].starts_with("OK REGISTERED "));
    for conn in [c, h.open("10.0.0.9:1")] {
        let reply = h.ask(conn, &proof);
        assert!(
            reply[0].starts_with("ERROR REGISTER_KEY: replayed proof"),
            "{reply:?}"
        );
    }
    // Malformed.
    let reply = h.ask(c, "REGISTER_KEY not-a-key sig");
    assert!(reply[0].starts_with("ERROR REGISTER_KEY: "), "{reply:?}");

    let r = refusals(&h);
    assert_eq!(r[reason::NO_CHALLENGE], 1);
    assert_eq!(r[reason::BAD_PROOF], 3);
    assert_eq!(r[reason::REPLAYED], 2);
    assert_eq!(r[reason::MALFORMED], 1);
    assert_eq!(h.core.stats().registrations, [0, 1]);
}

#[test]
fn failed_proofs_spend_the_ip_budget_and_registrations_the_key_budget() {
    let mut h = Harness::new(Config {
        register_burst_per_ip: 3,
        register_rate_per_ip: 0.0,
        register_burst_per_key: 2,
        register_rate_per_key: 0.0,
        ..config()
    });
    let alice = secret(1);
    // Per key: the first registration (new: one IP token), then one more, then refused.
    for want in ["NEW", "EXISTING"] {
        let c = h.open("10.0.0.2:1");
        let challenge = h.challenge(c);
        assert!(h.prove(c, &alice, &challenge)[0].ends_with(want));
    }
    let c = h.open("10.0.0.3:1");
    let challenge = h.challenge(c);
    let reply = h.prove(c, &alice, &challenge);
    assert!(
        reply[0].starts_with(&format!(
            "ERROR REGISTER_KEY: too many registrations by key {}",
            PublicKey::of(&alice)
        )),
        "{reply:?}"
    );
    // Per IP: 10.0.0.2 has 2 tokens left; two bad proofs spend them, then even a good
    // proof from that IP waits.
    let c = h.open("10.0.0.2:2");
    for _ in 0..2 {
        let mut challenge = h.challenge(c);
        challenge.server.push('x');
        assert!(h.prove(c, &secret(3), &challenge)[0].contains("does not answer"));
    }
    let challenge = h.challenge(c);
    let reply = h.prove(c, &secret(3), &challenge);
    assert!(
        reply[0].starts_with(
            "ERROR REGISTER_KEY: too many registrations or failed proofs from 10.0.0.2"
        ),
        "{reply:?}"
    );
    let r = refusals(&h);
    assert_eq!((r[reason::RATE_KEY], r[reason::RATE_IP]), (1, 1));
}

#[test]
fn a_secret_never_opens_a_keys_mailbox_and_a_key_claims_a_squatted_name() {
    let mut h = Harness::new(config());
    let alice = secret(1);
    let name = PublicKey::of(&alice).mailbox_name();
    // Mallory squats alice's name with a secret and subscribes.
    let squatter = h.owner("10.0.0.6:1", name.as_str());
    assert_eq!(h.ask(squatter, "SUBSCRIBE"), ["OK SUBSCRIBED 0"]);
    // Alice's key claims it: the squatter loses it.
    let c = h.open("10.0.0.2:1");
    let challenge = h.challenge(c);
    assert_eq!(
        h.prove(c, &alice, &challenge),
        [format!("OK REGISTERED {name} EXISTING")]
    );
    let told = h.take_lines(squatter);
    assert!(told[0].contains("was claimed by its key"), "{told:?}");
    assert_eq!(
        h.ask(squatter, "LIST"),
        ["ERROR LIST: this connection has not proven a mailbox (REGISTER first)"]
    );
    // The secret no longer opens it, on the line protocol or over HTTP.
    let again = h.open("10.0.0.6:2");
    let reply = h.ask(again, &format!("REGISTER {name} s3cret"));
    assert!(
        reply[0].contains("belongs to a key: open it with CHALLENGE and REGISTER_KEY"),
        "{reply:?}"
    );
    let (status, _) = h.http(
        "10.0.0.6:3",
        &format!("/dht_msg.php?call=list&node_id={name}&password=s3cret"),
    );
    assert_eq!(status, 403);
    assert_eq!(refusals(&h)[reason::SECRET_FOR_KEY], 2);
    // Messages now reach alice.
    assert_eq!(h.ask(c, "SUBSCRIBE"), ["OK SUBSCRIBED 0"]);
    let anon = h.open("10.0.0.3:1");
    assert_eq!(h.ask(anon, &format!("PUT {name} for alice")), ["OK PUT 1"]);
    assert_eq!(h.take_lines(c), ["MSG 1 - for alice"]);
    assert!(h.take_lines(squatter).is_empty());
}

#[test]
fn key_owners_survive_a_restore() {
    let key = PublicKey::of(&secret(1));
    let record = MailboxRecord {
        node_id: key.mailbox_name(),
        owner: Owner::Key(key),
        last_seen_unix_ms: 0,
        network_id: "default".into(),
        ip: None,
        port: 0,
    };
    assert_eq!(
        Owner::from_stored(&record.owner.to_stored()),
        Ok(record.owner)
    );
    assert_eq!(Owner::from_stored(&[9; 32]), Ok(Owner::Secret([9; 32])));
    assert!(
        Owner::from_stored(&[b'K'; 5])
            .unwrap_err()
            .contains("not 33")
    );
    assert!(Owner::from_stored(&[1; 7]).unwrap_err().contains("7 bytes"));
}
