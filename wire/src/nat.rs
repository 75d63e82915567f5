//! NAT mapping detection from `SOURCE TCP` probes, as PyP2P does it.
//!
//! The node opens [`PROBES`] connections to the rendezvous server from fresh local ports and asks
//! each time `SOURCE TCP`; the server answers `REMOTE TCP <port>` with the source port it saw.
//! [`classify`] turns the (local port, observed port) pairs into a [`NatMapping`]:
//! - at least 4 of 5 observed ports equal their local port: [`NatMapping::Preserving`];
//! - otherwise, if successive observed ports differ by one common step: [`NatMapping::Delta`].
//!   PyP2P wants every step equal; we accept a step shared by all but one pair when there are
//!   at least four, because another connection through the same NAT between two probes (our
//!   own mailbox connection at start-up, another host's traffic) takes a port and makes one
//!   step larger;
//! - otherwise [`NatMapping::Random`].
//!
//! Like PyP2P, this asks one server, so it cannot tell endpoint-dependent mapping (a symmetric
//! NAT that preserves ports) from a cone NAT.
//!
//! ```
//! use wire::nat::{classify, NatMapping};
//!
//! let same: Vec<(u16, u16)> = (0..5).map(|i| (40000 + i * 7, 40000 + i * 7)).collect();
//! assert_eq!(classify(&same), Some(NatMapping::Preserving));
//! let seq: Vec<(u16, u16)> = (0..5).map(|i| (40000 + i * 7, 20000 + i)).collect();
//! assert_eq!(classify(&seq), Some(NatMapping::Delta(1)));
//! ```

use std::fmt;

use serde::Serialize;

/// How many `SOURCE TCP` probes a detection makes (PyP2P: 5).
pub const PROBES: usize = 5;

/// How a NAT maps a private source port to a public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "delta", rename_all = "lowercase")]
pub enum NatMapping {
    /// The public port equals the private port (or there is no NAT).
    Preserving,
    /// Each new connection gets the previous public port plus this step.
    Delta(i32),
    /// No pattern.
    Random,
}

impl fmt::Display for NatMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatMapping::Preserving => f.write_str("preserving"),
            NatMapping::Delta(d) => write!(f, "delta({d})"),
            NatMapping::Random => f.write_str("random"),
        }
    }
}

/// Classifies probe results `(local port, observed port)` in the order they were made.
/// `None` with fewer than 2 results (nothing to conclude from).
pub fn classify(probes: &[(u16, u16)]) -> Option<NatMapping> {
    if probes.len() < 2 {
        return None;
    }
    let same = probes.iter().filter(|(l, r)| l == r).count();
    // PyP2P: 4 of 5. Scaled: all but at most one in five.
    if same * PROBES >= probes.len() * (PROBES - 1) {
        return Some(NatMapping::Preserving);
    }
    let deltas: Vec<i32> = probes
        .windows(2)
        .map(|w| i32::from(w[1].1) - i32::from(w[0].1))
        .collect();
    let mut best = (0, 0);
    for d in &deltas {
        let count = deltas.iter().filter(|x| *x == d).count();
        if *d != 0 && count > best.1 {
            best = (*d, count);
        }
    }
    let (step, count) = best;
    let allowed_misses = usize::from(deltas.len() >= 4);
    if count > 0 && count + allowed_misses >= deltas.len() {
        return Some(NatMapping::Delta(step));
    }
    Some(NatMapping::Random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_three_kinds() {
        assert_eq!(classify(&[]), None);
        assert_eq!(classify(&[(1, 1)]), None);
        let mostly_same = [(10, 10), (20, 20), (30, 30), (40, 40), (50, 99)];
        assert_eq!(classify(&mostly_same), Some(NatMapping::Preserving));
        let twice_off = [(10, 10), (20, 20), (30, 30), (40, 41), (50, 99)];
        assert_eq!(classify(&twice_off), Some(NatMapping::Random));
        let down = [(10, 500), (20, 498), (30, 496), (40, 494), (50, 492)];
        assert_eq!(classify(&down), Some(NatMapping::Delta(-2)));
        // Another connection took a port between two probes: still a step of 1.
        let skipped = [
            (10, 20017),
            (20, 20019),
            (30, 20020),
            (40, 20021),
            (50, 20022),
        ];
        assert_eq!(classify(&skipped), Some(NatMapping::Delta(1)));
        let two_skips = [
            (10, 20017),
            (20, 20019),
            (30, 20020),
            (40, 20022),
            (50, 20023),
        ];
        assert_eq!(classify(&two_skips), Some(NatMapping::Random));
        let short = [(10, 20017), (20, 20019), (30, 20020)];
        assert_eq!(classify(&short), Some(NatMapping::Random));
        let constant = [(10, 500), (20, 500), (30, 500)];
        assert_eq!(classify(&constant), Some(NatMapping::Random));
        assert_eq!(NatMapping::Delta(3).to_string(), "delta(3)");
        assert_eq!(
            serde_json::to_string(&NatMapping::Delta(1)).unwrap(),
            r#"{"kind":"delta","delta":1}"#
        );
        assert_eq!(
            serde_json::to_string(&NatMapping::Random).unwrap(),
            r#"{"kind":"random"}"#
        );
    }
}
