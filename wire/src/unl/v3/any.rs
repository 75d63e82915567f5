//! [`AnyUnl`]: a UNL of either version, told apart by the `unl3.` prefix.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::{UNL_V3_PREFIX, UnlV3, UnlV3Error};
use crate::key::PublicKey;
use crate::unl::{NodeId, Unl, UnlError};

/// A UNL of either version: what a user pastes, or a peer sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AnyUnl {
    /// PyP2P's format (no key: the node id is only a name).
    V2(Unl),
    /// Ours, signed.
    V3(UnlV3),
}

impl AnyUnl {
    /// The node id (a v2 UNL may have none).
    pub fn node_id(&self) -> Option<NodeId> {
        match self {
            AnyUnl::V2(unl) => unl.node_id,
            AnyUnl::V3(unl) => Some(unl.node_id()),
        }
    }

    /// The key a connection to this node must prove (v3 only).
    pub fn key(&self) -> Option<&PublicKey> {
        match self {
            AnyUnl::V2(_) => None,
            AnyUnl::V3(unl) => Some(unl.key()),
        }
    }

    /// The v2 form (itself, or [`UnlV3::to_v2`]).
    pub fn to_v2(&self) -> Unl {
        match self {
            AnyUnl::V2(unl) => *unl,
            AnyUnl::V3(unl) => unl.to_v2(),
        }
    }
}

/// Why text is neither a v2 nor a v3 UNL.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AnyUnlError {
    /// It looked like a v2 UNL (no `unl3.` prefix).
    #[error(transparent)]
    V2(#[from] UnlError),
    /// It starts with `unl3.`.
    #[error(transparent)]
    V3(#[from] UnlV3Error),
}

impl FromStr for AnyUnl {
    type Err = AnyUnlError;

    /// `unl3.…` is read as v3, anything else as v2.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim_ascii_start().starts_with(UNL_V3_PREFIX) {
            Ok(AnyUnl::V3(text.parse()?))
        } else {
            Ok(AnyUnl::V2(text.parse()?))
        }
    }
}

impl fmt::Display for AnyUnl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyUnl::V2(unl) => write!(f, "{unl}"),
            AnyUnl::V3(unl) => write!(f, "{unl}"),
        }
    }
}
