//! Sans-IO wire types shared by the node and its servers.
//!
//! Nothing here touches a socket or a clock: bytes and lines go in, typed values come out.

pub mod line;
pub mod mailbox;
pub mod nat;
pub mod overlay;
pub mod punch;
pub mod rendezvous;
