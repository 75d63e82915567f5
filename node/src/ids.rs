//! The numbers the node gives things: connections, connects by UNL, rendezvous requests, line
//! sessions and relays.
//!
//! They sit at the bottom of the node's module order (see the crate docs) so that every layer
//! can name them without depending on the layer that hands them out: the driver numbers
//! connections ([`ConnId`]), the core numbers the rest. Each is also re-exported where it is
//! used: [`crate::core`] (`ConnId`, `QueryId`, `SessionId`, `RelayId`) and [`crate::connect`]
//! (`ConnectId`).

use std::fmt;

use serde::Serialize;

/// A connection, numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One [`crate::Net::connect`] call, numbered by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConnectId(pub u64);

impl fmt::Display for ConnectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connect#{}", self.0)
    }
}

/// A request to a rendezvous server, numbered by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryId(pub u64);

/// A line session with a rendezvous server (the persistent registration of a simultaneous
/// node, a hole-punch candidacy, a port probe), numbered by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A relayed connection being opened, numbered by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u64);
