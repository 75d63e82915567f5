//! Per-caller rate limiting: one token bucket per IP (IPv6: per /64), kept as a single
//! "theoretical arrival time" per caller (the GCRA form of a token bucket: no floats, no
//! refill timer). Time is passed in, so it is tested in virtual time.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use forwarding_check::rate::{Limited, RateLimiter};
//!
//! let t0 = Instant::now();
//! let ip = "192.0.2.7".parse().unwrap();
//! // 10 per minute (one token every 6 s), bucket of 5.
//! let mut limiter = RateLimiter::new(10, 5, 1000);
//! for _ in 0..5 {
//!     assert_eq!(limiter.take(t0, ip), Ok(()));
//! }
//! assert_eq!(limiter.take(t0, ip), Err(Limited::Rate { retry_after: Duration::from_secs(6) }));
//! assert_eq!(limiter.take(t0 + Duration::from_secs(6), ip), Ok(()));
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Why [`RateLimiter::take`] said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// This caller's bucket is empty; a token is back after `retry_after`.
    Rate {
        /// How long until the next token.
        retry_after: Duration,
    },
    /// The table of callers is full of callers that are still limited; try later.
    TableFull {
        /// The configured table size.
        limit: usize,
    },
}

/// Token buckets keyed by [`caller_key`].
#[derive(Debug)]
pub struct RateLimiter {
    /// Time per token.
    interval: Duration,
    /// How far ahead of now a caller's theoretical arrival time may run: `burst` intervals.
    tolerance: Duration,
    /// Theoretical arrival time per caller: when its bucket will be full again.
    tat: HashMap<IpAddr, Instant>,
    max_keys: usize,
}

impl RateLimiter {
    /// `per_minute` tokens a minute on average, buckets of `burst` tokens, state for at most
    /// `max_keys` callers. Zeros are raised to 1.
    pub fn new(per_minute: u32, burst: u32, max_keys: usize) -> RateLimiter {
        let interval = Duration::from_mins(1) / per_minute.max(1);
        RateLimiter {
            interval,
            tolerance: interval * burst.max(1),
            tat: HashMap::new(),
            max_keys: max_keys.max(1),
        }
    }

    /// Takes one token from `ip`'s bucket (keyed by [`caller_key`]).
    pub fn take(&mut self, now: Instant, ip: IpAddr) -> Result<(), Limited> {
        let key = caller_key(ip);
        if !self.tat.contains_key(&key) && self.tat.len() >= self.max_keys {
            self.forget_full(now);
            if self.tat.len() >= self.max_keys {
                return Err(Limited::TableFull {
                    limit: self.max_keys,
                });
            }
        }
        let tat = self.tat.get(&key).copied().unwrap_or(now).max(now);
        let new_tat = tat + self.interval;
        let ahead = new_tat.saturating_duration_since(now);
        if ahead > self.tolerance {
            return Err(Limited::Rate {
                retry_after: ahead.saturating_sub(self.tolerance),
            });
        }
        self.tat.insert(key, new_tat);
        Ok(())
    }

    /// Forgets callers whose bucket is full again (they are indistinguishable from new ones).
    pub fn forget_full(&mut self, now: Instant) {
        self.tat.retain(|_, tat| *tat > now);
    }

    /// Callers currently tracked.
    pub fn tracked(&self) -> usize {
        self.tat.len()
    }
}

/// The identity a caller is counted under: the server kit's (an IPv4 address as is, an
/// IPv4-mapped address as its IPv4 address, an IPv6 address by its /64), shared by every
/// server's per-IP limits.
pub use server_kit::caller_key;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(60, 3, 10); // one per second, burst 3
        for _ in 0..3 {
            assert_eq!(l.take(t0, ip("10.0.0.1")), Ok(()));
        }
        assert_eq!(
            l.take(t0, ip("10.0.0.1")),
            Err(Limited::Rate {
                retry_after: Duration::from_secs(1)
            })
        );
        // Denials do not consume anything.
        assert_eq!(
            l.take(t0 + Duration::from_millis(500), ip("10.0.0.1")),
            Err(Limited::Rate {
                retry_after: Duration::from_millis(500)
            })
        );
        assert_eq!(l.take(t0 + Duration::from_secs(1), ip("10.0.0.1")), Ok(()));
        // Another caller is unaffected.
        assert_eq!(l.take(t0, ip("10.0.0.2")), Ok(()));
        // After a long pause the bucket is full again, not fuller.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert_eq!(l.take(later, ip("10.0.0.1")), Ok(()));
        }
        assert!(l.take(later, ip("10.0.0.1")).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_and_the_table_is_capped() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(60, 2, 2);
        assert_eq!(l.take(t0, ip("10.0.0.1")), Ok(()));
        assert_eq!(l.take(t0, ip("10.0.0.2")), Ok(()));
        assert_eq!(
            l.take(t0, ip("10.0.0.3")),
            Err(Limited::TableFull { limit: 2 })
        );
        // Known callers still work while the table is full.
        assert_eq!(l.take(t0, ip("10.0.0.1")), Ok(()));
        // One second later 10.0.0.2's bucket is full again, so it makes room.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.take(t1, ip("10.0.0.3")), Ok(()));
        assert_eq!(l.tracked(), 2);
        l.forget_full(t0 + Duration::from_secs(10));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1, 1, 10);
        assert_eq!(l.take(t0, ip("2001:db8::1")), Ok(()));
        assert!(l.take(t0, ip("2001:db8::ffff:2")).is_err());
        assert_eq!(l.take(t0, ip("2001:db8:0:1::1")), Ok(()));
    }

    #[test]
    fn zero_settings_do_not_divide_by_zero() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(0, 0, 0);
        assert_eq!(l.take(t0, ip("10.0.0.1")), Ok(()));
        assert!(l.take(t0, ip("10.0.0.1")).is_err());
    }
}
