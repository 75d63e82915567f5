//! HTTP request heads (`wire::http::Request::parse`, `percent_decode`, `sniff`), what
//! forwarding-check and dht-msg parse from every HTTP client, and the responses they render.
//!
//! Mode 0: the rest is raw bytes from a client (the first two bytes pick the head cap). The
//! result must be consistent with the cap (`Partial` only under it, `TooLarge` only at it, a
//! complete head within it), a complete head parses the same from its own bytes alone, and
//! every error has a status. Other modes: a request built from arbitrary path segments and
//! query pairs, percent-encoded as a client does, parses back to exactly those strings; and a
//! response with an arbitrary header value renders as one well-formed HTTP response.

#![no_main]

use std::fmt::Write as _;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wire::http::{HttpError, Request, Response, Sniff, percent_decode, sniff};
use p2p_fuzz::assert_http_response;

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn raw(data: &[u8]) {
    let Some((cap, bytes)) = data.split_at_checked(2) else {
        return;
    };
    let max = usize::from(u16::from_le_bytes([cap[0], cap[1]]) % 9000) + 16;
    let _ = sniff(bytes);
    match Request::parse(bytes, max) {
        Ok(req) => {
            assert!(
                req.head_len <= bytes.len().min(max),
                "head_len {} cap {max}",
                req.head_len
            );
            assert_eq!(Request::parse(&bytes[..req.head_len], max), Ok(req.clone()));
            for (name, _) in &req.query {
                assert!(req.query_param(name).is_some());
            }
        }
        Err(HttpError::Partial { have }) => {
            assert_eq!(have, bytes.len());
            assert!(
                bytes.len() < max,
                "Partial at {} bytes with cap {max}",
                bytes.len()
            );
        }
        Err(HttpError::TooLarge { limit }) => {
            assert_eq!(limit, max);
            assert!(bytes.len() >= max);
        }
        Err(e) => assert!(e.status().is_some(), "{e} has no status"),
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = percent_decode(text, true);
        let _ = percent_decode(text, false);
    }
}

fn round_trip(u: &mut Unstructured<'_>) -> Result<()> {
    let segments: Vec<String> = u.arbitrary()?;
    let pairs: Vec<(String, String)> = u.arbitrary()?;
    let mut target = String::new();
    for segment in &segments {
        target.push('/');
        target.push_str(&encode(segment));
    }
    if target.is_empty() {
        target.push('/');
    }
    let mut path = String::new();
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() {
        path.push('/');
    }
    if !pairs.is_empty() {
        target.push('?');
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        target.push_str(&encoded.join("&"));
    }
    let wire = format!("GET {target} HTTP/1.1\r\nHost: example\r\n\r\nbody");
    assert_eq!(sniff(wire.as_bytes()), Sniff::Http);
    let req =
        Request::parse(wire.as_bytes(), wire.len() + 1).unwrap_or_else(|e| panic!("{e}: {wire:?}"));
    assert_eq!(req.path, path);
    assert_eq!(req.query, pairs);
    assert_eq!(req.target, target);
    assert_eq!(req.head_len, wire.len() - 4);
    assert_eq!(req.host.as_deref(), Some("example"));
    for (k, _) in &pairs {
        let first = pairs
            .iter()
            .find(|(k2, _)| k2 == k)
            .map(|(_, v)| v.as_str());
        assert_eq!(req.query_param(k), first);
    }

    // A response carrying arbitrary text in a header and body stays one valid response.
    let status = u.int_in_range(100..=599)?;
    let value: String = u.arbitrary()?;
    let body: Vec<u8> = u.arbitrary()?;
    let value: String = value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let rendered = Response::text(status, body)
        .with_header("X-Reason", &value)
        .render();
    assert_eq!(assert_http_response(&rendered), status);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode == 0 {
        raw(rest);
    } else {
        let _ = round_trip(&mut Unstructured::new(rest));
    }
});
