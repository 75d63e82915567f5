//! Signed reverse-connect requests an attacker posts to a node's mailbox (`REVERSE3`, see
//! `wire::signal`): forged, wrongly signed, replayed, stale, misaddressed and tampered ones,
//! each with what the node must find when it checks it (`node::core::RequestCheck`), and one
//! genuine request by the attacker's own key that names a third party's address (acted on
//! within the limits: the third party then sees a handshake that expects the attacker's key,
//! never a line in clear).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use node::core::RequestCheck;
use node::identity::Identity;
use node::wire::overlay::Nonce;
use node::wire::rendezvous::NodeType;
use node::wire::signal::{RequestKind, SignedRequest};
use node::wire::unl::NodeId;
use node::wire::unl::v3::{Scope, UnlAddr, UnlBody, UnlV3};

/// One request to post, and what the victim's check must say.
#[derive(Debug, Clone)]
pub struct SignedAttack {
    /// What it is.
    pub label: &'static str,
    /// The mailbox message.
    pub body: String,
    /// What the victim must find.
    pub check: RequestCheck,
}

/// The wall clock in Unix milliseconds.
///
/// # Panics
/// If the clock is before 1970.
pub fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_millis(),
    )
    .expect("milliseconds fit a u64")
}

/// A passive node's signed UNL at `addr` (both its WAN and LAN address).
///
/// # Panics
/// Never for one address.
pub fn unl_at(id: &Identity, addr: SocketAddr) -> UnlV3 {
    let mut body = UnlBody::new(now_ms());
    body.node_type = NodeType::Passive;
    for scope in [Scope::Wan, Scope::Lan] {
        body.addrs.push(UnlAddr { scope, addr });
    }
    UnlV3::sign(body, id.secret()).expect("one address signs")
}

fn reverse(from: &Identity, unl: &UnlV3, to: NodeId, at_ms: u64, nonce: u8) -> SignedRequest {
    SignedRequest::sign(
        RequestKind::Reverse,
        unl.clone(),
        to,
        at_ms,
        Nonce([nonce; 32]),
        from.secret(),
    )
    .expect("the UNL's own key signs")
}

/// The attacks on `victim` (its node id), each naming `third` as the address to dial; the
/// attacker is `mallory` (her key signs what she can sign), `alice` an honest node whose UNL
/// she copies. `round` varies the nonces, so rounds are not replays of each other.
///
/// # Panics
/// Never (every request is signed by its UNL's key before it is spoiled).
pub fn signed_request_attacks(
    victim: NodeId,
    third: SocketAddr,
    mallory: &Identity,
    alice: &Identity,
    round: u8,
) -> Vec<SignedAttack> {
    let now = now_ms();
    let n = round.wrapping_mul(8);
    let mallory_unl = unl_at(mallory, third);
    let alice_unl = unl_at(alice, third);
    let genuine = reverse(mallory, &mallory_unl, victim, now, n).to_string();
    // A signature character changed.
    let mut forged = genuine.clone().into_bytes();
    let at = forged.len() - 5;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ASCII");
    // mallory's signature, alice's UNL (so alice's key) in its place.
    let wrongly_signed = reverse(mallory, &mallory_unl, victim, now, n.wrapping_add(1))
        .to_string()
        .replace(&mallory_unl.to_string(), &alice_unl.to_string());
    // A character of the UNL changed (its own signature fails).
    let unl_text = mallory_unl.to_string();
    let mut spoiled_unl = unl_text.clone().into_bytes();
    let at = spoiled_unl.len() - 3;
    spoiled_unl[at] = if spoiled_unl[at] == b'A' { b'B' } else { b'A' };
    let tampered_unl = reverse(mallory, &mallory_unl, victim, now, n.wrapping_add(2))
        .to_string()
        .replace(&unl_text, &String::from_utf8(spoiled_unl).expect("ASCII"));
    let stale = reverse(
        mallory,
        &mallory_unl,
        victim,
        now - 600_000,
        n.wrapping_add(3),
    );
    let other = Identity::from_secret_bytes(&[0xee; 32]).node_id();
    let misaddressed = reverse(mallory, &mallory_unl, other, now, n.wrapping_add(4));
    vec![
        SignedAttack {
            label: "forged signature",
            body: forged,
            check: RequestCheck::Forged,
        },
        SignedAttack {
            label: "wrongly signed (another key than its UNL's)",
            body: wrongly_signed,
            check: RequestCheck::Forged,
        },
        SignedAttack {
            label: "tampered UNL",
            body: tampered_unl,
            check: RequestCheck::Forged,
        },
        SignedAttack {
            label: "stale (10 minutes old)",
            body: stale.to_string(),
            check: RequestCheck::Stale,
        },
        SignedAttack {
            label: "for another node",
            body: misaddressed.to_string(),
            check: RequestCheck::NotForUs,
        },
        SignedAttack {
            label: "genuine (mallory's own key, a third address)",
            body: genuine.clone(),
            check: RequestCheck::Accepted,
        },
        SignedAttack {
            label: "replayed",
            body: genuine,
            check: RequestCheck::Replayed,
        },
    ]
}
