//! Rendezvous replies (`wire::rendezvous::Response`), what a node parses from the
//! rendezvous server (or from anyone pretending to be one): `NODES`, `CHALLENGE`, `FIGHT`, ...
//!
//! Mode 0: the rest is a line from a server; if it parses, its encoding parses to the same
//! value. Other modes: a valid reply built from the bytes, encoded and framed, parses back to
//! itself; an `ERROR` built from any text by `Response::error` too.

#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wire::line::DEFAULT_MAX_LINE_BYTES;
use wire::rendezvous::{
    MAX_BOOTSTRAP, MAX_PREDICTED_PORTS, NodeEntry, NodeType, NtpTime, Proto, Response,
};
use p2p_fuzz::{as_line, assert_one_line, ip, socket_addr, through_framer};

fn proto(u: &mut Unstructured<'_>) -> Result<Proto> {
    Ok(if u.arbitrary()? {
        Proto::Tcp
    } else {
        Proto::Udp
    })
}

fn ports(u: &mut Unstructured<'_>) -> Result<Vec<u16>> {
    let n = u.int_in_range(1..=MAX_PREDICTED_PORTS)?;
    (0..n).map(|_| u.int_in_range(1..=u16::MAX)).collect()
}

fn ntp_time(u: &mut Unstructured<'_>) -> Result<NtpTime> {
    let secs = if u.arbitrary()? {
        f64::from(u.arbitrary::<u32>()?) + f64::from(u.arbitrary::<u16>()?) / 65536.0
    } else {
        u.arbitrary::<f64>()?.abs()
    };
    Ok(NtpTime::new(secs).unwrap_or_else(|| NtpTime::new(1.0).unwrap_or_else(|| unreachable!())))
}

fn response(u: &mut Unstructured<'_>) -> Result<Response> {
    Ok(match u.int_in_range(0..=6)? {
        0 => {
            let n = u.int_in_range(0..=usize::from(MAX_BOOTSTRAP))?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(NodeEntry {
                    node_type: *u.choose(&[
                        NodeType::Passive,
                        NodeType::Active,
                        NodeType::Simultaneous,
                    ])?,
                    addr: socket_addr(u)?,
                });
            }
            Response::Nodes(entries)
        }
        1 => Response::RemoteTcp {
            port: u.arbitrary()?,
        },
        2 => Response::PredictionSet,
        3 => Response::Challenge {
            client_ip: ip(u)?,
            ports: ports(u)?,
            proto: proto(u)?,
        },
        4 => Response::Fight {
            node_ip: ip(u)?,
            ports: ports(u)?,
            proto: proto(u)?,
            ntp_time: ntp_time(u)?,
        },
        5 => Response::Reconnect,
        _ => {
            let text: String = u.arbitrary()?;
            Response::error(&text)
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode == 0 {
        let Some(line) = std::str::from_utf8(rest).ok().and_then(as_line) else {
            return;
        };
        if let Ok(reply) = line.parse::<Response>() {
            let encoded = reply.to_string();
            assert_one_line(&encoded);
            assert_eq!(
                encoded.parse::<Response>(),
                Ok(reply),
                "re-encoded {line:?}"
            );
        }
        if let Ok(entry) = line.parse::<NodeEntry>() {
            assert_eq!(entry.to_string().parse::<NodeEntry>(), Ok(entry));
            // The port is digits only (no sign).
            let port = line.rsplit(':').next().unwrap_or_default();
            assert!(
                port.bytes().all(|b| b.is_ascii_digit()),
                "accepted a port outside the format: {line:?}"
            );
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(reply) = response(&mut u) else {
        return;
    };
    let encoded = reply.to_string();
    assert_one_line(&encoded);
    let line = through_framer(&encoded, DEFAULT_MAX_LINE_BYTES);
    assert_eq!(
        line.parse::<Response>(),
        Ok(reply),
        "encoded as {encoded:?}"
    );
});
