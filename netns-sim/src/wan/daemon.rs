//! The delay stage daemon (`netns-sim wan-stage --config FILE`, one per namespace that holds
//! queues): binds its queues, then decides each packet as it arrives and releases held ones
//! when due ([`super::stage::Stage`] keeps the time; [`run`] says how the two threads share
//! it). It prints `ready` once every queue is bound, and a counter line every few seconds
//! while packets flow.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::WanError;
use super::nfqueue::{NfQueue, QueuedPacket, Verdict};
use super::stage::{Decision, Stage};
use crate::topology::LinkProfile;

/// How many packets one queue may hold before the kernel drops new ones (a router buffer).
pub const QUEUE_MAX_LEN: u32 = 16_384;
const STATS_EVERY: Duration = Duration::from_secs(5);
/// At most this many more messages are taken per wake-up (bounds the decision latency).
const MAX_BURST: usize = 256;

/// One queue of a stage: which direction of which link, and how bad it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lane {
    /// The NFQUEUE number.
    pub queue: u16,
    /// What it is, for logs and status: e.g. `nat-a up`.
    pub label: String,
    /// The link profile of that direction.
    pub profile: LinkProfile,
}

/// A stage daemon's configuration (JSON in the lab's work directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageConfig {
    /// Its queues.
    pub lanes: Vec<Lane>,
    /// Seed of its randomness.
    pub seed: u64,
}

impl StageConfig {
    /// Reads a configuration file.
    pub fn read(path: &Path) -> Result<StageConfig, WanError> {
        let bad = |detail: String| WanError::Config {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
    }
}

/// What the two threads share: the stage, and when the timer thread means to wake.
struct Shared {
    stage: Stage,
    /// The release time the timer thread sleeps until (`None`: until notified).
    wake_at: Option<Instant>,
    overruns: u64,
    kernel_errors: u64,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the stage until the process is killed (or the socket fails). Writes `ready` to
/// `log` once all queues are bound.
///
/// Two threads, no hand-off per packet: this one blocks in `recv` and decides each packet at
/// once (a drop, or an accept when it is due on arrival, goes straight back to the kernel); a
/// timer thread sleeps until the next held packet is due (a condition variable with a timeout:
/// futex precision, not the millisecond of `epoll`) and releases every due packet of a queue
/// with one batch verdict. It is woken only when a new packet is due before its alarm.
pub fn run(config: &StageConfig, log: &mut dyn std::io::Write) -> Result<(), WanError> {
    let queue = Arc::new(NfQueue::open()?);
    for lane in &config.lanes {
        queue.bind(lane.queue, QUEUE_MAX_LEN)?;
        let _ = writeln!(
            log,
            "queue {} ({}): {}",
            lane.queue, lane.label, lane.profile
        );
    }
    let lanes: Vec<(u16, LinkProfile)> =
        config.lanes.iter().map(|l| (l.queue, l.profile)).collect();
    let shared = Arc::new((
        Mutex::new(Shared {
            stage: Stage::new(&lanes, config.seed),
            wake_at: None,
            overruns: 0,
            kernel_errors: 0,
        }),
        Condvar::new(),
    ));
    let (timer_shared, timer_queue) = (Arc::clone(&shared), Arc::clone(&queue));
    let timer = std::thread::Builder::new()
        .name("release-timer".into())
        .spawn(move || release_loop(&timer_shared, &timer_queue))
        .map_err(|e| WanError::Thread(e.to_string()))?;
    let _ = writeln!(log, "ready");
    let _ = log.flush();
    let mut buf = vec![0u8; 1 << 17];
    let mut next_stats = Instant::now() + STATS_EVERY;
    let mut last_stats = Vec::new();
    loop {
        if timer.is_finished() {
            return Err(WanError::TimerGone);
        }
        let received = queue.recv(&mut buf, MAX_BURST)?;
        let now = Instant::now();
        let (m, cv) = &*shared;
        let mut s = lock(m);
        s.overruns += u64::from(received.overrun);
        s.kernel_errors += received.errors.len() as u64;
        // Drops go out one by one; the accepts of each queue as one batch verdict up to the
        // last of them (an accept happens only while its queue holds nothing, so the batch
        // cannot release a held packet; the drops are out before it).
        let mut accept_upto: Vec<QueuedPacket> = Vec::new();
        for p in received.packets {
            match s.stage.handle_packet(now, p) {
                Some(Decision::Accept(p)) => {
                    match accept_upto.iter_mut().find(|a| a.queue == p.queue) {
                        Some(a) => a.id = p.id,
                        None => accept_upto.push(p),
                    }
                }
                Some(Decision::Drop(p)) => queue.verdict(p, Verdict::Drop)?,
                None => {}
            }
        }
        for p in accept_upto {
            queue.verdict_batch(p, Verdict::Accept)?;
        }
        if let Some(due) = s.stage.poll_timeout()
            && s.wake_at.is_none_or(|w| due < w)
        {
            cv.notify_one();
        }
        if now >= next_stats {
            next_stats = now + STATS_EVERY;
            let stats = s.stage.stats();
            if stats != last_stats {
                let parts: Vec<String> = stats
                    .iter()
                    .map(|(q, st)| {
                        format!(
                            "q{q} {} in {} lost {} out",
                            st.packets, st.dropped, st.released
                        )
                    })
                    .collect();
                let _ = writeln!(
                    log,
                    "stats: {}; socket overruns {}; kernel errors {}",
                    parts.join(", "),
                    s.overruns,
                    s.kernel_errors
                );
                let _ = log.flush();
                last_stats = stats;
            }
        }
    }
}

/// The timer thread: release what is due, sleep until the next release or a notification.
fn release_loop(shared: &(Mutex<Shared>, Condvar), queue: &NfQueue) -> Result<(), WanError> {
    let (m, cv) = shared;
    let mut s = lock(m);
    loop {
        let now = Instant::now();
        for p in s.stage.poll_release(now) {
            queue.verdict_batch(p, Verdict::Accept)?;
        }
        s.wake_at = s.stage.poll_timeout();
        s = match s.wake_at {
            Some(due) => {
                cv.wait_timeout(s, due.saturating_duration_since(now))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0
            }
            None => cv
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        };
    }
}
