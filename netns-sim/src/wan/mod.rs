//! WAN emulation: links with delay, jitter and loss, per direction.
//!
//! This kernel has no `sch_netem`, but it has NFQUEUE (the iptables `NFQUEUE` target; nft's own
//! `queue` statement is not built here, so the rules go in with `iptables`, which on Debian is
//! iptables-nft and sits next to the lab's nftables NAT tables). A packet is queued **where it
//! arrives, before that box looks at it**: in the `raw` table's PREROUTING (priority -300,
//! before conntrack at -200), so a NAT sees a late packet only when it is due, exactly as if
//! the wire had been slow:
//!
//! - the *up* direction of `host`'s uplink is queued on the segment it plugs into: in the
//!   internet bridge's namespace matched by bridge port (`-m physdev --physdev-in pN`; bridged
//!   IPv4 goes through iptables there because `bridge-nf-call-iptables` is 1), or in its
//!   router's (or carrier's) namespace matched by the sender's MAC on the LAN bridge (`-i lan
//!   -m mac --mac-source M`; routers keep `br_netfilter` off, as a router should);
//! - the *down* direction is queued in `host`'s own namespace (`-i wan` / `-i eth0`).
//!
//! One daemon per namespace that holds queues (`netns-sim wan-stage --config FILE`, see
//! [`daemon`]) holds each packet for its delay ± jitter, drops its share of loss (seeded
//! randomness, [`stage::Rng`]) and accepts the rest when due, FIFO per direction ([`stage`]
//! explains the ordering). It is found next to the calling executable (or through
//! `$NETNS_SIM_BIN`), started like the lab's other daemons and killed by pid at teardown; the
//! rules die with their namespaces.
//!
//! **A dead stage is loud, not loss:** the rules have no `--queue-bypass`, so without the
//! daemon the link carries nothing at all (a bypass would silently turn a bad link into a
//! perfect one, and a test would pass for the wrong reason). `Lab::exec`, `exec_ok` and
//! `spawn` check the stages first and fail naming the dead daemon and its log, `netns-sim
//! status` shows it `DEAD`, and `Lab::down` reports it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::topology::{HostInfo, Link, LinkProfile, Segment, uplink};

pub mod daemon;
pub mod nfqueue;
pub mod stage;

pub use daemon::{Lane, StageConfig};

/// Environment variable naming the `netns-sim` binary that runs the stages.
pub const BIN_ENV: &str = "NETNS_SIM_BIN";

/// Errors of the WAN emulation.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    /// The netlink queue failed.
    #[error(transparent)]
    Queue(#[from] nfqueue::NfqueueError),
    /// The stage configuration could not be read.
    #[error("stage configuration {path}: {detail}")]
    Config {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// The release timer thread could not start.
    #[error("cannot start the release timer thread: {0}")]
    Thread(String),
    /// The release timer thread ended (its error is lost with it; see the log).
    #[error("the WAN stage's release timer thread ended")]
    TimerGone,
    /// The `netns-sim` binary that runs the stages was not found.
    #[error(
        "the WAN stage needs the netns-sim binary, not found ({tried}): build it (`cargo build -p netns-sim`, or `cargo test --workspace` builds it) or set {BIN_ENV}"
    )]
    NoBinary {
        /// Where we looked.
        tried: String,
    },
}

/// splitmix64's finaliser: a good 64-bit mix, stable forever.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of a name (stable, unlike std's hasher).
pub(crate) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Everything one namespace needs: the daemon's lanes and the iptables rules that feed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    /// The host whose namespace holds the queues (`internet` for the internet bridge).
    pub host: String,
    /// The queues.
    pub lanes: Vec<Lane>,
    /// `iptables` argument lists, one rule each.
    pub rules: Vec<Vec<String>>,
}

/// The stages a lab with these hosts and links needs (empty without links). Queue numbers:
/// `2i` up and `2i + 1` down for the `i`-th host. Unknown link hosts are skipped
/// ([`crate::Topology::resolve`] rejects them).
pub fn plan(hosts: &[HostInfo], links: &BTreeMap<String, Link>) -> Vec<StagePlan> {
    let mut by_host: BTreeMap<String, StagePlan> = BTreeMap::new();
    let mut add =
        |host: &str, queue: u16, label: String, profile: LinkProfile, rule: Vec<String>| {
            let plan = by_host.entry(host.to_owned()).or_insert_with(|| StagePlan {
                host: host.to_owned(),
                lanes: Vec::new(),
                rules: Vec::new(),
            });
            plan.lanes.push(Lane {
                queue,
                label,
                profile,
            });
            plan.rules.push(rule);
        };
    for (i, h) in hosts.iter().enumerate() {
        let (Some(link), Some(up)) = (links.get(&h.name), uplink(hosts, &h.name)) else {
            continue;
        };
        let base = u16::try_from(2 * i).unwrap_or(u16::MAX - 1);
        let nfqueue = |q: u16| {
            ["-j", "NFQUEUE", "--queue-num"]
                .map(str::to_owned)
                .into_iter()
                .chain([q.to_string()])
        };
        if let Some(p) = link.up {
            let mut rule = strings(&["-t", "raw", "-A", "PREROUTING"]);
            match up.segment {
                // The internet namespace only bridges: br_netfilter shows the bridge port.
                Segment::Internet => {
                    rule.extend(strings(&["-m", "physdev", "--physdev-in", &up.port]));
                }
                // A router (br_netfilter off there): the sender's MAC on the LAN bridge.
                Segment::Lan(_) => rule.extend(strings(&[
                    "-i",
                    crate::nat::LAN_IF,
                    "-m",
                    "mac",
                    "--mac-source",
                    &up.mac,
                ])),
            }
            rule.extend(nfqueue(base));
            add(up.segment.host(), base, format!("{} up", h.name), p, rule);
        }
        if let Some(p) = link.down {
            let mut rule: Vec<String> = ["-t", "raw", "-A", "PREROUTING", "-i", up.iface]
                .map(str::to_owned)
                .to_vec();
            rule.extend(nfqueue(base + 1));
            add(&h.name, base + 1, format!("{} down", h.name), p, rule);
        }
    }
    by_host.into_values().collect()
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|&x| x.to_owned()).collect()
}

/// The `netns-sim` binary that runs stages: `$NETNS_SIM_BIN`, else this executable when it is
/// netns-sim, else `netns-sim` next to it (or next to its `deps/` directory, where cargo puts
/// test binaries).
pub fn stage_binary() -> Result<PathBuf, WanError> {
    if let Some(p) = std::env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(WanError::NoBinary {
                tried: format!("${BIN_ENV}={}", p.display()),
            })
        };
    }
    let exe = std::env::current_exe().map_err(|e| WanError::NoBinary {
        tried: format!("current executable unknown: {e}"),
    })?;
    if exe.file_name().is_some_and(|n| n == "netns-sim") {
        return Ok(exe);
    }
    let mut tried = Vec::new();
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join("netns-sim");
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
        if !d.ends_with("deps") && !d.ends_with("examples") {
            break;
        }
        dir = d.parent();
    }
    Err(WanError::NoBinary {
        tried: tried.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{NatKind, Topology, TwoNats};

    #[test]
    fn plan_puts_up_on_the_segment_and_down_in_the_host() {
        let t = Topology::two_nats(TwoNats {
            cgnat_a: Some(NatKind::FullCone),
            ..TwoNats::default()
        })
        .with_link("nat-a", Link::symmetric(LinkProfile::delay_ms(40)))
        .with_link(
            "pub",
            Link {
                up: None,
                down: Some(LinkProfile::delay_ms(5)),
            },
        );
        let hosts = t.resolve().unwrap();
        let plans = plan(&hosts, &t.links);
        let hosts_of: Vec<&str> = plans.iter().map(|p| p.host.as_str()).collect();
        assert_eq!(hosts_of, ["cgn-a", "nat-a", "pub"]);
        let up = &plans[0];
        assert_eq!(up.lanes[0].label, "nat-a up");
        assert_eq!(
            up.rules[0].join(" "),
            format!(
                "-t raw -A PREROUTING -i lan -m mac --mac-source 02:4e:53:00:00:02 -j NFQUEUE --queue-num {}",
                up.lanes[0].queue
            )
        );
        assert_eq!(
            plans[1].rules[0].join(" "),
            format!(
                "-t raw -A PREROUTING -i wan -j NFQUEUE --queue-num {}",
                up.lanes[0].queue + 1
            )
        );
        assert_eq!(plans[2].lanes[0].label, "pub down");
        assert!(plan(&hosts, &BTreeMap::new()).is_empty());
    }
}
