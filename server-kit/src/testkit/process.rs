//! Run a server binary on a port the kernel picks and learn that port from its log.
//!
//! Picking a free port in the test (bind to port 0, read it, close) and passing it to a child
//! process races with every other test running in parallel: another socket can take the port
//! before the child binds it (`Address already in use`, a CI failure seen here). Instead the
//! child binds `127.0.0.1:0` itself and logs `... listening addr=IP:PORT`; [`ServerProcess`]
//! reads that line.
//!
//! ```no_run
//! use server_kit::testkit::ServerProcess;
//! // In a server crate's test: `env!("CARGO_BIN_EXE_rendezvous")`.
//! let bin = "target/debug/rendezvous";
//! let server = ServerProcess::spawn(bin, &["--idle-timeout", "30s"])?;
//! let addr = server.addr();
//! let (status, log) = server.terminate()?;
//! assert!(status.success(), "{log}");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a server binary may take to log its listening address.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A server binary started with `--listen 127.0.0.1:0`; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `bin --listen 127.0.0.1:0 <args>` with `RUST_LOG=info` and waits for its
    /// `listening addr=...` log line.
    pub fn spawn(bin: &str, args: &[&str]) -> io::Result<ServerProcess> {
        let mut command = Command::new(bin);
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        ServerProcess::spawn_command(command)
    }

    /// Starts a prepared command (which must make the server listen on a port and log
    /// `listening ... addr=IP:PORT` at info) and waits for that line.
    pub fn spawn_command(mut command: Command) -> io::Result<ServerProcess> {
        command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("child has no stderr"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let reader = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    if let Some(addr) = listening_addr(&line)
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(addr);
                    }
                    if let Ok(mut log) = log.lock() {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            })
        };
        let mut process = ServerProcess {
            child: Some(child),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
            reader: Some(reader),
        };
        if let Ok(addr) = rx.recv_timeout(START_TIMEOUT) {
            process.addr = addr;
            Ok(process)
        } else {
            let (status, log) = process.kill()?;
            Err(io::Error::other(format!(
                "server never logged its listening address ({status}): {log}"
            )))
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What the server logged so far (ANSI colours removed).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends `signal` (a `kill` name such as `-TERM`) to the process.
    pub fn signal(&self, signal: &str) -> io::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill {signal} failed: {status}")))
        }
    }

    /// Sends SIGTERM, waits for the exit and returns its status and the whole log.
    pub fn terminate(mut self) -> io::Result<(ExitStatus, String)> {
        self.signal("-TERM")?;
        self.wait()
    }

    /// Kills the process (SIGKILL), waits and returns its status and the whole log.
    pub fn kill(mut self) -> io::Result<(ExitStatus, String)> {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        self.wait()
    }

    fn wait(&mut self) -> io::Result<(ExitStatus, String)> {
        let status = match self.child.take() {
            Some(mut child) => child.wait()?,
            None => return Err(io::Error::other("already waited for")),
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok((status, self.log()))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The address in a `... listening ... addr=IP:PORT ...` log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_in_plain_and_coloured_lines() {
        let plain =
            "2026-12-01T06:39:58Z  INFO x::driver: rendezvous listening addr=127.0.0.1:36037";
        assert_eq!(
            listening_addr(plain),
            Some("127.0.0.1:36037".parse().unwrap())
        );
        let coloured = "\u{1b}[2mts\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m dht-msg listening \
                        \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:39711 \u{1b}[3mpersistent";
        assert_eq!(
            listening_addr(&strip_ansi(coloured)),
            Some("127.0.0.1:39711".parse().unwrap())
        );
        assert_eq!(listening_addr("shutting down addr=1.2.3.4:5"), None);
    }
}
