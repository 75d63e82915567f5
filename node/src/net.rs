//! The mio driver: [`Net`] owns the sockets and runs the [`Core`].
//!
//! One thread, one `mio::Poll`. Each turn ([`Net::poll`]) flushes queued output, waits for
//! readiness (or not at all, with a zero timeout), accepts, reads lines into the core, finishes
//! dials and rendezvous requests, fires timers, and carries out what the core asked for. The
//! driver never looks at protocol verbs: it moves bytes and lines.
//!
//! Applications use it the PyP2P way:
//!
//! ```
//! use std::time::Duration;
//! use node::{Config, Net};
//!
//! # fn main() -> Result<(), node::NetError> {
//! // Two nodes on loopback; no rendezvous needed to connect by address.
//! let mut alice = Net::new(Config::new().with_bind("127.0.0.1".parse().unwrap()))?;
//! alice.start()?;
//! let mut bob = Net::new(Config::new().with_listen(false))?;
//! bob.start()?;
//! bob.connect(alice.local_addr().unwrap());
//!
//! let mut got = None;
//! for _ in 0..1000 {
//!     for con in &mut bob {
//!         con.send_line("hello from bob")?;
//!     }
//!     for con in &mut alice {
//!         for line in con.lines() {
//!             got = Some(line);
//!         }
//!     }
//!     if got.is_some() { break; }
//!     std::thread::sleep(Duration::from_millis(1));
//! }
//! assert_eq!(got.as_deref(), Some("hello from bob"));
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! The [`Net`] struct, its construction, start and stop, and the small accessors are here; its
//! other methods are spread over one `impl Net` block per concern:
//!
//! | module | what it holds |
//! |---|---|
//! | `turn` | one turn of the loop ([`Net::poll`], [`Net::poll_until`], [`Net::run`]), carrying out the core's outputs, deadlines |
//! | `peers` | peer connections: accept, read lines into the core, flush, close, reap |
//! | `dial` | dials, hole-punch dials at their meeting time, rendezvous requests |
//! | `sessions` | the mailbox connection and the line sessions with rendezvous servers |
//! | `relay` | the `RELAY` handshake that turns a relayed stream into a connection |
//! | `handshake` | a new stream's sniff or Noise handshake, before it is a connection |
//! | `target` | [`ConnectTarget`]: the kinds [`Net::connect`] takes, each handed to its method |
//! | `birthday` | the birthday punch's bursts: paced sockets, the first connected wins (dial) or each is kept (spray) |
//! | `switch` | moving a session onto another connection's stream (relayed → direct), its old path until drained |
//! | `clock` | the NTP-corrected clock that times hole punches |
//! | `events` | what is done with each core event: log, outcome, queue |
//! | `blocking` | [`Net::bootstrap`], [`Net::advertise`], [`Net::detect_nat`], [`Net::wait_connect`] |
//! | `identity` | our UNL, role, advertised port, WAN and LAN addresses |
//! | `reachability` | [`Net::probe_reachability`] (see [`crate::reach`]) and its effects |
//!
//! Beside them, data modules that know nothing of `Net`: `connection` ([`Connection`]),
//! `error` ([`NetError`], [`SendError`]), `outcomes` ([`BootstrapReport`], [`NatReport`]),
//! `inflight` (dials, punch dials, rendezvous requests), `links` (line links to servers,
//! reusable sockets) and `settings` (the core's settings from [`Config`], server names
//! resolved). Imports go one way: this file imports only the data modules; the
//! behaviour modules import this file (for `Net`) and the data modules, never each other.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{info, warn};

use crate::config::{Config, Role};
use crate::connect::ConnectId;
use crate::core::{ConnId, Core, Event, RelayId, SessionId};
use wire::overlay::{MessageId, PeerId};
use wire::unl::v3::AnyUnl;
use wire::unl::{Forwarding, NatType, Unl};

mod birthday;
mod blocking;
mod clock;
mod connection;
mod dial;
mod dual_stack;
mod error;
mod events;
mod handshake;
mod identity;
mod inflight;
mod links;
mod outcomes;
mod peers;
mod reachability;
mod relay;
mod sessions;
mod settings;
mod switch;
mod target;
mod turn;

use settings::{core_config, resolve};

pub use connection::{Connection, Received};
pub use error::{NetError, SendError};
pub use outcomes::{BootstrapReport, NatReport, ReadyReport};
pub use target::ConnectTarget;

use connection::READ_CHUNK;
use inflight::{Dial, PendingPunch, Query};
use links::LineLink;
use outcomes::Outcomes;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Tokens from here on are connections, dials and rendezvous requests.
const FIRST_TOKEN: usize = 2;
/// Longest reply line accepted from a rendezvous server.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// How long `Net::stop` (and drop) wait for the router to delete mappings.
const RELEASE_LIMIT: Duration = Duration::from_secs(2);

/// A node: listener, connections, rendezvous client, overlay (see the module docs).
#[derive(Debug)]
pub struct Net {
    config: Config,
    servers: Vec<SocketAddr>,
    core: Core,
    poll: Poll,
    mio_events: Events,
    waker: Arc<Waker>,
    listener: Option<TcpListener>,
    local_addr: Option<SocketAddr>,
    /// Global IPv6 addresses advertised in the UNL (a dual-stack listener's, `dual_stack.rs`).
    ipv6: Vec<Ipv6Addr>,
    conns: Vec<Connection>,
    /// `ConnId` → index into `conns`.
    index: HashMap<ConnId, usize>,
    /// Old paths of sessions that moved to another path, until drained (see `switch.rs`).
    old_paths: HashMap<ConnId, Connection>,
    /// Birthday bursts in progress (see `birthday.rs`), and their sockets' tokens.
    bursts: HashMap<u64, birthday::Burst>,
    burst_tokens: HashMap<Token, u64>,
    next_burst: u64,
    dials: HashMap<Token, Dial>,
    queries: HashMap<Token, Query>,
    next_token: usize,
    events: VecDeque<Event>,
    dropped_events: u64,
    outcomes: Outcomes,
    read_buf: Vec<u8>,
    /// Peers whose read budget ran out with data left (and whether their FIN was seen): read
    /// again next turn, without waiting (see `read_conn` in `peers.rs`).
    unfinished: Vec<(ConnId, bool)>,
    started: bool,
    /// The persistent connection to the dht-msg mailbox server.
    mailbox: Option<LineLink>,
    mailbox_server: Option<SocketAddr>,
    /// Line sessions with rendezvous servers, by token.
    sessions: HashMap<Token, (SessionId, LineLink)>,
    session_tokens: HashMap<SessionId, Token>,
    /// `RELAY` handshakes in progress, by token (and how the relayed connection starts).
    relay_links: HashMap<Token, (RelayId, LineLink, crate::core::Security)>,
    /// Connections in their sniff or Noise handshake (see `handshake.rs`), by id.
    handshakes: HashMap<ConnId, handshake::Pending>,
    /// Our keys for handshakes (the identity's signature over a static Noise key).
    noise: crate::secure::NoiseKeys,
    /// Hole-punch dials waiting for their meeting time.
    punches: Vec<PendingPunch>,
    /// Seconds to add to the system clock to get the NTP server's time.
    clock_offset: f64,
    /// Where `clock_offset` came from.
    clock_source: clock::ClockSource,
    /// An NTP measurement running on a helper thread.
    ntp_result: Option<mpsc::Receiver<Result<f64, String>>>,
    next_ntp: Option<Instant>,
    wan_ip: Option<Ipv4Addr>,
    forwarding: Forwarding,
    nat_type: NatType,
    /// UPnP/NAT-PMP/forwarding check (see `net/reachability.rs`).
    reach: crate::reach::driver::Reachability,
    /// The role the configuration chose (restored when a mapping is lost).
    reach_role: Role,
    reach_report: Option<crate::reach::ReachReport>,
    /// Our UNL v3 as last signed (signed again only when what it says changes).
    signed_unl: Option<wire::unl::v3::UnlV3>,
}

impl Net {
    /// A node with `config`; resolves the rendezvous servers (blocking DNS) but opens nothing
    /// until [`Net::start`].
    pub fn new(config: Config) -> Result<Net, NetError> {
        let mut servers = Vec::new();
        for name in &config.rendezvous {
            let addr = name
                .to_socket_addrs()
                .map_err(|e| NetError::Resolve {
                    name: name.clone(),
                    reason: e.to_string(),
                })?
                .next()
                .ok_or_else(|| NetError::Resolve {
                    name: name.clone(),
                    reason: "no address".to_owned(),
                })?;
            servers.push(addr);
        }
        let mailbox_server = match &config.dht_msg {
            Some(name) => Some(resolve("dht-msg", name)?),
            None => None,
        };
        let check_server = match &config.forwarding_check {
            Some(url) => Some(url.parse::<crate::reach::CheckServer>().map_err(|e| {
                NetError::ResolveServer {
                    what: "forwarding-check",
                    name: url.clone(),
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
        let core = Core::new(core_config(&config, &servers));
        let noise = crate::secure::NoiseKeys::generate(core.identity());
        if config.identity.is_none() {
            info!(
                node_id = %core.node_id(),
                key = %core.identity().key(),
                seeded = config.seed.is_some(),
                "no identity configured: this node has a key of its own for this run only \
                 (Config::with_identity to keep one)"
            );
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let reach = crate::reach::driver::Reachability::new(Arc::clone(&waker), check_server);
        Ok(Net {
            servers,
            core,
            poll,
            mio_events: Events::with_capacity(1024),
            waker,
            listener: None,
            local_addr: None,
            ipv6: Vec::new(),
            conns: Vec::new(),
            index: HashMap::new(),
            old_paths: HashMap::new(),
            bursts: HashMap::new(),
            burst_tokens: HashMap::new(),
            next_burst: 0,
            dials: HashMap::new(),
            queries: HashMap::new(),
            next_token: FIRST_TOKEN,
            events: VecDeque::new(),
            dropped_events: 0,
            outcomes: Outcomes::default(),
            read_buf: vec![0; READ_CHUNK],
            unfinished: Vec::new(),
            started: false,
            mailbox: None,
            mailbox_server,
            sessions: HashMap::new(),
            session_tokens: HashMap::new(),
            relay_links: HashMap::new(),
            handshakes: HashMap::new(),
            noise,
            punches: Vec::new(),
            clock_offset: 0.0,
            clock_source: clock::ClockSource::System,
            ntp_result: None,
            next_ntp: None,
            wan_ip: config.wan_ip,
            forwarding: if config.external_port.is_some() {
                Forwarding::Manual
            } else {
                Forwarding::Forwarded
            },
            nat_type: NatType::Unknown,
            reach,
            reach_role: config.node_type,
            reach_report: None,
            signed_unl: None,
            config,
        })
    }

    /// Opens the listening socket (unless `listen` is off). Idempotent.
    pub fn start(&mut self) -> Result<(), NetError> {
        if self.started {
            return Ok(());
        }
        if self.config.listen {
            let addr = SocketAddr::new(self.config.bind, self.config.port);
            // SO_REUSEPORT, so that hole-punch dials and the simultaneous registration can
            // go out from the listening port (see `links::bind_reusable`).
            let listener = dual_stack::bind_listener(addr.ip(), addr.port())
                .and_then(|socket| {
                    socket.listen(1024)?;
                    Ok(socket)
                })
                .map_err(|source| NetError::Bind { addr, source })?;
            let mut listener = TcpListener::from_std(listener.into());
            self.poll
                .registry()
                .register(&mut listener, LISTENER, Interest::READABLE)?;
            let local = listener.local_addr()?;
            info!(%local, peer_id = %self.core.peer_id(), "listening");
            self.core.set_listen_port(local.port());
            self.local_addr = Some(local);
            self.listener = Some(listener);
            self.choose_ipv6(local);
        }
        self.started = true;
        if let Some(server) = self.mailbox_server {
            self.core.enable_mailbox(Instant::now(), server);
        }
        self.start_clock();
        match self.config.node_type {
            Role::Simultaneous if self.local_addr.is_some() => {
                self.core.enable_simultaneous(Instant::now());
            }
            Role::Auto => self.core.enable_auto(Instant::now()),
            _ => {}
        }
        self.refresh_unl();
        self.apply_outputs(Instant::now());
        Ok(())
    }

    /// Connects to `target`: a node's UNL (returns a [`ConnectId`]; see
    /// [`Net::connect_any`]) or a plain [`SocketAddr`] (see [`Net::connect_addr`]).
    ///
    /// ```no_run
    /// # fn f(net: &mut node::Net, unl: node::wire::unl::Unl) -> Result<(), node::NetError> {
    /// let id = net.connect(&unl);
    /// let outcome = net.wait_connect(id)?;
    /// println!("{:?} via {:?} in {} ms", outcome.conn, outcome.method, outcome.ms);
    /// net.connect("192.0.2.7:50500".parse::<std::net::SocketAddr>().unwrap());
    /// # Ok(()) }
    /// ```
    pub fn connect<T: ConnectTarget>(&mut self, target: T) -> T::Handle {
        target.connect_with(self)
    }

    /// Starts connecting to the node `unl` names (LAN, direct, reverse, punch, relay; see
    /// [`crate::connect`]): a v3 UNL gets an encrypted connection that must prove the key in
    /// it, a v2 one (a PyP2P peer) a plain-text one. The outcome arrives as
    /// [`Event::ConnectDone`]; or wait for it with [`Net::wait_connect`].
    pub fn connect_any(&mut self, unl: &AnyUnl) -> ConnectId {
        if let Err(e) = self.start() {
            warn!(error = %e, "cannot start the node");
        }
        self.refresh_unl();
        let now = Instant::now();
        self.tell_core_the_time(now);
        let id = self.core.connect_any(now, unl);
        self.apply_outputs(now);
        id
    }

    /// [`Net::connect_any`] with a v2 UNL (a PyP2P peer: plain text).
    pub fn connect_unl(&mut self, unl: &Unl) -> ConnectId {
        self.connect_any(&AnyUnl::V2(*unl))
    }

    /// Whether this simultaneous node is registered with the rendezvous (hole-punch
    /// challenges reach it; its UNL says `simultaneous` and carries its external port).
    pub fn registered(&self) -> bool {
        self.core.registered()
    }

    /// Whether the mailbox connection is registered and subscribed (reverse-connect requests
    /// reach this node).
    pub fn mailbox_ready(&self) -> bool {
        self.core.mailbox_up()
    }

    /// Stops the node: sends `CLEAR <port>` if it advertised (waiting up to the query timeout),
    /// flushes what it can, and closes every connection and the listener.
    pub fn stop(&mut self) {
        self.outcomes.clear = None;
        self.reach.release_all(RELEASE_LIMIT);
        if let Some(mut m) = self.mailbox.take() {
            let _ = self.poll.registry().deregister(&mut m.stream);
        }
        if self.core.stop(Instant::now()) {
            let limit = self.config.query_timeout + Duration::from_millis(500);
            let _ = self.wait_for(limit, "clear", |o| o.clear.take().map(Ok));
        }
        for i in 0..self.conns.len() {
            let _ = self.conns[i].flush();
            let id = self.conns[i].id;
            self.close_conn(id, "node stopped");
        }
        self.conns.clear();
        self.index.clear();
        let old: Vec<ConnId> = self.old_paths.keys().copied().collect();
        for id in old {
            self.close_old_path(id, "node stopped");
        }
        for (_, mut dial) in self.dials.drain() {
            let _ = self.poll.registry().deregister(&mut dial.stream);
        }
        for (_, mut q) in self.queries.drain() {
            let _ = self.poll.registry().deregister(&mut q.stream);
        }
        for (_, (_, mut link)) in self.sessions.drain() {
            let _ = self.poll.registry().deregister(&mut link.stream);
        }
        self.session_tokens.clear();
        for (_, (_, mut link, _)) in self.relay_links.drain() {
            let _ = self.poll.registry().deregister(&mut link.stream);
        }
        self.drop_handshakes();
        self.punches.clear();
        for (_, mut b) in self.bursts.drain() {
            b.close_all(self.poll.registry());
        }
        self.burst_tokens.clear();
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.started = false;
        info!("stopped");
    }

    /// Dials `addr` (a direct connection by address); [`Event::Connected`] or
    /// [`Event::DialFailed`] follows.
    pub fn connect_addr(&mut self, addr: SocketAddr) {
        self.core.dial(addr);
        self.apply_outputs(Instant::now());
    }

    /// Floods `line` to the whole overlay: every other node delivers it once, on the
    /// connection it first arrived on. Each hop is encrypted between nodes of this software;
    /// who wrote it is not proven (see [`Net::broadcast_signed`]).
    pub fn broadcast(&mut self, line: &str) -> Result<MessageId, NetError> {
        if line.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err(SendError::LineBreak.into());
        }
        let now = Instant::now();
        let id = self.core.broadcast(now, line);
        self.apply_outputs(now);
        Ok(id)
    }

    /// Floods `line` signed by this node's key ([`crate::broadcast`]): every node that
    /// receives it can check who wrote it ([`Connection::received`] gives the writer's key
    /// with the line); one whose signature does not verify is dropped on the way.
    pub fn broadcast_signed(&mut self, line: &str) -> Result<MessageId, NetError> {
        if line.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err(SendError::LineBreak.into());
        }
        let now = Instant::now();
        self.tell_core_the_time(now);
        let id = self.core.broadcast_signed(now, line);
        self.apply_outputs(now);
        Ok(id)
    }

    /// The address the node accepts connections on (after [`Net::start`]).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// This node's id in the overlay.
    pub fn peer_id(&self) -> PeerId {
        self.core.peer_id()
    }

    /// The rendezvous servers, resolved.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The connections (open ones, and closed ones with unread lines), without running the
    /// loop.
    pub fn connections(&mut self) -> std::slice::IterMut<'_, Connection> {
        self.conns.iter_mut()
    }

    /// Runs one non-blocking turn of the loop, then yields every connection: what
    /// `for con in &mut net` does.
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Connection> {
        if let Err(e) = self.poll(Some(Duration::ZERO)) {
            warn!(error = %e, "event loop turn failed");
        }
        self.conns.iter_mut()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.core.connection_count()
    }

    /// Takes the events (connections, bootstrap results, ...) since the last call.
    pub fn events(&mut self) -> std::collections::vec_deque::Drain<'_, Event> {
        self.events.drain(..)
    }

    /// A handle that wakes a blocked [`Net::poll`] from another thread.
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    /// Registers a stream for reading and writing under `token`.
    fn register(&self, stream: &mut TcpStream, token: Token) -> io::Result<()> {
        self.poll
            .registry()
            .register(stream, token, Interest::READABLE | Interest::WRITABLE)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Mappings left on the router if `stop` was not called.
        self.reach.release_all(RELEASE_LIMIT);
        for c in &mut self.conns {
            if let Some(mut stream) = c.stream.take() {
                let _ = c.flush_on(&mut stream);
            }
        }
    }
}

/// `for con in &mut net { .. }`: runs one non-blocking turn of the loop, then yields every
/// connection (the PyP2P iteration model). Errors of the turn are logged, not returned; use
/// [`Net::poll`] to see them.
impl<'a> IntoIterator for &'a mut Net {
    type Item = &'a mut Connection;
    type IntoIter = std::slice::IterMut<'a, Connection>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}
