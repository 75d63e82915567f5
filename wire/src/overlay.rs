//! The overlay's own lines between two nodes, and the seen-cache that stops a flood.
//!
//! Two nodes of this crate talk plain lines, like PyP2P peers, plus two control lines that
//! start with the reserved prefix `P2P/1 ` (an application line starting with it is not
//! delivered as a plain line; see [`CONTROL_PREFIX`]):
//!
//! | line | meaning |
//! |---|---|
//! | `P2P/1 HELLO <peer id: 16 hex> <listen port>` | first line each side sends; used to refuse connections to oneself and duplicate connections to one peer. Port 0: not listening. |
//! | `P2P/1 IAM <node id: 40 hex> [<nonce: 64 hex>]` | sent before `HELLO` by a node that has a UNL node id: names it (so a dialer can check it reached the node its UNL names), and on a reverse connect carries the requester's nonce. |
//! | `P2P/1 BCAST <message id: 16 hex> <ttl> <payload>` | a broadcast: delivered once per node, forwarded with `ttl - 1` to every other connection while `ttl > 1`. The payload is the rest of the line and may contain spaces. |
//!
//! A PyP2P peer never sends control lines; it sees ours as ordinary lines (it ignores what it
//! does not expect), and every plain line it sends is delivered to our application as is.
//!
//! ```
//! use wire::overlay::{Control, MessageId, PeerId};
//!
//! let line = Control::Broadcast { id: MessageId(0xab), ttl: 8, payload: "hello world".into() };
//! assert_eq!(line.to_string(), "P2P/1 BCAST 00000000000000ab 8 hello world");
//! assert_eq!(Control::parse("P2P/1 BCAST 00000000000000ab 8 hello world"), Some(Ok(line)));
//! assert_eq!(Control::parse("just a line"), None);
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::unl::{NODE_ID_BYTES, NodeId};

/// Every control line starts with this prefix.
pub const CONTROL_PREFIX: &str = "P2P/1 ";

/// A node's identity in the overlay: random, chosen at start, shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The id of one broadcast, random at its origin, shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A reverse-connect nonce: 32 random bytes, shown as 64 hex digits (PyP2P's length).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; 32]);

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({self})")
    }
}

impl std::str::FromStr for Nonce {
    type Err = ControlError;

    /// Exactly 64 lowercase hex digits (the one form it is written in).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = ControlError::Malformed {
            kind: "IAM",
            field: "nonce (64 lowercase hex digits)",
        };
        Ok(Nonce(parse_hex_bytes(text).ok_or(bad)?))
    }
}

/// `N` bytes from exactly `2 * N` lowercase hex digits, the form we write: one text per value,
/// so a signed line reads back to the very bytes that were signed. (`u8::from_str_radix`
/// alone would also take a `+` sign in a pair: `+f`, and upper case.)
pub(crate) fn parse_hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A control line (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// `P2P/1 HELLO <peer id> <listen port>`.
    Hello {
        /// The sender's id.
        peer: PeerId,
        /// The port the sender accepts connections on (0: none).
        listen_port: u16,
    },
    /// `P2P/1 IAM <node id> [<nonce>]`.
    Iam {
        /// The sender's UNL node id.
        node: NodeId,
        /// On a reverse connect: the nonce from the request being answered.
        nonce: Option<Nonce>,
    },
    /// `P2P/1 SWITCH <lines>`: the sender moves the session to another path (a relayed
    /// connection upgraded to a direct one). Sent as the last line on the old path and as
    /// the first session line on the new one; `lines` counts every line the sender wrote on
    /// the old path before it, so the receiver knows when the old path has nothing left.
    Switch {
        /// Lines the sender wrote on the old path before switching.
        sent: u64,
    },
    /// `P2P/1 BCAST <id> <ttl> <payload>`.
    Broadcast {
        /// The broadcast's id (dedup key).
        id: MessageId,
        /// Hops left, including the one this line is on (1 = do not forward).
        ttl: u8,
        /// The application's line.
        payload: String,
    },
}

/// Why a line that starts with [`CONTROL_PREFIX`] is not a valid control line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ControlError {
    /// The word after the prefix is not `HELLO`, `IAM`, `SWITCH` or `BCAST`.
    #[error("unknown control line {0:?}")]
    Unknown(String),
    /// A field is missing or malformed.
    #[error("malformed {kind} line: bad or missing {field}")]
    Malformed {
        /// `HELLO`, `IAM`, `SWITCH` or `BCAST`.
        kind: &'static str,
        /// Which field.
        field: &'static str,
    },
}

impl Control {
    /// Parses `line`: `None` for an ordinary (application) line, `Some(Err)` for a line with the
    /// control prefix that is not valid.
    pub fn parse(line: &str) -> Option<Result<Control, ControlError>> {
        let rest = line.strip_prefix(CONTROL_PREFIX)?;
        Some(Self::parse_body(rest))
    }

    fn parse_body(rest: &str) -> Result<Control, ControlError> {
        let (kind, args) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "HELLO" => {
                let bad = |field| ControlError::Malformed {
                    kind: "HELLO",
                    field,
                };
                let mut it = args.split(' ');
                let peer = it.next().and_then(parse_hex16).ok_or(bad("peer id"))?;
                let listen_port = it
                    .next()
                    .and_then(parse_decimal::<u16>)
                    .ok_or(bad("listen port"))?;
                if it.next().is_some() {
                    return Err(bad("end of line (extra fields)"));
                }
                Ok(Control::Hello {
                    peer: PeerId(peer),
                    listen_port,
                })
            }
            "IAM" => {
                let bad = |field| ControlError::Malformed { kind: "IAM", field };
                let mut it = args.split(' ');
                let node = it
                    .next()
                    .and_then(parse_hex_bytes::<NODE_ID_BYTES>)
                    .and_then(NodeId::from_bytes)
                    .ok_or(bad("node id (40 hex digits, not all zero)"))?;
                let nonce = it.next().map(str::parse::<Nonce>).transpose()?;
                if it.next().is_some() {
                    return Err(bad("end of line (extra fields)"));
                }
                Ok(Control::Iam { node, nonce })
            }
            "SWITCH" => {
                let sent = parse_decimal::<u64>(args).ok_or(ControlError::Malformed {
                    kind: "SWITCH",
                    field: "line count",
                })?;
                Ok(Control::Switch { sent })
            }
            "BCAST" => {
                let bad = |field| ControlError::Malformed {
                    kind: "BCAST",
                    field,
                };
                let mut it = args.splitn(3, ' ');
                let id = it.next().and_then(parse_hex16).ok_or(bad("message id"))?;
                let ttl = it
                    .next()
                    .and_then(parse_decimal::<u8>)
                    .filter(|t| *t > 0)
                    .ok_or(bad("ttl (1..=255)"))?;
                let payload = it.next().ok_or(bad("payload"))?;
                Ok(Control::Broadcast {
                    id: MessageId(id),
                    ttl,
                    payload: payload.to_owned(),
                })
            }
            other => Err(ControlError::Unknown(other.chars().take(32).collect())),
        }
    }
}

/// Exactly 16 lowercase or uppercase hex digits (no sign: `from_str_radix` would take one).
fn parse_hex16(text: &str) -> Option<u64> {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// A decimal number: digits only (no sign, unlike `str::parse`).
fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Hello { peer, listen_port } => {
                write!(f, "{CONTROL_PREFIX}HELLO {peer} {listen_port}")
            }
            Control::Iam { node, nonce } => {
                write!(f, "{CONTROL_PREFIX}IAM {}", node.mailbox_id())?;
                match nonce {
                    Some(nonce) => write!(f, " {nonce}"),
                    None => Ok(()),
                }
            }
            Control::Switch { sent } => write!(f, "{CONTROL_PREFIX}SWITCH {sent}"),
            Control::Broadcast { id, ttl, payload } => {
                write!(f, "{CONTROL_PREFIX}BCAST {id} {ttl} {payload}")
            }
        }
    }
}

/// The broadcast ids a node has seen, bounded in count and in age.
///
/// An id is remembered for `lifetime` after it was first seen, and at most `capacity` ids are
/// kept (the oldest is forgotten first). A flood whose copies all arrive within `lifetime`
/// (seconds on any real overlay; the default is 10 minutes) is delivered exactly once.
///
/// ```
/// use std::time::{Duration, Instant};
/// use wire::overlay::{MessageId, SeenCache};
///
/// let t0 = Instant::now();
/// let mut seen = SeenCache::new(2, Duration::from_mins(1));
/// assert!(seen.insert(MessageId(1), t0));
/// assert!(!seen.insert(MessageId(1), t0)); // a duplicate
/// assert!(seen.insert(MessageId(1), t0 + Duration::from_secs(61))); // forgotten after 60 s
/// ```
#[derive(Debug)]
pub struct SeenCache {
    capacity: usize,
    lifetime: Duration,
    /// Id → when it was first seen (the key into `order`).
    ids: HashMap<MessageId, Instant>,
    /// Ids in the order they were first seen.
    order: VecDeque<(Instant, MessageId)>,
}

impl SeenCache {
    /// A cache of at most `capacity` ids (at least 1), each kept for `lifetime`.
    pub fn new(capacity: usize, lifetime: Duration) -> Self {
        SeenCache {
            capacity: capacity.max(1),
            lifetime,
            ids: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id` as seen at `now`. Returns true if it was not already known (deliver it),
    /// false for a duplicate (drop it).
    pub fn insert(&mut self, id: MessageId, now: Instant) -> bool {
        self.expire(now);
        if self.ids.contains_key(&id) {
            return false;
        }
        while self.order.len() >= self.capacity {
            self.forget_oldest();
        }
        self.ids.insert(id, now);
        self.order.push_back((now, id));
        true
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: MessageId) -> bool {
        self.ids.contains_key(&id)
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Forgets ids older than the lifetime.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.order.front() {
            if now.saturating_duration_since(at) < self.lifetime {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.ids.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_round_trips_and_rejects_bad_fields() {
        let hello = Control::Hello {
            peer: PeerId(0x0123_4567_89ab_cdef),
            listen_port: 50500,
        };
        assert_eq!(hello.to_string(), "P2P/1 HELLO 0123456789abcdef 50500");
        assert_eq!(Control::parse(&hello.to_string()), Some(Ok(hello)));
        for (line, field) in [
            ("P2P/1 HELLO", "peer id"),
            ("P2P/1 HELLO 12 5", "peer id"),
            ("P2P/1 HELLO 0123456789abcdeg 5", "peer id"),
            ("P2P/1 HELLO 0123456789abcdef", "listen port"),
            ("P2P/1 HELLO 0123456789abcdef 70000", "listen port"),
            (
                "P2P/1 HELLO 0123456789abcdef 1 2",
                "end of line (extra fields)",
            ),
        ] {
            assert_eq!(
                Control::parse(line),
                Some(Err(ControlError::Malformed {
                    kind: "HELLO",
                    field
                })),
                "{line}"
            );
        }
    }

    /// Found by the `overlay_control` fuzz target: `from_str_radix` and `str::parse` take a
    /// leading `+`, so `P2P/1 IAM 74+15a+1...` was read as a node id. Every field is digits
    /// only now.
    #[test]
    fn signs_are_not_digits() {
        let id = "74416a6d75386d4850484656444a387437704b38";
        assert!(matches!(
            Control::parse(&format!("P2P/1 IAM {id}")),
            Some(Ok(_))
        ));
        for line in [
            "P2P/1 IAM 74+15a+174+15a+15a485056444a387437704b3b".to_owned(),
            format!("P2P/1 IAM {id} {}", "+f".repeat(32)),
            "P2P/1 HELLO +123456789abcdef 5".to_owned(),
            "P2P/1 HELLO 0123456789abcdef +5".to_owned(),
            "P2P/1 BCAST +00000000000000a 3 x".to_owned(),
            "P2P/1 BCAST 000000000000000a +3 x".to_owned(),
        ] {
            assert!(
                matches!(
                    Control::parse(&line),
                    Some(Err(ControlError::Malformed { .. }))
                ),
                "{line}"
            );
        }
    }

    #[test]
    fn switch_round_trips_and_rejects_bad_counts() {
        let c = Control::Switch { sent: 42 };
        assert_eq!(c.to_string(), "P2P/1 SWITCH 42");
        assert_eq!(Control::parse("P2P/1 SWITCH 42"), Some(Ok(c)));
        for bad in [
            "P2P/1 SWITCH",
            "P2P/1 SWITCH +1",
            "P2P/1 SWITCH 1 2",
            "P2P/1 SWITCH x",
        ] {
            assert!(matches!(Control::parse(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn iam_round_trips_and_rejects_bad_fields() {
        let node = NodeId::from_bytes(*b"tAjmu8mHPHFVDJ8t7pK8").unwrap();
        let plain = Control::Iam { node, nonce: None };
        assert_eq!(
            plain.to_string(),
            "P2P/1 IAM 74416a6d75386d4850484656444a387437704b38"
        );
        assert_eq!(Control::parse(&plain.to_string()), Some(Ok(plain)));
        let with_nonce = Control::Iam {
            node,
            nonce: Some(Nonce([0xab; 32])),
        };
        assert_eq!(
            with_nonce.to_string(),
            format!(
                "P2P/1 IAM 74416a6d75386d4850484656444a387437704b38 {}",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            Control::parse(&with_nonce.to_string()),
            Some(Ok(with_nonce))
        );
        let node_field = "node id (40 hex digits, not all zero)";
        for (line, field) in [
            ("P2P/1 IAM", node_field),
            ("P2P/1 IAM 74416a", node_field),
            (&*format!("P2P/1 IAM {}", "0".repeat(40)), node_field),
            (&*format!("P2P/1 IAM {}", "g".repeat(40)), node_field),
            (
                &*format!("P2P/1 IAM {} abc", "1".repeat(40)),
                "nonce (64 lowercase hex digits)",
            ),
            (
                // Upper case would read back as another text than the one signed.
                &*format!("P2P/1 IAM {} {}", "1".repeat(40), "A".repeat(64)),
                "nonce (64 lowercase hex digits)",
            ),
            (
                &*format!("P2P/1 IAM {} {} x", "1".repeat(40), "2".repeat(64)),
                "end of line (extra fields)",
            ),
        ] {
            assert_eq!(
                Control::parse(line),
                Some(Err(ControlError::Malformed { kind: "IAM", field })),
                "{line}"
            );
        }
        // Multi-byte text of the right byte length is refused, not sliced mid-character.
        assert!(matches!(
            Control::parse(&format!("P2P/1 IAM {}", "é".repeat(20))),
            Some(Err(_))
        ));
    }

    #[test]
    fn broadcast_errors_and_unknown() {
        for (line, field) in [
            ("P2P/1 BCAST", "message id"),
            ("P2P/1 BCAST 00000000000000ab", "ttl (1..=255)"),
            ("P2P/1 BCAST 00000000000000ab 0 x", "ttl (1..=255)"),
            ("P2P/1 BCAST 00000000000000ab 256 x", "ttl (1..=255)"),
            ("P2P/1 BCAST 00000000000000ab 3", "payload"),
        ] {
            assert_eq!(
                Control::parse(line),
                Some(Err(ControlError::Malformed {
                    kind: "BCAST",
                    field
                })),
                "{line}"
            );
        }
        assert_eq!(
            Control::parse("P2P/1 PING"),
            Some(Err(ControlError::Unknown("PING".into())))
        );
        assert_eq!(Control::parse("P2P/1"), None);
        // An empty payload is a valid broadcast of an empty line.
        assert_eq!(
            Control::parse("P2P/1 BCAST 00000000000000ab 3 "),
            Some(Ok(Control::Broadcast {
                id: MessageId(0xab),
                ttl: 3,
                payload: String::new()
            }))
        );
    }

    #[test]
    fn seen_cache_is_bounded_by_capacity() {
        let t0 = Instant::now();
        let mut seen = SeenCache::new(3, Duration::from_mins(1));
        for i in 0..5 {
            assert!(seen.insert(MessageId(i), t0));
        }
        assert_eq!(seen.len(), 3);
        assert!(!seen.contains(MessageId(0)));
        assert!(!seen.contains(MessageId(1)));
        assert!(seen.contains(MessageId(4)));
        seen.expire(t0 + Duration::from_mins(1));
        assert!(seen.is_empty());
    }

    proptest! {
        #[test]
        fn control_round_trips(
            peer: u64, port: u16, id: u64, ttl in 1u8.., payload in "[ -~]{0,80}",
            node in proptest::array::uniform20(any::<u8>()), nonce in proptest::option::of(proptest::array::uniform32(any::<u8>())),
        ) {
            if let Some(node) = NodeId::from_bytes(node) {
                let c = Control::Iam { node, nonce: nonce.map(Nonce) };
                prop_assert_eq!(Control::parse(&c.to_string()), Some(Ok(c)));
            }
            for c in [
                Control::Hello { peer: PeerId(peer), listen_port: port },
                Control::Switch { sent: id },
                Control::Broadcast { id: MessageId(id), ttl, payload: payload.clone() },
            ] {
                prop_assert_eq!(Control::parse(&c.to_string()), Some(Ok(c.clone())));
            }
        }

        #[test]
        fn parse_never_panics(line in "P2P/1 [ -~]{0,60}") {
            let _ = Control::parse(&line);
        }
    }
}
