//! UNL vectors, round-trips and malformed input.

use super::*;
use proptest::prelude::*;

/// PyP2P's own test vector (`tests/test_unl.py`).
const VECTOR: &str = "AnRBam11OG1IUEhGVkRKOHQ3cEs4c2dtRMWDYbvALwOowOEG0lc=";
/// The same 38 bytes, from Python's `base64.b64decode`.
const VECTOR_HEX: &str =
    "0274416a6d75386d4850484656444a387437704b3873676d44c58361bbc02f03a8c0e106d257";

fn vector_bytes() -> Vec<u8> {
    (0..VECTOR_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&VECTOR_HEX[i..i + 2], 16).unwrap())
        .collect()
}

fn sample() -> Unl {
    Unl {
        node_id: Some("alice".parse().unwrap()),
        node_type: NodeType::Passive,
        nat_type: NatType::Random,
        forwarding: Forwarding::Upnp,
        port: 1337,
        wan_ip: Ipv4Addr::new(203, 0, 113, 7),
        lan_ip: Ipv4Addr::new(10, 0, 0, 2),
    }
}

/// Re-signs a payload so that a test can reach the field checks behind the checksum.
fn with_checksum(mut bytes: [u8; UNL_BYTES]) -> String {
    let sum = checksum(&bytes[..UNL_PAYLOAD_BYTES]);
    bytes[UNL_PAYLOAD_BYTES..].copy_from_slice(&sum);
    BASE64.encode(bytes)
}

#[test]
fn pyp2p_vector_decodes_to_its_listed_fields() {
    let unl: Unl = VECTOR.parse().unwrap();
    assert_eq!(
        unl,
        Unl {
            node_id: Some("tAjmu8mHPHFVDJ8t7pK8".parse().unwrap()),
            node_type: NodeType::Simultaneous,
            nat_type: NatType::Preserving,
            forwarding: Forwarding::Manual,
            port: 50500,
            wan_ip: Ipv4Addr::new(192, 187, 97, 131),
            lan_ip: Ipv4Addr::new(192, 168, 3, 47),
        }
    );
    assert_eq!(unl.to_bytes().to_vec(), vector_bytes());
    assert_eq!(unl.to_bytes()[0], UNL_VERSION);
    assert_eq!(unl.to_string(), VECTOR);
    assert_eq!(Unl::from_bytes(&vector_bytes()), Ok(unl));
}

#[test]
fn addresses_are_little_endian_u32s_on_the_wire() {
    let bytes = VECTOR.parse::<Unl>().unwrap().to_bytes();
    assert_eq!(bytes[26..30], [131, 97, 187, 192], "WAN 192.187.97.131");
    assert_eq!(bytes[30..34], [47, 3, 168, 192], "LAN 192.168.3.47");
    assert_eq!(bytes[24..26], 50500u16.to_le_bytes());
}

#[test]
fn nat_types_pyp2p_cannot_read_back_decode() {
    for nat_type in [NatType::Delta, NatType::Unknown] {
        let mut bytes = sample().to_bytes();
        bytes[22] = nat_type.byte();
        let text = with_checksum(bytes);
        let unl: Unl = text.parse().unwrap();
        assert_eq!(unl.nat_type, nat_type);
        assert_eq!(unl.to_string(), text);
    }
    assert_eq!(NatType::from_byte(b'a'), Some(NatType::Delta));
    assert_eq!(NatType::from_byte(b'n'), Some(NatType::Unknown));
}

#[test]
fn no_node_id_is_twenty_nuls() {
    let unl = Unl {
        node_id: None,
        ..sample()
    };
    assert_eq!(unl.to_bytes()[1..21], [0; 20]);
    assert_eq!(unl.to_string().parse::<Unl>().unwrap().node_id, None);
    assert_eq!(NodeId::from_bytes([0; 20]), None);
}

#[test]
fn node_ids() {
    let id: NodeId = "bob".parse().unwrap();
    assert_eq!(id.as_bytes(), b"bob");
    assert_eq!(id.raw()[3..], [0; 17]);
    assert_eq!(id.to_string(), "bob");
    assert_eq!(
        id.mailbox_id(),
        format!("626f62{}", "00".repeat(17)),
        "PyP2P hexlifies all 20 bytes"
    );
    assert_eq!(format!("{id:?}"), "NodeId(\"bob\")");
    let odd = NodeId::from_bytes([0xff; 20]).unwrap();
    assert_eq!(odd.to_string(), "\\xff".repeat(20));
    assert!(matches!(
        "".parse::<NodeId>(),
        Err(UnlError::BadNodeId { .. })
    ));
    assert!(matches!(
        "a".repeat(21).parse::<NodeId>(),
        Err(UnlError::BadNodeId { .. })
    ));
    assert_eq!(
        "a\0b".parse::<NodeId>().unwrap_err().to_string(),
        "bad node id: contains a NUL byte: \"a\\0b\""
    );
}

#[test]
fn surrounding_whitespace_is_ignored() {
    let unl: Unl = format!("  {VECTOR}\r\n").parse().unwrap();
    assert_eq!(unl.to_string(), VECTOR);
}

#[test]
fn every_error_variant_is_reached_with_a_clear_message() {
    assert_eq!(
        VECTOR[..40].parse::<Unl>().unwrap_err().to_string(),
        "UNL has 40 characters, expected 52 (base64 of 38 bytes)"
    );
    let mut bad_char = VECTOR.to_string();
    bad_char.replace_range(5..6, "!");
    assert_eq!(
        bad_char.parse::<Unl>().unwrap_err().to_string(),
        "UNL is not valid base64: invalid character '!' at offset 5"
    );
    // 52 characters that decode to 37 bytes ("==") or 39 bytes (no padding).
    let short = BASE64.encode([1u8; 37]);
    assert_eq!(short.len(), 52);
    assert_eq!(short.parse::<Unl>(), Err(UnlError::BadLength { bytes: 37 }));
    let long = BASE64.encode([1u8; 39]);
    assert_eq!(long.len(), 52);
    assert_eq!(
        long.parse::<Unl>().unwrap_err().to_string(),
        "UNL decodes to 39 bytes, expected 38"
    );
    assert_eq!(
        Unl::from_bytes(&[0; 10]),
        Err(UnlError::BadLength { bytes: 10 })
    );
    let mut bytes = vector_bytes();
    bytes[30] ^= 1; // LAN 192.168.3.47 -> .46
    let err = BASE64.encode(&bytes).parse::<Unl>().unwrap_err();
    assert!(matches!(err, UnlError::BadChecksum { .. }));
    assert!(
        err.to_string()
            .starts_with("UNL checksum mismatch: it carries e106d257, its payload hashes to "),
        "{err}"
    );
    let fields = [
        (
            0,
            UnlField::Version,
            b'\x03',
            "UNL version has unknown value 3 ('\\u{3}')",
        ),
        (
            21,
            UnlField::NodeType,
            b'x',
            "UNL node type has unknown value 120 ('x')",
        ),
        (
            22,
            UnlField::NatType,
            b'z',
            "UNL NAT type has unknown value 122 ('z')",
        ),
        (
            23,
            UnlField::Forwarding,
            b'u',
            "UNL forwarding type has unknown value 117 ('u')",
        ),
    ];
    for (offset, field, value, message) in fields {
        let mut bytes = sample().to_bytes();
        bytes[offset] = value;
        let err = with_checksum(bytes).parse::<Unl>().unwrap_err();
        assert_eq!(err, UnlError::UnknownValue { field, value });
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn a_non_canonical_last_symbol_is_refused() {
    // 'l' in "0lc=" carries two padding bits; 'm' sets one of them.
    let mut text = VECTOR.to_string();
    text.replace_range(50..51, "m");
    assert!(matches!(
        text.parse::<Unl>(),
        Err(UnlError::BadBase64 { detail }) if detail.contains("non-canonical")
    ));
}

#[test]
fn every_truncation_and_every_flipped_bit_of_the_vector_is_an_error() {
    for len in 0..VECTOR.len() {
        assert_eq!(
            VECTOR[..len].parse::<Unl>(),
            Err(UnlError::BadTextLength { chars: len })
        );
    }
    let text = VECTOR.as_bytes();
    for i in 0..text.len() {
        for bit in 0..8 {
            let mut flipped = text.to_vec();
            flipped[i] ^= 1 << bit;
            let flipped = String::from_utf8_lossy(&flipped).into_owned();
            assert!(flipped.parse::<Unl>().is_err(), "{flipped} decoded");
        }
    }
    let bytes = vector_bytes();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1 << bit;
            assert!(matches!(
                Unl::from_bytes(&flipped),
                Err(UnlError::BadChecksum { .. })
            ));
        }
    }
}

#[test]
fn master_order_compares_the_strings() {
    let a: Unl = VECTOR.parse().unwrap();
    let b = sample();
    assert_eq!(a.master_cmp(&b), a.to_string().cmp(&b.to_string()));
    assert_eq!(a.master_cmp(&b), b.master_cmp(&a).reverse());
    assert_eq!(a.master_cmp(&a), Ordering::Equal);
}

fn any_unl() -> impl Strategy<Value = Unl> {
    (
        any::<[u8; 20]>(),
        prop::sample::select(vec![
            NodeType::Passive,
            NodeType::Active,
            NodeType::Simultaneous,
        ]),
        prop::sample::select(NatType::ALL.to_vec()),
        prop::sample::select(Forwarding::ALL.to_vec()),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(id, node_type, nat_type, forwarding, port, wan, lan)| Unl {
                node_id: NodeId::from_bytes(id),
                node_type,
                nat_type,
                forwarding,
                port,
                wan_ip: Ipv4Addr::from(wan),
                lan_ip: Ipv4Addr::from(lan),
            },
        )
}

proptest! {
    #[test]
    fn text_round_trips(unl in any_unl()) {
        let text = unl.to_string();
        prop_assert_eq!(text.len(), UNL_TEXT_CHARS);
        prop_assert_eq!(text.parse::<Unl>(), Ok(unl));
        prop_assert_eq!(Unl::from_bytes(&unl.to_bytes()), Ok(unl));
    }

    #[test]
    fn random_text_never_panics(text in "\\PC{0,80}") {
        let _ = text.parse::<Unl>();
    }

    #[test]
    fn random_base64_alphabet_strings_are_rejected_typed(text in "[A-Za-z0-9+/=]{52}") {
        match text.parse::<Unl>() {
            Ok(unl) => prop_assert_eq!(unl.to_string(), text),
            Err(UnlError::BadBase64 { .. } | UnlError::BadLength { .. }
                | UnlError::BadChecksum { .. } | UnlError::UnknownValue { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = Unl::from_bytes(&bytes);
        let _ = BASE64.encode(&bytes).parse::<Unl>();
        let _ = String::from_utf8_lossy(&bytes).parse::<Unl>();
    }

    #[test]
    fn a_corrupted_valid_unl_is_an_error(unl in any_unl(), at in 0usize..UNL_BYTES, bit in 0u8..8) {
        let mut bytes = unl.to_bytes();
        bytes[at] ^= 1 << bit;
        let is_checksum_error = matches!(
            BASE64.encode(bytes).parse::<Unl>(),
            Err(UnlError::BadChecksum { .. })
        );
        prop_assert!(is_checksum_error);
    }
}
