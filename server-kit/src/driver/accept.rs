//! When the process runs out of file descriptors, `accept` fails at once for every waiting
//! client; retrying at once would spin the loop. [`AcceptGate`] pauses accepting for
//! [`ACCEPT_BACKOFF`] instead (the clients wait in the kernel backlog) and rate-limits the
//! warning.

use std::io;
use std::time::{Duration, Instant};

use tracing::warn;

/// After running out of file descriptors, wait this long before accepting again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the "out of file descriptors" warning may repeat.
pub(crate) const FD_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Whether an accept failed because the process or system ran out of file descriptors.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Accepting is paused after fd exhaustion, until a moment.
#[derive(Debug, Default)]
pub(crate) struct AcceptGate {
    paused_until: Option<Instant>,
    last_warning: Option<Instant>,
    refusals: u64,
}

impl AcceptGate {
    /// Whether accepting is paused now.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// When accepting resumes, if it is paused.
    pub(crate) fn resumes_at(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Ends the pause if it is over; returns whether it did (accept now: the backlog may hold
    /// clients that raise no new event).
    pub(crate) fn reopen_if_due(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
            return true;
        }
        false
    }

    /// `accept` ran out of file descriptors with `open` connections: pause, and warn at most
    /// every [`FD_WARNING_INTERVAL`].
    pub(crate) fn out_of_fds(&mut self, now: Instant, e: &io::Error, open: usize) {
        self.refusals += 1;
        let due = self
            .last_warning
            .is_none_or(|t| now.saturating_duration_since(t) >= FD_WARNING_INTERVAL);
        if due {
            warn!(
                open,
                waiting_refusals = self.refusals,
                "out of file descriptors ({e}); new connections wait in the backlog \
                 (raise `ulimit -n` or lower --max-connections)"
            );
            self.last_warning = Some(now);
            self.refusals = 0;
        }
        self.paused_until = Some(now + ACCEPT_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_for_the_backoff_and_recognises_emfile() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_fd_exhaustion(&emfile));
        assert!(is_fd_exhaustion(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_fd_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
        let now = Instant::now();
        let mut gate = AcceptGate::default();
        assert!(!gate.is_paused());
        gate.out_of_fds(now, &emfile, 3);
        assert!(gate.is_paused());
        assert_eq!(gate.resumes_at(), Some(now + ACCEPT_BACKOFF));
        assert!(!gate.reopen_if_due(now + ACCEPT_BACKOFF / 2));
        assert!(gate.reopen_if_due(now + ACCEPT_BACKOFF));
        assert!(!gate.is_paused());
    }
}
