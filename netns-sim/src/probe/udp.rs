//! UDP round trips: an echo server and a pinger that reports loss and RTT statistics (the lab
//! has no `ping` binary, and ICMP would need a raw socket). The pinger paces its datagrams on
//! absolute deadlines, so `interval` 100 µs really is 10 000 packets/s; interval zero floods.

use std::io::Write;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{ProbeError, io};

const HEADER: usize = 12;

/// Echoes every datagram back to its sender, forever. Writes `listening on ADDR` to `log`.
pub fn udp_echo(listen: SocketAddrV4, log: &mut dyn Write) -> Result<(), ProbeError> {
    let what = format!("UDP echo on {listen}");
    let sock = UdpSocket::bind(listen).map_err(io(&what))?;
    let _ = writeln!(log, "listening on {listen}");
    let _ = log.flush();
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf).map_err(io(&what))?;
        let _ = sock.send_to(&buf[..n], from);
    }
}

/// What a [`udp_ping`] run saw. Times in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PingReport {
    /// Datagrams sent.
    pub sent: u64,
    /// Echoes received (duplicates not counted).
    pub received: u64,
    /// Wall time from the first send to the last echo (or the end of the wait).
    pub elapsed_us: u64,
    /// Smallest RTT.
    pub min_us: u64,
    /// Median RTT.
    pub p50_us: u64,
    /// Mean RTT.
    pub mean_us: u64,
    /// 99th percentile RTT.
    pub p99_us: u64,
    /// Largest RTT.
    pub max_us: u64,
    /// Standard deviation of the RTTs.
    pub stddev_us: u64,
}

/// Sends `count` datagrams of `size` bytes (at least 12) to an echo server at `to`, one every
/// `interval`, and waits up to `wait` after the last for the echoes.
pub fn udp_ping(
    to: SocketAddr,
    count: u32,
    interval: Duration,
    size: usize,
    wait: Duration,
) -> Result<PingReport, ProbeError> {
    let what = format!("UDP ping to {to}");
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(io(&what))?;
    sock.connect(to).map_err(io(&what))?;
    let sender = sock.try_clone().map_err(io(&what))?;
    let start = Instant::now();
    let size = size.max(HEADER);
    let send_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; size];
        let mut sent = 0u64;
        for seq in 0..count {
            let deadline = start + interval * seq;
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            }
            let at = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            buf[..4].copy_from_slice(&seq.to_be_bytes());
            buf[4..12].copy_from_slice(&at.to_be_bytes());
            // A full socket buffer (flooding) loses the datagram, as a link would.
            if sender.send(&buf).is_ok() {
                sent += 1;
            }
        }
        (sent, Instant::now())
    });
    let mut seen = vec![false; count as usize];
    let mut rtts: Vec<u64> = Vec::with_capacity(count as usize);
    let mut buf = [0u8; 2048];
    let mut sender_done: Option<(u64, Instant)> = None;
    let mut last_echo = start;
    let mut send_thread = Some(send_thread);
    loop {
        if sender_done.is_none()
            && send_thread
                .as_ref()
                .is_some_and(std::thread::JoinHandle::is_finished)
        {
            sender_done = send_thread.take().and_then(|t| t.join().ok());
        }
        let remaining = match sender_done {
            Some((_, end)) => match (end + wait).checked_duration_since(Instant::now()) {
                Some(r) if !r.is_zero() => r,
                _ => break,
            },
            None => Duration::from_millis(50),
        };
        if rtts.len() == count as usize {
            if sender_done.is_none() {
                sender_done = send_thread.take().and_then(|t| t.join().ok());
            }
            break;
        }
        sock.set_read_timeout(Some(remaining.min(Duration::from_millis(50))))
            .map_err(io(&what))?;
        match sock.recv(&mut buf) {
            Ok(n) if n >= HEADER => {
                let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                let at = u64::from_be_bytes([
                    buf[4], buf[5], buf[6], buf[7], buf[8], buf[9], buf[10], buf[11],
                ]);
                if seq < seen.len() && !seen[seq] {
                    seen[seq] = true;
                    rtts.push(now.saturating_sub(at) / 1000);
                    last_echo = Instant::now();
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(io(&what)(e)),
        }
    }
    let sent = sender_done.map_or(u64::from(count), |(s, _)| s);
    Ok(report(sent, &mut rtts, last_echo.duration_since(start)))
}

fn report(sent: u64, rtts: &mut [u64], elapsed: Duration) -> PingReport {
    rtts.sort_unstable();
    let n = rtts.len();
    let pick = |q: f64| {
        // An index into a non-empty sorted slice: within bounds by construction.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((n as f64 - 1.0) * q).round() as usize;
        rtts.get(i).copied().unwrap_or(0)
    };
    let mean = if n == 0 {
        0
    } else {
        rtts.iter().sum::<u64>() / n as u64
    };
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let stddev = if n < 2 {
        0
    } else {
        let var = rtts
            .iter()
            .map(|&r| (r as f64 - mean as f64).powi(2))
            .sum::<f64>()
            / (n as f64 - 1.0);
        var.sqrt().round() as u64
    };
    PingReport {
        sent,
        received: n as u64,
        elapsed_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        min_us: rtts.first().copied().unwrap_or(0),
        p50_us: pick(0.5),
        mean_us: mean,
        p99_us: pick(0.99),
        max_us: rtts.last().copied().unwrap_or(0),
        stddev_us: stddev,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_an_echo_on_loopback() {
        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        let r = udp_ping(
            addr,
            50,
            Duration::from_millis(1),
            64,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!((r.sent, r.received), (50, 50));
        assert!(r.min_us <= r.p50_us && r.p50_us <= r.max_us, "{r:?}");
        assert!(r.max_us < 1_000_000, "{r:?}");
    }

    #[test]
    fn statistics() {
        let mut rtts = vec![30, 10, 20];
        let r = report(4, &mut rtts, Duration::from_millis(5));
        assert_eq!(
            (r.min_us, r.p50_us, r.mean_us, r.max_us, r.stddev_us),
            (10, 20, 20, 30, 10)
        );
        assert_eq!((r.sent, r.received), (4, 3));
    }
}
