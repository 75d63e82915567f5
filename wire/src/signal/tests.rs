use super::*;
use crate::unl::v3::{Scope, UnlAddr, UnlBody};
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000_000;
const WINDOW: Duration = Duration::from_mins(2);

fn secret(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn unl_of(secret: &SigningKey) -> UnlV3 {
    let mut body = UnlBody::new(NOW);
    body.addrs.push(UnlAddr {
        scope: Scope::Wan,
        addr: "203.0.113.9:4000".parse().unwrap(),
    });
    UnlV3::sign(body, secret).unwrap()
}

fn id(seed: u8) -> NodeId {
    PublicKey::of(&secret(seed)).node_id()
}

fn request(kind: RequestKind, ts: u64, nonce: u8) -> SignedRequest {
    let alice = secret(1);
    SignedRequest::sign(kind, unl_of(&alice), id(2), ts, Nonce([nonce; 32]), &alice).unwrap()
}

fn relay() -> RequestKind {
    RequestKind::Relay {
        relay: "198.51.100.7:8000".parse().unwrap(),
    }
}

#[test]
fn requests_round_trip_and_are_accepted_once() {
    let mut cache = ReplayCache::new(100, WINDOW);
    for (kind, nonce) in [(RequestKind::Reverse, 1), (relay(), 2)] {
        let req = request(kind, NOW, nonce);
        let text = req.to_string();
        assert!(text.starts_with(if nonce == 1 {
            "REVERSE3 unl3."
        } else {
            "RELAY3 unl3."
        }));
        let back: SignedRequest = text.parse().unwrap();
        assert_eq!(back, req);
        assert_eq!(back.kind(), kind);
        assert_eq!(back.to(), id(2));
        assert_eq!(back.timestamp_ms(), NOW);
        assert_eq!(back.nonce(), Nonce([nonce; 32]));
        assert_eq!(back.unl().key(), &PublicKey::of(&secret(1)));
        assert_eq!(back.check(&id(2), NOW + 10, &mut cache), Ok(()));
        assert_eq!(
            back.check(&id(2), NOW + 20, &mut cache),
            Err(SignalError::Replayed {
                key: PublicKey::of(&secret(1)),
                nonce: Nonce([nonce; 32])
            })
        );
    }
    assert_eq!(cache.len(), 2);
}

#[test]
fn forged_requests_are_refused() {
    let req = request(RequestKind::Reverse, NOW, 1);
    let text = req.to_string();
    // Another timestamp, nonce, recipient or relay under the same signature.
    let forged = [
        text.replace(&format!(" {NOW} "), &format!(" {} ", NOW + 1)),
        text.replace(&Nonce([1; 32]).to_string(), &Nonce([3; 32]).to_string()),
        text.replace(&id(2).mailbox_id(), &id(4).mailbox_id()),
    ];
    for bad in forged {
        assert_ne!(bad, text);
        let err = bad.parse::<SignedRequest>().unwrap_err();
        assert!(
            matches!(err, SignalError::Key(KeyError::BadSignature { .. })),
            "{bad}: {err}"
        );
    }
    let relayed = request(relay(), NOW, 1).to_string();
    let moved = relayed.replace("198.51.100.7:8000", "198.51.100.8:8000");
    assert!(matches!(
        moved.parse::<SignedRequest>(),
        Err(SignalError::Key(_))
    ));
    // Mallory signs with her key but encloses Alice's UNL: refused when signing...
    let mallory = secret(9);
    assert_eq!(
        SignedRequest::sign(
            RequestKind::Reverse,
            unl_of(&secret(1)),
            id(2),
            NOW,
            Nonce([1; 32]),
            &mallory
        ),
        Err(SignalError::WrongSigner {
            signer: PublicKey::of(&mallory),
            unl: PublicKey::of(&secret(1))
        })
    );
    // ... and on receipt: her signature spliced onto a request enclosing Alice's UNL.
    let hers = SignedRequest::sign(
        RequestKind::Reverse,
        unl_of(&mallory),
        id(2),
        NOW,
        Nonce([1; 32]),
        &mallory,
    )
    .unwrap()
    .to_string();
    let her_sig = hers.rsplit(' ').next().unwrap();
    let spliced = format!("{} {her_sig}", text.rsplit_once(' ').unwrap().0);
    assert!(matches!(
        spliced.parse::<SignedRequest>(),
        Err(SignalError::Key(KeyError::BadSignature { .. }))
    ));
    // A tampered UNL inside is refused by the UNL's own signature.
    let unl_text = req.unl().to_string();
    let mut tampered = unl_text.clone().into_bytes();
    tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
    let bad = text.replace(&unl_text, std::str::from_utf8(&tampered).unwrap());
    assert!(matches!(
        bad.parse::<SignedRequest>(),
        Err(SignalError::Unl(_))
    ));
}

#[test]
fn wrong_recipient_stale_and_future_are_refused() {
    let mut cache = ReplayCache::new(100, WINDOW);
    let req = request(RequestKind::Reverse, NOW, 1);
    assert_eq!(
        req.check(&id(3), NOW, &mut cache),
        Err(SignalError::NotForMe {
            to: id(2),
            me: id(3)
        })
    );
    assert_eq!(
        req.check(&id(2), NOW + 120_001, &mut cache),
        Err(SignalError::Stale {
            age_ms: 120_001,
            limit_ms: 120_000
        })
    );
    assert_eq!(
        req.check(&id(2), NOW - 120_001, &mut cache),
        Err(SignalError::FromFuture {
            ahead_ms: 120_001,
            limit_ms: 120_000
        })
    );
    assert!(cache.is_empty(), "refused requests are not remembered");
    assert_eq!(req.check(&id(2), NOW + 120_000, &mut cache), Ok(()));
    assert_eq!(
        SignalError::Stale {
            age_ms: 5,
            limit_ms: 1
        }
        .to_string(),
        "stale request: sent 5 ms ago (limit 1 ms)"
    );
}

#[test]
fn a_full_cache_never_accepts_a_replay() {
    let key = PublicKey::of(&secret(1));
    let mut cache = ReplayCache::new(3, WINDOW);
    for (ts, n) in [(NOW, 1), (NOW + 1, 2), (NOW + 2, 3)] {
        assert_eq!(cache.check(NOW, &key, &Nonce([n; 32]), ts), Ok(()));
    }
    // Full: an older request than everything kept cannot be told from a replay.
    assert_eq!(
        cache.check(NOW, &key, &Nonce([9; 32]), NOW - 5),
        Err(SignalError::TooOldForCache {
            timestamp_ms: NOW - 5,
            floor_ms: NOW
        })
    );
    // A newer one evicts the oldest, whose replay is then refused by the floor.
    assert_eq!(cache.check(NOW, &key, &Nonce([4; 32]), NOW + 3), Ok(()));
    assert_eq!(cache.len(), 3);
    assert!(matches!(
        cache.check(NOW, &key, &Nonce([1; 32]), NOW),
        Err(SignalError::TooOldForCache { .. })
    ));
    // Time passes: expired entries go; the floor stays below what is fresh.
    let later = NOW + 200_000;
    assert_eq!(cache.check(later, &key, &Nonce([5; 32]), later), Ok(()));
    assert_eq!(cache.len(), 1);
}

#[test]
fn registration_proofs_bind_server_nonce_and_key() {
    let challenge = RegisterChallenge {
        server: "mail.example.net:8001".into(),
        nonce: Nonce([7; 32]),
    };
    let text = challenge.to_string();
    assert!(text.starts_with("CHALLENGE mail.example.net:8001 0707"));
    assert_eq!(text.parse::<RegisterChallenge>(), Ok(challenge.clone()));
    let node = secret(1);
    let proof = RegisterProof::sign(&node, &challenge);
    let back: RegisterProof = proof.to_string().parse().unwrap();
    assert_eq!(back, proof);
    assert_eq!(
        back.verify(&challenge),
        Ok(PublicKey::of(&node).mailbox_name())
    );
    // Another nonce, another server, another key claimed: refused.
    let other_nonce = RegisterChallenge {
        nonce: Nonce([8; 32]),
        ..challenge.clone()
    };
    let other_server = RegisterChallenge {
        server: "evil.example.net:8001".into(),
        ..challenge.clone()
    };
    assert_eq!(back.verify(&other_nonce), Err(SignalError::WrongChallenge));
    assert_eq!(back.verify(&other_server), Err(SignalError::WrongChallenge));
    let claimed = RegisterProof {
        key: PublicKey::of(&secret(2)),
        ..back
    };
    assert_eq!(claimed.verify(&challenge), Err(SignalError::WrongChallenge));
    for bad in [
        "CHALLENGE",
        "CHALLENGE a b",
        "CHALLENGE sp ace 00",
        &format!("CHALLENGE {} {}", "x".repeat(262), Nonce([1; 32])),
        &format!("{text} extra"),
        "REGISTER_KEY",
        "REGISTER_KEY abc def",
        &format!("{proof} extra"),
        "HELLO",
    ] {
        let err = bad
            .parse::<RegisterChallenge>()
            .map(|_| ())
            .and(bad.parse::<RegisterProof>().map(|_| ()));
        assert!(err.is_err(), "{bad}");
    }
}

#[test]
fn malformed_requests_name_the_field() {
    let text = request(relay(), NOW, 1).to_string();
    let words: Vec<&str> = text.split(' ').collect();
    let with = |i: usize, w: &str| {
        let mut v = words.clone();
        v[i] = w;
        v.join(" ")
    };
    for (bad, field) in [
        (with(0, "RELAY4"), "REVERSE3 or RELAY3"),
        (with(2, "xyz"), "recipient node id (40 hex digits)"),
        (with(3, "+5"), "timestamp (unix milliseconds)"),
        (with(4, "00"), "nonce (64 lowercase hex digits)"),
        (with(5, "nowhere"), "relay address (ip:port)"),
        (with(6, "short"), "signature (86 base64url characters)"),
        (format!("{text} more"), "end of message (extra words)"),
    ] {
        match bad.parse::<SignedRequest>() {
            Err(SignalError::Malformed { field: f, .. }) => assert_eq!(f, field, "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert!(matches!(
        with(1, "unl3.AAAA").parse::<SignedRequest>(),
        Err(SignalError::Unl(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn signed_requests_round_trip(ts in any::<u64>(), nonce in any::<[u8; 32]>(), relay_port in any::<Option<u16>>()) {
        let alice = secret(1);
        let kind = relay_port.map_or(RequestKind::Reverse, |p| RequestKind::Relay {
            relay: SocketAddr::from(([198, 51, 100, 7], p)),
        });
        let req = SignedRequest::sign(kind, unl_of(&alice), id(2), ts, Nonce(nonce), &alice).unwrap();
        prop_assert_eq!(req.to_string().parse::<SignedRequest>(), Ok(req));
    }

    /// However many requests arrive, the cache stays within its capacity and never accepts
    /// one twice.
    #[test]
    fn the_cache_is_bounded_and_sound(reqs in proptest::collection::vec((0u64..50, 0u8..8, 0u64..400), 1..200)) {
        let key = PublicKey::of(&secret(1));
        let mut cache = ReplayCache::new(10, Duration::from_millis(100));
        let mut accepted = std::collections::HashSet::new();
        let mut now = 1000;
        for (ts_back, nonce, advance) in reqs {
            now += advance / 20;
            let ts = now - ts_back;
            if cache.check(now, &key, &Nonce([nonce; 32]), ts).is_ok() {
                prop_assert!(accepted.insert((ts, nonce)), "accepted twice: {ts} {nonce}");
            }
            prop_assert!(cache.len() <= 10);
        }
    }
}
