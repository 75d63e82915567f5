//! Tests of the forwarding-check client: URLs, responses and bodies as byte vectors, and a
//! real loopback server.

use super::*;

#[test]
fn urls() {
    let s: CheckServer = "http://10.0.0.1".parse().unwrap();
    assert_eq!(s.authority(), "10.0.0.1:80");
    assert_eq!(s.prefix, "");
    let s: CheckServer = "http://[::1]:8080/".parse().unwrap();
    assert_eq!(s.authority(), "[::1]:8080");
    assert_eq!(s.resolve().unwrap(), "[::1]:8080".parse().unwrap());
    for bad in [
        "10.0.0.1:8080",
        "ftp://x",
        "http://",
        "http://:80",
        "http://x:0",
        "http://x:99999",
        "http://u:p@x",
        "http://x/a b",
        "http://x#f",
        "http://[::1",
    ] {
        let err = bad.parse::<CheckServer>().unwrap_err();
        assert!(
            err.to_string().starts_with("bad forwarding-check URL"),
            "{bad}: {err}"
        );
    }
}

fn reply(status: u16, body: &[u8]) -> Reply<'_> {
    Reply {
        status,
        retry_after: None,
        body,
    }
}

#[test]
fn responses() {
    // Need more, then complete; a body without Content-Length runs to EOF.
    assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n", 100), Ok(None));
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", 100),
        Ok(None)
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabcd", 100),
        Ok(Some(reply(200, b"ab")))
    );
    assert_eq!(
        parse_complete(b"HTTP/1.1 200 OK\r\n\r\n{}"),
        Ok(reply(200, b"{}"))
    );
    let limited = parse_complete(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 6\r\nContent-Length: 2\r\n\r\nno",
    )
    .unwrap();
    assert_eq!(limited.retry_after, Some(6));
    assert_eq!(
        parse_check(&limited),
        Err(CheckError::RateLimited {
            retry_after: Some(6)
        })
    );
    assert!(
        parse_complete(b"")
            .unwrap_err()
            .to_string()
            .contains("without answering")
    );
    assert!(
        parse_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}")
            .unwrap_err()
            .to_string()
            .contains("before the whole body")
    );
    assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", 100).is_err());
    assert!(parse_response(&[b'a'; 200], 100).is_err());
    assert!(
        parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            100
        )
        .is_err()
    );
}

#[test]
fn bodies() {
    assert_eq!(
        parse_wan_ip(&reply(200, br#"{"wan_ip":"11.0.0.101"}"#)),
        Ok(Ipv4Addr::new(11, 0, 0, 101))
    );
    assert_eq!(
        parse_wan_ip(&reply(200, br#"{"wan_ip":"::ffff:11.0.0.101"}"#)),
        Ok(Ipv4Addr::new(11, 0, 0, 101))
    );
    assert!(parse_wan_ip(&reply(200, br#"{"wan_ip":"2001:db8::1"}"#)).is_err());
    assert!(parse_wan_ip(&reply(200, b"11.0.0.101")).is_err());
    let c = parse_check(&reply(
        200,
        br#"{"ip":"11.0.0.101","port":6555,"proto":"TCP","open":false,"ms":500}"#,
    ))
    .unwrap();
    assert!(!c.open);
    assert_eq!(c.port, 6555);
    let err = parse_check(&reply(400, br#"{"error":"parameter `ip` not allowed"}"#)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the forwarding check answered 400: parameter `ip` not allowed"
    );
}

/// A one-shot HTTP server on loopback that answers `answer` and returns the request.
fn one_shot(answer: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer).unwrap();
        String::from_utf8(req).unwrap()
    });
    (url, handle)
}

#[test]
fn talks_to_a_loopback_server() {
    let (url, server) = one_shot(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"wan_ip\":\"127.0.0.1\"}",
    );
    let check: CheckServer = format!("{url}/prefix").parse().unwrap();
    assert_eq!(
        check.wan_ip(Duration::from_secs(2)),
        Ok(Ipv4Addr::LOCALHOST)
    );
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /prefix/v1/wan-ip HTTP/1.1\r\n"),
        "{request}"
    );

    // A server that accepts and says nothing: a timeout with the bound in it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let check: CheckServer = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let started = Instant::now();
    let err = check.check_port(1, Duration::from_millis(300)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        err.to_string().contains("did not answer within 0.3 s"),
        "{err}"
    );
    drop(listener);

    // Nothing listens: refused, with the address.
    let err = check.check_port(1, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, CheckError::Connect { .. }), "{err}");
}
