//! PCP (`wire::pcp`): every datagram a node reads from UDP port 5351 (anyone on the LAN can
//! send one) and the requests a server would read.
//!
//! Mode 0: the rest is a datagram from a server; if it parses as a response, its encoding
//! parses to the same value, fits the size cap and is 4-byte aligned. Mode 1: the same for a
//! request. Other modes: a valid MAP request and an answer to it built from the bytes round
//! trip; the answer grants exactly when it says SUCCESS with a lifetime (and a port, for TCP
//! and UDP), and an answer with another nonce is never taken for one.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wire::pcp::{
    MAX_MESSAGE_BYTES, MAX_OPTIONS, MapData, MapRequest, Nonce, PcpError, PcpOption, Protocol,
    Request, Response, ResponseBody, ResultCode,
};

fn ip(u: &mut Unstructured<'_>) -> Result<IpAddr> {
    Ok(if u.arbitrary()? {
        IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?))
    } else {
        wire::pcp::decode_address(Ipv6Addr::from(u.arbitrary::<u128>()?).octets())
    })
}

fn option(u: &mut Unstructured<'_>) -> Result<PcpOption> {
    Ok(match u.int_in_range(0..=3)? {
        0 => PcpOption::ThirdParty(ip(u)?),
        1 => PcpOption::PreferFailure,
        2 => PcpOption::Filter {
            prefix_len: u.arbitrary()?,
            remote_port: u.arbitrary()?,
            remote: ip(u)?,
        },
        _ => {
            let code = u.arbitrary::<u8>()?;
            let code = if (1..=3).contains(&code) { code + 3 } else { code };
            let len = u.int_in_range(0..=40)?;
            PcpOption::Other {
                code,
                data: u.bytes(len)?.to_vec(),
            }
        }
    })
}

fn check_datagram(bytes: &[u8], response: bool) {
    let encoded = if response {
        let Ok(r) = Response::parse(bytes) else {
            return;
        };
        let e = r.encode();
        assert_eq!(Response::parse(&e), Ok(r));
        e
    } else {
        let Ok(r) = Request::parse(bytes) else {
            return;
        };
        let e = r.encode();
        assert_eq!(Request::parse(&e), Ok(r));
        e
    };
    assert!(encoded.len() <= bytes.len(), "grew from {} to {}", bytes.len(), encoded.len());
    assert!(encoded.len().is_multiple_of(4));
    assert!(encoded.len() <= MAX_MESSAGE_BYTES);
}

fn structured(u: &mut Unstructured<'_>) -> Result<()> {
    let n = u.int_in_range(0..=MAX_OPTIONS)?;
    let mut options = Vec::with_capacity(n);
    for _ in 0..n {
        options.push(option(u)?);
    }
    let req = MapRequest {
        lifetime_secs: u.arbitrary()?,
        client: ip(u)?,
        map: MapData {
            nonce: Nonce(u.arbitrary()?),
            protocol: Protocol(u.arbitrary()?),
            internal_port: u.arbitrary()?,
            external_port: u.arbitrary()?,
            external_ip: ip(u)?,
            options,
        },
    };
    let request = Request::Map(req.clone());
    assert_eq!(Request::parse(&request.encode()), Ok(request));
    let response = Response {
        result: ResultCode::from_code(u.arbitrary()?),
        lifetime_secs: u.arbitrary()?,
        epoch_secs: u.arbitrary()?,
        body: ResponseBody::Map(req.answer(u.arbitrary()?, ip(u)?)),
    };
    let parsed = Response::parse(&response.encode()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, response);
    let ResponseBody::Map(m) = &parsed.body else { unreachable!() };
    let ported = matches!(req.map.protocol, Protocol::TCP | Protocol::UDP);
    let should_grant = parsed.result == ResultCode::Success
        && (req.lifetime_secs == 0 || (parsed.lifetime_secs > 0 && (!ported || m.external_port > 0)));
    match req.grant(&parsed) {
        Ok(g) => {
            assert!(should_grant, "granted {g:?} for {parsed:?}");
            assert_eq!(g.external.port(), m.external_port);
            assert_eq!(g.lifetime_secs, parsed.lifetime_secs);
        }
        Err(PcpError::Refused { result, .. }) => {
            assert!(!should_grant);
            assert_eq!(result, parsed.result);
        }
        Err(e) => assert!(!should_grant, "{e}"),
    }
    // The same answer under another nonce is not an answer.
    let mut other = parsed.clone();
    if let ResponseBody::Map(m) = &mut other.body {
        m.nonce.0[0] ^= 1;
    }
    let err = req.grant(&other).unwrap_err();
    assert!(err.is_not_an_answer(), "{err}");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => check_datagram(rest, true),
        1 => check_datagram(rest, false),
        _ => {
            let _ = structured(&mut Unstructured::new(rest));
        }
    }
});
