//! The overlay's own lines between two nodes, and the seen-cache that stops a flood.
//!
//! Two nodes of this crate talk plain lines, like PyP2P peers, plus two control lines that
//! start with the reserved prefix `P2P/1 ` (an application line starting with it is not
//! delivered as a plain line; see [`CONTROL_PREFIX`]):
//!
//! | line | meaning |
//! |---|---|
//! | `P2P/1 HELLO <peer id: 16 hex> <listen port>` | first line each side sends; used to refuse connections to oneself and duplicate connections to one peer. Port 0: not listening. |
//! | `P2P/1 BCAST <message id: 16 hex> <ttl> <payload>` | a broadcast: delivered once per node, forwarded with `ttl - 1` to every other connection while `ttl > 1`. The payload is the rest of the line and may contain spaces. |
//!
//! A PyP2P peer never sends control lines; it sees ours as ordinary lines (it ignores what it
//! does not expect), and every plain line it sends is delivered to our application as is.
//!
//! ```
//! use node::proto::overlay::{Control, MessageId, PeerId};
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
    /// The word after the prefix is not `HELLO` or `BCAST`.
    #[error("unknown control line {0:?}")]
    Unknown(String),
    /// A field is missing or malformed.
    #[error("malformed {kind} line: bad or missing {field}")]
    Malformed {
        /// `HELLO` or `BCAST`.
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
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or(bad("listen port"))?;
                if it.next().is_some() {
                    return Err(bad("end of line (extra fields)"));
                }
                Ok(Control::Hello {
                    peer: PeerId(peer),
                    listen_port,
                })
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
                    .and_then(|t| t.parse::<u8>().ok())
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

/// Exactly 16 lowercase or uppercase hex digits.
fn parse_hex16(text: &str) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Hello { peer, listen_port } => {
                write!(f, "{CONTROL_PREFIX}HELLO {peer} {listen_port}")
            }
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
/// use node::proto::overlay::{MessageId, SeenCache};
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
        fn control_round_trips(peer: u64, port: u16, id: u64, ttl in 1u8.., payload in "[ -~]{0,80}") {
            for c in [
                Control::Hello { peer: PeerId(peer), listen_port: port },
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
