//! `dht-msg`: the signalling mailbox. Nodes leave each other short messages (PyP2P's
//! `REVERSE_CONNECT:<UNL>:<nonce>` is the main one) and the recipient gets them pushed the
//! moment they arrive, on one persistent connection, instead of polling.
//!
//! ```text
//!   dht-msg (Core + Store + Config + main) ──▶ server-kit (the mio driver) ──▶ wire (protocols)
//!
//!   sockets ──readiness──▶ server_kit::Server ──handle_*(now, ..)──▶ Core (sans-IO)
//!          ◀──write/close──        │             ◀──poll_action()────
//!                                  └─ commit ──▶ redb ◀──poll_store()── (group commit, before replies)
//! ```
//! [`core::Core`] holds every rule and takes time as an argument, so it is tested in virtual
//! time; [`Server`] is the server kit's mio loop (one thread, no thread per connection)
//! driving [`serve::Mailboxes`] (the core plus its store); [`store`] keeps mailboxes and
//! pending messages in a redb database when a data directory is given. Accepting, reading,
//! flushing and closing are the kit's: after an HTTP answer or a last `ERROR` the connection
//! lingers until the client closes, so a client whose request was larger than the server read
//! still gets the answer (a 431 to a 200 KB request) instead of a reset.
//!
//! # Rules
//! - A node **registers** a node id (its mailbox) with a secret. The server keeps only
//!   `sha256(salt ‖ len(id) ‖ id ‖ secret)` with a random per-server salt (stored with the data).
//!   Secrets are meant to be random tokens (PyP2P: 30 random characters); a fast hash is enough
//!   for those, not for human passwords.
//! - **Anyone** may put a message into a registered mailbox (rate-limited per IP, size-limited).
//!   A message from a connection that registered carries that node id as its sender.
//! - Only the **owner** (who proves the secret) can read and delete its messages. A message stays
//!   until it is acknowledged (`ACK`, or HTTP `list` with `list_pop=1`) or its TTL passes
//!   (default 24 h): a subscriber that drops before acknowledging gets it again on its next
//!   `SUBSCRIBE`.
//! - A full mailbox (count or bytes), a full server or a rate limit **refuses** the new message
//!   with a reason; older messages are never dropped to make room.
//! - Wrong secrets use up the IP's registration budget (default 20, then 1 per second).
//! - A node with an Ed25519 key **registers by signing** a challenge instead (`CHALLENGE`,
//!   then `REGISTER_KEY <public key> <signature>`; see [`wire::mailbox`]): its mailbox is named
//!   after the key, no secret is stored, and no secret ever opens it (a key claims a mailbox
//!   of its name registered with a secret). The challenge names the server (`--name`, else
//!   the address the client dialed) and a fresh nonce; a proof for another challenge or
//!   server name, a forged key, a replay or a `REGISTER_KEY` without a challenge is refused
//!   with an `ERROR` saying which (see `core::keys`). Failed proofs spend the IP's budget,
//!   successful ones the key's (`--register-rate-per-key`).
//!
//! # Line protocol (TCP, one message per line, `\r\n`; a bare `\n` is accepted)
//! See [`wire::mailbox`] for the grammar and the parser both sides share. A session:
//! ```text
//! > REGISTER 74416a6d75386d4850484656444a387437704b38 3ZmV9u8qL0pXx1sWcRkYbN2aTgHj4e
//! < OK REGISTERED 74416a6d75386d4850484656444a387437704b38 NEW
//! > SUBSCRIBE
//! < OK SUBSCRIBED 0
//!                                  (another client: PUT 74416a…4b38 REVERSE_CONNECT:AnRB…:9f3c…)
//! < MSG 1 - REVERSE_CONNECT:AnRB…:9f3c…
//! > ACK 1
//! < OK ACK 1
//! > PING
//! < PONG
//! ```
//! With a key instead of a secret:
//! ```text
//! > CHALLENGE
//! < CHALLENGE [2001:db8::2]:8090 6b1f0c…(64 hex)
//! > REGISTER_KEY <public key: 43 base64url> <signature: 86 base64url>
//! < OK REGISTERED 3a7c…(40 hex, the key's mailbox name) NEW
//! ```
//! Replies come in request order; `MSG` lines (pushes) may come between them at any time. Every
//! refusal or malformed line gets `ERROR <reason>` and the connection stays open, except for a
//! line over the cap (`max_message_bytes` + 256) or too many malformed lines, which close that
//! connection only. Idle connections (no line for `idle_timeout`, default 5 min) are closed:
//! subscribers send `PING` now and then.
//!
//! # HTTP API (PyP2P's `dht_msg.php`, same port)
//! A connection whose first bytes are an HTTP request line (`GET /…`) is served as HTTP: one
//! request, one response, then close. Path `/dht_msg.php`, `GET`, parameters in the query:
//!
//! | call | parameters | answer |
//! |---|---|---|
//! | `register` | `node_id`, `password`, \[`port`\], \[`network_id`\] | `success` |
//! | `put` | `node_id` (recipient) and `msg`; or `dest_node_id`, `msg` and optionally the sender's `node_id` + `password` | `success` |
//! | `list` | `node_id`, `password`, \[`list_pop`=1\], \[`wait`=seconds\] | JSON array of message strings; `list_pop=1` deletes them |
//! | `find_neighbours` | `node_id`, `password`, \[`network_id`\] | JSON `[{"ip","port","id","can_test"}]`, at most 5, seen in the last 15 min |
//! | `last_alive` | `node_id`, `password` | `success` |
//!
//! A refusal answers the body `failure` (what PyP2P's clients expect) with a status code (400,
//! 403 wrong password, 404 no mailbox, 413 message too large, 429 rate limited, 503/507 full)
//! and the reason in an `X-Dht-Msg-Error` header. Differences from PyP2P's PHP server, on
//! purpose: passwords are stored hashed; `list` always needs the password (PHP let anyone read
//! `list_pop=0` messages); the registrant's IP is the observed one (PHP trusted an `ip`
//! parameter); `put` needs a registered recipient; `list` only waits when asked to (`wait`,
//! capped by `--max-list-wait`), since PyP2P's client gives up after 5 s and popped messages
//! would be lost.
//!
//! ```no_run
//! use dht_msg::{Config, Server};
//!
//! let server = Server::bind("[::]:8090".parse().unwrap(), Config::default())?;
//! let stop = server.shutdown_handle(); // call stop.shutdown() from another thread
//! server.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod cli;
pub mod config;
pub mod core;
mod metrics;
pub mod serve;
pub mod shared;
pub mod store;

pub use config::Config;
pub use server_kit::ShutdownHandle;

/// A mailbox server bound to a listener, ready to [`run`](Server::run).
pub type Server = server_kit::Server<serve::Mailboxes>;
/// A mailbox server running on its own thread; stopped and joined on drop.
pub type RunningServer = server_kit::RunningServer<serve::Mailboxes>;
