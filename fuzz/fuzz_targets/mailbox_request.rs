//! The dht-msg line protocol, client side (`wire::mailbox::Request`): what the mailbox
//! server parses from every line a client sends (`REGISTER`, `CHALLENGE`, `REGISTER_KEY`,
//! `PUT`, `ACK`, ...).
//!
//! Mode 0: the rest is a line from a client. If it parses, its encoding parses to the same
//! value; if not, the `ERROR` reply the server sends for it is one line that parses back.
//! Other modes: a valid request built from the bytes, encoded and framed, parses back.

#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wire::mailbox::{
    MAX_ERROR_BYTES, MAX_NODE_ID_BYTES, MAX_SECRET_BYTES, MessageId, NodeId, Reply, Request,
};
use p2p_fuzz::{as_line, assert_one_line, text_from, text_without, through_framer};

const ID_FIRST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const ID_REST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~-";

/// A valid mailbox name.
pub fn node_id(u: &mut Unstructured<'_>) -> Result<NodeId> {
    let first = text_from(u, ID_FIRST, 1, 1)?;
    let rest = text_from(u, ID_REST, 0, MAX_NODE_ID_BYTES - 1)?;
    Ok(format!("{first}{rest}")
        .parse()
        .unwrap_or_else(|e| panic!("{e}")))
}

fn request(u: &mut Unstructured<'_>) -> Result<Option<Request>> {
    Ok(Some(match u.int_in_range(0..=8)? {
        0 => {
            let printable: Vec<u8> = (0x21..=0x7e).collect();
            Request::Register {
                node_id: node_id(u)?,
                secret: text_from(u, &printable, 1, MAX_SECRET_BYTES)?
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
            }
        }
        1 => Request::Subscribe,
        2 => {
            let body = text_without(u, 16 * 1024, &['\r', '\n'])?;
            if body.is_empty() {
                return Ok(None);
            }
            Request::Put {
                to: node_id(u)?,
                body,
            }
        }
        3 => Request::List,
        4 => Request::Ack {
            id: MessageId(u.arbitrary()?),
        },
        5 => Request::Ping,
        6 => Request::Challenge,
        7 => {
            let secret = wire::key::SigningKey::from_bytes(&u.arbitrary()?);
            Request::RegisterKey(wire::signal::RegisterProof {
                key: wire::key::PublicKey::of(&secret),
                signature: u.arbitrary()?,
            })
        }
        _ => Request::Quit,
    }))
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
                let reply = Reply::error(&e);
                let encoded = reply.to_string();
                assert_one_line(&encoded);
                assert!(
                    encoded.len() <= MAX_ERROR_BYTES + 6,
                    "{} bytes",
                    encoded.len()
                );
                assert_eq!(encoded.parse::<Reply>(), Ok(reply), "error for {line:?}");
            }
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(Some(req)) = request(&mut u) else {
        return;
    };
    let encoded = req.to_string();
    assert_one_line(&encoded);
    let line = through_framer(&encoded, 64 * 1024);
    assert_eq!(line.parse::<Request>(), Ok(req), "encoded as {encoded:?}");
});
