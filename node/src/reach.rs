//! Reachability: UPnP and NAT-PMP port forwarding, proven with the forwarding check.
//!
//! (Being written: see issue 5.)
