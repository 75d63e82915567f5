//! Origin-signed broadcast payloads (`node::broadcast::SignedBroadcast`): what a node parses and
//! verifies from every `P2P/1 BCAST` whose payload starts with `P2P/1 SIGNED`.
//!
//! Mode 0: the rest is a payload from a peer: parsing never panics, a payload that parses
//! re-encodes to the same text (one canonical form), and one that verifies for an id fails for
//! any other id. Other modes: a line signed from the bytes (no line breaks) parses back and
//! verifies, for that id only.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use node::broadcast::SignedBroadcast;
use node::identity::Identity;
use node::wire::overlay::MessageId;
use p2p_fuzz::{as_line, text_without};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode == 0 {
        let Some(payload) = std::str::from_utf8(rest).ok().and_then(as_line) else {
            return;
        };
        if let Ok(signed) = payload.parse::<SignedBroadcast>() {
            assert_eq!(signed.to_string(), payload, "not canonical");
            for id in [0, 1, u64::MAX] {
                if signed.verify(MessageId(id)).is_ok() {
                    assert!(signed.verify(MessageId(id ^ 1)).is_err(), "verifies for two ids");
                }
            }
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let (Ok(secret), Ok(id), Ok(ms), Ok(line)) = (
        u.arbitrary::<[u8; 32]>(),
        u.arbitrary::<u64>(),
        u.arbitrary::<u64>(),
        text_without(&mut u, 2048, &['\r', '\n']),
    ) else {
        return;
    };
    let me = Identity::from_secret_bytes(&secret);
    let text = SignedBroadcast::sign(&me, MessageId(id), ms, &line).to_string();
    let back: SignedBroadcast = text.parse().expect("a signed line parses");
    assert_eq!(back.verify(MessageId(id)), Ok(me.key()));
    assert!(back.verify(MessageId(id.wrapping_add(1))).is_err());
    assert_eq!(back.line(), line);
});
