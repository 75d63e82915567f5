//! `netns-sim probe ...`: the network probes tests and the demo run inside lab hosts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use netns_sim::probe;

use crate::args::ProbeCmd;

pub(crate) fn probe_cmd(p: ProbeCmd) -> Result<ExitCode> {
    match p {
        ProbeCmd::Serve {
            listen,
            once,
            timeout_ms,
        } => {
            probe::serve(
                listen,
                once,
                timeout_ms.map(Duration::from_millis),
                &mut std::io::stdout(),
            )?;
        }
        ProbeCmd::Connect {
            addr,
            bind_port,
            send,
            timeout_ms,
        } => {
            let line = probe::connect(
                addr,
                bind_port,
                send.as_deref(),
                Duration::from_millis(timeout_ms),
            )?;
            println!("{line}");
        }
        ProbeCmd::Ntp { addr, timeout_ms } => {
            let r = probe::ntp_query(addr, Duration::from_millis(timeout_ms))?;
            println!(
                "stratum {} offset {:+.3}s transmit {:.3} ntp-offset {:+.4}s delay {:.4}s",
                r.stratum, r.offset_secs, r.transmit_unix, r.clock_offset_secs, r.delay_secs
            );
        }
        ProbeCmd::UdpEcho { listen } => probe::udp_echo(listen, &mut std::io::stdout())?,
        ProbeCmd::UdpPing {
            addr,
            count,
            interval_us,
            size,
            wait_ms,
        } => {
            let r = probe::udp_ping(
                addr,
                count,
                Duration::from_micros(interval_us),
                size,
                Duration::from_millis(wait_ms),
            )?;
            println!("{}", serde_json::to_string(&r)?);
        }
        ProbeCmd::HoldServe { listen, after_ms } => {
            probe::hold_serve(
                listen,
                Duration::from_millis(after_ms),
                &mut std::io::stdout(),
            )?;
        }
        ProbeCmd::HoldConnect {
            addr,
            keepalive_ms,
            timeout_ms,
        } => {
            let line = probe::hold_connect(
                addr,
                keepalive_ms.map(Duration::from_millis),
                Duration::from_millis(timeout_ms),
            )?;
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
