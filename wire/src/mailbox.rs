//! The dht-msg mailbox line protocol, as typed requests and replies (shared by the `dht-msg` server and the node).
//!
//! Every message implements [`FromStr`] and [`Display`]; `parse(display(x)) == x` holds for every
//! value (tested with proptest). Display never writes the line terminator: senders append `\r\n`.
//! A client (the node) uses the very same parser.
//!
//! | client → server | server → client |
//! |---|---|
//! | `REGISTER <node_id> <secret>` | `OK REGISTERED <node_id> NEW` or `... EXISTING` |
//! | `CHALLENGE` | `CHALLENGE <server name> <nonce: 64 hex>` |
//! | `REGISTER_KEY <public key> <signature>` | `OK REGISTERED <node_id> NEW` or `... EXISTING` |
//! | `SUBSCRIBE` | `OK SUBSCRIBED <pending>`, then one `MSG` per pending message, then pushes |
//! | `PUT <node_id> <message>` | `OK PUT <message_id>` |
//! | `LIST` | one `MSG` per pending message, then `OK LIST <count>` |
//! | `ACK <message_id>` | `OK ACK <message_id>` (the message is deleted) |
//! | `PING` | `PONG` |
//! | `QUIT` | (the server closes) |
//! | anything refused or malformed | `ERROR <reason>` |
//!
//! A delivered message is `MSG <message_id> <from> <message>`, where `<from>` is the sender's
//! node id when the sender had proven it (with `REGISTER` or `REGISTER_KEY` on its connection,
//! or its password over HTTP), or `-` when anonymous. `<message>` is the rest of the line,
//! verbatim.
//!
//! # Signed registration (`CHALLENGE` / `REGISTER_KEY`)
//!
//! A node that has an Ed25519 identity ([`crate::key`]) proves it owns its mailbox by signing a
//! challenge instead of presenting a secret: nothing is stored that could leak, and the mailbox
//! name is derived from the key ([`crate::key::PublicKey::mailbox_name`]: 40 lowercase hex
//! characters). The client speaks first, so PyP2P's HTTP clients and `REGISTER <id> <secret>`
//! are unchanged:
//! ```text
//! > CHALLENGE
//! < CHALLENGE [2001:db8::2]:8090 9f3c…(64 hex)
//! > REGISTER_KEY XsvnT0bU…(43 base64url) 1q2w…(86 base64url)
//! < OK REGISTERED 6d706a6b3475676b6e7a7a6b6e7a7a6b6e7a7a6b NEW
//! ```
//! The signature covers the server name, the nonce and the key ([`crate::signal::RegisterProof`]);
//! the server name is the one the server was configured with or the address the client dialed,
//! and a client checks it before signing ([`KeyRegistration`] does both sides of the exchange for
//! a client). A challenge answers one `REGISTER_KEY`; a proof for another challenge or another
//! server name, a replayed proof, or one with no challenge asked on the connection is refused
//! with an `ERROR` that says which.

use std::fmt::{self, Display, Formatter};
use std::str::FromStr;

use thiserror::Error;

use crate::signal::{RegisterChallenge, RegisterProof, SignalError};

/// Longest node id, in bytes. PyP2P's ids are the 40-character hex of 20 bytes.
pub const MAX_NODE_ID_BYTES: usize = 64;
/// Longest secret, in bytes.
pub const MAX_SECRET_BYTES: usize = 128;
/// Hard cap on a message body at the wire level; servers configure a lower one.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Longest `ERROR` text a server sends.
pub const MAX_ERROR_BYTES: usize = 1024;

/// Why a line is not a valid request or reply. Each names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The line is empty.
    #[error("empty line")]
    Empty,
    /// The first word names no known message.
    #[error("unknown command: {0:?}")]
    UnknownCommand(String),
    /// A required argument is absent.
    #[error("{command}: missing argument <{argument}>")]
    MissingArgument {
        /// The message being parsed.
        command: &'static str,
        /// The missing argument's name.
        argument: &'static str,
    },
    /// More arguments than the message takes.
    #[error("{command}: unexpected extra argument {extra:?}")]
    ExtraArgument {
        /// The message being parsed.
        command: &'static str,
        /// The first unexpected word.
        extra: String,
    },
    /// A node id is empty, too long, or has a character outside `[A-Za-z0-9._~-]` (the first one
    /// must be a letter or digit).
    #[error(
        "bad node id {0:?}: expected 1..={MAX_NODE_ID_BYTES} characters of [A-Za-z0-9._~-], \
         starting with a letter or digit"
    )]
    BadNodeId(String),
    /// A secret is empty, too long, or has a space or a non-printable character.
    #[error(
        "bad secret: expected 1..={MAX_SECRET_BYTES} printable ASCII characters without spaces, got {len} bytes"
    )]
    BadSecret {
        /// Its length (the secret itself is never echoed).
        len: usize,
    },
    /// A number is not one, or out of range.
    #[error("{command}: <{argument}> must be an unsigned integer, got {value:?}")]
    BadNumber {
        /// The message being parsed.
        command: &'static str,
        /// The argument's name.
        argument: &'static str,
        /// What was sent.
        value: String,
    },
    /// A message body is empty, too long or contains a line break.
    #[error("message must be 1..={max} bytes without line breaks, got {len} bytes")]
    BadBody {
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// `REGISTERED` is followed by neither `NEW` nor `EXISTING`.
    #[error("OK REGISTERED: expected NEW or EXISTING, got {0:?}")]
    BadRegistered(String),
    /// A `CHALLENGE` or `REGISTER_KEY` line that is not well formed (a bad key, a signature
    /// that is not 86 base64url characters, a bad server name or nonce).
    #[error("{command}: {source}")]
    Signed {
        /// `CHALLENGE` or `REGISTER_KEY`.
        command: &'static str,
        /// What was wrong.
        source: SignalError,
    },
}

/// A mailbox name: 1 to 64 characters of `[A-Za-z0-9._~-]`, the first a letter or digit
/// (URL-safe, so it needs no escaping in the HTTP API, and never `-`).
///
/// ```
/// use wire::mailbox::NodeId;
///
/// let id: NodeId = "74416a6d75386d4850484656444a387437704b38".parse()?;
/// assert_eq!(id.as_str().len(), 40);
/// assert!("has space".parse::<NodeId>().is_err());
/// assert!("-".parse::<NodeId>().is_err());
/// # Ok::<(), wire::mailbox::WireError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Display for NodeId {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = WireError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_NODE_ID_BYTES
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
        if valid {
            Ok(NodeId(text.to_string()))
        } else {
            Err(WireError::BadNodeId(clip(text, MAX_NODE_ID_BYTES + 8)))
        }
    }
}

/// A mailbox secret: 1 to 128 printable ASCII characters without spaces. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret as text (to send it, or to hash it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

impl Display for Secret {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Secret {
    type Err = WireError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text.as_bytes();
        if bytes.is_empty()
            || bytes.len() > MAX_SECRET_BYTES
            || !bytes.iter().all(|&b| (0x21..=0x7e).contains(&b))
        {
            return Err(WireError::BadSecret { len: bytes.len() });
        }
        Ok(Secret(text.to_string()))
    }
}

/// A stored message's id, unique on one server and increasing in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl Display for MessageId {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Checks a message body: non-empty, at most [`MAX_BODY_BYTES`], no `\r` or `\n`.
pub fn check_body(body: &str) -> Result<(), WireError> {
    if body.is_empty() || body.len() > MAX_BODY_BYTES || body.contains(['\r', '\n']) {
        return Err(WireError::BadBody {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    Ok(())
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `REGISTER <node_id> <secret>`: create the mailbox, or prove ownership of an existing one.
    /// Either way this connection now acts as that node (its `PUT`s carry it as sender).
    Register {
        /// The mailbox.
        node_id: NodeId,
        /// Its secret.
        secret: Secret,
    },
    /// `CHALLENGE`: ask for a challenge to sign ([`Reply::Challenge`]), the first half of a
    /// signed registration.
    Challenge,
    /// `REGISTER_KEY <public key> <signature>`: the signed answer to this connection's last
    /// challenge. Creates the mailbox named after the key, or proves ownership of it; this
    /// connection then acts as that node.
    RegisterKey(RegisterProof),
    /// `SUBSCRIBE`: push this connection's mailbox messages to it as they arrive.
    Subscribe,
    /// `PUT <node_id> <message>`: leave a message in a mailbox.
    Put {
        /// The recipient.
        to: NodeId,
        /// The message (the rest of the line).
        body: String,
    },
    /// `LIST`: send every pending message of this connection's mailbox.
    List,
    /// `ACK <message_id>`: delete a delivered message.
    Ack {
        /// The message.
        id: MessageId,
    },
    /// `PING`: a keep-alive, answered `PONG`.
    Ping,
    /// `QUIT`: close the connection.
    Quit,
}

/// One message as delivered: `MSG <message_id> <from|-> <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its id, for `ACK`.
    pub id: MessageId,
    /// The sender, when it proved who it was.
    pub from: Option<NodeId>,
    /// The message.
    pub body: String,
}

/// What a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK REGISTERED <node_id> NEW|EXISTING`
    Registered {
        /// The mailbox.
        node_id: NodeId,
        /// True if the mailbox was just created.
        created: bool,
    },
    /// `OK SUBSCRIBED <pending>`: that many `MSG` lines follow at once.
    Subscribed {
        /// Messages waiting in the mailbox.
        pending: usize,
    },
    /// `OK PUT <message_id>`: stored (on disk, if the server has a data directory).
    Stored {
        /// The new message's id.
        id: MessageId,
    },
    /// `OK LIST <count>`: ends the `MSG` lines a `LIST` produced.
    Listed {
        /// How many `MSG` lines came before.
        count: usize,
    },
    /// `OK ACK <message_id>`: deleted.
    Acked {
        /// The deleted message.
        id: MessageId,
    },
    /// `MSG <message_id> <from|-> <message>`
    Msg(Delivery),
    /// `CHALLENGE <server name> <nonce>`: sign this to register by key (`REGISTER_KEY`).
    Challenge(RegisterChallenge),
    /// `PONG`
    Pong,
    /// `ERROR <reason>`
    Error(String),
}

impl Reply {
    /// An `ERROR` reply whose text is kept on one line and within [`MAX_ERROR_BYTES`] (errors
    /// quote client input, which may be anything).
    pub fn error(reason: &dyn Display) -> Reply {
        let text: String = reason
            .to_string()
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        Reply::Error(clip(&text, MAX_ERROR_BYTES))
    }
}

fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn parse_id(command: &'static str, argument: &'static str, value: &str) -> Result<u64, WireError> {
    // Only plain digits: `u64::from_str` would also take a leading `+`, which would not
    // round-trip.
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WireError::BadNumber {
            command,
            argument,
            value: clip(value, 32),
        });
    }
    value.parse().map_err(|_| WireError::BadNumber {
        command,
        argument,
        value: clip(value, 32),
    })
}

fn parse_count(command: &'static str, value: &str) -> Result<usize, WireError> {
    let n = parse_id(command, "count", value)?;
    usize::try_from(n).map_err(|_| WireError::BadNumber {
        command,
        argument: "count",
        value: value.to_string(),
    })
}

/// Splits `line` into its first word and the rest (after exactly one space).
fn split_word(line: &str) -> (&str, Option<&str>) {
    match line.split_once(' ') {
        Some((word, rest)) => (word, Some(rest)),
        None => (line, None),
    }
}

fn no_more(command: &'static str, rest: Option<&str>) -> Result<(), WireError> {
    match rest {
        None => Ok(()),
        Some(extra) => Err(WireError::ExtraArgument {
            command,
            extra: clip(extra, 64),
        }),
    }
}

fn need<'a>(
    command: &'static str,
    argument: &'static str,
    value: Option<&'a str>,
) -> Result<&'a str, WireError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(WireError::MissingArgument { command, argument }),
    }
}

impl FromStr for Request {
    type Err = WireError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        if line.is_empty() {
            return Err(WireError::Empty);
        }
        let (verb, rest) = split_word(line);
        match verb {
            "REGISTER" => {
                let (node_id, rest) = split_word(need("REGISTER", "node_id", rest)?);
                let (secret, rest) = split_word(need("REGISTER", "secret", rest)?);
                no_more("REGISTER", rest)?;
                Ok(Request::Register {
                    node_id: node_id.parse()?,
                    secret: secret.parse()?,
                })
            }
            "CHALLENGE" => no_more("CHALLENGE", rest).map(|()| Request::Challenge),
            "REGISTER_KEY" => {
                line.parse()
                    .map(Request::RegisterKey)
                    .map_err(|source| WireError::Signed {
                        command: "REGISTER_KEY",
                        source,
                    })
            }
            "SUBSCRIBE" => no_more("SUBSCRIBE", rest).map(|()| Request::Subscribe),
            "PUT" => {
                let (to, body) = split_word(need("PUT", "node_id", rest)?);
                let to = to.parse()?;
                let body = need("PUT", "message", body)?;
                check_body(body)?;
                Ok(Request::Put {
                    to,
                    body: body.to_string(),
                })
            }
            "LIST" => no_more("LIST", rest).map(|()| Request::List),
            "ACK" => {
                let (id, rest) = split_word(need("ACK", "message_id", rest)?);
                no_more("ACK", rest)?;
                Ok(Request::Ack {
                    id: MessageId(parse_id("ACK", "message_id", id)?),
                })
            }
            "PING" => no_more("PING", rest).map(|()| Request::Ping),
            "QUIT" => no_more("QUIT", rest).map(|()| Request::Quit),
            _ => Err(WireError::UnknownCommand(clip(line, 64))),
        }
    }
}

impl Display for Request {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Request::Register { node_id, secret } => write!(f, "REGISTER {node_id} {secret}"),
            Request::Challenge => f.write_str("CHALLENGE"),
            Request::RegisterKey(proof) => write!(f, "{proof}"),
            Request::Subscribe => f.write_str("SUBSCRIBE"),
            Request::Put { to, body } => write!(f, "PUT {to} {body}"),
            Request::List => f.write_str("LIST"),
            Request::Ack { id } => write!(f, "ACK {id}"),
            Request::Ping => f.write_str("PING"),
            Request::Quit => f.write_str("QUIT"),
        }
    }
}

impl Display for Delivery {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "MSG {} ", self.id)?;
        match &self.from {
            Some(from) => write!(f, "{from} ")?,
            None => f.write_str("- ")?,
        }
        f.write_str(&self.body)
    }
}

mod register_key;
mod reply;
#[cfg(test)]
mod tests;

pub use register_key::{KeyRegistration, RegisterKeyError, RegisterStep};
