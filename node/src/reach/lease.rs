//! The lease discipline for kept mappings, sans-IO: renew at half-life, retry a failed
//! renewal at half the time left, give up (and say so) when the lease ran out, and hand every
//! mapping over for deletion on stop.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use node::reach::{Leases, Mapping, Protocol};
//! use node::reach::lease::LeaseEvent;
//!
//! let t0 = Instant::now();
//! let m = Mapping::new(Protocol::Upnp, 50500, "192.168.1.2:50500".parse().unwrap(), 60);
//! let mut leases = Leases::new();
//! leases.add(t0, m);
//! assert_eq!(leases.poll_timeout(), Some(t0 + Duration::from_secs(30)));
//! // At half-life: renew (the same request again).
//! assert_eq!(leases.handle_timeout(t0 + Duration::from_secs(30)), vec![m]);
//! let t1 = t0 + Duration::from_secs(31);
//! assert_eq!(leases.handle_renewed(t1, m, Ok(m)), Some(LeaseEvent::Renewed(m)));
//! assert_eq!(leases.poll_timeout(), Some(t1 + Duration::from_secs(30)));
//! // On stop, everything goes.
//! assert_eq!(leases.take_all(), vec![m]);
//! ```

use std::time::{Duration, Instant};

use super::report::Mapping;

/// A failed renewal is not retried sooner than this.
pub const MIN_RETRY: Duration = Duration::from_secs(1);

/// What happened to a kept mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Renewed; the lease runs again (possibly with a new granted length).
    Renewed(Mapping),
    /// A renewal failed; another try comes at `retry_in`.
    RenewFailed {
        /// The mapping.
        mapping: Mapping,
        /// Why.
        reason: String,
        /// When the next try is.
        retry_in: Duration,
    },
    /// The lease ran out without a renewal, or the router moved the mapping: the port is no
    /// longer ours.
    Lost {
        /// The mapping.
        mapping: Mapping,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Held {
    mapping: Mapping,
    renew_at: Instant,
    expires_at: Instant,
    renewing: bool,
}

/// The kept mappings (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Leases {
    held: Vec<Held>,
}

impl Leases {
    /// No mappings.
    pub fn new() -> Leases {
        Leases::default()
    }

    /// Keeps `mapping`, granted at `now`.
    pub fn add(&mut self, now: Instant, mapping: Mapping) {
        self.held.retain(|h| !h.mapping.same_rule(&mapping));
        let lease = Duration::from_secs(u64::from(mapping.lease_secs));
        self.held.push(Held {
            mapping,
            renew_at: now + lease / 2,
            expires_at: now + lease,
            renewing: false,
        });
    }

    /// The mappings kept now.
    pub fn mappings(&self) -> Vec<Mapping> {
        self.held.iter().map(|h| h.mapping).collect()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// When [`Leases::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held
            .iter()
            .map(|h| if h.renewing { h.expires_at } else { h.renew_at })
            .min()
    }

    /// Returns the mappings to renew now (each one once until [`Leases::handle_renewed`]).
    /// A mapping whose lease ran out while its renewal was still running stays until that
    /// renewal reports.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Mapping> {
        let mut renew = Vec::new();
        for h in &mut self.held {
            if !h.renewing && h.renew_at <= now {
                h.renewing = true;
                renew.push(h.mapping);
            }
        }
        renew
    }

    /// A renewal of `asked` ended. `Ok(granted)`: the router's answer (NAT-PMP may change the
    /// lease, or even the port: then the old port is lost).
    pub fn handle_renewed(
        &mut self,
        now: Instant,
        asked: Mapping,
        result: Result<Mapping, String>,
    ) -> Option<LeaseEvent> {
        let i = self.held.iter().position(|h| h.mapping.same_rule(&asked))?;
        self.held[i].renewing = false;
        match result {
            Ok(granted) if granted.external_port == asked.external_port => {
                let lease = Duration::from_secs(u64::from(granted.lease_secs));
                let h = &mut self.held[i];
                h.mapping = granted;
                h.renew_at = now + lease / 2;
                h.expires_at = now + lease;
                Some(LeaseEvent::Renewed(granted))
            }
            Ok(granted) => {
                self.held.remove(i);
                Some(LeaseEvent::Lost {
                    mapping: asked,
                    reason: format!(
                        "the router moved the mapping to external port {} on renewal",
                        granted.external_port
                    ),
                })
            }
            Err(reason) => {
                let h = &mut self.held[i];
                if now >= h.expires_at {
                    let mapping = h.mapping;
                    self.held.remove(i);
                    return Some(LeaseEvent::Lost {
                        mapping,
                        reason: format!("the lease ran out and renewing failed: {reason}"),
                    });
                }
                let retry_in = ((h.expires_at - now) / 2).max(MIN_RETRY);
                h.renew_at = now + retry_in;
                Some(LeaseEvent::RenewFailed {
                    mapping: h.mapping,
                    reason,
                    retry_in,
                })
            }
        }
    }

    /// Removes and returns every kept mapping (to delete them on stop).
    pub fn take_all(&mut self) -> Vec<Mapping> {
        self.held.drain(..).map(|h| h.mapping).collect()
    }
}
