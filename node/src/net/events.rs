//! What the driver does with each [`Event`] the core reports: logs it, files the result a
//! blocking helper may wait for (in [`Outcomes`](super::outcomes::Outcomes)), updates what the
//! node knows of itself (NAT type, simultaneous registration), and queues it for
//! [`Net::events`] (at most [`MAX_QUEUED_EVENTS`]; the oldest are dropped).

use tracing::{debug, info, warn};

use super::Net;
use super::error::{NetError, describe};
use super::outcomes::{BootstrapReport, NatReport};
use crate::core::{Event, Job};
use wire::nat::NatMapping;
use wire::unl::NatType;

/// Events kept for the application at most; older ones are dropped (and counted in a log line).
const MAX_QUEUED_EVENTS: usize = 10_000;

impl Net {
    /// Logs an event, fills in the outcome a blocking helper may wait for, and queues it.
    pub(super) fn record(&mut self, event: Event) {
        crate::metrics::global().observe(&event);
        match &event {
            Event::Bootstrapped {
                server,
                offered,
                dialing,
            } => {
                info!(%server, offered, dialing, "bootstrapped");
                self.outcomes.bootstrap = Some(Ok(BootstrapReport {
                    server: *server,
                    offered: *offered,
                    dialing: *dialing,
                }));
            }
            Event::Advertised {
                server,
                observed_port,
            } => {
                info!(%server, observed_port, "advertised");
                self.outcomes.advertise = Some(Ok(*observed_port));
            }
            Event::Cleared { server } => {
                debug!(%server, "registration cleared");
                self.outcomes.clear = Some(());
            }
            Event::NatDetected {
                server,
                mapping,
                probes,
            } => {
                info!(%server, %mapping, ?probes, "NAT detected");
                self.nat_type = match mapping {
                    NatMapping::Preserving => NatType::Preserving,
                    NatMapping::Delta(_) => NatType::Delta,
                    NatMapping::Random => NatType::Random,
                };
                self.outcomes.nat = Some(Ok(NatReport {
                    server: *server,
                    mapping: *mapping,
                    probes: probes.clone(),
                }));
            }
            Event::RendezvousFailed { job, errors } => {
                warn!(%job, errors = %describe(errors), "rendezvous failed");
                let err = || NetError::Rendezvous {
                    job: *job,
                    errors: errors.clone(),
                };
                match job {
                    Job::Bootstrap => self.outcomes.bootstrap = Some(Err(err())),
                    Job::Advertise => self.outcomes.advertise = Some(Err(err())),
                    Job::Clear => self.outcomes.clear = Some(()),
                    Job::NatProbe(_) => self.outcomes.nat = Some(Err(err())),
                }
            }
            Event::Connected {
                conn,
                addr,
                direction,
            } => debug!(conn = %conn, %addr, ?direction, "connection open"),
            Event::Disconnected { conn, addr, reason } => {
                debug!(conn = %conn, %addr, reason, "connection closed");
            }
            Event::DialFailed { addr, reason } => debug!(%addr, reason, "dial failed"),
            Event::Upgraded { .. }
            | Event::PathSwitched { .. }
            | Event::RoleChosen { .. }
            | Event::WanAddress { .. } => self.record_self(&event),
            Event::Registration { .. }
            | Event::Challenge { .. }
            | Event::ConnectDone(_)
            | Event::MailboxUp { .. }
            | Event::MailboxDown { .. }
            | Event::ReverseRequested { .. } => self.record_unl(&event),
        }
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
            if self.dropped_events.is_power_of_two() {
                warn!(
                    dropped = self.dropped_events,
                    "the application does not drain Net::events; dropping the oldest"
                );
            }
        }
        self.events.push_back(event);
    }

    /// The path and self-knowledge part of [`Net::record`]: upgrades, role, WAN address.
    fn record_self(&mut self, event: &Event) {
        match event {
            Event::Upgraded {
                id,
                conn,
                method,
                addr,
                ms,
            } => info!(
                id = ?id.map(|i| i.to_string()),
                conn = %conn,
                %method,
                %addr,
                ms = ?ms,
                "connection upgraded: moving from the relay to a direct path"
            ),
            Event::PathSwitched { conn, lost } => {
                if *lost == 0 {
                    debug!(conn = %conn, "path switch done: the relayed path is closed");
                } else {
                    warn!(conn = %conn, lost, "path switch done, but lines were lost with the old path");
                }
            }
            Event::RoleChosen { role, reason } => {
                info!(%role, reason, "role chosen");
                self.outcomes.role = Some((role.to_string(), reason.clone()));
                self.refresh_unl();
            }
            Event::WanAddress {
                ip,
                server,
                previous,
            } => {
                match previous {
                    None => info!(%ip, %server, "WAN address (as the rendezvous sees us)"),
                    Some(old) => warn!(%ip, %old, %server, "our WAN address changed"),
                }
                self.observed_wan_ip(*ip);
            }
            _ => {}
        }
    }

    /// The connect-by-UNL and mailbox part of [`Net::record`].
    fn record_unl(&mut self, event: &Event) {
        match event {
            Event::ConnectDone(outcome) => {
                if outcome.connected {
                    info!(
                        id = %outcome.id,
                        method = ?outcome.method,
                        addr = ?outcome.addr,
                        ms = outcome.ms,
                        tries = %outcome.describe_tries(),
                        "connected by UNL"
                    );
                } else {
                    warn!(
                        id = %outcome.id,
                        error = ?outcome.error,
                        ms = outcome.ms,
                        tries = %outcome.describe_tries(),
                        "connect by UNL failed"
                    );
                }
                self.outcomes.connects.insert(outcome.id, outcome.clone());
            }
            Event::MailboxUp { server } => info!(%server, "mailbox registered and subscribed"),
            Event::MailboxDown { server, reason } => {
                warn!(%server, reason, "mailbox connection down; retrying");
            }
            Event::ReverseRequested {
                from,
                addr,
                refused,
                signed,
                check,
            } => match refused {
                None => info!(from, addr = ?addr, signed, "reverse connect requested; dialing"),
                Some(why) => warn!(
                    from,
                    why,
                    signed,
                    check = check.as_str(),
                    "reverse-connect request refused"
                ),
            },
            Event::Registration {
                server,
                external_port,
                rtt,
                reason,
            } => {
                match (external_port, reason) {
                    (Some(port), _) => info!(
                        %server,
                        external_port = port,
                        rtt_us = rtt.map(|r| r.as_micros()),
                        "registered as a simultaneous node"
                    ),
                    (None, Some(why)) => warn!(%server, why, "simultaneous registration lost"),
                    (None, None) => {}
                }
                self.refresh_unl();
            }
            Event::Challenge {
                from,
                their_ports,
                our_ports,
                meeting_in,
                refused,
            } => match refused {
                None => info!(
                    %from,
                    ?their_ports,
                    ?our_ports,
                    meeting_in_us = meeting_in.as_micros(),
                    "hole punch: challenge accepted"
                ),
                Some(why) => warn!(%from, ?their_ports, why, "hole punch: challenge refused"),
            },
            _ => {}
        }
    }
}
