//! Every wire format of the p2p toolkit, in one crate that both ends of each conversation use.
//!
//! ```text
//!   p2p-node CLI      rendezvous   dht-msg   forwarding-check
//!        │                 └──────────┴──────────┘
//!      node (Net, core, reach)      server-kit (one mio driver for every server)
//!        └────────────────┬──────────────┘
//!                 wire (this crate)
//! ```
//!
//! The node and the three servers depend on this crate; it depends on no socket library, no
//! event loop, no UPnP, NAT-PMP or NTP stack (the PCP messages are here, their exchange is the
//! node's). Building a server therefore compiles none of the
//! node's reachability machinery.
//!
//! **Contract.** Everything here is sans-IO: bytes and lines go in, typed values come out, and
//! nothing touches a socket or reads a clock (time, where a rule needs it, is an argument).
//! Every message type implements `FromStr` and `Display` with `parse(display(x)) == x`
//! (proptest round trips next to each type, a cargo-fuzz target per parser in `fuzz/`), and
//! every parser caps lengths before it allocates. Error types name the offending value.
//!
//! | module | what |
//! |---|---|
//! | [`line`](mod@line) | the bounded line framer every line protocol reads through |
//! | [`rendezvous`] | the rendezvous server's requests and responses (PyP2P's, plus `RELAY`) |
//! | [`mailbox`] | the dht-msg mailbox line protocol |
//! | [`overlay`] | the node-to-node control lines (`P2P/1 HELLO`, `IAM`, `BCAST`) and the seen-cache |
//! | [`nat`] | NAT mapping classification from `SOURCE TCP` probes |
//! | [`pcp`] | PCP (RFC 6887) MAP and ANNOUNCE messages: port mappings and IPv6 pinholes |
//! | [`punch`] | hole-punch arithmetic: port prediction, meeting times, relay tokens |
//! | [`unl`] | PyP2P's Universal Node Locator codec (v2), and our signed v3 ([`unl::v3`]) |
//! | [`key`] | node keys (Ed25519), signatures with a context, and the ids derived from a key |
//! | [`frame`] | length-prefixed frames (the encrypted connections' framing) and the first-bytes sniff |
//! | [`signal`] | signed reverse-connect/relay requests, the replay cache, mailbox registration proofs |
//! | [`http`] | a sans-IO HTTP/1.1 request parser and response renderer for the servers |
//! | [`units`] | durations such as `30s` or `24h` for command-line flags |
//! | [`io`] | the edge-triggered read rule ([`io::read_step`]) and the per-turn read budget |

pub mod frame;
pub mod http;
pub mod io;
pub mod key;
pub mod line;
pub mod mailbox;
pub mod nat;
pub mod overlay;
pub mod pcp;
pub mod punch;
pub mod rendezvous;
pub mod signal;
pub mod units;
pub mod unl;
