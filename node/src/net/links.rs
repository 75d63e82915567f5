//! Line links and reusable sockets for the driver.
//!
//! A [`LineLink`] is a client connection that speaks lines with a server: the persistent
//! mailbox connection, the line sessions with a rendezvous (simultaneous registration,
//! hole-punch candidacy, port probe) and the `RELAY` handshake. [`bind_reusable`] makes the
//! sockets that share the listening port (or a candidacy's port) with hole-punch dials.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use mio::Token;
use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use wire::io::{ReadStep, read_step};
use wire::line::LineFramer;

/// A line-speaking client connection.
#[derive(Debug)]
pub(super) struct LineLink {
    pub(super) token: Token,
    pub(super) server: SocketAddr,
    pub(super) stream: TcpStream,
    pub(super) connected: bool,
    /// The connect (or, for a relay, the whole handshake) must finish before this.
    pub(super) deadline: Instant,
    pub(super) framer: LineFramer,
    out: Vec<u8>,
    written: usize,
}

/// What one [`LineLink::drive`] step did.
#[derive(Debug, Default)]
pub(super) struct LinkProgress {
    /// The connect finished in this step (the local address).
    pub(super) opened: Option<SocketAddr>,
    /// Complete lines received.
    pub(super) lines: Vec<String>,
    /// Why the link is dead (it must be dropped).
    pub(super) failure: Option<String>,
}

impl LineLink {
    /// Starts connecting to `server` on `stream` (already connecting, not yet registered).
    pub(super) fn new(
        token: Token,
        server: SocketAddr,
        stream: TcpStream,
        deadline: Instant,
        max_line: usize,
    ) -> LineLink {
        LineLink {
            token,
            server,
            stream,
            connected: false,
            deadline,
            framer: LineFramer::new(max_line),
            out: Vec::new(),
            written: 0,
        }
    }

    /// Queues `line` (with `\r\n`); it goes out at the next [`LineLink::drive`].
    pub(super) fn queue(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Finishes the connect, writes what is queued, reads what arrived. `closing`: the event
    /// reported a FIN or error (read on to EOF). `stop_at`: a line after which no more lines
    /// are taken out of the framer (the caller takes the stream and the rest of the bytes
    /// over, as after a relay's `RELAY OK`).
    pub(super) fn drive(
        &mut self,
        buf: &mut [u8],
        closing: bool,
        stop_at: Option<&str>,
    ) -> LinkProgress {
        let mut progress = LinkProgress::default();
        if !self.connected {
            match self.stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    progress.failure = Some(format!("cannot connect: {e}"));
                    return progress;
                }
                Ok(None) => {}
            }
            match self.stream.peer_addr() {
                Ok(_) => {
                    self.connected = true;
                    progress.opened = Some(
                        self.stream
                            .local_addr()
                            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
                    );
                }
                Err(e)
                    if e.kind() == io::ErrorKind::NotConnected
                        || e.raw_os_error() == Some(libc::EINPROGRESS) =>
                {
                    return progress;
                }
                Err(e) => {
                    progress.failure = Some(format!("cannot connect: {e}"));
                    return progress;
                }
            }
        }
        if let Err(e) = self.flush() {
            progress.failure = Some(format!("write failed: {e}"));
            return progress;
        }
        let mut eof = false;
        loop {
            match read_step(&mut self.stream, buf, closing) {
                ReadStep::Data { len, more } => {
                    self.framer.push(&buf[..len]);
                    if !more {
                        break;
                    }
                }
                ReadStep::Eof => {
                    eof = true;
                    break;
                }
                ReadStep::Blocked => break,
                ReadStep::Failed(e) => {
                    progress.failure = Some(format!("read failed: {e}"));
                    break;
                }
            }
        }
        // Lines before an EOF are still handed out: nothing the server said is lost.
        loop {
            match self.framer.next_str() {
                None => break,
                Some(Ok(line)) => {
                    let stop = stop_at == Some(line);
                    progress.lines.push(line.to_owned());
                    if stop {
                        return progress;
                    }
                }
                Some(Err(e)) => {
                    progress.failure = Some(format!("bad line from the server: {e}"));
                    break;
                }
            }
        }
        if eof && progress.failure.is_none() {
            progress.failure = Some("closed by the server".to_owned());
        }
        progress
    }

    /// Writes what is queued, as far as the socket takes it.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        if !self.connected {
            return Ok(());
        }
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }
}

/// A non-blocking TCP socket bound to `(ip, port)` with `SO_REUSEADDR` and `SO_REUSEPORT`, so
/// that a listener, a rendezvous session and hole-punch dials can share the port.
///
/// With port 0 the port is first found with a plain bind (which only succeeds on a port nobody
/// holds) and then rebound with reuse: binding port 0 with `SO_REUSEPORT` directly could hand
/// out a port another reusing socket of this user already holds. Between the two binds another
/// socket can take the port (an outgoing connection's ephemeral port): then a fresh port is
/// found, a few times.
pub(super) fn bind_reusable(ip: IpAddr, port: u16) -> io::Result<Socket> {
    if port != 0 {
        return bind_reusable_on(SocketAddr::new(ip, port));
    }
    let mut tries = 0;
    loop {
        let probe = Socket::new(
            Domain::for_address(SocketAddr::new(ip, 0)),
            Type::STREAM,
            None,
        )?;
        probe.bind(&SocketAddr::new(ip, 0).into())?;
        let found = probe
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| io::Error::other("no port"))?;
        drop(probe);
        match bind_reusable_on(SocketAddr::new(ip, found)) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 8 => tries += 1,
            result => return result,
        }
    }
}

/// [`bind_reusable`] on a given port.
fn bind_reusable_on(addr: SocketAddr) -> io::Result<Socket> {
    let ip = addr.ip();
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if let IpAddr::V6(v6) = ip
        && v6.is_unspecified()
    {
        // Dual stack: IPv4 too, whatever the host's default (`net.ipv6.bindv6only`).
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Starts a non-blocking connect to `to` from `(ip, port)` (reusable, see [`bind_reusable`]).
pub(super) fn connect_from(ip: IpAddr, port: u16, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = bind_reusable(ip, port)?;
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream: std::net::TcpStream = socket.into();
    Ok(TcpStream::from_std(stream))
}

/// The address hole-punch sockets towards `to` bind to: the node's bind address when it is
/// of `to`'s family, else any address of that family.
pub(super) fn punch_ip(bind: IpAddr, to: SocketAddr) -> IpAddr {
    match (bind, to) {
        (IpAddr::V4(_), SocketAddr::V4(_)) | (IpAddr::V6(_), SocketAddr::V6(_)) => bind,
        (_, SocketAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (_, SocketAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}
