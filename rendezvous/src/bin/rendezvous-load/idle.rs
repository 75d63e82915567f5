//! `idle`: silent connections held from many source addresses; the server's memory per
//! connection and a fresh client's latency while they are held.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::bootstrap::percentile;
use crate::connect_from;

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS line")?
        .parse()?)
}

/// p50 and p99 of `probes` sequential `BOOTSTRAP 20` round trips on one fresh connection.
fn probe_latency(target: SocketAddr, probes: usize) -> anyhow::Result<(u32, u32)> {
    let stream = connect_from(Ipv4Addr::new(127, 3, 0, 1).into(), 0, target)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut lat = Vec::with_capacity(probes);
    let mut line = String::new();
    for _ in 0..probes {
        let t = Instant::now();
        writer.write_all(b"BOOTSTRAP 20\r\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        if !line.starts_with("NODES") {
            bail!("probe got {line:?}");
        }
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    lat.sort_unstable();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn run_idle(
    target: SocketAddr,
    pid: u32,
    count: usize,
    per_ip: usize,
    probes: usize,
    json: bool,
) -> anyhow::Result<()> {
    let (before_p50, before_p99) = probe_latency(target, probes)?;
    let rss_before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    let mut first_error = None;
    let started = Instant::now();
    for i in 0..count {
        let n = i / per_ip;
        let ip = Ipv4Addr::new(127, 2, u8::try_from(n / 250)?, u8::try_from(n % 250 + 1)?);
        let port = 20_000 + u16::try_from(i % per_ip)?;
        match connect_from(ip.into(), port, target) {
            Ok(s) => held.push(s),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
                if failed > 100 {
                    break;
                }
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    // Let the server accept the backlog, then see which connections it refused or closed.
    std::thread::sleep(Duration::from_secs(2));
    let mut refused = 0usize;
    for s in &held {
        s.set_nonblocking(true)?;
        let mut b = [0u8; 1];
        match s.peek(&mut b) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            _ => refused += 1,
        }
    }
    let rss_after = rss_kib(pid)?;
    let accepted = held.len() - refused;
    let per_conn_bytes = if accepted > 0 {
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / accepted as f64
    } else {
        0.0
    };
    // At the server's file-descriptor limit a fresh client cannot be accepted at all: report it.
    let (during_p50, during_p99, during_error) = match probe_latency(target, probes) {
        Ok((p50, p99)) => (p50, p99, String::new()),
        Err(e) => (0, 0, e.to_string()),
    };
    if json {
        println!(
            "{{\"mode\":\"idle\",\"attempted\":{count},\"held\":{accepted},\"refused_or_closed\":{refused},\"connect_failures\":{failed},\"rss_before_kib\":{rss_before},\"rss_after_kib\":{rss_after},\"bytes_per_connection\":{per_conn_bytes:.0},\"probe_before_p50_us\":{before_p50},\"probe_before_p99_us\":{before_p99},\"probe_during_p50_us\":{during_p50},\"probe_during_p99_us\":{during_p99},\"probe_during_error\":{during_error:?},\"open_seconds\":{open_secs:.2}}}"
        );
    } else {
        println!(
            "idle: {accepted} of {count} held ({refused} refused/closed by the server, {failed} connect failures{}), opened in {open_secs:.1} s",
            first_error
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        );
        println!(
            "server RSS {rss_before} KiB -> {rss_after} KiB: {per_conn_bytes:.0} bytes per idle connection"
        );
        if during_error.is_empty() {
            println!(
                "fresh client BOOTSTRAP 20: before p50 {before_p50} us / p99 {before_p99} us; while held p50 {during_p50} us / p99 {during_p99} us"
            );
        } else {
            println!(
                "fresh client BOOTSTRAP 20: before p50 {before_p50} us / p99 {before_p99} us; while held: not served ({during_error})"
            );
        }
    }
    Ok(())
}
