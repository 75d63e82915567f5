//! The PCP exchange in virtual time (resends, what counts as the answer), then over real UDP
//! sockets on loopback against small servers that answer like a PCP server, a NAT-PMP-only
//! server, a refusing one and nothing at all. The real gateway (miniupnpd) is exercised in
//! `tests/tests/pcp_netns.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use wire::pcp::{MapData, ResultCode};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

fn server() -> SocketAddr {
    "192.168.1.1:5351".parse().unwrap()
}

fn map_request(nonce: u8) -> MapRequest {
    MapRequest::new(
        "192.168.1.2".parse().unwrap(),
        Nonce([nonce; 12]),
        Protocol::TCP,
        50500,
        60,
    )
}

fn answer(req: &MapRequest, result: ResultCode, lifetime: u32) -> Vec<u8> {
    Response {
        result,
        lifetime_secs: lifetime,
        epoch_secs: 7,
        body: ResponseBody::Map(req.answer(req.map.internal_port, "11.0.0.101".parse().unwrap())),
    }
    .encode()
}

#[test]
fn resends_double_from_250_ms_until_the_deadline() {
    let t0 = Instant::now();
    let mut x = Exchange::new(t0, server(), Request::Map(map_request(1)), ms(t0, 2000));
    let mut sent = Vec::new();
    let mut now = t0;
    while x.poll_timeout().is_some() {
        if x.poll_transmit(now).is_some() {
            sent.push(now.duration_since(t0).as_millis());
        }
        x.handle_timeout(now);
        if let Some(next) = x.poll_timeout() {
            now = next;
        }
    }
    assert_eq!(sent, vec![0, 250, 750, 1750]);
    let err = x.take_outcome().unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains("no PCP answer from 192.168.1.1:5351 within 2.0 s (4 requests sent)"),
        "{err}"
    );
}

#[test]
fn only_the_answer_to_this_request_from_the_server_ends_the_exchange() {
    let t0 = Instant::now();
    let req = map_request(1);
    let mut x = Exchange::new(t0, server(), Request::Map(req.clone()), ms(t0, 2000));
    assert!(x.poll_transmit(t0).is_some());
    // From another address, another nonce, garbage, a request: ignored.
    x.handle_datagram(
        "192.168.1.9:5351".parse().unwrap(),
        &answer(&req, ResultCode::Success, 60),
    );
    x.handle_datagram(server(), &answer(&map_request(2), ResultCode::Success, 60));
    x.handle_datagram(server(), b"hello");
    x.handle_datagram(server(), &Request::Map(req.clone()).encode());
    assert!(x.take_outcome().is_none());
    assert!(x.poll_timeout().is_some());
    // A refusal is an answer: the caller reads its result code.
    x.handle_datagram(server(), &answer(&req, ResultCode::NotAuthorized, 30));
    let response = x.take_outcome().unwrap().unwrap();
    let err = req.grant(&response).unwrap_err();
    assert!(err.to_string().contains("NOT_AUTHORIZED (2)"), "{err}");
    assert!(
        x.poll_transmit(ms(t0, 300)).is_none(),
        "over: nothing more to send"
    );
}

#[test]
fn natpmp_version_and_unreachable_end_the_exchange_with_a_reason() {
    let t0 = Instant::now();
    let new = || {
        Exchange::new(
            t0,
            server(),
            Request::Announce { client: LOCAL },
            ms(t0, 500),
        )
    };
    let mut x = new();
    x.handle_datagram(server(), &[0, 128, 0, 1, 0, 0, 0, 9]);
    let e = x.take_outcome().unwrap().unwrap_err();
    assert!(
        e.to_string().contains(
            "192.168.1.1:5351 speaks NAT-PMP only (it answered PCP with version 0, result 1)"
        ),
        "{e}"
    );
    let mut x = new();
    let mut v1 = Response {
        result: ResultCode::UnsuppVersion,
        lifetime_secs: 0,
        epoch_secs: 0,
        body: ResponseBody::Announce,
    }
    .encode();
    v1[0] = 1;
    x.handle_datagram(server(), &v1);
    let e = x.take_outcome().unwrap().unwrap_err();
    assert!(e.to_string().contains("speaks version 1 only"), "{e}");
    let mut x = new();
    x.handle_unreachable();
    let e = x.take_outcome().unwrap().unwrap_err();
    assert_eq!(
        e.to_string(),
        "no PCP server at 192.168.1.1:5351 (port unreachable)"
    );
}

/// A UDP server on loopback that answers each datagram with `answer` (none: silence) until
/// dropped; it records what it received.
struct FakeServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(
        mut answer: impl FnMut(usize, &[u8]) -> Option<Vec<u8>> + Send + 'static,
    ) -> FakeServer {
        let socket = UdpSocket::bind((LOCAL, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&received), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let i = {
                    let mut r = r.lock().unwrap();
                    r.push(buf[..n].to_vec());
                    r.len() - 1
                };
                if let Some(reply) = answer(i, &buf[..n]) {
                    socket.send_to(&reply, from).unwrap();
                }
            }
        });
        FakeServer {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers MAP requests like a PCP gateway with WAN address 11.0.0.101: the port asked for,
/// the lifetime asked for (capped at 120 s), SUCCESS; ANNOUNCE with SUCCESS.
fn gateway_answer(request: &[u8]) -> Option<Vec<u8>> {
    let response = match Request::parse(request).ok()? {
        Request::Announce { .. } => Response {
            result: ResultCode::Success,
            lifetime_secs: 0,
            epoch_secs: 42,
            body: ResponseBody::Announce,
        },
        Request::Map(m) => Response {
            result: ResultCode::Success,
            lifetime_secs: m.lifetime_secs.min(120),
            epoch_secs: 42,
            body: ResponseBody::Map(MapData {
                external_ip: "11.0.0.101".parse().unwrap(),
                ..m.map
            }),
        },
    };
    Some(response.encode())
}

fn spec(nonce: Nonce) -> MapSpec {
    MapSpec {
        protocol: Protocol::TCP,
        internal: SocketAddr::new(LOCAL, 50500),
        external_port: 50500,
        lifetime_secs: 3600,
        nonce,
        prefer_failure: true,
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(2)
}

#[test]
fn map_renew_and_unmap_over_udp_keep_the_nonce() {
    // The first request is lost: the resend gets through.
    let server = FakeServer::start(|i, req| if i == 0 { None } else { gateway_answer(req) });
    let epoch = announce(server.addr, Some(LOCAL), soon()).unwrap();
    assert_eq!(epoch, 42);
    let nonce = random_nonce();
    let started = Instant::now();
    let m = map(server.addr, spec(nonce), soon()).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(m.external, "11.0.0.101:50500".parse().unwrap());
    assert_eq!(m.internal, SocketAddr::new(LOCAL, 50500));
    assert_eq!((m.lifetime_secs, m.nonce, m.epoch_secs), (120, nonce, 42));
    assert!(
        m.to_string()
            .starts_with("TCP 11.0.0.101:50500 -> 127.0.0.1:50500 for 120 s")
    );
    let renewed = renew(&m, soon()).unwrap();
    assert_eq!(renewed, m);
    unmap(&m, soon()).unwrap();
    // What the server saw: ANNOUNCE (its first copy lost, then resent), then three MAPs with
    // our address and nonce: PREFER_FAILURE on the first only, the renewal asking for the
    // granted lifetime, the deletion with lifetime 0.
    let maps: Vec<MapRequest> = server
        .received()
        .iter()
        .filter_map(|d| match Request::parse(d) {
            Ok(Request::Map(m)) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(maps.len(), 3, "{maps:?}");
    assert!(
        maps.iter()
            .all(|r| r.map.nonce == nonce && r.client == LOCAL)
    );
    assert_eq!(maps[0].map.options, vec![PcpOption::PreferFailure]);
    assert!(maps[1].map.options.is_empty());
    assert_eq!(
        maps.iter().map(|r| r.lifetime_secs).collect::<Vec<_>>(),
        vec![3600, 120, 0]
    );
}

#[test]
fn a_natpmp_only_server_a_refusal_and_no_server_are_told_apart() {
    // NAT-PMP's "unsupported version": version 0, opcode 128 + request's, result 1.
    let natpmp = FakeServer::start(|_, req| Some(vec![0, 128 | (req[1] & 0x7f), 0, 1, 0, 0, 0, 5]));
    let e = announce(natpmp.addr, Some(LOCAL), soon()).unwrap_err();
    assert!(
        matches!(e, PcpClientError::NatPmpOnly { result_code: 1, .. }),
        "{e}"
    );

    let refusing = FakeServer::start(|_, req| {
        let Ok(Request::Map(m)) = Request::parse(req) else {
            return None;
        };
        Some(answer(&m, ResultCode::NoResources, 30))
    });
    let e = map(refusing.addr, spec(random_nonce()), soon()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "PCP server {}: the PCP server refused: NO_RESOURCES (8)",
            refusing.addr
        )) && text.contains("30 s"),
        "{text}"
    );

    // A port nothing listens on: ICMP port unreachable, at once.
    let closed = {
        let s = UdpSocket::bind((LOCAL, 0)).unwrap();
        s.local_addr().unwrap()
    };
    let started = Instant::now();
    let e = announce(closed, Some(LOCAL), soon()).unwrap_err();
    assert!(matches!(e, PcpClientError::NoServer { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_millis(500));

    // A server that never answers: the deadline.
    let silent = FakeServer::start(|_, _| None);
    let e = announce(
        silent.addr,
        Some(LOCAL),
        Instant::now() + Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(e.to_string().contains("(3 requests sent)"), "{e}");
    assert_eq!(silent.received().len(), 3);
}

#[test]
fn the_ipv6_default_route_is_read_from_proc() {
    // `ip -6 route add default via 2001:db8:1::1 dev eth0` and a link-local one with a
    // higher metric, as /proc/net/ipv6_route shows them.
    let table = "\
20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000100000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
    let (hop, dev) = default_route_v6(table).unwrap();
    assert_eq!(hop, "fe80::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(dev, "eth0");
    assert!(is_link_local(hop));
    let only_global = table.replace(
        "fe800000000000000000000000000001",
        "00000000000000000000000000000000",
    );
    assert_eq!(
        default_route_v6(&only_global).unwrap().0,
        "2001:db8:1::1".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(default_route_v6("garbage\n"), None);
    assert_eq!(server_v4(Ipv4Addr::new(192, 168, 1, 1)), server());
}
