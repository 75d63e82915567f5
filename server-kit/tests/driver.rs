//! The driver over real loopback sockets, with a tiny line-protocol core: `PING` → `PONG`,
//! `BYE` → `ERROR bye` and a close, `DIAL <port>` → a dial to 127.0.0.1:port reported as
//! `DIALED ok` or `DIALED <error kind>` (`DIAL <ip:port>`: to that address), `WHO` →
//! `YOU <peer> ME <local>` (the addresses the driver handed the core).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use server_kit::{
    Admission, ConnId, DialId, LINGER, Output, RunningServer, ServerCore, Service, Slab,
};
use wire::line::LineFramer;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    framer: LineFramer,
    out: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    accepted: u64,
    refused: u64,
    lines: u64,
}

#[derive(Debug)]
struct Echo {
    conns: Slab<Conn>,
    admission: Admission,
    outputs: VecDeque<Output>,
    lines: u64,
}

impl Echo {
    fn send(&mut self, id: ConnId, line: &str) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.out.extend_from_slice(format!("{line}\r\n").as_bytes());
            self.outputs.push_back(Output::Flush(id));
        }
    }

    fn close(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get(id) {
            self.admission.release(conn.peer.ip());
            self.outputs.push_back(Output::Close(id));
        }
    }
}

impl ServerCore for Echo {
    type Stats = Stats;
    const NAME: &'static str = "echo";

    fn handle_open(
        &mut self,
        _now: Instant,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<ConnId, Vec<u8>> {
        self.admission
            .admit(peer.ip())
            .map_err(|refusal| refusal.error_line())?;
        Ok(self.conns.insert(Conn {
            peer,
            local,
            framer: LineFramer::new(64),
            out: Vec::new(),
        }))
    }

    fn handle_bytes(&mut self, _now: Instant, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.framer.push(bytes);
        let mut lines = Vec::new();
        while let Some(line) = conn.framer.next_str() {
            lines.push(line.map(str::to_owned).unwrap_or_default());
        }
        for line in lines {
            self.lines += 1;
            match line.split_once(' ') {
                _ if line == "PING" => self.send(id, "PONG"),
                _ if line == "WHO" => {
                    let who = self
                        .conns
                        .get(id)
                        .map(|c| format!("YOU {} ME {}", c.peer, c.local))
                        .unwrap_or_default();
                    self.send(id, &who);
                }
                _ if line == "BYE" => {
                    self.send(id, "ERROR bye");
                    self.close(id);
                    return;
                }
                Some(("DIAL", to)) => self.outputs.push_back(Output::Dial {
                    dial: DialId(id.0),
                    addr: to.parse().unwrap_or_else(|_| {
                        SocketAddr::from(([127, 0, 0, 1], to.parse().unwrap()))
                    }),
                }),
                _ => self.send(id, "ERROR what?"),
            }
        }
    }

    fn handle_eof(&mut self, _now: Instant, id: ConnId) {
        self.close(id);
    }

    fn handle_failed(&mut self, _now: Instant, id: ConnId, _error: &io::Error) {
        self.close(id);
    }

    fn handle_written(&mut self, _now: Instant, id: ConnId, n: usize) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.out.drain(..n);
        }
    }

    fn handle_closed(&mut self, id: ConnId) {
        self.conns.remove(id);
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn handle_shutdown(&mut self, _now: Instant) {
        for id in self.conns.ids() {
            self.close(id);
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn pending_output(&self, id: ConnId) -> &[u8] {
        self.conns.get(id).map_or(&[], |c| &c.out)
    }

    fn stats(&self) -> Stats {
        Stats {
            accepted: self.admission.accepted(),
            refused: self.admission.refused(),
            lines: self.lines,
        }
    }

    fn handle_dial(&mut self, _now: Instant, dial: DialId, result: io::Result<()>) {
        match result {
            Ok(()) => self.send(ConnId(dial.0), "DIALED ok"),
            Err(e) => self.send(ConnId(dial.0), &format!("DIALED {:?}", e.kind())),
        }
    }
}

impl Service for Echo {
    /// The connection cap.
    type Config = usize;

    fn build(max_connections: usize, _now: Instant) -> io::Result<Echo> {
        Ok(Echo {
            conns: Slab::default(),
            admission: Admission::new(max_connections, max_connections),
            outputs: VecDeque::new(),
            lines: 0,
        })
    }
}

fn start(max_connections: usize) -> RunningServer<Echo> {
    RunningServer::start("127.0.0.1:0".parse().unwrap(), max_connections).unwrap()
}

fn connect(server: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(server).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

fn ask(reader: &mut BufReader<TcpStream>, line: &str) -> String {
    reader
        .get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    answer.trim_end().to_owned()
}

#[test]
fn a_last_reply_is_read_in_full_although_the_client_sent_much_more() {
    let server = start(16);
    let mut request = b"PING\r\nBYE\r\n".to_vec();
    request.extend(b"unread\r\n".repeat(40_000)); // 320 KB the core never looks at
    for round in 0..10 {
        let mut stream = connect(server.addr());
        stream.write_all(&request).unwrap();
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("round {round}: {e} after {answer:?}"));
        assert_eq!(answer, "PONG\r\nERROR bye\r\n", "round {round}");
    }
    let stats = server.stop().unwrap();
    assert_eq!(stats.accepted, 10);
}

#[test]
fn a_client_that_never_closes_is_dropped_after_the_linger() {
    let server = start(16);
    let mut stream = connect(server.addr());
    stream.write_all(b"BYE\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "ERROR bye\r\n", "the reply, then the server's FIN");
    let closed_at = Instant::now();
    // While it lingers the server reads and drops what the client sends; then it closes the
    // socket, and the client's writes fail (a reset answers them).
    let failed = loop {
        if stream.write_all(&[b'x'; 1024]).is_err() {
            break closed_at.elapsed();
        }
        assert!(closed_at.elapsed() < LINGER * 3, "still lingering");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        failed >= LINGER / 2,
        "dropped after {failed:?}, before the linger"
    );
}

#[test]
fn a_refused_client_is_told_why() {
    let server = start(1);
    let mut first = BufReader::new(connect(server.addr()));
    assert_eq!(ask(&mut first, "PING"), "PONG");
    let mut second = connect(server.addr());
    let mut answer = String::new();
    second.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "ERROR server full (1 connections), try later\r\n");
    drop(first);
    let stats = server.stop().unwrap();
    assert_eq!((stats.accepted, stats.refused), (1, 1));
}

#[test]
fn dials_report_a_handshake_and_a_refusal() {
    let server = start(16);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut client = BufReader::new(connect(server.addr()));
    assert_eq!(ask(&mut client, &format!("DIAL {open}")), "DIALED ok");
    listener.accept().unwrap();
    assert_eq!(
        ask(&mut client, &format!("DIAL {closed}")),
        "DIALED ConnectionRefused"
    );
}

#[test]
fn shutdown_closes_connections_and_returns_the_counters() {
    let server = start(16);
    let mut client = BufReader::new(connect(server.addr()));
    assert_eq!(ask(&mut client, "PING"), "PONG");
    assert_eq!(ask(&mut client, "nonsense"), "ERROR what?");
    let stats = server.stop().unwrap();
    assert_eq!((stats.accepted, stats.lines), (1, 2));
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed without a word");
}

#[test]
fn a_dual_stack_listener_hands_the_core_canonical_addresses_of_both_families() {
    let server = RunningServer::<Echo>::start("[::]:0".parse().unwrap(), 16).unwrap();
    let port = server.addr().port();
    for ip in ["127.0.0.1", "::1"] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let stream = connect(SocketAddr::new(ip, port));
        let me = stream.local_addr().unwrap();
        let mut client = BufReader::new(stream);
        // The IPv4 client is 127.0.0.1, not ::ffff:127.0.0.1, on both ends.
        assert_eq!(
            ask(&mut client, "WHO"),
            format!("YOU {me} ME {}", SocketAddr::new(ip, port))
        );
    }
    // Dials go to either family too.
    let listener = TcpListener::bind("[::1]:0").unwrap();
    let mut client = BufReader::new(connect(server.addr()));
    let to = listener.local_addr().unwrap();
    assert_eq!(ask(&mut client, &format!("DIAL {to}")), "DIALED ok");
    listener.accept().unwrap();
}
