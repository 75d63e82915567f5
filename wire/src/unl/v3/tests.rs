use super::*;
use crate::rendezvous::NodeType;
use proptest::prelude::*;

/// RFC 8032 test 1's secret key.
fn rfc8032_secret() -> SigningKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        let hex = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    SigningKey::from_bytes(&seed)
}

fn vector_body() -> UnlBody {
    UnlBody {
        seq: 1_700_000_000_000,
        node_type: NodeType::Passive,
        nat_type: NatType::Preserving,
        forwarding: Forwarding::Upnp,
        addrs: vec![
            UnlAddr {
                scope: Scope::Wan,
                addr: "203.0.113.5:50500".parse().unwrap(),
            },
            UnlAddr {
                scope: Scope::Lan,
                addr: "192.168.1.20:50500".parse().unwrap(),
            },
            UnlAddr {
                scope: Scope::Wan,
                addr: "[2001:db8::5]:50500".parse().unwrap(),
            },
        ],
        rendezvous: vec![
            Endpoint::Host {
                name: "rv.example.net".into(),
                port: 8000,
            },
            Endpoint::Addr("198.51.100.7:8000".parse().unwrap()),
        ],
        mailboxes: vec![Endpoint::Addr("198.51.100.7:8001".parse().unwrap())],
    }
}

/// The README's vector. It was produced by an independent encoder written from the field
/// table (Python, with the `cryptography` package's Ed25519), so it checks the layout too.
const VECTOR: &str = "unl3.A9damAGCsQq31Uv-08lkBzoO4XLz2qYjJa8CGmj3B1EaAAABi8_laABwZ1UDdzTLAHEFxURsNMCoARTFRHc2IAENuAAAAAAAAAAAAAAABcVEAmQOcnYuZXhhbXBsZS5uZXQfQDTGM2QHH0ABNMYzZAcfQWY0_zJgEt6hYt22DdFcyzShJsIoMmPmLqaoDPwK1YEHtCS9g1CJKZ82y7jvywFQivikjHbxqA2NjuJG5vNbAQc";

#[test]
fn the_vector_encodes_and_decodes() {
    let unl = UnlV3::sign(vector_body(), &rfc8032_secret()).unwrap();
    assert_eq!(unl.to_string(), VECTOR);
    assert_eq!(unl.to_bytes().len(), 179);
    let back: UnlV3 = VECTOR.parse().unwrap();
    assert_eq!(back, unl);
    assert_eq!(back.body(), &vector_body());
    assert_eq!(
        back.key().to_string(),
        "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    );
    assert_eq!(back.node_id().to_string(), "q42umaaeyvzicmyqeubj");
    let any: AnyUnl = format!("  {VECTOR}\n").parse().unwrap();
    assert_eq!(any, AnyUnl::V3(unl.clone()));
    assert_eq!(any.key(), Some(unl.key()));
    assert_eq!(any.to_string(), VECTOR);
}

#[test]
fn v2_text_is_still_read_and_produced() {
    let v2 = "AnRBam11OG1IUEhGVkRKOHQ3cEs4c2dtRMWDYbvALwOowOEG0lc=";
    let any: AnyUnl = v2.parse().unwrap();
    assert!(matches!(any, AnyUnl::V2(_)));
    assert_eq!(any.to_string(), v2);
    assert_eq!(any.key(), None);
    assert_eq!(any.node_id().unwrap().to_string(), "tAjmu8mHPHFVDJ8t7pK8");
    // A v3 UNL's v2 form, for a PyP2P peer.
    let unl: UnlV3 = VECTOR.parse().unwrap();
    let down = unl.to_v2();
    assert_eq!(down.node_id, Some(unl.node_id()));
    assert_eq!(down.node_type, NodeType::Passive);
    assert_eq!(down.nat_type, NatType::Preserving);
    assert_eq!(down.forwarding, Forwarding::Upnp);
    assert_eq!(down.port, 50500);
    assert_eq!(down.wan_ip, Ipv4Addr::new(203, 0, 113, 5));
    assert_eq!(down.lan_ip, Ipv4Addr::new(192, 168, 1, 20));
    assert_eq!(down.to_string().parse::<Unl>(), Ok(down));
    assert_eq!(AnyUnl::V3(unl).to_v2(), down);
    // No IPv4 at all: zeros, as PyP2P writes an unknown address.
    let mut body = UnlBody::new(1);
    body.addrs.push(UnlAddr {
        scope: Scope::Wan,
        addr: "[2001:db8::1]:1".parse().unwrap(),
    });
    let v6_only = UnlV3::sign(body, &rfc8032_secret()).unwrap().to_v2();
    assert_eq!((v6_only.port, v6_only.wan_ip), (0, Ipv4Addr::UNSPECIFIED));
}

#[test]
fn flipping_any_byte_fails_to_decode() {
    let unl = UnlV3::sign(vector_body(), &rfc8032_secret()).unwrap();
    let bytes = unl.to_bytes();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            assert!(
                UnlV3::from_bytes(&bad).is_err(),
                "byte {i} ^ {flip:#x} still decodes"
            );
        }
    }
    // And every character of the text, replaced by every other base64url character.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let text = unl.to_string();
    for i in UNL_V3_PREFIX.len()..text.len() {
        for c in alphabet.chars() {
            if text.as_bytes()[i] == c as u8 {
                continue;
            }
            let mut bad = text.clone().into_bytes();
            bad[i] = c as u8;
            let bad = String::from_utf8(bad).unwrap();
            assert!(
                bad.parse::<UnlV3>().is_err(),
                "char {i} -> {c} still decodes"
            );
        }
    }
}

#[test]
fn a_bad_signature_names_the_key() {
    let unl = UnlV3::sign(vector_body(), &rfc8032_secret()).unwrap();
    let mut bytes = unl.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let err = UnlV3::from_bytes(&bytes).unwrap_err();
    assert!(matches!(
        err,
        UnlV3Error::Key(KeyError::BadSignature { .. })
    ));
    assert_eq!(
        err.to_string(),
        "UNL v3: bad signature: not made by key 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo for a p2p unl v3"
    );
    // Another key's signature over the same body.
    let other = UnlV3::sign(vector_body(), &SigningKey::from_bytes(&[5; 32])).unwrap();
    let mut swapped = unl.to_bytes();
    let n = swapped.len();
    swapped[n - 64..].copy_from_slice(other.signature());
    assert!(UnlV3::from_bytes(&swapped).is_err());
}

#[test]
fn every_error_is_reached() {
    let secret = rfc8032_secret();
    let good = UnlV3::sign(vector_body(), &secret).unwrap().to_bytes();
    let text = |b: &[u8]| format!("{UNL_V3_PREFIX}{}", BASE64URL.encode(b));
    assert_eq!("AnRBam11".parse::<UnlV3>(), Err(UnlV3Error::NoPrefix));
    let long = format!("{UNL_V3_PREFIX}{}", "A".repeat(MAX_UNL_V3_TEXT_CHARS));
    assert!(matches!(
        long.parse::<UnlV3>(),
        Err(UnlV3Error::TooLong { .. })
    ));
    assert!(matches!(
        "unl3.A/B".parse::<UnlV3>(),
        Err(UnlV3Error::BadBase64 { .. })
    ));
    assert!(matches!(
        format!("{}=", text(&good)).parse::<UnlV3>(),
        Err(UnlV3Error::BadBase64 { .. })
    ));
    assert_eq!(
        UnlV3::from_bytes(&vec![3; MAX_UNL_V3_BYTES + 1]),
        Err(UnlV3Error::TooManyBytes {
            bytes: MAX_UNL_V3_BYTES + 1
        })
    );
    let err = UnlV3::from_bytes(&good[..100]).unwrap_err();
    assert!(matches!(err, UnlV3Error::Truncated { .. }), "{err}");
    let mut extra = good.clone();
    extra.push(0);
    assert_eq!(
        UnlV3::from_bytes(&extra),
        Err(UnlV3Error::TrailingBytes { extra: 1 })
    );
    let mut v = good.clone();
    v[0] = 2;
    assert_eq!(
        UnlV3::from_bytes(&v),
        Err(UnlV3Error::UnknownValue {
            field: "version",
            value: 2
        })
    );
    // Field bytes: node type at 41, NAT 42, forwarding 43, address count 44, first scope 45,
    // first family 46.
    for (at, field) in [
        (41, "node type"),
        (42, "NAT type"),
        (43, "forwarding type"),
        (45, "address scope"),
        (46, "address family"),
    ] {
        let mut b = good.clone();
        b[at] = b'?';
        assert_eq!(
            UnlV3::from_bytes(&b),
            Err(UnlV3Error::UnknownValue { field, value: b'?' }),
            "{field}"
        );
    }
    let mut b = good.clone();
    b[44] = 9;
    assert_eq!(
        UnlV3::from_bytes(&b),
        Err(UnlV3Error::TooMany {
            field: "addresses",
            count: 9,
            limit: MAX_ADDRS
        })
    );
    // The rendezvous list follows 3 addresses (8 + 8 + 20 bytes) at 45.
    let rv = 45 + 36;
    let mut b = good.clone();
    b[rv + 1] = b'x';
    assert_eq!(
        UnlV3::from_bytes(&b),
        Err(UnlV3Error::UnknownValue {
            field: "endpoint kind",
            value: b'x'
        })
    );
    let mut b = good.clone();
    b[rv + 3] = b' ';
    assert!(matches!(
        UnlV3::from_bytes(&b),
        Err(UnlV3Error::BadHost { .. })
    ));
    let mut b = good.clone();
    b[3] = 0; // the key is now another point or none: the key check or the signature fails
    assert!(matches!(UnlV3::from_bytes(&b), Err(UnlV3Error::Key(_))));
}

#[test]
fn signing_refuses_what_cannot_be_encoded() {
    let secret = rfc8032_secret();
    let mut too_many = vector_body();
    too_many.mailboxes = vec![Endpoint::Addr("1.2.3.4:5".parse().unwrap()); 5];
    assert_eq!(
        UnlV3::sign(too_many, &secret),
        Err(UnlV3Error::TooMany {
            field: "mailbox servers",
            count: 5,
            limit: MAX_SERVERS
        })
    );
    let mut bad_host = vector_body();
    bad_host.rendezvous = vec![Endpoint::Host {
        name: "a b".into(),
        port: 1,
    }];
    assert!(matches!(
        UnlV3::sign(bad_host, &secret),
        Err(UnlV3Error::BadHost { .. })
    ));
    assert!(matches!(
        "unl3.AAAA".parse::<AnyUnl>(),
        Err(AnyUnlError::V3(_))
    ));
    assert!(matches!("nope".parse::<AnyUnl>(), Err(AnyUnlError::V2(_))));
}

#[test]
fn the_largest_unl_fits_the_caps() {
    let mut body = vector_body();
    body.addrs = vec![
        UnlAddr {
            scope: Scope::Lan,
            addr: "[::1]:1".parse().unwrap()
        };
        MAX_ADDRS
    ];
    let host = Endpoint::Host {
        name: "h".repeat(MAX_HOST_BYTES),
        port: 65535,
    };
    body.rendezvous = vec![host.clone(); MAX_SERVERS];
    body.mailboxes = vec![host; MAX_SERVERS];
    let unl = UnlV3::sign(body, &rfc8032_secret()).unwrap();
    assert_eq!(unl.to_bytes().len(), MAX_UNL_V3_BYTES);
    let text = unl.to_string();
    assert_eq!(text.len(), MAX_UNL_V3_TEXT_CHARS);
    assert_eq!(text.parse::<UnlV3>(), Ok(unl));
}

fn arb_node_type() -> impl Strategy<Value = NodeType> {
    prop_oneof![
        Just(NodeType::Passive),
        Just(NodeType::Active),
        Just(NodeType::Simultaneous)
    ]
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((Ipv4Addr::from(ip), p))),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((Ipv6Addr::from(ip), p))),
    ]
}

fn arb_endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        arb_addr().prop_map(Endpoint::Addr),
        ("[a-z0-9.-]{1,40}", any::<u16>()).prop_map(|(name, port)| Endpoint::Host { name, port }),
    ]
}

fn arb_body() -> impl Strategy<Value = UnlBody> {
    (
        any::<u64>(),
        arb_node_type(),
        proptest::sample::select(NatType::ALL.to_vec()),
        proptest::sample::select(Forwarding::ALL.to_vec()),
        proptest::collection::vec(
            (any::<bool>(), arb_addr()).prop_map(|(wan, addr)| UnlAddr {
                scope: if wan { Scope::Wan } else { Scope::Lan },
                addr,
            }),
            0..=MAX_ADDRS,
        ),
        proptest::collection::vec(arb_endpoint(), 0..=MAX_SERVERS),
        proptest::collection::vec(arb_endpoint(), 0..=MAX_SERVERS),
    )
        .prop_map(
            |(seq, node_type, nat_type, forwarding, addrs, rendezvous, mailboxes)| UnlBody {
                seq,
                node_type,
                nat_type,
                forwarding,
                addrs,
                rendezvous,
                mailboxes,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every field survives text and bytes, and the text is one clean line.
    #[test]
    fn round_trips(body in arb_body(), seed in any::<[u8; 32]>()) {
        let secret = SigningKey::from_bytes(&seed);
        let unl = UnlV3::sign(body.clone(), &secret).unwrap();
        prop_assert_eq!(unl.body(), &body);
        prop_assert_eq!(unl.key(), &PublicKey::of(&secret));
        let text = unl.to_string();
        prop_assert!(text.len() <= MAX_UNL_V3_TEXT_CHARS);
        prop_assert!(!text.contains(['/', '+', '=', ':', ' ', '\n']));
        prop_assert_eq!(text.parse::<UnlV3>(), Ok(unl.clone()));
        prop_assert_eq!(UnlV3::from_bytes(&unl.to_bytes()), Ok(unl.clone()));
        prop_assert_eq!(text.parse::<AnyUnl>(), Ok(AnyUnl::V3(unl.clone())));
        let v2 = unl.to_v2();
        prop_assert_eq!(v2.to_string().parse::<Unl>(), Ok(v2));
    }

    /// A byte flipped anywhere is refused, never read as another UNL.
    #[test]
    fn any_flip_is_refused(body in arb_body(), at in any::<proptest::sample::Index>(), flip in 1u8..=255) {
        let unl = UnlV3::sign(body, &rfc8032_secret()).unwrap();
        let mut bytes = unl.to_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(UnlV3::from_bytes(&bytes).is_err());
    }
}
