//! `bootstrap`: N persistent clients, each sends `BOOTSTRAP <count>` and waits for the reply
//! before the next; one thread, one mio loop.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mio::{Events, Interest, Poll, Token};

use crate::connect_from;

pub(crate) struct Report {
    requests: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    reply_bytes: usize,
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

impl Report {
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn print(mut self, json: bool, clients: usize, count: u8, register: usize) {
        self.latencies_us.sort_unstable();
        let rate = self.requests as f64 / self.elapsed.as_secs_f64();
        let (p50, p99, p999) = (
            percentile(&self.latencies_us, 0.50),
            percentile(&self.latencies_us, 0.99),
            percentile(&self.latencies_us, 0.999),
        );
        if json {
            println!(
                "{{\"mode\":\"bootstrap\",\"clients\":{clients},\"count\":{count},\"registered\":{register},\"requests\":{},\"seconds\":{:.3},\"per_second\":{rate:.0},\"p50_us\":{p50},\"p99_us\":{p99},\"p999_us\":{p999},\"reply_bytes\":{}}}",
                self.requests,
                self.elapsed.as_secs_f64(),
                self.reply_bytes
            );
        } else {
            println!(
                "BOOTSTRAP {count} x {clients} clients ({register} nodes registered, reply {} bytes): \
                 {rate:.0} requests/s over {:.1} s; round trip p50 {p50} us, p99 {p99} us, p99.9 {p999} us",
                self.reply_bytes,
                self.elapsed.as_secs_f64()
            );
        }
    }
}

struct LoadClient {
    stream: mio::net::TcpStream,
    buf: Vec<u8>,
    sent_at: Instant,
}

pub(crate) fn run_bootstrap(
    target: SocketAddr,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    count: u8,
) -> anyhow::Result<Report> {
    let request = format!("BOOTSTRAP {count}\r\n").into_bytes();
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        let stream = connect_from(Ipv4Addr::LOCALHOST.into(), 0, target)
            .with_context(|| format!("connecting client {i} to {target}"))?;
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)?;
        conns.push(LoadClient {
            stream,
            buf: Vec::with_capacity(4096),
            sent_at: Instant::now(),
        });
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    for c in &mut conns {
        c.stream.write_all(&request)?;
        c.sent_at = Instant::now();
    }
    let mut events = Events::with_capacity(1024);
    let mut latencies_us = Vec::with_capacity(4_000_000);
    let mut requests = 0u64;
    let mut reply_bytes = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut open = clients;
    while open > 0 {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        let now = Instant::now();
        if now > end + Duration::from_secs(5) {
            bail!("{open} clients still waiting for a reply 5 s after the end");
        }
        for event in &events {
            let c = &mut conns[event.token().0];
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => bail!("server closed client {}", event.token().0),
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            while let Some(pos) = c.buf.iter().position(|&b| b == b'\n') {
                if c.buf.starts_with(b"ERROR") {
                    bail!(
                        "server answered {}",
                        String::from_utf8_lossy(&c.buf[..pos]).trim_end()
                    );
                }
                reply_bytes = pos + 1;
                c.buf.drain(..=pos);
                if c.sent_at >= measure_from && now <= end {
                    requests += 1;
                    let us = now.duration_since(c.sent_at).as_micros();
                    latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                if now < end {
                    c.stream.write_all(&request)?;
                    c.sent_at = Instant::now();
                } else {
                    open -= 1;
                }
            }
        }
    }
    Ok(Report {
        requests,
        elapsed: duration,
        latencies_us,
        reply_bytes,
    })
}
