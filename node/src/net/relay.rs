//! Relayed connections, the driver's side: connect to the rendezvous, send `RELAY <token>`,
//! wait for `RELAY OK` (past `RELAY WAITING`), then hand the stream, with any bytes already
//! read after `RELAY OK`, to the core as a connection like any other. The other end may take a
//! while to read its mailbox: the handshake may take up to `unl_connect_timeout`.

use std::net::SocketAddr;
use std::time::Instant;

use mio::Token;
use mio::net::TcpStream;
use tracing::{debug, info};

use super::Net;
use super::handshake::Origin;
use crate::core::{Direction, Security};
use crate::ids::{ConnId, RelayId};
use wire::rendezvous::{RelayToken, Request as RendezvousRequest, Response as RendezvousResponse};

impl Net {
    pub(super) fn start_relay(
        &mut self,
        now: Instant,
        relay: RelayId,
        server: SocketAddr,
        token: RelayToken,
        security: Security,
    ) {
        // The other end may take a while to read its mailbox: wait up to the connect timeout.
        let timeout = self.config.unl_connect_timeout;
        match self.open_link(now, server, None, timeout) {
            Ok(mut link) => {
                link.queue(&RendezvousRequest::Relay { token }.to_string());
                debug!(%server, ?relay, "relay connecting");
                self.relay_links.insert(link.token, (relay, link, security));
            }
            Err(e) => {
                let reason = format!("cannot connect to relay {server}: {e}");
                self.core.handle_relay_failed(now, relay, &reason);
            }
        }
    }

    /// Advances a `RELAY` handshake; at `RELAY OK` the stream becomes a connection.
    pub(super) fn drive_relay(&mut self, now: Instant, token: Token, closing: bool) {
        let Some((relay, link, security)) = self.relay_links.get_mut(&token) else {
            return;
        };
        let (relay, security) = (*relay, *security);
        let ok = RendezvousResponse::RelayOk.to_string();
        let progress = link.drive(&mut self.read_buf, closing, Some(&ok));
        let mut failure = progress.failure;
        let mut through = false;
        for line in &progress.lines {
            match line.parse::<RendezvousResponse>() {
                Ok(RendezvousResponse::RelayOk) => through = true,
                Ok(RendezvousResponse::RelayWaiting) => {
                    debug!(?relay, "relay: waiting for the other end");
                }
                Ok(RendezvousResponse::Error(why)) => {
                    failure = Some(format!("the relay said: {why}"));
                }
                Ok(other) => failure = Some(format!("unexpected {other} from the relay")),
                Err(e) => failure = Some(format!("bad line from the relay {line:?}: {e}")),
            }
        }
        if through {
            let Some((_, mut link, _)) = self.relay_links.remove(&token) else {
                return;
            };
            let _ = self.poll.registry().deregister(&mut link.stream);
            let rest = link.framer.take_buffered();
            let server = link.server;
            info!(%server, ?relay, "relayed connection through");
            self.add_relayed_conn(now, link.stream, server, relay, security, &rest);
            return;
        }
        if let Some(reason) = failure
            && let Some((_, mut link, _)) = self.relay_links.remove(&token)
        {
            let _ = self.poll.registry().deregister(&mut link.stream);
            debug!(server = %link.server, ?relay, reason, "relay failed");
            self.core.handle_relay_failed(now, relay, &reason);
            self.apply_outputs(now);
        }
    }

    /// A relayed stream becomes a connection once its handshake (if any) is done; `rest` are
    /// bytes already read after `RELAY OK`.
    fn add_relayed_conn(
        &mut self,
        now: Instant,
        mut stream: TcpStream,
        server: SocketAddr,
        relay: RelayId,
        security: Security,
        rest: &[u8],
    ) {
        let token = self.token();
        let id = ConnId(token.0 as u64);
        let _ = stream.set_nodelay(true);
        if let Err(e) = self.register(&mut stream, token) {
            self.core.handle_relay_failed(now, relay, &e.to_string());
            return;
        }
        self.start_conn(
            now,
            id,
            stream,
            server,
            Direction::Outbound,
            security,
            Origin::Relay(relay),
            rest,
        );
        self.apply_outputs(now);
    }
}
