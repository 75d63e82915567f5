//! The lab's shape from the command line: the two-NAT preset or a topology file, then WAN
//! links and router options on top.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use netns_sim::lab::LabOptions;
use netns_sim::units::{self, Share};
use netns_sim::{
    Family, Link, LinkProfile, MappingProtocols, NatKind, Timeouts, Topology, TwoNats, Unsolicited,
};

/// Lab shape: a topology file, or the two-NAT preset (pub, pub2; alice behind nat-a, bob
/// behind nat-b, optional carol next to alice, optional carrier NATs).
// One bool per CLI switch, as clap wants them.
#[allow(clippy::struct_excessive_bools)]
#[derive(Args, Debug, Clone)]
pub(crate) struct ShapeArgs {
    /// TOML topology file (see netns-sim/examples/two-nats.toml); overrides the preset flags
    /// (the WAN and router flags below still apply on top of it).
    #[arg(long, value_name = "FILE")]
    pub(crate) topology: Option<PathBuf>,
    /// NAT kind of nat-a (alice's router): full-cone, restricted-cone, port-restricted,
    /// symmetric, sequential, none.
    #[arg(long, default_value = "port-restricted", value_name = "KIND")]
    pub(crate) nat_a: NatKind,
    /// NAT kind of nat-b (bob's router).
    #[arg(long, default_value = "symmetric", value_name = "KIND")]
    pub(crate) nat_b: NatKind,
    /// Run miniupnpd (UPnP IGD + NAT-PMP) on nat-a.
    #[arg(long)]
    pub(crate) upnp_a: bool,
    /// Run miniupnpd on nat-b.
    #[arg(long)]
    pub(crate) upnp_b: bool,
    /// What nat-a's miniupnpd answers: both, upnp (no NAT-PMP) or natpmp (no UPnP).
    #[arg(long, default_value = "both", value_name = "PROTOCOLS")]
    pub(crate) mapping_a: MappingProtocols,
    /// What nat-b's miniupnpd answers: both, upnp or natpmp.
    #[arg(long, default_value = "both", value_name = "PROTOCOLS")]
    pub(crate) mapping_b: MappingProtocols,
    /// Run a local NTP server (chronyd -x, never touching the host clock) on pub.
    #[arg(long)]
    pub(crate) ntp: bool,
    /// Add carol on alice's LAN.
    #[arg(long)]
    pub(crate) carol: bool,
    /// Put nat-a behind a carrier-grade NAT of this kind (nat-a's WAN in 100.64.0.0/10).
    /// With --cgnat-b of the same kind both homes share one carrier `cgn`, otherwise each
    /// has its own (`cgn-a`, `cgn-b`).
    #[arg(long, value_name = "KIND")]
    pub(crate) cgnat_a: Option<NatKind>,
    /// Put nat-b behind a carrier-grade NAT of this kind.
    #[arg(long, value_name = "KIND")]
    pub(crate) cgnat_b: Option<NatKind>,
    /// The carrier NAT(s) hairpin (homes reach each other through the carrier's address).
    #[arg(long)]
    pub(crate) hairpin_carrier: bool,
    /// The chronyd binary (default: /opt/p2p-lab/chrony/usr/sbin/chronyd where
    /// scripts/install-deps.sh unpacks it, else chronyd in PATH).
    #[arg(long, env = "NETNS_SIM_CHRONYD", value_name = "PATH")]
    pub(crate) chronyd: Option<PathBuf>,
}

impl ShapeArgs {
    pub(crate) fn topology(&self) -> Result<Topology> {
        match &self.topology {
            Some(path) => Ok(Topology::from_file(path)?),
            None => Ok(Topology::two_nats(TwoNats {
                a: self.nat_a,
                b: self.nat_b,
                upnp_a: self.upnp_a,
                upnp_b: self.upnp_b,
                mapping_a: self.mapping_a,
                mapping_b: self.mapping_b,
                ntp: self.ntp,
                carol: self.carol,
                cgnat_a: self.cgnat_a,
                cgnat_b: self.cgnat_b,
                carrier_hairpin: self.hairpin_carrier,
                ipv6: false,
            })),
        }
    }

    pub(crate) fn options(&self) -> LabOptions {
        LabOptions {
            chronyd: self.chronyd.clone(),
            ..LabOptions::default()
        }
    }
}

/// A value for both directions (`40ms`) or each (`10ms/40ms`: up, then down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpDown<T> {
    up: T,
    down: T,
}

impl<T: FromStr<Err = E>, E: std::fmt::Display> FromStr for UpDown<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let one = |v: &str| v.parse::<T>().map_err(|e| e.to_string());
        match s.split_once('/') {
            Some((up, down)) => Ok(UpDown {
                up: one(up)?,
                down: one(down)?,
            }),
            None => Ok(UpDown {
                up: one(s)?,
                down: one(s)?,
            }),
        }
    }
}

/// A duration as the command line writes it (`40ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl FromStr for Dur {
    type Err = units::UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        units::parse_duration(s).map(Dur)
    }
}

/// One link's flags.
#[derive(Debug, Clone, Copy, Default)]
struct LinkFlags {
    delay: Option<UpDown<Dur>>,
    jitter: Option<UpDown<Dur>>,
    loss: Option<UpDown<Share>>,
}

impl LinkFlags {
    fn or(self, other: LinkFlags) -> LinkFlags {
        LinkFlags {
            delay: self.delay.or(other.delay),
            jitter: self.jitter.or(other.jitter),
            loss: self.loss.or(other.loss),
        }
    }

    fn link(self) -> Option<Link> {
        if self.delay.is_none() && self.jitter.is_none() && self.loss.is_none() {
            return None;
        }
        let dir = |up: bool| {
            let pick = |v: Option<UpDown<Dur>>| {
                v.map_or(Duration::ZERO, |v| if up { v.up.0 } else { v.down.0 })
            };
            LinkProfile {
                delay: pick(self.delay),
                jitter: pick(self.jitter),
                loss: self
                    .loss
                    .map_or(Share::ZERO, |v| if up { v.up } else { v.down }),
            }
        };
        Some(Link::asymmetric(dir(true), dir(false)))
    }
}

/// WAN emulation flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct WanArgs {
    /// One-way delay of every access link (nat-a's and nat-b's, or every non-carrier router's
    /// in a topology file), e.g. 40ms or 10ms/40ms (up/down).
    #[arg(long, value_name = "DELAY[/DOWN]")]
    delay: Option<UpDown<Dur>>,
    /// Jitter of every access link: each packet's delay is drawn from delay ± jitter.
    #[arg(long, value_name = "JITTER[/DOWN]")]
    jitter: Option<UpDown<Dur>>,
    /// Loss of every access link, e.g. 1% (seeded: --seed).
    #[arg(long, value_name = "LOSS[/DOWN]")]
    loss: Option<UpDown<Share>>,
    /// Delay of nat-a's access link (overrides --delay).
    #[arg(long, value_name = "DELAY[/DOWN]")]
    delay_a: Option<UpDown<Dur>>,
    /// Jitter of nat-a's access link.
    #[arg(long, value_name = "JITTER[/DOWN]")]
    jitter_a: Option<UpDown<Dur>>,
    /// Loss of nat-a's access link.
    #[arg(long, value_name = "LOSS[/DOWN]")]
    loss_a: Option<UpDown<Share>>,
    /// Delay of nat-b's access link.
    #[arg(long, value_name = "DELAY[/DOWN]")]
    delay_b: Option<UpDown<Dur>>,
    /// Jitter of nat-b's access link.
    #[arg(long, value_name = "JITTER[/DOWN]")]
    jitter_b: Option<UpDown<Dur>>,
    /// Loss of nat-b's access link.
    #[arg(long, value_name = "LOSS[/DOWN]")]
    loss_b: Option<UpDown<Share>>,
    /// Delay of pub's link (the servers' host; not covered by --delay).
    #[arg(long, value_name = "DELAY[/DOWN]")]
    delay_pub: Option<UpDown<Dur>>,
    /// Jitter of pub's link.
    #[arg(long, value_name = "JITTER[/DOWN]")]
    jitter_pub: Option<UpDown<Dur>>,
    /// Loss of pub's link.
    #[arg(long, value_name = "LOSS[/DOWN]")]
    loss_pub: Option<UpDown<Share>>,
    /// Seed of the WAN stages' randomness (loss, jitter): the same seed repeats a run.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

impl WanArgs {
    /// Adds the links these flags ask for to `t`.
    pub(crate) fn apply(&self, mut t: Topology) -> Result<Topology> {
        let global = LinkFlags {
            delay: self.delay,
            jitter: self.jitter,
            loss: self.loss,
        };
        let side = |delay, jitter, loss| LinkFlags {
            delay,
            jitter,
            loss,
        };
        let access: Vec<String> = t
            .routers
            .iter()
            .filter(|r| !t.is_carrier(&r.name))
            .map(|r| r.name.clone())
            .collect();
        let own = [
            ("nat-a", side(self.delay_a, self.jitter_a, self.loss_a)),
            ("nat-b", side(self.delay_b, self.jitter_b, self.loss_b)),
            ("pub", side(self.delay_pub, self.jitter_pub, self.loss_pub)),
        ];
        for name in access.iter().map(String::as_str).chain(["pub"]) {
            let mine = own
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, f)| *f)
                .unwrap_or_default();
            let flags = if name == "pub" { mine } else { mine.or(global) };
            if let Some(link) = flags.link() {
                t = t.with_link(name, link);
            }
        }
        for (name, flags) in own {
            let exists =
                t.public.iter().any(|h| h.name == name) || access.iter().any(|a| a == name);
            if flags.link().is_some() && !exists {
                bail!("link flags for {name:?}, but the topology has no such host");
            }
        }
        if let Some(seed) = self.seed {
            t = t.with_seed(seed);
        }
        Ok(t)
    }
}

/// Options of every router.
#[derive(Args, Debug, Clone)]
pub(crate) struct RouterArgs {
    /// Hairpinning on nat-a (alice reaches carol through nat-a's public address).
    #[arg(long)]
    hairpin_a: bool,
    /// Hairpinning on nat-b.
    #[arg(long)]
    hairpin_b: bool,
    /// Every router forgets an idle established TCP connection (its mapping) after this
    /// long, e.g. 60s (kernel default: 5 days).
    #[arg(long, value_name = "DURATION")]
    tcp_established_timeout: Option<Dur>,
    /// Every router forgets an unreplied UDP flow after this long (default 30s).
    #[arg(long, value_name = "DURATION")]
    udp_timeout: Option<Dur>,
    /// Every router forgets a UDP flow that saw replies after this long (default 120s).
    #[arg(long, value_name = "DURATION")]
    udp_stream_timeout: Option<Dur>,
    /// What every router does with unsolicited WAN packets: drop (default, silent) or rst
    /// (TCP reset, ICMP port unreachable for UDP).
    #[arg(long, value_name = "ANSWER")]
    unsolicited: Option<Unsolicited>,
}

impl RouterArgs {
    /// Applies these options to the routers of `t`.
    pub(crate) fn apply(&self, mut t: Topology) -> Result<Topology> {
        for (name, on) in [("nat-a", self.hairpin_a), ("nat-b", self.hairpin_b)] {
            if on {
                let Some(r) = t.routers.iter_mut().find(|r| r.name == name) else {
                    bail!("--hairpin for {name:?}, but the topology has no such router");
                };
                r.hairpin = true;
            }
        }
        let timeouts = Timeouts {
            tcp_established: self.tcp_established_timeout.map(|d| d.0),
            udp: self.udp_timeout.map(|d| d.0),
            udp_stream: self.udp_stream_timeout.map(|d| d.0),
        };
        timeouts.check()?;
        for r in &mut t.routers {
            let keep = r.timeouts;
            r.timeouts = Timeouts {
                tcp_established: timeouts.tcp_established.or(keep.tcp_established),
                udp: timeouts.udp.or(keep.udp),
                udp_stream: timeouts.udp_stream.or(keep.udp_stream),
            };
            if let Some(u) = self.unsolicited {
                r.unsolicited = u;
            }
        }
        Ok(t)
    }
}

/// IPv6 (see the `netns_sim::ipv6` docs): global addresses from `2001:db8::/32`, no NAT66, home
/// routers with a stateful firewall.
// The doc comments are --help text: backticks around addresses would show there.
#[allow(clippy::doc_markdown)]
#[derive(Args, Debug, Clone)]
pub(crate) struct Ipv6Args {
    /// IPv6 everywhere: pub 2001:db8::2, alice 2001:db8:1::2, bob 2001:db8:2::2, ...;
    /// routers route it without translating and drop unsolicited inbound packets.
    #[arg(long)]
    ipv6: bool,
    /// Make HOST IPv4-only (no IPv6 at all in its namespace); repeatable.
    #[arg(long, value_name = "HOST")]
    ipv4_only: Vec<String>,
    /// Make HOST IPv6-only (no IPv4 address; needs --ipv6); repeatable.
    #[arg(long, value_name = "HOST")]
    ipv6_only: Vec<String>,
}

impl Ipv6Args {
    /// Applies these options to `t`.
    pub(crate) fn apply(&self, mut t: Topology) -> Result<Topology> {
        if self.ipv6 {
            t = t.with_ipv6();
        }
        let hosts: Vec<String> = t
            .public
            .iter()
            .map(|h| h.name.clone())
            .chain(
                t.routers
                    .iter()
                    .flat_map(|r| r.hosts.iter().map(|h| h.name.clone())),
            )
            .collect();
        for (names, family) in [
            (&self.ipv4_only, Family::Ipv4),
            (&self.ipv6_only, Family::Ipv6),
        ] {
            for name in names {
                if !hosts.contains(name) {
                    bail!(
                        "--{family}-only {name:?}: no public or private host of that name (hosts: {})",
                        hosts.join(", ")
                    );
                }
                t = t.with_family(name, family);
            }
        }
        Ok(t)
    }
}
