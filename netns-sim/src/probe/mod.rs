//! Tiny network probes run inside lab hosts (`netns-sim probe ...`): a TCP server that tells
//! each client which `ip:port` it saw, a client that prints what the server saw, and an SNTP
//! query. They are how tests observe NAT mappings without netcat or python.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

mod hold;
mod udp;

pub use hold::{hold_connect, hold_serve};
pub use udp::{PingReport, udp_echo, udp_ping};

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

/// The unspecified address of `peer`'s family (`0.0.0.0` or `::`), to bind a socket that talks
/// to it.
fn unspecified(peer: SocketAddr) -> std::net::IpAddr {
    if peer.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    }
}

/// A TCP socket with `SO_REUSEADDR` and `SO_REUSEPORT`, bound to `0.0.0.0:port`, so that a
/// listener and outgoing connections can share one local port (as hole punching does).
pub fn reusable_socket(port: u16) -> Result<Socket, ProbeError> {
    reusable_socket_on(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        port,
    )))
}

/// [`reusable_socket`] bound to `local` (IPv4 or IPv6). An IPv6 socket on `[::]` takes IPv4
/// too (`IPV6_V6ONLY` off), so one listener answers both families.
pub fn reusable_socket_on(local: SocketAddr) -> Result<Socket, ProbeError> {
    let what = format!("bind {local}");
    let s = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(io(&what))?;
    s.set_reuse_address(true).map_err(io(&what))?;
    s.set_reuse_port(true).map_err(io(&what))?;
    if local.is_ipv6() {
        s.set_only_v6(false).map_err(io(&what))?;
    }
    s.bind(&local.into()).map_err(io(&what))?;
    Ok(s)
}

/// Serves on `listen`: each TCP client gets one line with the `ip:port` it was seen from,
/// then the connection closes. Writes `listening on ADDR` and then `accepted from PEER` per
/// client to `log`. With `once`, returns after the first client; with `timeout`, fails if no
/// client came in time.
pub fn serve(
    listen: SocketAddr,
    once: bool,
    timeout: Option<Duration>,
    log: &mut dyn Write,
) -> Result<(), ProbeError> {
    let listener = listen_on(listen)?;
    let _ = writeln!(log, "listening on {listen}");
    let _ = log.flush();
    serve_listener(&listener, once, timeout, log)
}

/// Binds a non-blocking listener on `listen` (`SO_REUSEADDR` + `SO_REUSEPORT`; `[::]:port`
/// answers IPv4 and IPv6).
pub fn listen_on(listen: SocketAddr) -> Result<TcpListener, ProbeError> {
    let what = format!("listen on {listen}");
    let s = reusable_socket_on(listen)?;
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
/// sends `send` + `\r\n`, and returns the first line the server replies, trimmed. Two of
/// these aimed at each other from fixed ports at the same time make a TCP simultaneous open:
/// each reads the other's line.
pub fn connect(
    to: SocketAddr,
    bind_port: Option<u16>,
    send: Option<&str>,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let what = format!("connect to {to}");
    let s = reusable_socket_on(SocketAddr::new(unspecified(to), bind_port.unwrap_or(0)))?;
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
    /// The NTP clock offset `((T2 - T1) + (T3 - T4)) / 2` in seconds: the server's clock minus
    /// ours, assuming the path is symmetric. On one machine the clocks agree, so what it shows
    /// is half the difference between the up and down delays.
    pub clock_offset_secs: f64,
    /// The round-trip delay `(T4 - T1) - (T3 - T2)` in seconds.
    pub delay_secs: f64,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn ntp_timestamp(b: &[u8]) -> f64 {
    let secs = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let frac = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    f64::from(secs) - NTP_UNIX_OFFSET_SECS + f64::from(frac) / 4_294_967_296.0
}

const NTP_UNIX_OFFSET_SECS: f64 = 2_208_988_800.0;

/// Sends one SNTP (v4, client mode) request to `server` and checks the reply.
pub fn ntp_query(server: SocketAddr, timeout: Duration) -> Result<NtpReply, ProbeError> {
    let what = format!("NTP query to {server}");
    let sock = UdpSocket::bind((unspecified(server), 0)).map_err(io(&what))?;
    sock.set_read_timeout(Some(timeout)).map_err(io(&what))?;
    let mut req = [0u8; 48];
    req[0] = 0x23; // LI 0, version 4, mode 3 (client)
    // T1 in the transmit field: the server echoes it as the originate timestamp.
    let t1 = unix_now();
    // Whole seconds and a 32-bit fraction: both fit their fields by construction.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (secs, frac) = (
        (t1 + NTP_UNIX_OFFSET_SECS) as u32,
        (t1.fract() * 4_294_967_296.0) as u32,
    );
    req[40..44].copy_from_slice(&secs.to_be_bytes());
    req[44..48].copy_from_slice(&frac.to_be_bytes());
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
    let now = unix_now();
    let transmit_unix = ntp_timestamp(&buf[40..48]);
    let received_unix = ntp_timestamp(&buf[32..40]);
    // T1 as echoed (to the resolution of the NTP format, like the other three).
    let t1 = ntp_timestamp(&buf[24..32]);
    Ok(NtpReply {
        stratum,
        transmit_unix,
        offset_secs: transmit_unix - now,
        clock_offset_secs: f64::midpoint(received_unix - t1, transmit_unix - now),
        delay_secs: (now - t1) - (transmit_unix - received_unix),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_reports_the_peer_and_connect_reads_it() {
        // Bound before the server thread starts, so the client never races the bind.
        let listener =
            listen_on(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))).unwrap();
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
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
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
