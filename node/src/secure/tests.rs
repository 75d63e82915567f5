//! The handshake in virtual time (no sockets, no clock: `now` is a value we move), and the
//! encrypted line channel.

use std::time::{Duration, Instant};

use super::*;
use wire::frame::{FrameError, encode_frame};

fn identity(seed: u8) -> Identity {
    Identity::from_secret_bytes(&[seed; 32])
}

fn keys(seed: u8) -> NoiseKeys {
    NoiseKeys::new(&identity(seed), [seed.wrapping_add(100); 32])
}

/// One side: its handshake and how it ended.
struct Side {
    hs: Handshake,
    done: Option<Established>,
    failed: Option<HandshakeError>,
}

impl Side {
    fn new(now: Instant, role: Role, me: u8, expected: Option<u8>) -> Side {
        Side::with_keys(now, role, &keys(me), expected)
    }

    fn with_keys(now: Instant, role: Role, keys: &NoiseKeys, expected: Option<u8>) -> Side {
        let expected = expected.map(|e| identity(e).key());
        let seed = [u8::from(role == Role::Initiator) + 200; 32];
        Side {
            hs: Handshake::new(now, role, keys, expected, HandshakeConfig::default(), seed),
            done: None,
            failed: None,
        }
    }

    /// Drains the outputs: the bytes to send, concatenated.
    fn drain(&mut self) -> Vec<u8> {
        let mut sent = Vec::new();
        while let Some(out) = self.hs.poll_output() {
            match out {
                HandshakeOutput::Send(bytes) => sent.extend_from_slice(&bytes),
                HandshakeOutput::Done(e) => {
                    assert!(self.done.is_none() && self.failed.is_none());
                    self.done = Some(*e);
                }
                HandshakeOutput::Failed(e) => {
                    assert!(self.done.is_none() && self.failed.is_none());
                    self.failed = Some(e);
                }
            }
        }
        sent
    }

    fn peer(&self) -> Option<PublicKey> {
        self.done.as_ref().map(|d| d.peer)
    }
}

/// Moves bytes between `a` and `b` until neither has anything to send; `tamper` sees (and may
/// change) every delivery, with the direction (`true`: a to b).
fn pump(now: Instant, a: &mut Side, b: &mut Side, mut tamper: impl FnMut(bool, &mut Vec<u8>)) {
    loop {
        let mut ab = a.drain();
        let mut ba = b.drain();
        if ab.is_empty() && ba.is_empty() {
            return;
        }
        if !ab.is_empty() {
            tamper(true, &mut ab);
            b.hs.handle_bytes(now, &ab);
        }
        if !ba.is_empty() {
            tamper(false, &mut ba);
            a.hs.handle_bytes(now, &ba);
        }
    }
}

/// Sends `line` from `from` to `to` through their channels.
fn send_line(from: &mut Established, to: &mut Established, line: &str) -> Vec<String> {
    from.lines.queue_line(line);
    let mut wire = Vec::new();
    from.lines.seal(&mut wire).unwrap();
    assert!(
        !wire.windows(line.len()).any(|w| w == line.as_bytes()),
        "the line crosses the wire in clear"
    );
    to.lines.push(&wire);
    let mut got = Vec::new();
    while let Some(l) = to.lines.next_str() {
        got.push(l.unwrap().to_owned());
    }
    got
}

#[test]
fn success_both_ways_and_lines_flow() {
    let now = Instant::now();
    for (a_expects, b_expects) in [(Some(2), None), (Some(2), Some(1)), (None, None)] {
        let mut a = Side::new(now, Role::Initiator, 1, a_expects);
        let mut b = Side::new(now, Role::Responder, 2, b_expects);
        pump(now, &mut a, &mut b, |_, _| {});
        assert_eq!(a.peer(), Some(identity(2).key()), "{:?}", a.failed);
        assert_eq!(b.peer(), Some(identity(1).key()), "{:?}", b.failed);
        assert!(a.hs.is_finished() && b.hs.is_finished());
        assert_eq!(a.hs.poll_timeout(), None, "no timer once done");
        let (mut ea, mut eb) = (a.done.unwrap(), b.done.unwrap());
        assert_eq!(send_line(&mut ea, &mut eb, "hello bob"), ["hello bob"]);
        assert_eq!(send_line(&mut eb, &mut ea, "hi alice"), ["hi alice"]);
        assert_eq!(send_line(&mut ea, &mut eb, "again"), ["again"]);
    }
}

#[test]
fn the_initiator_may_send_lines_with_its_last_message() {
    let now = Instant::now();
    let mut a = Side::new(now, Role::Initiator, 1, Some(2));
    let mut b = Side::new(now, Role::Responder, 2, None);
    let msg1 = a.drain();
    b.hs.handle_bytes(now, &msg1);
    let msg2 = b.drain();
    a.hs.handle_bytes(now, &msg2);
    let mut wire = a.drain();
    let mut ea = a
        .done
        .take()
        .expect("the initiator is done after message 2");
    ea.lines.queue_line("first");
    ea.lines.seal(&mut wire).unwrap();
    // Message 3 and the first frame arrive in one read, cut anywhere.
    let (x, y) = wire.split_at(wire.len() - 5);
    b.hs.handle_bytes(now, x);
    b.drain();
    let mut eb = b
        .done
        .take()
        .expect("the responder is done after message 3");
    eb.lines.push(&eb.leftover.clone());
    eb.lines.push(y);
    assert_eq!(eb.lines.next_str(), Some(Ok("first")));
}

#[test]
fn the_bytes_depend_only_on_the_seeds() {
    let now = Instant::now();
    let run = || {
        let mut a = Side::new(now, Role::Initiator, 1, Some(2));
        let mut b = Side::new(now, Role::Responder, 2, None);
        let mut log = Vec::new();
        pump(now, &mut a, &mut b, |_, bytes| log.push(bytes.clone()));
        log
    };
    let log = run();
    assert_eq!(log, run());
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].len(), 8 + 2 + 32);
    assert_eq!(log[1].len(), 8 + 2 + 32 + 48 + PAYLOAD_BYTES + 16);
    assert_eq!(log[2].len(), 2 + 48 + PAYLOAD_BYTES + 16);
    assert!(log[0].starts_with(&NOISE_PREAMBLE) && log[1].starts_with(&NOISE_PREAMBLE));
    assert_eq!(sniff(&log[0]), Sniff::Noise);
}

#[test]
fn a_dialer_refuses_a_peer_with_another_key() {
    let now = Instant::now();
    // Alice dialed the address in Carol's UNL; Bob answers there.
    let mut a = Side::new(now, Role::Initiator, 1, Some(3));
    let mut b = Side::new(now, Role::Responder, 2, None);
    pump(now, &mut a, &mut b, |_, _| {});
    let err = a.failed.expect("refused");
    assert_eq!(
        err,
        HandshakeError::WrongPeer {
            expected: identity(3).key(),
            got: identity(2).key()
        }
    );
    let text = err.to_string();
    assert!(text.contains(&identity(3).node_id().to_string()), "{text}");
    assert!(text.contains(&identity(2).node_id().to_string()), "{text}");
    // Alice never sent message 3: Bob is left waiting, then sees the close.
    assert!(b.done.is_none() && b.failed.is_none());
    b.hs.handle_eof(now);
    b.drain();
    assert!(matches!(
        b.failed,
        Some(HandshakeError::Closed {
            waiting_for: "handshake message 3",
            ..
        })
    ));
}

#[test]
fn a_responder_refuses_an_initiator_with_another_key() {
    let now = Instant::now();
    // Bob expects Carol (he holds her signed reverse request); Alice dials instead.
    let mut a = Side::new(now, Role::Initiator, 1, None);
    let mut b = Side::new(now, Role::Responder, 2, Some(3));
    pump(now, &mut a, &mut b, |_, _| {});
    assert!(a.done.is_some(), "Alice saw a valid Bob");
    assert_eq!(
        b.failed,
        Some(HandshakeError::WrongPeer {
            expected: identity(3).key(),
            got: identity(1).key()
        })
    );
}

/// Mallory in the middle runs a handshake with each side and relays between them.
fn run_mitm(mallory_to_alice: &NoiseKeys) -> (Side, Side) {
    let now = Instant::now();
    let mut alice = Side::new(now, Role::Initiator, 1, Some(2));
    let mut m_resp = Side::with_keys(now, Role::Responder, mallory_to_alice, None);
    let mut m_init = Side::new(now, Role::Initiator, 9, None);
    let mut bob = Side::new(now, Role::Responder, 2, None);
    pump(now, &mut m_init, &mut bob, |_, _| {});
    pump(now, &mut alice, &mut m_resp, |_, _| {});
    (alice, bob)
}

#[test]
fn a_man_in_the_middle_with_its_own_key_is_refused() {
    let (alice, bob) = run_mitm(&keys(9));
    assert_eq!(
        alice.failed,
        Some(HandshakeError::WrongPeer {
            expected: identity(2).key(),
            got: identity(9).key()
        })
    );
    assert!(alice.done.is_none());
    assert_eq!(
        bob.peer(),
        Some(identity(9).key()),
        "Bob sees Mallory, not Alice"
    );
}

#[test]
fn a_man_in_the_middle_replaying_the_dialed_nodes_payload_is_refused() {
    // Mallory has her own Noise static key but presents Bob's identity and Bob's signature
    // (copied from a handshake with him): the signature does not cover her static key.
    let mut forged = keys(9);
    forged.payload = keys(2).payload;
    let (alice, _) = run_mitm(&forged);
    assert_eq!(
        alice.failed,
        Some(HandshakeError::StaticNotSigned {
            key: identity(2).key()
        })
    );
    let text = alice.failed.unwrap().to_string();
    assert!(text.contains("man in the middle"), "{text}");
}

#[test]
fn a_key_swapped_in_transit_is_refused() {
    let now = Instant::now();
    // A middle box replaces the responder's ephemeral key in message 2 by its own.
    let mut a = Side::new(now, Role::Initiator, 1, Some(2));
    let mut b = Side::new(now, Role::Responder, 2, None);
    let mut swapped = false;
    pump(now, &mut a, &mut b, |a_to_b, bytes| {
        if !a_to_b && !swapped {
            bytes[10..42].copy_from_slice(keys(9).static_public());
            swapped = true;
        }
    });
    assert!(swapped);
    assert!(matches!(
        a.failed,
        Some(HandshakeError::Noise { message: 2, .. })
    ));
}

#[test]
fn every_garbled_byte_of_message_2_or_3_fails_the_handshake() {
    let now = Instant::now();
    let mut clean = Side::new(now, Role::Initiator, 1, Some(2));
    let mut b = Side::new(now, Role::Responder, 2, None);
    let msg1 = clean.drain();
    b.hs.handle_bytes(now, &msg1);
    let msg2 = b.drain();
    // Message 2: every byte after the preamble and the length.
    for i in 10..msg2.len() {
        let mut a = Side::new(now, Role::Initiator, 1, Some(2));
        a.drain();
        let mut bad = msg2.clone();
        bad[i] ^= 0x20;
        a.hs.handle_bytes(now, &bad);
        a.drain();
        assert!(
            matches!(a.failed, Some(HandshakeError::Noise { message: 2, .. })),
            "byte {i}: {:?}",
            a.failed
        );
    }
    // Message 3: every byte after the length, against a fresh responder each time.
    clean.hs.handle_bytes(now, &msg2);
    let msg3 = clean.drain();
    for i in 2..msg3.len() {
        let mut r = Side::new(now, Role::Responder, 2, None);
        r.hs.handle_bytes(now, &msg1);
        r.drain();
        let mut bad = msg3.clone();
        bad[i] ^= 0x01;
        r.hs.handle_bytes(now, &bad);
        r.drain();
        assert!(
            matches!(r.failed, Some(HandshakeError::Noise { message: 3, .. })),
            "byte {i}: {:?}",
            r.failed
        );
    }
}

#[test]
fn truncated_messages_fail_or_wait_then_close() {
    let now = Instant::now();
    let mut a = Side::new(now, Role::Initiator, 1, None);
    let msg1 = a.drain();
    // Cut inside the frame: nothing happens until the close.
    let mut b = Side::new(now, Role::Responder, 2, None);
    b.hs.handle_bytes(now, &msg1[..20]);
    assert!(b.drain().is_empty());
    assert!(b.failed.is_none());
    b.hs.handle_eof(now);
    b.drain();
    assert_eq!(
        b.failed,
        Some(HandshakeError::Closed {
            waiting_for: "handshake message 1",
            received: 20
        })
    );
    // Cut inside the preamble.
    let mut c = Side::new(now, Role::Responder, 2, None);
    c.hs.handle_bytes(now, &msg1[..3]);
    c.hs.handle_eof(now);
    c.drain();
    assert!(matches!(
        c.failed,
        Some(HandshakeError::Closed {
            waiting_for: "the peer's preamble",
            ..
        })
    ));
    // A complete frame whose message is cut short: Noise refuses it.
    let mut d = Side::new(now, Role::Responder, 2, None);
    let mut short = NOISE_PREAMBLE.to_vec();
    encode_frame(&msg1[10..30], &mut short).unwrap();
    d.hs.handle_bytes(now, &short);
    d.drain();
    assert!(matches!(
        d.failed,
        Some(HandshakeError::Noise { message: 1, .. })
    ));
}

#[test]
fn a_peer_that_stalls_is_timed_out_and_its_slot_freed() {
    let start = Instant::now();
    let mut a = Side::new(start, Role::Initiator, 1, None);
    let mut b = Side::new(start, Role::Responder, 2, None);
    let msg1 = a.drain();
    b.hs.handle_bytes(start + Duration::from_secs(1), &msg1);
    b.drain(); // message 2 goes out; Alice never answers
    let deadline = b.hs.poll_timeout().expect("a timer while waiting");
    assert_eq!(deadline, start + HandshakeConfig::default().timeout);
    b.hs.handle_timeout(deadline.checked_sub(Duration::from_millis(1)).unwrap());
    b.drain();
    assert!(b.failed.is_none(), "not before the deadline");
    b.hs.handle_timeout(deadline);
    b.drain();
    assert_eq!(
        b.failed,
        Some(HandshakeError::Timeout {
            waiting_for: "handshake message 3",
            after: Duration::from_secs(10)
        })
    );
    assert_eq!(b.hs.poll_timeout(), None, "the timer is gone");
    // Late bytes change nothing.
    b.hs.handle_bytes(deadline, &[1, 2, 3]);
    assert!(b.hs.poll_output().is_none());
}

type Check = fn(&HandshakeError) -> bool;

#[test]
fn plain_text_other_protocols_and_oversized_messages_are_named() {
    let now = Instant::now();
    let cases: [(&[u8], Check); 4] = [
        (
            b"ERROR unknown command\r\n",
            |e| matches!(e, HandshakeError::PlainText { start } if start.starts_with("ERROR unknown")),
        ),
        (b"\0p2p-nx2", |e| {
            matches!(e, HandshakeError::BadPreamble { .. })
        }),
        (b"\0p2p-nx1\xff\xff", |e| {
            *e == HandshakeError::Frame(FrameError::TooLarge {
                len: 65535,
                limit: DEFAULT_MAX_HANDSHAKE_MESSAGE,
            })
        }),
        (b"\0p2p-nx1\x00\x05hello", |e| {
            matches!(e, HandshakeError::Noise { message: 2, .. })
        }),
    ];
    for (bytes, check) in cases {
        let mut a = Side::new(now, Role::Initiator, 1, None);
        a.drain();
        a.hs.handle_bytes(now, bytes);
        a.drain();
        let err = a.failed.expect("refused");
        assert!(check(&err), "{bytes:?}: {err:?}");
    }
}

#[test]
fn message_1_must_carry_no_payload_and_payloads_are_checked() {
    let now = Instant::now();
    let mut init = snow::Builder::with_resolver(params(), Box::new(Resolver { seed: [1; 32] }))
        .prologue(&NOISE_PREAMBLE)
        .unwrap()
        .local_private_key(&keys(1).static_private)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut buf = [0u8; 200];
    let len = init.write_message(b"extra", &mut buf).unwrap();
    let mut bytes = NOISE_PREAMBLE.to_vec();
    encode_frame(&buf[..len], &mut bytes).unwrap();
    let mut bob = Side::new(now, Role::Responder, 2, None);
    bob.hs.handle_bytes(now, &bytes);
    bob.drain();
    assert!(matches!(
        bob.failed,
        Some(HandshakeError::BadPayload { message: 1, .. })
    ));
    // A payload of the wrong version or length, with a valid Noise session around it.
    for (payload, detail) in [
        (vec![2u8; PAYLOAD_BYTES], "version 2, expected 1"),
        (vec![1u8; 10], "10 bytes, expected 97"),
    ] {
        let mut forged = keys(9);
        forged.payload = [0; PAYLOAD_BYTES];
        let mut alice = Side::new(now, Role::Initiator, 1, None);
        // Write message 2 by hand with the odd payload.
        let msg1 = alice.drain();
        let mut resp = snow::Builder::with_resolver(params(), Box::new(Resolver { seed: [5; 32] }))
            .prologue(&NOISE_PREAMBLE)
            .unwrap()
            .local_private_key(&forged.static_private)
            .unwrap()
            .build_responder()
            .unwrap();
        resp.read_message(&msg1[10..], &mut buf).unwrap();
        let len = resp.write_message(&payload, &mut buf).unwrap();
        let mut msg2 = NOISE_PREAMBLE.to_vec();
        encode_frame(&buf[..len], &mut msg2).unwrap();
        alice.hs.handle_bytes(now, &msg2);
        alice.drain();
        match &alice.failed {
            Some(HandshakeError::BadPayload {
                message: 2,
                detail: d,
            }) => assert_eq!(d, detail),
            other => panic!("{other:?}"),
        }
    }
}

fn established_with(config: HandshakeConfig) -> (Established, Established) {
    let now = Instant::now();
    let side = |role, me: u8, seed| Side {
        hs: Handshake::new(now, role, &keys(me), None, config, seed),
        done: None,
        failed: None,
    };
    let mut a = side(Role::Initiator, 1, [1; 32]);
    let mut b = side(Role::Responder, 2, [2; 32]);
    pump(now, &mut a, &mut b, |_, _| {});
    (a.done.unwrap(), b.done.unwrap())
}

fn established_pair() -> (Established, Established) {
    established_with(HandshakeConfig::default())
}

#[test]
fn many_lines_cross_in_frames_of_at_most_64_kib() {
    let (mut a, mut b) = established_pair();
    let line = "x".repeat(100);
    for _ in 0..2000 {
        a.lines.queue_line(&line);
    }
    assert_eq!(a.lines.pending(), 2000 * 102);
    let mut wire = Vec::new();
    a.lines.seal(&mut wire).unwrap();
    assert_eq!(a.lines.pending(), 0);
    let frames = (2000 * 102usize).div_ceil(MAX_PLAINTEXT_PER_FRAME);
    assert_eq!(wire.len(), 2000 * 102 + frames * 18);
    // Delivered in odd-sized reads.
    let mut got = 0;
    for chunk in wire.chunks(7777) {
        b.lines.push(chunk);
        while let Some(l) = b.lines.next_str() {
            assert_eq!(l.unwrap(), line);
            got += 1;
        }
    }
    assert_eq!(got, 2000);
    assert_eq!(b.lines.buffered(), 0);
}

#[test]
fn a_changed_replayed_or_dropped_frame_ends_the_stream_after_the_good_lines() {
    let (mut a, mut b) = established_pair();
    let mut frames = Vec::new();
    for line in ["one", "two", "three"] {
        a.lines.queue_line(line);
        let mut wire = Vec::new();
        a.lines.seal(&mut wire).unwrap();
        frames.push(wire);
    }
    // Tampered: a bit flipped in the second frame.
    let mut bad = frames[1].clone();
    bad[4] ^= 1;
    b.lines.push(&frames[0]);
    b.lines.push(&bad);
    b.lines.push(&frames[2]);
    assert_eq!(b.lines.next_str(), Some(Ok("one")));
    let err = SecureError::Tampered {
        frame: 1,
        len: 3 + 2 + 16,
    };
    assert_eq!(b.lines.next_str(), Some(Err(err.clone())));
    assert_eq!(b.lines.next_str(), Some(Err(err)), "the error sticks");
    // Replayed: the first frame again (its nonce is used up).
    let (mut a, mut b) = established_pair();
    let mut wire = Vec::new();
    a.lines.queue_line("once");
    a.lines.seal(&mut wire).unwrap();
    b.lines.push(&wire);
    b.lines.push(&wire);
    assert_eq!(b.lines.next_str(), Some(Ok("once")));
    assert!(matches!(
        b.lines.next_str(),
        Some(Err(SecureError::Tampered { frame: 1, .. }))
    ));
    // Dropped: the second frame skipped, the third refused.
    let (mut a, mut b) = established_pair();
    let mut frames = Vec::new();
    for line in ["a", "b", "c"] {
        a.lines.queue_line(line);
        let mut wire = Vec::new();
        a.lines.seal(&mut wire).unwrap();
        frames.push(wire);
    }
    b.lines.push(&frames[0]);
    b.lines.push(&frames[2]);
    assert_eq!(b.lines.next_str(), Some(Ok("a")));
    assert!(matches!(
        b.lines.next_str(),
        Some(Err(SecureError::Tampered { .. }))
    ));
}

#[test]
fn decrypted_lines_obey_the_line_cap() {
    let config = HandshakeConfig {
        max_line: 8,
        ..HandshakeConfig::default()
    };
    let (mut a, mut b) = established_with(config);
    assert_eq!(send_line(&mut a, &mut b, "fine"), ["fine"]);
    a.lines.queue_line("far too long for eight");
    let mut wire = Vec::new();
    a.lines.seal(&mut wire).unwrap();
    b.lines.push(&wire);
    assert!(matches!(
        b.lines.next_str(),
        Some(Err(SecureError::Line(wire::line::LineError::TooLong {
            limit: 8,
            ..
        })))
    ));
}
