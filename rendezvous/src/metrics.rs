//! The rendezvous server's Prometheus metrics (`--metrics-listen`): [`Stats`] as metric
//! families, every name prefixed `rendezvous_`. The README's "Metrics" table lists them.

use server_kit::metrics::{Exposition, Metrics, by_family, gauge_value};

use crate::core::{Stats, VERBS};

impl Metrics for Stats {
    #[allow(clippy::too_many_lines)] // one call per family, in the README's order
    fn encode(&self, out: &mut Exposition) {
        let refused_full = self.refused_by_reason[0];
        out.gauge(
            "rendezvous_connections_open",
            "Client connections open now.",
            gauge_value(self.open),
        );
        out.counter(
            "rendezvous_connections_accepted",
            "Client connections accepted.",
            self.accepted,
        );
        out.counters(
            "rendezvous_connections_refused",
            "Client connections refused by a connection cap, by reason.",
            "reason",
            &[
                ("server_full", refused_full),
                ("too_many_from_ip", self.refused_by_reason[1]),
            ],
        );
        out.counters(
            "rendezvous_connections_by_family",
            "Client connections accepted, by the client's address family (an IPv4 client of \
             the dual-stack socket counts as ipv4).",
            "family",
            &by_family(self.accepted_by_family),
        );
        let requests: Vec<(&str, u64)> = VERBS
            .iter()
            .copied()
            .zip(self.requests.iter().copied())
            .collect();
        out.counters(
            "rendezvous_requests",
            "Well-formed requests handled, by verb.",
            "verb",
            &requests,
        );
        out.counter(
            "rendezvous_bad_lines",
            "Lines answered with ERROR (malformed or refused).",
            self.bad_lines,
        );
        out.gauges(
            "rendezvous_registrations",
            "Registrations held now, by node type (passive: with a shared backend, every \
             instance's; simultaneous: this instance's connected nodes).",
            "node_type",
            &[
                ("passive", gauge_value(self.passive)),
                ("simultaneous", gauge_value(self.simultaneous)),
            ],
        );
        out.counters(
            "rendezvous_registrations_new",
            "New registrations made on this instance (renewals not counted), by node type.",
            "node_type",
            &[
                ("passive", self.registered_passive),
                ("simultaneous", self.registered_simultaneous),
            ],
        );
        out.gauges(
            "rendezvous_passive_by_family",
            "Passive registrations held now, by address family (PyP2P's BOOTSTRAP only \
             hands out ipv4 ones).",
            "family",
            &by_family(self.passive_by_family.map(gauge_value)),
        );
        out.counters(
            "rendezvous_registrations_new_by_family",
            "New registrations (passive and simultaneous) made on this instance, by address \
             family.",
            "family",
            &by_family(self.registered_by_family),
        );
        out.counter(
            "rendezvous_candidates_cross_family_refused",
            "CANDIDATEs refused because they named a simultaneous node of the other address \
             family.",
            self.cross_family_refused,
        );
        out.counters(
            "rendezvous_punch_messages",
            "Hole-punch coordination lines sent: CHALLENGE to nodes, FIGHT to candidates, \
             RECONNECT to stale nodes.",
            "message",
            &[
                ("challenge", self.challenges),
                ("fight", self.fights),
                ("reconnect", self.reconnects),
            ],
        );
        out.gauges(
            "rendezvous_relay_sessions",
            "Relay connections waiting for their peer, and spliced sessions, now.",
            "state",
            &[
                ("waiting", gauge_value(self.relay_waiting)),
                ("active", gauge_value(self.relay_active)),
            ],
        );
        out.counter(
            "rendezvous_relay_sessions_paired",
            "Relay sessions paired.",
            self.relay_paired,
        );
        out.counter(
            "rendezvous_relay_refused",
            "RELAY requests refused and waits that timed out.",
            self.relay_refused,
        );
        out.counter(
            "rendezvous_relay_bytes",
            "Payload bytes forwarded by the relay (both directions).",
            self.relay_bytes,
        );
        out.gauge(
            "rendezvous_relay_queued_bytes",
            "Bytes the relay holds now (queued for a slow peer, or sent before the pairing).",
            gauge_value(self.relay_queued_bytes),
        );
        let h = &self.limit_hits;
        out.counters(
            "rendezvous_limit_hits",
            "Times a limit refused or closed something, by limit.",
            "limit",
            &[
                ("max_connections", refused_full),
                ("max_connections_per_ip", self.refused_by_reason[1]),
                ("max_registrations_per_ip", h.registrations_per_ip),
                ("max_candidates_per_node", h.candidates_per_node),
                ("max_output_bytes", h.output_cap),
                ("max_line_bytes", h.line_too_long),
                ("max_bad_lines", h.bad_lines),
                ("idle_timeout", h.idle_timeout),
                ("max_relays", h.relay_server_full),
                ("max_relays_per_ip", h.relay_per_ip),
                ("relay_early_bytes", h.relay_early_data),
                ("relay_wait_timeout", h.relay_wait_timeout),
            ],
        );
        let b = &self.backend;
        out.counters(
            "rendezvous_backend_updates",
            "Updates exchanged with the shared backend (0 without --backend), by direction.",
            "direction",
            &[("sent", b.published), ("received", b.received)],
        );
        out.counter(
            "rendezvous_backend_forwarded_punches",
            "Punch requests (CANDIDATE, FIGHT, refusals) forwarded between instances.",
            b.forwarded,
        );
        out.gauge(
            "rendezvous_backend_remote_simultaneous",
            "Simultaneous nodes connected to other instances that this one knows of (their \
             CANDIDATEs are forwarded there).",
            gauge_value(b.remote_registrations),
        );
        out.gauge(
            "rendezvous_backend_instances",
            "Other instances on the shared backend seen alive now.",
            gauge_value(b.instances),
        );
    }
}
