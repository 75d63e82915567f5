//! Processes started in a lab host (`Lab::spawn`): output captured, killed on drop.

use std::io::{Read, Write as _};
use std::process::{Child, ChildStdin, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::LabError;

#[derive(Debug, Default)]
pub(super) struct Captured {
    data: Mutex<CapturedData>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct CapturedData {
    stdout: String,
    stderr: String,
    open_streams: u8,
}

impl Captured {
    fn lock(&self) -> MutexGuard<'_, CapturedData> {
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(super) fn reader_thread(
    mut r: impl Read + Send + 'static,
    shared: Arc<Captured>,
    is_err: bool,
) -> JoinHandle<()> {
    shared.lock().open_streams += 1;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let mut d = shared.lock();
                    if is_err {
                        d.stderr.push_str(&text);
                    } else {
                        d.stdout.push_str(&text);
                    }
                    drop(d);
                    shared.changed.notify_all();
                }
            }
        }
        shared.lock().open_streams -= 1;
        shared.changed.notify_all();
    })
}

/// A process running inside a lab host (see [`crate::Lab::spawn`]). Killed and reaped on drop.
#[derive(Debug)]
pub struct LabChild {
    pub(super) child: Child,
    pub(super) host: String,
    pub(super) cmd: String,
    pub(super) shared: Arc<Captured>,
    pub(super) readers: Vec<JoinHandle<()>>,
}

impl LabChild {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The host it runs on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Its standard input.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.child.stdin.as_mut()
    }

    /// Writes `line` and a newline to its standard input.
    pub fn send_line(&mut self, line: &str) -> Result<(), LabError> {
        let err = |source| LabError::Process {
            host: self.host.clone(),
            cmd: self.cmd.clone(),
            source,
        };
        let stdin = self.child.stdin.as_mut().ok_or_else(|| {
            err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdin closed",
            ))
        })?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(err)
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.shared.lock().stdout.clone()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.shared.lock().stderr.clone()
    }

    /// Waits until a line of its stdout contains `needle`; returns that line. Fails on
    /// timeout or when its stdout closes first.
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> Result<String, LabError> {
        let deadline = Instant::now() + timeout;
        let mut d = self.shared.lock();
        loop {
            if let Some(line) = d.stdout.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            let now = Instant::now();
            if now >= deadline || d.open_streams == 0 {
                let why = if d.open_streams == 0 {
                    "output closed"
                } else {
                    "no match"
                };
                return Err(LabError::Timeout {
                    what: format!(
                        "{needle:?} in stdout of {:?} on {:?} ({why}; stdout: {:?}; stderr: {:?})",
                        self.cmd, self.host, d.stdout, d.stderr
                    ),
                    after: timeout,
                });
            }
            d = self
                .shared
                .changed
                .wait_timeout(d, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LabError> {
        self.child.try_wait().map_err(|source| LabError::Process {
            host: self.host.clone(),
            cmd: self.cmd.clone(),
            source,
        })
    }

    /// Waits up to `timeout` for it to exit (then all its output has been collected).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("{:?} on {:?} to exit", self.cmd, self.host),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        self.kill();
    }
}
