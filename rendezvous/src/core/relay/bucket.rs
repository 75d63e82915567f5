//! The token bucket behind `--relay-rate`.

use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes per second, at most `burst` saved up. Pure arithmetic with the
/// time passed in; it never loses or invents a byte: over any interval `t`, at most
/// `burst + rate * t` bytes are granted.
///
/// ```
/// use std::time::{Duration, Instant};
/// use rendezvous::core::TokenBucket;
///
/// let t0 = Instant::now();
/// let mut bucket = TokenBucket::new(1000, 500, t0); // 1000 B/s, starts full
/// assert_eq!(bucket.available(t0), 500);
/// bucket.take(500);
/// assert_eq!(bucket.available(t0 + Duration::from_millis(100)), 100);
/// assert_eq!(bucket.ready_at(300), t0 + Duration::from_millis(300));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    /// The moment `tokens` is exact for (fractions of a byte earned since are not lost: this
    /// only advances by the time that earned whole bytes).
    updated: Instant,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket. `rate` and `burst` are raised to at least 1.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1);
        TokenBucket {
            rate: rate.max(1),
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Most bytes saved up.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Bytes that may be taken at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens
    }

    /// Takes `n` bytes (at most what is there; call [`available`](Self::available) first).
    pub fn take(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n);
    }

    /// The earliest moment [`available`](Self::available) reaches `want` (capped at the
    /// burst). At or before the last refill when it is there already.
    pub fn ready_at(&self, want: u64) -> Instant {
        let want = want.min(self.burst);
        if self.tokens >= want {
            return self.updated;
        }
        let missing = u128::from(want - self.tokens);
        let nanos = (missing * NANOS_PER_SEC).div_ceil(u128::from(self.rate));
        self.updated + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        let earned = elapsed * u128::from(self.rate) / NANOS_PER_SEC;
        let room = u128::from(self.burst - self.tokens);
        if earned >= room {
            self.tokens = self.burst;
            self.updated = now;
        } else if earned > 0 {
            // earned < room <= burst, so it fits in u64.
            self.tokens += u64::try_from(earned).unwrap_or(0);
            // The time those whole bytes took, rounded up: never more than `elapsed`, and the
            // remainder (a fraction of a byte) stays to be earned.
            let spent = (earned * NANOS_PER_SEC).div_ceil(u128::from(self.rate));
            self.updated += Duration::from_nanos(u64::try_from(spent).unwrap_or(u64::MAX));
        }
    }
}
