//! Relay first, direct later: a connect whose relay wins while direct tries (a punch, a
//! reverse connect) are still running reports the relayed connection at once and keeps those
//! tries going; when one of them proves a direct path, the session moves there (see
//! `switch.rs`) and [`Event::Upgraded`] says so. The application keeps its connection.
//!
//! A connect in that state keeps its [`Attempt`](super::state::Attempt) with `session` set;
//! its deadline stays the connect's. When every remaining try has failed (or the deadline
//! passes) it ends quietly: the connection stays relayed, and the log says why.
//!
//! A punch that was tried and failed is tried again on the live session (a birthday punch
//! misses about one time in fifty; a lost packet can end any punch): up to
//! [`CoreConfig::upgrade_retries`](super::CoreConfig::upgrade_retries) times, after 1 s,
//! then 4× longer each time. Each try again is a connect of its own with only the punch in
//! it and `session` set, so it ends here like the first.

use std::net::SocketAddr;
use std::time::Instant;

use super::config::UPGRADE_RETRY_FIRST;
use super::output::{Event, Output};
use super::state::UpgradeRetry;
use super::{Core, millis};
use crate::connect::{ConnectOutcome, Method, Try, TryResult};
use crate::ids::{ConnId, ConnectId};

impl Core {
    /// Part of [`Core::finish`]: the relay's first win while direct tries still run (report
    /// it, keep them), or the end of a connect that is upgrading (move the session to the
    /// direct path that won, or stay relayed). Returns whether `finish` has nothing left to
    /// do.
    pub(super) fn finish_upgrading(
        &mut self,
        now: Instant,
        id: ConnectId,
        result: &Result<(ConnId, Method, SocketAddr), String>,
    ) -> bool {
        let Some(a) = self.attempts.get(&id) else {
            return false;
        };
        if let Some(session) = a.session {
            self.end_upgrade(now, id, session, result);
            return true;
        }
        let Ok((conn, Method::Relay, addr)) = result else {
            return false;
        };
        let direct_running = a.tries.iter().any(|t| {
            t.method != Method::Relay && t.result == TryResult::Pending && t.started_ms.is_some()
        }) || a.reverse_at.is_some();
        if !direct_running {
            return false;
        }
        let (conn, addr) = (*conn, *addr);
        let Some(a) = self.attempts.get_mut(&id) else {
            return false;
        };
        a.session = Some(conn);
        a.relay = None;
        a.relay_planned = false;
        let ms = millis(now - a.started);
        let us = u64::try_from((now - a.started).as_micros()).unwrap_or(u64::MAX);
        let mut tries = a.tries.clone();
        for t in &mut tries {
            if t.method == Method::Relay && t.result == TryResult::Pending {
                t.result = TryResult::Won;
                t.ended_ms = Some(ms);
            }
        }
        tries.sort_by_key(|t| t.method);
        if let Some(t) = a
            .tries
            .iter_mut()
            .find(|t| t.method == Method::Relay && t.result == TryResult::Pending)
        {
            t.result = TryResult::Won;
            t.ended_ms = Some(ms);
        }
        let target = a.target_text();
        self.conn_attempt.remove(&conn);
        self.reported.insert(conn);
        tracing::debug!(%id, %conn, "relayed first; the direct tries go on");
        self.out
            .push_back(Output::Event(Event::ConnectDone(ConnectOutcome {
                id,
                target,
                connected: true,
                conn: Some(conn),
                method: Some(Method::Relay),
                addr: Some(addr),
                error: None,
                ms,
                us,
                tries,
            })));
        true
    }

    /// The upgrading connect `id` ends: a direct path won (move the session there), or
    /// nothing more can (it stays relayed).
    fn end_upgrade(
        &mut self,
        now: Instant,
        id: ConnectId,
        session: ConnId,
        result: &Result<(ConnId, Method, SocketAddr), String>,
    ) {
        let Some(a) = self.attempts.remove(&id) else {
            return;
        };
        let winner = result.as_ref().ok().map(|w| w.0);
        self.stop_tries(now, id, &a, winner);
        match result {
            Ok((conn, method, addr)) => {
                let Some(node) = a.target.node_id else {
                    return;
                };
                if self.upgrade_to(now, *conn, node) {
                    self.out.push_back(Output::Event(Event::Upgraded {
                        id: Some(id),
                        conn: session,
                        method: *method,
                        addr: *addr,
                        ms: Some(millis(now - a.started)),
                    }));
                } else {
                    self.close(now, *conn, "the relayed session it would replace is gone");
                }
            }
            Err(why) => {
                let punched = a
                    .tries
                    .iter()
                    .any(|t| t.method == Method::Punch && t.started_ms.is_some());
                let retry = a.retry + 1;
                if !punched || retry > self.config.upgrade_retries {
                    tracing::info!(%id, conn = %session, why, "the connection stays relayed");
                    return;
                }
                let wait = UPGRADE_RETRY_FIRST * 4u32.saturating_pow(retry - 1);
                tracing::info!(%id, conn = %session, why, retry, ?wait,
                    "the connection stays relayed for now; the punch is tried again");
                self.upgrade_retries.insert(
                    session,
                    UpgradeRetry {
                        at: now + wait,
                        target: a.target,
                        signed: a.signed,
                        retry,
                    },
                );
            }
        }
    }

    /// Starts the upgrades tried again that are due, on sessions that are still relayed
    /// (one that closed or moved meanwhile needs none).
    pub(super) fn upgrade_retry_timers(&mut self, now: Instant) {
        let due: Vec<ConnId> = self
            .upgrade_retries
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(c, _)| *c)
            .collect();
        for session in due {
            let Some(r) = self.upgrade_retries.remove(&session) else {
                continue;
            };
            let live = self.conns.contains_key(&session)
                && self.relayed.contains(&session)
                && !self.switching.contains_key(&session);
            if !live || self.punch_blocker(&r.target).is_some() {
                continue;
            }
            let (id, mut a) = self.new_attempt(now, r.target, r.signed);
            a.session = Some(session);
            a.retry = r.retry;
            a.tries.push(Try::planned(Method::Punch));
            tracing::info!(%id, conn = %session, retry = r.retry,
                "moving the relayed connection to a direct path: punching again");
            self.attempts.insert(id, a);
            self.start_punch(now, id);
        }
    }

    /// Stops what connect `id` still runs (dials, the candidacy, a relay not yet through)
    /// and closes its connections other than `winner`.
    pub(super) fn stop_tries(
        &mut self,
        now: Instant,
        id: ConnectId,
        a: &super::state::Attempt,
        winner: Option<ConnId>,
    ) {
        let unfinished: Vec<SocketAddr> = self
            .attempt_dials
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(addr, _)| *addr)
            .collect();
        self.attempt_dials.retain(|_, v| *v != id);
        if !unfinished.is_empty() {
            self.out
                .push_back(Output::CancelDials { addrs: unfinished });
        }
        if let Some(session) = a.punch.as_ref().and_then(|p| p.session) {
            self.session_close(session, "the connect ended");
        }
        if let Some(relay) = a.relay {
            // Not yet through: forget it (a late `RELAY OK` is closed).
            self.relays.remove(&relay);
        }
        let losers: Vec<ConnId> = self
            .conn_attempt
            .iter()
            .filter(|(c, v)| **v == id && winner != Some(**c))
            .map(|(c, _)| *c)
            .collect();
        self.conn_attempt.retain(|_, v| *v != id);
        for conn in losers {
            self.close(now, conn, "another connect method won");
        }
    }
}
