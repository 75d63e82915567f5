//! What the servers' Redis backends share (feature `redis`): opening a client from a
//! `--backend` URL with a clear error, connections with deadlines, and a [`Subscription`]: a
//! helper thread that listens on pub/sub channels, hands what arrives to the event loop through
//! a channel and [`Wake`], and after every (re)connect reloads the full state so that nothing
//! published while it was away is missed.
//!
//! The blocking API of the `redis` crate is used, never an async runtime: the event loop never
//! waits for Redis except where a server chooses to (dht-msg's commit, see its docs).
//!
//! URLs: `redis://HOST:PORT[/DB]`, `redis://:PASSWORD@HOST:PORT`, `redis+unix:///PATH`
//! (or `unix:///PATH`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{info, warn};

use crate::core::Wake;

/// How long a connect, a read or a write to Redis may take before it counts as failed.
pub const REDIS_DEADLINE: Duration = Duration::from_secs(5);
/// How long a starting instance waits for the shared backend's full state
/// ([`Subscription::start_loaded`]).
pub const FIRST_LOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// At most this many notices per [`Subscription::feed`]: while other instances publish faster
/// than this one applies, its loop still serves its own clients between batches.
pub const FEED_BATCH: usize = 256;
/// How long the subscriber waits before connecting again after a failure.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often the subscriber looks up from a quiet channel to see whether it should stop.
const POLL_STOP_INTERVAL: Duration = Duration::from_millis(200);

/// What can go wrong with a backend.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The `--backend` URL is not one the servers can use.
    #[error("bad --backend {url:?}: {reason} (expected redis://HOST:PORT or redis+unix:///PATH)")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis refused or failed a command, or could not be reached.
    #[error("redis at {url}: {what}: {source}")]
    Redis {
        /// The URL (without a password).
        url: String,
        /// What was being done.
        what: String,
        /// The client's error.
        source: redis::RedisError,
    },
    /// Stored data does not decode (written by something else, or another version).
    #[error("redis at {url}: corrupt record {key}: {detail}")]
    Corrupt {
        /// The URL (without a password).
        url: String,
        /// The key or field.
        key: String,
        /// What was wrong.
        detail: String,
    },
}

/// A Redis server the backends talk to.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    client: redis::Client,
    /// The URL without a password, for logs and errors.
    shown: String,
}

impl RedisBackend {
    /// Parses a `--backend` URL (nothing is connected yet).
    pub fn open(url: &str) -> Result<RedisBackend, BackendError> {
        let scheme = url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "redis" | "redis+unix" | "unix") {
            return Err(BackendError::BadUrl {
                url: url.to_owned(),
                reason: format!("unsupported scheme {scheme:?}"),
            });
        }
        let client = redis::Client::open(url).map_err(|e| BackendError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(RedisBackend {
            client,
            shown: hide_password(url),
        })
    }

    /// The URL, password hidden.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// A new connection whose reads and writes time out after [`REDIS_DEADLINE`].
    pub fn connect(&self) -> Result<redis::Connection, BackendError> {
        let conn = self
            .client
            .get_connection_with_timeout(REDIS_DEADLINE)
            .map_err(|e| self.error("connect", e))?;
        conn.set_read_timeout(Some(REDIS_DEADLINE))
            .and_then(|()| conn.set_write_timeout(Some(REDIS_DEADLINE)))
            .map_err(|e| self.error("set timeouts", e))?;
        Ok(conn)
    }

    /// A [`BackendError::Redis`] for this server.
    pub fn error(&self, what: &str, source: redis::RedisError) -> BackendError {
        BackendError::Redis {
            url: self.shown.clone(),
            what: what.to_owned(),
            source,
        }
    }

    /// A [`BackendError::Corrupt`] for this server.
    pub fn corrupt(&self, key: &str, detail: impl Into<String>) -> BackendError {
        BackendError::Corrupt {
            url: self.shown.clone(),
            key: key.to_owned(),
            detail: detail.into(),
        }
    }
}

/// What a [`Subscription`] hands to the event loop.
#[derive(Debug)]
pub enum Notice<T> {
    /// Subscribed (again), and the full state as loaded right after: everything published
    /// before this notice is contained in it or arrives as a later message.
    Resync(T),
    /// A message published on one of the channels.
    Message {
        /// The channel.
        channel: String,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// One instance's copy of what the instances share, as a [`Subscription`] keeps it current
/// ([`Subscription::feed`]).
pub trait Replica<T> {
    /// The full state, loaded right after a (re)subscribe: it replaces the copy.
    fn resync(&mut self, now: Instant, state: T);
    /// A message published on `channel` (by any instance, this one included).
    fn message(&mut self, now: Instant, channel: &str, payload: &[u8]);
}

/// Loads the full state after (re)subscribing, on the subscriber thread.
pub type Loader<T> = Box<dyn FnMut(&RedisBackend) -> Result<T, BackendError> + Send>;

/// A pub/sub listener on a helper thread (see the module docs). Stopped and joined on drop.
#[derive(Debug)]
pub struct Subscription<T> {
    rx: mpsc::Receiver<Notice<T>>,
    wake: Arc<OnceLock<Wake>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Subscription<T> {
    /// Subscribes to `channels` on a new thread; once [`set_wake`](Self::set_wake) was
    /// called, every notice is followed by a wake-up of the loop. The first notice is a
    /// [`Notice::Resync`] (wait for it with [`Subscription::first_resync`]).
    pub fn start(
        backend: RedisBackend,
        channels: Vec<String>,
        mut load: Loader<T>,
    ) -> std::io::Result<Subscription<T>> {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let wake: Arc<OnceLock<Wake>> = Arc::new(OnceLock::new());
        let thread = {
            let stop = Arc::clone(&stop);
            let wake = Arc::clone(&wake);
            std::thread::Builder::new()
                .name("redis-sub".into())
                .spawn(move || {
                    let mut failures = 0u32;
                    while !stop.load(Ordering::SeqCst) {
                        match listen(&backend, &channels, &mut load, &tx, &wake, &stop) {
                            Ok(()) => return,
                            Err(e) => {
                                failures += 1;
                                if failures == 1 || failures.is_power_of_two() {
                                    warn!(failures, "redis subscription lost: {e}; reconnecting");
                                }
                                std::thread::sleep(RECONNECT_DELAY);
                            }
                        }
                    }
                })?
        };
        Ok(Subscription {
            rx,
            wake,
            stop,
            thread: Some(thread),
        })
    }

    /// [`start`](Self::start), then waits up to [`FIRST_LOAD_TIMEOUT`] for the state to start
    /// from; the error names the backend.
    pub fn start_loaded(
        backend: &RedisBackend,
        channels: Vec<String>,
        load: Loader<T>,
    ) -> std::io::Result<(Subscription<T>, T)> {
        let subscription = Subscription::start(backend.clone(), channels, load)?;
        let state = subscription
            .first_resync(FIRST_LOAD_TIMEOUT)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "shared backend {}: no state loaded within {FIRST_LOAD_TIMEOUT:?}",
                    backend.url()
                ))
            })?;
        Ok((subscription, state))
    }

    /// Hands the notices that arrived since the last call to `replica`, in order, at most
    /// [`FEED_BATCH`]; when that many were handed, the loop is woken again for the rest (a
    /// drain-everything loop would never return while others publish faster than this
    /// instance applies, and its own clients would wait meanwhile).
    pub fn feed(&self, now: Instant, replica: &mut impl Replica<T>) {
        for _ in 0..FEED_BATCH {
            let Ok(notice) = self.rx.try_recv() else {
                return;
            };
            match notice {
                Notice::Resync(state) => replica.resync(now, state),
                Notice::Message { channel, payload } => replica.message(now, &channel, &payload),
            }
        }
        if let Some(wake) = self.wake.get() {
            wake.wake();
        }
    }

    /// Waits up to `timeout` for the first [`Notice::Resync`] (the state to start from).
    pub fn first_resync(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Notice::Resync(state)) => return Some(state),
                Ok(Notice::Message { .. }) => {}
                Err(_) => return None,
            }
        }
    }

    /// From now on, wake the loop through `wake` after every notice.
    pub fn set_wake(&self, wake: Wake) {
        let _ = self.wake.set(wake);
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection's life: subscribe, load, forward messages. `Ok` when asked to stop or the
/// loop is gone.
fn listen<T>(
    backend: &RedisBackend,
    channels: &[String],
    load: &mut Loader<T>,
    tx: &mpsc::Sender<Notice<T>>,
    wake: &OnceLock<Wake>,
    stop: &AtomicBool,
) -> Result<(), BackendError> {
    let mut conn = backend.connect()?;
    let mut pubsub = conn.as_pubsub();
    pubsub
        .subscribe(channels)
        .map_err(|e| backend.error("SUBSCRIBE", e))?;
    pubsub
        .set_read_timeout(Some(POLL_STOP_INTERVAL))
        .map_err(|e| backend.error("set timeouts", e))?;
    let state = load(backend)?;
    info!(
        url = backend.url(),
        ?channels,
        "subscribed to the shared backend"
    );
    if tx.send(Notice::Resync(state)).is_err() {
        return Ok(());
    }
    if let Some(wake) = wake.get() {
        wake.wake();
    }
    while !stop.load(Ordering::SeqCst) {
        match pubsub.get_message() {
            Ok(msg) => {
                let notice = Notice::Message {
                    channel: msg.get_channel_name().to_owned(),
                    payload: msg.get_payload_bytes().to_vec(),
                };
                if tx.send(notice).is_err() {
                    return Ok(());
                }
                if let Some(wake) = wake.get() {
                    wake.wake();
                }
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(backend.error("reading pub/sub", e)),
        }
    }
    Ok(())
}

/// `url` with any password replaced by `***`.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((auth, host)) if auth.contains(':') => {
            let user = auth.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Count(usize);

    impl Replica<()> for Count {
        fn resync(&mut self, _now: Instant, (): ()) {}
        fn message(&mut self, _now: Instant, _channel: &str, _payload: &[u8]) {
            self.0 += 1;
        }
    }

    #[test]
    fn feed_hands_at_most_a_batch_per_call() {
        let (tx, rx) = mpsc::channel();
        let subscription = Subscription {
            rx,
            wake: Arc::new(OnceLock::new()),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        for _ in 0..FEED_BATCH + 10 {
            let notice = Notice::Message {
                channel: "c".into(),
                payload: Vec::new(),
            };
            tx.send(notice).unwrap();
        }
        let mut count = Count::default();
        subscription.feed(Instant::now(), &mut count);
        assert_eq!(count.0, FEED_BATCH);
        subscription.feed(Instant::now(), &mut count);
        assert_eq!(count.0, FEED_BATCH + 10);
    }

    #[test]
    fn urls_are_checked_and_passwords_hidden() {
        assert!(RedisBackend::open("redis://127.0.0.1:6379").is_ok());
        assert!(RedisBackend::open("redis+unix:///tmp/r.sock").is_ok());
        let err = RedisBackend::open("http://127.0.0.1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported scheme \"http\""), "{err}");
        let b = RedisBackend::open("redis://:s3cret@127.0.0.1:6379/2").unwrap();
        assert_eq!(b.url(), "redis://:***@127.0.0.1:6379/2");
    }
}
