//! Limits and lifetimes of a mailbox server, with the defaults `--help` documents.

use std::path::PathBuf;
use std::time::Duration;

/// Everything tunable about a `dht-msg` server. `Config::default()` is what the binary runs with
/// when no flag is given.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Open connections at once; more are answered `ERROR server full` and closed.
    pub max_connections: usize,
    /// Open connections from one IP at once.
    pub max_connections_per_ip: usize,
    /// Longest message, in bytes. A longer `PUT` is refused with an error (the connection stays).
    pub max_message_bytes: usize,
    /// Messages one mailbox may hold; a `PUT` to a full mailbox is refused (nothing is dropped).
    pub max_messages_per_mailbox: usize,
    /// Message bytes one mailbox may hold.
    pub max_mailbox_bytes: usize,
    /// Bytes of messages and registrations the whole server may hold (an estimate including
    /// bookkeeping); past it, `PUT` and new registrations are refused.
    pub max_stored_bytes: usize,
    /// Mailboxes the server may hold.
    pub max_mailboxes: usize,
    /// How long an undelivered (un-ACKed) message is kept (PyP2P: 24 h).
    pub message_ttl: Duration,
    /// A mailbox whose owner has not been seen (REGISTER, SUBSCRIBE, LIST, ACK, or an HTTP call
    /// with its password) for this long is removed, with its messages.
    pub mailbox_ttl: Duration,
    /// Sustained `PUT`s per second from one IP (a token bucket).
    pub put_rate_per_ip: f64,
    /// `PUT`s one IP may send in a burst above the sustained rate.
    pub put_burst_per_ip: u32,
    /// Sustained registrations (new mailboxes and failed secret checks) per second from one IP.
    pub register_rate_per_ip: f64,
    /// Registrations one IP may make in a burst.
    pub register_burst_per_ip: u32,
    /// Sustained signed registrations (`REGISTER_KEY`) per second by one key, whatever the
    /// IP it comes from.
    pub register_rate_per_key: f64,
    /// Signed registrations one key may make in a burst.
    pub register_burst_per_key: u32,
    /// The server's name in a `CHALLENGE` (`host:port`, as clients dial it; signed by the
    /// client, so a proof made for this server is worthless to another). `None`: the address
    /// each client dialed (`ip:port`, `[v6]:port`).
    pub name: Option<String>,
    /// Close a connection after this long without a complete line (subscribers too: clients
    /// send `PING` to stay connected).
    pub idle_timeout: Duration,
    /// Unread output kept for a client that does not read; past it, it is disconnected (its
    /// un-ACKed messages stay stored and are pushed again on its next `SUBSCRIBE`).
    pub max_output_bytes: usize,
    /// Malformed lines tolerated per connection (each answered with `ERROR`) before closing it.
    pub max_bad_lines: u32,
    /// Longest an HTTP `list` may wait for a message when it asks to (`&wait=<seconds>`, our
    /// extension; PyP2P's clients never wait).
    pub max_list_wait: Duration,
    /// Where mailboxes and pending messages are kept across restarts (a redb database);
    /// `None` keeps everything in memory only.
    pub data_dir: Option<PathBuf>,
    /// A Redis URL (`redis://HOST:PORT`, `redis+unix:///PATH`) shared with other instances
    /// (see [`crate::shared`]); `None`: this instance alone (memory or `data_dir`).
    pub backend: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: 10_000,
            max_connections_per_ip: 64,
            max_message_bytes: 8 * 1024,
            max_messages_per_mailbox: 256,
            max_mailbox_bytes: 256 * 1024,
            max_stored_bytes: 256 * 1024 * 1024,
            max_mailboxes: 100_000,
            message_ttl: Duration::from_hours(24),
            mailbox_ttl: Duration::from_hours(7 * 24),
            put_rate_per_ip: 50.0,
            put_burst_per_ip: 200,
            register_rate_per_ip: 1.0,
            register_burst_per_ip: 20,
            register_rate_per_key: 1.0,
            register_burst_per_key: 10,
            name: None,
            idle_timeout: Duration::from_mins(5),
            max_output_bytes: 1024 * 1024,
            max_bad_lines: 16,
            max_list_wait: Duration::from_secs(30),
            data_dir: None,
            backend: None,
        }
    }
}

impl Config {
    /// Longest line accepted: a `PUT` of the largest allowed message, plus the verb and id.
    /// A longer line closes the connection (a merely oversized message gets an `ERROR`).
    pub fn max_line_bytes(&self) -> usize {
        self.max_message_bytes + 256
    }

    /// Longest HTTP request head accepted: a percent-encoded message (3 bytes per byte) plus
    /// room for the other parameters and headers.
    pub fn max_http_head_bytes(&self) -> usize {
        self.max_message_bytes * 3 + 8 * 1024
    }

    /// Checks that the limits fit together: one message fits in a line, and the output cap holds
    /// a whole mailbox (what `LIST` sends at once) and two of the largest pushes.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_message_bytes == 0 {
            return Err("max_message_bytes must be at least 1".into());
        }
        if let Some(name) = &self.name {
            let line = format!("CHALLENGE {name} {}", "0".repeat(64));
            if line.parse::<wire::signal::RegisterChallenge>().is_err() {
                return Err(format!(
                    "name {name:?} is not a server name: 1..={} characters of \
                     [A-Za-z0-9.:[]-], e.g. mailbox.example.net:8090 or [2001:db8::2]:8090",
                    wire::signal::MAX_SERVER_NAME_BYTES
                ));
            }
        }
        let list_bytes = self.max_mailbox_bytes
            + self.max_messages_per_mailbox * MSG_LINE_OVERHEAD_BYTES
            + MSG_LINE_OVERHEAD_BYTES;
        let push_bytes = 2 * (self.max_message_bytes + MSG_LINE_OVERHEAD_BYTES);
        let need = list_bytes.max(push_bytes);
        if self.max_output_bytes < need {
            return Err(format!(
                "max_output_bytes ({}) must be at least {need}: a full mailbox ({} bytes in {} \
                 messages, ~{MSG_LINE_OVERHEAD_BYTES} bytes of framing each) is sent at once by LIST",
                self.max_output_bytes, self.max_mailbox_bytes, self.max_messages_per_mailbox
            ));
        }
        Ok(())
    }
}

/// Bytes a `MSG <id> <from> ...\r\n` line adds around a message body, at most.
pub const MSG_LINE_OVERHEAD_BYTES: usize = 96;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_name_must_fit_a_challenge() {
        for good in [
            "mailbox.example.net:8090",
            "[2001:db8::2]:8090",
            "192.0.2.1:8090",
        ] {
            let config = Config {
                name: Some(good.into()),
                ..Config::default()
            };
            assert_eq!(config.validate(), Ok(()), "{good}");
        }
        let err = Config {
            name: Some("has space".into()),
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            err.starts_with("name \"has space\" is not a server name"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_consistent_and_a_tiny_output_cap_is_refused() {
        assert_eq!(Config::default().validate(), Ok(()));
        let err = Config {
            max_output_bytes: 1000,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            err.starts_with("max_output_bytes (1000) must be at least "),
            "{err}"
        );
    }
}
