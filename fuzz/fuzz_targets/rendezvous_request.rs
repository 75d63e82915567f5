//! Rendezvous requests (`wire::rendezvous::Request`), what the rendezvous server parses
//! from every client line.
//!
//! Mode 0: the rest is a line from a client. If it parses, its encoding parses to the same
//! value; if not, the `ERROR` reply the server would send is one line that a client parses back.
//! Other modes: a valid request built from the bytes is encoded, framed as on the wire, and
//! must parse back to itself.

#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wire::line::DEFAULT_MAX_LINE_BYTES;
use wire::rendezvous::{
    Family, MAX_BOOTSTRAP, MAX_PREDICTED_PORTS, MAX_TEXT_BYTES, NodeTarget, NtpTime, Proto,
    Request, Response,
};
use p2p_fuzz::{as_line, assert_one_line, ip, socket_addr, text_without, through_framer};

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
    let secs = match u.int_in_range(0..=2)? {
        0 => f64::from(u.arbitrary::<u32>()?),
        1 => f64::from(u.arbitrary::<u32>()?) + f64::from(u.arbitrary::<u16>()?) / 65536.0,
        _ => u.arbitrary::<f64>()?.abs(),
    };
    Ok(NtpTime::new(secs).unwrap_or_else(|| NtpTime::new(0.0).unwrap_or_else(|| unreachable!())))
}

fn request(u: &mut Unstructured<'_>) -> Result<Request> {
    Ok(match u.int_in_range(0..=8)? {
        0 => Request::Bootstrap {
            count: u.int_in_range(1..=MAX_BOOTSTRAP)?,
            own_port: if u.arbitrary()? {
                Some(u.int_in_range(1..=u16::MAX)?)
            } else {
                None
            },
        },
        1 => Request::PassiveReady {
            port: u.arbitrary()?,
            max_inbound: u.arbitrary()?,
        },
        2 => Request::SimultaneousReady {
            port: u.arbitrary()?,
            max_inbound: u.arbitrary()?,
        },
        3 => Request::SourceTcp {
            text: if u.arbitrary()? {
                Some(text_without(u, MAX_TEXT_BYTES, &['\r', '\n'])?)
            } else {
                None
            },
        },
        4 => Request::Candidate {
            node: if u.arbitrary()? {
                NodeTarget::Ip(ip(u)?)
            } else {
                NodeTarget::Addr(socket_addr(u)?)
            },
            proto: proto(u)?,
            ports: ports(u)?,
        },
        5 => Request::Accept {
            client_ip: ip(u)?,
            ports: ports(u)?,
            proto: proto(u)?,
            ntp_time: ntp_time(u)?,
        },
        6 => Request::Clear {
            port: u.arbitrary()?,
        },
        7 => Request::BootstrapFamily {
            family: *u.choose(&[Family::Ipv4, Family::Ipv6, Family::Any])?,
            count: u.int_in_range(1..=MAX_BOOTSTRAP)?,
            own_port: if u.arbitrary()? {
                Some(u.int_in_range(1..=u16::MAX)?)
            } else {
                None
            },
        },
        _ => Request::Quit,
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
        match line.parse::<Request>() {
            Ok(req) => {
                let encoded = req.to_string();
                assert_one_line(&encoded);
                assert_eq!(encoded.parse::<Request>(), Ok(req), "re-encoded {line:?}");
            }
            Err(e) => {
                let reply = Response::error(&e);
                let encoded = reply.to_string();
                assert_one_line(&encoded);
                assert_eq!(encoded.parse::<Response>(), Ok(reply), "error for {line:?}");
            }
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(req) = request(&mut u) else {
        return;
    };
    let encoded = req.to_string();
    assert_one_line(&encoded);
    let line = through_framer(&encoded, DEFAULT_MAX_LINE_BYTES);
    assert_eq!(line.parse::<Request>(), Ok(req), "encoded as {encoded:?}");
});
