//! A real `redis-server` for the scale-out tests, started by the test and killed on drop.
//!
//! It listens on a unix socket in a fresh temporary directory and on no TCP port
//! (`--port 0` turns TCP off), so there is no port to pick and nothing to race with other
//! tests: the socket's path is ours alone. The backend URL is `redis+unix://<path>`.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl RedisServer {
    /// Starts one, or returns `None` with a message when `redis-server` is not installed
    /// (and panics instead when `CI` is set: CI installs it).
    pub fn start(test: &str) -> Option<RedisServer> {
        if netns_sim::sys::find_in_path("redis-server").is_none() {
            let msg = "scale-out test needs redis-server (Debian package redis-server)";
            assert!(
                std::env::var_os("CI").is_none(),
                "{msg} (CI is set, so this fails)"
            );
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("p2p-redis-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(server)
    }

    /// The `--backend` URL.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// The fields of `INFO <section>` (`stats`, `commandstats`, ...), as `name -> value`.
    /// Spoken as an inline command on a fresh connection: the tests need no Redis client.
    pub fn info(&self, section: &str) -> io::Result<HashMap<String, String>> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("INFO {section}\r\n").as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let len: usize = header
            .strip_prefix('$')
            .and_then(|n| n.trim_end().parse().ok())
            .ok_or_else(|| io::Error::other(format!("INFO {section}: reply {header:?}")))?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Commands Redis has processed since it started (`INFO stats`), and of those the
    /// `EXEC`s (`INFO commandstats`): each `MULTI ... EXEC` batch is one round trip.
    pub fn command_counts(&self) -> io::Result<CommandCounts> {
        let total = self
            .info("stats")?
            .get("total_commands_processed")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("INFO stats: no total_commands_processed"))?;
        // `cmdstat_exec:calls=12,usec=...`; absent before the first EXEC.
        let exec = self
            .info("commandstats")?
            .get("cmdstat_exec")
            .and_then(|v| v.split(',').find_map(|f| f.strip_prefix("calls=")))
            .map_or(Ok(0), str::parse)
            .map_err(|e| io::Error::other(format!("INFO commandstats: cmdstat_exec: {e}")))?;
        Ok(CommandCounts { total, exec })
    }
}

/// What [`RedisServer::command_counts`] reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandCounts {
    /// Every command processed (a pipelined batch counts each of its commands).
    pub total: u64,
    /// `EXEC` calls: transactions, one round trip each.
    pub exec: u64,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
