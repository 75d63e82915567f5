//! Blocking loopback clients for the servers' tests.

#![allow(clippy::missing_panics_doc, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// How long a connect or a read of these clients may block.
pub const IO_DEADLINE: Duration = Duration::from_secs(10);

/// A TCP connection to `server` from `ip` (e.g. `127.0.0.2`: every `127.x.y.z` is loopback;
/// `::1` for IPv6), with a read timeout of [`IO_DEADLINE`] and `TCP_NODELAY` (small writes go
/// out at once).
///
/// # Panics
/// If `ip` is not an IP address or the connection fails.
pub fn connect_from(ip: &str, server: SocketAddr) -> TcpStream {
    let local = SocketAddr::new(
        ip.parse::<IpAddr>()
            .unwrap_or_else(|e| panic!("bad local IP {ip:?}: {e}")),
        0,
    );
    let socket = Socket::new(Domain::for_address(local), Type::STREAM, None).expect("a socket");
    socket.bind(&local.into()).expect("bind to the local IP");
    socket
        .connect_timeout(&server.into(), IO_DEADLINE)
        .unwrap_or_else(|e| panic!("connect from {ip} to {server}: {e}"));
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(IO_DEADLINE))
        .expect("a read timeout");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
}

/// Sends `bytes` from `ip` and returns everything the server answers before it closes.
///
/// # Panics
/// If the connection, the write or the read fails (a reset included) or the answer is not
/// UTF-8.
pub fn exchange(ip: &str, server: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = connect_from(ip, server);
    stream.write_all(bytes).expect("write the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    String::from_utf8(answer).expect("a UTF-8 answer")
}

/// Whether this host has IPv6 loopback (`::1` can be bound), for tests over IPv6; when it
/// has not, prints `SKIPPED: <test>: <reason>` and returns false (a host booted with
/// `ipv6.disable=1` has no `::1`; such a test has nothing to run there).
pub fn ipv6_loopback_or_skip(test: &str) -> bool {
    match std::net::TcpListener::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED: {test}: this host has no IPv6 loopback (binding [::1]:0: {e})");
            false
        }
    }
}

/// The two loopback addresses of a server listening on `[::]:PORT` (or any address with
/// that port): `127.0.0.1:PORT` and `[::1]:PORT`.
pub fn loopback_pair(server: SocketAddr) -> (SocketAddr, SocketAddr) {
    let port = server.port();
    (
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port),
        SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port),
    )
}

/// A line-protocol client (`\r\n`-terminated lines both ways).
#[derive(Debug)]
pub struct LineClient {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl LineClient {
    /// Connects from `ip` (see [`connect_from`]).
    pub fn from(ip: &str, server: SocketAddr) -> LineClient {
        LineClient::wrap(connect_from(ip, server))
    }

    /// Wraps an open stream, setting its read timeout to [`IO_DEADLINE`].
    pub fn wrap(stream: TcpStream) -> LineClient {
        stream
            .set_read_timeout(Some(IO_DEADLINE))
            .expect("a read timeout");
        LineClient {
            reader: BufReader::new(stream.try_clone().expect("a second handle")),
            stream,
        }
    }

    /// Sends `line` and `\r\n`.
    pub fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send a line");
    }

    /// The next line, without its `\r\n`.
    ///
    /// # Panics
    /// If the server closed the connection, the read timed out, or the line does not end in
    /// `\r\n`.
    pub fn recv(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read a line");
        assert!(n > 0, "server closed the connection");
        assert!(line.ends_with("\r\n"), "lines end in CRLF: {line:?}");
        line.trim_end_matches("\r\n").to_string()
    }

    /// Sends `line`, returns the next line.
    pub fn ask(&mut self, line: &str) -> String {
        self.send(line);
        self.recv()
    }

    /// True once the server has closed the connection (EOF, not a reset), within
    /// [`IO_DEADLINE`]; what it still sends is discarded.
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }

    /// The client's own address.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("a local address")
    }

    /// The stream (to write raw bytes or shut a side down).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// Reads what follows the lines read so far (through the client's buffer).
impl Read for LineClient {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}
