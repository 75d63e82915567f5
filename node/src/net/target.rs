//! [`ConnectTarget`]: what [`Net::connect`] accepts, each kind handed to its `Net` method.

use std::net::SocketAddr;

use super::Net;
use crate::connect::ConnectId;
use wire::unl::Unl;
use wire::unl::v3::{AnyUnl, UnlV3};

/// What [`Net::connect`] accepts: a UNL ([`UnlV3`], [`AnyUnl`] or a v2 [`Unl`]) or a
/// [`SocketAddr`].
pub trait ConnectTarget {
    /// What the connect returns.
    type Handle;
    /// Starts the connect.
    fn connect_with(self, net: &mut Net) -> Self::Handle;
}

impl ConnectTarget for &Unl {
    type Handle = ConnectId;
    fn connect_with(self, net: &mut Net) -> ConnectId {
        net.connect_unl(self)
    }
}

impl ConnectTarget for &UnlV3 {
    type Handle = ConnectId;
    fn connect_with(self, net: &mut Net) -> ConnectId {
        net.connect_any(&AnyUnl::V3(self.clone()))
    }
}

impl ConnectTarget for &AnyUnl {
    type Handle = ConnectId;
    fn connect_with(self, net: &mut Net) -> ConnectId {
        net.connect_any(self)
    }
}

impl ConnectTarget for SocketAddr {
    type Handle = ();
    fn connect_with(self, net: &mut Net) {
        net.connect_addr(self);
    }
}
