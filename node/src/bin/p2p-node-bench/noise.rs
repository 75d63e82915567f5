//! `p2p-node-bench noise`: the cost of encryption, measured beside the plain line framing and
//! raw socket writes in the same run, over real loopback TCP connections (blocking sockets, one
//! thread per side: this measures the framing and cryptography, not the event loop).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use node::identity::Identity;
use node::secure::{Established, Handshake, HandshakeConfig, HandshakeOutput, NoiseKeys, Role};
use wire::line::LineFramer;

/// Lines queued per write (as a busy connection batches them).
const BATCH: usize = 1000;

/// How the lines cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Bytes written and counted, nothing parsed.
    Raw,
    /// `line\r\n` written, split by `LineFramer` on the other side.
    Plain,
    /// Sealed into Noise frames, decrypted and split by `SecureLines`.
    Encrypted,
}

/// One end's line codec.
enum Codec {
    /// `line\r\n`, split by the plain framer.
    Plain(LineFramer),
    /// The encrypted channel.
    Secure(Box<Established>),
}

impl Codec {
    /// Appends `line` as it goes on the wire.
    fn encode(&mut self, line: &str, out: &mut Vec<u8>) -> Result<()> {
        self.encode_batch(line, 1, out)
    }

    /// Queues `n` copies of `line` and appends them as they go on the wire (one seal).
    fn encode_batch(&mut self, line: &str, n: usize, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Codec::Plain(_) => {
                for _ in 0..n {
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            Codec::Secure(ch) => {
                for _ in 0..n {
                    ch.lines.queue_line(line);
                }
                ch.lines.seal(out)?;
            }
        }
        Ok(())
    }

    /// Feeds received bytes; calls `each` with every complete line.
    fn decode(&mut self, bytes: &[u8], mut each: impl FnMut(&str) -> Result<()>) -> Result<()> {
        match self {
            Codec::Plain(framer) => {
                framer.push(bytes);
                while let Some(line) = framer.next_str() {
                    each(line?)?;
                }
            }
            Codec::Secure(ch) => {
                ch.lines.push(bytes);
                while let Some(line) = ch.lines.next_str() {
                    each(line?)?;
                }
            }
        }
        Ok(())
    }
}

/// A connection over loopback: the dialer's socket and codec, the listener's.
struct Pair {
    tx: TcpStream,
    tx_codec: Codec,
    rx: TcpStream,
    rx_codec: Codec,
}

/// Connects a pair; runs the handshake when encrypted.
fn connect(framing: Framing) -> Result<Pair> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dialer = TcpStream::connect(addr)?;
    let (accepted, _) = listener.accept()?;
    dialer.set_nodelay(true)?;
    accepted.set_nodelay(true)?;
    if framing != Framing::Encrypted {
        return Ok(Pair {
            tx: dialer,
            tx_codec: Codec::Plain(LineFramer::default()),
            rx: accepted,
            rx_codec: Codec::Plain(LineFramer::default()),
        });
    }
    let (alice, bob) = (Identity::ephemeral(), Identity::ephemeral());
    let (alice_keys, bob_keys) = (NoiseKeys::generate(&alice), NoiseKeys::generate(&bob));
    let bob_key = bob.key();
    let mut d = dialer.try_clone()?;
    let initiator = std::thread::spawn(move || -> Result<Established> {
        let hs = Handshake::new(
            Instant::now(),
            Role::Initiator,
            &alice_keys,
            Some(bob_key),
            HandshakeConfig::default(),
            rand::random(),
        );
        run_handshake(&mut d, hs)
    });
    let mut a = accepted.try_clone()?;
    let hs = Handshake::new(
        Instant::now(),
        Role::Responder,
        &bob_keys,
        None,
        HandshakeConfig::default(),
        rand::random(),
    );
    let responder = run_handshake(&mut a, hs)?;
    let initiator = initiator
        .join()
        .map_err(|_| anyhow::anyhow!("initiator panicked"))??;
    Ok(Pair {
        tx: dialer,
        tx_codec: Codec::Secure(Box::new(initiator)),
        rx: accepted,
        rx_codec: Codec::Secure(Box::new(responder)),
    })
}

/// Drives a handshake over a blocking socket.
fn run_handshake(stream: &mut TcpStream, mut hs: Handshake) -> Result<Established> {
    let mut buf = [0u8; 4096];
    loop {
        while let Some(out) = hs.poll_output() {
            match out {
                HandshakeOutput::Send(bytes) => stream.write_all(&bytes)?,
                HandshakeOutput::Done(done) => {
                    let mut done = *done;
                    let leftover = std::mem::take(&mut done.leftover);
                    done.lines.push(&leftover);
                    return Ok(done);
                }
                HandshakeOutput::Failed(e) => bail!("handshake failed: {e}"),
            }
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            hs.handle_eof(Instant::now());
        } else {
            hs.handle_bytes(Instant::now(), &buf[..n]);
        }
    }
}

/// Sends `lines` lines of `bytes` bytes one way; returns seconds from the first write to the
/// last line read.
fn stream_lines(framing: Framing, lines: usize, bytes: usize) -> Result<f64> {
    let Pair {
        mut tx,
        mut tx_codec,
        mut rx,
        mut rx_codec,
    } = connect(framing)?;
    let line = "x".repeat(bytes);
    let start = Instant::now();
    let sender = std::thread::spawn(move || -> Result<()> {
        let mut out = Vec::with_capacity(BATCH * (bytes + 2) + 1024);
        let mut sent = 0;
        while sent < lines {
            out.clear();
            let n = BATCH.min(lines - sent);
            tx_codec.encode_batch(&line, n, &mut out)?;
            tx.write_all(&out)?;
            sent += n;
        }
        Ok(())
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    let mut raw_bytes = 0usize;
    while got < lines {
        let n = rx.read(&mut buf)?;
        if n == 0 {
            bail!("{framing:?}: closed after {got} of {lines} lines");
        }
        if framing == Framing::Raw {
            // Count bytes only: what the socket alone can do.
            raw_bytes += n;
            got = raw_bytes / (bytes + 2);
        } else {
            rx_codec.decode(&buf[..n], |_| {
                got += 1;
                Ok(())
            })?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(secs)
}

/// One-way latency of single lines, 100 us apart, in microseconds (sorted).
fn latencies(framing: Framing, samples: usize) -> Result<Vec<f64>> {
    let Pair {
        mut tx,
        mut tx_codec,
        mut rx,
        mut rx_codec,
    } = connect(framing)?;
    let epoch = Instant::now();
    let receiver = std::thread::spawn(move || -> Result<Vec<f64>> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut delays = Vec::with_capacity(samples);
        while delays.len() < samples {
            let n = rx.read(&mut buf)?;
            let now = epoch.elapsed().as_nanos();
            if n == 0 {
                break;
            }
            rx_codec.decode(&buf[..n], |line| {
                let sent: u128 = line.parse()?;
                delays.push((now - sent) as f64 / 1000.0);
                Ok(())
            })?;
        }
        Ok(delays)
    });
    let mut out = Vec::new();
    for _ in 0..samples {
        out.clear();
        let stamp = epoch.elapsed().as_nanos().to_string();
        tx_codec.encode(&stamp, &mut out)?;
        tx.write_all(&out)?;
        std::thread::sleep(Duration::from_micros(100));
    }
    let mut delays = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    delays.sort_by(f64::total_cmp);
    Ok(delays)
}

/// Seconds to seal `lines` lines, and to open them again, on this thread (no socket).
fn in_memory(lines: usize, bytes: usize) -> Result<(f64, f64)> {
    let Pair {
        mut tx_codec,
        mut rx_codec,
        ..
    } = connect(Framing::Encrypted)?;
    let line = "x".repeat(bytes);
    let mut wire = Vec::with_capacity(lines * (bytes + 2) * 11 / 10);
    let mut batch = Vec::with_capacity(BATCH * (bytes + 2) + 1024);
    let start = Instant::now();
    let mut sent = 0;
    while sent < lines {
        let n = BATCH.min(lines - sent);
        batch.clear();
        tx_codec.encode_batch(&line, n, &mut batch)?;
        wire.extend_from_slice(&batch);
        sent += n;
    }
    let seal = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut got = 0;
    for chunk in wire.chunks(64 * 1024) {
        rx_codec.decode(chunk, |_| {
            got += 1;
            Ok(())
        })?;
    }
    if got != lines {
        bail!("opened {got} of {lines} lines");
    }
    Ok((seal, start.elapsed().as_secs_f64()))
}

/// Complete handshakes (both sides, in memory) per second on this thread.
fn handshakes_per_second(seconds: f64) -> Result<(f64, usize)> {
    let (alice, bob) = (Identity::ephemeral(), Identity::ephemeral());
    let (alice_keys, bob_keys) = (NoiseKeys::generate(&alice), NoiseKeys::generate(&bob));
    let config = HandshakeConfig::default();
    let start = Instant::now();
    let mut count = 0;
    while start.elapsed().as_secs_f64() < seconds {
        let now = Instant::now();
        let mut a = Handshake::new(
            now,
            Role::Initiator,
            &alice_keys,
            Some(bob.key()),
            config,
            rand::random(),
        );
        let mut b = Handshake::new(
            now,
            Role::Responder,
            &bob_keys,
            Some(alice.key()),
            config,
            rand::random(),
        );
        let mut done = 0;
        while done < 2 {
            let before = done;
            done += shuttle(now, &mut a, &mut b)? + shuttle(now, &mut b, &mut a)?;
            if done == before && a.poll_timeout().is_some() && b.poll_timeout().is_some() {
                bail!("handshake stuck");
            }
        }
        count += 1;
    }
    Ok((
        f64::from(u32::try_from(count)?) / start.elapsed().as_secs_f64(),
        count,
    ))
}

/// Hands `from`'s outputs to `to`; returns 1 if `from` finished.
fn shuttle(now: Instant, from: &mut Handshake, to: &mut Handshake) -> Result<usize> {
    let mut done = 0;
    while let Some(out) = from.poll_output() {
        match out {
            HandshakeOutput::Send(bytes) => to.handle_bytes(now, &bytes),
            HandshakeOutput::Done(_) => done = 1,
            HandshakeOutput::Failed(e) => bail!("handshake failed: {e}"),
        }
    }
    Ok(done)
}

/// Median time from `connect()` to both sides ready, plain vs with the handshake, in us.
fn connect_times(rounds: usize) -> Result<(f64, f64)> {
    let median = |framing| -> Result<f64> {
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let start = Instant::now();
            let pair = connect(framing)?;
            times.push(start.elapsed().as_secs_f64() * 1e6);
            drop(pair);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    Ok((median(Framing::Plain)?, median(Framing::Encrypted)?))
}

/// The `noise` mode.
pub(crate) fn run(lines: usize, bytes: usize, samples: usize) -> Result<()> {
    println!("noise: {lines} lines of {bytes} bytes over one loopback TCP connection each");
    let mut plain_rate = 0.0;
    for framing in [Framing::Raw, Framing::Plain, Framing::Encrypted] {
        let secs = stream_lines(framing, lines, bytes).with_context(|| format!("{framing:?}"))?;
        let rate = lines as f64 / secs;
        let vs_plain = if framing == Framing::Plain {
            plain_rate = rate;
            String::new()
        } else if framing == Framing::Encrypted {
            format!(" = {:.0} % of plain", 100.0 * rate / plain_rate)
        } else {
            String::new()
        };
        println!(
            "  {:<9} {:>10.0} lines/s {:>8.1} MB/s{vs_plain}",
            format!("{framing:?}").to_lowercase(),
            rate,
            (lines * (bytes + 2)) as f64 / secs / 1e6
        );
    }
    let (seal, open) = in_memory(lines, bytes)?;
    println!(
        "  in memory, one thread: seal {:.0} lines/s ({:.0} MB/s), open and split {:.0} lines/s ({:.0} MB/s)",
        lines as f64 / seal,
        (lines * (bytes + 2)) as f64 / seal / 1e6,
        lines as f64 / open,
        (lines * (bytes + 2)) as f64 / open / 1e6
    );
    for framing in [Framing::Plain, Framing::Encrypted] {
        let d = latencies(framing, samples)?;
        let pct = |p: f64| d[((d.len() - 1) as f64 * p) as usize];
        println!(
            "  latency {:<9} {} lines, one-way p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            format!("{framing:?}").to_lowercase(),
            d.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    let (rate, count) = handshakes_per_second(3.0)?;
    println!(
        "  handshakes: {rate:.0}/s on one core ({count} in 3 s, both sides computed here: \
         about {:.0}/s for one side)",
        rate * 2.0
    );
    let (plain, encrypted) = connect_times(200)?;
    println!(
        "  connect on loopback, median of 200: {plain:.0} us plain, {encrypted:.0} us with the handshake (+{:.0} us)",
        encrypted - plain
    );
    Ok(())
}
