//! IPv4 subnets written as `a.b.c.d/len`, the only address arithmetic the lab needs.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors from parsing or using an [`Ipv4Net`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// The text is not `a.b.c.d/len`.
    #[error("invalid IPv4 subnet {0:?}: expected a.b.c.d/len with len 8..=30")]
    Invalid(String),
    /// No free host address is left in the subnet.
    #[error("subnet {0} has no free host address left")]
    Full(Ipv4Net),
}

/// An IPv4 subnet such as `192.168.1.0/24` (host bits are cleared on parse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Net {
    /// Builds a subnet, clearing host bits. `prefix_len` must be in `8..=30`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, NetError> {
        if !(8..=30).contains(&prefix_len) {
            return Err(NetError::Invalid(format!("{addr}/{prefix_len}")));
        }
        let mask = u32::MAX << (32 - u32::from(prefix_len));
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix_len,
        })
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length, e.g. 24.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `addr` is a usable host address of this subnet (not network, not broadcast).
    pub fn contains_host(&self, addr: Ipv4Addr) -> bool {
        let size = 1u32 << (32 - u32::from(self.prefix_len));
        let base = u32::from(self.network);
        let a = u32::from(addr);
        a > base && a < base + size - 1
    }

    /// The `n`-th host address (1-based): `192.168.1.0/24`.host(1) is `192.168.1.1`.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let addr = Ipv4Addr::from(u32::from(self.network).checked_add(n)?);
        self.contains_host(addr).then_some(addr)
    }

    /// The first host address from `start` (1-based) on that is not in `used`.
    pub fn next_free(&self, start: u32, used: &[Ipv4Addr]) -> Result<Ipv4Addr, NetError> {
        let mut n = start;
        while let Some(addr) = self.host(n) {
            if !used.contains(&addr) {
                return Ok(addr);
            }
            n += 1;
        }
        Err(NetError::Full(*self))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || NetError::Invalid(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(invalid)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
        let len: u8 = len.parse().map_err(|_| invalid())?;
        Self::new(addr, len).map_err(|_| invalid())
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_round_trip_and_host_bits_cleared() {
        let net: Ipv4Net = "192.168.1.77/24".parse().unwrap();
        assert_eq!(net.to_string(), "192.168.1.0/24");
        assert_eq!(net.host(1), Some(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(net.host(255), None);
        assert!(!net.contains_host(Ipv4Addr::new(192, 168, 1, 0)));
        assert!(!net.contains_host(Ipv4Addr::new(192, 168, 2, 1)));
    }

    #[test]
    fn rejects_bad_subnets() {
        for bad in ["1.2.3.4", "1.2.3.4/33", "1.2.3/24", "1.2.3.4/31", "x/24"] {
            assert_eq!(
                bad.parse::<Ipv4Net>(),
                Err(NetError::Invalid(bad.to_owned()))
            );
        }
    }

    #[test]
    fn next_free_skips_used_and_reports_full() {
        let net: Ipv4Net = "10.0.0.0/30".parse().unwrap();
        let used = [Ipv4Addr::new(10, 0, 0, 1)];
        assert_eq!(net.next_free(1, &used), Ok(Ipv4Addr::new(10, 0, 0, 2)));
        let used = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];
        assert_eq!(net.next_free(1, &used), Err(NetError::Full(net)));
    }
}
