//! The mailbox server's Prometheus metrics (`--metrics-listen`): [`Stats`] as metric
//! families, every name prefixed `dht_msg_`. The README's "Metrics" table lists them.

use server_kit::metrics::{Exposition, Metrics, by_family, gauge_value};

use crate::core::{CLOSING_LIMITS, KEY_REFUSALS, LINE_VERBS, REFUSALS, REGISTRATION_KINDS, Stats};

/// `(label, count)` pairs of a fixed label list and its counters.
fn labelled<'a>(labels: &[&'a str], counts: &[u64]) -> Vec<(&'a str, u64)> {
    labels.iter().copied().zip(counts.iter().copied()).collect()
}

impl Metrics for Stats {
    #[allow(clippy::too_many_lines)] // one call per family, in the README's order
    fn encode(&self, out: &mut Exposition) {
        out.gauge(
            "dht_msg_connections_open",
            "Client connections open now (line protocol and HTTP).",
            gauge_value(self.open),
        );
        out.counter(
            "dht_msg_connections_accepted",
            "Client connections accepted.",
            self.accepted,
        );
        out.counters(
            "dht_msg_connections_refused",
            "Client connections refused by a connection cap, by reason.",
            "reason",
            &labelled(
                &["server_full", "too_many_from_ip"],
                &self.refused_by_reason,
            ),
        );
        out.counters(
            "dht_msg_connections_by_family",
            "Client connections accepted, by the client's address family (an IPv4 client of \
             the dual-stack socket counts as ipv4).",
            "family",
            &by_family(self.accepted_by_family),
        );
        out.counters(
            "dht_msg_requests",
            "Line-protocol requests handled, by verb.",
            "verb",
            &labelled(&LINE_VERBS, &self.line_requests),
        );
        out.counter(
            "dht_msg_http_requests",
            "HTTP requests (PyP2P's dht_msg.php API) handled.",
            self.http_requests,
        );
        out.counters(
            "dht_msg_refusals",
            "Requests refused with an error, by reason.",
            "reason",
            &labelled(&REFUSALS, &self.refusals),
        );
        out.counters(
            "dht_msg_limit_hits",
            "Connections closed by a limit, by limit (refusals by a quota or rate limit are \
             in dht_msg_refusals_total).",
            "limit",
            &labelled(&CLOSING_LIMITS, &self.closed_by_limit),
        );
        out.counters(
            "dht_msg_registrations",
            "Successful registrations (new and existing mailboxes), by kind: secret (REGISTER, \
             HTTP register) or key (CHALLENGE + REGISTER_KEY).",
            "kind",
            &labelled(&REGISTRATION_KINDS, &self.registrations),
        );
        out.counters(
            "dht_msg_key_refusals",
            "Signed registrations refused, and secrets refused for a key's mailbox, by reason.",
            "reason",
            &labelled(&KEY_REFUSALS, &self.key_refusals),
        );
        out.counter(
            "dht_msg_mailboxes_registered",
            "Mailboxes created on this instance.",
            self.registered,
        );
        out.gauge(
            "dht_msg_mailboxes",
            "Mailboxes held now.",
            gauge_value(self.mailboxes),
        );
        out.counters(
            "dht_msg_messages",
            "Messages by what happened to them: stored (PUT accepted on this instance), pushed \
             (MSG lines sent to subscribers), acked (deleted by their owner), expired (TTL).",
            "event",
            &[
                ("stored", self.puts),
                ("pushed", self.pushed),
                ("acked", self.deleted),
                ("expired", self.expired),
            ],
        );
        out.gauge(
            "dht_msg_messages_pending",
            "Messages stored and not yet acknowledged, now.",
            gauge_value(self.messages),
        );
        out.gauge(
            "dht_msg_stored_bytes",
            "Bytes charged against --max-stored-bytes now.",
            gauge_value(self.stored_bytes),
        );
        let b = &self.backend;
        out.counter(
            "dht_msg_backend_commits",
            "Batches written to the shared backend (one round trip each; 0 without --backend).",
            b.commits,
        );
        out.counters(
            "dht_msg_backend_changes",
            "Changes exchanged with the shared backend, by direction.",
            "direction",
            &[("written", b.ops_written), ("received", b.ops_received)],
        );
    }
}
