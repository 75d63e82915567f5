//! `pcp-pinhole`: opens an IPv6 firewall pinhole with the node's PCP client
//! (`node::reach::pcp`) from inside a lab host, then obeys commands on stdin, one per line:
//! `renew`, `delete`, `quit`. Every result is one JSON line on stdout. For
//! `tests/tests/pcp_netns.rs`; the dual-stack node will do the same with the library.
//!
//! ```text
//! pcp-pinhole --internal [2001:db8:1::2]:50600 --lifetime 6 [--server [2001:db8:1::1]:5351]
//! ```
//! Without `--server`, the PCP server is the IPv6 default gateway (`pcp::gateway_v6`).

#![allow(clippy::expect_used)]

use std::io::BufRead as _;
use std::net::{SocketAddr, SocketAddrV6};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use node::reach::pcp::{self, PcpMapping};
use serde_json::{Value, json};
use wire::pcp::Protocol;

const EXCHANGE: Duration = Duration::from_secs(2);

fn usage() -> ExitCode {
    eprintln!("usage: pcp-pinhole --internal [IPV6]:PORT --lifetime SECS [--server ADDR:PORT]");
    ExitCode::from(2)
}

fn report(m: &PcpMapping) -> Value {
    json!({
        "server": m.server.to_string(),
        "internal": m.internal.to_string(),
        "external": m.external.to_string(),
        "lifetime": m.lifetime_secs,
        "nonce": m.nonce.to_string(),
        "epoch": m.epoch_secs,
    })
}

fn say(v: &Value) {
    println!("{v}");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let (Some(internal), Some(lifetime)) = (
        value("--internal").and_then(|v| v.parse::<SocketAddrV6>().ok()),
        value("--lifetime").and_then(|v| v.parse::<u32>().ok()),
    ) else {
        return usage();
    };
    let given = value("--server").map(|s| s.parse::<SocketAddr>());
    if let Some(Err(_)) = given {
        return usage();
    }
    let Some(server) = given.and_then(Result::ok).or_else(pcp::gateway_v6) else {
        say(&json!({"event": "error", "error": "no IPv6 default route"}));
        return ExitCode::FAILURE;
    };
    let started = Instant::now();
    let mut mapping = match pcp::open_pinhole(
        server,
        internal,
        Protocol::TCP,
        lifetime,
        started + EXCHANGE,
    ) {
        Ok(m) => m,
        Err(e) => {
            say(&json!({"event": "error", "server": server.to_string(), "error": e.to_string()}));
            return ExitCode::FAILURE;
        }
    };
    let mut opened = report(&mapping);
    opened["event"] = json!("opened");
    opened["us"] = json!(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    say(&opened);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let until = Instant::now() + EXCHANGE;
        match line.trim() {
            "renew" => match pcp::renew(&mapping, until) {
                Ok(m) => {
                    let mut v = report(&m);
                    v["event"] = json!("renewed");
                    say(&v);
                    mapping = m;
                }
                Err(e) => say(&json!({"event": "renew-failed", "error": e.to_string()})),
            },
            "delete" => match pcp::unmap(&mapping, until) {
                Ok(()) => say(&json!({"event": "deleted"})),
                Err(e) => say(&json!({"event": "delete-failed", "error": e.to_string()})),
            },
            "quit" => break,
            other => say(&json!({"event": "error", "error": format!("unknown command {other:?}")})),
        }
    }
    ExitCode::SUCCESS
}
