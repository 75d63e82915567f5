//! Every server's `/metrics` parses as Prometheus text (a strict parser), and its counters
//! move with real traffic on loopback; the node's counters too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use integration_tests::prom::{self, Samples, scrape_until, value};
use integration_tests::{connected_nodes, mailbox_owner};
use server_kit::metrics::Metrics;
use server_kit::testkit::{LineClient, exchange};
use server_kit::{RunningServer, Service};

const ANY: &str = "127.0.0.1:0";

/// A series' expected value: name, labels, value.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Every series in `expected` has its value in `samples` (the failure names the series).
fn expect(samples: &Samples, expected: &[Expected<'_>]) {
    for &(name, labels, want) in expected {
        assert_eq!(
            value(samples, name, labels),
            Some(want),
            "{name} {labels:?}"
        );
    }
}

/// A server and its metrics endpoint, each on a loopback port of its own.
fn with_metrics<C: Service>(config: C::Config) -> (RunningServer<C>, SocketAddr)
where
    C::Stats: Metrics,
{
    let server =
        RunningServer::<C>::start_with_metrics(ANY.parse().unwrap(), config, ANY.parse().unwrap())
            .unwrap();
    let metrics = server.metrics_addr().unwrap();
    (server, metrics)
}

#[test]
fn rendezvous_metrics_count_requests_registrations_and_refusals() {
    let config = rendezvous::Config {
        max_connections_per_ip: 2,
        ..rendezvous::Config::default()
    };
    let (server, metrics) = with_metrics::<rendezvous::serve::Rendezvous>(config);
    let before = prom::scrape(metrics).unwrap();
    assert_eq!(
        value(
            &before,
            "rendezvous_requests_total",
            &[("verb", "BOOTSTRAP")]
        ),
        Some(0.0)
    );
    assert!(value(&before, "process_resident_memory_bytes", &[]).unwrap() > 0.0);
    assert!(value(&before, "process_open_fds", &[]).unwrap() > 0.0);
    let mut a = LineClient::from("127.0.0.21", server.addr());
    a.send("PASSIVE READY 4000 10");
    assert_eq!(a.ask("BOOTSTRAP 5"), "NODES EMPTY");
    let _b = LineClient::from("127.0.0.22", server.addr());
    let _c = LineClient::from("127.0.0.22", server.addr());
    let refused = exchange("127.0.0.22", server.addr(), b"");
    assert!(
        refused.starts_with("ERROR too many connections"),
        "{refused}"
    );
    let after = scrape_until(metrics, |s| {
        value(
            s,
            "rendezvous_connections_refused_total",
            &[("reason", "too_many_from_ip")],
        ) == Some(1.0)
    });
    expect(
        &after,
        &[
            ("rendezvous_requests_total", &[("verb", "BOOTSTRAP")], 1.0),
            (
                "rendezvous_requests_total",
                &[("verb", "PASSIVE_READY")],
                1.0,
            ),
            ("rendezvous_registrations", &[("node_type", "passive")], 1.0),
            (
                "rendezvous_registrations_new_total",
                &[("node_type", "passive")],
                1.0,
            ),
            (
                "rendezvous_limit_hits_total",
                &[("limit", "max_connections_per_ip")],
                1.0,
            ),
            ("rendezvous_connections_open", &[], 3.0),
        ],
    );
    assert!(value(&after, "metrics_scrapes_total", &[]).unwrap() >= 2.0);
}

#[test]
fn dht_msg_metrics_count_messages_stored_pushed_and_acked() {
    let (server, metrics) = with_metrics::<dht_msg::serve::Mailboxes>(dht_msg::Config::default());
    let mut owner = mailbox_owner("127.0.0.31", server.addr(), "bob");
    let mut sender = LineClient::from("127.0.0.32", server.addr());
    let put = sender.ask("PUT bob hello");
    let id = put.strip_prefix("OK PUT ").unwrap().to_owned();
    assert_eq!(owner.recv(), format!("MSG {id} - hello"));
    assert_eq!(owner.ask(&format!("ACK {id}")), format!("OK ACK {id}"));
    assert!(sender.ask("PUT nobody x").starts_with("ERROR"));
    let s = scrape_until(metrics, |s| {
        value(s, "dht_msg_messages_total", &[("event", "acked")]) == Some(1.0)
    });
    expect(
        &s,
        &[
            ("dht_msg_messages_total", &[("event", "stored")], 1.0),
            ("dht_msg_messages_total", &[("event", "pushed")], 1.0),
            ("dht_msg_requests_total", &[("verb", "PUT")], 2.0),
            ("dht_msg_refusals_total", &[("reason", "no_mailbox")], 1.0),
            ("dht_msg_mailboxes", &[], 1.0),
            ("dht_msg_messages_pending", &[], 0.0),
            ("dht_msg_backend_commits_total", &[], 0.0),
        ],
    );
}

#[test]
fn forwarding_check_metrics_count_checks_by_result() {
    let (server, metrics) =
        with_metrics::<forwarding_check::core::Core>(forwarding_check::Config::default());
    // Its own metrics port is open; a port nobody listens on is refused.
    let open = exchange(
        "127.0.0.1",
        server.addr(),
        format!("GET /v1/check?port={} HTTP/1.1\r\n\r\n", metrics.port()).as_bytes(),
    );
    assert!(open.contains("\"open\":true"), "{open}");
    let closed_port = std::net::TcpListener::bind(ANY)
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = exchange(
        "127.0.0.1",
        server.addr(),
        format!("GET /v1/check?port={closed_port} HTTP/1.1\r\n\r\n").as_bytes(),
    );
    assert!(closed.contains("\"open\":false"), "{closed}");
    let s = scrape_until(metrics, |s| {
        value(s, "forwarding_check_checks_total", &[("result", "refused")]) == Some(1.0)
    });
    assert_eq!(
        value(&s, "forwarding_check_checks_total", &[("result", "open")]),
        Some(1.0)
    );
    assert_eq!(value(&s, "forwarding_check_requests_total", &[]), Some(2.0));
}

#[test]
fn node_metrics_count_connections_and_rendezvous_requests() {
    let rv = rendezvous::RunningServer::start(ANY.parse().unwrap(), rendezvous::Config::default())
        .unwrap();
    let servers = vec![rv.addr().to_string()];
    let _nets = connected_nodes(&servers, 2, 700);
    let mut out = server_kit::metrics::Exposition::default();
    node::metrics::global().encode(&mut out);
    let text = out.render();
    let s = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        value(
            &s,
            "p2p_node_connections_opened_total",
            &[("direction", "outbound")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        value(
            &s,
            "p2p_node_connections_opened_total",
            &[("direction", "inbound")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        value(
            &s,
            "p2p_node_rendezvous_requests_total",
            &[("job", "bootstrap"), ("result", "ok")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
    assert!(
        value(&s, "p2p_node_connections_open", &[]).unwrap() >= 2.0,
        "{text}"
    );
}
