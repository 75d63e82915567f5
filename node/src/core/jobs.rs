//! The rendezvous jobs: bootstrap, advertise, clear and the NAT detection.
//!
//! Each job is one short request ([`Output::Query`]) to a rendezvous server. A job that fails
//! on one server is retried on the next (in order, starting from the one that answered last);
//! when every server failed, [`Event::RendezvousFailed`] lists each server's error. A NAT
//! detection asks one server only, [`nat::PROBES`] times, from fresh ports. Bootstrap and
//! advertise repeat on their [`Schedule`]: re-bootstrap while below
//! `max_outbound` (and soon after the last connection is lost), re-advertise every
//! `readvertise_interval`, and retry after a failure.

use std::net::SocketAddr;
use std::time::Instant;

use rand::seq::SliceRandom;

use super::output::{Direction, Event, Job, Output, QueryReply};
use super::state::{PendingQuery, Schedule};
use super::{Core, unspecified};
use crate::ids::QueryId;
use wire::nat::{self, NatMapping};
use wire::rendezvous::{NodeType, Request, Response};

impl Core {
    /// Whether `job` is still running (a request is out).
    pub fn is_running(&self, job: Job) -> bool {
        self.queries.values().any(|q| match (q.job, job) {
            (Job::NatProbe(_), Job::NatProbe(_)) => true,
            (a, b) => a == b,
        })
    }

    /// Asks the rendezvous for nodes and dials them; from now on, bootstraps again whenever
    /// the node is below `max_outbound` (rate-limited by the intervals).
    pub fn bootstrap(&mut self, now: Instant) {
        self.bootstrap.enabled = true;
        if !self.bootstrap.in_flight {
            self.start(Job::Bootstrap, now);
        }
    }

    /// Registers this node as passive with the rendezvous, and again every
    /// `readvertise_interval`. A node that is not passive, or not listening, has nothing to
    /// advertise: it gets a [`Event::RendezvousFailed`] saying so.
    pub fn advertise(&mut self, now: Instant) {
        if let Some(failures) = self.auto_undecided() {
            // An auto node whose NAT detection found no server cannot know whether it is
            // passive: say which servers failed, not "not passive".
            self.fail(now, Job::Advertise, failures);
            return;
        }
        if self.config.node_type != NodeType::Passive || self.config.listen_port == 0 {
            let why = if self.config.listen_port == 0 {
                "this node does not listen for connections"
            } else {
                "only passive nodes advertise (this node is not passive)"
            };
            self.fail(now, Job::Advertise, vec![(unspecified(), why.to_owned())]);
            return;
        }
        self.advertise.enabled = true;
        if !self.advertise.in_flight {
            self.start(Job::Advertise, now);
        }
    }

    /// Stops re-bootstrapping and re-advertising; if we advertised, asks the server to forget
    /// us (`CLEAR <port>`). Returns whether a `CLEAR` was queued.
    pub fn stop(&mut self, now: Instant) -> bool {
        self.bootstrap = Schedule::default();
        let advertised = self.advertise.last_started.is_some();
        self.advertise = Schedule::default();
        if advertised {
            self.start(Job::Clear, now);
        }
        advertised
    }

    /// Starts a NAT mapping detection: [`nat::PROBES`] `SOURCE TCP` requests, one after another,
    /// each from a fresh local port, to one server. Ends with [`Event::NatDetected`] or
    /// [`Event::RendezvousFailed`].
    pub fn detect_nat(&mut self, now: Instant) {
        if self.nat_probes.is_some() {
            return;
        }
        self.nat_probes = Some(Vec::with_capacity(nat::PROBES));
        self.start(Job::NatProbe(0), now);
    }

    /// When the bootstrap or the advertise is due next, for [`Core::poll_timeout`].
    pub(super) fn jobs_next_timer(&self) -> Option<Instant> {
        [self.bootstrap.next_at, self.advertise.next_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The bootstrap and advertise timers (part of [`Core::handle_timeout`]).
    pub(super) fn jobs_handle_timeout(&mut self, now: Instant) {
        if self.bootstrap.next_at.is_some_and(|t| t <= now) {
            self.bootstrap.next_at = None;
            if self.bootstrap.enabled && !self.bootstrap.in_flight {
                if self.outbound_wanted() > 0 {
                    self.start(Job::Bootstrap, now);
                } else {
                    self.bootstrap.next_at = Some(now + self.config.rebootstrap_interval);
                }
            }
        }
        if self.advertise.next_at.is_some_and(|t| t <= now) {
            self.advertise.next_at = None;
            if self.advertise.enabled && !self.advertise.in_flight {
                self.start(Job::Advertise, now);
            }
        }
    }

    /// The rendezvous request `id` finished: `Ok` with what the server said, or `Err` with why
    /// it failed (refused, timed out, closed early).
    pub fn handle_query_done(
        &mut self,
        now: Instant,
        id: QueryId,
        result: Result<QueryReply, String>,
    ) {
        let Some(mut q) = self.queries.remove(&id) else {
            return;
        };
        let server = self.config.rendezvous[q.server];
        let outcome = result.and_then(|reply| self.interpret(now, q.job, server, &reply));
        match outcome {
            Ok(()) => {
                self.preferred = q.server;
            }
            Err(reason) => {
                q.errors.push((server, reason));
                let n = self.config.rendezvous.len();
                // A NAT detection must ask one server only; everything else fails over.
                if q.tried < n && !matches!(q.job, Job::NatProbe(_)) {
                    let next = (q.server + 1) % n;
                    self.issue(q.job, next, q.tried + 1, q.errors);
                } else {
                    self.fail(now, q.job, q.errors);
                }
            }
        }
    }

    fn interpret(
        &mut self,
        now: Instant,
        job: Job,
        server: SocketAddr,
        reply: &QueryReply,
    ) -> Result<(), String> {
        let response = match (&reply.line, job) {
            (None, Job::Clear) => None,
            (None, _) => return Err("the server closed without answering".to_owned()),
            (Some(line), _) => Some(
                line.parse::<Response>()
                    .map_err(|e| format!("unexpected reply {line:?}: {e}"))?,
            ),
        };
        if let Some(Response::Error(reason)) = &response {
            if let Job::NatProbe(_) = job
                && self.source_addr_refused(server)
            {
                // An older server of ours: ask it the PyP2P way.
                tracing::debug!(%server, reason, "SOURCE ADDR refused; using SOURCE TCP");
                let index = self.config.rendezvous.iter().position(|s| *s == server);
                self.issue(job, index.unwrap_or(0), 1, Vec::new());
                return Ok(());
            }
            return Err(format!("the server said: {reason}"));
        }
        let response = match (job, response) {
            (Job::NatProbe(_), Some(Response::RemoteAddr { addr, time })) => {
                if self.nat_probes.as_ref().is_some_and(Vec::is_empty) {
                    self.nat_probe_ips = Some((reply.local.ip(), addr.ip()));
                }
                self.handle_observed(now, server, addr, time, None);
                Some(Response::RemoteTcp { port: addr.port() })
            }
            (_, response) => response,
        };
        match (job, response) {
            (Job::Bootstrap, Some(Response::Nodes(nodes))) => {
                self.bootstrap.in_flight = false;
                self.bootstrap.next_at = Some(now + self.config.rebootstrap_interval);
                let offered = nodes.len();
                let mut addrs: Vec<SocketAddr> = nodes
                    .into_iter()
                    .filter(|n| n.node_type == NodeType::Passive)
                    .map(|n| n.addr)
                    .filter(|a| !self.is_known(*a))
                    .collect();
                addrs.shuffle(&mut self.rng);
                addrs.truncate(self.outbound_wanted());
                let dialing = addrs.len();
                for addr in addrs {
                    self.dial(addr);
                }
                self.out.push_back(Output::Event(Event::Bootstrapped {
                    server,
                    offered,
                    dialing,
                }));
                Ok(())
            }
            (Job::Advertise, Some(Response::RemoteTcp { port })) => {
                self.advertise.in_flight = false;
                self.advertise.next_at = Some(now + self.config.readvertise_interval);
                self.out.push_back(Output::Event(Event::Advertised {
                    server,
                    observed_port: port,
                }));
                Ok(())
            }
            (Job::Clear, _) => {
                self.out.push_back(Output::Event(Event::Cleared { server }));
                Ok(())
            }
            (Job::NatProbe(n), Some(Response::RemoteTcp { port })) => {
                let probes = self.nat_probes.get_or_insert_with(Vec::new);
                probes.push((reply.local.port(), port));
                if probes.len() < nat::PROBES {
                    let index = self.config.rendezvous.iter().position(|s| *s == server);
                    self.issue(Job::NatProbe(n + 1), index.unwrap_or(0), 1, Vec::new());
                } else {
                    let probes = self.nat_probes.take().unwrap_or_default();
                    let mapping = nat::classify(&probes).unwrap_or(NatMapping::Random);
                    // Without an observed address (an old server), assume a NAT.
                    let behind_nat = self.nat_probe_ips.take().is_none_or(|(l, o)| l != o);
                    self.nat_mapping = Some(mapping);
                    self.out.push_back(Output::Event(Event::NatDetected {
                        server,
                        mapping,
                        probes,
                    }));
                    self.auto_on_detection(now, Some((mapping, behind_nat)));
                }
                Ok(())
            }
            (_, Some(other)) => Err(format!("unexpected reply {other}")),
            (_, None) => Err("no reply".to_owned()),
        }
    }

    fn start(&mut self, job: Job, now: Instant) {
        match job {
            Job::Bootstrap => {
                self.bootstrap.in_flight = true;
                self.bootstrap.last_started = Some(now);
            }
            Job::Advertise => {
                self.advertise.in_flight = true;
                self.advertise.last_started = Some(now);
            }
            Job::Clear | Job::NatProbe(_) => {}
        }
        if self.config.rendezvous.is_empty() {
            self.fail(
                now,
                job,
                vec![(unspecified(), "no rendezvous server configured".to_owned())],
            );
            return;
        }
        let first = self.preferred % self.config.rendezvous.len();
        self.issue(job, first, 1, Vec::new());
    }

    fn issue(&mut self, job: Job, server: usize, tried: usize, errors: Vec<(SocketAddr, String)>) {
        let lines: Vec<String> = match job {
            Job::Bootstrap => vec![
                Request::Bootstrap {
                    count: self.config.bootstrap_count.clamp(1, 100),
                    own_port: (self.config.node_type == NodeType::Passive
                        && self.config.listen_port != 0)
                        .then_some(self.advertised_port()),
                }
                .to_string(),
            ],
            // PASSIVE READY has no reply; the SOURCE TCP after it proves the server read it.
            Job::Advertise => vec![
                Request::PassiveReady {
                    port: self.advertised_port(),
                    max_inbound: u32::try_from(self.config.max_inbound).unwrap_or(u32::MAX),
                }
                .to_string(),
                Request::SourceTcp { text: None }.to_string(),
            ],
            Job::Clear => vec![
                Request::Clear {
                    port: Some(self.advertised_port()),
                }
                .to_string(),
                Request::Quit.to_string(),
            ],
            Job::NatProbe(_) => vec![
                self.addr_request(self.config.rendezvous[server])
                    .to_string(),
            ],
        };
        let id = QueryId(self.next_query);
        self.next_query += 1;
        self.queries.insert(
            id,
            PendingQuery {
                job,
                server,
                tried,
                errors,
            },
        );
        self.out.push_back(Output::Query {
            id,
            server: self.config.rendezvous[server],
            lines,
            want_reply: job != Job::Clear,
        });
    }

    fn fail(&mut self, now: Instant, job: Job, errors: Vec<(SocketAddr, String)>) {
        match job {
            Job::Bootstrap => {
                self.bootstrap.in_flight = false;
                let retry = now + self.config.alone_rebootstrap_delay;
                if self.bootstrap.enabled {
                    self.bootstrap.next_at = Some(retry);
                }
                // The rendezvous may be down or restarting and forget us: register again as
                // soon as it answers (the advertise retries until it does).
                if self.advertise.enabled && !self.advertise.in_flight {
                    self.advertise.next_at =
                        Some(self.advertise.next_at.map_or(retry, |t| t.min(retry)));
                }
            }
            Job::Advertise => {
                self.advertise.in_flight = false;
                if self.advertise.enabled {
                    self.advertise.next_at = Some(now + self.config.alone_rebootstrap_delay);
                }
            }
            Job::NatProbe(_) => {
                self.nat_probes = None;
                self.nat_probe_ips = None;
                if let Some(auto) = self.auto.as_mut() {
                    auto.failures.clone_from(&errors);
                }
            }
            Job::Clear => {}
        }
        self.out
            .push_back(Output::Event(Event::RendezvousFailed { job, errors }));
        self.auto_on_failure(now, job);
    }

    /// After a connection is lost: when nothing is left, bootstrap again soon.
    pub(super) fn after_loss(&mut self, now: Instant) {
        if !self.bootstrap.enabled || !self.conns.is_empty() || self.bootstrap.in_flight {
            return;
        }
        let earliest = self
            .bootstrap
            .last_started
            .map_or(now, |t| t + self.config.alone_rebootstrap_delay)
            .max(now);
        let at = self.bootstrap.next_at.map_or(earliest, |t| t.min(earliest));
        self.bootstrap.next_at = Some(at);
    }

    /// How many more outbound connections bootstrap should open.
    fn outbound_wanted(&self) -> usize {
        self.config
            .max_outbound
            .saturating_sub(self.count(Direction::Outbound) + self.dialing.len())
    }

    /// Whether `addr` is ourselves, being dialed, or a peer we are connected to.
    fn is_known(&self, addr: SocketAddr) -> bool {
        self.self_addrs.contains(&addr)
            || self.dialing.contains(&addr)
            || self.conns.values().any(|p| p.listen == Some(addr))
    }
}
