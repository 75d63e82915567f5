//! The dht-msg line protocol, server side (`wire::mailbox::Reply`): what a node parses
//! from its mailbox server, `MSG` lines included (their bodies come from anyone who posts).
//!
//! Mode 0: the rest is a line from a server; if it parses, its encoding parses to the same
//! value. Other modes: a valid reply built from the bytes, encoded and framed, parses back;
//! an `ERROR` built by `Reply::error` from any text too.

#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wire::mailbox::{
    Delivery, MAX_ERROR_BYTES, MAX_NODE_ID_BYTES, MessageId, NodeId, Reply,
};
use p2p_fuzz::{as_line, assert_one_line, text_from, text_without, through_framer};

const ID_FIRST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const ID_REST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~-";

fn node_id(u: &mut Unstructured<'_>) -> Result<NodeId> {
    let first = text_from(u, ID_FIRST, 1, 1)?;
    let rest = text_from(u, ID_REST, 0, MAX_NODE_ID_BYTES - 1)?;
    Ok(format!("{first}{rest}")
        .parse()
        .unwrap_or_else(|e| panic!("{e}")))
}

fn reply(u: &mut Unstructured<'_>) -> Result<Option<Reply>> {
    Ok(Some(match u.int_in_range(0..=8)? {
        0 => Reply::Registered {
            node_id: node_id(u)?,
            created: u.arbitrary()?,
        },
        1 => Reply::Subscribed {
            pending: u.arbitrary()?,
        },
        2 => Reply::Stored {
            id: MessageId(u.arbitrary()?),
        },
        3 => Reply::Listed {
            count: u.arbitrary()?,
        },
        4 => Reply::Acked {
            id: MessageId(u.arbitrary()?),
        },
        5 => {
            let body = text_without(u, 16 * 1024, &['\r', '\n'])?;
            if body.is_empty() {
                return Ok(None);
            }
            Reply::Msg(Delivery {
                id: MessageId(u.arbitrary()?),
                from: if u.arbitrary()? {
                    Some(node_id(u)?)
                } else {
                    None
                },
                body,
            })
        }
        6 => Reply::Pong,
        7 => {
            let port: u16 = u.arbitrary()?;
            let server = if u.arbitrary()? {
                format!("[2001:db8::{:x}]:{port}", u.arbitrary::<u16>()?)
            } else {
                format!("mailbox{}.example.net:{port}", u.arbitrary::<u8>()?)
            };
            Reply::Challenge(wire::signal::RegisterChallenge {
                server,
                nonce: wire::overlay::Nonce(u.arbitrary()?),
            })
        }
        _ => {
            let text: String = u.arbitrary()?;
            let reply = Reply::error(&text);
            if let Reply::Error(t) = &reply {
                assert!(t.len() <= MAX_ERROR_BYTES);
            }
            reply
        }
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
        if let Ok(reply) = line.parse::<Reply>() {
            let encoded = reply.to_string();
            assert_one_line(&encoded);
            assert_eq!(encoded.parse::<Reply>(), Ok(reply), "re-encoded {line:?}");
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(Some(reply)) = reply(&mut u) else {
        return;
    };
    let encoded = reply.to_string();
    assert_one_line(&encoded);
    let line = through_framer(&encoded, 64 * 1024);
    assert_eq!(line.parse::<Reply>(), Ok(reply), "encoded as {encoded:?}");
});
