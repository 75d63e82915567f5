//! [`MetricsEndpoint`]: `GET /metrics` on a port of its own, served by one helper thread.
//!
//! Scrapes are rare (every 15 s or so) and short, so one thread answers them one after the
//! other with blocking sockets and a deadline per request: a client that sends nothing holds
//! it for at most [`REQUEST_DEADLINE`]. It never touches the event loop of a server.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, info, warn};
use wire::http::{DEFAULT_MAX_HEAD_BYTES, Request, Response};

use super::{Exposition, process};

/// What `GET /metrics` is answered with (the `OpenMetrics` text format, which Prometheus
/// negotiates and parses).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// How long one scrape may take to send its request and read the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// Adds one server's families to a scrape (reads its published counters).
pub type MetricsSource = Box<dyn Fn(&mut Exposition) + Send + Sync>;

/// An HTTP endpoint serving `GET /metrics`: the process figures (see [`process`]) and every
/// source's families. Stopped and joined on drop.
#[derive(Debug)]
pub struct MetricsEndpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Binds `addr` (port 0: any) and serves on a new thread. Errors name the address:
    /// `cannot serve metrics on 0.0.0.0:9464: Address already in use`.
    pub fn start(addr: SocketAddr, sources: Vec<MetricsSource>) -> io::Result<MetricsEndpoint> {
        let listener = crate::bind_listener(addr).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = AtomicU64::new(0);
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        match stream {
                            Ok(stream) => {
                                scrapes.fetch_add(1, Ordering::Relaxed);
                                if let Err(e) = answer(stream, &sources, &scrapes) {
                                    debug!("metrics request failed: {e}");
                                }
                            }
                            Err(e) => {
                                warn!("metrics endpoint: accept failed: {e}");
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                })?
        };
        info!(addr = %addr, "metrics endpoint listening: GET http://{addr}/metrics");
        Ok(MetricsEndpoint {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; the thread sees the flag and ends.
        let _ = TcpStream::connect_timeout(&self.addr, REQUEST_DEADLINE);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request head and answers it.
fn answer(mut stream: TcpStream, sources: &[MetricsSource], scrapes: &AtomicU64) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_DEADLINE))?;
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let request = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        match Request::parse(&head, DEFAULT_MAX_HEAD_BYTES) {
            Err(e) if e.is_partial() => {}
            other => break other,
        }
    };
    let response = match request {
        Err(e) => Response::text(e.status().unwrap_or(400), format!("{e}\n")),
        Ok(r) if r.method != "GET" => {
            Response::text(405, "only GET is served\n").with_header("Allow", "GET")
        }
        Ok(r) if r.path == "/metrics" => {
            let mut out = Exposition::default();
            out.counter(
                "metrics_scrapes",
                "Requests to this metrics endpoint.",
                scrapes.load(Ordering::Relaxed),
            );
            process::encode(&mut out);
            for source in sources {
                source(&mut out);
            }
            Response::new(200, CONTENT_TYPE, out.render())
        }
        Ok(r) if r.path == "/" => Response::text(200, "metrics: GET /metrics\n"),
        Ok(r) => Response::text(404, format!("not found: {} (try /metrics)\n", r.path)),
    };
    stream.write_all(&response.render())?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}
