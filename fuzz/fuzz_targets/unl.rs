//! UNLs (`wire::unl::Unl`, 52 base64 characters), the node ids inside them, and the
//! `REVERSE_CONNECT:<UNL>:<nonce>` and `RELAY_CONNECT:<UNL>:<nonce>:<ip:port>` requests a node
//! reads from its mailbox (anyone may post one).
//!
//! Mode 0: the rest is text. A UNL that parses encodes back to exactly the (trimmed) text (the
//! decoder is strict, so there is one text per UNL); a reverse request that parses re-encodes to
//! the same value; a node id keeps its bytes. Mode 1: the rest is 38 raw bytes; if they decode,
//! they encode back to the same bytes. Other modes: a valid UNL built from the bytes round-trips
//! through its text, and inside a reverse request.

#![no_main]

use std::net::Ipv4Addr;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use node::connect::{RelayRequest, ReverseRequest};
use wire::overlay::Nonce;
use wire::unl::{Forwarding, NODE_ID_BYTES, NatType, NodeId, NodeType, Unl};

fn unl(u: &mut Unstructured<'_>) -> Result<Unl> {
    let raw: [u8; NODE_ID_BYTES] = u.arbitrary()?;
    Ok(Unl {
        node_id: NodeId::from_bytes(raw),
        node_type: *u.choose(&[NodeType::Passive, NodeType::Active, NodeType::Simultaneous])?,
        nat_type: *u.choose(&NatType::ALL)?,
        forwarding: *u.choose(&Forwarding::ALL)?,
        port: u.arbitrary()?,
        wan_ip: Ipv4Addr::from(u.arbitrary::<u32>()?),
        lan_ip: Ipv4Addr::from(u.arbitrary::<u32>()?),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(parsed) = text.parse::<Unl>() {
                assert_eq!(parsed.to_string(), text.trim_ascii(), "not canonical");
                assert_eq!(Unl::from_bytes(&parsed.to_bytes()), Ok(parsed));
            }
            if let Ok(req) = text.parse::<ReverseRequest>() {
                assert_eq!(req.to_string().parse::<ReverseRequest>(), Ok(req));
            }
            if let Ok(req) = text.parse::<RelayRequest>() {
                assert_eq!(req.to_string().parse::<RelayRequest>(), Ok(req));
            }
            if let Ok(id) = text.parse::<NodeId>() {
                assert_eq!(id.as_bytes(), text.as_bytes());
                assert_eq!(NodeId::from_bytes(*id.raw()), Some(id));
            }
        }
        1 => {
            if let Ok(parsed) = Unl::from_bytes(rest) {
                assert_eq!(&parsed.to_bytes()[..], rest);
            }
        }
        _ => {
            let mut u = Unstructured::new(rest);
            let (Ok(x), Ok(nonce)) = (unl(&mut u), u.arbitrary::<[u8; 32]>()) else {
                return;
            };
            let text = x.to_string();
            assert_eq!(text.len(), 52);
            assert_eq!(text.parse::<Unl>(), Ok(x));
            assert_eq!(x.master_cmp(&x), std::cmp::Ordering::Equal);
            let req = ReverseRequest {
                unl: x,
                nonce: Nonce(nonce),
            };
            assert_eq!(req.to_string().parse::<ReverseRequest>(), Ok(req));
            let (Ok(ip), Ok(port)) = (u.arbitrary::<u32>(), u.arbitrary::<u16>()) else {
                return;
            };
            let relay = RelayRequest {
                unl: x,
                nonce: Nonce(nonce),
                relay: std::net::SocketAddr::from((Ipv4Addr::from(ip), port)),
            };
            assert_eq!(relay.to_string().parse::<RelayRequest>(), Ok(relay));
        }
    }
});
