//! [`Budget`]: how often the node acts on what others ask of it (reverse-connect and relay
//! requests, hole-punch challenges), so that a flood is bounded but honest retries are not
//! refused.
//!
//! Two limits, both must allow a request:
//! - **in all**: at most `per_minute` requests acted on in any sliding minute;
//! - **per sender** (a node id, or a candidate's IP): a token bucket that holds
//!   `per_minute / 5` tokens (the burst: 24 with the default 120) and refills at
//!   `per_minute / 10` a minute (12), so one sender cannot spend the whole budget, yet twenty
//!   connects in a row from one peer all get through.
//!
//! A request that belongs to an attempt already counted (the same connect's reverse and relay
//! requests carry the same nonce) is acted on without spending again, once: a third request
//! with the same attempt pays like any other.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long an attempt is remembered as counted, and the window of the overall limit.
const WINDOW: Duration = Duration::from_mins(1);
/// Requests of one attempt acted on without spending, after the one that paid.
const FREE_REUSES: u8 = 1;
/// Per-sender buckets idle this long are forgotten (they would be full again).
const IDLE_BUCKET: Duration = Duration::from_mins(10);

/// A rate limit in all and per sender (see the module docs). `K` names a sender, `A` an
/// attempt (counted once).
#[derive(Debug)]
pub(super) struct Budget<K, A> {
    per_minute: usize,
    /// When requests were acted on (the overall window).
    window: VecDeque<Instant>,
    /// Per-sender buckets: tokens left and when they were last topped up.
    buckets: HashMap<K, (f64, Instant)>,
    /// Attempts counted in the last minute, and how many free requests each has used.
    counted: VecDeque<(Instant, A, u8)>,
}

impl<K: Eq + Hash + Copy + std::fmt::Display, A: PartialEq + Copy> Budget<K, A> {
    /// A budget of `per_minute` requests a minute in all (at least 1).
    pub(super) fn new(per_minute: usize) -> Self {
        Budget {
            per_minute: per_minute.max(1),
            window: VecDeque::new(),
            buckets: HashMap::new(),
            counted: VecDeque::new(),
        }
    }

    /// The budget a minute, as a float.
    fn per_minute_f64(&self) -> f64 {
        f64::from(u32::try_from(self.per_minute).unwrap_or(u32::MAX))
    }

    /// The per-sender burst.
    pub(super) fn burst(&self) -> f64 {
        (self.per_minute_f64() / 5.0).max(1.0)
    }

    /// Per-sender tokens regained per second.
    fn refill_per_sec(&self) -> f64 {
        (self.per_minute_f64() / 10.0).max(1.0) / 60.0
    }

    /// Spends one request of `sender` for `attempt` now, or says which limit refuses it.
    pub(super) fn take(
        &mut self,
        now: Instant,
        sender: K,
        attempt: Option<A>,
    ) -> Result<(), String> {
        self.spend(now, sender, attempt, true)
    }

    /// Whether [`Budget::take`] would allow the request now, spending nothing (to check two
    /// budgets before spending either).
    pub(super) fn allows(
        &mut self,
        now: Instant,
        sender: K,
        attempt: Option<A>,
    ) -> Result<(), String> {
        self.spend(now, sender, attempt, false)
    }

    fn spend(
        &mut self,
        now: Instant,
        sender: K,
        attempt: Option<A>,
        spend: bool,
    ) -> Result<(), String> {
        while self
            .window
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.window.pop_front();
        }
        while self
            .counted
            .front()
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.counted.pop_front();
        }
        if let Some(a) = attempt
            && let Some((_, _, reused)) = self
                .counted
                .iter_mut()
                .find(|(_, c, reused)| *c == a && *reused < FREE_REUSES)
        {
            if spend {
                *reused += 1;
            }
            return Ok(());
        }
        if self.window.len() >= self.per_minute {
            return Err(format!("this minute (limit {} in all)", self.per_minute));
        }
        let (burst, refill) = (self.burst(), self.refill_per_sec());
        self.buckets
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < IDLE_BUCKET);
        let (tokens, at) = self.buckets.entry(sender).or_insert((burst, now));
        let regained = now.saturating_duration_since(*at).as_secs_f64() * refill;
        *tokens = (*tokens + regained).min(burst);
        *at = now;
        if *tokens < 1.0 {
            return Err(format!(
                "from {sender} (a burst of {burst:.0}, then {:.0} a minute per sender)",
                refill * 60.0
            ));
        }
        if !spend {
            return Ok(());
        }
        *tokens -= 1.0;
        self.window.push_back(now);
        if let Some(a) = attempt {
            self.counted.push_back((now, a, 0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_in_a_row_then_the_sender_is_held_to_its_rate() {
        let now = Instant::now();
        let mut b: Budget<u32, u32> = Budget::new(120);
        for i in 0..24 {
            assert_eq!(b.take(now, 1, Some(i)), Ok(()), "request {i}");
        }
        let refused = b.take(now, 1, Some(99)).unwrap_err();
        assert!(refused.contains("from 1"), "{refused}");
        // Another sender is not affected.
        assert_eq!(b.take(now, 2, Some(100)), Ok(()));
        // 12 a minute: one token back after 5 s.
        assert!(b.take(now + Duration::from_secs(4), 1, Some(101)).is_err());
        assert_eq!(b.take(now + Duration::from_secs(6), 1, Some(102)), Ok(()));
    }

    #[test]
    fn an_attempt_is_counted_once() {
        let now = Instant::now();
        let mut b: Budget<u32, u32> = Budget::new(5);
        assert_eq!(b.take(now, 1, Some(7)), Ok(()));
        // Burst of 1 (5 / 5): a second attempt is refused; the same one once more is not,
        // a third time it pays (and there is nothing left to pay with).
        assert!(b.take(now, 1, Some(8)).is_err());
        assert_eq!(b.take(now, 1, Some(7)), Ok(()));
        assert!(b.take(now, 1, Some(7)).is_err());
    }

    #[test]
    fn asking_spends_nothing() {
        let now = Instant::now();
        let mut b: Budget<u32, u32> = Budget::new(5);
        for _ in 0..3 {
            assert_eq!(b.allows(now, 1, Some(7)), Ok(()));
        }
        assert_eq!(b.take(now, 1, Some(7)), Ok(()));
        assert!(b.allows(now, 1, Some(8)).is_err());
    }

    #[test]
    fn the_overall_limit_holds_across_senders_and_frees_after_a_minute() {
        let now = Instant::now();
        let mut b: Budget<u32, u32> = Budget::new(10);
        for s in 0..10 {
            assert_eq!(b.take(now, s, None), Ok(()));
        }
        let refused = b.take(now, 50, None).unwrap_err();
        assert!(refused.contains("in all"), "{refused}");
        assert_eq!(b.take(now + WINDOW, 50, None), Ok(()));
    }
}
