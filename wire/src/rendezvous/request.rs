//! [`Request`]: what a client sends, parsed and formatted.

use std::fmt::{self, Display, Formatter};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::fields::{Family, NodeTarget, NtpTime, Proto, RelayToken};
use super::words::{
    Words, check_port_count, check_text, first_words, parse_port_or_random, ports_then_proto,
    strip_command, write_ports,
};
use super::{MAX_BOOTSTRAP, MAX_PREDICTED_PORTS, ParseError};

/// A message a client sends to the rendezvous server.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `BOOTSTRAP <n> [<own port>]`: ask for up to `n` random passive nodes.
    Bootstrap {
        /// How many (1..=100).
        count: u8,
        /// The asker's own passive port, so only that registration is excluded (extension).
        own_port: Option<u16>,
    },
    /// `BOOTSTRAP <family> <n> [<own port>]` (extension): like [`Request::Bootstrap`], for
    /// nodes of `family` (`IPV4`, `IPV6` or `ANY`). Only this form is ever answered with IPv6
    /// entries (`p:[2001:db8::1]:5000`); PyP2P never sends it.
    BootstrapFamily {
        /// Which families to return.
        family: Family,
        /// How many (1..=100).
        count: u8,
        /// The asker's own passive port, so only that registration is excluded.
        own_port: Option<u16>,
    },
    /// `PASSIVE READY <port> <max_inbound>`: register as a passive node at (observed IP, port).
    PassiveReady {
        /// Listening port.
        port: u16,
        /// How many inbound connections the node accepts.
        max_inbound: u32,
    },
    /// `SIMULTANEOUS READY <port> <max_inbound>`: register this connection as a simultaneous node.
    SimultaneousReady {
        /// Listening port (PyP2P sends 0).
        port: u16,
        /// How many inbound connections the node accepts.
        max_inbound: u32,
    },
    /// `SOURCE TCP [text]`: ask which source port the server sees.
    SourceTcp {
        /// Whatever followed (PyP2P sends its local port); echoed nowhere.
        text: Option<String>,
    },
    /// `SOURCE ADDR` (extension): ask which address (IP and port) the server sees, and the
    /// server's clock. PyP2P never sends it; answered with [`super::Response::RemoteAddr`].
    SourceAddr,
    /// `CANDIDATE <node> <proto> <ports>`: ask a simultaneous node for a hole punch. The
    /// single port [`super::RANDOM_PORT`] (0, our extension) says the candidate's NAT maps
    /// ports at random: the node guesses (a birthday punch).
    Candidate {
        /// The simultaneous node.
        node: NodeTarget,
        /// Transport.
        proto: Proto,
        /// Our predicted external ports.
        ports: Vec<u16>,
    },
    /// `ACCEPT <client_ip> <ports> <proto> <ntp_time>`: a simultaneous node accepts a challenge.
    Accept {
        /// The candidate's IP, as the `CHALLENGE` named it.
        client_ip: IpAddr,
        /// The node's predicted external ports.
        ports: Vec<u16>,
        /// Transport.
        proto: Proto,
        /// When both sides should connect.
        ntp_time: NtpTime,
    },
    /// `CLEAR [<port>]`: remove the caller's registrations (all at its IP, or the one at `port`).
    Clear {
        /// Narrow the removal to this registered port (extension).
        port: Option<u16>,
    },
    /// `QUIT`: ask the server to close the connection.
    Quit,
    /// `RELAY <token>` (extension): splice this connection with the other one that presents the
    /// same token. Only valid as the first line of a connection.
    Relay {
        /// The shared token.
        token: RelayToken,
    },
}

impl FromStr for Request {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Self, ParseError> {
        let line = line.trim_start_matches([' ', '\t']);
        if line.trim_end().is_empty() {
            return Err(ParseError::Empty);
        }
        if let Some(rest) = strip_command(line, "BOOTSTRAP") {
            return parse_bootstrap(rest);
        }
        for (command, simultaneous) in [("PASSIVE READY", false), ("SIMULTANEOUS READY", true)] {
            if let Some(rest) = strip_command(line, command) {
                let mut w = Words::new(command, rest);
                let port = w.number("port", 0, u64::from(u16::MAX))?;
                let max_inbound = w.number("max_inbound", 0, u64::from(u32::MAX))?;
                w.end()?;
                return Ok(if simultaneous {
                    Request::SimultaneousReady { port, max_inbound }
                } else {
                    Request::PassiveReady { port, max_inbound }
                });
            }
        }
        if let Some(rest) = strip_command(line, "SOURCE TCP") {
            // PyP2P matches `^SOURCE TCP` and ignores the rest; keep it verbatim.
            let text = match rest.strip_prefix(' ') {
                None if rest.is_empty() => None,
                None => Some(rest.to_string()),
                Some(text) => Some(text.to_string()),
            };
            if let Some(text) = &text {
                check_text("SOURCE TCP", text)?;
            }
            return Ok(Request::SourceTcp { text });
        }
        if let Some(rest) = strip_command(line, "SOURCE ADDR") {
            Words::new("SOURCE ADDR", rest).end()?;
            return Ok(Request::SourceAddr);
        }
        if let Some(rest) = strip_command(line, "CANDIDATE") {
            let mut w = Words::new("CANDIDATE", rest);
            let word = w.next("node_ip")?;
            let node = if let Ok(addr) = word.parse::<SocketAddr>() {
                NodeTarget::Addr(addr)
            } else if let Ok(ip) = word.parse::<IpAddr>() {
                NodeTarget::Ip(ip)
            } else {
                return Err(ParseError::BadAddress {
                    command: "CANDIDATE",
                    argument: "node_ip",
                    value: word.to_string(),
                });
            };
            let proto = w.proto()?;
            let mut ports = Vec::new();
            for word in w.iter.by_ref() {
                if ports.len() == MAX_PREDICTED_PORTS {
                    return Err(ParseError::PortCount {
                        command: "CANDIDATE",
                        count: ports.len() + 1,
                        max: MAX_PREDICTED_PORTS,
                    });
                }
                ports.push(parse_port_or_random("CANDIDATE", word)?);
            }
            check_port_count("CANDIDATE", ports.len())?;
            return Ok(Request::Candidate { node, proto, ports });
        }
        if let Some(rest) = strip_command(line, "ACCEPT") {
            let mut w = Words::new("ACCEPT", rest);
            let client_ip = w.ip("client_ip")?;
            let (ports, proto) = ports_then_proto(&mut w)?;
            let ntp_time = w.time()?;
            w.end()?;
            return Ok(Request::Accept {
                client_ip,
                ports,
                proto,
                ntp_time,
            });
        }
        if let Some(rest) = strip_command(line, "CLEAR") {
            let mut w = Words::new("CLEAR", rest);
            let port = w.optional_number("port", 0, u64::from(u16::MAX))?;
            w.end()?;
            return Ok(Request::Clear { port });
        }
        if let Some(rest) = strip_command(line, "QUIT") {
            Words::new("QUIT", rest).end()?;
            return Ok(Request::Quit);
        }
        if let Some(rest) = strip_command(line, "RELAY") {
            let mut w = Words::new("RELAY", rest);
            let token = w.next("token")?.parse()?;
            w.end()?;
            return Ok(Request::Relay { token });
        }
        Err(ParseError::UnknownCommand(first_words(line)))
    }
}

/// `BOOTSTRAP <n> [<own port>]` (PyP2P) or `BOOTSTRAP <family> <n> [<own port>]` (ours), after
/// the verb.
fn parse_bootstrap(rest: &str) -> Result<Request, ParseError> {
    let mut w = Words::new("BOOTSTRAP", rest);
    let family = rest
        .split_ascii_whitespace()
        .next()
        .and_then(Family::from_word);
    if family.is_some() {
        w.next("family")?;
    }
    let count = w.number("n", 1, u64::from(MAX_BOOTSTRAP))?;
    let own_port = w.optional_number("own_port", 1, u64::from(u16::MAX))?;
    w.end()?;
    Ok(match family {
        Some(family) => Request::BootstrapFamily {
            family,
            count,
            own_port,
        },
        None => Request::Bootstrap { count, own_port },
    })
}

impl Display for Request {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Request::Bootstrap { count, own_port } => {
                write!(f, "BOOTSTRAP {count}")?;
                if let Some(port) = own_port {
                    write!(f, " {port}")?;
                }
                Ok(())
            }
            Request::BootstrapFamily {
                family,
                count,
                own_port,
            } => {
                write!(f, "BOOTSTRAP {family} {count}")?;
                if let Some(port) = own_port {
                    write!(f, " {port}")?;
                }
                Ok(())
            }
            Request::PassiveReady { port, max_inbound } => {
                write!(f, "PASSIVE READY {port} {max_inbound}")
            }
            Request::SimultaneousReady { port, max_inbound } => {
                write!(f, "SIMULTANEOUS READY {port} {max_inbound}")
            }
            Request::SourceTcp { text: None } => f.write_str("SOURCE TCP"),
            Request::SourceTcp { text: Some(text) } => write!(f, "SOURCE TCP {text}"),
            Request::SourceAddr => f.write_str("SOURCE ADDR"),
            Request::Candidate { node, proto, ports } => {
                write!(f, "CANDIDATE {node} {proto} ")?;
                write_ports(f, ports)
            }
            Request::Accept {
                client_ip,
                ports,
                proto,
                ntp_time,
            } => {
                write!(f, "ACCEPT {client_ip} ")?;
                write_ports(f, ports)?;
                write!(f, " {proto} {ntp_time}")
            }
            Request::Clear { port: None } => f.write_str("CLEAR"),
            Request::Clear { port: Some(port) } => write!(f, "CLEAR {port}"),
            Request::Quit => f.write_str("QUIT"),
            Request::Relay { token } => write!(f, "RELAY {token}"),
        }
    }
}
