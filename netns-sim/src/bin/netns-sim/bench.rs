//! `netns-sim bench-wan`: what the WAN delay stage costs, measured through real labs with the
//! UDP echo probes.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use netns_sim::lab::{Lab, STAGE_DAEMON};
use netns_sim::{Link, LinkProfile, Topology, TwoNats, sys};

/// Measure the WAN delay stage (needs root, about 30 s):
///
///   1. added RTT and jitter at 0 ms configured: UDP echo RTTs from alice (a zero-delay
///      stage on nat-a's link, both directions) and from bob (no stage) to pub;
///   2. the stage's packets/s on one core: pub2 sends to pub's echo server at rising rates
///      through a zero-delay stage on pub's down link, the stage pinned to CPU 0 (taskset),
///      sender and echo on CPU 1; loss, RTT and stage CPU per rate, and the per-core
///      ceiling that the highest loss-free rate and its CPU share point to;
///   3. its CPU cost at 10 000 packets/s: the stage's user+system time while pub2 sends
///      10 000 datagrams/s for 3 s through it.
///
/// Example:
///   cargo build --release -p netns-sim && sudo target/release/netns-sim bench-wan
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct BenchArgs {
    /// Echo round trips per RTT sample (one every 2 ms).
    #[arg(long, default_value_t = 2000)]
    pings: u32,
    /// Offered rates for the ceiling, packets/s, comma-separated.
    #[arg(long, default_value = "10000,20000,40000,60000")]
    rates: String,
}

struct Ping {
    sent: u64,
    received: u64,
    elapsed_us: u64,
    p50_us: u64,
    mean_us: u64,
    p99_us: u64,
    stddev_us: u64,
}

fn ping(lab: &Lab, me: &Path, host: &str, args: &[&str]) -> Result<Ping> {
    let mut words = vec!["taskset", "-c", "1"];
    let me_s = me.to_str().context("executable path is not UTF-8")?;
    words.extend([me_s, "probe", "udp-ping", "11.0.0.2:7100"]);
    words.extend_from_slice(args);
    let line = lab.exec_ok(host, &words)?;
    let v: serde_json::Value = serde_json::from_str(line.trim())?;
    let n = |k: &str| v[k].as_u64().with_context(|| format!("{k} in {v}"));
    Ok(Ping {
        sent: n("sent")?,
        received: n("received")?,
        elapsed_us: n("elapsed_us")?,
        p50_us: n("p50_us")?,
        mean_us: n("mean_us")?,
        p99_us: n("p99_us")?,
        stddev_us: n("stddev_us")?,
    })
}

fn echo(lab: &Lab, me: &Path) -> Result<netns_sim::LabChild> {
    let child = lab.spawn(
        "pub",
        Command::new("taskset").args(["-c", "1"]).arg(me).args([
            "probe",
            "udp-echo",
            "--listen",
            "0.0.0.0:7100",
        ]),
    )?;
    child.wait_for_stdout("listening", Duration::from_secs(5))?;
    Ok(child)
}

fn stage_pid(lab: &Lab, host: &str) -> Result<u32> {
    lab.state()
        .daemons
        .iter()
        .find(|d| d.name == STAGE_DAEMON && d.host == host)
        .map(|d| d.pid)
        .with_context(|| format!("no WAN stage on {host}"))
}

/// User + system CPU time of `pid`, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let (u, s) = (f.get(11), f.get(12));
    match (
        u.and_then(|u| u.parse::<u64>().ok()),
        s.and_then(|s| s.parse::<u64>().ok()),
    ) {
        (Some(u), Some(s)) => Ok(u + s),
        _ => bail!("cannot read the CPU time of pid {pid}"),
    }
}

fn pin(pid: u32, cpu: &str) -> Result<()> {
    // All threads of the stage (reader and scheduler).
    let ok = Command::new("taskset")
        .args(["-a", "-c", "-p", cpu, &pid.to_string()])
        .output()?
        .status
        .success();
    if !ok {
        bail!("taskset could not pin pid {pid}");
    }
    Ok(())
}

fn lab_with(links: &[(&str, Link)]) -> Result<Lab> {
    let mut t = Topology::two_nats(TwoNats::default());
    for (host, link) in links {
        t = t.with_link(host, *link);
    }
    Ok(Lab::up(&t)?)
}

/// A lab with a 0 ms stage on pub's down link only, and that stage's pid.
fn pub_down_stage() -> Result<(Lab, u32)> {
    let down_only = Link {
        up: None,
        down: Some(LinkProfile::ZERO),
    };
    let lab = lab_with(&[("pub", down_only)])?;
    let pid = stage_pid(&lab, "pub")?;
    Ok((lab, pid))
}

fn rates(list: &str) -> Result<Vec<u32>> {
    list.split(',')
        .map(|r| {
            r.trim()
                .parse::<u32>()
                .with_context(|| format!("rate {r:?}"))
        })
        .filter(|r| !matches!(r, Ok(0)))
        .collect()
}

/// pub2 sends `pps` datagrams/s for 2 s to pub's echo.
fn paced(lab: &Lab, me: &Path, pps: u32) -> Result<Ping> {
    let count = (pps * 2).to_string();
    let interval = (1_000_000 / pps).max(1).to_string();
    ping(
        lab,
        me,
        "pub2",
        &[
            "--count",
            &count,
            "--interval-us",
            &interval,
            "--wait-ms",
            "300",
        ],
    )
}

fn loss(p: &Ping) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let lost = 100.0 * (1.0 - p.received as f64 / p.sent.max(1) as f64);
    lost
}

fn rate(p: &Ping) -> f64 {
    // Echoes received per second of the run.
    #[allow(clippy::cast_precision_loss)]
    let r = p.received as f64 / (p.elapsed_us.max(1) as f64 / 1e6);
    r
}

pub(crate) fn bench_wan(args: &BenchArgs) -> Result<ExitCode> {
    sys::require_root()?;
    sys::require_tool("taskset")?;
    let me: PathBuf = std::env::current_exe()?;
    rtt_step(args, &me)?;
    ceiling_step(args, &me)?;
    cpu_step(&me)?;
    Ok(ExitCode::SUCCESS)
}

fn rtt_step(args: &BenchArgs, me: &Path) -> Result<()> {
    let (pings, interval) = (args.pings.to_string(), "2000");
    println!("== 1. added RTT at 0 ms configured ({pings} UDP echoes each, one per 2 ms)");
    let lab = lab_with(&[("nat-a", Link::symmetric(LinkProfile::ZERO))])?;
    let echo_server = echo(&lab, me)?;
    let base = ping(
        &lab,
        me,
        "bob",
        &["--count", &pings, "--interval-us", interval],
    )?;
    let staged = ping(
        &lab,
        me,
        "alice",
        &["--count", &pings, "--interval-us", interval],
    )?;
    for (who, p) in [
        ("no stage (bob)", &base),
        ("0 ms stage both ways (alice)", &staged),
    ] {
        println!(
            "   {who:<30} p50 {:>5} us  mean {:>5} us  p99 {:>5} us  stddev {:>4} us  ({}/{} back)",
            p.p50_us, p.mean_us, p.p99_us, p.stddev_us, p.received, p.sent
        );
    }
    #[allow(clippy::cast_possible_wrap)]
    let added = |a: u64, b: u64| a as i64 - b as i64;
    println!(
        "   added by two stage passes: p50 {:+} us, mean {:+} us, p99 {:+} us, stddev {:+} us",
        added(staged.p50_us, base.p50_us),
        added(staged.mean_us, base.mean_us),
        added(staged.p99_us, base.p99_us),
        added(staged.stddev_us, base.stddev_us)
    );
    drop(echo_server);
    lab.down()?;
    Ok(())
}

fn ceiling_step(args: &BenchArgs, me: &Path) -> Result<()> {
    println!(
        "\n== 2. packets/s on one core: pub2 sends to pub's echo at rising rates for 2 s each,\n   through a 0 ms stage on pub's down link pinned to CPU 0 (sender and echo on CPU 1)"
    );
    let (lab, pid) = pub_down_stage()?;
    pin(pid, "0")?;
    let echo_server = echo(&lab, me)?;
    let mut best: Option<(f64, f64)> = None;
    for pps in rates(&args.rates)? {
        let cpu0 = cpu_ticks(pid)?;
        let started = Instant::now();
        let p = paced(&lab, me, pps)?;
        let secs = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let busy = (cpu_ticks(pid)? - cpu0) as f64 / 100.0 / secs;
        let lost = loss(&p);
        println!(
            "   offered {pps:>6}/s: {:>6.0}/s back, {lost:>5.2} % lost, RTT p50 {:>5} us, stage CPU {:>5.1} % of one core",
            rate(&p),
            p.p50_us,
            busy * 100.0
        );
        if lost < 0.5 && busy > 0.0 {
            best = Some((rate(&p), busy));
        }
    }
    drop(echo_server);
    lab.down()?;
    let lab = lab_with(&[])?;
    let echo_server = echo(&lab, me)?;
    for pps in rates(&args.rates)? {
        let p = paced(&lab, me, pps)?;
        println!(
            "   control, no stage {pps:>6}/s: {:>6.0}/s back, {:>5.2} % lost, RTT p50 {:>5} us",
            rate(&p),
            loss(&p),
            p.p50_us
        );
    }
    drop(echo_server);
    lab.down()?;
    if let Some((r, busy)) = best {
        println!(
            "   highest loss-free rate {r:.0}/s at {:.0} % CPU: about {:.0} packets/s per core when saturated",
            busy * 100.0,
            r / busy
        );
    }

    Ok(())
}

fn cpu_step(me: &Path) -> Result<()> {
    println!("\n== 3. CPU cost at 10 000 packets/s (30 000 datagrams, one per 100 us)");
    let (lab, pid) = pub_down_stage()?;
    let echo_server = echo(&lab, me)?;
    let cpu0 = cpu_ticks(pid)?;
    let started = Instant::now();
    let paced = ping(
        &lab,
        me,
        "pub2",
        &[
            "--count",
            "30000",
            "--interval-us",
            "100",
            "--wait-ms",
            "200",
        ],
    )?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_ticks(pid)? - cpu0;
    drop(echo_server);
    lab.down()?;
    #[allow(clippy::cast_precision_loss)]
    let share = cpu as f64 / 100.0 / secs * 100.0;
    println!(
        "   {:.0} packets/s through the stage for {secs:.1} s: stage CPU {share:.1} % of one core ({} of {} came back)",
        rate(&paced),
        paced.received,
        paced.sent
    );
    Ok(())
}
