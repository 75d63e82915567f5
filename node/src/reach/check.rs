//! The forwarding-check client: `GET /v1/wan-ip` and `GET /v1/check?port=P` over a plain
//! HTTP/1.1 connection (std `TcpStream` with timeouts, responses parsed by [`httparse`]).
//!
//! It only ever talks to the configured URL: one host and port, the URL's path as a prefix,
//! no redirects followed, no other address dialed. Request building and response parsing are
//! sans-IO functions (tested with byte vectors); [`CheckServer::wan_ip`] and
//! [`CheckServer::check_port`] do the blocking I/O, for helper threads.
//!
//! ```
//! use node::reach::check::{CheckServer, parse_response, parse_check};
//!
//! let server: CheckServer = "http://203.0.113.5:8080".parse()?;
//! assert_eq!(server.authority(), "203.0.113.5:8080");
//! let request = server.check_request(50500);
//! assert!(request.starts_with("GET /v1/check?port=50500 HTTP/1.1\r\nHost: 203.0.113.5:8080\r\n"));
//!
//! let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 67\r\n\r\n\
//!     {\"ip\":\"198.51.100.9\",\"port\":50500,\"proto\":\"TCP\",\"open\":true,\"ms\":3}";
//! let reply = parse_response(wire, 16 * 1024)?.unwrap();
//! let check = parse_check(&reply)?;
//! assert!(check.open);
//! assert_eq!(check.ip.to_string(), "198.51.100.9");
//! # Ok::<(), node::reach::CheckError>(())
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Deserialize;
use thiserror::Error;

/// Largest response accepted (head and body).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// What can go wrong talking to the forwarding check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckError {
    /// The configured URL is not one this client can use.
    #[error("bad forwarding-check URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The host name did not resolve.
    #[error("cannot resolve forwarding-check host {host:?}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// No TCP connection.
    #[error("cannot connect to the forwarding check at {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No complete answer in time.
    #[error("the forwarding check at {addr} did not answer within {:.1} s", after.as_secs_f64())]
    Timeout {
        /// The address.
        addr: SocketAddr,
        /// The bound.
        after: Duration,
    },
    /// The connection broke.
    #[error("forwarding check at {addr}: {reason}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The answer is not the HTTP/JSON expected.
    #[error("bad answer from the forwarding check: {0}")]
    BadResponse(String),
    /// Too many checks from our address.
    #[error("the forwarding check refused: too many checks from this address (429{})",
        retry_after.map(|s| format!(", retry after {s} s")).unwrap_or_default())]
    RateLimited {
        /// `Retry-After`, in seconds, if given.
        retry_after: Option<u64>,
    },
    /// Another error status.
    #[error("the forwarding check answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The server's error text.
        message: String,
    },
}

/// A forwarding-check server, from a URL `http://HOST[:PORT][/PREFIX]`.
///
/// ```
/// use node::reach::CheckServer;
/// let s: CheckServer = "http://checker.example:8080/fc/".parse().unwrap();
/// assert_eq!(s.authority(), "checker.example:8080");
/// assert!(s.wan_ip_request().starts_with("GET /fc/v1/wan-ip HTTP/1.1\r\n"));
/// assert!("https://checker.example".parse::<CheckServer>().is_err());
/// assert!("http://checker.example/?x=1".parse::<CheckServer>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckServer {
    url: String,
    host: String,
    port: u16,
    prefix: String,
}

impl FromStr for CheckServer {
    type Err = CheckError;

    fn from_str(url: &str) -> Result<CheckServer, CheckError> {
        let bad = |reason: &str| CheckError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                bad("https is not supported (the forwarding check speaks plain HTTP)")
            } else {
                bad("expected http://HOST[:PORT][/PATH]")
            }
        })?;
        if rest.contains(['?', '#']) {
            return Err(bad("no query or fragment allowed"));
        }
        if rest
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("spaces or control characters"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("no user name or password allowed"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p,
                None if after.is_empty() => "80",
                None => return Err(bad("junk after ']'")),
            };
            (format!("[{host}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p),
                None => (authority.to_owned(), "80"),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(bad("no host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        Ok(CheckServer {
            url: url.to_owned(),
            host,
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }
}

impl fmt::Display for CheckServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// An HTTP response as far as this client cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The status code.
    pub status: u16,
    /// The `Retry-After` header in seconds, if any.
    pub retry_after: Option<u64>,
    /// The body.
    pub body: &'a [u8],
}

/// The answer to `GET /v1/check?port=P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PortCheck {
    /// The address the server dialed (ours, as it sees us).
    pub ip: IpAddr,
    /// The port it dialed.
    pub port: u16,
    /// Whether the TCP handshake completed.
    pub open: bool,
    /// How long the dial took on the server, in ms.
    pub ms: u64,
}

impl CheckServer {
    /// `host:port` as in the `Host` header.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The request for our WAN IP.
    pub fn wan_ip_request(&self) -> String {
        self.request("/v1/wan-ip")
    }

    /// The request to check `port`.
    pub fn check_request(&self, port: u16) -> String {
        self.request(&format!("/v1/check?port={port}"))
    }

    fn request(&self, target: &str) -> String {
        format!(
            "GET {}{target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: p2p-node/{}\r\n\
             Accept: application/json\r\nConnection: close\r\n\r\n",
            self.prefix,
            self.authority(),
            env!("CARGO_PKG_VERSION")
        )
    }

    /// Asks for our WAN IP (blocking, at most `timeout`).
    pub fn wan_ip(&self, timeout: Duration) -> Result<Ipv4Addr, CheckError> {
        let bytes = self.fetch(&self.wan_ip_request(), timeout)?;
        parse_wan_ip(&parse_complete(&bytes)?)
    }

    /// Asks whether `port` on our address is reachable (blocking, at most `timeout`).
    pub fn check_port(&self, port: u16, timeout: Duration) -> Result<PortCheck, CheckError> {
        let bytes = self.fetch(&self.check_request(port), timeout)?;
        parse_check(&parse_complete(&bytes)?)
    }

    /// Resolves the host (IPv4 preferred) — the only address this client ever connects to.
    pub fn resolve(&self) -> Result<SocketAddr, CheckError> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let err = |reason: String| CheckError::Resolve {
            host: self.host.clone(),
            reason,
        };
        let addrs: Vec<SocketAddr> = (host, self.port)
            .to_socket_addrs()
            .map_err(|e| err(e.to_string()))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| err("no address".to_owned()))
    }

    /// One request; the response's bytes (complete or up to EOF), within `timeout` in all.
    fn fetch(&self, request: &str, timeout: Duration) -> Result<Vec<u8>, CheckError> {
        let deadline = Instant::now() + timeout;
        let addr = self.resolve()?;
        let timed_out = || CheckError::Timeout {
            addr,
            after: timeout,
        };
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
        };
        let mut stream =
            TcpStream::connect_timeout(&addr, left().ok_or_else(timed_out)?).map_err(|e| {
                if e.kind() == io::ErrorKind::TimedOut {
                    timed_out()
                } else {
                    CheckError::Connect {
                        addr,
                        reason: e.to_string(),
                    }
                }
            })?;
        let io_err = |e: &io::Error| {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                timed_out()
            } else {
                CheckError::Io {
                    addr,
                    reason: e.to_string(),
                }
            }
        };
        stream
            .set_write_timeout(left())
            .and_then(|()| stream.write_all(request.as_bytes()))
            .map_err(|e| io_err(&e))?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            if parse_response(&buf, MAX_RESPONSE_BYTES)?.is_some() {
                return Ok(buf);
            }
            stream
                .set_read_timeout(Some(left().ok_or_else(timed_out)?))
                .map_err(|e| io_err(&e))?;
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(buf),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&e)),
            }
        }
    }
}

/// Parses a response as far as it has arrived: `Ok(None)` when more bytes are needed (the
/// body is complete once `Content-Length` bytes are there; without that header, at EOF: see
/// [`parse_complete`]).
pub fn parse_response(bytes: &[u8], max: usize) -> Result<Option<Reply<'_>>, CheckError> {
    if bytes.len() > max {
        return Err(CheckError::BadResponse(format!("longer than {max} bytes")));
    }
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut slots);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(CheckError::BadResponse(format!("not HTTP: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let mut length = None;
    let mut retry_after = None;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| CheckError::BadResponse("bad Content-Length".to_owned()))?;
            length = Some(n);
        }
        if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(CheckError::BadResponse(
                "chunked transfer encoding is not expected".to_owned(),
            ));
        }
    }
    let body = &bytes[head_len..];
    match length {
        Some(n) if body.len() >= n => Ok(Some(Reply {
            status,
            retry_after,
            body: &body[..n],
        })),
        _ => Ok(None),
    }
}

/// Parses a response that ended (EOF): a body without `Content-Length` runs to the end.
pub fn parse_complete(bytes: &[u8]) -> Result<Reply<'_>, CheckError> {
    if let Some(reply) = parse_response(bytes, MAX_RESPONSE_BYTES)? {
        return Ok(reply);
    }
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut slots);
    match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => {
            let declared = response
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("content-length"));
            if declared {
                Err(CheckError::BadResponse(
                    "the connection closed before the whole body arrived".to_owned(),
                ))
            } else {
                let retry_after = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("retry-after"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse().ok());
                Ok(Reply {
                    status: response.code.unwrap_or(0),
                    retry_after,
                    body: &bytes[n..],
                })
            }
        }
        _ => Err(CheckError::BadResponse(if bytes.is_empty() {
            "the server closed without answering".to_owned()
        } else {
            "the connection closed in the middle of the answer".to_owned()
        })),
    }
}

#[derive(Deserialize)]
struct WanIpReply {
    wan_ip: IpAddr,
}

#[derive(Deserialize)]
struct ErrorReply {
    error: String,
}

/// Interprets the answer to `/v1/wan-ip`.
pub fn parse_wan_ip(reply: &Reply<'_>) -> Result<Ipv4Addr, CheckError> {
    ok_status(reply)?;
    let reply: WanIpReply = serde_json::from_slice(reply.body)
        .map_err(|e| CheckError::BadResponse(format!("wan-ip: {e}")))?;
    match reply.wan_ip {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped().ok_or_else(|| {
            CheckError::BadResponse(format!(
                "the server sees us over IPv6 ({ip}); an IPv4 WAN address is needed"
            ))
        }),
    }
}

/// Interprets the answer to `/v1/check?port=P`.
pub fn parse_check(reply: &Reply<'_>) -> Result<PortCheck, CheckError> {
    ok_status(reply)?;
    serde_json::from_slice(reply.body).map_err(|e| CheckError::BadResponse(format!("check: {e}")))
}

fn ok_status(reply: &Reply<'_>) -> Result<(), CheckError> {
    let (status, body) = (reply.status, reply.body);
    if status == 200 {
        return Ok(());
    }
    let message = serde_json::from_slice::<ErrorReply>(body).map_or_else(
        |_| {
            String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned()
        },
        |e| e.error,
    );
    if status == 429 {
        return Err(CheckError::RateLimited {
            retry_after: reply.retry_after,
        });
    }
    Err(CheckError::Status { status, message })
}

#[cfg(test)]
mod tests;
