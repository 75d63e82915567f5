//! How the server kit drives [`Core`]: the kit's [`ServerCore`] contract mapped onto the
//! core's own calls (which its virtual-time tests use directly), dial-backs as the kit's
//! outbound connects (their deadline stays a core timer), and the core built from its
//! [`Config`].

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::Instant;

use server_kit::{ConnId, DialId, Output, ServerCore, Service};

use crate::config::Config;
use crate::core::{Action, CheckId, Core, DialOutcome, Stats};

impl From<Action> for Output {
    fn from(action: Action) -> Output {
        match action {
            Action::Flush(id) => Output::Flush(id),
            Action::ShutdownWrite(id) => Output::ShutdownWrite(id),
            Action::Close(id) => Output::Close(id),
            Action::Dial { check, addr } => Output::Dial {
                dial: DialId(check.0),
                addr,
            },
            Action::CancelDial(check) => Output::CancelDial(DialId(check.0)),
        }
    }
}

/// What a finished connect says about the caller's port: connected, refused (nothing listens),
/// unreachable (the network said no), or a local failure (the server could not even try).
pub fn classify(result: io::Result<()>) -> DialOutcome {
    let e = match result {
        Ok(()) => return DialOutcome::Connected,
        Err(e) => e,
    };
    if e.kind() == ErrorKind::ConnectionRefused {
        return DialOutcome::Refused;
    }
    match e.raw_os_error() {
        Some(
            libc::ENETUNREACH
            | libc::EHOSTUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
            | libc::ETIMEDOUT
            | libc::ECONNRESET
            | libc::ECONNABORTED,
        ) => DialOutcome::Unreachable(e.to_string()),
        _ => DialOutcome::LocalError(e.to_string()),
    }
}

impl ServerCore for Core {
    type Stats = Stats;
    const NAME: &'static str = "forwarding-check";

    fn handle_open(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        _local: SocketAddr,
    ) -> Result<ConnId, Vec<u8>> {
        Core::handle_open(self, now, peer).map_err(|refusal| refusal.response().render())
    }

    fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.handle_data(now, conn, bytes);
    }

    fn handle_eof(&mut self, now: Instant, conn: ConnId) {
        Core::handle_eof(self, now, conn);
    }

    fn handle_failed(&mut self, _now: Instant, conn: ConnId, error: &io::Error) {
        self.handle_reset(conn, &format!("socket failed: {error}"));
    }

    fn handle_written(&mut self, now: Instant, conn: ConnId, n: usize) {
        Core::handle_written(self, now, conn, n);
    }

    fn handle_closed(&mut self, conn: ConnId) {
        Core::handle_closed(self, conn);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Core::handle_timeout(self, now);
    }

    fn handle_shutdown(&mut self, _now: Instant) {
        Core::handle_shutdown(self);
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.poll_action().map(Output::from)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(Core::poll_timeout(self))
    }

    fn pending_output(&self, conn: ConnId) -> &[u8] {
        Core::pending_output(self, conn)
    }

    fn stats(&self) -> Stats {
        Core::stats(self)
    }

    fn handle_dial(&mut self, now: Instant, dial: DialId, result: io::Result<()>) {
        self.handle_dial_result(now, CheckId(dial.0), classify(result));
    }
}

impl Service for Core {
    type Config = Config;

    fn build(config: Config, now: Instant) -> io::Result<Core> {
        Ok(Core::new(config, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_say_refused_unreachable_or_local() {
        assert_eq!(classify(Ok(())), DialOutcome::Connected);
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(classify(Err(refused)), DialOutcome::Refused);
        let unreachable = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert!(matches!(
            classify(Err(unreachable)),
            DialOutcome::Unreachable(_)
        ));
        let out_of_fds = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(matches!(
            classify(Err(out_of_fds)),
            DialOutcome::LocalError(_)
        ));
    }
}
