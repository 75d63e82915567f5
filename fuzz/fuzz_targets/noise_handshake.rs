//! The responder side of the Noise handshake (`node::secure::Handshake`), fed arbitrary bytes
//! in arbitrary pieces: what a listener gets from anyone who connects.
//!
//! The first input byte picks a mode. Mode 0: the rest is the stream, cut into pushes by
//! length bytes (as in `line_framer`). Other modes: a genuine initiator's messages with one
//! byte of the input's choosing changed, so the fuzzer starts deep inside the handshake.
//! Checked: no panic; outputs are well-formed (the only bytes sent are the preamble and one
//! frame of message 2, each at most once); at most one end (done or failed), nothing after
//! it; a forged stream never completes (the fuzzer cannot sign for the initiator's key), and
//! an unchanged genuine one always does, naming the initiator's key.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use node::identity::Identity;
use node::secure::{Handshake, HandshakeConfig, HandshakeOutput, NOISE_PREAMBLE, NoiseKeys, Role};

struct Run {
    hs: Handshake,
    sent: Vec<u8>,
    done: Option<wire::key::PublicKey>,
    failed: bool,
}

impl Run {
    fn drain(&mut self) {
        while let Some(out) = self.hs.poll_output() {
            assert!(self.done.is_none() && !self.failed, "output after the end: {out:?}");
            match out {
                HandshakeOutput::Send(bytes) => {
                    assert!(self.sent.is_empty(), "a responder sends once");
                    assert!(bytes.starts_with(&NOISE_PREAMBLE));
                    let len = usize::from(u16::from_be_bytes([bytes[8], bytes[9]]));
                    assert_eq!(bytes.len(), 10 + len);
                    self.sent = bytes;
                }
                HandshakeOutput::Done(e) => self.done = Some(e.peer),
                HandshakeOutput::Failed(_) => self.failed = true,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let alice = Identity::from_secret_bytes(&[1; 32]);
    let bob = Identity::from_secret_bytes(&[2; 32]);
    let config = HandshakeConfig::default();
    let mut run = Run {
        hs: Handshake::new(now, Role::Responder, &NoiseKeys::new(&bob, [3; 32]), None, config, [4; 32]),
        sent: Vec::new(),
        done: None,
        failed: false,
    };
    if mode == 0 {
        let mut rest = rest;
        while let Some((&len, tail)) = rest.split_first() {
            let (chunk, tail) = tail.split_at(usize::from(len).min(tail.len()));
            rest = tail;
            run.hs.handle_bytes(now, chunk);
            run.drain();
        }
        assert!(run.done.is_none(), "arbitrary bytes completed a handshake");
    } else {
        // A genuine initiator; the input picks one byte to change (or none) and the cuts.
        let mut init = Handshake::new(now, Role::Initiator, &NoiseKeys::new(&alice, [5; 32]), None, config, [6; 32]);
        let (pos, flip) = match rest {
            [a, b, c, ..] => (usize::from(u16::from_be_bytes([*a, *b])), *c),
            _ => (0, 0),
        };
        let mut stream = Vec::new();
        let mut offset = 0;
        for _ in 0..3 {
            while let Some(out) = init.poll_output() {
                if let HandshakeOutput::Send(mut bytes) = out {
                    if (offset..offset + bytes.len()).contains(&pos) {
                        bytes[pos - offset] ^= flip;
                    }
                    offset += bytes.len();
                    stream.extend_from_slice(&bytes);
                    run.hs.handle_bytes(now, &bytes);
                    run.drain();
                }
            }
            let reply = std::mem::take(&mut run.sent);
            if !reply.is_empty() {
                init.handle_bytes(now, &reply);
                run.sent = reply;
            }
        }
        let touched = flip != 0 && pos < offset;
        if touched {
            assert!(run.done.is_none(), "a changed byte at {pos} still completed");
        } else {
            assert_eq!(run.done, Some(alice.key()), "a genuine handshake failed");
        }
    }
    // Time runs out for whatever is still open.
    run.hs.handle_timeout(now + Duration::from_secs(3600));
    run.drain();
    assert!(run.done.is_some() || run.failed, "neither done nor failed after the deadline");
    assert_eq!(run.hs.poll_timeout(), None);
});
