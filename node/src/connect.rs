//! Connecting to a node by its UNL: the methods, what each try did, and the outcome.
//!
//! [`crate::Net::connect`] takes a [`Unl`] and returns a [`ConnectId`]; the outcome arrives later
//! as [`crate::core::Event::ConnectDone`] with a [`ConnectOutcome`]. The order follows PyP2P, but
//! stages run in parallel where that is safe instead of waiting 60 s each:
//!
//! | method | when | how |
//! |---|---|---|
//! | `existing` | we already have a connection to that node id | nothing to do |
//! | `lan` | both ends have the same WAN address | dial `lan_ip:port` |
//! | `direct` | they are passive (and not on our LAN) | dial `wan_ip:port` |
//! | `reverse` | we are passive, they have a node id, a dht-msg server is configured | post `REVERSE_CONNECT:<our UNL>:<nonce>` to their mailbox; they dial us and open with `P2P/1 IAM <their id> <nonce>` |
//! | `punch` | they are a simultaneous node and a rendezvous server is configured | TCP simultaneous open through both NATs, coordinated by the rendezvous (`CANDIDATE` / `CHALLENGE` / `ACCEPT` / `FIGHT`, see [`wire::punch`]) |
//! | `relay` | every other try failed (or none was possible), both have a dht-msg server, we have a rendezvous server | post `RELAY_CONNECT:<our UNL>:<nonce>:<rendezvous>` to their mailbox; both connect to that rendezvous with `RELAY <token>` and it splices the two streams; they open with `P2P/1 IAM <their id> <nonce>` |
//!
//! `lan` and `direct` start at once; `reverse` and `punch` start at once when there is nothing
//! to dial, else after a head start (`reverse_head_start`, 1 s) or as soon as every dial failed,
//! whichever comes first; `relay` starts when every other try has failed, or
//! `relay_head_start` (2 s; 0.5 s when our own NAT maps ports at random, where a punch can only
//! meet a full-cone NAT) after the second wave, whichever comes first (a punch that works
//! takes milliseconds; a reverse connect to a node that cannot reach us waits
//! `reverse_timeout`, 3 s). A try wins when the
//! peer's `IAM` names the node id in the UNL (a dial that reaches some other node fails); a
//! reverse or relayed connection wins only with the nonce we posted, so a spoofed inbound
//! connection is closed. The first winner is the connection; the other tries stop.
//!
//! The node on the other end acts on `REVERSE_CONNECT` and `RELAY_CONNECT` only when the mailbox
//! server vouches that the sender owns the UNL's node id (it registered with that id's secret),
//! at most `max_reverse_per_minute` times a minute, and relays only through a rendezvous server
//! it uses itself, so a forged request cannot make it dial strangers at will.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Serialize;

use crate::ids::ConnId;
pub use crate::ids::ConnectId;
use wire::overlay::Nonce;
use wire::unl::Unl;

/// Prefix of a reverse-connect request in a mailbox message.
pub const REVERSE_CONNECT_PREFIX: &str = "REVERSE_CONNECT:";

/// Prefix of a relay request in a mailbox message.
pub const RELAY_CONNECT_PREFIX: &str = "RELAY_CONNECT:";

/// How a connection was (or was to be) opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Already connected to that node.
    Existing,
    /// Dialed their LAN address (same WAN address as ours).
    Lan,
    /// Dialed their WAN address (they are passive).
    Direct,
    /// Over IPv6, no NAT: we dialed their IPv6 address from our listening port while they
    /// dialed ours (asked through their mailbox); a direct connection, or a simultaneous open
    /// through both stateful firewalls.
    Ipv6,
    /// They dialed us, asked through their mailbox.
    Reverse,
    /// TCP simultaneous open through both NATs.
    Punch,
    /// Spliced through a relay (the rendezvous).
    Relay,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Existing => "existing",
            Method::Lan => "lan",
            Method::Direct => "direct",
            Method::Ipv6 => "ipv6",
            Method::Reverse => "reverse",
            Method::Punch => "punch",
            Method::Relay => "relay",
        })
    }
}

/// How one try ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum TryResult {
    /// Still running.
    Pending,
    /// This try opened the connection.
    Won,
    /// It failed, and why.
    Failed(String),
    /// Another try won first.
    Cancelled,
    /// Not tried, and why.
    Skipped(String),
}

/// One method tried (or skipped) in a connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Try {
    /// The method.
    pub method: Method,
    /// The address dialed (LAN, direct) or expected to dial us (reverse: none).
    pub addr: Option<SocketAddr>,
    /// When it started, in milliseconds after the connect began (`None`: never started).
    pub started_ms: Option<u64>,
    /// When it ended, in milliseconds after the connect began.
    pub ended_ms: Option<u64>,
    /// How it ended.
    pub result: TryResult,
}

impl Try {
    /// A try that will start later (when its wave comes).
    pub(crate) fn planned(method: Method) -> Try {
        Try {
            method,
            addr: None,
            started_ms: None,
            ended_ms: None,
            result: TryResult::Pending,
        }
    }

    /// A try that starts with the connect: a dial to `addr`.
    pub(crate) fn dialing(method: Method, addr: SocketAddr) -> Try {
        Try {
            addr: Some(addr),
            started_ms: Some(0),
            ..Try::planned(method)
        }
    }

    /// A try not made, and why.
    pub(crate) fn skipped(method: Method, why: &str) -> Try {
        Try {
            result: TryResult::Skipped(why.to_owned()),
            ..Try::planned(method)
        }
    }
}

/// The outcome of a connect: the connection and the method that won, or why none did; and every
/// try with its timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectOutcome {
    /// The connect.
    pub id: ConnectId,
    /// The UNL connected to.
    pub target: String,
    /// Whether a connection opened.
    pub connected: bool,
    /// The connection (when connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<ConnId>,
    /// The method that won (when connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// The peer's address on the connection (when connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    /// Why it failed (when not connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds from `connect` to the outcome.
    pub ms: u64,
    /// The same in microseconds.
    pub us: u64,
    /// Every method considered, in order.
    pub tries: Vec<Try>,
}

impl ConnectOutcome {
    /// A one-line summary of the tries: `lan: skipped (..); direct: won in 3 ms`.
    pub fn describe_tries(&self) -> String {
        self.tries
            .iter()
            .map(|t| {
                let took = match (t.started_ms, t.ended_ms) {
                    (Some(s), Some(e)) => format!(" after {} ms", e.saturating_sub(s)),
                    _ => String::new(),
                };
                let at = t.addr.map(|a| format!(" {a}")).unwrap_or_default();
                match &t.result {
                    TryResult::Pending => format!("{}{at}: pending", t.method),
                    TryResult::Won => format!("{}{at}: won{took}", t.method),
                    TryResult::Failed(why) => format!("{}{at}: failed{took}: {why}", t.method),
                    TryResult::Cancelled => format!("{}{at}: cancelled{took}", t.method),
                    TryResult::Skipped(why) => format!("{}: skipped: {why}", t.method),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `REVERSE_CONNECT:<UNL>:<nonce>`: "dial me at this UNL and open with this nonce".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReverseRequest {
    /// Where to dial (and whose node id to expect).
    pub unl: Unl,
    /// What to send first.
    pub nonce: Nonce,
}

impl fmt::Display for ReverseRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{REVERSE_CONNECT_PREFIX}{}:{}", self.unl, self.nonce)
    }
}

impl FromStr for ReverseRequest {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = text
            .strip_prefix(REVERSE_CONNECT_PREFIX)
            .ok_or_else(|| format!("not a {REVERSE_CONNECT_PREFIX} message"))?;
        let (unl, nonce) = rest
            .split_once(':')
            .ok_or("REVERSE_CONNECT: missing `:<nonce>`")?;
        Ok(ReverseRequest {
            unl: unl
                .parse()
                .map_err(|e| format!("REVERSE_CONNECT: bad UNL: {e}"))?,
            nonce: nonce
                .parse()
                .map_err(|e| format!("REVERSE_CONNECT: bad nonce: {e}"))?,
        })
    }
}

/// `RELAY_CONNECT:<UNL>:<nonce>:<ip:port>`: "meet me at this relay (a rendezvous server) and
/// open with this nonce" (our extension; PyP2P has no relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRequest {
    /// Who asks (and whose node id to expect).
    pub unl: Unl,
    /// What to send first on the relayed stream; the relay token is derived from it.
    pub nonce: Nonce,
    /// The rendezvous server that relays.
    pub relay: SocketAddr,
}

impl fmt::Display for RelayRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{RELAY_CONNECT_PREFIX}{}:{}:{}",
            self.unl, self.nonce, self.relay
        )
    }
}

impl FromStr for RelayRequest {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = text
            .strip_prefix(RELAY_CONNECT_PREFIX)
            .ok_or_else(|| format!("not a {RELAY_CONNECT_PREFIX} message"))?;
        let mut parts = rest.splitn(3, ':');
        let (Some(unl), Some(nonce), Some(relay)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("RELAY_CONNECT: expected <UNL>:<nonce>:<ip:port>".to_owned());
        };
        Ok(RelayRequest {
            unl: unl
                .parse()
                .map_err(|e| format!("RELAY_CONNECT: bad UNL: {e}"))?,
            nonce: nonce
                .parse()
                .map_err(|e| format!("RELAY_CONNECT: bad nonce: {e}"))?,
            relay: relay
                .parse()
                .map_err(|e| format!("RELAY_CONNECT: bad relay address {relay:?}: {e}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::unl::{Forwarding, NatType, NodeId, NodeType};

    #[test]
    fn reverse_request_round_trips_and_rejects_garbage() {
        let unl = Unl {
            node_id: NodeId::from_bytes(*b"tAjmu8mHPHFVDJ8t7pK8"),
            node_type: NodeType::Passive,
            nat_type: NatType::Preserving,
            forwarding: Forwarding::Forwarded,
            port: 50500,
            wan_ip: "192.0.2.7".parse().unwrap(),
            lan_ip: "10.0.0.2".parse().unwrap(),
        };
        let req = ReverseRequest {
            unl,
            nonce: Nonce([7; 32]),
        };
        let text = req.to_string();
        assert!(text.starts_with("REVERSE_CONNECT:"));
        assert_eq!(text.parse::<ReverseRequest>(), Ok(req));
        let relay = RelayRequest {
            unl,
            nonce: Nonce([9; 32]),
            relay: "11.0.0.2:8000".parse().unwrap(),
        };
        let text = relay.to_string();
        assert!(text.starts_with("RELAY_CONNECT:"));
        assert_eq!(text.parse::<RelayRequest>(), Ok(relay));
        for bad in [
            "RELAY_CONNECT:",
            &format!("RELAY_CONNECT:{unl}:{}", Nonce([9; 32])),
            &format!("RELAY_CONNECT:{unl}:{}:nowhere", Nonce([9; 32])),
            &format!("RELAY_CONNECT:{unl}:12:11.0.0.2:8000"),
            &text.replace("RELAY_CONNECT", "REVERSE_CONNECT"),
        ] {
            let err = bad.parse::<RelayRequest>().unwrap_err();
            assert!(err.contains("RELAY_CONNECT"), "{bad}: {err}");
        }
        for bad in [
            "hello",
            "REVERSE_CONNECT:",
            "REVERSE_CONNECT:abc:def",
            &format!("REVERSE_CONNECT:{unl}"),
            &format!("REVERSE_CONNECT:{unl}:1234"),
        ] {
            assert!(bad.parse::<ReverseRequest>().is_err(), "{bad}");
        }
    }
}
