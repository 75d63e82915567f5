//! How bad a link is: one-way delay, jitter and loss per direction ([`LinkProfile`], [`Link`]),
//! and whole-lab presets ([`WanProfile`]). The machinery that makes packets late lives in
//! [`crate::wan`].
//!
//! Every host has one uplink: a public host's or a router's link to the internet (or, behind a
//! carrier NAT, to the carrier), a private host's link to its router. `up` is the direction
//! away from the host, `down` the direction towards it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{self, Share};

/// One direction of a link: every packet waits `delay` ± up to `jitter` (uniform), and `loss`
/// of them never arrive.
///
/// ```
/// use std::time::Duration;
/// use netns_sim::LinkProfile;
/// let p = LinkProfile::delay_ms(40).with_jitter_ms(5).with_loss_percent(1.0);
/// assert_eq!(p.delay, Duration::from_millis(40));
/// assert_eq!(p.to_string(), "delay 40ms jitter 5ms loss 1%");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkProfile {
    /// One-way delay.
    #[serde(default, with = "units::duration")]
    pub delay: Duration,
    /// Each packet's delay is drawn uniformly from `delay - jitter ..= delay + jitter` (never
    /// below zero). Packets of one direction keep their order (see [`crate::wan`]).
    #[serde(default, with = "units::duration")]
    pub jitter: Duration,
    /// The share of packets dropped, e.g. `1%`.
    #[serde(default)]
    pub loss: Share,
}

impl LinkProfile {
    /// No delay, no jitter, no loss: still a stage in the path (to measure what it costs).
    pub const ZERO: LinkProfile = LinkProfile {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: Share::ZERO,
    };

    /// A one-way delay of `ms` milliseconds, no jitter, no loss.
    pub const fn delay_ms(ms: u64) -> LinkProfile {
        LinkProfile {
            delay: Duration::from_millis(ms),
            ..LinkProfile::ZERO
        }
    }

    /// The same with `ms` milliseconds of jitter.
    #[must_use]
    pub const fn with_jitter_ms(self, ms: u64) -> LinkProfile {
        LinkProfile {
            jitter: Duration::from_millis(ms),
            ..self
        }
    }

    /// The same with `percent` % loss (clamped to 0..=100).
    #[must_use]
    pub fn with_loss_percent(self, percent: f64) -> LinkProfile {
        LinkProfile {
            loss: Share::from_percent(percent),
            ..self
        }
    }
}

impl std::fmt::Display for LinkProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "delay {} jitter {} loss {}",
            units::format_duration(self.delay),
            units::format_duration(self.jitter),
            self.loss
        )
    }
}

/// A host's uplink: a profile per direction; `None` leaves that direction untouched (instant
/// and lossless, no stage in the path).
///
/// TOML, under `[links.HOST]`: `delay`, `jitter` and `loss` set both directions; `up = { .. }`
/// and `down = { .. }` set one direction (their missing fields come from the shared ones).
/// ```toml
/// [links.nat-a]
/// delay = "40ms"
/// jitter = "5ms"
/// loss = "1%"
/// [links.nat-b]
/// up = { delay = "10ms" }
/// down = { delay = "40ms", loss = "2%" }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "LinkToml", into = "LinkToml")]
pub struct Link {
    /// Away from the host (its uploads).
    pub up: Option<LinkProfile>,
    /// Towards the host (its downloads).
    pub down: Option<LinkProfile>,
}

impl Link {
    /// The same profile both ways.
    pub const fn symmetric(p: LinkProfile) -> Link {
        Link {
            up: Some(p),
            down: Some(p),
        }
    }

    /// `up` away from the host, `down` towards it.
    pub const fn asymmetric(up: LinkProfile, down: LinkProfile) -> Link {
        Link {
            up: Some(up),
            down: Some(down),
        }
    }

    /// Whether neither direction has a stage.
    pub fn is_empty(&self) -> bool {
        self.up.is_none() && self.down.is_none()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkToml {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::opt_duration"
    )]
    delay: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::opt_duration"
    )]
    jitter: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loss: Option<Share>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    up: Option<DirectionToml>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    down: Option<DirectionToml>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectionToml {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::opt_duration"
    )]
    delay: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::opt_duration"
    )]
    jitter: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loss: Option<Share>,
}

impl From<LinkToml> for Link {
    fn from(t: LinkToml) -> Link {
        let shared =
            (t.delay.is_some() || t.jitter.is_some() || t.loss.is_some()).then(|| LinkProfile {
                delay: t.delay.unwrap_or_default(),
                jitter: t.jitter.unwrap_or_default(),
                loss: t.loss.unwrap_or_default(),
            });
        let one = |d: Option<DirectionToml>| match d {
            Some(d) => {
                let base = shared.unwrap_or_default();
                Some(LinkProfile {
                    delay: d.delay.unwrap_or(base.delay),
                    jitter: d.jitter.unwrap_or(base.jitter),
                    loss: d.loss.unwrap_or(base.loss),
                })
            }
            None => shared,
        };
        Link {
            up: one(t.up),
            down: one(t.down),
        }
    }
}

impl From<Link> for LinkToml {
    fn from(l: Link) -> LinkToml {
        let one = |p: Option<LinkProfile>| {
            p.map(|p| DirectionToml {
                delay: Some(p.delay),
                jitter: Some(p.jitter),
                loss: Some(p.loss),
            })
        };
        LinkToml {
            up: one(l.up),
            down: one(l.down),
            ..LinkToml::default()
        }
    }
}

/// A whole-lab WAN: every *access link* (the uplink of each router that is not a carrier,
/// i.e. each home's line to its ISP) gets its own delay per direction, drawn from
/// `delay_min..=delay_max` (whole milliseconds, reproducible from `seed`), plus `jitter` and
/// `loss`. Public hosts (servers) and carrier NATs stay in the instant core unless given a
/// link of their own with [`crate::Topology::with_link`].
///
/// ```
/// use netns_sim::{NatKind, Topology, TwoNats, WanProfile};
/// let t = Topology::two_nats(TwoNats::default()).with_wan(&WanProfile::internet());
/// let a = t.links["nat-a"];
/// let up = a.up.unwrap();
/// assert!((20..=60).contains(&up.delay.as_millis()));
/// assert_eq!(up.loss.to_string(), "1%");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WanProfile {
    /// Shortest one-way delay of an access link direction.
    pub delay_min: Duration,
    /// Longest one-way delay of an access link direction.
    pub delay_max: Duration,
    /// Jitter on every access link direction.
    pub jitter: Duration,
    /// Loss on every access link direction.
    pub loss: Share,
    /// Picks the delays (and seeds the lab's stages, see [`crate::Topology::seed`]).
    pub seed: u64,
}

impl WanProfile {
    /// An ordinary internet: each access link 20-60 ms one way (per direction), 3 ms of
    /// jitter, 1 % loss.
    pub const fn internet() -> WanProfile {
        WanProfile {
            delay_min: Duration::from_millis(20),
            delay_max: Duration::from_millis(60),
            jitter: Duration::from_millis(3),
            loss: Share::from_ppm(10_000),
            seed: 1,
        }
    }

    /// The link this profile gives the access link of `host` (a pure function of the profile
    /// and the name).
    pub fn link_for(&self, host: &str) -> Link {
        let pick = |dir: u64| {
            let min = u64::try_from(self.delay_min.as_millis()).unwrap_or(u64::MAX);
            let max = u64::try_from(self.delay_max.as_millis()).unwrap_or(u64::MAX);
            let span = max.saturating_sub(min) + 1;
            let h = crate::wan::mix(self.seed ^ crate::wan::name_hash(host) ^ dir);
            LinkProfile {
                delay: Duration::from_millis(min + h % span),
                jitter: self.jitter,
                loss: self.loss,
            }
        };
        Link {
            up: Some(pick(1)),
            down: Some(pick(2)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_forms_merge_and_round_trip() {
        let l: Link = toml::from_str(
            "delay = \"40ms\"\nloss = \"1%\"\nup = { delay = \"10ms\" }\ndown = { jitter = \"2ms\" }",
        )
        .unwrap();
        assert_eq!(l.up, Some(LinkProfile::delay_ms(10).with_loss_percent(1.0)));
        assert_eq!(
            l.down,
            Some(
                LinkProfile::delay_ms(40)
                    .with_jitter_ms(2)
                    .with_loss_percent(1.0)
            )
        );
        let again: Link = toml::from_str(&toml::to_string(&l).unwrap()).unwrap();
        assert_eq!(again, l);
        let only_down: Link = toml::from_str("down = { delay = \"5ms\" }").unwrap();
        assert_eq!(only_down.up, None);
        assert!(toml::from_str::<Link>("delay = \"5\"").is_err());
        assert!(toml::from_str::<Link>("latency = \"5ms\"").is_err());
    }

    #[test]
    fn wan_profile_is_reproducible_and_in_range() {
        let w = WanProfile::internet();
        assert_eq!(w.link_for("nat-a"), w.link_for("nat-a"));
        for name in ["nat-a", "nat-b", "home-1", "x"] {
            let l = w.link_for(name);
            for p in [l.up.unwrap(), l.down.unwrap()] {
                assert!((20..=60).contains(&p.delay.as_millis()), "{name}: {p}");
            }
        }
        let other = WanProfile { seed: 2, ..w };
        assert_ne!(
            (w.link_for("nat-a"), w.link_for("nat-b")),
            (other.link_for("nat-a"), other.link_for("nat-b"))
        );
    }
}
