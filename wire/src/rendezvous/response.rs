//! [`Response`]: what the server sends, parsed and formatted.

use std::fmt::{self, Display, Formatter};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::fields::{NodeEntry, NtpTime, Proto};
use super::words::{
    Words, check_text, first_words, parse_port_or_random, ports_then_proto, ports_then_proto_from,
    strip_command, write_ports,
};
use super::{MAX_BOOTSTRAP, MAX_TEXT_BYTES, ParseError};

/// A message the rendezvous server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `NODES <entry> <entry> ... ` (trailing space, as PyP2P) or `NODES EMPTY`.
    Nodes(Vec<NodeEntry>),
    /// `REMOTE TCP <port>`: the source port the server observed.
    RemoteTcp {
        /// Observed source port.
        port: u16,
    },
    /// `REMOTE ADDR <ip> <port> <unix time>` (extension, the answer to `SOURCE ADDR`): the
    /// address the server observed and its clock when it answered, so a node learns its WAN
    /// address and the clock offset that times a hole punch from the server it already uses.
    RemoteAddr {
        /// Observed source address.
        addr: SocketAddr,
        /// The server's clock (seconds since the Unix epoch) when it answered.
        time: NtpTime,
    },
    /// `PREDICTION SET`: the candidate was stored.
    PredictionSet,
    /// `CHALLENGE <client_ip> <ports> <proto>`: to a simultaneous node, a candidate wants to punch.
    Challenge {
        /// The candidate's observed IP.
        client_ip: IpAddr,
        /// The candidate's predicted ports.
        ports: Vec<u16>,
        /// Transport.
        proto: Proto,
    },
    /// `FIGHT <node_ip> <ports> <proto> <ntp_time>`: to a candidate, connect now-ish.
    Fight {
        /// The simultaneous node's observed IP.
        node_ip: IpAddr,
        /// Its predicted ports.
        ports: Vec<u16>,
        /// Transport.
        proto: Proto,
        /// When both sides connect.
        ntp_time: NtpTime,
    },
    /// `RECONNECT`: to a simultaneous node whose registration is stale; it should re-register.
    Reconnect,
    /// `ERROR <reason>`: the last line was rejected (extension; PyP2P stays silent).
    Error(String),
    /// `RELAY WAITING` (extension): parked until the peer presents the same token.
    RelayWaiting,
    /// `RELAY OK` (extension): paired; every byte after this line comes from the peer.
    RelayOk,
}

impl FromStr for Response {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Self, ParseError> {
        let line = line.trim_start_matches([' ', '\t']);
        if line.trim_end().is_empty() {
            return Err(ParseError::Empty);
        }
        if let Some(rest) = strip_command(line, "NODES") {
            let mut entries = Vec::new();
            let mut words = rest.split_ascii_whitespace().peekable();
            if words.peek() == Some(&"EMPTY") {
                words.next();
                if let Some(extra) = words.next() {
                    return Err(ParseError::ExtraArgument {
                        command: "NODES",
                        extra: extra.to_string(),
                    });
                }
                return Ok(Response::Nodes(entries));
            }
            for word in words {
                if entries.len() == usize::from(MAX_BOOTSTRAP) {
                    return Err(ParseError::ExtraArgument {
                        command: "NODES",
                        extra: word.to_string(),
                    });
                }
                entries.push(word.parse()?);
            }
            if entries.is_empty() {
                return Err(ParseError::MissingArgument {
                    command: "NODES",
                    argument: "entry",
                });
            }
            return Ok(Response::Nodes(entries));
        }
        if let Some(rest) = strip_command(line, "REMOTE TCP") {
            let mut w = Words::new("REMOTE TCP", rest);
            let port = w.number("port", 0, u64::from(u16::MAX))?;
            w.end()?;
            return Ok(Response::RemoteTcp { port });
        }
        if let Some(rest) = strip_command(line, "REMOTE ADDR") {
            let mut w = Words::new("REMOTE ADDR", rest);
            let ip = w.ip("ip")?;
            let port = w.number("port", 0, u64::from(u16::MAX))?;
            let time = w.time()?;
            w.end()?;
            return Ok(Response::RemoteAddr {
                addr: SocketAddr::new(ip, port),
                time,
            });
        }
        if let Some(rest) = strip_command(line, "PREDICTION SET") {
            Words::new("PREDICTION SET", rest).end()?;
            return Ok(Response::PredictionSet);
        }
        if let Some(rest) = strip_command(line, "CHALLENGE") {
            let mut w = Words::new("CHALLENGE", rest);
            let client_ip = w.ip("client_ip")?;
            let (ports, proto) = ports_then_proto_from(&mut w, parse_port_or_random)?;
            w.end()?;
            return Ok(Response::Challenge {
                client_ip,
                ports,
                proto,
            });
        }
        if let Some(rest) = strip_command(line, "FIGHT") {
            let mut w = Words::new("FIGHT", rest);
            let node_ip = w.ip("node_ip")?;
            let (ports, proto) = ports_then_proto(&mut w)?;
            let ntp_time = w.time()?;
            w.end()?;
            return Ok(Response::Fight {
                node_ip,
                ports,
                proto,
                ntp_time,
            });
        }
        if let Some(rest) = strip_command(line, "RECONNECT") {
            Words::new("RECONNECT", rest).end()?;
            return Ok(Response::Reconnect);
        }
        if let Some(rest) = strip_command(line, "RELAY WAITING") {
            Words::new("RELAY WAITING", rest).end()?;
            return Ok(Response::RelayWaiting);
        }
        if let Some(rest) = strip_command(line, "RELAY OK") {
            Words::new("RELAY OK", rest).end()?;
            return Ok(Response::RelayOk);
        }
        if let Some(rest) = strip_command(line, "ERROR") {
            let text = rest.strip_prefix(' ').unwrap_or(rest);
            check_text("ERROR", text)?;
            return Ok(Response::Error(text.to_string()));
        }
        Err(ParseError::UnknownCommand(first_words(line)))
    }
}

impl Display for Response {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Response::Nodes(entries) if entries.is_empty() => f.write_str("NODES EMPTY"),
            Response::Nodes(entries) => {
                f.write_str("NODES ")?;
                for entry in entries {
                    // PyP2P writes a space after every entry, the last one included.
                    write!(f, "{entry} ")?;
                }
                Ok(())
            }
            Response::RemoteTcp { port } => write!(f, "REMOTE TCP {port}"),
            Response::RemoteAddr { addr, time } => {
                write!(f, "REMOTE ADDR {} {} {time}", addr.ip(), addr.port())
            }
            Response::PredictionSet => f.write_str("PREDICTION SET"),
            Response::Challenge {
                client_ip,
                ports,
                proto,
            } => {
                write!(f, "CHALLENGE {client_ip} ")?;
                write_ports(f, ports)?;
                write!(f, " {proto}")
            }
            Response::Fight {
                node_ip,
                ports,
                proto,
                ntp_time,
            } => {
                write!(f, "FIGHT {node_ip} ")?;
                write_ports(f, ports)?;
                write!(f, " {proto} {ntp_time}")
            }
            Response::Reconnect => f.write_str("RECONNECT"),
            Response::Error(text) => write!(f, "ERROR {text}"),
            Response::RelayWaiting => f.write_str("RELAY WAITING"),
            Response::RelayOk => f.write_str("RELAY OK"),
        }
    }
}

impl Response {
    /// An `ERROR` reply for a parse failure, its text kept within [`MAX_TEXT_BYTES`] and on
    /// one line (the error quotes client input, which may be anything).
    pub fn error(reason: &dyn Display) -> Response {
        let mut text: String = reason
            .to_string()
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if text.len() > MAX_TEXT_BYTES {
            let mut end = MAX_TEXT_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Response::Error(text)
    }
}
