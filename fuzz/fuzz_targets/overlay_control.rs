//! The overlay's control lines between two nodes (`wire::overlay::Control`): the
//! broadcast envelope `P2P/1 BCAST`, `P2P/1 HELLO`, `P2P/1 IAM` and `P2P/1 SWITCH`; and the seen-cache that
//! stops a flood.
//!
//! Mode 0: the rest is a line from a peer. A control line that parses re-encodes to a line that
//! parses to the same value. Mode 1: seen-cache operations keep it within its capacity and
//! never report a remembered id as new. Other modes: a valid control line built from the bytes
//! (any payload a node accepts to broadcast: no line breaks), encoded and framed, parses back.

#![no_main]

use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wire::line::DEFAULT_MAX_LINE_BYTES;
use wire::overlay::{Control, MessageId, Nonce, PeerId, SeenCache};
use wire::unl::{NODE_ID_BYTES, NodeId};
use p2p_fuzz::{as_line, assert_one_line, text_without, through_framer};

fn control(u: &mut Unstructured<'_>) -> Result<Option<Control>> {
    Ok(Some(match u.int_in_range(0..=3)? {
        0 => Control::Hello {
            peer: PeerId(u.arbitrary()?),
            listen_port: u.arbitrary()?,
        },
        1 => {
            let Some(node) = NodeId::from_bytes(u.arbitrary::<[u8; NODE_ID_BYTES]>()?) else {
                return Ok(None);
            };
            Control::Iam {
                node,
                nonce: if u.arbitrary()? {
                    Some(Nonce(u.arbitrary()?))
                } else {
                    None
                },
            }
        }
        2 => Control::Switch {
            sent: u.arbitrary()?,
        },
        _ => Control::Broadcast {
            id: MessageId(u.arbitrary()?),
            ttl: u.int_in_range(1..=u8::MAX)?,
            payload: text_without(u, 4096, &['\r', '\n'])?,
        },
    }))
}

fn seen_cache(u: &mut Unstructured<'_>) -> Result<()> {
    let capacity = u.int_in_range(1..=16)?;
    let lifetime = Duration::from_millis(u.int_in_range(1..=1000)?);
    let t0 = Instant::now();
    let mut now = t0;
    let mut cache = SeenCache::new(capacity, lifetime);
    // When each remembered id was (last) recorded as new.
    let mut first_seen = std::collections::HashMap::new();
    while !u.is_empty() {
        now += Duration::from_millis(u.int_in_range(0..=300)?);
        let id = MessageId(u.int_in_range(0..=20)?);
        let known = cache.contains(id);
        let fresh = cache.insert(id, now);
        let age = first_seen.get(&id).map(|t| now.duration_since(*t));
        if fresh {
            // A remembered id is only new again once its lifetime is over.
            assert!(
                !known || age >= Some(lifetime),
                "remembered id reported as new"
            );
            first_seen.insert(id, now);
        } else {
            assert!(
                known && age < Some(lifetime),
                "a duplicate of an expired or unknown id"
            );
        }
        assert!(cache.contains(id), "an id just inserted is not remembered");
        assert!(
            !cache.insert(id, now),
            "a duplicate at the same instant is new"
        );
        assert!(
            cache.len() <= capacity,
            "{} ids, capacity {capacity}",
            cache.len()
        );
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            let Some(line) = std::str::from_utf8(rest).ok().and_then(as_line) else {
                return;
            };
            if let Some(Ok(c)) = Control::parse(line) {
                let encoded = c.to_string();
                assert_eq!(
                    Control::parse(&encoded),
                    Some(Ok(c.clone())),
                    "re-encoded {line:?}"
                );
                // Only what the format allows: hex digits in ids and nonces, decimal digits in
                // the port and the TTL (no sign).
                let words: Vec<&str> = line.split(' ').collect();
                let hex = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_hexdigit());
                let dec = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
                let strict = match c {
                    Control::Hello { .. } => hex(words[2]) && dec(words[3]),
                    Control::Iam { .. } => words[2..].iter().all(|w| hex(w)),
                    Control::Switch { .. } => dec(words[2]),
                    Control::Broadcast { .. } => hex(words[2]) && dec(words[3]),
                };
                assert!(strict, "accepted a field outside the format: {line:?}");
            }
        }
        1 => {
            let _ = seen_cache(&mut Unstructured::new(rest));
        }
        _ => {
            let mut u = Unstructured::new(rest);
            let Ok(Some(c)) = control(&mut u) else {
                return;
            };
            let encoded = c.to_string();
            assert_one_line(&encoded);
            let line = through_framer(&encoded, DEFAULT_MAX_LINE_BYTES);
            assert_eq!(Control::parse(&line), Some(Ok(c)), "encoded as {encoded:?}");
        }
    }
});
