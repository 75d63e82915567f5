//! Mapping timeouts: how long a router's conntrack (and so its NAT mapping) keeps an idle
//! flow. Per router namespace (the `net.netfilter.nf_conntrack_*_timeout*` sysctls are per
//! network namespace), so keepalive logic can be tested in seconds instead of hours.
//!
//! Linux defaults: TCP established 5 days, UDP 30 s unreplied, 120 s once replies were seen.
//! A full-cone or restricted-cone router's mapping table (see [`crate::nat`]) follows the same
//! values when they are set. Teardown: the sysctls die with the namespace.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units;

/// Conntrack timeouts of one router; `None` keeps the kernel default.
///
/// ```
/// use std::time::Duration;
/// use netns_sim::Timeouts;
/// let t = Timeouts { tcp_established: Some(Duration::from_secs(60)), ..Timeouts::default() };
/// assert_eq!(t.to_string(), "tcp-established 60s");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// An established TCP connection idle this long is forgotten.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::opt_duration"
    )]
    pub tcp_established: Option<Duration>,
    /// A UDP flow that never got a reply, idle this long, is forgotten.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::opt_duration"
    )]
    pub udp: Option<Duration>,
    /// A UDP flow that saw replies, idle this long, is forgotten.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::opt_duration"
    )]
    pub udp_stream: Option<Duration>,
}

/// A timeout the kernel cannot take.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{name} timeout {value:?} is not a whole number of seconds of at least 1 s")]
pub struct BadTimeout {
    /// Which timeout.
    pub name: &'static str,
    /// The value given.
    pub value: Duration,
}

impl Timeouts {
    /// Whether every timeout is the kernel's default.
    pub fn is_default(&self) -> bool {
        *self == Timeouts::default()
    }

    fn each(&self) -> [(&'static str, &'static str, Option<Duration>); 3] {
        [
            (
                "tcp-established",
                "nf_conntrack_tcp_timeout_established",
                self.tcp_established,
            ),
            ("udp", "nf_conntrack_udp_timeout", self.udp),
            (
                "udp-stream",
                "nf_conntrack_udp_timeout_stream",
                self.udp_stream,
            ),
        ]
    }

    /// Checks that each timeout is whole seconds and at least 1 s (what the sysctls take).
    pub fn check(&self) -> Result<(), BadTimeout> {
        for (name, _, value) in self.each() {
            if let Some(v) = value
                && (v.subsec_nanos() != 0 || v.as_secs() == 0)
            {
                return Err(BadTimeout { name, value: v });
            }
        }
        Ok(())
    }

    /// `sysctl -w` arguments, e.g. `net.netfilter.nf_conntrack_udp_timeout=5`.
    pub(crate) fn sysctls(&self) -> Vec<String> {
        self.each()
            .into_iter()
            .filter_map(|(_, key, v)| v.map(|v| format!("net.netfilter.{key}={}", v.as_secs())))
            .collect()
    }
}

impl std::fmt::Display for Timeouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .each()
            .into_iter()
            .filter_map(|(name, _, v)| v.map(|v| format!("{name} {}", units::format_duration(v))))
            .collect();
        if parts.is_empty() {
            f.write_str("default")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_and_checks() {
        let t = Timeouts {
            tcp_established: Some(Duration::from_mins(1)),
            udp_stream: Some(Duration::from_secs(5)),
            ..Timeouts::default()
        };
        assert_eq!(
            t.sysctls(),
            [
                "net.netfilter.nf_conntrack_tcp_timeout_established=60",
                "net.netfilter.nf_conntrack_udp_timeout_stream=5"
            ]
        );
        assert!(t.check().is_ok());
        let bad = Timeouts {
            udp: Some(Duration::from_millis(1500)),
            ..Timeouts::default()
        };
        assert_eq!(
            bad.check(),
            Err(BadTimeout {
                name: "udp",
                value: Duration::from_millis(1500)
            })
        );
        assert_eq!(Timeouts::default().to_string(), "default");
    }
}
