//! Hole-punching arithmetic: port prediction, the meeting time, and relay tokens. Pure
//! functions; the state machine that uses them lives in the node's core.
//!
//! # How a punch goes (TCP simultaneous open through two NATs)
//!
//! ```text
//!  candidate (wants to connect)        rendezvous              node (simultaneous)
//!   session bound to port Lc ────SOURCE TCP──▶                  persistent session bound to
//!                           ◀──REMOTE TCP M───                  its listen port L, registered
//!   predict ports p from M  ──CANDIDATE ip:port TCP p──▶        with SIMULTANEOUS READY
//!                           ◀──PREDICTION SET──  ──CHALLENGE cip p TCP──▶
//!                                                 ◀──ACCEPT cip q TCP T──   predict q, pick T
//!                           ◀──FIGHT nip q TCP T──                         (now + ~1.5 RTT)
//!   at T: connect Lc → nip:q_i                    at T: connect L → cip:p_i
//! ```
//!
//! Both sides dial at the same moment; each NAT sees an outbound SYN first, so the other's SYN
//! looks like a reply and passes. Routers that silently drop unsolicited SYNs (as home routers
//! do) also forgive a late side: the early SYN is dropped, the kernel retransmits it, and the
//! late side's SYN finds the early side's mapping. That is why the meeting can be set at about
//! one round trip through the rendezvous ([`meeting_delay`]) instead of PyP2P's fixed 6 s.
//!
//! Port prediction ([`predict_ports`]) uses the NAT mapping found by the NAT detection
//! ([`crate::nat`]) and the port the rendezvous observed on a connection from the very
//! port we will dial from.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::nat::NatMapping;
use crate::overlay::Nonce;
use crate::rendezvous::RelayToken;

/// Ports predicted for a NAT that steps its ports (delta): the next few, in case other
/// connections take one in between.
pub const DELTA_PREDICTIONS: usize = 3;

/// Added to the round trip when scheduling a meeting: processing on three hosts.
pub const MEETING_MARGIN: Duration = Duration::from_millis(10);

/// The meeting delay when no round trip to the rendezvous has been measured yet.
pub const UNMEASURED_MEETING_DELAY: Duration = Duration::from_millis(200);

/// A meeting is never set further out than this (a clock far off or a huge RTT).
pub const MAX_MEETING_DELAY: Duration = Duration::from_secs(3);

/// The external ports we expect our next outbound connection from the port the rendezvous saw
/// as `observed` to get, given our NAT's `mapping`:
/// - preserving (or not known, or random, as a best guess): `[observed]`; an endpoint-
///   independent NAT reuses the mapping for a new destination;
/// - `delta(d)`: the next [`DELTA_PREDICTIONS`] ports `observed + d`, `observed + 2d`, ...
///   (each new connection takes the next one), leaving out any outside 1..=65535.
///
/// ```
/// use wire::nat::NatMapping;
/// use wire::punch::predict_ports;
///
/// assert_eq!(predict_ports(Some(NatMapping::Preserving), 40000), vec![40000]);
/// assert_eq!(predict_ports(Some(NatMapping::Delta(1)), 20005), vec![20006, 20007, 20008]);
/// assert_eq!(predict_ports(Some(NatMapping::Delta(-2)), 3), vec![1]);
/// ```
pub fn predict_ports(mapping: Option<NatMapping>, observed: u16) -> Vec<u16> {
    match mapping {
        Some(NatMapping::Delta(step)) => (1..=DELTA_PREDICTIONS)
            .filter_map(|k| {
                let k = i64::try_from(k).ok()?;
                let port = i64::from(observed) + k * i64::from(step);
                u16::try_from(port).ok().filter(|p| *p != 0)
            })
            .collect(),
        Some(NatMapping::Preserving | NatMapping::Random) | None => vec![observed],
    }
}

/// Whether a punch from a NAT with `mapping` can be predicted at all (a random mapping can
/// still meet a full-cone NAT on the other side, so it is tried, but it is not expected to work).
pub fn predictable(mapping: Option<NatMapping>) -> bool {
    !matches!(mapping, Some(NatMapping::Random))
}

/// How far ahead of now a simultaneous node sets the meeting, given its measured round trip
/// to the rendezvous: the `ACCEPT` takes half a round trip to the server, the `FIGHT` about
/// another half to the candidate (assumed as far away as we are), plus half a round trip and
/// [`MEETING_MARGIN`] of slack. Between [`MEETING_MARGIN`] and [`MAX_MEETING_DELAY`].
///
/// ```
/// use std::time::Duration;
/// use wire::punch::meeting_delay;
///
/// assert_eq!(meeting_delay(Some(Duration::from_millis(40))), Duration::from_millis(70));
/// assert_eq!(meeting_delay(Some(Duration::from_micros(100))), Duration::from_micros(10_150));
/// ```
pub fn meeting_delay(rtt: Option<Duration>) -> Duration {
    match rtt {
        None => UNMEASURED_MEETING_DELAY,
        Some(rtt) => (rtt + rtt / 2 + MEETING_MARGIN).min(MAX_MEETING_DELAY),
    }
}

/// The local instant of the meeting time `meeting_unix` (seconds since the Unix epoch on the
/// shared NTP clock), given that `now` is `unix_now` on that clock. A meeting in the past is
/// now; one further than [`MAX_MEETING_DELAY`] out is capped there.
///
/// ```
/// use std::time::{Duration, Instant};
/// use wire::punch::meeting_instant;
///
/// let now = Instant::now();
/// assert_eq!(meeting_instant(now, 1000.0, 1000.25), now + Duration::from_millis(250));
/// assert_eq!(meeting_instant(now, 1000.0, 999.0), now);
/// ```
pub fn meeting_instant(now: Instant, unix_now: f64, meeting_unix: f64) -> Instant {
    let ahead = meeting_unix - unix_now;
    if !ahead.is_finite() || ahead <= 0.0 {
        return now;
    }
    now + Duration::from_secs_f64(ahead).min(MAX_MEETING_DELAY)
}

/// The relay token both ends of a relayed connect send to the rendezvous (`RELAY <token>`),
/// derived from the connect's nonce, so the mailbox request carries only the nonce and the
/// relay never learns the nonce itself (which still authenticates the peer inside the relayed
/// stream).
///
/// ```
/// use wire::overlay::Nonce;
/// use wire::punch::relay_token;
///
/// let token = relay_token(&Nonce([7; 32]));
/// assert_eq!(token.to_string().len(), 64);
/// assert_ne!(token, relay_token(&Nonce([8; 32])));
/// ```
pub fn relay_token(nonce: &Nonce) -> RelayToken {
    let mut hash = Sha256::new();
    hash.update(b"p2p/1 relay token ");
    hash.update(nonce.0);
    RelayToken::from_bytes(hash.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn predictions_by_mapping() {
        assert_eq!(predict_ports(None, 5000), vec![5000]);
        assert_eq!(predict_ports(Some(NatMapping::Random), 5000), vec![5000]);
        assert_eq!(
            predict_ports(Some(NatMapping::Delta(2)), 65530),
            vec![65532, 65534]
        );
        assert_eq!(predict_ports(Some(NatMapping::Delta(-1)), 2), vec![1]);
        assert!(predictable(Some(NatMapping::Delta(1))));
        assert!(predictable(None));
        assert!(!predictable(Some(NatMapping::Random)));
    }

    #[test]
    fn meeting_delay_is_bounded() {
        assert_eq!(meeting_delay(None), UNMEASURED_MEETING_DELAY);
        assert_eq!(meeting_delay(Some(Duration::ZERO)), MEETING_MARGIN);
        assert_eq!(
            meeting_delay(Some(Duration::from_mins(1))),
            MAX_MEETING_DELAY
        );
    }

    #[test]
    fn meeting_instant_handles_odd_clocks() {
        let now = Instant::now();
        assert_eq!(meeting_instant(now, 10.0, f64::NAN), now);
        assert_eq!(meeting_instant(now, 10.0, 1e12), now + MAX_MEETING_DELAY);
    }

    proptest! {
        #[test]
        fn delta_predictions_are_the_next_steps(observed in 1u16.., step in -5i32..=5) {
            prop_assume!(step != 0);
            let ports = predict_ports(Some(NatMapping::Delta(step)), observed);
            prop_assert!(ports.len() <= DELTA_PREDICTIONS);
            let mut last = 0;
            for port in ports {
                prop_assert!(port != 0);
                let diff = i64::from(port) - i64::from(observed);
                prop_assert_eq!(diff % i64::from(step), 0);
                let k = diff / i64::from(step);
                prop_assert!(k > last && k <= 3, "k {} after {}", k, last);
                last = k;
            }
        }
    }
}
