//! The frame codec (`wire::frame::FrameDecoder`, `sniff`) and the encrypted line channel on top
//! of it (`node::secure::SecureLines`): every byte an encrypted peer sends after its handshake.
//!
//! Mode 0: a cap (next byte), then the stream in pushes (length-prefixed chunks): the frames
//! that come out equal a reference model however the stream is cut, nothing over the cap,
//! never more buffered than the cap, the header and one push. Mode 1: the rest is pushed into
//! a `SecureLines` of an established session: no panic, and forged bytes never yield a line
//! (the fuzzer cannot encrypt for the session). Mode 2: lines built from the input, sealed by
//! one side and pushed in input-chosen pieces into the other, come out unchanged.
//! Every mode also checks `sniff` on the input's start.

#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use node::identity::Identity;
use node::secure::{Established, Handshake, HandshakeConfig, HandshakeOutput, NoiseKeys, Role};
use wire::frame::{FrameDecoder, FrameError, NOISE_PREAMBLE, Sniff, sniff};

fn model(stream: &[u8], cap: usize) -> (Vec<Vec<u8>>, bool) {
    let mut frames = Vec::new();
    let mut rest = stream;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if len > cap {
            return (frames, true);
        }
        if rest.len() < 2 + len {
            break;
        }
        frames.push(rest[2..2 + len].to_vec());
        rest = &rest[2 + len..];
    }
    (frames, false)
}

fn pair() -> (Established, Established) {
    let now = Instant::now();
    let config = HandshakeConfig::default();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let b = Identity::from_secret_bytes(&[2; 32]);
    let mut x = Handshake::new(now, Role::Initiator, &NoiseKeys::new(&a, [3; 32]), None, config, [4; 32]);
    let mut y = Handshake::new(now, Role::Responder, &NoiseKeys::new(&b, [5; 32]), None, config, [6; 32]);
    let (mut dx, mut dy) = (None, None);
    for _ in 0..3 {
        shuttle(now, &mut x, &mut y, &mut dx);
        shuttle(now, &mut y, &mut x, &mut dy);
    }
    (dx.expect("initiator done"), dy.expect("responder done"))
}

fn shuttle(now: Instant, from: &mut Handshake, to: &mut Handshake, done: &mut Option<Established>) {
    while let Some(out) = from.poll_output() {
        match out {
            HandshakeOutput::Send(bytes) => to.handle_bytes(now, &bytes),
            HandshakeOutput::Done(e) => *done = Some(*e),
            HandshakeOutput::Failed(e) => panic!("{e}"),
        }
    }
}

fn pushes(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let (chunk, tail) = tail.split_at(usize::from(len).min(tail.len()));
        out.push(chunk);
        rest = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match sniff(rest) {
        Sniff::Noise => assert!(rest.starts_with(&NOISE_PREAMBLE)),
        Sniff::Plain => assert_ne!(rest[0], 0),
        Sniff::NeedMore => assert!(rest.is_empty() || NOISE_PREAMBLE.starts_with(rest)),
        Sniff::Unknown => assert_eq!(rest[0], 0),
    }
    match mode % 3 {
        0 => {
            let Some((&cap, rest)) = rest.split_first() else {
                return;
            };
            let cap = usize::from(cap) * 4;
            let mut decoder = FrameDecoder::new(cap);
            let mut stream = Vec::new();
            let mut got = Vec::new();
            let mut too_large = false;
            for chunk in pushes(rest) {
                decoder.push(chunk);
                stream.extend_from_slice(chunk);
                while let Some(item) = decoder.next_frame() {
                    match item {
                        Ok(frame) => {
                            assert!(frame.len() <= cap);
                            got.push(frame.to_vec());
                        }
                        Err(FrameError::TooLarge { len, limit }) => {
                            assert!(len > limit && limit == cap);
                            too_large = true;
                            break;
                        }
                    }
                }
                if too_large {
                    break;
                }
                assert!(decoder.buffered() <= cap + 2 + chunk.len());
            }
            let (want, want_too_large) = model(&stream, cap);
            assert_eq!(got, want);
            assert_eq!(too_large, want_too_large);
        }
        1 => {
            let (_, mut b) = pair();
            for chunk in pushes(rest) {
                b.lines.push(chunk);
                if let Some(item) = b.lines.next_str() {
                    assert!(item.is_err(), "a forged frame gave a line");
                }
            }
        }
        _ => {
            let (mut a, mut b) = pair();
            let text = String::from_utf8_lossy(rest);
            let lines: Vec<&str> = text.split(['\r', '\n']).filter(|l| !l.is_empty()).collect();
            let mut wire = Vec::new();
            for line in &lines {
                a.lines.queue_line(line);
                if line.len() % 3 == 0 {
                    a.lines.seal(&mut wire).expect("seal");
                }
            }
            a.lines.seal(&mut wire).expect("seal");
            let mut got = Vec::new();
            let step = rest.first().map_or(1, |b| usize::from(*b).max(1));
            for chunk in wire.chunks(step) {
                b.lines.push(chunk);
                while let Some(line) = b.lines.next_str() {
                    got.push(line.expect("a sealed line opens").to_owned());
                }
            }
            assert_eq!(got, lines);
        }
    }
});
