//! [`Reply`] parsed and formatted.

use std::fmt::{self, Display, Formatter};
use std::str::FromStr;

use super::{
    Delivery, MessageId, Reply, WireError, check_body, clip, need, no_more, parse_count, parse_id,
    split_word,
};

impl FromStr for Reply {
    type Err = WireError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        if line.is_empty() {
            return Err(WireError::Empty);
        }
        let (verb, rest) = split_word(line);
        match verb {
            "PONG" => no_more("PONG", rest).map(|()| Reply::Pong),
            "CHALLENGE" => line
                .parse()
                .map(Reply::Challenge)
                .map_err(|source| WireError::Signed {
                    command: "CHALLENGE",
                    source,
                }),
            "ERROR" => Ok(Reply::Error(rest.unwrap_or_default().to_string())),
            "MSG" => {
                let (id, rest) = split_word(need("MSG", "message_id", rest)?);
                let id = MessageId(parse_id("MSG", "message_id", id)?);
                let (from, body) = split_word(need("MSG", "from", rest)?);
                let from = match from {
                    "-" => None,
                    other => Some(other.parse()?),
                };
                let body = need("MSG", "message", body)?;
                check_body(body)?;
                Ok(Reply::Msg(Delivery {
                    id,
                    from,
                    body: body.to_string(),
                }))
            }
            "OK" => {
                let (what, rest) = split_word(need("OK", "what", rest)?);
                let (arg, extra) = match rest {
                    Some(rest) => split_word(rest),
                    None => ("", None),
                };
                match what {
                    "REGISTERED" => {
                        let node_id = need("OK REGISTERED", "node_id", Some(arg))?.parse()?;
                        let created = match need("OK REGISTERED", "state", extra)? {
                            "NEW" => true,
                            "EXISTING" => false,
                            other => return Err(WireError::BadRegistered(clip(other, 32))),
                        };
                        Ok(Reply::Registered { node_id, created })
                    }
                    "SUBSCRIBED" => {
                        no_more("OK SUBSCRIBED", extra)?;
                        Ok(Reply::Subscribed {
                            pending: parse_count("OK SUBSCRIBED", arg)?,
                        })
                    }
                    "PUT" => {
                        no_more("OK PUT", extra)?;
                        Ok(Reply::Stored {
                            id: MessageId(parse_id("OK PUT", "message_id", arg)?),
                        })
                    }
                    "LIST" => {
                        no_more("OK LIST", extra)?;
                        Ok(Reply::Listed {
                            count: parse_count("OK LIST", arg)?,
                        })
                    }
                    "ACK" => {
                        no_more("OK ACK", extra)?;
                        Ok(Reply::Acked {
                            id: MessageId(parse_id("OK ACK", "message_id", arg)?),
                        })
                    }
                    _ => Err(WireError::UnknownCommand(clip(line, 64))),
                }
            }
            _ => Err(WireError::UnknownCommand(clip(line, 64))),
        }
    }
}

impl Display for Reply {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Registered { node_id, created } => write!(
                f,
                "OK REGISTERED {node_id} {}",
                if *created { "NEW" } else { "EXISTING" }
            ),
            Reply::Subscribed { pending } => write!(f, "OK SUBSCRIBED {pending}"),
            Reply::Stored { id } => write!(f, "OK PUT {id}"),
            Reply::Listed { count } => write!(f, "OK LIST {count}"),
            Reply::Acked { id } => write!(f, "OK ACK {id}"),
            Reply::Msg(delivery) => write!(f, "{delivery}"),
            Reply::Challenge(challenge) => write!(f, "{challenge}"),
            Reply::Pong => f.write_str("PONG"),
            Reply::Error(text) => write!(f, "ERROR {text}"),
        }
    }
}
