//! Durations and shares written as people write them: `40ms`, `1.5s`, `250us`, `1%`.
//!
//! netns-sim stays apart from the node's crates, so it has its own small parser.

use std::fmt;
use std::time::Duration;

/// A duration or share that could not be parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    /// Not a number followed by `us`, `ms`, `s` or `m`.
    #[error("invalid duration {0:?}: use a number and a unit, e.g. 40ms, 1.5s, 250us, 2m")]
    Duration(String),
    /// Not a percentage between 0 and 100.
    #[error("invalid share {0:?}: use a percentage from 0% to 100%, e.g. 1% or 0.5%")]
    Share(String),
}

/// Parses `40ms`, `1.5s`, `250us`, `2m` or `0`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(netns_sim::units::parse_duration("40ms"), Ok(Duration::from_millis(40)));
/// assert_eq!(netns_sim::units::parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(netns_sim::units::parse_duration("40").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || UnitError::Duration(text.to_owned());
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" | "min" => value * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// Formats a duration the way [`parse_duration`] reads it: `40ms`, `1.5s`, `250us`, `0`.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us == 0 {
        "0".to_owned()
    } else if us.is_multiple_of(1_000_000) {
        format!("{}s", us / 1_000_000)
    } else if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

/// A share of packets, stored in parts per million (`1%` is 10 000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Share(u32);

impl Share {
    /// Nothing.
    pub const ZERO: Share = Share(0);
    /// One in a million is the resolution.
    pub const PER_MILLION: u32 = 1_000_000;

    /// `ppm` parts per million, capped at 100 %.
    pub const fn from_ppm(ppm: u32) -> Share {
        Share(if ppm > Self::PER_MILLION {
            Self::PER_MILLION
        } else {
            ppm
        })
    }

    /// `percent` %, rounded to the nearest part per million and clamped to 0..=100 %.
    pub fn from_percent(percent: f64) -> Share {
        // Clamped to 0..=1e6 first, so the cast cannot truncate or wrap.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Share((percent * 10_000.0).round().clamp(0.0, 1e6) as u32)
    }

    /// Parts per million.
    pub const fn ppm(self) -> u32 {
        self.0
    }

    /// As a fraction from 0.0 to 1.0.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 1e6
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = f64::from(self.0) / 10_000.0;
        write!(f, "{pct}%")
    }
}

impl std::str::FromStr for Share {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || UnitError::Share(text.to_owned());
        let s = text.trim();
        let num = if s == "0" {
            "0"
        } else {
            s.strip_suffix('%').ok_or_else(bad)?
        };
        let v: f64 = num.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&v) {
            return Err(bad());
        }
        Ok(Share::from_percent(v))
    }
}

impl serde::Serialize for Share {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "crate::units::duration")]` for `Duration` fields written as `40ms`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Writes `40ms`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads `40ms`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "crate::units::opt_duration")]` for `Option<Duration>` fields.
pub mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Writes `40ms` (or nothing, with `skip_serializing_if`).
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads `40ms`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, d) in [
            ("0", Duration::ZERO),
            ("250us", Duration::from_micros(250)),
            ("40ms", Duration::from_millis(40)),
            ("2s", Duration::from_secs(2)),
        ] {
            assert_eq!(parse_duration(text), Ok(d));
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        for bad in ["", "ms", "40", "4 0ms", "-1s", "1h", "1e9999s"] {
            assert_eq!(parse_duration(bad), Err(UnitError::Duration(bad.into())));
        }
    }

    #[test]
    fn shares_parse_and_print() {
        assert_eq!("1%".parse::<Share>().unwrap().ppm(), 10_000);
        assert_eq!("0.5%".parse::<Share>().unwrap().to_string(), "0.5%");
        assert_eq!("0".parse::<Share>().unwrap(), Share::ZERO);
        assert_eq!(Share::from_percent(250.0).ppm(), 1_000_000);
        for bad in ["1", "101%", "-1%", "x%"] {
            assert_eq!(bad.parse::<Share>(), Err(UnitError::Share(bad.into())));
        }
    }
}
