//! The node's events as plain data for Python: a kind (`"connected"`, `"connect_done"`, ...),
//! the connection and address they concern, a reason when something failed, and a one-line
//! text.

use std::net::SocketAddr;

use node::core::{ConnId, Event};

/// One event of the node, owned and simple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    /// What happened, in snake case: `connected`, `disconnected`, `dial_failed`,
    /// `bootstrapped`, `advertised`, `cleared`, `nat_detected`, `connect_done`, `mailbox_up`,
    /// `mailbox_down`, `reverse_requested`, `registration`, `challenge`, `rendezvous_failed`.
    pub kind: &'static str,
    /// The connection it concerns.
    pub conn: Option<ConnId>,
    /// The address it concerns (peer, server).
    pub addr: Option<SocketAddr>,
    /// Why it failed or closed (when it did).
    pub reason: Option<String>,
    /// The whole event in one line.
    pub text: String,
}

impl From<&Event> for NodeEvent {
    fn from(event: &Event) -> NodeEvent {
        let (kind, conn, addr, reason) = match event {
            Event::Connected { conn, addr, .. } => ("connected", Some(*conn), Some(*addr), None),
            Event::Disconnected { conn, addr, reason } => (
                "disconnected",
                Some(*conn),
                Some(*addr),
                Some(reason.clone()),
            ),
            Event::DialFailed { addr, reason } => {
                ("dial_failed", None, Some(*addr), Some(reason.clone()))
            }
            Event::Bootstrapped { server, .. } => ("bootstrapped", None, Some(*server), None),
            Event::Advertised { server, .. } => ("advertised", None, Some(*server), None),
            Event::Cleared { server } => ("cleared", None, Some(*server), None),
            Event::NatDetected { server, .. } => ("nat_detected", None, Some(*server), None),
            Event::ConnectDone(outcome) => (
                "connect_done",
                outcome.conn,
                outcome.addr,
                outcome.error.clone(),
            ),
            Event::MailboxUp { server } => ("mailbox_up", None, Some(*server), None),
            Event::MailboxDown { server, reason } => {
                ("mailbox_down", None, Some(*server), Some(reason.clone()))
            }
            Event::ReverseRequested { addr, refused, .. } => {
                ("reverse_requested", None, *addr, refused.clone())
            }
            Event::Registration { server, reason, .. } => {
                ("registration", None, Some(*server), reason.clone())
            }
            Event::Challenge { refused, .. } => ("challenge", None, None, refused.clone()),
            Event::RoleChosen { reason, .. } => ("role_chosen", None, None, Some(reason.clone())),
            Event::Upgraded { conn, addr, .. } => ("upgraded", Some(*conn), Some(*addr), None),
            Event::PathSwitched { conn, .. } => ("path_switched", Some(*conn), None, None),
            Event::WanAddress { ip, server, .. } => (
                "wan_address",
                None,
                Some(std::net::SocketAddr::new(*ip, 0)),
                Some(format!("as {server} sees us")),
            ),
            Event::RendezvousFailed { errors, .. } => (
                "rendezvous_failed",
                None,
                None,
                Some(
                    errors
                        .iter()
                        .map(|(server, e)| format!("{server}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            ),
        };
        NodeEvent {
            kind,
            conn,
            addr,
            reason,
            text: describe(event),
        }
    }
}

/// The event in one line, for logs and `repr`.
fn describe(event: &Event) -> String {
    match event {
        Event::Connected {
            conn,
            addr,
            direction,
        } => format!("connected {conn} {addr} ({direction:?})"),
        Event::Disconnected { conn, addr, reason } => {
            format!("disconnected {conn} {addr}: {reason}")
        }
        Event::DialFailed { addr, reason } => format!("dial to {addr} failed: {reason}"),
        Event::Bootstrapped {
            server,
            offered,
            dialing,
        } => format!("bootstrapped from {server}: {offered} offered, dialing {dialing}"),
        Event::Advertised {
            server,
            observed_port,
        } => format!("advertised to {server} (it saw port {observed_port})"),
        Event::Cleared { server } => format!("registration cleared at {server}"),
        Event::RoleChosen { role, reason } => format!("role chosen: {role} ({reason})"),
        Event::Upgraded {
            conn, method, addr, ..
        } => format!("connection {conn} upgraded: direct by {method} to {addr}"),
        Event::PathSwitched { conn, lost } => {
            format!("connection {conn} moved to its direct path ({lost} lines lost)")
        }
        Event::WanAddress {
            ip,
            server,
            previous,
        } => match previous {
            Some(old) => format!("WAN address {ip} (was {old}), as {server} sees us"),
            None => format!("WAN address {ip}, as {server} sees us"),
        },
        Event::NatDetected {
            server, mapping, ..
        } => format!("NAT detected with {server}: {mapping}"),
        Event::ConnectDone(outcome) => match (&outcome.method, &outcome.addr) {
            (Some(method), Some(addr)) if outcome.connected => {
                format!("connected by {method} to {addr} in {} ms", outcome.ms)
            }
            _ => format!(
                "connect failed after {} ms: {}",
                outcome.ms,
                outcome.error.as_deref().unwrap_or("no method worked")
            ),
        },
        Event::MailboxUp { server } => format!("mailbox registered at {server}"),
        Event::MailboxDown { server, reason } => format!("mailbox at {server} down: {reason}"),
        Event::ReverseRequested {
            from,
            addr,
            refused,
            ..
        } => match (addr, refused) {
            (_, Some(why)) => format!("reverse connect from {from} refused: {why}"),
            (Some(addr), None) => format!("reverse connect from {from}: dialing {addr}"),
            (None, None) => format!("reverse connect from {from}"),
        },
        Event::Registration {
            server,
            external_port,
            reason,
            ..
        } => match (external_port, reason) {
            (Some(port), _) => format!("registered at {server} (external port {port})"),
            (None, Some(why)) => format!("registration at {server} lost: {why}"),
            (None, None) => format!("registration at {server} lost"),
        },
        Event::Challenge {
            from,
            their_ports,
            refused,
            ..
        } => match refused {
            Some(why) => format!("punch challenge from {from} refused: {why}"),
            None => format!("punch challenge from {from} (ports {their_ports:?})"),
        },
        Event::RendezvousFailed { job, errors } => format!(
            "{job} failed on every rendezvous server: {}",
            errors
                .iter()
                .map(|(server, e)| format!("{server}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}
