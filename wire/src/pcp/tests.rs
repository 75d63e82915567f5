//! PCP vectors written field by field from RFC 6887's formats, a datagram captured from a real
//! miniupnpd 2.3.1, round trips, every result code and every error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const NONCE: Nonce = Nonce([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn request() -> MapRequest {
    MapRequest::new(v4(192, 0, 2, 33), NONCE, Protocol::TCP, 12345, 7200)
}

fn success(req: &MapRequest, port: u16, ip: IpAddr, lifetime: u32) -> Response {
    Response {
        result: ResultCode::Success,
        lifetime_secs: lifetime,
        epoch_secs: 1000,
        body: ResponseBody::Map(req.answer(port, ip)),
    }
}

/// RFC 6887 §7.1 + §11.1: a MAP request for TCP 12345 of 192.0.2.33, 7200 s, external port
/// 12345 suggested, any IPv4 address (`::ffff:0.0.0.0`).
const MAP_REQUEST_V4: &str = "
    02 01 0000 00001c20 00000000000000000000ffffc0000221
    0102030405060708090a0b0c 06 000000 3039 3039 00000000000000000000ffff00000000";

#[test]
fn map_request_matches_the_rfc_layout_byte_for_byte() {
    let bytes = Request::Map(request()).encode();
    assert_eq!(bytes, hex(MAP_REQUEST_V4));
    assert_eq!(Request::parse(&bytes), Ok(Request::Map(request())));
}

/// RFC 6887 §7.2 + §11.2: SUCCESS, 3600 s, epoch 1000, TCP 12345 -> 203.0.113.7:40000, with
/// `PREFER_FAILURE` echoed (§13.2: code 2, no data).
const MAP_RESPONSE_V4: &str = "
    02 81 00 00 00000e10 000003e8 000000000000000000000000
    0102030405060708090a0b0c 06 000000 3039 9c40 00000000000000000000ffffcb007107
    02 00 0000";

#[test]
fn map_response_matches_the_rfc_layout_and_grants_what_it_says() {
    let parsed = Response::parse(&hex(MAP_RESPONSE_V4)).unwrap();
    let mut data = request().answer(40000, v4(203, 0, 113, 7));
    data.options.push(PcpOption::PreferFailure);
    let expected = Response {
        result: ResultCode::Success,
        lifetime_secs: 3600,
        epoch_secs: 1000,
        body: ResponseBody::Map(data),
    };
    assert_eq!(parsed, expected);
    assert_eq!(expected.encode(), hex(MAP_RESPONSE_V4));
    let grant = request().grant(&parsed).unwrap();
    assert_eq!(grant.external, "203.0.113.7:40000".parse().unwrap());
    assert_eq!((grant.lifetime_secs, grant.epoch_secs), (3600, 1000));
}

/// An IPv6 pinhole (§11.1 with an IPv6 client): UDP 4500 of `2001:db8:1::2`, external address
/// left to the server (`::`), `THIRD_PARTY` and `FILTER` options (§13.1, §13.3).
const MAP_REQUEST_V6: &str = "
    02 01 0000 0000003c 20010db8000100000000000000000002
    0102030405060708090a0b0c 11 000000 1194 0000 00000000000000000000000000000000
    01 00 0010 20010db8000100000000000000000009
    03 00 0014 00 80 0050 20010db8000000000000000000000002";

#[test]
fn an_ipv6_request_with_options_matches_the_rfc_layout() {
    let client: IpAddr = "2001:db8:1::2".parse().unwrap();
    let mut req = MapRequest::new(client, NONCE, Protocol::UDP, 4500, 60);
    req.map.external_port = 0;
    req.map.options = vec![
        PcpOption::ThirdParty("2001:db8:1::9".parse().unwrap()),
        PcpOption::Filter {
            prefix_len: 128,
            remote_port: 80,
            remote: "2001:db8::2".parse().unwrap(),
        },
    ];
    assert_eq!(req.map.external_ip, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    let bytes = Request::Map(req.clone()).encode();
    assert_eq!(bytes, hex(MAP_REQUEST_V6));
    assert_eq!(Request::parse(&bytes), Ok(Request::Map(req)));
}

#[test]
fn announce_is_a_bare_header_both_ways() {
    let client = v4(192, 168, 1, 2);
    let bytes = Request::Announce { client }.encode();
    assert_eq!(
        bytes,
        hex("02 00 0000 00000000 00000000000000000000ffffc0a80102")
    );
    assert_eq!(Request::parse(&bytes), Ok(Request::Announce { client }));
    // miniupnpd 2.3.1's answer (captured): SUCCESS, lifetime echoed, epoch 4796.
    let answer = hex("02 80 00 00 0000001e 000012bc 000000000000000000000000");
    let parsed = Response::parse(&answer).unwrap();
    assert_eq!(parsed.body, ResponseBody::Announce);
    assert_eq!(
        (parsed.result, parsed.epoch_secs),
        (ResultCode::Success, 4796)
    );
    assert_eq!(parsed.encode(), answer);
}

#[test]
fn a_real_miniupnpd_answer_grants_the_mapping() {
    // Captured in the lab: miniupnpd 2.3.1 on nat-a (WAN 11.0.0.101) mapping TCP 50500 of
    // 192.168.1.2 for 60 s.
    let answer = hex("028100000000003c000012640000000000000000000000000
         6722c8d838744d69c9d215706000000c544c54400000000000000000000ffff0b000065");
    let nonce = Nonce([
        0x06, 0x72, 0x2c, 0x8d, 0x83, 0x87, 0x44, 0xd6, 0x9c, 0x9d, 0x21, 0x57,
    ]);
    let req = MapRequest::new(v4(192, 168, 1, 2), nonce, Protocol::TCP, 50500, 60);
    let grant = req.grant(&Response::parse(&answer).unwrap()).unwrap();
    assert_eq!(grant.external, "11.0.0.101:50500".parse().unwrap());
    assert_eq!((grant.lifetime_secs, grant.epoch_secs), (60, 4708));
}

#[test]
fn a_natpmp_server_answer_says_fall_back() {
    // RFC 6886 §3.5: version 0, opcode 128 + 2, result 1 (unsupported version), epoch.
    let answer = hex("00 82 0001 00001234");
    let err = Response::parse(&answer).unwrap_err();
    assert_eq!(err, PcpError::NatPmpServer { result_code: 1 });
    assert!(err.to_string().contains("speaks NAT-PMP"), "{err}");
    assert!(!err.is_not_an_answer());
    assert_eq!(
        Response::parse(&[0]),
        Err(PcpError::NatPmpServer { result_code: 0 })
    );
}

#[test]
fn every_result_code_is_reached_and_explained() {
    let req = request();
    for (n, code) in ResultCode::DEFINED.into_iter().enumerate() {
        assert_eq!(usize::from(code.code()), n);
        assert_eq!(ResultCode::from_code(code.code()), code);
        let response = Response {
            result: code,
            lifetime_secs: 30,
            epoch_secs: 5,
            body: ResponseBody::Map(req.answer(0, v4(0, 0, 0, 0))),
        };
        let parsed = Response::parse(&response.encode()).unwrap();
        assert_eq!(parsed.result, code);
        let text = code.to_string();
        assert!(text.starts_with(code.name()), "{text}");
        assert!(text.contains(&format!("({n})")), "{text}");
        if code == ResultCode::Success {
            continue;
        }
        let err = req.grant(&parsed).unwrap_err();
        assert_eq!(
            err,
            PcpError::Refused {
                result: code,
                lifetime_secs: 30
            }
        );
        assert!(err.to_string().contains(code.name()), "{err}");
        assert!(err.to_string().contains("30 s"), "{err}");
    }
    let unknown = ResultCode::from_code(99);
    assert_eq!(unknown, ResultCode::Other(99));
    assert_eq!(unknown.code(), 99);
    assert!(unknown.to_string().contains("(99)"));
    let text = ResultCode::AddressMismatch.to_string();
    assert!(text.contains("ADDRESS_MISMATCH (12)") && text.contains("NAT"));
}

#[test]
fn answers_for_another_request_are_not_answers() {
    let req = request();
    let ok = success(&req, 12345, v4(203, 0, 113, 7), 7200);
    assert!(req.check_answer(&ok).is_ok());
    let change = |f: &dyn Fn(&mut MapData)| {
        let mut r = ok.clone();
        if let ResponseBody::Map(m) = &mut r.body {
            f(m);
        }
        req.grant(&r).unwrap_err()
    };
    let e = change(&|m| m.nonce = Nonce([9; 12]));
    assert!(e.is_not_an_answer());
    assert!(
        e.to_string().contains("nonce is 090909") && e.to_string().contains("0102030405"),
        "{e}"
    );
    let e = change(&|m| m.protocol = Protocol::UDP);
    assert!(
        e.to_string().contains("protocol is UDP, expected TCP"),
        "{e}"
    );
    let e = change(&|m| m.internal_port = 1);
    assert!(
        e.to_string().contains("internal port is 1, expected 12345"),
        "{e}"
    );
    let announce = Response {
        body: ResponseBody::Announce,
        ..ok.clone()
    };
    let e = req.grant(&announce).unwrap_err();
    assert!(
        e.to_string().contains("opcode is ANNOUNCE, expected MAP"),
        "{e}"
    );
}

#[test]
fn lifetimes_zero_grants_and_deletion() {
    let req = request();
    let e = req
        .grant(&success(&req, 12345, v4(203, 0, 113, 7), 0))
        .unwrap_err();
    assert_eq!(
        e,
        PcpError::Empty {
            what: "a lifetime of 0 s".into()
        }
    );
    let e = req
        .grant(&success(&req, 0, v4(203, 0, 113, 7), 60))
        .unwrap_err();
    assert!(e.to_string().contains("external port 0: no mapping"), "{e}");
    // A deletion (lifetime 0) is answered with lifetime 0.
    let delete = MapRequest {
        lifetime_secs: 0,
        ..request()
    };
    let g = delete
        .grant(&success(&delete, 12345, v4(203, 0, 113, 7), 0))
        .unwrap();
    assert_eq!(g.lifetime_secs, 0);
    // The server may grant less (or more) than asked: the grant says what it gave.
    let g = req
        .grant(&success(&req, 12345, v4(203, 0, 113, 7), 120))
        .unwrap();
    assert_eq!(g.lifetime_secs, 120);
}

#[test]
fn length_version_and_direction_errors() {
    let good = hex(MAP_RESPONSE_V4);
    assert_eq!(
        Response::parse(&good[..20]),
        Err(PcpError::TooShort {
            len: 20,
            what: "the header",
            min: 24
        })
    );
    let e = Response::parse(&good[..48]).unwrap_err();
    assert!(
        e.to_string()
            .contains("48 bytes is too short (a MAP message needs 60)"),
        "{e}"
    );
    assert_eq!(
        Response::parse(&good[..62]),
        Err(PcpError::Unaligned { len: 62 })
    );
    let mut long = good.clone();
    long.resize(1104, 0);
    assert_eq!(Response::parse(&long), Err(PcpError::TooLong { len: 1104 }));
    let mut v1 = good.clone();
    v1[0] = 1;
    let e = Response::parse(&v1).unwrap_err();
    assert_eq!(e, PcpError::Version(1));
    assert!(e.to_string().contains("version 1 is not supported"));
    let e = Request::parse(&good).unwrap_err();
    assert!(
        e.to_string()
            .contains("expected a PCP request, got a response"),
        "{e}"
    );
    let e = Response::parse(&hex(MAP_REQUEST_V4)).unwrap_err();
    assert!(e.is_not_an_answer(), "{e}");
    let mut peer = good.clone();
    peer[1] = 0x82;
    assert_eq!(Response::parse(&peer), Err(PcpError::Opcode(2)));
}

#[test]
fn option_errors_name_the_option() {
    let base = hex(&MAP_RESPONSE_V4.replace("02 00 0000", ""));
    let with = |opts: &str| {
        let mut b = base.clone();
        b.extend(hex(opts));
        Response::parse(&b)
    };
    // THIRD_PARTY with 4 bytes of data.
    let e = with("01 00 0004 c0000201").unwrap_err();
    assert!(
        e.to_string()
            .contains("THIRD_PARTY (1) has 4 data bytes, expected 16"),
        "{e}"
    );
    assert!(matches!(
        with("02 00 0004 00000000"),
        Err(PcpError::OptionLength { code: 2, .. })
    ));
    assert!(matches!(
        with("03 00 0000"),
        Err(PcpError::OptionLength { code: 3, .. })
    ));
    // An option whose data runs past the end.
    let e = with("80 00 0008 00000000").unwrap_err();
    assert_eq!(
        e,
        PcpError::OptionTruncated {
            code: 128,
            at: 60,
            len: 68
        }
    );
    // Unknown options are kept, padding skipped.
    let r = with("80 00 0001 ff000000 c8 00 0000").unwrap();
    let ResponseBody::Map(m) = r.body else {
        panic!()
    };
    assert_eq!(
        m.options,
        vec![
            PcpOption::Other {
                code: 128,
                data: vec![0xff]
            },
            PcpOption::Other {
                code: 200,
                data: vec![]
            }
        ]
    );
    // The cap on options.
    let many = "02 00 0000 ".repeat(MAX_OPTIONS + 1);
    assert_eq!(with(&many), Err(PcpError::TooManyOptions));
    assert!(with(&"02 00 0000 ".repeat(MAX_OPTIONS)).is_ok());
}

#[test]
fn addresses_travel_ipv4_mapped() {
    assert_eq!(
        encode_address(v4(0, 0, 0, 0)),
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
    );
    assert_eq!(encode_address(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), [0; 16]);
    assert_eq!(decode_address([0; 16]), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
    assert_eq!(decode_address(encode_address(mapped)), v4(10, 1, 2, 3));
}

#[test]
fn nonce_shows_as_hex() {
    assert_eq!(NONCE.to_string(), "0102030405060708090a0b0c");
    assert_eq!(format!("{NONCE:?}"), "Nonce(0102030405060708090a0b0c)");
    assert_eq!(Protocol(132).to_string(), "protocol 132");
    assert_eq!(Protocol::ALL.to_string(), "all protocols");
}

#[test]
fn epoch_continuity_follows_rfc_6887_section_8_5() {
    let s = Duration::from_secs;
    assert!(epoch_is_continuous((s(0), 100), (s(1000), 1000 + 100)));
    // Within 2 s + 1/16 either way.
    assert!(epoch_is_continuous(
        (s(0), 100),
        (s(1600), 100 + 1600 - 102)
    ));
    assert!(!epoch_is_continuous(
        (s(0), 100),
        (s(1600), 100 + 1600 - 103)
    ));
    assert!(epoch_is_continuous(
        (s(0), 100),
        (s(1600), 100 + 1600 + 102)
    ));
    assert!(!epoch_is_continuous(
        (s(0), 100),
        (s(1600), 100 + 1600 + 110)
    ));
    assert!(!epoch_is_continuous((s(0), 100), (s(0), 98)));
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(decode_address),
    ]
}

fn option() -> impl Strategy<Value = PcpOption> {
    prop_oneof![
        ip().prop_map(PcpOption::ThirdParty),
        Just(PcpOption::PreferFailure),
        (any::<u8>(), any::<u16>(), ip()).prop_map(|(prefix_len, remote_port, remote)| {
            PcpOption::Filter {
                prefix_len,
                remote_port,
                remote,
            }
        }),
        (
            any::<u8>().prop_filter("not a known code", |c| !(1..=3).contains(c)),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(code, data)| PcpOption::Other { code, data }),
    ]
}

fn map_data() -> impl Strategy<Value = MapData> {
    (
        any::<[u8; 12]>(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        ip(),
        prop::collection::vec(option(), 0..=MAX_OPTIONS),
    )
        .prop_map(|(n, p, i, e, ip, options)| MapData {
            nonce: Nonce(n),
            protocol: Protocol(p),
            internal_port: i,
            external_port: e,
            external_ip: ip,
            options,
        })
}

proptest! {
    #[test]
    fn requests_round_trip(lifetime in any::<u32>(), client in ip(), d in map_data(), announce in any::<bool>()) {
        let req = if announce {
            Request::Announce { client }
        } else {
            Request::Map(MapRequest { lifetime_secs: lifetime, client, map: d })
        };
        let bytes = req.encode();
        prop_assert!(bytes.len() <= MAX_MESSAGE_BYTES && bytes.len() % 4 == 0);
        prop_assert_eq!(Request::parse(&bytes), Ok(req));
    }

    #[test]
    fn responses_round_trip(code in any::<u8>(), lifetime in any::<u32>(), epoch in any::<u32>(), d in map_data(), announce in any::<bool>()) {
        let resp = Response {
            result: ResultCode::from_code(code),
            lifetime_secs: lifetime,
            epoch_secs: epoch,
            body: if announce { ResponseBody::Announce } else { ResponseBody::Map(d) },
        };
        prop_assert_eq!(Response::parse(&resp.encode()), Ok(resp));
    }

    #[test]
    fn any_datagram_parses_or_errs_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
        if let Ok(r) = Response::parse(&bytes) {
            prop_assert_eq!(Response::parse(&r.encode()), Ok(r));
        }
        if let Ok(r) = Request::parse(&bytes) {
            prop_assert_eq!(Request::parse(&r.encode()), Ok(r));
        }
    }
}
