//! Tiny network probes run inside lab hosts (`netns-sim probe ...`): a TCP server that tells
//! each client which `ip:port` it saw, a client that prints what the server saw, and an SNTP
//! query. They are how tests observe NAT mappings without netcat or python.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

/// Errors from probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation and its address.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Nothing arrived in time.
    #[error("{what}: timed out after {after:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// An NTP reply was malformed or a Kiss-o'-Death.
    #[error("bad NTP reply from {from}: {detail}")]
    BadNtp {
        /// The server.
        from: SocketAddr,
        /// What was wrong.
        detail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProbeError {
    let what = what.into();
    move |source| ProbeError::Io { what, source }
}

/// A TCP socket with `SO_REUSEADDR` and `SO_REUSEPORT`, bound to `0.0.0.0:port`, so that a
/// listener and outgoing connections can share one local port (as hole punching does).
pub fn reusable_socket(port: u16) -> Result<Socket, ProbeError> {
    let what = format!("bind 0.0.0.0:{port}");
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(io(&what))?;
    s.set_reuse_address(true).map_err(io(&what))?;
    s.set_reuse_port(true).map_err(io(&what))?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(io(&what))?;
    Ok(s)
}

/// Serves on `listen`: each TCP client gets one line with the `ip:port` it was seen from,
/// then the connection closes. Writes `listening on ADDR` and then `accepted from PEER` per
/// client to `log`. With `once`, returns after the first client; with `timeout`, fails if no
/// client came in time.
pub fn serve(
    listen: SocketAddrV4,
    once: bool,
    timeout: Option<Duration>,
    log: &mut dyn Write,
) -> Result<(), ProbeError> {
    let listener = listen_on(listen)?;
    let _ = writeln!(log, "listening on {listen}");
    let _ = log.flush();
    serve_listener(&listener, once, timeout, log)
}

/// Binds a non-blocking listener on `listen` (`SO_REUSEADDR` + `SO_REUSEPORT`).
pub fn listen_on(listen: SocketAddrV4) -> Result<TcpListener, ProbeError> {
    let what = format!("listen on {listen}");
    let s = reusable_socket(listen.port())?;
    s.listen(64).map_err(io(&what))?;
    let listener: TcpListener = s.into();
    listener.set_nonblocking(true).map_err(io(&what))?;
    Ok(listener)
}

/// [`serve`] on a listener bound by [`listen_on`].
pub fn serve_listener(
    listener: &TcpListener,
    once: bool,
    timeout: Option<Duration>,
    log: &mut dyn Write,
) -> Result<(), ProbeError> {
    let what = match listener.local_addr() {
        Ok(a) => format!("accept on {a}"),
        Err(_) => "accept".to_owned(),
    };
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let _ = writeln!(stream, "{peer}");
                // Closing with the client's line still unread would send a RST that can
                // overtake our reply: end our side, then read what the client sent until it
                // closes (or briefly, for a silent client).
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
                let _ = writeln!(log, "accepted from {peer}");
                let _ = log.flush();
                if once {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(t) = timeout
                    && start.elapsed() >= t
                {
                    return Err(ProbeError::Timeout {
                        what: format!("a client ({what})"),
                        after: t,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io(&what)(e)),
        }
    }
}

/// Connects to `to` (from local port `bind_port` if given, with `SO_REUSEPORT`), optionally
/// sends `send` + `\r\n`, and returns the first line the server replies, trimmed.
pub fn connect(
    to: SocketAddr,
    bind_port: Option<u16>,
    send: Option<&str>,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let what = format!("connect to {to}");
    let s = reusable_socket(bind_port.unwrap_or(0))?;
    s.connect_timeout(&to.into(), timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock {
            ProbeError::Timeout {
                what: what.clone(),
                after: timeout,
            }
        } else {
            io(&what)(e)
        }
    })?;
    let mut stream: TcpStream = s.into();
    stream.set_read_timeout(Some(timeout)).map_err(io(&what))?;
    if let Some(line) = send {
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(io(&what))?;
    }
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(io(format!("read reply from {to}")))?;
    Ok(reply.trim().to_owned())
}

/// What an NTP server answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NtpReply {
    /// Its stratum (1..=15).
    pub stratum: u8,
    /// Its transmit timestamp, seconds since the Unix epoch.
    pub transmit_unix: f64,
    /// Server time minus local time at reception, in seconds (rough, no delay correction).
    pub offset_secs: f64,
}

const NTP_UNIX_OFFSET_SECS: f64 = 2_208_988_800.0;

/// Sends one SNTP (v4, client mode) request to `server` and checks the reply.
pub fn ntp_query(server: SocketAddr, timeout: Duration) -> Result<NtpReply, ProbeError> {
    let what = format!("NTP query to {server}");
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(io(&what))?;
    sock.set_read_timeout(Some(timeout)).map_err(io(&what))?;
    let mut req = [0u8; 48];
    req[0] = 0x23; // LI 0, version 4, mode 3 (client)
    sock.send_to(&req, server).map_err(io(&what))?;
    let mut buf = [0u8; 512];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            ProbeError::Timeout {
                what: what.clone(),
                after: timeout,
            }
        } else {
            io(&what)(e)
        }
    })?;
    let bad = |detail: String| ProbeError::BadNtp { from, detail };
    if n < 48 {
        return Err(bad(format!("{n} bytes, expected at least 48")));
    }
    if buf[0] & 7 != 4 {
        return Err(bad(format!("mode {}, expected 4 (server)", buf[0] & 7)));
    }
    let stratum = buf[1];
    if stratum == 0 || stratum > 15 {
        return Err(bad(format!(
            "stratum {stratum} (Kiss-o'-Death or unsynchronised)"
        )));
    }
    let secs = u32::from_be_bytes([buf[40], buf[41], buf[42], buf[43]]);
    let frac = u32::from_be_bytes([buf[44], buf[45], buf[46], buf[47]]);
    let transmit_unix = f64::from(secs) - NTP_UNIX_OFFSET_SECS + f64::from(frac) / 4_294_967_296.0;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Ok(NtpReply {
        stratum,
        transmit_unix,
        offset_secs: transmit_unix - now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_reports_the_peer_and_connect_reads_it() {
        // Bound before the server thread starts, so the client never races the bind.
        let listener = listen_on(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut log = Vec::new();
            serve_listener(&listener, true, Some(Duration::from_secs(5)), &mut log).unwrap();
            String::from_utf8(log).unwrap()
        });
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let seen = connect(to, None, Some("hello"), Duration::from_secs(2)).unwrap();
        assert!(seen.starts_with("127.0.0.1:"), "{seen}");
        let log = server.join().unwrap();
        assert!(log.contains(&format!("accepted from {seen}")), "{log}");
    }

    #[test]
    fn serve_times_out_without_clients() {
        let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        let err = serve(addr, true, Some(Duration::from_millis(50)), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");
    }

    #[test]
    fn ntp_query_times_out_against_silence() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = ntp_query(silent.local_addr().unwrap(), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");
    }
}
