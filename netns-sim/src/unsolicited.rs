//! What a router does with an unsolicited packet from the WAN side: drop it silently (most home
//! routers, and the lab's default) or answer it (some routers and many firewalls): a TCP RST
//! for a SYN, ICMP port-unreachable for UDP. Answering breaks naive hole punching: the peer's
//! early SYN is refused instead of lost.
//!
//! Built as two nftables rules at the end of the router's `input` and `forward` chains (see
//! [`crate::nat`]); teardown: they die with the namespace.

use serde::{Deserialize, Serialize};

/// The answer to an unsolicited inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unsolicited {
    /// Drop silently.
    #[default]
    Drop,
    /// TCP: reset; UDP: ICMP port unreachable.
    Rst,
}

impl Unsolicited {
    /// The name used in TOML and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Unsolicited::Drop => "drop",
            Unsolicited::Rst => "rst",
        }
    }

    /// nftables rules to append to a filter chain for packets from `wan_if` (none for drop:
    /// the chain's policy drops).
    pub(crate) fn rules(self, wan_if: &str) -> String {
        match self {
            Unsolicited::Drop => String::new(),
            Unsolicited::Rst => format!(
                "    iifname \"{wan_if}\" meta l4proto tcp reject with tcp reset\n    iifname \"{wan_if}\" meta l4proto udp reject with icmp type port-unreachable\n"
            ),
        }
    }

    /// The same answer for IPv6 (in a home router's `inet` firewall table, see
    /// [`crate::ipv6`]): TCP reset, `ICMPv6` port unreachable.
    pub(crate) fn rules6(self, wan_if: &str) -> String {
        match self {
            Unsolicited::Drop => String::new(),
            Unsolicited::Rst => format!(
                "    iifname \"{wan_if}\" meta l4proto tcp reject with tcp reset\n    iifname \"{wan_if}\" meta l4proto udp reject with icmpv6 type port-unreachable\n"
            ),
        }
    }
}

impl std::fmt::Display for Unsolicited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Unsolicited {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop" => Ok(Unsolicited::Drop),
            "rst" => Ok(Unsolicited::Rst),
            _ => Err(format!(
                "unknown unsolicited-packet answer {s:?}: use drop or rst"
            )),
        }
    }
}
