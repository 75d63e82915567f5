//! The shared clock for hole punching: the system clock corrected by the rendezvous' clock,
//! or by an NTP measurement when `ntp` is configured.
//!
//! Both ends of a punch may dial at a meeting time the rendezvous relays as Unix time, so
//! their clocks must agree. Every `REMOTE ADDR` a rendezvous sends carries its clock, and the
//! core turns it into a sample over the request's round trip ([`Net::clock_sample`]); the
//! shortest round trip gives the best sample (its error is at most half the round trip's
//! asymmetry), so a sample replaces the current one only when its round trip is not much
//! longer. That needs nothing but the server the node already uses. With `ntp` configured,
//! the offset to that server is measured at start and every [`NTP_INTERVAL`] on a helper
//! thread (rsntp blocks), which reports through a channel and wakes the loop; a successful
//! NTP measurement wins over the rendezvous' samples (both ends then use true time).

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::net::SocketAddr;

use tracing::{debug, info, warn};

use super::Net;

/// How long an NTP query may take.
const NTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the clock offset is measured again.
const NTP_INTERVAL: Duration = Duration::from_mins(15);
/// A rendezvous clock sample replaces the current one when its round trip is at most this
/// many times the current one's, or when the current one is older than [`SAMPLE_AGE`].
const SAMPLE_SLACK: u32 = 2;
const SAMPLE_AGE: Duration = Duration::from_mins(10);

/// Where the shared clock's offset came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ClockSource {
    /// The system clock, uncorrected.
    System,
    /// A rendezvous' clock, measured over a request of round trip `rtt` at `at`.
    Rendezvous { rtt: Duration, at: Instant },
    /// The NTP server.
    Ntp,
}

impl Net {
    /// Starts measuring the clock offset, if an NTP server is configured (at start).
    pub(super) fn start_clock(&mut self) {
        if self.config.ntp.is_some() {
            self.next_ntp = Some(Instant::now() + NTP_INTERVAL);
            self.sync_clock();
        }
    }

    /// Time on the shared clock: the system clock corrected by the last NTP measurement, in
    /// seconds since the Unix epoch.
    pub(super) fn unix_now(&self) -> f64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        system + self.clock_offset
    }

    /// Tells the core the shared clock's time at `now` (it dates and checks signed requests
    /// by it).
    pub(super) fn tell_core_the_time(&mut self, now: Instant) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = (self.unix_now() * 1000.0).max(0.0) as u64;
        self.core.set_unix_time(now, ms);
    }

    /// A clock sample from a rendezvous (see the module docs): `offset` seconds to add to
    /// the shared clock, measured over a round trip of `rtt`.
    pub(super) fn clock_sample(&mut self, server: SocketAddr, offset: f64, rtt: Duration) {
        let now = Instant::now();
        let better = match self.clock_source {
            ClockSource::Ntp => false,
            ClockSource::System => true,
            ClockSource::Rendezvous { rtt: best, at } => {
                rtt <= best * SAMPLE_SLACK || now.saturating_duration_since(at) > SAMPLE_AGE
            }
        };
        if !better {
            debug!(%server, offset_ms = offset * 1000.0, rtt_us = rtt.as_micros(), "clock sample not used");
            return;
        }
        if self.clock_source == ClockSource::System {
            info!(
                %server,
                offset_ms = offset * 1000.0,
                rtt_us = rtt.as_micros(),
                "clock offset from the rendezvous (hole punches meet on its clock)"
            );
        }
        self.clock_offset += offset;
        self.clock_source = ClockSource::Rendezvous { rtt, at: now };
    }

    /// Starts an NTP measurement on a helper thread (rsntp blocks); the result comes back
    /// through a channel and wakes the loop.
    fn sync_clock(&mut self) {
        let Some(server) = self.config.ntp.clone() else {
            return;
        };
        if self.ntp_result.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let waker = Arc::clone(&self.waker);
        let spawned = std::thread::Builder::new()
            .name("ntp".to_owned())
            .spawn(move || {
                let mut client = rsntp::SntpClient::new();
                client.set_timeout(NTP_TIMEOUT);
                let result = client
                    .synchronize(server.as_str())
                    .map(|r| r.clock_offset().as_secs_f64())
                    .map_err(|e| format!("NTP server {server}: {e}"));
                let _ = tx.send(result);
                let _ = waker.wake();
            });
        match spawned {
            Ok(_) => self.ntp_result = Some(rx),
            Err(e) => warn!(error = %e, "cannot start the NTP thread"),
        }
    }

    /// Takes a finished NTP measurement; starts the next one when due.
    pub(super) fn check_clock(&mut self, now: Instant) {
        if let Some(rx) = self.ntp_result.as_ref() {
            match rx.try_recv() {
                Ok(Ok(offset)) => {
                    info!(offset_ms = offset * 1000.0, "clock offset from NTP");
                    self.clock_offset = offset;
                    self.clock_source = ClockSource::Ntp;
                    self.ntp_result = None;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "NTP failed; punch times use the rendezvous' clock");
                    self.ntp_result = None;
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => self.ntp_result = None,
            }
        }
        if self.next_ntp.is_some_and(|t| t <= now) {
            self.next_ntp = Some(now + NTP_INTERVAL);
            self.sync_clock();
        }
    }
}
