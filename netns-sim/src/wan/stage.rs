//! The delay stage's logic, sans IO: packets in (with the time they arrived), decisions out
//! (drop now, or release every packet of a queue up to an id), and the next time something is
//! due. The daemon ([`super::daemon`]) feeds it from the netlink socket; tests feed it numbers.
//!
//! Order: each queue (one direction of one link) is FIFO. A packet's release time is its own
//! arrival + delay ± jitter, but never earlier than the previous packet's release, so jitter
//! never reorders packets of one direction (netem's default jitter does reorder; TCP takes
//! reordering for loss, which would make the lab harsher than the links it imitates). The cost:
//! when packets come faster than the jitter span, later ones inherit the earlier ones' extra
//! delay, so under load the delay tends to `delay + jitter`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::nfqueue::QueuedPacket;
use crate::topology::LinkProfile;
use crate::units::Share;

/// A small reproducible generator (splitmix64): the same seed gives the same decisions on any
/// machine and any Rust version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        super::mix(self.0)
    }

    /// Whether an event of probability `share` happens.
    pub fn happens(&mut self, share: Share) -> bool {
        share.ppm() > 0 && self.next_u64() % u64::from(Share::PER_MILLION) < u64::from(share.ppm())
    }

    /// A duration drawn uniformly from `center - spread ..= center + spread` (at least zero),
    /// to the microsecond.
    pub fn around(&mut self, center: Duration, spread: Duration) -> Duration {
        let spread_us = u64::try_from(spread.as_micros()).unwrap_or(u64::MAX / 4);
        if spread_us == 0 {
            return center;
        }
        let offset = self.next_u64() % (2 * spread_us + 1);
        (center + Duration::from_micros(offset)).saturating_sub(spread)
    }
}

/// What to tell the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Drop this packet (it is lost on the link).
    Drop(QueuedPacket),
    /// Accept this packet now (it was due on arrival and nothing was waiting before it).
    Accept(QueuedPacket),
}

/// Counters of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStats {
    /// Packets seen.
    pub packets: u64,
    /// Packets dropped as loss.
    pub dropped: u64,
    /// Packets released.
    pub released: u64,
}

#[derive(Debug)]
struct Lane {
    profile: LinkProfile,
    rng: Rng,
    /// Held packets, FIFO: (release time, id).
    held: VecDeque<(Instant, u32)>,
    last_release: Option<Instant>,
    stats: LaneStats,
}

/// All queues of one namespace.
#[derive(Debug)]
pub struct Stage {
    lanes: BTreeMap<u16, Lane>,
}

impl Stage {
    /// A stage for `(queue, profile)` pairs; each queue's generator is seeded from `seed` and
    /// its queue number.
    pub fn new(lanes: &[(u16, LinkProfile)], seed: u64) -> Stage {
        Stage {
            lanes: lanes
                .iter()
                .map(|&(q, profile)| {
                    let lane = Lane {
                        profile,
                        rng: Rng::new(seed ^ super::mix(u64::from(q) + 1)),
                        held: VecDeque::new(),
                        last_release: None,
                        stats: LaneStats::default(),
                    };
                    (q, lane)
                })
                .collect(),
        }
    }

    /// A packet arrived at `now`. Returns a decision to carry out at once, or `None` when the
    /// packet is held (it comes out of [`Stage::poll_release`] later). Packets of a queue the
    /// stage does not know are accepted.
    pub fn handle_packet(&mut self, now: Instant, p: QueuedPacket) -> Option<Decision> {
        let Some(lane) = self.lanes.get_mut(&p.queue) else {
            return Some(Decision::Accept(p));
        };
        lane.stats.packets += 1;
        if lane.rng.happens(lane.profile.loss) {
            lane.stats.dropped += 1;
            return Some(Decision::Drop(p));
        }
        let mut due = now + lane.rng.around(lane.profile.delay, lane.profile.jitter);
        if let Some(last) = lane.last_release {
            due = due.max(last);
        }
        lane.last_release = Some(due);
        if due <= now && lane.held.is_empty() {
            lane.stats.released += 1;
            return Some(Decision::Accept(p));
        }
        lane.held.push_back((due, p.id));
        None
    }

    /// For each queue with packets due at `now`: the last due packet (release every held
    /// packet of that queue up to its id, with one batch verdict).
    pub fn poll_release(&mut self, now: Instant) -> Vec<QueuedPacket> {
        let mut out = Vec::new();
        for (&queue, lane) in &mut self.lanes {
            let mut last = None;
            while let Some(&(due, id)) = lane.held.front() {
                if due > now {
                    break;
                }
                lane.held.pop_front();
                lane.stats.released += 1;
                last = Some(id);
            }
            if let Some(id) = last {
                out.push(QueuedPacket { queue, id });
            }
        }
        out
    }

    /// When the next held packet is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lanes
            .values()
            .filter_map(|l| l.held.front().map(|&(due, _)| due))
            .min()
    }

    /// Counters per queue.
    pub fn stats(&self) -> Vec<(u16, LaneStats)> {
        self.lanes.iter().map(|(&q, l)| (q, l.stats)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(queue: u16, id: u32) -> QueuedPacket {
        QueuedPacket { queue, id }
    }

    #[test]
    fn zero_profile_accepts_at_once() {
        let mut s = Stage::new(&[(1, LinkProfile::ZERO)], 7);
        let t = Instant::now();
        for id in 0..100 {
            assert_eq!(
                s.handle_packet(t, pkt(1, id)),
                Some(Decision::Accept(pkt(1, id)))
            );
        }
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(
            s.handle_packet(t, pkt(9, 1)),
            Some(Decision::Accept(pkt(9, 1)))
        );
    }

    #[test]
    fn delay_holds_until_due_then_releases_in_order() {
        let mut s = Stage::new(
            &[
                (1, LinkProfile::delay_ms(40)),
                (2, LinkProfile::delay_ms(10)),
            ],
            1,
        );
        let t = Instant::now();
        assert_eq!(s.handle_packet(t, pkt(1, 5)), None);
        assert_eq!(
            s.handle_packet(t + Duration::from_millis(1), pkt(1, 6)),
            None
        );
        assert_eq!(s.handle_packet(t, pkt(2, 1)), None);
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_millis(10)));
        assert!(s.poll_release(t + Duration::from_millis(9)).is_empty());
        assert_eq!(s.poll_release(t + Duration::from_millis(10)), [pkt(2, 1)]);
        assert_eq!(s.poll_release(t + Duration::from_millis(41)), [pkt(1, 6)]);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.stats()[0].1.released, 2);
    }

    #[test]
    fn jitter_stays_in_range_and_never_reorders() {
        let p = LinkProfile::delay_ms(20).with_jitter_ms(5);
        let mut s = Stage::new(&[(1, p)], 3);
        let t = Instant::now();
        let mut released = Vec::new();
        for id in 0..2000u32 {
            let at = t + Duration::from_millis(u64::from(id) * 30);
            assert_eq!(s.handle_packet(at, pkt(1, id)), None);
            let due = s.poll_timeout().unwrap() - at;
            assert!(
                (Duration::from_millis(15)..=Duration::from_millis(25)).contains(&due),
                "{due:?}"
            );
            released.extend(s.poll_release(at + Duration::from_millis(26)));
        }
        let ids: Vec<u32> = released.iter().map(|p| p.id).collect();
        assert_eq!(ids, (0..2000).collect::<Vec<_>>());
        // Dense packets: each is released no earlier than the one before.
        let mut s = Stage::new(&[(1, p)], 3);
        let mut last = None;
        for id in 0..200 {
            s.handle_packet(t, pkt(1, id));
            let next = s.lanes[&1].held.back().unwrap().0;
            assert!(last.is_none_or(|l| next >= l));
            last = Some(next);
        }
    }

    #[test]
    fn loss_share_and_seed_repeat() {
        let p = LinkProfile::ZERO.with_loss_percent(10.0);
        let run = |seed| {
            let mut s = Stage::new(&[(1, p)], seed);
            let t = Instant::now();
            (0..20_000)
                .map(|id| matches!(s.handle_packet(t, pkt(1, id)), Some(Decision::Drop(_))))
                .collect::<Vec<bool>>()
        };
        let a = run(11);
        let lost = a.iter().filter(|d| **d).count();
        assert!((1800..=2200).contains(&lost), "{lost}");
        assert_eq!(a, run(11));
        assert_ne!(a, run(12));
    }
}
