//! A held TCP connection, for mapping-timeout tests: the server accepts one client, stays
//! silent for a while (reading whatever the client sends, e.g. keepalives), then writes one
//! line; the client prints it if it arrives. If the NAT forgot the connection in between, the
//! line never arrives.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use super::{ProbeError, io, listen_on};

/// Accepts one client on `listen`, waits `after`, writes `late line` and waits for the client
/// to close (up to 10 s). Writes `listening on ADDR` and `sent` to `log`.
pub fn hold_serve(
    listen: SocketAddrV4,
    after: Duration,
    log: &mut dyn Write,
) -> Result<(), ProbeError> {
    let what = format!("hold on {listen}");
    let listener = listen_on(listen.into())?;
    listener.set_nonblocking(false).map_err(io(&what))?;
    let _ = writeln!(log, "listening on {listen}");
    let _ = log.flush();
    let (mut stream, peer) = listener.accept().map_err(io(&what))?;
    let _ = writeln!(log, "accepted from {peer}");
    let _ = log.flush();
    let until = Instant::now() + after;
    let mut buf = [0u8; 256];
    while let Some(left) = until
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        stream.set_read_timeout(Some(left)).map_err(io(&what))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(io(&what)(e)),
        }
    }
    stream.write_all(b"late line\n").map_err(io(&what))?;
    let _ = writeln!(log, "sent");
    let _ = log.flush();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io(&what))?;
    let _ = std::io::copy(&mut stream, &mut std::io::sink());
    Ok(())
}

/// Connects to `to`, sends a byte every `keepalive` (if given) and returns the first line the
/// server writes within `timeout`.
pub fn hold_connect(
    to: SocketAddr,
    keepalive: Option<Duration>,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let what = format!("held connection to {to}");
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(io(&what))?;
    let mut writer = stream.try_clone().map_err(io(&what))?;
    let deadline = Instant::now() + timeout;
    let tick = keepalive.unwrap_or(timeout);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Err(ProbeError::Timeout {
                what,
                after: timeout,
            });
        };
        reader
            .get_ref()
            .set_read_timeout(Some(left.min(tick)))
            .map_err(io(&what))?;
        match reader.read_line(&mut line) {
            Ok(0) => return Err(io(&what)(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) if line.ends_with('\n') => return Ok(line.trim().to_owned()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if keepalive.is_some() {
                    writer.write_all(b".").map_err(io(&what))?;
                }
            }
            Err(e) => return Err(io(&what)(e)),
        }
    }
}
