//! An oversized HTTP request (200 KB, far over the head cap) to dht-msg and to forwarding-check:
//! the client writes all of it, then reads until EOF and gets the whole error response.
//!
//! A server that answers and closes while the client's bytes are still unread makes the kernel
//! send a TCP reset, which destroys the response in flight: the client sees
//! `ConnectionResetError` instead of the 431 (dht-msg did this before the server kit's
//! linger-then-close). Each server runs in-process on loopback; the client is a plain blocking
//! `std` socket, as a PyP2P client's would be.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Size of the request, all of it one head line.
const REQUEST_BYTES: usize = 200 * 1024;
/// How long a read or a write may block.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Rounds per server: a reset is a race, so one lucky round must not pass a broken server.
const ROUNDS: usize = 10;

/// `GET <path>?<params>&pad=aaa... HTTP/1.1` of about [`REQUEST_BYTES`].
fn oversized_get(path_and_query: &str) -> Vec<u8> {
    let pad = "a".repeat(REQUEST_BYTES);
    format!("GET {path_and_query}&pad={pad} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// Sends `request`, then reads to EOF; returns the response's status line. Panics (naming the
/// step) if the write or the read fails, e.g. on a reset.
fn status_line_before_eof(server: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(request)
        .unwrap_or_else(|e| panic!("writing the {} byte request failed: {e}", request.len()));
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap_or_else(|e| {
        panic!(
            "reading the answer failed after {} bytes ({:?}): {e}",
            answer.len(),
            String::from_utf8_lossy(&answer)
        )
    });
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, _body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not a complete HTTP response: {text:?}"));
    head.lines().next().unwrap_or_default().to_owned()
}

fn assert_refused_as_too_large(server: SocketAddr, request: &[u8]) {
    for round in 0..ROUNDS {
        let status = status_line_before_eof(server, request);
        assert!(
            status == "HTTP/1.1 431 Request Header Fields Too Large"
                || status == "HTTP/1.1 414 URI Too Long",
            "round {round}: {status:?}"
        );
    }
}

#[test]
fn dht_msg_answers_a_200_kb_request_with_a_431_the_client_reads() {
    let server =
        dht_msg::RunningServer::start("127.0.0.1:0".parse().unwrap(), dht_msg::Config::default())
            .unwrap();
    let request = oversized_get("/dht_msg.php?call=put&node_id=alice&msg=hello");
    assert_refused_as_too_large(server.addr(), &request);
}

#[test]
fn forwarding_check_answers_a_200_kb_request_with_a_431_the_client_reads() {
    let server = forwarding_check::RunningServer::start(
        "127.0.0.1:0".parse().unwrap(),
        forwarding_check::Config::default(),
    )
    .unwrap();
    let request = oversized_get("/v1/check?port=9");
    assert_refused_as_too_large(server.addr(), &request);
}
