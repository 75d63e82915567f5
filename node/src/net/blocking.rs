//! The blocking helpers: calls that run the loop until their outcome arrives (or a bound
//! passes), for applications that want a plain call: [`Net::bootstrap`], [`Net::advertise`],
//! [`Net::detect_nat`], [`Net::wait_connect`]. Connections are served meanwhile.

use std::time::{Duration, Instant};

use std::net::IpAddr;

use super::outcomes::{BootstrapReport, NatReport, Outcomes, ReadyReport};
use super::{Net, NetError};
use crate::connect::ConnectOutcome;
use crate::ids::ConnectId;
use wire::rendezvous::NodeType;

impl Net {
    /// Asks the rendezvous servers for nodes (failing over in order) and starts dialing them;
    /// returns when a server answered, or with every server's error. From then on the node
    /// bootstraps again by itself whenever it is below `max_outbound` or alone.
    pub fn bootstrap(&mut self) -> Result<BootstrapReport, NetError> {
        self.start()?;
        self.outcomes.bootstrap = None;
        self.core.bootstrap(Instant::now());
        let limit = self.blocking_limit();
        self.wait_for(limit, "bootstrap", |o| o.bootstrap.take())
    }

    /// Makes this node findable: a passive node registers with the rendezvous (`PASSIVE
    /// READY`), and again every `readvertise_interval`; returns the source port the server
    /// saw. A simultaneous node is findable through its registration (kept from its start):
    /// returns the external port the server sees for its listening port once registered. An
    /// auto node first waits for its role ([`Net::wait_ready`]). Fails for a node that is
    /// active or not listening.
    pub fn advertise(&mut self) -> Result<u16, NetError> {
        self.start()?;
        let limit = self.blocking_limit();
        if self.core.role_pending() || self.core.config().node_type == NodeType::Simultaneous {
            let report = self.wait_ready(limit)?;
            if self.core.config().node_type == NodeType::Simultaneous {
                return match (self.core.registered(), self.core.registration_port()) {
                    (true, Some(port)) => Ok(port),
                    _ => Err(NetError::Timeout {
                        what: format!(
                            "the simultaneous registration ({})",
                            report.pending.join(", ")
                        ),
                        after: limit,
                    }),
                };
            }
        }
        self.outcomes.advertise = None;
        self.core.advertise(Instant::now());
        self.wait_for(limit, "advertise", |o| o.advertise.take())
    }

    /// Runs the loop until the node has established what it tells others (at most `limit`):
    /// its role (an auto node detects its NAT through the rendezvous first), its
    /// registration with the rendezvous when it is simultaneous, and its mailbox when a
    /// dht-msg server is configured. The report says what it found and, if `limit` passed
    /// first, what is still missing (the node keeps trying in the background).
    ///
    /// ```no_run
    /// # fn f() -> Result<(), node::NetError> {
    /// use std::time::Duration;
    /// let mut net = node::Net::new(node::Config::new().with_rendezvous("203.0.113.5:8000"))?;
    /// net.start()?;
    /// let ready = net.wait_ready(Duration::from_secs(5))?;
    /// println!("role {} ({:?}), WAN {:?}", ready.role, ready.reason, ready.wan_ip);
    /// # Ok(()) }
    /// ```
    pub fn wait_ready(&mut self, limit: Duration) -> Result<ReadyReport, NetError> {
        self.start()?;
        self.apply_outputs(Instant::now());
        let deadline = Instant::now() + limit;
        loop {
            let pending = self.not_ready();
            let now = Instant::now();
            if pending.is_empty() || now >= deadline {
                let role = self.core.config().node_type.to_string();
                let reason = self.outcomes.role.as_ref().map(|(_, why)| why.clone());
                return Ok(ReadyReport {
                    role,
                    reason,
                    wan_ip: self.wan_ip.map(IpAddr::V4),
                    nat: self.core.nat_mapping(),
                    pending,
                });
            }
            self.poll(Some((deadline - now).min(Duration::from_millis(100))))?;
        }
    }

    /// What the node has not established yet (see [`Net::wait_ready`]).
    fn not_ready(&self) -> Vec<String> {
        let mut pending = Vec::new();
        if self.core.role_pending() {
            pending.push("its role (detecting the NAT through the rendezvous)".to_owned());
        }
        if self.core.config().node_type == NodeType::Simultaneous && !self.core.registered() {
            pending.push("its registration with the rendezvous".to_owned());
        }
        if self.mailbox_server.is_some() && !self.core.mailbox_up() {
            pending.push("its mailbox on the dht-msg server".to_owned());
        }
        pending
    }

    /// Detects how the NAT maps ports, PyP2P's way (five `SOURCE TCP` probes from fresh ports
    /// to one rendezvous server).
    pub fn detect_nat(&mut self) -> Result<NatReport, NetError> {
        self.start()?;
        self.outcomes.nat = None;
        self.core.detect_nat(Instant::now());
        let limit = self.config.query_timeout * 6 + Duration::from_secs(1);
        self.wait_for(limit, "NAT detection", |o| o.nat.take())
    }

    /// Runs the loop until connect `id` has an outcome (at most the UNL connect timeout plus
    /// a second).
    pub fn wait_connect(&mut self, id: ConnectId) -> Result<ConnectOutcome, NetError> {
        let limit = self.config.unl_connect_timeout + Duration::from_secs(1);
        self.wait_for(limit, "connect", |o| o.connects.remove(&id).map(Ok))
    }

    /// How long a blocking helper waits: every server, one query timeout each, plus slack.
    fn blocking_limit(&self) -> Duration {
        let n = u32::try_from(self.servers.len().max(1)).unwrap_or(u32::MAX);
        (self.config.query_timeout + self.config.connect_timeout.min(self.config.query_timeout)) * n
            + Duration::from_secs(1)
    }

    pub(super) fn wait_for<T>(
        &mut self,
        limit: Duration,
        what: &str,
        mut take: impl FnMut(&mut Outcomes) -> Option<Result<T, NetError>>,
    ) -> Result<T, NetError> {
        self.apply_outputs(Instant::now());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(result) = take(&mut self.outcomes) {
                return result;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(NetError::Timeout {
                    what: what.to_owned(),
                    after: limit,
                });
            }
            self.poll(Some(deadline - now))?;
        }
    }
}
