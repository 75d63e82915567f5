//! The forwarding-check server's Prometheus metrics (`--metrics-listen`): [`Stats`] as metric
//! families, every name prefixed `forwarding_check_`. The README's "Metrics" table lists them.

use server_kit::metrics::{Exposition, Metrics, by_family, gauge_value};

use crate::core::{CHECK_RESULTS, Stats};

impl Metrics for Stats {
    fn encode(&self, out: &mut Exposition) {
        out.gauge(
            "forwarding_check_connections_open",
            "Client connections open now.",
            gauge_value(self.open),
        );
        out.counter(
            "forwarding_check_connections_accepted",
            "Client connections accepted.",
            self.accepted,
        );
        out.counters(
            "forwarding_check_connections_refused",
            "Client connections refused by a connection cap, by reason.",
            "reason",
            &[
                ("server_full", self.refused_by_reason[0]),
                ("too_many_from_ip", self.refused_by_reason[1]),
            ],
        );
        out.counters(
            "forwarding_check_connections_by_family",
            "Client connections accepted, by the client's address family (an IPv4 client of \
             the dual-stack socket counts as ipv4).",
            "family",
            &by_family(self.accepted_by_family),
        );
        out.counters(
            "forwarding_check_checks_by_family",
            "Port checks (dial-backs) started, by address family: always the caller's.",
            "family",
            &by_family(self.checks_by_family),
        );
        out.counter(
            "forwarding_check_requests",
            "Complete HTTP request heads received.",
            self.requests,
        );
        out.counter(
            "forwarding_check_bad_requests",
            "Requests answered with a 4xx other than 429.",
            self.bad_requests,
        );
        let results: Vec<(&str, u64)> = CHECK_RESULTS
            .iter()
            .copied()
            .zip(self.check_results.iter().copied())
            .collect();
        out.counters(
            "forwarding_check_checks",
            "Port checks (dial-backs) finished, by result.",
            "result",
            &results,
        );
        out.gauge(
            "forwarding_check_checks_in_flight",
            "Dial-backs in progress now.",
            gauge_value(self.checks_in_flight),
        );
        out.counters(
            "forwarding_check_limit_hits",
            "Requests refused by a limit: checks_per_minute (429), or the server busy (503: \
             max_concurrent_checks, max_tracked_ips, or no socket for the dial-back).",
            "limit",
            &[
                ("checks_per_minute", self.rate_limited),
                ("busy", self.busy),
                ("max_connections", self.refused_by_reason[0]),
                ("max_connections_per_ip", self.refused_by_reason[1]),
            ],
        );
    }
}
