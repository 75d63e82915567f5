//! The mailbox client's registration in virtual time: signed by key, or the fallback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::output::{Event, Output};
use super::super::{Core, CoreConfig};
use crate::core::tests::drain;
use wire::mailbox::{Reply, Request};
use wire::overlay::Nonce;
use wire::signal::RegisterChallenge;

const SERVER: &str = "10.0.0.9:8090";

fn core() -> Core {
    Core::new(CoreConfig {
        seed: 11,
        ..CoreConfig::default()
    })
}

/// The lines sent to the mailbox server.
fn sent(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::MailboxSend { line } => Some(line.clone()),
            _ => None,
        })
        .collect()
}

fn closed(out: &[Output]) -> Option<String> {
    out.iter().find_map(|o| match o {
        Output::MailboxClose { reason } => Some(reason.clone()),
        _ => None,
    })
}

/// A core whose mailbox connection to [`SERVER`] just opened and sent `CHALLENGE`.
fn opened(now: Instant) -> Core {
    let mut c = core();
    let server: SocketAddr = SERVER.parse().unwrap();
    c.enable_mailbox(now, server);
    assert!(matches!(
        drain(&mut c).as_slice(),
        [Output::MailboxDial { server: s }] if *s == server
    ));
    c.handle_mailbox_open(now);
    assert_eq!(sent(&drain(&mut c)), vec!["CHALLENGE".to_owned()]);
    c
}

fn challenge(server: &str) -> RegisterChallenge {
    RegisterChallenge {
        server: server.to_owned(),
        nonce: Nonce([0x5a; 32]),
    }
}

fn registered(c: &Core, created: bool) -> String {
    Reply::Registered {
        node_id: c.identity().key().mailbox_name(),
        created,
    }
    .to_string()
}

#[test]
fn the_key_and_the_node_id_name_one_mailbox() {
    let c = core();
    assert_eq!(
        c.identity().key().mailbox_name().as_str(),
        c.node_id().mailbox_id()
    );
}

#[test]
fn challenge_then_proof_then_registered_then_subscribed() {
    let t0 = Instant::now();
    let mut c = opened(t0);
    let t1 = t0 + Duration::from_millis(30);
    c.handle_mailbox_line(t1, &Reply::Challenge(challenge(SERVER)).to_string());
    let lines = sent(&drain(&mut c));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let Ok(Request::RegisterKey(proof)) = lines[0].parse::<Request>() else {
        panic!("not a REGISTER_KEY: {:?}", lines[0]);
    };
    assert_eq!(proof.key, c.identity().key());
    let name = proof.verify(&challenge(SERVER)).expect("a valid proof");
    assert_eq!(name, c.identity().key().mailbox_name());
    assert!(!c.mailbox_up());
    let t2 = t1 + Duration::from_millis(30);
    c.handle_mailbox_line(t2, &registered(&c, true));
    assert_eq!(sent(&drain(&mut c)), vec!["SUBSCRIBE".to_owned()]);
    c.handle_mailbox_line(t2 + Duration::from_millis(30), "OK SUBSCRIBED 0");
    assert!(c.mailbox_up());
    let out = drain(&mut c);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::MailboxUp { .. }))),
        "{out:?}"
    );
}

#[test]
fn a_server_without_challenge_gets_register_with_the_secret() {
    let now = Instant::now();
    let mut c = opened(now);
    c.handle_mailbox_line(now, "ERROR unknown command \"CHALLENGE\"");
    let lines = sent(&drain(&mut c));
    let name = c.identity().key().mailbox_name();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("REGISTER {name} ")),
        "{lines:?}"
    );
    assert_eq!(lines[1], "SUBSCRIBE");
    c.handle_mailbox_line(now, &registered(&c, false));
    c.handle_mailbox_line(now, "OK SUBSCRIBED 0");
    assert!(c.mailbox_up());
    assert!(c.mailbox.as_ref().unwrap().fallback_logged);
    // A new connection asks for a challenge again (the server may have been upgraded), and
    // the fallback registers the same mailbox with the same secret.
    c.handle_mailbox_closed(now, "reset");
    drain(&mut c);
    let later = now + Duration::from_secs(2);
    c.handle_timeout(later);
    drain(&mut c);
    c.handle_mailbox_open(later);
    assert_eq!(sent(&drain(&mut c)), vec!["CHALLENGE".to_owned()]);
    c.handle_mailbox_line(later, "ERROR unknown command \"CHALLENGE\"");
    assert_eq!(sent(&drain(&mut c)), lines);
}

#[test]
fn a_challenge_naming_another_server_is_not_signed() {
    let now = Instant::now();
    let mut c = opened(now);
    c.handle_mailbox_line(
        now,
        &Reply::Challenge(challenge("10.6.6.6:8090")).to_string(),
    );
    let out = drain(&mut c);
    assert!(sent(&out).is_empty(), "{out:?}");
    let reason = closed(&out).expect("the connection is closed");
    assert!(
        reason.contains("10.6.6.6:8090") && reason.contains(SERVER),
        "{reason}"
    );
    assert!(!c.mailbox_up());
}

#[test]
fn a_refused_proof_closes_without_falling_back() {
    let now = Instant::now();
    let mut c = opened(now);
    c.handle_mailbox_line(now, &Reply::Challenge(challenge(SERVER)).to_string());
    drain(&mut c);
    c.handle_mailbox_line(now, "ERROR REGISTER_KEY: too many registrations");
    let out = drain(&mut c);
    assert!(sent(&out).is_empty(), "no REGISTER fallback: {out:?}");
    let reason = closed(&out).expect("the connection is closed");
    assert!(reason.contains("too many registrations"), "{reason}");
}

#[test]
fn the_fallback_checks_the_registered_name() {
    let now = Instant::now();
    let mut c = opened(now);
    c.handle_mailbox_line(now, "ERROR unknown command");
    drain(&mut c);
    c.handle_mailbox_line(now, &format!("OK REGISTERED {} NEW", "ab".repeat(20)));
    let out = drain(&mut c);
    assert!(closed(&out).is_some(), "{out:?}");
}
