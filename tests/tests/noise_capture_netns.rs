//! On the wire (issue 16): the bytes between two nodes behind NATs, captured by a raw
//! (`AF_PACKET`) socket inside alice's router, where every path of hers passes (direct,
//! punched, and to the relay on `pub`). With default flags bob connects to alice's UNL and
//! they exchange two known lines: neither may appear anywhere in the capture, and the
//! capture must show the handshake's preamble (so the node-to-node stream was seen). As a
//! control, the same lab then connects bob to alice's v2 UNL (a PyP2P peer: plain text) and a
//! third line must appear in clear: the capture would catch a line if one leaked.
//!
//! | alice (nat-a) | bob (nat-b) | method |
//! |---|---|---|
//! | none | port-restricted | direct |
//! | port-restricted | port-restricted | punch |
//! | symmetric | symmetric | relay |
//!
//! Needs root: skipped with a message without it, unless `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::pairs::{PairLab, PairSpec};
use integration_tests::{Scratch, binary, lab_preconditions};
use netns_sim::{LabChild, NatKind};
use node::secure::NOISE_PREAMBLE;

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Starts `packet-capture` in `host`, writing to `file`; returns once it captures.
fn capture(lab: &PairLab, host: &str, file: &Path) -> LabChild {
    let child = lab
        .lab
        .spawn(host, Command::new(binary("packet-capture")).arg(file))
        .expect("the capture starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !child.stderr().contains("capturing") {
        assert!(
            Instant::now() < deadline,
            "the capture did not start: {}",
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn no_line_in_clear(spec: PairSpec, method: &str) {
    if !lab_preconditions(&[]) {
        return;
    }
    let scratch = Scratch::new(method);
    let v2_file = scratch.0.join("alice.v2");
    let mut lab = PairLab::up(spec, &["--unl-v2-file", v2_file.to_str().unwrap()]);
    let cap_file = scratch.0.join("nat-a.cap");
    let mut cap = capture(&lab, "nat-a", &cap_file);
    let tag = rand_suffix();

    // Encrypted, as the nodes are by default.
    let (mut bob, outcome) = lab.connect(&[]);
    assert!(
        outcome.connected && outcome.method.as_deref() == Some(method),
        "{}: expected {method}: {}\nbob: {}",
        spec.name(),
        outcome.line,
        bob.stderr()
    );
    let secrets = [
        format!("SECRET-LINE-TO-ALICE-{tag}"),
        format!("SECRET-LINE-TO-BOB-{tag}"),
    ];
    lab.exchange(&mut bob, &secrets[0], &secrets[1]);
    bob.kill();

    // The control: alice's v2 UNL, plain text as with a PyP2P peer.
    let v2 = std::fs::read_to_string(&v2_file).expect("alice wrote her v2 UNL");
    let v3 = std::mem::replace(&mut lab.alice_unl, v2.trim().to_owned());
    let (mut plain_bob, outcome) = lab.connect(&[]);
    lab.alice_unl = v3;
    assert!(outcome.connected, "plain control: {}", outcome.line);
    let control = format!("PLAIN-CONTROL-LINE-{tag}");
    lab.exchange(&mut plain_bob, &control, &format!("PLAIN-REPLY-{tag}"));
    std::thread::sleep(Duration::from_millis(200));
    cap.kill();
    plain_bob.kill();

    let bytes = std::fs::read(&cap_file).expect("the capture file");
    assert!(
        count(&bytes, control.as_bytes()) > 0,
        "{}: the capture ({} bytes) does not show the plain-text control line: it saw nothing",
        spec.name(),
        bytes.len()
    );
    for secret in &secrets {
        assert_eq!(
            count(&bytes, secret.as_bytes()),
            0,
            "{}: {secret:?} crossed alice's router in clear",
            spec.name()
        );
    }
    assert!(
        count(&bytes, &NOISE_PREAMBLE) >= 2,
        "{}: no handshake preamble both ways in the capture",
        spec.name()
    );
    eprintln!(
        "{}: by {method}; {} bytes captured at nat-a; the control line seen {} times, the \
         encrypted lines never",
        spec.name(),
        bytes.len(),
        count(&bytes, control.as_bytes())
    );
}

#[test]
fn a_direct_connection_carries_no_line_in_clear() {
    no_line_in_clear(
        PairSpec::new(NatKind::None, NatKind::PortRestricted),
        "direct",
    );
}

#[test]
fn a_punched_connection_carries_no_line_in_clear() {
    no_line_in_clear(
        PairSpec::new(NatKind::PortRestricted, NatKind::PortRestricted),
        "punch",
    );
}

#[test]
fn a_relayed_connection_carries_no_line_in_clear() {
    no_line_in_clear(
        PairSpec::new(NatKind::Symmetric, NatKind::Symmetric),
        "relay",
    );
}
