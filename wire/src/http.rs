//! A small sans-IO HTTP/1.1 helper for the servers (`forwarding-check`, `dht-msg`): parse a
//! request head from bytes, render a complete response to bytes. It never touches a socket, so a
//! mio server can feed it whatever it has read so far and serve HTTP and a line protocol on one
//! port ([`sniff`] tells them apart from the first bytes).
//!
//! Parsing is done by [`httparse`]; this module adds what the servers need on top of it: a cap on
//! the head size, the path and query split and percent-decoded, the `Host` and `Content-Length`
//! headers interpreted, and one typed error ([`HttpError`]) whose [`HttpError::Partial`] variant
//! means "wait for more bytes" rather than "reject".
//!
//! ```
//! use wire::http::{HttpError, Request, Response, DEFAULT_MAX_HEAD_BYTES};
//!
//! let wire = b"GET /v1/check?port=8080&proto=TCP HTTP/1.1\r\nHost: example\r\n\r\n";
//! // Half a request is not an error, just not enough yet.
//! assert_eq!(
//!     Request::parse(&wire[..20], DEFAULT_MAX_HEAD_BYTES),
//!     Err(HttpError::Partial { have: 20 })
//! );
//! let req = Request::parse(wire, DEFAULT_MAX_HEAD_BYTES)?;
//! assert_eq!(req.method, "GET");
//! assert_eq!(req.path, "/v1/check");
//! assert_eq!(req.query_param("port"), Some("8080"));
//! assert_eq!(req.host.as_deref(), Some("example"));
//! assert_eq!(req.head_len, wire.len());
//!
//! let bytes = Response::text(200, "yes\n").render();
//! assert!(bytes.starts_with(b"HTTP/1.1 200 OK\r\n"));
//! # Ok::<(), HttpError>(())
//! ```

use std::fmt::Write as _;

use thiserror::Error;

/// Default cap on a request head (request line plus headers plus the blank line): 8 KiB, what
/// most servers allow.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 * 1024;

/// Most header lines accepted in one request head; more is [`HttpError::TooManyHeaders`].
pub const MAX_HEADERS: usize = 32;

/// Method tokens [`sniff`] recognises as the start of an HTTP request.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// Why a request head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HttpError {
    /// The head is not complete yet (no blank line) and still under the cap: read more bytes
    /// and parse again. Not a failure. `have` is how many bytes were given.
    #[error("incomplete request head ({have} bytes so far)")]
    Partial {
        /// Bytes given so far.
        have: usize,
    },
    /// The head reached the cap without ending. Answer 431 and close.
    #[error("request head too large: over {limit} bytes")]
    TooLarge {
        /// The configured cap.
        limit: usize,
    },
    /// More than [`MAX_HEADERS`] header lines. Answer 431 and close.
    #[error("too many header lines (limit {limit})")]
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// The bytes are not an HTTP/1.x request head. `reason` says what `httparse` rejected.
    #[error("malformed request head: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// A `%` in the path or query is not followed by two hex digits, or the decoded bytes are
    /// not UTF-8.
    #[error("bad percent-encoding in {part}: {detail}")]
    BadPercentEncoding {
        /// `path` or `query`.
        part: &'static str,
        /// What was wrong, with the offending text.
        detail: String,
    },
    /// A header the server interprets (`Host`, `Content-Length`) has a value it cannot use.
    #[error("bad {name} header: {detail}")]
    BadHeader {
        /// The header name.
        name: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl HttpError {
    /// True for [`HttpError::Partial`]: keep reading.
    pub fn is_partial(&self) -> bool {
        matches!(self, HttpError::Partial { .. })
    }

    /// The status code a server answers this error with, or `None` for
    /// [`HttpError::Partial`]: 431 for a head that is too large, 400 for the rest.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Partial { .. } => None,
            HttpError::TooLarge { .. } | HttpError::TooManyHeaders { .. } => Some(431),
            HttpError::Malformed { .. }
            | HttpError::BadPercentEncoding { .. }
            | HttpError::BadHeader { .. } => Some(400),
        }
    }
}

/// One header line as received: name as sent (compare case-insensitively), raw value bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header name, as sent.
    pub name: String,
    /// The raw value (HTTP allows non-UTF-8 bytes here).
    pub value: Vec<u8>,
}

/// A parsed request head. The body, if any, starts at `head_len` in the buffer that was parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method token, e.g. `GET`.
    pub method: String,
    /// The request target exactly as sent, e.g. `/net.php?action=get_wan_ip`.
    pub target: String,
    /// The percent-decoded path, without the query (`+` stays `+` here).
    pub path: String,
    /// The query parameters in order, percent-decoded (`+` is a space), duplicates kept.
    /// A parameter without `=` has an empty value.
    pub query: Vec<(String, String)>,
    /// The HTTP minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// Every header line, in order.
    pub headers: Vec<Header>,
    /// The `Host` header, if sent (must be UTF-8).
    pub host: Option<String>,
    /// The `Content-Length` header, if sent.
    pub content_length: Option<u64>,
    /// Length of the head in bytes, including the final blank line.
    pub head_len: usize,
}

impl Request {
    /// Parses a request head from the start of `buf`, which holds everything read so far.
    ///
    /// Returns [`HttpError::Partial`] while the head is incomplete and `buf` is under
    /// `max_head_bytes`, [`HttpError::TooLarge`] once it reaches the cap without ending.
    /// Bytes after the head (a body, a pipelined request) are left alone.
    pub fn parse(buf: &[u8], max_head_bytes: usize) -> Result<Request, HttpError> {
        let window = &buf[..buf.len().min(max_head_bytes)];
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut raw = httparse::Request::new(&mut slots);
        let head_len = match raw.parse(window) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return Err(if buf.len() >= max_head_bytes {
                    HttpError::TooLarge {
                        limit: max_head_bytes,
                    }
                } else {
                    HttpError::Partial { have: buf.len() }
                });
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::TooManyHeaders { limit: MAX_HEADERS });
            }
            Err(e) => {
                return Err(HttpError::Malformed {
                    reason: e.to_string(),
                });
            }
        };
        // httparse fills all three on Complete; a missing one is still not a reason to panic.
        let (Some(method), Some(target), Some(version_minor)) = (raw.method, raw.path, raw.version)
        else {
            return Err(HttpError::Malformed {
                reason: "incomplete request line".to_owned(),
            });
        };
        let (raw_path, raw_query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let path =
            percent_decode(raw_path, false).map_err(|detail| HttpError::BadPercentEncoding {
                part: "path",
                detail,
            })?;
        let query = match raw_query {
            Some(q) => parse_query(q).map_err(|detail| HttpError::BadPercentEncoding {
                part: "query",
                detail,
            })?,
            None => Vec::new(),
        };
        let headers: Vec<Header> = raw
            .headers
            .iter()
            .map(|h| Header {
                name: h.name.to_owned(),
                value: h.value.to_vec(),
            })
            .collect();
        let host = single_header(&headers, "Host")?
            .map(|v| {
                String::from_utf8(v.to_vec()).map_err(|_| HttpError::BadHeader {
                    name: "Host",
                    detail: "not UTF-8".to_owned(),
                })
            })
            .transpose()?;
        let content_length = single_header(&headers, "Content-Length")?
            .map(|v| {
                std::str::from_utf8(v)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| HttpError::BadHeader {
                        name: "Content-Length",
                        detail: format!("not a number: {:?}", String::from_utf8_lossy(v)),
                    })
            })
            .transpose()?;
        Ok(Request {
            method: method.to_owned(),
            target: target.to_owned(),
            path,
            query,
            version_minor,
            headers,
            host,
            content_length,
            head_len,
        })
    }

    /// The first value of query parameter `name` (exact, case-sensitive match).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }
}

/// The value of a header that must appear at most once (repeats with the same value are
/// tolerated, as RFC 9110 allows for `Content-Length`).
fn single_header<'a>(
    headers: &'a [Header],
    name: &'static str,
) -> Result<Option<&'a [u8]>, HttpError> {
    let mut found: Option<&[u8]> = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
        match found {
            Some(v) if v != h.value.as_slice() => {
                return Err(HttpError::BadHeader {
                    name,
                    detail: "sent more than once with different values".to_owned(),
                });
            }
            _ => found = Some(&h.value),
        }
    }
    Ok(found)
}

/// Splits a query string on `&` and `=` and percent-decodes both sides (`+` is a space).
/// Empty pieces (`a=1&&b=2`) are skipped.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            Ok((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`); the result must be UTF-8.
/// The error says what was wrong, quoting the input.
///
/// ```
/// use wire::http::percent_decode;
/// assert_eq!(percent_decode("a%20b+c", true).as_deref(), Ok("a b c"));
/// assert_eq!(percent_decode("a+b", false).as_deref(), Ok("a+b"));
/// assert!(percent_decode("100%", false).is_err());
/// assert!(percent_decode("%ff", false).is_err()); // not UTF-8
/// ```
pub fn percent_decode(text: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3);
                let value = hex.and_then(|h| Some(hex_value(h[0])? * 16 + hex_value(h[1])?));
                let Some(value) = value else {
                    let shown: String = text[i..].chars().take(3).collect();
                    return Err(format!(
                        "{shown:?} at offset {i} of {text:?} is not % followed by two hex digits"
                    ));
                };
                out.push(value);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|e| {
        format!(
            "{text:?} decodes to bytes that are not UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What the first bytes of a connection look like, see [`sniff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// An HTTP method token, a space and `/`: serve it as HTTP.
    Http,
    /// Cannot be the start of an HTTP request.
    NotHttp,
    /// A prefix of an HTTP request start (e.g. `GE`): read more before deciding.
    NeedMore,
}

/// Classifies the first bytes of a connection: does it start like an HTTP request (a method
/// from [`METHODS`], one space, then `/`)?
///
/// ```
/// use wire::http::{sniff, Sniff};
/// assert_eq!(sniff(b"GET /net.php HTTP/1.1\r\n"), Sniff::Http);
/// assert_eq!(sniff(b"GET"), Sniff::NeedMore);
/// assert_eq!(sniff(b"BOOTSTRAP 5\r\n"), Sniff::NotHttp);
/// assert_eq!(sniff(b"GET x"), Sniff::NotHttp);
/// ```
pub fn sniff(first_bytes: &[u8]) -> Sniff {
    let mut need_more = false;
    for method in METHODS {
        let mut start = Vec::with_capacity(method.len() + 2);
        start.extend_from_slice(method.as_bytes());
        start.extend_from_slice(b" /");
        if first_bytes.starts_with(&start) {
            return Sniff::Http;
        }
        if start.starts_with(first_bytes) {
            need_more = true;
        }
    }
    if need_more {
        Sniff::NeedMore
    } else {
        Sniff::NotHttp
    }
}

/// True if `first_bytes` start like an HTTP request: a method token from [`METHODS`], one space
/// and `/`. False also when there are too few bytes to tell (see [`sniff`] for that case).
///
/// ```
/// use wire::http::looks_like_http;
/// assert!(looks_like_http(b"GET /v1/wan-ip HTTP/1.1\r\n"));
/// assert!(!looks_like_http(b"PASSIVE READY 50500 10\r\n"));
/// ```
pub fn looks_like_http(first_bytes: &[u8]) -> bool {
    sniff(first_bytes) == Sniff::Http
}

/// The standard reason phrase of the status codes these servers use ("" for others).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A complete response, always sent with `Connection: close` (these servers answer one
/// request per connection).
///
/// ```
/// use wire::http::Response;
/// let bytes = Response::json(429, r#"{"error":"slow down"}"#)
///     .with_header("Retry-After", "6")
///     .render();
/// let text = String::from_utf8(bytes).unwrap();
/// assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
/// assert!(text.contains("\r\nContent-Type: application/json\r\n"));
/// assert!(text.contains("\r\nRetry-After: 6\r\n"));
/// assert!(text.contains("\r\nContent-Length: 21\r\n"));
/// assert!(text.ends_with("\r\n\r\n{\"error\":\"slow down\"}"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// Extra headers, rendered in order after the standard ones.
    pub extra_headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with this status, content type and body.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type: content_type.to_owned(),
            extra_headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// An `application/json` response.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "application/json", body)
    }

    /// Adds a header. Names and values must not contain CR or LF; such characters are dropped.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        let clean = |s: &str| s.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        self.extra_headers.push((clean(name), clean(value)));
        self
    }

    /// The response as bytes: status line, `Content-Type`, `Content-Length`,
    /// `Cache-Control: no-store`, `Connection: close`, extra headers, blank line, body.
    pub fn render(&self) -> Vec<u8> {
        let mut head = String::with_capacity(160);
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type.replace(['\r', '\n'], ""),
            self.body.len()
        );
        for (name, value) in &self.extra_headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests;
