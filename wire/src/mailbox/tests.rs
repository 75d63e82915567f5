//! Tests of [`super`]: fixed vectors, every error, proptest round trips.

use super::*;
use crate::key::{PublicKey, SigningKey};
use crate::overlay::Nonce;
use proptest::prelude::*;

#[test]
fn requests_parse() {
    assert_eq!(
        "PUT bob hello there  friend".parse::<Request>(),
        Ok(Request::Put {
            to: "bob".parse().unwrap(),
            body: "hello there  friend".into()
        })
    );
    assert_eq!(
        "REGISTER alice s3cr3t!".parse::<Request>().unwrap(),
        Request::Register {
            node_id: "alice".parse().unwrap(),
            secret: "s3cr3t!".parse().unwrap()
        }
    );
    assert_eq!(
        "ACK 17".parse::<Request>(),
        Ok(Request::Ack { id: MessageId(17) })
    );
    for (line, want) in [
        ("SUBSCRIBE", Request::Subscribe),
        ("LIST", Request::List),
        ("PING", Request::Ping),
        ("QUIT", Request::Quit),
    ] {
        assert_eq!(line.parse::<Request>(), Ok(want));
    }
}

#[test]
fn bad_requests_name_what_is_wrong() {
    let cases = [
        ("", "empty line"),
        ("HELLO", "unknown command: \"HELLO\""),
        ("PUT", "PUT: missing argument <node_id>"),
        ("PUT bob", "PUT: missing argument <message>"),
        ("PUT bob ", "PUT: missing argument <message>"),
        (
            "PUT b/ob hi",
            "bad node id \"b/ob\": expected 1..=64 characters of [A-Za-z0-9._~-], starting with a letter or digit",
        ),
        ("REGISTER bob", "REGISTER: missing argument <secret>"),
        (
            "REGISTER bob a b",
            "REGISTER: unexpected extra argument \"b\"",
        ),
        (
            "ACK +1",
            "ACK: <message_id> must be an unsigned integer, got \"+1\"",
        ),
        ("LIST now", "LIST: unexpected extra argument \"now\""),
    ];
    for (line, message) in cases {
        assert_eq!(
            line.parse::<Request>().unwrap_err().to_string(),
            message,
            "{line:?}"
        );
    }
    let secret = "x".repeat(200);
    let err = format!("REGISTER bob {secret}")
        .parse::<Request>()
        .unwrap_err()
        .to_string();
    assert!(!err.contains(&secret), "a secret is never echoed: {err}");
}

#[test]
fn secrets_do_not_leak_through_debug() {
    let secret: Secret = "hunter2".parse().unwrap();
    assert_eq!(format!("{secret:?}"), "Secret(<7 bytes>)");
}

#[test]
fn replies_parse() {
    assert_eq!(
        "MSG 5 - REVERSE_CONNECT:abc:def".parse::<Reply>(),
        Ok(Reply::Msg(Delivery {
            id: MessageId(5),
            from: None,
            body: "REVERSE_CONNECT:abc:def".into()
        }))
    );
    assert_eq!(
        "OK REGISTERED bob NEW".parse::<Reply>(),
        Ok(Reply::Registered {
            node_id: "bob".parse().unwrap(),
            created: true
        })
    );
    assert_eq!(
        "ERROR mailbox full".parse::<Reply>(),
        Ok(Reply::Error("mailbox full".into()))
    );
    assert!("OK REGISTERED bob MAYBE".parse::<Reply>().is_err());
    assert!("OK NOPE 1".parse::<Reply>().is_err());
}

#[test]
fn error_replies_stay_on_one_short_line() {
    let Reply::Error(text) = Reply::error(&format!("bad\r\nthing {}", "é".repeat(2000))) else {
        panic!()
    };
    assert!(text.starts_with("bad??thing "));
    assert!(text.len() <= MAX_ERROR_BYTES);
}

fn node_id() -> impl Strategy<Value = NodeId> {
    "[a-zA-Z0-9][a-zA-Z0-9._~-]{0,63}".prop_map(|s| s.parse().unwrap())
}

fn body() -> impl Strategy<Value = String> {
    "[^\r\n]{1,200}"
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (node_id(), "[!-~]{1,128}").prop_map(|(node_id, s)| Request::Register {
            node_id,
            secret: s.parse().unwrap()
        }),
        Just(Request::Subscribe),
        Just(Request::Challenge),
        (
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 64)
        )
            .prop_map(|(k, sig)| {
                Request::RegisterKey(RegisterProof {
                    key: PublicKey::of(&SigningKey::from_bytes(&k)),
                    signature: sig.try_into().unwrap(),
                })
            }),
        (node_id(), body()).prop_map(|(to, body)| Request::Put { to, body }),
        Just(Request::List),
        any::<u64>().prop_map(|n| Request::Ack { id: MessageId(n) }),
        Just(Request::Ping),
        Just(Request::Quit),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (node_id(), any::<bool>())
            .prop_map(|(node_id, created)| Reply::Registered { node_id, created }),
        any::<usize>().prop_map(|pending| Reply::Subscribed { pending }),
        any::<u64>().prop_map(|n| Reply::Stored { id: MessageId(n) }),
        any::<usize>().prop_map(|count| Reply::Listed { count }),
        any::<u64>().prop_map(|n| Reply::Acked { id: MessageId(n) }),
        (any::<u64>(), proptest::option::of(node_id()), body()).prop_map(|(id, from, body)| {
            Reply::Msg(Delivery {
                id: MessageId(id),
                from,
                body,
            })
        }),
        Just(Reply::Pong),
        (
            "[a-z0-9.-]{1,40}(:[0-9]{1,5})?|\\[[0-9a-f:]{2,39}\\]:[0-9]{1,5}",
            any::<[u8; 32]>()
        )
            .prop_map(|(server, n)| Reply::Challenge(RegisterChallenge {
                server,
                nonce: Nonce(n)
            })),
        "[^\r\n]{0,100}".prop_map(Reply::Error),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(request in request()) {
        prop_assert_eq!(request.to_string().parse::<Request>(), Ok(request));
    }

    #[test]
    fn replies_round_trip(reply in reply()) {
        prop_assert_eq!(reply.to_string().parse::<Reply>(), Ok(reply));
    }

    #[test]
    fn arbitrary_lines_never_panic(line in "\\PC{0,300}") {
        let _ = line.parse::<Request>();
        let _ = line.parse::<Reply>();
    }
}

/// The signed registration's lines: both verbs, their refusals, and the client's state machine
/// against a server that answers right, names another server, refuses, or names another box.
#[test]
fn signed_registration_lines_and_the_client_side() {
    let secret = SigningKey::from_bytes(&[3; 32]);
    let key = PublicKey::of(&secret);
    assert_eq!("CHALLENGE".parse::<Request>(), Ok(Request::Challenge));
    assert!(matches!(
        "CHALLENGE extra".parse::<Request>(),
        Err(WireError::ExtraArgument {
            command: "CHALLENGE",
            ..
        })
    ));
    let challenge = RegisterChallenge {
        server: "[2001:db8::2]:8090".into(),
        nonce: Nonce([0xab; 32]),
    };
    let line = format!("CHALLENGE [2001:db8::2]:8090 {}", "ab".repeat(32));
    assert_eq!(Reply::Challenge(challenge.clone()).to_string(), line);
    assert_eq!(
        line.parse::<Reply>(),
        Ok(Reply::Challenge(challenge.clone()))
    );
    let proof = RegisterProof::sign(&secret, &challenge);
    let sent = Request::RegisterKey(proof.clone()).to_string();
    assert!(sent.starts_with(&format!("REGISTER_KEY {key} ")), "{sent}");
    assert_eq!(sent.parse::<Request>(), Ok(Request::RegisterKey(proof)));
    for bad in ["REGISTER_KEY", "REGISTER_KEY abc def", "REGISTER_KEY a b c"] {
        let err = bad.parse::<Request>().unwrap_err();
        assert!(matches!(err, WireError::Signed { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("REGISTER_KEY"), "{err}");
    }
    assert!(matches!(
        "CHALLENGE bad/name 00".parse::<Reply>(),
        Err(WireError::Signed { .. })
    ));

    // The client: the right server, then registered.
    let mut reg = KeyRegistration::new(&secret, "[2001:db8::2]:8090");
    assert_eq!(reg.node_id(), key.mailbox_name());
    assert_eq!(reg.first_request(), Request::Challenge);
    let RegisterStep::Send(Request::RegisterKey(proof)) = reg
        .handle_reply(&Reply::Challenge(challenge.clone()))
        .unwrap()
    else {
        panic!("a proof expected")
    };
    assert_eq!(proof.verify(&challenge), Ok(key.mailbox_name()));
    let other = reg.handle_reply(&Reply::Pong).unwrap_err();
    assert!(
        other.to_string().contains("waiting for OK REGISTERED"),
        "{other}"
    );

    // Another server name: never signed.
    let mut reg = KeyRegistration::new(&secret, "192.0.2.1:8090");
    let err = reg
        .handle_reply(&Reply::Challenge(challenge.clone()))
        .unwrap_err();
    assert_eq!(
        err,
        RegisterKeyError::WrongServer {
            expected: "192.0.2.1:8090".into(),
            got: "[2001:db8::2]:8090".into()
        }
    );
    // A refusal, and another mailbox.
    let mut reg = KeyRegistration::new(&secret, "[2001:db8::2]:8090");
    assert_eq!(
        reg.handle_reply(&Reply::Error("no".into())),
        Err(RegisterKeyError::Refused("no".into()))
    );
    let mut reg = KeyRegistration::new(&secret, "[2001:db8::2]:8090");
    reg.handle_reply(&Reply::Challenge(challenge)).unwrap();
    let wrong: NodeId = "someone-else".parse().unwrap();
    assert!(matches!(
        reg.handle_reply(&Reply::Registered {
            node_id: wrong,
            created: false
        }),
        Err(RegisterKeyError::WrongMailbox { .. })
    ));
    assert!(format!("{reg:?}").contains("KeyRegistration"));
}
