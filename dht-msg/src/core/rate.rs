//! Per-IP rate limits of the mailbox server: a token bucket each for `PUT`s and for
//! registrations (new mailboxes and wrong secrets).

use std::time::{Duration, Instant};

/// A token bucket.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    pub(super) fn refill(&mut self, now: Instant, rate: f64, burst: u32) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.at = now;
    }

    /// Takes a token, or says how long until one is available.
    pub(super) fn take(&mut self, now: Instant, rate: f64, burst: u32) -> Result<(), Duration> {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate > 0.0 {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate).min(1e9),
            ))
        } else {
            Err(Duration::MAX)
        }
    }

    pub(super) fn has_token(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        self.refill(now, rate, burst);
        self.tokens >= 1.0
    }

    pub(super) fn is_full(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        self.refill(now, rate, burst);
        self.tokens >= f64::from(burst)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct IpBuckets {
    pub(super) put: Bucket,
    pub(super) register: Bucket,
}

pub(super) fn retry_text(wait: Duration) -> String {
    if wait == Duration::MAX {
        "never (rate 0)".to_string()
    } else {
        format!("in {:.1} s", wait.as_secs_f64().max(0.1))
    }
}
