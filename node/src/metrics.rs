//! The node's counters for Prometheus: connects by method and result, every try of a connect,
//! hole punches (attempts and successes, as initiator and as responder), connections opened
//! and closed, rendezvous requests, and bytes. `p2p-node run --metrics-listen ADDR` serves them
//! at `GET /metrics` (see `server_kit::metrics`); an application serves them itself with
//! [`NodeMetrics::encode`] or reads them with [`NodeMetrics::snapshot`].
//!
//! The counters are **process-wide** ([`global`]), like the default registry of Prometheus'
//! client libraries: every [`Net`](crate::Net) of the process adds to them (a deployed node is
//! one process). They are filled from the events the driver records (`net/events.rs`), so
//! they cost nothing on the data path.
//!
//! ```
//! let text = {
//!     let mut out = server_kit::metrics::Exposition::default();
//!     node::metrics::global().encode(&mut out);
//!     out.render()
//! };
//! assert!(text.contains("# TYPE p2p_node_connections_open gauge"));
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use server_kit::metrics::Exposition;

use crate::connect::{Method, TryResult};
use crate::core::{Direction, Event, Job};

/// The process's node counters.
pub fn global() -> &'static NodeMetrics {
    static METRICS: OnceLock<NodeMetrics> = OnceLock::new();
    METRICS.get_or_init(NodeMetrics::default)
}

/// Counters of the nodes of a process (see the module docs).
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// `(family, labels)` → count, for the labelled counters.
    counts: Mutex<BTreeMap<SeriesKey, u64>>,
    opened: AtomicU64,
    closed: AtomicU64,
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
}

/// A labelled counter: its family and its labels.
type SeriesKey = (&'static str, Vec<(&'static str, String)>);

/// One labelled counter's value, as [`NodeMetrics::snapshot`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The family (`p2p_node_connects`, without `_total`).
    pub name: &'static str,
    /// Its labels.
    pub labels: Vec<(&'static str, String)>,
    /// The count.
    pub value: u64,
}

const CONNECTS: &str = "p2p_node_connects";
const TRIES: &str = "p2p_node_connect_tries";
const PUNCHES: &str = "p2p_node_punch_attempts";
const PUNCH_WINS: &str = "p2p_node_punch_successes";
const OPENED: &str = "p2p_node_connections_opened";
const RENDEZVOUS: &str = "p2p_node_rendezvous_requests";
const REVERSE: &str = "p2p_node_reverse_requests";
const HANDSHAKES: &str = "p2p_node_handshakes";
const REQUEST_CHECKS: &str = "p2p_node_request_checks";

impl NodeMetrics {
    /// Counts what `event` says happened (called by the driver for every event it records).
    pub fn observe(&self, event: &Event) {
        match event {
            Event::ConnectDone(outcome) => {
                let method = outcome.method.map_or("none".to_owned(), |m| m.to_string());
                let result = if outcome.connected {
                    "connected"
                } else {
                    "failed"
                };
                self.add(
                    CONNECTS,
                    vec![("method", method), ("result", result.into())],
                );
                for t in &outcome.tries {
                    let result = match &t.result {
                        TryResult::Pending => continue,
                        TryResult::Won => "won",
                        TryResult::Failed(_) => "failed",
                        TryResult::Cancelled => "cancelled",
                        TryResult::Skipped(_) => "skipped",
                    };
                    let method = t.method.to_string();
                    self.add(TRIES, vec![("method", method), ("result", result.into())]);
                    if t.method == Method::Punch && t.started_ms.is_some() {
                        self.add(PUNCHES, vec![("role", "initiator".into())]);
                        if t.result == TryResult::Won {
                            self.add(PUNCH_WINS, vec![("role", "initiator".into())]);
                        }
                    }
                }
            }
            Event::Challenge { refused, .. } => {
                let result = if refused.is_none() {
                    "accepted"
                } else {
                    "refused"
                };
                if refused.is_none() {
                    self.add(PUNCHES, vec![("role", "responder".into())]);
                }
                self.add("p2p_node_punch_challenges", vec![("result", result.into())]);
            }
            Event::Connected { direction, .. } => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                let direction = match direction {
                    Direction::Inbound => "inbound",
                    Direction::Outbound => "outbound",
                };
                self.add(OPENED, vec![("direction", direction.into())]);
            }
            Event::Disconnected { .. } => {
                self.closed.fetch_add(1, Ordering::Relaxed);
            }
            Event::Bootstrapped { .. } => self.rendezvous(Job::Bootstrap, "ok"),
            Event::Advertised { .. } => self.rendezvous(Job::Advertise, "ok"),
            Event::NatDetected { .. } => self.rendezvous(Job::NatProbe(0), "ok"),
            Event::RendezvousFailed { job, .. } => self.rendezvous(*job, "failed"),
            Event::ReverseRequested {
                refused,
                signed,
                check,
                ..
            } => {
                let result = if refused.is_none() {
                    "dialed"
                } else {
                    "refused"
                };
                self.add(REVERSE, vec![("result", result.into())]);
                let signed = if *signed { "signed" } else { "unsigned" };
                self.add(
                    REQUEST_CHECKS,
                    vec![("form", signed.into()), ("check", check.as_str().into())],
                );
            }
            _ => {}
        }
    }

    /// Counts a new connection's start: `ok` (an encrypted handshake done), `plain` (an
    /// accepted connection that began in plain text), `failed`, `timeout`, `refused` (too
    /// many handshakes at once).
    pub fn count_handshake(&self, result: &'static str) {
        self.add(HANDSHAKES, vec![("result", result.into())]);
    }

    /// Counts payload bytes received (lines, as the application takes them).
    pub fn add_received_bytes(&self, n: u64) {
        self.received_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts payload bytes sent (lines, as the application sends them).
    pub fn add_sent_bytes(&self, n: u64) {
        self.sent_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Every labelled counter with its value (for tests and applications that print them).
    pub fn snapshot(&self) -> Vec<Sample> {
        let counts = self.counts.lock().map(|c| c.clone()).unwrap_or_default();
        counts
            .into_iter()
            .map(|((name, labels), value)| Sample {
                name,
                labels,
                value,
            })
            .collect()
    }

    /// Adds the node's metric families to a scrape.
    pub fn encode(&self, out: &mut Exposition) {
        let samples = self.snapshot();
        let families: [(&str, &str); 10] = [
            (
                CONNECTS,
                "Connects by UNL, by the method that won (none: failed) and result.",
            ),
            (
                TRIES,
                "Methods tried by connects, by method and how the try ended.",
            ),
            (
                PUNCHES,
                "TCP hole punches started, as initiator (a connect's punch try) or \
                       responder (a CHALLENGE accepted).",
            ),
            (
                PUNCH_WINS,
                "Hole punches that opened the connection (initiator side).",
            ),
            (
                "p2p_node_punch_challenges",
                "CHALLENGE requests from the rendezvous, by result.",
            ),
            (OPENED, "Connections opened, by direction."),
            (
                RENDEZVOUS,
                "Rendezvous requests (bootstrap, advertise, NAT probe), by result.",
            ),
            (
                REVERSE,
                "Reverse-connect and relay requests received, by result.",
            ),
            (
                REQUEST_CHECKS,
                "Reverse-connect and relay requests by form (signed, unsigned) and what their \
                 checks found (accepted, forged, replayed, stale, not_for_us, rate_limited, ...).",
            ),
            (
                HANDSHAKES,
                "New connections to peers by how they started: ok (encrypted), plain, \
                 failed, timeout, refused.",
            ),
        ];
        for (name, help) in families {
            let series: Vec<(Vec<(&str, &str)>, u64)> = samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| {
                    let labels = s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    (labels, s.value)
                })
                .collect();
            let series: Vec<(&[(&str, &str)], u64)> =
                series.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
            out.labelled_counters(name, help, &series);
        }
        let opened = self.opened.load(Ordering::Relaxed);
        let closed = self.closed.load(Ordering::Relaxed);
        out.gauge(
            "p2p_node_connections_open",
            "Connections to peers open now.",
            i64::try_from(opened.saturating_sub(closed)).unwrap_or(i64::MAX),
        );
        out.counters(
            "p2p_node_payload_bytes",
            "Line bytes the application received from and sent to peers.",
            "direction",
            &[
                ("received", self.received_bytes.load(Ordering::Relaxed)),
                ("sent", self.sent_bytes.load(Ordering::Relaxed)),
            ],
        );
    }

    fn rendezvous(&self, job: Job, result: &str) {
        let job = match job {
            Job::Bootstrap => "bootstrap",
            Job::Advertise => "advertise",
            Job::Clear => "clear",
            Job::NatProbe(_) => "nat_probe",
        };
        self.add(
            RENDEZVOUS,
            vec![("job", job.into()), ("result", result.into())],
        );
    }

    fn add(&self, name: &'static str, labels: Vec<(&'static str, String)>) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((name, labels)).or_insert(0) += 1;
        }
    }
}
