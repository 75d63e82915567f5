//! Prometheus metrics for operators: [`Exposition`] (the text a scrape returns, rendered by the
//! `prometheus-client` crate in the `OpenMetrics` text format), [`Metrics`] (how a server's
//! counters describe themselves), [`process`] figures (memory, file descriptors, CPU) and
//! [`MetricsEndpoint`], a tiny HTTP server for `GET /metrics` on its own port.
//!
//! The endpoint runs on a helper thread of its own, not in the server's event loop: a scrape
//! reads the counters the loop published in its last turn, after its work and before its
//! replies are written ([`crate::LiveStats`]: a client that has its answer finds it counted),
//! so a slow scraper never delays a client, and the loop pays one copy of its counters per
//! turn. Names follow Prometheus' conventions: `<server>_<what>_<unit>`, counters end in
//! `_total` (the renderer appends it), labels name the dimension (`reason`, `verb`, `limit`).
//!
//! ```
//! use server_kit::metrics::Exposition;
//!
//! let mut out = Exposition::default();
//! out.counter("demo_requests", "Requests handled.", 3);
//! out.counters("demo_refused", "Refused, by reason.", "reason", &[("full", 1), ("rate", 2)]);
//! let text = out.render();
//! assert!(text.contains("demo_requests_total 3"));
//! assert!(text.contains("demo_refused_total{reason=\"rate\"} 2"));
//! assert!(text.ends_with("# EOF\n"));
//! ```

mod endpoint;
pub mod process;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub use endpoint::{CONTENT_TYPE, MetricsEndpoint, MetricsSource, REQUEST_DEADLINE};

/// Labels of one series: `(name, value)` pairs.
type Labels = Vec<(String, String)>;

/// A server's counters, as metric families (implemented by each core's `Stats`).
pub trait Metrics {
    /// Adds this server's families to `out`.
    fn encode(&self, out: &mut Exposition);
}

/// The metric families of one scrape. Built fresh for each scrape from a snapshot of the
/// counters, then rendered.
#[derive(Debug, Default)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// A counter (`name` without `_total`: the renderer appends it).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        debug_assert!(!name.ends_with("_total"), "{name}: _total is appended");
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        self.registry.register(name, help_text(help), counter);
    }

    /// A counter family with one label: one series per `(label value, count)`.
    pub fn counters(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        debug_assert!(!name.ends_with("_total"), "{name}: _total is appended");
        let family = Family::<Labels, Counter>::default();
        for (value, count) in values {
            family
                .get_or_create(&vec![(label.to_owned(), (*value).to_owned())])
                .inc_by(*count);
        }
        self.registry.register(name, help_text(help), family);
    }

    /// A counter family with any labels: one series per `(labels, count)`.
    pub fn labelled_counters(&mut self, name: &str, help: &str, series: &[(&[(&str, &str)], u64)]) {
        debug_assert!(!name.ends_with("_total"), "{name}: _total is appended");
        let family = Family::<Labels, Counter>::default();
        for (labels, count) in series {
            let labels: Labels = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            family.get_or_create(&labels).inc_by(*count);
        }
        self.registry.register(name, help_text(help), family);
    }

    /// A gauge with a whole value.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        self.registry.register(name, help_text(help), gauge);
    }

    /// A gauge family with one label.
    pub fn gauges(&mut self, name: &str, help: &str, label: &str, values: &[(&str, i64)]) {
        let family = Family::<Labels, Gauge>::default();
        for (value, v) in values {
            family
                .get_or_create(&vec![(label.to_owned(), (*value).to_owned())])
                .set(*v);
        }
        self.registry.register(name, help_text(help), family);
    }

    /// A gauge with a fractional value (seconds, ratios).
    pub fn gauge_f64(&mut self, name: &str, help: &str, value: f64) {
        let gauge = Gauge::<f64, AtomicU64>::default();
        gauge.set(value);
        self.registry.register(name, help_text(help), gauge);
    }

    /// A counter with a fractional value (CPU seconds).
    pub fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        let counter = Counter::<f64, AtomicU64>::default();
        counter.inc_by(value);
        self.registry.register(name, help_text(help), counter);
    }

    /// The `OpenMetrics` text (`# HELP`, `# TYPE`, samples, then `# EOF`).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// `help` without its final full stop: the renderer adds one.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// Saturating `usize` → `i64` for gauges.
pub fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `(family, count)` label pairs for a metric family counted by address family (indexed like
/// [`crate::FAMILIES`]: `ipv4`, `ipv6`).
///
/// ```
/// assert_eq!(server_kit::metrics::by_family([3, 4]), [("ipv4", 3), ("ipv6", 4)]);
/// ```
pub fn by_family<T: Copy>(counts: [T; 2]) -> [(&'static str, T); 2] {
    [
        (crate::FAMILIES[0], counts[0]),
        (crate::FAMILIES[1], counts[1]),
    ]
}
