//! The `dht-msg` command line ([`Args`]), in the library so that `p2p-server` reads the same
//! settings (its config file's `[dht-msg]` keys are these flags' names).

// The doc comments below are `--help` text, read in a terminal, not Markdown.
#![allow(clippy::doc_markdown)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use wire::units::parse_duration;

use crate::Config;

/// The signalling mailbox of the p2p toolkit: nodes leave each other short messages (such as
/// reverse-connect requests) and the owner gets them pushed the moment they arrive.
///
/// One port serves two protocols. The line protocol: REGISTER <node_id> <secret> (or
/// CHALLENGE, then REGISTER_KEY <public key> <signature> for a node with a key), SUBSCRIBE,
/// PUT <node_id> <message>, LIST, ACK <id>, PING, QUIT; the server answers OK ..., pushes
/// MSG <id> <from|-> <message>, and says ERROR <reason> for anything refused. And PyP2P's HTTP
/// API: GET /dht_msg.php?call=register|put|list|find_neighbours|last_alive&... Anyone may put a
/// message; only the owner (who knows the secret, stored hashed) reads and deletes. A full
/// mailbox refuses new messages with a reason; it never drops older ones.
///
/// Without --data-dir everything is kept in memory only and lost when the server stops.
///
/// Logs go to stderr; set RUST_LOG=debug for one line per connection event. Stop with Ctrl-C or
/// SIGTERM: pending changes are committed and connections closed.
///
/// Example: dht-msg --listen [::]:8090 --data-dir /var/lib/dht-msg
// The text above is the `--help` (clap prints it as written), not rustdoc.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Parser)]
#[command(version, max_term_width = 100)]
pub struct Args {
    /// Address and port to listen on, for both the line protocol and HTTP. `[::]:PORT`
    /// serves IPv6 and IPv4 clients on one socket; `0.0.0.0:PORT` IPv4 only.
    #[arg(long)]
    pub listen: SocketAddr,

    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g. 127.0.0.1:9465). Off by
    /// default; keep it off the public internet (firewall or a loopback address).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Keep mailboxes and undelivered messages in a redb database in this directory (created
    /// if missing), so they survive a restart; a reply "OK PUT" means the message is on disk.
    /// Without it: memory only.
    #[arg(long, conflicts_with = "backend")]
    data_dir: Option<PathBuf>,

    /// Share mailboxes and messages with other dht-msg instances through this Redis server
    /// (redis://HOST:PORT[/DB], redis://:PASSWORD@HOST:PORT, redis+unix:///PATH): a message
    /// PUT on any instance is pushed by whichever instance its owner is subscribed to, and
    /// "OK PUT" means it is in Redis. Each instance keeps a full copy in memory. Without it:
    /// this instance alone.
    #[arg(long, value_name = "URL")]
    backend: Option<String>,

    /// Connections open at once; more are answered `ERROR server full` and closed. Keep it
    /// below the process's file-descriptor limit (`ulimit -n`).
    #[arg(long, default_value_t = Config::default().max_connections)]
    max_connections: usize,

    /// Connections open at once from one IP address.
    #[arg(long, default_value_t = Config::default().max_connections_per_ip)]
    max_connections_per_ip: usize,

    /// Longest message in bytes. A longer PUT gets an ERROR (the connection stays); a line
    /// longer than this plus 256 bytes closes the connection.
    #[arg(long, default_value_t = Config::default().max_message_bytes)]
    max_message_bytes: usize,

    /// Messages one mailbox may hold until its owner acknowledges some; a PUT beyond is
    /// refused with "mailbox ... is full".
    #[arg(long, default_value_t = Config::default().max_messages_per_mailbox)]
    max_messages_per_mailbox: usize,

    /// Message bytes one mailbox may hold.
    #[arg(long, default_value_t = Config::default().max_mailbox_bytes)]
    max_mailbox_bytes: usize,

    /// Bytes the whole server may hold in messages and mailboxes (counting ~160 bytes of
    /// bookkeeping per message and ~320 per mailbox). Past it, PUT and new registrations are
    /// refused: this is the memory cap.
    #[arg(long, default_value_t = Config::default().max_stored_bytes)]
    max_stored_bytes: usize,

    /// Mailboxes the server may hold.
    #[arg(long, default_value_t = Config::default().max_mailboxes)]
    max_mailboxes: usize,

    /// How long an undelivered (unacknowledged) message is kept, e.g. 24h, 30m, 90s.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    message_ttl: Duration,

    /// A mailbox whose owner has not been seen for this long is removed with its messages.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    mailbox_ttl: Duration,

    /// Sustained PUTs per second from one IP address (token bucket).
    #[arg(long, default_value_t = Config::default().put_rate_per_ip)]
    put_rate_per_ip: f64,

    /// PUTs one IP may send in a burst above the sustained rate.
    #[arg(long, default_value_t = Config::default().put_burst_per_ip)]
    put_burst_per_ip: u32,

    /// Sustained new registrations plus wrong secrets per second from one IP (slows down
    /// secret guessing).
    #[arg(long, default_value_t = Config::default().register_rate_per_ip)]
    register_rate_per_ip: f64,

    /// New registrations plus wrong secrets one IP may make in a burst.
    #[arg(long, default_value_t = Config::default().register_burst_per_ip)]
    register_burst_per_ip: u32,

    /// Sustained signed registrations (REGISTER_KEY) per second by one key, from any IP.
    #[arg(long, default_value_t = Config::default().register_rate_per_key)]
    register_rate_per_key: f64,

    /// Signed registrations one key may make in a burst.
    #[arg(long, default_value_t = Config::default().register_burst_per_key)]
    register_burst_per_key: u32,

    /// The server's name in the CHALLENGE of a signed registration, as clients dial it
    /// (HOST:PORT, e.g. mailbox.example.net:8090; [V6]:PORT). Clients sign it and check it is
    /// the server they dialed, so set it when they dial a name or a forwarded address.
    /// Default: the address each client dialed.
    #[arg(long, value_name = "HOST:PORT")]
    name: Option<String>,

    /// Close a connection after this long without a complete line; subscribers send PING to
    /// stay connected.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Unread output bytes kept for a client that does not read; past it, it is disconnected
    /// (its unacknowledged messages stay stored).
    #[arg(long, default_value_t = Config::default().max_output_bytes)]
    max_output_bytes: usize,

    /// Malformed lines answered with ERROR before the connection is closed.
    #[arg(long, default_value_t = Config::default().max_bad_lines)]
    max_bad_lines: u32,

    /// Longest an HTTP list may wait for a message when it asks to (&wait=SECONDS).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    max_list_wait: Duration,
}

impl Args {
    /// The server configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<Config> {
        let args = self;
        anyhow::ensure!(
            args.put_rate_per_ip.is_finite() && args.put_rate_per_ip >= 0.0,
            "--put-rate-per-ip must be a non-negative number"
        );
        anyhow::ensure!(
            args.register_rate_per_ip.is_finite() && args.register_rate_per_ip >= 0.0,
            "--register-rate-per-ip must be a non-negative number"
        );
        anyhow::ensure!(
            args.register_rate_per_key.is_finite() && args.register_rate_per_key >= 0.0,
            "--register-rate-per-key must be a non-negative number, got {}",
            args.register_rate_per_key
        );
        let config = Config {
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            max_message_bytes: args.max_message_bytes,
            max_messages_per_mailbox: args.max_messages_per_mailbox,
            max_mailbox_bytes: args.max_mailbox_bytes,
            max_stored_bytes: args.max_stored_bytes,
            max_mailboxes: args.max_mailboxes,
            message_ttl: args.message_ttl,
            mailbox_ttl: args.mailbox_ttl,
            put_rate_per_ip: args.put_rate_per_ip,
            put_burst_per_ip: args.put_burst_per_ip,
            register_rate_per_ip: args.register_rate_per_ip,
            register_burst_per_ip: args.register_burst_per_ip,
            register_rate_per_key: args.register_rate_per_key,
            register_burst_per_key: args.register_burst_per_key,
            name: args.name.clone(),
            idle_timeout: args.idle_timeout,
            max_output_bytes: args.max_output_bytes,
            max_bad_lines: args.max_bad_lines,
            max_list_wait: args.max_list_wait,
            data_dir: args.data_dir.clone(),
            backend: args.backend.clone(),
        };
        Ok(config)
    }
}
