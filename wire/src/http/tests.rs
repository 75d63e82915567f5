//! Tests of [`super`]: fixed vectors, every error, proptest round trips.

use super::*;

const LIMIT: usize = DEFAULT_MAX_HEAD_BYTES;

#[test]
fn parses_a_pyp2p_request() {
    let wire = b"GET /net.php?action=is_port_forwarded&port=50500&proto=TCP HTTP/1.1\r\n\
        Accept-Encoding: identity\r\nHost: 10.0.0.1:8080\r\nUser-Agent: Python-urllib/3.5\r\n\
        Connection: close\r\n\r\n";
    let req = Request::parse(wire, LIMIT).unwrap();
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/net.php");
    assert_eq!(
        req.query,
        vec![
            ("action".to_owned(), "is_port_forwarded".to_owned()),
            ("port".to_owned(), "50500".to_owned()),
            ("proto".to_owned(), "TCP".to_owned()),
        ]
    );
    assert_eq!(req.version_minor, 1);
    assert_eq!(req.host.as_deref(), Some("10.0.0.1:8080"));
    assert_eq!(req.content_length, None);
    assert_eq!(req.head_len, wire.len());
    assert_eq!(req.header("user-agent"), Some(&b"Python-urllib/3.5"[..]));
    assert_eq!(req.headers.len(), 4);
}

#[test]
fn every_split_point_is_partial_then_complete() {
    let wire = b"GET /v1/check?port=1%32&x=a+b HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc";
    let head_len = wire.len() - 3;
    for cut in 0..head_len {
        let err = Request::parse(&wire[..cut], LIMIT).unwrap_err();
        assert_eq!(err, HttpError::Partial { have: cut }, "cut at {cut}");
        assert!(err.is_partial());
        assert_eq!(err.status(), None);
    }
    let req = Request::parse(wire, LIMIT).unwrap();
    assert_eq!(req.head_len, head_len);
    assert_eq!(req.query_param("port"), Some("12"));
    assert_eq!(req.query_param("x"), Some("a b"));
    assert_eq!(req.query_param("nope"), None);
    assert_eq!(req.content_length, Some(3));
    assert_eq!(req.version_minor, 0);
    assert_eq!(&wire[req.head_len..], b"abc");
}

#[test]
fn oversized_head_is_too_large_not_partial() {
    let mut wire = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    wire.extend(std::iter::repeat_n(b'a', 200));
    let err = Request::parse(&wire, 64).unwrap_err();
    assert_eq!(err, HttpError::TooLarge { limit: 64 });
    assert_eq!(err.status(), Some(431));
    assert_eq!(err.to_string(), "request head too large: over 64 bytes");
    // Exactly at the cap and still incomplete: too large as well.
    assert_eq!(
        Request::parse(&wire[..64], 64),
        Err(HttpError::TooLarge { limit: 64 })
    );
    // A complete head that ends within the cap is fine even with a body after it.
    let mut ok = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    ok.extend(std::iter::repeat_n(b'b', 500));
    assert_eq!(Request::parse(&ok, 64).unwrap().head_len, 18);
}

#[test]
fn too_many_headers() {
    let mut wire = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        wire.extend(format!("X-{i}: v\r\n").bytes());
    }
    wire.extend(b"\r\n");
    let err = Request::parse(&wire, LIMIT).unwrap_err();
    assert_eq!(err, HttpError::TooManyHeaders { limit: MAX_HEADERS });
    assert_eq!(err.status(), Some(431));
}

#[test]
fn malformed_heads() {
    for wire in [
        &b"BOOTSTRAP 5\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let err = Request::parse(wire, LIMIT).unwrap_err();
        assert!(
            matches!(err, HttpError::Malformed { .. }),
            "{wire:?}: {err:?}"
        );
        assert_eq!(err.status(), Some(400));
        assert!(err.to_string().starts_with("malformed request head: "));
    }
}

#[test]
fn bad_percent_encoding() {
    let err = Request::parse(b"GET /a?port=80%2 HTTP/1.1\r\n\r\n", LIMIT).unwrap_err();
    assert_eq!(err.status(), Some(400));
    let HttpError::BadPercentEncoding { part, detail } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*part, "query");
    assert!(detail.contains("\"%2\""), "{detail}");
    let err = Request::parse(b"GET /%zz HTTP/1.1\r\n\r\n", LIMIT).unwrap_err();
    assert!(
        matches!(err, HttpError::BadPercentEncoding { part: "path", .. }),
        "{err:?}"
    );
    let err = Request::parse(b"GET /?a=%c3%28 HTTP/1.1\r\n\r\n", LIMIT).unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
    // Multi-byte characters survive decoding; a % at the very end is an error.
    assert_eq!(percent_decode("%C3%A9t%C3%A9", false).as_deref(), Ok("été"));
    assert!(percent_decode("%", true).is_err());
    assert!(percent_decode("é%", true).is_err());
}

#[test]
fn query_edge_cases() {
    let req = Request::parse(b"GET /p?&a&b=&=c&a=2&&  HTTP/1.1\r\n\r\n", LIMIT);
    // httparse rejects the double space; a clean version:
    assert!(req.is_err());
    let req = Request::parse(b"GET /p?&a&b=&=c&a=2&& HTTP/1.1\r\n\r\n", LIMIT).unwrap();
    assert_eq!(
        req.query,
        vec![
            ("a".to_owned(), String::new()),
            ("b".to_owned(), String::new()),
            (String::new(), "c".to_owned()),
            ("a".to_owned(), "2".to_owned()),
        ]
    );
    assert_eq!(req.query_param("a"), Some(""));
    let req = Request::parse(b"GET /p? HTTP/1.1\r\n\r\n", LIMIT).unwrap();
    assert!(req.query.is_empty());
    assert_eq!(req.path, "/p");
    // A plus in the path is not a space.
    let req = Request::parse(b"GET /a+b%20c HTTP/1.1\r\n\r\n", LIMIT).unwrap();
    assert_eq!(req.path, "/a+b c");
}

#[test]
fn bad_headers() {
    let err = Request::parse(b"POST / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n", LIMIT).unwrap_err();
    assert_eq!(
        err,
        HttpError::BadHeader {
            name: "Content-Length",
            detail: "not a number: \"12x\"".to_owned()
        }
    );
    let err = Request::parse(
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n",
        LIMIT,
    )
    .unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");
    let req = Request::parse(
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n",
        LIMIT,
    )
    .unwrap();
    assert_eq!(req.content_length, Some(2));
    let err = Request::parse(b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n", LIMIT).unwrap_err();
    assert_eq!(err.to_string(), "bad Host header: not UTF-8");
    let err = Request::parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", LIMIT).unwrap_err();
    assert_eq!(err.status(), Some(400));
}

#[test]
fn sniffing() {
    assert_eq!(sniff(b""), Sniff::NeedMore);
    assert_eq!(sniff(b"G"), Sniff::NeedMore);
    assert_eq!(sniff(b"GET "), Sniff::NeedMore);
    assert_eq!(sniff(b"GET /"), Sniff::Http);
    assert_eq!(sniff(b"OPTIONS /x"), Sniff::Http);
    assert_eq!(sniff(b"P"), Sniff::NeedMore); // POST, PUT, PATCH, PASSIVE...
    assert_eq!(sniff(b"PASSIVE READY 1 2\r\n"), Sniff::NotHttp);
    assert_eq!(sniff(b"get / HTTP/1.1"), Sniff::NotHttp);
    assert_eq!(sniff(b"GET  /"), Sniff::NotHttp);
    assert_eq!(sniff(b"\x16\x03\x01"), Sniff::NotHttp); // TLS
    assert!(looks_like_http(b"HEAD / HTTP/1.0\r\n"));
    assert!(!looks_like_http(b"GET"));
}

#[test]
fn renders_responses() {
    let text = String::from_utf8(Response::text(200, "127.0.0.1").render()).unwrap();
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 9\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n127.0.0.1"
    );
    let text = String::from_utf8(
        Response::text(599, "")
            .with_header("X-Evil\r\n", "a\r\nb")
            .render(),
    )
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 599 \r\n"));
    assert!(text.contains("\r\nX-Evil: ab\r\n"));
    assert!(text.ends_with(
        "Content-Length: 0\r\nCache-Control: no-store\r\nConnection: close\r\nX-Evil: ab\r\n\r\n"
    ));
    // What a real client library would parse back.
    let bytes = Response::json(200, "{}").render();
    let mut slots = [httparse::EMPTY_HEADER; 8];
    let mut resp = httparse::Response::new(&mut slots);
    let n = match resp.parse(&bytes).unwrap() {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("partial"),
    };
    assert_eq!(resp.code, Some(200));
    assert_eq!(&bytes[n..], b"{}");
}

#[test]
fn never_panics_on_arbitrary_bytes() {
    // A cheap deterministic sweep over short inputs built from interesting bytes.
    let alphabet = b"GET /?%=&+ \r\nH:1aZ\xff\x00";
    let mut input = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = usize::try_from(state % 40).unwrap();
        input.clear();
        let mut s = state;
        for _ in 0..len {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            input.push(alphabet[usize::try_from(s >> 59).unwrap() % alphabet.len()]);
        }
        let _ = Request::parse(&input, 32);
        let _ = sniff(&input);
    }
}
