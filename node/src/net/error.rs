//! What can go wrong: [`NetError`] for the node's calls, [`SendError`] for
//! [`Connection::send_line`](super::Connection::send_line).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::core::Job;
use crate::ids::ConnId;

/// What can go wrong in the node.
#[derive(Debug, Error)]
pub enum NetError {
    /// A rendezvous server name did not resolve.
    #[error("cannot resolve rendezvous server {name:?}: {reason}")]
    Resolve {
        /// The name as configured.
        name: String,
        /// Why.
        reason: String,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The event loop failed.
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
    /// Every rendezvous server failed.
    #[error("{job} failed on every rendezvous server: {}", describe(errors))]
    Rendezvous {
        /// What was tried.
        job: Job,
        /// Each server and its error.
        errors: Vec<(SocketAddr, String)>,
    },
    /// Something did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// A server name (dht-msg, ...) did not resolve.
    #[error("cannot resolve {what} server {name:?}: {reason}")]
    ResolveServer {
        /// Which server.
        what: &'static str,
        /// The name as configured.
        name: String,
        /// Why.
        reason: String,
    },
    /// A line given to `send_line` cannot be sent.
    #[error("cannot send line: {0}")]
    Send(#[from] SendError),
}

pub(super) fn describe(errors: &[(SocketAddr, String)]) -> String {
    errors
        .iter()
        .map(|(s, e)| {
            if s.port() == 0 {
                e.clone()
            } else {
                format!("{s}: {e}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why [`Connection::send_line`](super::Connection::send_line) refused a line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    /// Lines cannot contain `\r` or `\n`.
    #[error("line contains a line break")]
    LineBreak,
    /// The connection is closed.
    #[error("connection {0} is closed")]
    Closed(ConnId),
    /// The peer is not reading; the connection is being closed.
    #[error("connection {conn}: {bytes} bytes queued (limit {limit}); closing it")]
    OutputFull {
        /// The connection.
        conn: ConnId,
        /// Bytes that would be queued.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}
