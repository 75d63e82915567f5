//! UNL v3 (`wire::unl::v3`), `AnyUnl`, and the signed requests and registration lines that
//! carry keys (`wire::signal`): anyone can post a UNL or a request.
//!
//! Mode 0: the rest is text. Whatever parses re-encodes to exactly the (trimmed) text (the
//! decoders are strict, so there is one text per value) and parses again to the same value.
//! Mode 1: the rest is raw UNL bytes: if they decode, they encode back to the same bytes, and
//! flipping one byte chosen by the input makes them fail. Other modes: a UNL built from the
//! bytes and signed with a key from them round-trips through text and bytes, inside a signed
//! request too.

#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wire::key::SigningKey;
use wire::overlay::Nonce;
use wire::signal::{RegisterChallenge, RegisterProof, RequestKind, SignedRequest};
use wire::unl::v3::{AnyUnl, Endpoint, MAX_ADDRS, MAX_SERVERS, Scope, UnlAddr, UnlBody, UnlV3};
use wire::unl::{Forwarding, NatType, NodeType};

fn addr(u: &mut Unstructured<'_>) -> Result<SocketAddr> {
    Ok(if u.arbitrary()? {
        SocketAddr::from((Ipv4Addr::from(u.arbitrary::<u32>()?), u.arbitrary::<u16>()?))
    } else {
        SocketAddr::from((Ipv6Addr::from(u.arbitrary::<u128>()?), u.arbitrary::<u16>()?))
    })
}

fn endpoint(u: &mut Unstructured<'_>) -> Result<Endpoint> {
    Ok(if u.arbitrary()? {
        Endpoint::Addr(addr(u)?)
    } else {
        let name = p2p_fuzz::text_from(u, b"abcxyz0189.-", 1, 40)?;
        Endpoint::Host { name, port: u.arbitrary()? }
    })
}

fn body(u: &mut Unstructured<'_>) -> Result<UnlBody> {
    let mut b = UnlBody::new(u.arbitrary()?);
    b.node_type = *u.choose(&[NodeType::Passive, NodeType::Active, NodeType::Simultaneous])?;
    b.nat_type = *u.choose(&NatType::ALL)?;
    b.forwarding = *u.choose(&Forwarding::ALL)?;
    for _ in 0..u.int_in_range(0..=MAX_ADDRS)? {
        let scope = if u.arbitrary()? { Scope::Wan } else { Scope::Lan };
        b.addrs.push(UnlAddr { scope, addr: addr(u)? });
    }
    for _ in 0..u.int_in_range(0..=MAX_SERVERS)? {
        b.rendezvous.push(endpoint(u)?);
    }
    for _ in 0..u.int_in_range(0..=MAX_SERVERS)? {
        b.mailboxes.push(endpoint(u)?);
    }
    Ok(b)
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
            if let Ok(unl) = text.parse::<UnlV3>() {
                assert_eq!(unl.to_string(), text.trim_ascii(), "not canonical");
                assert_eq!(UnlV3::from_bytes(&unl.to_bytes()), Ok(unl.clone()));
                assert_eq!(unl.node_id(), unl.key().node_id());
            }
            if let Ok(any) = text.parse::<AnyUnl>() {
                assert_eq!(any.to_string().parse::<AnyUnl>(), Ok(any));
            }
            if let Ok(req) = text.parse::<SignedRequest>() {
                assert_eq!(req.to_string(), text, "not canonical");
            }
            if let Ok(c) = text.parse::<RegisterChallenge>() {
                assert_eq!(c.to_string(), text);
            }
            if let Ok(p) = text.parse::<RegisterProof>() {
                assert_eq!(p.to_string(), text);
            }
        }
        1 => {
            if let Ok(unl) = UnlV3::from_bytes(rest) {
                assert_eq!(unl.to_bytes(), rest);
                let mut bad = rest.to_vec();
                let i = usize::from(rest[rest.len() - 1]) % bad.len();
                bad[i] ^= 0x40;
                assert!(UnlV3::from_bytes(&bad).is_err(), "byte {i} flipped still decodes");
            }
        }
        _ => {
            let mut u = Unstructured::new(rest);
            let (Ok(seed), Ok(b)) = (u.arbitrary::<[u8; 32]>(), body(&mut u)) else {
                return;
            };
            let secret = SigningKey::from_bytes(&seed);
            let unl = UnlV3::sign(b.clone(), &secret).expect("a body within the caps signs");
            assert_eq!(unl.body(), &b);
            let text = unl.to_string();
            assert!(!text.contains(['/', '+', '=', ':', ' ']), "{text}");
            p2p_fuzz::assert_one_line(&text);
            assert_eq!(text.parse::<UnlV3>(), Ok(unl.clone()));
            let (Ok(ts), Ok(nonce), Ok(relay)) = (
                u.arbitrary::<u64>(),
                u.arbitrary::<[u8; 32]>(),
                u.arbitrary::<bool>(),
            ) else {
                return;
            };
            let kind = if relay {
                RequestKind::Relay { relay: SocketAddr::from(([198, 51, 100, 7], 8000)) }
            } else {
                RequestKind::Reverse
            };
            let to = wire::key::PublicKey::of(&SigningKey::from_bytes(&[7; 32])).node_id();
            let req = SignedRequest::sign(kind, unl, to, ts, Nonce(nonce), &secret)
                .expect("the UNL's own key signs");
            let line = req.to_string();
            p2p_fuzz::assert_one_line(&line);
            assert_eq!(line.parse::<SignedRequest>(), Ok(req));
        }
    }
});
