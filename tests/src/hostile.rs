//! Helpers for the hostile-peer suite (`tests/tests/hostile_*.rs`) and the `hostile-peer`
//! binary: clients bound to chosen loopback addresses (so per-IP limits apply as in the wild),
//! victim latency measurement, and attackers running on their own threads.
//!
//! Every scenario measures a victim client's request latency before and during the attack and
//! prints one line starting with `HOSTILE` (run the tests with `--nocapture` to see them).

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

pub mod signed;

/// How long any single read or connect in these helpers may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound every scenario asserts for the victim: served within this, attack or not.
pub const VICTIM_BOUND: Duration = Duration::from_secs(2);

/// A loopback address `127.0.0.<n>`.
pub fn lo(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A TCP connection from `local` (port chosen by the kernel) to `server`, with read and write
/// timeouts of [`IO_TIMEOUT`]. `recv_buffer`: a small `SO_RCVBUF`, for clients that should
/// stop reading early.
pub fn connect_from_with(
    local: IpAddr,
    server: SocketAddr,
    recv_buffer: Option<usize>,
) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes)?;
    }
    socket.bind(&SocketAddr::new(local, 0).into())?;
    socket.connect_timeout(&server.into(), IO_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// [`connect_from_with`] without a receive-buffer change.
pub fn connect_from(local: IpAddr, server: SocketAddr) -> io::Result<TcpStream> {
    connect_from_with(local, server, None)
}

/// A third party listening on `ip`: whoever connects to it is accepted and the first bytes
/// it sends (up to 256, within a second) recorded, one entry per connection.
///
/// # Panics
/// If it cannot listen.
pub fn third_party(ip: IpAddr) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = std::net::TcpListener::bind((ip, 0)).expect("a listener");
    let addr = listener.local_addr().expect("its address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut first = [0u8; 256];
            let n = s.read(&mut first).unwrap_or(0);
            if let Ok(mut seen) = record.lock() {
                seen.push(first[..n].to_vec());
            }
        }
    });
    (addr, seen)
}

/// A line-protocol client (rendezvous, dht-msg, a node's plain lines).
#[derive(Debug)]
pub struct LineClient {
    reader: BufReader<TcpStream>,
}

impl LineClient {
    /// Connects from `local` to `server`.
    pub fn connect(local: IpAddr, server: SocketAddr) -> io::Result<LineClient> {
        Ok(LineClient::from_stream(connect_from(local, server)?))
    }

    /// Wraps an open stream.
    pub fn from_stream(stream: TcpStream) -> LineClient {
        LineClient {
            reader: BufReader::new(stream),
        }
    }

    /// The stream.
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Sends `line` with `\r\n`.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.reader.get_mut().write_all(&bytes)
    }

    /// The next line without its terminator; an error at EOF or after [`IO_TIMEOUT`].
    pub fn recv(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Sends `line`, returns the next line.
    pub fn ask(&mut self, line: &str) -> io::Result<String> {
        self.send(line)?;
        self.recv()
    }

    /// Whether the server closes (or resets) this connection within `timeout`, discarding what
    /// it still sends.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let Ok(mut stream) = self.reader.get_ref().try_clone() else {
            return true;
        };
        closed_within(&mut stream, timeout)
    }
}

/// Reads (and discards) until EOF or a reset within `timeout`: true if the peer closed.
pub fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = stream.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Request latencies of a victim client.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    samples: Vec<Duration>,
}

impl Latency {
    /// Times `n` calls of `request` (each must succeed).
    ///
    /// # Panics
    /// If a request fails.
    pub fn measure(n: usize, mut request: impl FnMut() -> io::Result<()>) -> Latency {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            if let Err(e) = request() {
                panic!("victim request {i} failed: {e}");
            }
            samples.push(t.elapsed());
        }
        samples.sort_unstable();
        Latency { samples }
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.samples
            .get(self.samples.len() / 2)
            .copied()
            .unwrap_or_default()
    }

    /// The slowest.
    pub fn max(&self) -> Duration {
        self.samples.last().copied().unwrap_or_default()
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {} us, max {} us (n={})",
            self.p50().as_micros(),
            self.max().as_micros(),
            self.samples.len()
        )
    }
}

/// Prints the scenario's line and asserts that the victim stayed within [`VICTIM_BOUND`].
///
/// # Panics
/// If a victim request during the attack took longer than the bound.
pub fn report(server: &str, scenario: &str, before: &Latency, during: &Latency, note: &str) {
    println!("HOSTILE {server} / {scenario}: victim before: {before}; during: {during}; {note}");
    assert!(
        during.max() < VICTIM_BOUND,
        "{server} / {scenario}: the victim waited {:?} during the attack",
        during.max()
    );
}

/// An attack running on its own thread until stopped; counts what it did.
#[derive(Debug)]
pub struct Attack {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Attack {
    /// Runs `round` again and again (with the round number) until stopped; the attack counts
    /// the units each round reports.
    ///
    /// # Panics
    /// If the thread cannot be started.
    pub fn start(mut round: impl FnMut(u64) -> u64 + Send + 'static) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            std::thread::Builder::new()
                .name("attacker".into())
                .spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        count.fetch_add(round(i), Ordering::Relaxed);
                        i += 1;
                    }
                })
                .expect("an attacker thread")
        };
        Attack {
            stop,
            count,
            thread: Some(thread),
        }
    }

    /// What the attack counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops it and returns its count. An assertion that failed in the attacker fails here.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && let Err(panic) = t.join()
        {
            std::panic::resume_unwind(panic);
        }
        self.count()
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A greedy client: writes `burst` again and again as fast as the socket takes it, and reads
/// (and counts) everything sent back, so that no output limit of the server applies to it.
#[derive(Debug)]
pub struct Greedy {
    stream: TcpStream,
    writer: Option<Attack>,
    reader: Option<JoinHandle<u64>>,
}

impl Greedy {
    /// Connects from `local` to `server` and starts writing `line` (with its terminator),
    /// `per_burst` times per write.
    pub fn start(
        local: IpAddr,
        server: SocketAddr,
        line: &[u8],
        per_burst: usize,
    ) -> io::Result<Greedy> {
        let stream = connect_from(local, server)?;
        let mut reader = stream.try_clone()?;
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            total
        });
        let mut w = stream.try_clone()?;
        let burst = line.repeat(per_burst);
        let writer =
            Attack::start(move |_| u64::from(w.write_all(&burst).is_ok()) * per_burst as u64);
        Ok(Greedy {
            stream,
            writer: Some(writer),
            reader: Some(reader),
        })
    }

    /// Stops writing; returns how many lines were written.
    pub fn stop_writing(&mut self) -> u64 {
        self.writer.take().map_or(0, Attack::stop)
    }

    /// Stops writing, closes, and returns how many bytes were read back.
    ///
    /// # Panics
    /// If the reading thread panicked.
    pub fn close(mut self) -> u64 {
        self.stop_writing();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.reader
            .take()
            .map_or(0, |r| r.join().expect("the reader thread"))
    }
}

/// Polls `done` every 10 ms until it is true or `timeout` passes; returns whether it became
/// true.
pub fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP/1.1 `GET target` from `local` to `server`; returns the status and the body.
pub fn http_get(local: IpAddr, server: SocketAddr, target: &str) -> io::Result<(u16, String)> {
    let mut stream = connect_from(local, server)?;
    write!(stream, "GET {target} HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
