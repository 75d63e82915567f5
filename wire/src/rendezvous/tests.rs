#![allow(clippy::too_many_lines)]

use super::*;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn req(line: &str) -> Result<Request, ParseError> {
    line.parse()
}

fn resp(line: &str) -> Result<Response, ParseError> {
    line.parse()
}

#[test]
fn pyp2p_lines_parse() {
    assert_eq!(
        req("BOOTSTRAP 5"),
        Ok(Request::Bootstrap {
            count: 5,
            own_port: None
        })
    );
    assert_eq!(
        req("PASSIVE READY 50500 10"),
        Ok(Request::PassiveReady {
            port: 50500,
            max_inbound: 10
        })
    );
    assert_eq!(
        req("SIMULTANEOUS READY 0 0"),
        Ok(Request::SimultaneousReady {
            port: 0,
            max_inbound: 0
        })
    );
    assert_eq!(
        req("SOURCE TCP 34567"),
        Ok(Request::SourceTcp {
            text: Some("34567".into())
        })
    );
    assert_eq!(req("SOURCE TCP"), Ok(Request::SourceTcp { text: None }));
    assert_eq!(req("SOURCE ADDR"), Ok(Request::SourceAddr));
    assert_eq!(
        req("CANDIDATE 192.0.2.1:4000 TCP 0"),
        Ok(Request::Candidate {
            node: NodeTarget::Addr("192.0.2.1:4000".parse().unwrap()),
            proto: Proto::Tcp,
            ports: vec![RANDOM_PORT]
        })
    );
    assert_eq!(
        "CHALLENGE 198.51.100.2 0 TCP".parse::<Response>(),
        Ok(Response::Challenge {
            client_ip: "198.51.100.2".parse().unwrap(),
            ports: vec![RANDOM_PORT],
            proto: Proto::Tcp
        })
    );
    // Only there: a FIGHT or an ACCEPT names real ports.
    assert!("FIGHT 198.51.100.2 0 TCP 1.0".parse::<Response>().is_err());
    assert!(req("SOURCE ADDR 1").is_err());
    assert_eq!(
        req("CANDIDATE 192.168.0.1 TCP 4552 345"),
        Ok(Request::Candidate {
            node: NodeTarget::Ip(Ipv4Addr::new(192, 168, 0, 1).into()),
            proto: Proto::Tcp,
            ports: vec![4552, 345]
        })
    );
    assert_eq!(
        req("ACCEPT 192.168.0.1 4552 345 TCP 1412137849.288068"),
        Ok(Request::Accept {
            client_ip: Ipv4Addr::new(192, 168, 0, 1).into(),
            ports: vec![4552, 345],
            proto: Proto::Tcp,
            ntp_time: NtpTime::new(1_412_137_849.288_068).unwrap()
        })
    );
    assert_eq!(req("CLEAR"), Ok(Request::Clear { port: None }));
    assert_eq!(req("QUIT"), Ok(Request::Quit));
    assert_eq!(
        resp("NODES p:1.2.3.4:8000 p:5.6.7.8:9000 "),
        Ok(Response::Nodes(vec![
            NodeEntry {
                node_type: NodeType::Passive,
                addr: "1.2.3.4:8000".parse().unwrap()
            },
            NodeEntry {
                node_type: NodeType::Passive,
                addr: "5.6.7.8:9000".parse().unwrap()
            },
        ]))
    );
    assert_eq!(resp("NODES EMPTY"), Ok(Response::Nodes(vec![])));
    assert_eq!(
        resp("FIGHT 192.168.0.1 4552 345 34235 TCP 123123123.1"),
        Ok(Response::Fight {
            node_ip: Ipv4Addr::new(192, 168, 0, 1).into(),
            ports: vec![4552, 345, 34235],
            proto: Proto::Tcp,
            ntp_time: NtpTime::new(123_123_123.1).unwrap()
        })
    );
}

#[test]
fn display_matches_pyp2p_bytes() {
    let nodes = Response::Nodes(vec![NodeEntry {
        node_type: NodeType::Passive,
        addr: "1.2.3.4:8000".parse().unwrap(),
    }]);
    assert_eq!(nodes.to_string(), "NODES p:1.2.3.4:8000 ");
    assert_eq!(Response::Nodes(vec![]).to_string(), "NODES EMPTY");
    assert_eq!(
        Response::Challenge {
            client_ip: Ipv4Addr::new(10, 0, 0, 2).into(),
            ports: vec![1000, 1001],
            proto: Proto::Tcp
        }
        .to_string(),
        "CHALLENGE 10.0.0.2 1000 1001 TCP"
    );
    assert_eq!(
        Response::RemoteTcp { port: 4242 }.to_string(),
        "REMOTE TCP 4242"
    );
    assert_eq!(Response::PredictionSet.to_string(), "PREDICTION SET");
    assert_eq!(Response::Reconnect.to_string(), "RECONNECT");
    let remote = Response::RemoteAddr {
        addr: "203.0.113.7:40123".parse().unwrap(),
        time: NtpTime::new(1_700_000_000.25).unwrap(),
    };
    assert_eq!(
        remote.to_string(),
        "REMOTE ADDR 203.0.113.7 40123 1700000000.25"
    );
    assert_eq!(
        "REMOTE ADDR 203.0.113.7 40123 1700000000.25".parse(),
        Ok(remote)
    );
    assert!("REMOTE ADDR 203.0.113.7 40123".parse::<Response>().is_err());
    assert!(
        "REMOTE ADDR 203.0.113.7:40123 1.0"
            .parse::<Response>()
            .is_err()
    );
}

#[test]
fn tolerant_of_extra_whitespace() {
    assert_eq!(
        req("  BOOTSTRAP   7  "),
        Ok(Request::Bootstrap {
            count: 7,
            own_port: None
        })
    );
    assert_eq!(req("QUIT \t"), Ok(Request::Quit));
}

/// Found by the `rendezvous_response` fuzz target: `str::parse::<u16>` takes a leading `+`,
/// so `NODES p:1.2.3.4:+80` was accepted. The port is digits only now, like every other number.
#[test]
fn a_signed_port_in_a_nodes_entry_is_refused() {
    for entry in [
        "p:6.0.1.7:+506",
        "p:[::1]:+80",
        "p:1.2.3.4:",
        "p:1.2.3.4:-1",
    ] {
        assert_eq!(
            entry.parse::<NodeEntry>(),
            Err(ParseError::BadNodeEntry(entry.into())),
            "{entry}"
        );
        assert!(resp(&format!("NODES {entry} ")).is_err(), "{entry}");
    }
    assert!("p:6.0.1.7:506".parse::<NodeEntry>().is_ok());
}

#[test]
fn ipv6_entries_and_targets() {
    let entry: NodeEntry = "p:::1:8000".parse().unwrap();
    assert_eq!(
        entry.addr,
        SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 8000)
    );
    assert_eq!(
        req("CANDIDATE [::1]:9 TCP 1"),
        Ok(Request::Candidate {
            node: NodeTarget::Addr("[::1]:9".parse().unwrap()),
            proto: Proto::Tcp,
            ports: vec![1]
        })
    );
}

/// One bad line per error variant, with the variant it must produce.
#[test]
fn every_error_variant_is_reachable() {
    assert_eq!(req(""), Err(ParseError::Empty));
    assert_eq!(req("   "), Err(ParseError::Empty));
    assert_eq!(resp(""), Err(ParseError::Empty));
    assert_eq!(
        req("HELLO world"),
        Err(ParseError::UnknownCommand("HELLO world".into()))
    );
    assert!(matches!(
        req("BOOTSTRAPX 1"),
        Err(ParseError::UnknownCommand(_))
    ));
    assert!(matches!(resp("WHAT"), Err(ParseError::UnknownCommand(_))));
    assert_eq!(
        req("BOOTSTRAP"),
        Err(ParseError::MissingArgument {
            command: "BOOTSTRAP",
            argument: "n"
        })
    );
    assert_eq!(
        req("QUIT now"),
        Err(ParseError::ExtraArgument {
            command: "QUIT",
            extra: "now".into()
        })
    );
    assert_eq!(
        req("BOOTSTRAP 101"),
        Err(ParseError::BadNumber {
            command: "BOOTSTRAP",
            argument: "n",
            value: "101".into(),
            min: 1,
            max: 100
        })
    );
    assert!(matches!(
        req("BOOTSTRAP 0"),
        Err(ParseError::BadNumber { .. })
    ));
    assert!(matches!(
        req("BOOTSTRAP +5"),
        Err(ParseError::BadNumber { .. })
    ));
    assert!(matches!(
        req("PASSIVE READY 70000 1"),
        Err(ParseError::BadNumber { .. })
    ));
    assert!(matches!(
        req("CANDIDATE 1.2.3.4 TCP 70000"),
        Err(ParseError::BadNumber { .. })
    ));
    assert_eq!(
        req("CANDIDATE nothere TCP 1"),
        Err(ParseError::BadAddress {
            command: "CANDIDATE",
            argument: "node_ip",
            value: "nothere".into()
        })
    );
    assert!(matches!(
        req("ACCEPT 1.2.3 5 TCP 1"),
        Err(ParseError::BadAddress { .. })
    ));
    assert_eq!(
        req("CANDIDATE 1.2.3.4 SCTP 5"),
        Err(ParseError::BadProtocol {
            command: "CANDIDATE",
            value: "SCTP".into()
        })
    );
    assert_eq!(
        req("CANDIDATE 1.2.3.4 TCP"),
        Err(ParseError::PortCount {
            command: "CANDIDATE",
            count: 0,
            max: MAX_PREDICTED_PORTS
        })
    );
    let many = vec!["1"; MAX_PREDICTED_PORTS + 1].join(" ");
    assert!(matches!(
        req(&format!("ACCEPT 1.2.3.4 {many} TCP 5")),
        Err(ParseError::PortCount { count: 33, .. })
    ));
    assert!(matches!(
        req(&format!("CANDIDATE 1.2.3.4 TCP {many}")),
        Err(ParseError::PortCount { count: 33, .. })
    ));
    assert!(matches!(
        resp("CHALLENGE 1.2.3.4 TCP"),
        Err(ParseError::PortCount { count: 0, .. })
    ));
    assert_eq!(
        req("ACCEPT 1.2.3.4 5 TCP soon"),
        Err(ParseError::BadTime {
            command: "ACCEPT",
            value: "soon".into()
        })
    );
    assert!(matches!(
        resp("FIGHT 1.2.3.4 5 TCP -1"),
        Err(ParseError::BadTime { .. })
    ));
    assert!(matches!(
        resp("FIGHT 1.2.3.4 5 TCP 1.2.3"),
        Err(ParseError::BadTime { .. })
    ));
    assert_eq!(
        resp("NODES x:1.2.3.4:5"),
        Err(ParseError::BadNodeEntry("x:1.2.3.4:5".into()))
    );
    assert!(matches!(
        resp("NODES p:1.2.3.4"),
        Err(ParseError::BadNodeEntry(_))
    ));
    assert!(matches!(
        resp("NODES p:1.2.3.4:99999"),
        Err(ParseError::BadNodeEntry(_))
    ));
    assert!(matches!(
        resp("NODES pp:1.2.3.4:1"),
        Err(ParseError::BadNodeEntry(_))
    ));
    assert!(matches!(
        resp("NODES"),
        Err(ParseError::MissingArgument { .. })
    ));
    assert!(matches!(
        resp("NODES EMPTY p:1.2.3.4:1"),
        Err(ParseError::ExtraArgument { .. })
    ));
    let long = "x".repeat(MAX_TEXT_BYTES + 1);
    assert_eq!(
        req(&format!("SOURCE TCP {long}")),
        Err(ParseError::BadText {
            command: "SOURCE TCP",
            len: MAX_TEXT_BYTES + 1,
            max: MAX_TEXT_BYTES
        })
    );
    assert!(matches!(
        resp("ERROR a\nb"),
        Err(ParseError::BadText { .. })
    ));
}

#[test]
fn relay_lines_parse_and_display() {
    let hex = "0123456789abcdef".repeat(4);
    let token: RelayToken = hex.parse().unwrap();
    assert_eq!(
        token.as_bytes()[..8],
        [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
    );
    assert_eq!(token.to_string(), hex);
    assert_eq!(RelayToken::from_bytes(*token.as_bytes()), token);
    assert_eq!(req(&format!("RELAY {hex}")), Ok(Request::Relay { token }));
    assert_eq!(
        req(&format!("  RELAY   {hex} ")),
        Ok(Request::Relay { token })
    );
    assert_eq!(Request::Relay { token }.to_string(), format!("RELAY {hex}"));
    assert_eq!(resp("RELAY WAITING"), Ok(Response::RelayWaiting));
    assert_eq!(resp("RELAY OK"), Ok(Response::RelayOk));
    assert_eq!(Response::RelayWaiting.to_string(), "RELAY WAITING");
    assert_eq!(Response::RelayOk.to_string(), "RELAY OK");
    // Logs see only a prefix of the secret.
    assert_eq!(format!("{token:?}"), "RelayToken(01234567...)");
    assert_eq!(token.short(), "01234567");
}

/// Every way a relay token or line can be wrong, with the variant it must produce.
#[test]
fn relay_errors_are_typed() {
    let good = "a".repeat(RELAY_TOKEN_HEX_CHARS);
    assert_eq!(
        "a".repeat(63).parse::<RelayToken>(),
        Err(ParseError::TokenLength {
            len: 63,
            expected: 64
        })
    );
    assert_eq!(
        "a".repeat(65).parse::<RelayToken>(),
        Err(ParseError::TokenLength {
            len: 65,
            expected: 64
        })
    );
    // Length counts characters, not bytes: 64 'é' are 128 bytes but still 64 characters.
    assert_eq!(
        "é".repeat(64).parse::<RelayToken>(),
        Err(ParseError::TokenNotHex {
            position: 0,
            found: 'é'
        })
    );
    let mut not_hex = good.clone();
    not_hex.replace_range(10..11, "g");
    assert_eq!(
        not_hex.parse::<RelayToken>(),
        Err(ParseError::TokenNotHex {
            position: 10,
            found: 'g'
        })
    );
    let mut upper = good.clone();
    upper.replace_range(63..64, "F");
    assert_eq!(
        upper.parse::<RelayToken>(),
        Err(ParseError::TokenUppercase {
            position: 63,
            found: 'F'
        })
    );
    assert_eq!(
        req("RELAY"),
        Err(ParseError::MissingArgument {
            command: "RELAY",
            argument: "token"
        })
    );
    assert_eq!(
        req(&format!("RELAY {good} again")),
        Err(ParseError::ExtraArgument {
            command: "RELAY",
            extra: "again".into()
        })
    );
    assert_eq!(
        req("RELAY WAITING"),
        Err(ParseError::TokenLength {
            len: 7,
            expected: 64
        })
    );
    assert!(matches!(
        req(&format!("RELAY {upper}")),
        Err(ParseError::TokenUppercase { .. })
    ));
    assert!(matches!(
        resp("RELAY OK now"),
        Err(ParseError::ExtraArgument { .. })
    ));
    assert!(matches!(
        resp("RELAY WAITING 1"),
        Err(ParseError::ExtraArgument { .. })
    ));
    assert!(matches!(resp("RELAY"), Err(ParseError::UnknownCommand(_))));
    assert_eq!(
        req("RELAY abc").unwrap_err().to_string(),
        "RELAY: <token> must be 64 lowercase hex characters, got 3"
    );
    assert_eq!(
        upper.parse::<RelayToken>().unwrap_err().to_string(),
        "RELAY: <token> must be lowercase hex, got uppercase 'F' at position 63"
    );
    assert_eq!(
        not_hex.parse::<RelayToken>().unwrap_err().to_string(),
        "RELAY: <token> must be lowercase hex, got 'g' at position 10"
    );
}

#[test]
fn error_messages_name_the_value() {
    assert_eq!(
        req("BOOTSTRAP 500").unwrap_err().to_string(),
        "BOOTSTRAP: <n> must be an integer in 1..=100, got \"500\""
    );
    assert_eq!(
        req("FOO").unwrap_err().to_string(),
        "unknown command: \"FOO\""
    );
}

#[test]
fn error_reply_is_one_bounded_line() {
    let reason = format!("bad {}\r\n{}", "\u{7}", "é".repeat(MAX_TEXT_BYTES));
    let Response::Error(text) = Response::error(&reason) else {
        panic!("not an error")
    };
    assert!(text.len() <= MAX_TEXT_BYTES);
    assert!(!text.contains(['\r', '\n', '\u{7}']));
    assert_eq!(
        resp(&Response::Error(text.clone()).to_string()),
        Ok(Response::Error(text))
    );
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn ports() -> impl Strategy<Value = Vec<u16>> {
    proptest::collection::vec(port(), 1..=MAX_PREDICTED_PORTS)
}

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)]
}

fn ntp_time() -> impl Strategy<Value = NtpTime> {
    prop_oneof![
        (0u32..u32::MAX).prop_map(|s| NtpTime::new(f64::from(s)).unwrap()),
        (0.0f64..1e12).prop_map(|s| NtpTime::new(s).unwrap()),
        any::<f64>().prop_filter_map("finite, >= 0", |s| NtpTime::new(s.abs())),
    ]
}

fn text() -> impl Strategy<Value = String> {
    "[^\r\n]{0,64}"
}

fn node_type() -> impl Strategy<Value = NodeType> {
    prop_oneof![
        Just(NodeType::Passive),
        Just(NodeType::Active),
        Just(NodeType::Simultaneous)
    ]
}

fn relay_token() -> impl Strategy<Value = RelayToken> {
    any::<[u8; RELAY_TOKEN_BYTES]>().prop_map(RelayToken::from_bytes)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        relay_token().prop_map(|token| Request::Relay { token }),
        (1..=MAX_BOOTSTRAP, proptest::option::of(port()))
            .prop_map(|(count, own_port)| Request::Bootstrap { count, own_port }),
        (
            prop_oneof![Just(Family::Ipv4), Just(Family::Ipv6), Just(Family::Any)],
            1..=MAX_BOOTSTRAP,
            proptest::option::of(port())
        )
            .prop_map(|(family, count, own_port)| Request::BootstrapFamily {
                family,
                count,
                own_port
            }),
        (any::<u16>(), any::<u32>())
            .prop_map(|(port, max_inbound)| Request::PassiveReady { port, max_inbound }),
        (any::<u16>(), any::<u32>())
            .prop_map(|(port, max_inbound)| Request::SimultaneousReady { port, max_inbound }),
        proptest::option::of(text()).prop_map(|text| Request::SourceTcp { text }),
        Just(Request::SourceAddr),
        (
            prop_oneof![
                ip().prop_map(NodeTarget::Ip),
                (ip(), any::<u16>()).prop_map(|(ip, p)| NodeTarget::Addr(SocketAddr::new(ip, p)))
            ],
            proto(),
            ports()
        )
            .prop_map(|(node, proto, ports)| Request::Candidate { node, proto, ports }),
        (ip(), ports(), proto(), ntp_time()).prop_map(|(client_ip, ports, proto, ntp_time)| {
            Request::Accept {
                client_ip,
                ports,
                proto,
                ntp_time,
            }
        }),
        proptest::option::of(any::<u16>()).prop_map(|port| Request::Clear { port }),
        Just(Request::Quit),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        proptest::collection::vec(
            (node_type(), ip(), any::<u16>()).prop_map(|(node_type, ip, port)| NodeEntry {
                node_type,
                addr: SocketAddr::new(ip, port)
            }),
            0..=usize::from(MAX_BOOTSTRAP)
        )
        .prop_map(Response::Nodes),
        any::<u16>().prop_map(|port| Response::RemoteTcp { port }),
        (ip(), any::<u16>(), ntp_time()).prop_map(|(ip, port, time)| Response::RemoteAddr {
            addr: SocketAddr::new(ip, port),
            time
        }),
        Just(Response::PredictionSet),
        (ip(), ports(), proto()).prop_map(|(client_ip, ports, proto)| Response::Challenge {
            client_ip,
            ports,
            proto
        }),
        (ip(), ports(), proto(), ntp_time()).prop_map(|(node_ip, ports, proto, ntp_time)| {
            Response::Fight {
                node_ip,
                ports,
                proto,
                ntp_time,
            }
        }),
        Just(Response::Reconnect),
        text().prop_map(Response::Error),
        Just(Response::RelayWaiting),
        Just(Response::RelayOk),
    ]
}

proptest! {
    #[test]
    fn every_request_round_trips(r in request()) {
        let line = r.to_string();
        prop_assert!(!line.contains(['\r', '\n']));
        prop_assert_eq!(line.parse::<Request>(), Ok(r));
    }

    #[test]
    fn every_response_round_trips(r in response()) {
        let line = r.to_string();
        prop_assert!(!line.contains(['\r', '\n']));
        prop_assert_eq!(line.parse::<Response>(), Ok(r));
    }

    #[test]
    fn every_relay_token_round_trips(token in relay_token()) {
        let text = token.to_string();
        prop_assert_eq!(text.len(), RELAY_TOKEN_HEX_CHARS);
        prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert_eq!(text.parse::<RelayToken>(), Ok(token));
    }

    /// Any 64-character string parses to a token exactly when it is lowercase hex, and then
    /// displays back to itself.
    #[test]
    fn relay_token_text_is_canonical(text in "[0-9a-fA-Fg-z]{64}") {
        match text.parse::<RelayToken>() {
            Ok(token) => prop_assert_eq!(token.to_string(), text),
            Err(ParseError::TokenUppercase { found, .. }) => prop_assert!(found.is_ascii_uppercase()),
            Err(ParseError::TokenNotHex { found, .. }) => prop_assert!(!found.is_ascii_hexdigit()),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    /// Arbitrary text never panics either parser.
    #[test]
    fn arbitrary_lines_never_panic(line in "\\PC{0,200}") {
        let _ = line.parse::<Request>();
        let _ = line.parse::<Response>();
    }

    /// Lines built from protocol words in random order never panic and, when they parse,
    /// display to something that parses to the same value.
    #[test]
    fn word_salad_is_stable(words in proptest::collection::vec(prop_oneof![
        Just("BOOTSTRAP"), Just("PASSIVE"), Just("READY"), Just("SOURCE"), Just("TCP"),
        Just("UDP"), Just("CANDIDATE"), Just("ACCEPT"), Just("CLEAR"), Just("QUIT"),
        Just("1.2.3.4"), Just("::1"), Just("[::1]:5"), Just("0"), Just("5"), Just("65536"),
        Just("1.5"), Just("NODES"), Just("EMPTY"), Just("p:1.2.3.4:5"), Just("FIGHT"),
        Just("CHALLENGE"), Just("ERROR"), Just("REMOTE"), Just("PREDICTION"), Just("SET"),
        Just("RELAY"), Just("OK"), Just("WAITING"), Just("ANY"), Just("IPV6"), Just("IPV4"),
        Just("p:[::1]:5"), Just("ADDR"),
        Just("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"),
    ], 0..8)) {
        let line = words.join(" ");
        if let Ok(r) = line.parse::<Request>() {
            prop_assert_eq!(r.to_string().parse::<Request>(), Ok(r));
        }
        if let Ok(r) = line.parse::<Response>() {
            prop_assert_eq!(r.to_string().parse::<Response>(), Ok(r));
        }
    }
}

/// The IPv6 forms (our extensions): `BOOTSTRAP <family>`, bracketed `NODES` entries,
/// `REMOTE ADDR` with an IPv6 address.
#[test]
fn ipv6_wire_forms() {
    assert_eq!(
        req("BOOTSTRAP ANY 5 6000"),
        Ok(Request::BootstrapFamily {
            family: Family::Any,
            count: 5,
            own_port: Some(6000)
        })
    );
    assert_eq!(
        req("BOOTSTRAP IPV6 1"),
        Ok(Request::BootstrapFamily {
            family: Family::Ipv6,
            count: 1,
            own_port: None
        })
    );
    assert_eq!(
        req("BOOTSTRAP IPV6"),
        Err(ParseError::MissingArgument {
            command: "BOOTSTRAP",
            argument: "n"
        })
    );
    assert!(
        req("BOOTSTRAP ipv6 1").is_err(),
        "family words are uppercase"
    );
    let entry = NodeEntry {
        node_type: NodeType::Passive,
        addr: "[2001:db8::1]:5000".parse().unwrap(),
    };
    assert_eq!(entry.to_string(), "p:[2001:db8::1]:5000");
    assert_eq!("p:[2001:db8::1]:5000".parse(), Ok(entry));
    assert_eq!(
        "p:2001:db8::1:5000".parse(),
        Ok(entry),
        "the bare form still parses"
    );
    for bad in ["p:[1.2.3.4]:5", "p:[2001:db8::1]5000", "p:[::1:5", "p:[]:5"] {
        assert!(bad.parse::<NodeEntry>().is_err(), "{bad}");
    }
    let remote = Response::RemoteAddr {
        addr: "[2001:db8:1::2]:40312".parse().unwrap(),
        time: NtpTime::new(1_700_000_000.25).unwrap(),
    };
    assert_eq!(
        remote.to_string(),
        "REMOTE ADDR 2001:db8:1::2 40312 1700000000.25"
    );
    assert_eq!(
        resp("REMOTE ADDR 2001:db8:1::2 40312 1700000000.25"),
        Ok(remote)
    );
    assert_eq!(
        Family::of("::ffff:192.0.2.1".parse().unwrap()),
        Family::Ipv4
    );
    for family in [Family::Ipv4, Family::Ipv6, Family::Any] {
        assert_eq!(Family::from_word(family.word()), Some(family));
        assert!(Family::WORDS.contains(&family.word()));
    }
}
