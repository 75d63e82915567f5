//! The mio driver: [`Net`] owns the sockets and runs the [`Core`](crate::core::Core).
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

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, ToSocketAddrs, UdpSocket};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::config::{Config, Role};
use crate::connect::{ConnectId, ConnectOutcome};
use crate::core::{
    ConnId, Core, CoreConfig, Direction, Event, Job, LineVerdict, Output, QueryId, QueryReply,
    RelayId, SessionId,
};
use crate::proto::line::{LineError, LineFramer};
use crate::proto::nat::NatMapping;
use crate::proto::overlay::{MessageId, PeerId};
use crate::proto::rendezvous::{
    NodeType, RelayToken, Request as RendezvousRequest, Response as RendezvousResponse,
};
use crate::server::{READ_BUDGET_BYTES, ReadStep, read_step};
use crate::unl::{Forwarding, NatType, Unl};

mod links;
mod reachability;

use links::{LineLink, bind_reusable, connect_from, punch_ip};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Tokens from here on are connections, dials and rendezvous requests.
const FIRST_TOKEN: usize = 2;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Events kept for the application at most; older ones are dropped (and counted in a log line).
const MAX_QUEUED_EVENTS: usize = 10_000;
/// Longest reply line accepted from a rendezvous server.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// How long an NTP query may take.
const NTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the clock offset is measured again.
const NTP_INTERVAL: Duration = Duration::from_mins(15);

/// What can go wrong in the node.
#[derive(Debug, Error)]
pub enum NetError {
    /// A rendezvous server name did not resolve.
    #[error("cannot resolve rendezvous server {name:?}: {reason}")]
    Resolve {
        /// The name as configured.
        name: String,
        /// Why.
        reason: String,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The event loop failed.
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
    /// Every rendezvous server failed.
    #[error("{job} failed on every rendezvous server: {}", describe(errors))]
    Rendezvous {
        /// What was tried.
        job: Job,
        /// Each server and its error.
        errors: Vec<(SocketAddr, String)>,
    },
    /// Something did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// A server name (dht-msg, ...) did not resolve.
    #[error("cannot resolve {what} server {name:?}: {reason}")]
    ResolveServer {
        /// Which server.
        what: &'static str,
        /// The name as configured.
        name: String,
        /// Why.
        reason: String,
    },
    /// A line given to `send_line` cannot be sent.
    #[error("cannot send line: {0}")]
    Send(#[from] SendError),
}

fn describe(errors: &[(SocketAddr, String)]) -> String {
    errors
        .iter()
        .map(|(s, e)| {
            if s.port() == 0 {
                e.clone()
            } else {
                format!("{s}: {e}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why [`Connection::send_line`] refused a line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    /// Lines cannot contain `\r` or `\n`.
    #[error("line contains a line break")]
    LineBreak,
    /// The connection is closed.
    #[error("connection {0} is closed")]
    Closed(ConnId),
    /// The peer is not reading; the connection is being closed.
    #[error("connection {conn}: {bytes} bytes queued (limit {limit}); closing it")]
    OutputFull {
        /// The connection.
        conn: ConnId,
        /// Bytes that would be queued.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

/// What a bootstrap found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootstrapReport {
    /// The server that answered.
    pub server: SocketAddr,
    /// Nodes it offered.
    pub offered: usize,
    /// Nodes being dialed now.
    pub dialing: usize,
}

/// What a NAT detection found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NatReport {
    /// The server asked.
    pub server: SocketAddr,
    /// The verdict.
    pub mapping: NatMapping,
    /// `(local port, observed port)` per probe.
    pub probes: Vec<(u16, u16)>,
}

/// One connection to a peer, as the application sees it.
#[derive(Debug)]
pub struct Connection {
    id: ConnId,
    addr: SocketAddr,
    direction: Direction,
    /// `None` once closed.
    stream: Option<TcpStream>,
    framer: LineFramer,
    inbox: VecDeque<String>,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    max_output: usize,
    /// Set when the application or an overflow asks to close; carried out next turn.
    close_request: Option<String>,
    /// Set once closed.
    closed: Option<String>,
}

impl Connection {
    /// The connection's number.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Who dialed.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Whether the connection is still open (a closed one stays visible until its received
    /// lines are read).
    pub fn is_open(&self) -> bool {
        self.closed.is_none() && self.close_request.is_none()
    }

    /// Why it closed, once it did.
    pub fn close_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Bytes queued for the peer and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.out.len() - self.written
    }

    /// Takes every line received so far (plain lines and broadcasts delivered here), oldest
    /// first, without terminators.
    pub fn lines(&mut self) -> std::collections::vec_deque::Drain<'_, String> {
        self.inbox.drain(..)
    }

    /// Takes the oldest received line.
    pub fn recv_line(&mut self) -> Option<String> {
        self.inbox.pop_front()
    }

    /// Queues `line` (`\r\n` is appended) to be written at the next turn of the loop.
    pub fn send_line(&mut self, line: &str) -> Result<(), SendError> {
        if line.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err(SendError::LineBreak);
        }
        self.queue(line)
    }

    /// Asks to close the connection (done at the next turn).
    pub fn close(&mut self) {
        if self.close_request.is_none() && self.closed.is_none() {
            self.close_request = Some("closed by the application".to_owned());
        }
    }

    fn queue(&mut self, line: &str) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::Closed(self.id));
        }
        let bytes = self.out.len() - self.written + line.len() + 2;
        if bytes > self.max_output {
            self.close_request = Some(format!(
                "peer does not read: {bytes} bytes queued (limit {})",
                self.max_output
            ));
            return Err(SendError::OutputFull {
                conn: self.id,
                bytes,
                limit: self.max_output,
            });
        }
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// Writes queued output until done or the socket is full. Err: the connection broke.
    fn flush(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        while self.written < self.out.len() {
            match stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
            if self.out.capacity() > READ_CHUNK {
                self.out.shrink_to(READ_CHUNK);
            }
        } else if self.written > READ_CHUNK && self.written * 2 >= self.out.len() {
            // Compact only once the written part is at least half: moving the unwritten rest
            // on every flush costs O(queued) per turn for a slow reader with a long queue.
            self.out.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    fn has_output(&self) -> bool {
        self.written < self.out.len()
    }
}

/// An outbound dial in progress.
#[derive(Debug)]
struct Dial {
    addr: SocketAddr,
    stream: TcpStream,
    deadline: Instant,
    /// How the connection is reported to the core (punch dials of a simultaneous node are
    /// reported as inbound).
    direction: Direction,
}

/// A hole-punch dial waiting for its meeting time.
#[derive(Debug)]
struct PendingPunch {
    addr: SocketAddr,
    from_port: u16,
    at: Instant,
    timeout: Duration,
    direction: Direction,
}

/// A short request to a rendezvous server in progress.
#[derive(Debug)]
struct Query {
    id: QueryId,
    server: SocketAddr,
    stream: TcpStream,
    connected: bool,
    out: Vec<u8>,
    written: usize,
    want_reply: bool,
    reply: LineFramer,
    deadline: Instant,
}

/// Outcomes the blocking helpers wait for.
#[derive(Debug, Default)]
struct Outcomes {
    connects: HashMap<ConnectId, ConnectOutcome>,
    bootstrap: Option<Result<BootstrapReport, NetError>>,
    advertise: Option<Result<u16, NetError>>,
    clear: Option<()>,
    nat: Option<Result<NatReport, NetError>>,
    reach: Option<crate::reach::ReachReport>,
}

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
    conns: Vec<Connection>,
    /// `ConnId` → index into `conns`.
    index: HashMap<ConnId, usize>,
    dials: HashMap<Token, Dial>,
    queries: HashMap<Token, Query>,
    next_token: usize,
    events: VecDeque<Event>,
    dropped_events: u64,
    outcomes: Outcomes,
    read_buf: Vec<u8>,
    /// Peers whose read budget ran out with data left (and whether their FIN was seen): read
    /// again next turn, without waiting (see [`READ_BUDGET_BYTES`]).
    unfinished: Vec<(ConnId, bool)>,
    started: bool,
    /// The persistent connection to the dht-msg mailbox server.
    mailbox: Option<LineLink>,
    mailbox_server: Option<SocketAddr>,
    /// Line sessions with rendezvous servers, by token.
    sessions: HashMap<Token, (SessionId, LineLink)>,
    session_tokens: HashMap<SessionId, Token>,
    /// `RELAY` handshakes in progress, by token.
    relay_links: HashMap<Token, (RelayId, LineLink)>,
    /// Hole-punch dials waiting for their meeting time.
    punches: Vec<PendingPunch>,
    /// Seconds to add to the system clock to get the NTP server's time.
    clock_offset: f64,
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
        let seed = config.seed.unwrap_or_else(rand::random);
        let core = Core::new(CoreConfig {
            node_type: match config.node_type {
                Role::Passive => NodeType::Passive,
                Role::Active => NodeType::Active,
                Role::Simultaneous => NodeType::Simultaneous,
            },
            listen_port: 0,
            public_port: config.external_port,
            rendezvous: servers.clone(),
            max_inbound: config.max_inbound,
            max_inbound_per_ip: config.max_inbound_per_ip,
            max_outbound: config.max_outbound,
            bootstrap_count: config.bootstrap_count,
            rebootstrap_interval: config.rebootstrap_interval,
            alone_rebootstrap_delay: config.alone_rebootstrap_delay,
            readvertise_interval: config.readvertise_interval,
            broadcast_ttl: config.broadcast_ttl,
            seen_capacity: config.seen_capacity,
            seen_lifetime: config.seen_lifetime,
            seed,
            unl_connect_timeout: config.unl_connect_timeout,
            max_reverse_per_minute: config.max_reverse_per_minute,
            max_punch_per_minute: config.max_punch_per_minute,
            ..CoreConfig::default()
        });
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
            conns: Vec::new(),
            index: HashMap::new(),
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
            punches: Vec::new(),
            clock_offset: 0.0,
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
            let listener = bind_reusable(addr.ip(), addr.port())
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
        }
        self.started = true;
        if let Some(server) = self.mailbox_server {
            self.core.enable_mailbox(Instant::now(), server);
        }
        if self.config.ntp.is_some() {
            self.next_ntp = Some(Instant::now() + NTP_INTERVAL);
            self.sync_clock();
        }
        if self.config.node_type == Role::Simultaneous && self.local_addr.is_some() {
            self.core.enable_simultaneous(Instant::now());
        }
        self.refresh_unl();
        self.apply_outputs(Instant::now());
        Ok(())
    }

    /// This node's UNL (after [`Net::start`]): node id, role, NAT type (once detected),
    /// forwarding, advertised port, WAN address (see [`Net::set_wan_ip`]) and LAN address.
    pub fn unl(&mut self) -> Unl {
        self.refresh_unl();
        self.core
            .local_unl()
            .unwrap_or_else(|| unreachable!("refresh_unl sets it"))
    }

    /// Sets our WAN address (from a gateway or the forwarding check); until then the UNL
    /// carries the LAN address, which is right only without a NAT.
    pub fn set_wan_ip(&mut self, ip: Ipv4Addr) {
        self.wan_ip = Some(ip);
        self.refresh_unl();
    }

    /// Sets how our port was made reachable (for the UNL).
    pub fn set_forwarding(&mut self, forwarding: Forwarding) {
        self.forwarding = forwarding;
        self.refresh_unl();
    }

    /// Connects to `target`: a node's [`Unl`] (returns a [`ConnectId`]; see
    /// [`Net::connect_unl`]) or a plain [`SocketAddr`] (see [`Net::connect_addr`]).
    ///
    /// ```no_run
    /// # fn f(net: &mut node::Net, unl: node::unl::Unl) -> Result<(), node::NetError> {
    /// let id = net.connect(&unl);
    /// let outcome = net.wait_connect(id)?;
    /// println!("{:?} via {:?} in {} ms", outcome.conn, outcome.method, outcome.ms);
    /// net.connect("192.0.2.7:50500".parse::<std::net::SocketAddr>().unwrap());
    /// # Ok(()) }
    /// ```
    pub fn connect<T: ConnectTarget>(&mut self, target: T) -> T::Handle {
        target.connect_with(self)
    }

    /// Starts connecting to the node `unl` names (LAN, direct, reverse; see
    /// [`crate::connect`]). The outcome arrives as [`Event::ConnectDone`]; or wait for it
    /// with [`Net::wait_connect`].
    pub fn connect_unl(&mut self, unl: &Unl) -> ConnectId {
        if let Err(e) = self.start() {
            warn!(error = %e, "cannot start the node");
        }
        self.refresh_unl();
        let now = Instant::now();
        let id = self.core.connect_unl(now, *unl);
        self.apply_outputs(now);
        id
    }

    /// Runs the loop until connect `id` has an outcome (at most the UNL connect timeout plus
    /// a second).
    pub fn wait_connect(&mut self, id: ConnectId) -> Result<ConnectOutcome, NetError> {
        let limit = self.config.unl_connect_timeout + Duration::from_secs(1);
        self.wait_for(limit, "connect", |o| o.connects.remove(&id).map(Ok))
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

    fn refresh_unl(&mut self) {
        let lan_ip = self.lan_ip();
        let node_type = match self.config.node_type {
            Role::Passive if self.local_addr.is_some() => NodeType::Passive,
            Role::Simultaneous if self.core.registered() => NodeType::Simultaneous,
            _ => NodeType::Active,
        };
        let unl = Unl {
            node_id: Some(self.core.node_id()),
            node_type,
            nat_type: self.nat_type,
            forwarding: self.forwarding,
            port: self.core.advertised_port(),
            wan_ip: self.wan_ip.unwrap_or(lan_ip),
            lan_ip,
        };
        self.core.set_local_unl(unl);
    }

    /// Our LAN address: the bind address if it is a specific IPv4 one, else the source address
    /// the kernel picks for the first configured server (a UDP `connect` sends nothing), else
    /// loopback.
    fn lan_ip(&self) -> Ipv4Addr {
        if let IpAddr::V4(ip) = self.config.bind
            && !ip.is_unspecified()
        {
            return ip;
        }
        let target = self.servers.first().copied().or(self.mailbox_server);
        target
            .and_then(|server| {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
                socket.connect(server).ok()?;
                match socket.local_addr().ok()?.ip() {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                }
            })
            .unwrap_or(Ipv4Addr::LOCALHOST)
    }

    /// Sets the node's role and the port peers reach it on from outside, e.g. after
    /// [`crate::reach`] found a forwarded port: `set_reachability(Role::Passive, Some(port))`.
    /// Takes effect at the next advertise, bootstrap and handshake.
    pub fn set_reachability(&mut self, role: Role, public_port: Option<u16>) {
        let node_type = match role {
            Role::Passive => NodeType::Passive,
            Role::Active => NodeType::Active,
            Role::Simultaneous => NodeType::Simultaneous,
        };
        self.config.node_type = role;
        self.core.set_reachability(node_type, public_port);
        if role == Role::Simultaneous && self.started && self.local_addr.is_some() {
            let now = Instant::now();
            self.core.enable_simultaneous(now);
            self.apply_outputs(now);
        }
    }

    /// The port peers are told to dial (the forwarded public port if set, else the listening
    /// port; 0 when not listening).
    pub fn advertised_port(&self) -> u16 {
        self.core.advertised_port()
    }

    /// Asks the rendezvous servers for nodes (failing over in order) and starts dialing them;
    /// returns when a server answered, or with every server's error. From then on the node
    /// bootstraps again by itself whenever it is below `max_outbound` or alone.
    pub fn bootstrap(&mut self) -> Result<BootstrapReport, NetError> {
        self.start()?;
        self.outcomes.bootstrap = None;
        self.core.bootstrap(Instant::now());
        let limit = self.blocking_limit();
        self.wait_for(limit, "bootstrap", |o| o.bootstrap.take())
    }

    /// Registers this node as passive with the rendezvous (`PASSIVE READY`), and again every
    /// `readvertise_interval`. Returns the source port the server saw. Fails for a node that
    /// is active or not listening.
    pub fn advertise(&mut self) -> Result<u16, NetError> {
        self.start()?;
        self.outcomes.advertise = None;
        self.core.advertise(Instant::now());
        let limit = self.blocking_limit();
        self.wait_for(limit, "advertise", |o| o.advertise.take())
    }

    /// Detects how the NAT maps ports, PyP2P's way (five `SOURCE TCP` probes from fresh ports
    /// to one rendezvous server).
    pub fn detect_nat(&mut self) -> Result<NatReport, NetError> {
        self.start()?;
        self.outcomes.nat = None;
        self.core.detect_nat(Instant::now());
        let limit = self.config.query_timeout * 6 + Duration::from_secs(1);
        self.wait_for(limit, "NAT detection", |o| o.nat.take())
    }

    /// Stops the node: sends `CLEAR <port>` if it advertised (waiting up to the query timeout),
    /// flushes what it can, and closes every connection and the listener.
    pub fn stop(&mut self) {
        self.outcomes.clear = None;
        self.reach.release_all(reachability::RELEASE_LIMIT);
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
        for (_, (_, mut link)) in self.relay_links.drain() {
            let _ = self.poll.registry().deregister(&mut link.stream);
        }
        self.punches.clear();
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
    /// connection it first arrived on.
    pub fn broadcast(&mut self, line: &str) -> Result<MessageId, NetError> {
        if line.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err(SendError::LineBreak.into());
        }
        let now = Instant::now();
        let id = self.core.broadcast(now, line);
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

    /// Runs one turn of the loop, waiting up to `timeout` for something to happen (`None`:
    /// until something does). Zero does not wait.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<(), NetError> {
        self.start()?;
        let now = Instant::now();
        self.apply_outputs(now);
        self.flush_all();
        self.reap();
        let wait = self.next_wait(now, timeout);
        match self.poll.poll(&mut self.mio_events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        let ready: Vec<(Token, bool, bool, bool)> = self
            .mio_events
            .iter()
            .map(|e| {
                (
                    e.token(),
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable(),
                    e.is_read_closed() || e.is_error(),
                )
            })
            .collect();
        for (token, readable, writable, closing) in ready {
            match token {
                LISTENER => self.accept_all(now),
                WAKER => {}
                t if self.dials.contains_key(&t) => self.finish_dial(now, t),
                t if self.queries.contains_key(&t) => self.drive_query(now, t),
                t if self.mailbox.as_ref().is_some_and(|m| m.token == t) => {
                    self.drive_mailbox(now, closing);
                }
                t if self.sessions.contains_key(&t) => self.drive_session(now, t, closing),
                t if self.relay_links.contains_key(&t) => self.drive_relay(now, t, closing),
                t => {
                    let conn = ConnId(t.0 as u64);
                    if readable {
                        self.read_conn(now, conn, closing);
                    }
                    if writable
                        && let Some(&i) = self.index.get(&conn)
                        && let Err(e) = self.conns[i].flush()
                    {
                        self.lost(now, conn, &format!("write failed: {e}"));
                    }
                }
            }
        }
        for (conn, closing) in std::mem::take(&mut self.unfinished) {
            self.read_conn(now, conn, closing);
        }
        self.expire(now);
        self.start_due_punches(now);
        self.check_clock(now);
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        self.apply_outputs(now);
        self.start_due_punches(now);
        // After the outputs: a NAT detection that just ended is in `outcomes` now.
        self.drive_reach(now);
        self.flush_all();
        Ok(())
    }

    /// Calls [`Net::poll`] until `done(self)` is true or `timeout` passes; returns whether it
    /// became true.
    pub fn poll_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Net) -> bool,
    ) -> Result<bool, NetError> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.poll(Some(deadline - now))?;
        }
    }

    /// Runs the loop until `handler` breaks: after every turn, `handler(self)` reads lines,
    /// sends, broadcasts. Blocks between turns (no spinning); use [`Net::waker`] to wake it from
    /// another thread.
    pub fn run(
        &mut self,
        mut handler: impl FnMut(&mut Net) -> ControlFlow<()>,
    ) -> Result<(), NetError> {
        loop {
            self.poll(None)?;
            if handler(self).is_break() {
                return Ok(());
            }
        }
    }

    // ---- internals ----

    /// How long a blocking helper waits: every server, one query timeout each, plus slack.
    fn blocking_limit(&self) -> Duration {
        let n = u32::try_from(self.servers.len().max(1)).unwrap_or(u32::MAX);
        (self.config.query_timeout + self.config.connect_timeout.min(self.config.query_timeout)) * n
            + Duration::from_secs(1)
    }

    fn wait_for<T>(
        &mut self,
        limit: Duration,
        what: &str,
        mut take: impl FnMut(&mut Outcomes) -> Option<Result<T, NetError>>,
    ) -> Result<T, NetError> {
        self.apply_outputs(Instant::now());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(result) = take(&mut self.outcomes) {
                return result;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(NetError::Timeout {
                    what: what.to_owned(),
                    after: limit,
                });
            }
            self.poll(Some(deadline - now))?;
        }
    }

    fn next_wait(&self, now: Instant, timeout: Option<Duration>) -> Option<Duration> {
        if !self.unfinished.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut wait = timeout;
        let mut consider = |at: Instant| {
            let d = at.saturating_duration_since(now);
            wait = Some(wait.map_or(d, |w| w.min(d)));
        };
        if let Some(t) = self.core.poll_timeout() {
            consider(t);
        }
        for d in self.dials.values() {
            consider(d.deadline);
        }
        for q in self.queries.values() {
            consider(q.deadline);
        }
        if let Some(m) = self.mailbox.as_ref().filter(|m| !m.connected) {
            consider(m.deadline);
        }
        for (_, link) in self.sessions.values().filter(|(_, l)| !l.connected) {
            consider(link.deadline);
        }
        for (_, link) in self.relay_links.values() {
            consider(link.deadline);
        }
        for p in &self.punches {
            consider(p.at);
        }
        if let Some(t) = self.next_ntp {
            consider(t);
        }
        if let Some(t) = self.reach.poll_timeout() {
            consider(t);
        }
        // Lines left unread by a closed connection keep it listed; nothing to wait for.
        wait
    }

    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn accept_all(&mut self, now: Instant) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => {
                    debug!(%addr, "accepted");
                    self.add_conn(now, stream, addr, Direction::Inbound);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog until the next event.
                    warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, now: Instant, mut stream: TcpStream, addr: SocketAddr, dir: Direction) {
        let token = self.token();
        let id = ConnId(token.0 as u64);
        let _ = stream.set_nodelay(true);
        if let Err(e) = self.register(&mut stream, token) {
            warn!(%addr, error = %e, "cannot register connection");
            return;
        }
        self.push_conn(id, stream, addr, dir);
        self.core.handle_open(now, id, addr, dir);
        // A connection may already have bytes (or a FIN) waiting: read until WouldBlock.
        self.read_conn(now, id, true);
    }

    fn push_conn(&mut self, id: ConnId, stream: TcpStream, addr: SocketAddr, dir: Direction) {
        self.index.insert(id, self.conns.len());
        self.conns.push(Connection {
            id,
            addr,
            direction: dir,
            stream: Some(stream),
            framer: LineFramer::new(self.config.max_line_bytes),
            inbox: VecDeque::new(),
            out: Vec::new(),
            written: 0,
            max_output: self.config.max_output_bytes,
            close_request: None,
            closed: None,
        });
    }

    fn start_dial(&mut self, now: Instant, addr: SocketAddr) {
        debug!(%addr, "dialing");
        let stream = TcpStream::connect(addr).map_err(|e| e.to_string());
        let deadline = now + self.config.connect_timeout;
        self.track_dial(now, addr, stream, deadline, Direction::Outbound);
    }

    /// Watches a connect in flight until it finishes or `deadline` passes; a connect that
    /// could not even start is reported as failed at once.
    fn track_dial(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        stream: Result<TcpStream, String>,
        deadline: Instant,
        direction: Direction,
    ) {
        let token = self.token();
        let registered = stream.and_then(|mut stream| {
            self.register(&mut stream, token)
                .map(|()| stream)
                .map_err(|e| e.to_string())
        });
        match registered {
            Ok(stream) => {
                let dial = Dial {
                    addr,
                    stream,
                    deadline,
                    direction,
                };
                self.dials.insert(token, dial);
            }
            Err(e) => self.core.handle_dial_failed(now, addr, &e),
        }
    }

    /// Registers a stream for reading and writing under `token`.
    fn register(&self, stream: &mut TcpStream, token: Token) -> io::Result<()> {
        self.poll
            .registry()
            .register(stream, token, Interest::READABLE | Interest::WRITABLE)
    }

    fn finish_dial(&mut self, now: Instant, token: Token) {
        let Some(dial) = self.dials.get(&token) else {
            return;
        };
        let result = match dial.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => dial.stream.peer_addr().map(|_| ()),
        };
        match result {
            Ok(()) => {
                if let Some(mut dial) = self.dials.remove(&token) {
                    let _ = self.poll.registry().deregister(&mut dial.stream);
                    debug!(addr = %dial.addr, direction = ?dial.direction, "connected");
                    self.add_conn(now, dial.stream, dial.addr, dial.direction);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {} // still connecting
            Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
            Err(e) => {
                if let Some(mut dial) = self.dials.remove(&token) {
                    let _ = self.poll.registry().deregister(&mut dial.stream);
                    debug!(addr = %dial.addr, error = %e, "dial failed");
                    self.core.handle_dial_failed(now, dial.addr, &e.to_string());
                }
            }
        }
    }

    fn start_query(
        &mut self,
        now: Instant,
        id: QueryId,
        server: SocketAddr,
        lines: &[String],
        want_reply: bool,
    ) {
        let mut stream = match TcpStream::connect(server) {
            Ok(s) => s,
            Err(e) => {
                self.core
                    .handle_query_done(now, id, Err(format!("cannot connect: {e}")));
                return;
            }
        };
        let token = self.token();
        if let Err(e) = self.register(&mut stream, token) {
            self.core.handle_query_done(now, id, Err(e.to_string()));
            return;
        }
        let mut out = Vec::new();
        for line in lines {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        debug!(%server, request = ?lines, "rendezvous request");
        self.queries.insert(
            token,
            Query {
                id,
                server,
                stream,
                connected: false,
                out,
                written: 0,
                want_reply,
                reply: LineFramer::new(MAX_REPLY_BYTES),
                deadline: now + self.config.query_timeout,
            },
        );
    }

    /// Advances a rendezvous request: connect, write, read one line.
    fn drive_query(&mut self, now: Instant, token: Token) {
        let Some(q) = self.queries.get_mut(&token) else {
            return;
        };
        let result = Self::step_query(q, &mut self.read_buf);
        if let Some(result) = result
            && let Some(mut q) = self.queries.remove(&token)
        {
            let _ = self.poll.registry().deregister(&mut q.stream);
            if let Err(e) = &result {
                debug!(server = %q.server, error = %e, "rendezvous request failed");
            }
            self.core.handle_query_done(now, q.id, result);
        }
    }

    /// `None`: not finished yet.
    fn step_query(q: &mut Query, buf: &mut [u8]) -> Option<Result<QueryReply, String>> {
        if !q.connected {
            match q.stream.take_error() {
                Ok(Some(e)) | Err(e) => return Some(Err(format!("cannot connect: {e}"))),
                Ok(None) => {}
            }
            match q.stream.peer_addr() {
                Ok(_) => q.connected = true,
                Err(e)
                    if e.kind() == io::ErrorKind::NotConnected
                        || e.raw_os_error() == Some(libc_einprogress()) =>
                {
                    return None;
                }
                Err(e) => return Some(Err(format!("cannot connect: {e}"))),
            }
        }
        while q.written < q.out.len() {
            match q.stream.write(&q.out[q.written..]) {
                Ok(n) => q.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(format!("write failed: {e}"))),
            }
        }
        let local = match q.stream.local_addr() {
            Ok(a) => a,
            Err(e) => return Some(Err(e.to_string())),
        };
        if !q.want_reply {
            let _ = q.stream.shutdown(Shutdown::Write);
            return Some(Ok(QueryReply { local, line: None }));
        }
        loop {
            match q.reply.next_str() {
                Some(Ok(line)) => {
                    return Some(Ok(QueryReply {
                        local,
                        line: Some(line.to_owned()),
                    }));
                }
                Some(Err(e)) => return Some(Err(format!("bad reply: {e}"))),
                None => {}
            }
            match q.stream.read(buf) {
                Ok(0) => return Some(Err("the server closed without answering".to_owned())),
                Ok(n) => q.reply.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(format!("read failed: {e}"))),
            }
        }
    }

    /// Reads what `conn` has into the core. `closing`: the event also reported the peer's FIN
    /// (or an error), which raises no further edge, so read on until EOF. At most
    /// [`READ_BUDGET_BYTES`] per turn: a peer with more waiting is read again next turn.
    fn read_conn(&mut self, now: Instant, conn: ConnId, closing: bool) {
        let Some(&i) = self.index.get(&conn) else {
            return;
        };
        let mut failure: Option<String> = None;
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            let mut drained = false;
            let room = budget.min(self.read_buf.len());
            match read_step(stream, &mut self.read_buf[..room], closing) {
                ReadStep::Data { len, more } => {
                    c.framer.push(&self.read_buf[..len]);
                    drained = !more;
                    budget = budget.saturating_sub(len);
                    if more && budget == 0 {
                        self.unfinished.push((conn, closing));
                        drained = true;
                    }
                }
                ReadStep::Eof => failure = Some("closed by peer".to_owned()),
                ReadStep::Blocked => drained = true,
                ReadStep::Failed(e) => failure = Some(format!("read failed: {e}")),
            }
            // Hand complete lines to the core (even those before an EOF: nothing is lost).
            loop {
                let c = &mut self.conns[i];
                match c.framer.next_str() {
                    None => break,
                    Some(Ok(line)) => {
                        if self.core.handle_line(now, conn, line) == LineVerdict::Deliver {
                            c.inbox.push_back(line.to_owned());
                        }
                    }
                    Some(Err(e @ (LineError::TooLong { .. } | LineError::NotUtf8 { .. }))) => {
                        failure = Some(format!("protocol error: {e}"));
                        break;
                    }
                }
            }
            if drained || failure.is_some() || !self.conns[i].is_open() {
                break;
            }
        }
        if let Some(reason) = failure {
            self.lost(now, conn, &reason);
        }
    }

    /// A connection broke or misbehaved: close it and tell the core.
    fn lost(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if self.close_conn(conn, reason) {
            self.core.handle_closed(now, conn, reason);
        }
    }

    /// Closes the socket; the connection stays listed until its lines are read. Returns
    /// whether it was open.
    fn close_conn(&mut self, conn: ConnId, reason: &str) -> bool {
        let Some(&i) = self.index.get(&conn) else {
            return false;
        };
        let c = &mut self.conns[i];
        let Some(mut stream) = c.stream.take() else {
            return false;
        };
        let _ = c.flush_on(&mut stream);
        let _ = self.poll.registry().deregister(&mut stream);
        let _ = stream.shutdown(Shutdown::Both);
        c.close_request = None;
        c.closed = Some(reason.to_owned());
        c.out = Vec::new();
        c.written = 0;
        if reason.starts_with("protocol error") || reason.starts_with("peer does not read") {
            warn!(conn = %conn, addr = %c.addr, reason, "disconnected");
        } else {
            debug!(conn = %conn, addr = %c.addr, reason, "disconnected");
        }
        true
    }

    /// Carries out what the core asked for.
    fn apply_outputs(&mut self, now: Instant) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { conn, line } => {
                    if let Some(&i) = self.index.get(&conn)
                        && let Err(e) = self.conns[i].queue(&line)
                    {
                        debug!(conn = %conn, error = %e, "not sent");
                    }
                }
                Output::Deliver { conn, line } => {
                    if let Some(&i) = self.index.get(&conn) {
                        self.conns[i].inbox.push_back(line);
                    }
                }
                Output::Close { conn, reason } => {
                    self.close_conn(conn, &reason);
                }
                Output::Dial { addr } => self.start_dial(now, addr),
                Output::Query {
                    id,
                    server,
                    lines,
                    want_reply,
                } => self.start_query(now, id, server, &lines, want_reply),
                Output::MailboxDial { server } => self.start_mailbox(now, server),
                Output::MailboxSend { line } => {
                    if let Some(m) = self.mailbox.as_mut() {
                        m.queue(&line);
                    }
                    if self.mailbox.as_ref().is_some_and(|m| m.connected) {
                        self.drive_mailbox(now, false);
                    }
                }
                Output::SessionOpen {
                    session,
                    server,
                    bind_port,
                } => self.start_session(now, session, server, bind_port),
                Output::SessionSend { session, line } => {
                    if let Some(token) = self.session_tokens.get(&session).copied()
                        && let Some((_, link)) = self.sessions.get_mut(&token)
                    {
                        link.queue(&line);
                        if link.connected {
                            self.drive_session(now, token, false);
                        }
                    }
                }
                Output::SessionClose { session, reason } => {
                    if let Some(token) = self.session_tokens.remove(&session)
                        && let Some((_, mut link)) = self.sessions.remove(&token)
                    {
                        let _ = link.flush();
                        debug!(server = %link.server, ?session, reason, "session closed");
                        let _ = self.poll.registry().deregister(&mut link.stream);
                    }
                }
                Output::PunchDial {
                    addr,
                    from_port,
                    at,
                    timeout,
                    direction,
                } => {
                    debug!(%addr, from_port, in_us = at.saturating_duration_since(now).as_micros(), "punch dial scheduled");
                    self.punches.push(PendingPunch {
                        addr,
                        from_port,
                        at,
                        timeout,
                        direction,
                    });
                }
                Output::CancelDials { addrs } => self.cancel_dials(&addrs),
                Output::RelayDial {
                    relay,
                    server,
                    token,
                } => self.start_relay(now, relay, server, token),
                Output::MailboxClose { reason } => {
                    if let Some(mut m) = self.mailbox.take() {
                        let _ = m.flush();
                        debug!(server = %m.server, reason, "mailbox connection closed");
                        let _ = self.poll.registry().deregister(&mut m.stream);
                    }
                }
                Output::Event(event) => self.record(event),
            }
        }
    }

    fn start_mailbox(&mut self, now: Instant, server: SocketAddr) {
        if let Some(mut old) = self.mailbox.take() {
            let _ = self.poll.registry().deregister(&mut old.stream);
        }
        match self.open_link(now, server, None, self.config.connect_timeout) {
            Ok(link) => {
                debug!(%server, "connecting to the mailbox server");
                self.mailbox = Some(link);
            }
            Err(e) => self
                .core
                .handle_mailbox_closed(now, &format!("cannot connect: {e}")),
        }
    }

    /// Starts a line link to `server` (from `bind_port` with reuse, if given), registered
    /// with the poll under a new token.
    fn open_link(
        &mut self,
        now: Instant,
        server: SocketAddr,
        bind_port: Option<u16>,
        timeout: Duration,
    ) -> io::Result<LineLink> {
        let mut stream = match bind_port {
            Some(port) => connect_from(punch_ip(self.config.bind), port, server)?,
            None => TcpStream::connect(server)?,
        };
        let token = self.token();
        self.register(&mut stream, token)?;
        Ok(LineLink::new(
            token,
            server,
            stream,
            now + timeout,
            MAX_REPLY_BYTES,
        ))
    }

    /// Advances the mailbox connection: finish connecting, write, read lines into the core.
    fn drive_mailbox(&mut self, now: Instant, closing: bool) {
        let Some(m) = self.mailbox.as_mut() else {
            return;
        };
        let progress = m.drive(&mut self.read_buf, closing, None);
        if progress.opened.is_some() {
            self.core.handle_mailbox_open(now);
            self.apply_outputs(now);
            if let Some(m) = self.mailbox.as_mut()
                && let Err(e) = m.flush()
            {
                self.mailbox_lost(now, &format!("write failed: {e}"));
                return;
            }
        }
        for line in progress.lines {
            self.core.handle_mailbox_line(now, &line);
        }
        if let Some(reason) = progress.failure {
            self.mailbox_lost(now, &reason);
        }
        self.apply_outputs(now);
    }

    fn mailbox_lost(&mut self, now: Instant, reason: &str) {
        if let Some(mut m) = self.mailbox.take() {
            let _ = self.poll.registry().deregister(&mut m.stream);
            debug!(server = %m.server, reason, "mailbox connection lost");
            self.core.handle_mailbox_closed(now, reason);
        }
    }

    // ---- rendezvous sessions, hole-punch dials, relays, the clock ----

    fn start_session(
        &mut self,
        now: Instant,
        session: SessionId,
        server: SocketAddr,
        bind_port: Option<u16>,
    ) {
        match self.open_link(now, server, bind_port, self.config.connect_timeout) {
            Ok(link) => {
                debug!(%server, ?session, ?bind_port, "session connecting");
                self.session_tokens.insert(session, link.token);
                self.sessions.insert(link.token, (session, link));
            }
            Err(e) => {
                let reason = format!("cannot connect to {server}: {e}");
                self.core.handle_session_closed(now, session, &reason);
            }
        }
    }

    fn drive_session(&mut self, now: Instant, token: Token, closing: bool) {
        let Some((session, link)) = self.sessions.get_mut(&token) else {
            return;
        };
        let session = *session;
        let progress = link.drive(&mut self.read_buf, closing, None);
        if let Some(local) = progress.opened {
            self.core.handle_session_open(now, session, local);
            self.apply_outputs(now);
        }
        let unix = self.unix_now();
        for line in progress.lines {
            self.core.handle_session_line(now, unix, session, &line);
        }
        if let Some(reason) = progress.failure
            && let Some((_, mut link)) = self.sessions.remove(&token)
        {
            self.session_tokens.remove(&session);
            let _ = self.poll.registry().deregister(&mut link.stream);
            debug!(server = %link.server, ?session, reason, "session lost");
            self.core.handle_session_closed(now, session, &reason);
        }
        self.apply_outputs(now);
    }

    /// Starts the hole-punch dials whose meeting time has come.
    fn start_due_punches(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.punches.len() {
            if self.punches[i].at <= now {
                due.push(self.punches.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for p in due {
            let late = now.saturating_duration_since(p.at);
            debug!(addr = %p.addr, from_port = p.from_port, late_us = late.as_micros(), "punch dial");
            let stream = connect_from(punch_ip(self.config.bind), p.from_port, p.addr)
                .map_err(|e| format!("cannot dial from port {}: {e}", p.from_port));
            self.track_dial(now, p.addr, stream, now + p.timeout, p.direction);
        }
        self.apply_outputs(now);
    }

    /// Drops dials (pending punches included) to `addrs` that have not connected.
    fn cancel_dials(&mut self, addrs: &[SocketAddr]) {
        self.punches.retain(|p| !addrs.contains(&p.addr));
        let tokens: Vec<Token> = self
            .dials
            .iter()
            .filter(|(_, d)| addrs.contains(&d.addr))
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            if let Some(mut dial) = self.dials.remove(&token) {
                let _ = self.poll.registry().deregister(&mut dial.stream);
                debug!(addr = %dial.addr, "dial cancelled");
            }
        }
    }

    fn start_relay(&mut self, now: Instant, relay: RelayId, server: SocketAddr, token: RelayToken) {
        // The other end may take a while to read its mailbox: wait up to the connect timeout.
        let timeout = self.config.unl_connect_timeout;
        match self.open_link(now, server, None, timeout) {
            Ok(mut link) => {
                link.queue(&RendezvousRequest::Relay { token }.to_string());
                debug!(%server, ?relay, "relay connecting");
                self.relay_links.insert(link.token, (relay, link));
            }
            Err(e) => {
                let reason = format!("cannot connect to relay {server}: {e}");
                self.core.handle_relay_failed(now, relay, &reason);
            }
        }
    }

    /// Advances a `RELAY` handshake; at `RELAY OK` the stream becomes a connection.
    fn drive_relay(&mut self, now: Instant, token: Token, closing: bool) {
        let Some((relay, link)) = self.relay_links.get_mut(&token) else {
            return;
        };
        let relay = *relay;
        let ok = RendezvousResponse::RelayOk.to_string();
        let progress = link.drive(&mut self.read_buf, closing, Some(&ok));
        let mut failure = progress.failure;
        let mut through = false;
        for line in &progress.lines {
            match line.parse::<RendezvousResponse>() {
                Ok(RendezvousResponse::RelayOk) => through = true,
                Ok(RendezvousResponse::RelayWaiting) => {
                    debug!(?relay, "relay: waiting for the other end");
                }
                Ok(RendezvousResponse::Error(why)) => {
                    failure = Some(format!("the relay said: {why}"));
                }
                Ok(other) => failure = Some(format!("unexpected {other} from the relay")),
                Err(e) => failure = Some(format!("bad line from the relay {line:?}: {e}")),
            }
        }
        if through {
            let Some((_, mut link)) = self.relay_links.remove(&token) else {
                return;
            };
            let _ = self.poll.registry().deregister(&mut link.stream);
            let rest = link.framer.take_buffered();
            let server = link.server;
            info!(%server, ?relay, "relayed connection through");
            self.add_relayed_conn(now, link.stream, server, relay, &rest);
            return;
        }
        if let Some(reason) = failure
            && let Some((_, mut link)) = self.relay_links.remove(&token)
        {
            let _ = self.poll.registry().deregister(&mut link.stream);
            debug!(server = %link.server, ?relay, reason, "relay failed");
            self.core.handle_relay_failed(now, relay, &reason);
            self.apply_outputs(now);
        }
    }

    /// A relayed stream becomes a connection; `rest` are bytes already read after `RELAY OK`.
    fn add_relayed_conn(
        &mut self,
        now: Instant,
        mut stream: TcpStream,
        server: SocketAddr,
        relay: RelayId,
        rest: &[u8],
    ) {
        let token = self.token();
        let id = ConnId(token.0 as u64);
        let _ = stream.set_nodelay(true);
        if let Err(e) = self.register(&mut stream, token) {
            self.core.handle_relay_failed(now, relay, &e.to_string());
            return;
        }
        self.push_conn(id, stream, server, Direction::Outbound);
        if let Some(&i) = self.index.get(&id) {
            self.conns[i].framer.push(rest);
        }
        if self.core.handle_relay_open(now, relay, id, server)
            && let (Some(&i), Some(direction)) = (self.index.get(&id), self.core.direction_of(id))
        {
            // The core decides the logical direction; keep the record in step.
            self.conns[i].direction = direction;
        }
        self.apply_outputs(now);
        self.read_conn(now, id, true);
    }

    /// Time on the shared clock: the system clock corrected by the last NTP measurement, in
    /// seconds since the Unix epoch.
    fn unix_now(&self) -> f64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        system + self.clock_offset
    }

    /// Starts an NTP measurement on a helper thread (rsntp blocks); the result comes back
    /// through a channel and wakes the loop.
    fn sync_clock(&mut self) {
        let Some(server) = self.config.ntp.clone() else {
            return;
        };
        if self.ntp_result.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let waker = Arc::clone(&self.waker);
        let spawned = std::thread::Builder::new()
            .name("ntp".to_owned())
            .spawn(move || {
                let mut client = rsntp::SntpClient::new();
                client.set_timeout(NTP_TIMEOUT);
                let result = client
                    .synchronize(server.as_str())
                    .map(|r| r.clock_offset().as_secs_f64())
                    .map_err(|e| format!("NTP server {server}: {e}"));
                let _ = tx.send(result);
                let _ = waker.wake();
            });
        match spawned {
            Ok(_) => self.ntp_result = Some(rx),
            Err(e) => warn!(error = %e, "cannot start the NTP thread"),
        }
    }

    /// Takes a finished NTP measurement; starts the next one when due.
    fn check_clock(&mut self, now: Instant) {
        if let Some(rx) = self.ntp_result.as_ref() {
            match rx.try_recv() {
                Ok(Ok(offset)) => {
                    info!(offset_ms = offset * 1000.0, "clock offset from NTP");
                    self.clock_offset = offset;
                    self.ntp_result = None;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "NTP failed; punch times use the system clock");
                    self.ntp_result = None;
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => self.ntp_result = None,
            }
        }
        if self.next_ntp.is_some_and(|t| t <= now) {
            self.next_ntp = Some(now + NTP_INTERVAL);
            self.sync_clock();
        }
    }

    /// The connect-by-UNL and mailbox part of [`Net::record`].
    fn record_unl(&mut self, event: &Event) {
        match event {
            Event::ConnectDone(outcome) => {
                if outcome.connected {
                    info!(
                        id = %outcome.id,
                        method = ?outcome.method,
                        addr = ?outcome.addr,
                        ms = outcome.ms,
                        tries = %outcome.describe_tries(),
                        "connected by UNL"
                    );
                } else {
                    warn!(
                        id = %outcome.id,
                        error = ?outcome.error,
                        ms = outcome.ms,
                        tries = %outcome.describe_tries(),
                        "connect by UNL failed"
                    );
                }
                self.outcomes.connects.insert(outcome.id, outcome.clone());
            }
            Event::MailboxUp { server } => info!(%server, "mailbox registered and subscribed"),
            Event::MailboxDown { server, reason } => {
                warn!(%server, reason, "mailbox connection down; retrying");
            }
            Event::ReverseRequested {
                from,
                addr,
                refused,
            } => match refused {
                None => info!(from, addr = ?addr, "reverse connect requested; dialing"),
                Some(why) => warn!(from, why, "reverse-connect request refused"),
            },
            Event::Registration {
                server,
                external_port,
                rtt,
                reason,
            } => {
                match (external_port, reason) {
                    (Some(port), _) => info!(
                        %server,
                        external_port = port,
                        rtt_us = rtt.map(|r| r.as_micros()),
                        "registered as a simultaneous node"
                    ),
                    (None, Some(why)) => warn!(%server, why, "simultaneous registration lost"),
                    (None, None) => {}
                }
                self.refresh_unl();
            }
            Event::Challenge {
                from,
                their_ports,
                our_ports,
                meeting_in,
                refused,
            } => match refused {
                None => info!(
                    %from,
                    ?their_ports,
                    ?our_ports,
                    meeting_in_us = meeting_in.as_micros(),
                    "hole punch: challenge accepted"
                ),
                Some(why) => warn!(%from, ?their_ports, why, "hole punch: challenge refused"),
            },
            _ => {}
        }
    }

    /// Logs an event, fills in the outcome a blocking helper may wait for, and queues it.
    fn record(&mut self, event: Event) {
        match &event {
            Event::Bootstrapped {
                server,
                offered,
                dialing,
            } => {
                info!(%server, offered, dialing, "bootstrapped");
                self.outcomes.bootstrap = Some(Ok(BootstrapReport {
                    server: *server,
                    offered: *offered,
                    dialing: *dialing,
                }));
            }
            Event::Advertised {
                server,
                observed_port,
            } => {
                info!(%server, observed_port, "advertised");
                self.outcomes.advertise = Some(Ok(*observed_port));
            }
            Event::Cleared { server } => {
                debug!(%server, "registration cleared");
                self.outcomes.clear = Some(());
            }
            Event::NatDetected {
                server,
                mapping,
                probes,
            } => {
                info!(%server, %mapping, ?probes, "NAT detected");
                self.nat_type = match mapping {
                    NatMapping::Preserving => NatType::Preserving,
                    NatMapping::Delta(_) => NatType::Delta,
                    NatMapping::Random => NatType::Random,
                };
                self.outcomes.nat = Some(Ok(NatReport {
                    server: *server,
                    mapping: *mapping,
                    probes: probes.clone(),
                }));
            }
            Event::RendezvousFailed { job, errors } => {
                warn!(%job, errors = %describe(errors), "rendezvous failed");
                let err = || NetError::Rendezvous {
                    job: *job,
                    errors: errors.clone(),
                };
                match job {
                    Job::Bootstrap => self.outcomes.bootstrap = Some(Err(err())),
                    Job::Advertise => self.outcomes.advertise = Some(Err(err())),
                    Job::Clear => self.outcomes.clear = Some(()),
                    Job::NatProbe(_) => self.outcomes.nat = Some(Err(err())),
                }
            }
            Event::Connected {
                conn,
                addr,
                direction,
            } => debug!(conn = %conn, %addr, ?direction, "connection open"),
            Event::Disconnected { conn, addr, reason } => {
                debug!(conn = %conn, %addr, reason, "connection closed");
            }
            Event::DialFailed { addr, reason } => debug!(%addr, reason, "dial failed"),
            Event::Registration { .. }
            | Event::Challenge { .. }
            | Event::ConnectDone(_)
            | Event::MailboxUp { .. }
            | Event::MailboxDown { .. }
            | Event::ReverseRequested { .. } => self.record_unl(&event),
        }
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
            if self.dropped_events.is_power_of_two() {
                warn!(
                    dropped = self.dropped_events,
                    "the application does not drain Net::events; dropping the oldest"
                );
            }
        }
        self.events.push_back(event);
    }

    fn flush_all(&mut self) {
        let now = Instant::now();
        let mut broken = Vec::new();
        for c in &mut self.conns {
            if c.has_output()
                && let Err(e) = c.flush()
            {
                broken.push((c.id, format!("write failed: {e}")));
            }
        }
        for (conn, reason) in broken {
            self.lost(now, conn, &reason);
        }
    }

    /// Carries out close requests, times out dials and queries, and drops closed connections
    /// whose lines have all been read.
    fn reap(&mut self) {
        let now = Instant::now();
        let requests: Vec<(ConnId, String)> = self
            .conns
            .iter()
            .filter_map(|c| c.close_request.clone().map(|r| (c.id, r)))
            .collect();
        for (conn, reason) in requests {
            self.lost(now, conn, &reason);
        }
        self.expire(now);
        let mut i = 0;
        while i < self.conns.len() {
            if self.conns[i].closed.is_some() && self.conns[i].inbox.is_empty() {
                let gone = self.conns.swap_remove(i);
                self.index.remove(&gone.id);
                if let Some(moved) = self.conns.get(i) {
                    self.index.insert(moved.id, i);
                }
            } else {
                i += 1;
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        if self
            .mailbox
            .as_ref()
            .is_some_and(|m| !m.connected && m.deadline <= now)
        {
            let reason = format!("no answer within {:?}", self.config.connect_timeout);
            self.mailbox_lost(now, &reason);
        }
        let late: Vec<Token> = self
            .sessions
            .iter()
            .filter(|(_, (_, l))| !l.connected && l.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some((session, mut link)) = self.sessions.remove(&token) {
                self.session_tokens.remove(&session);
                let _ = self.poll.registry().deregister(&mut link.stream);
                let reason = format!(
                    "no answer from {} within {:?}",
                    link.server, self.config.connect_timeout
                );
                self.core.handle_session_closed(now, session, &reason);
            }
        }
        let late: Vec<Token> = self
            .relay_links
            .iter()
            .filter(|(_, (_, l))| l.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some((relay, mut link)) = self.relay_links.remove(&token) {
                let _ = self.poll.registry().deregister(&mut link.stream);
                let reason = format!("the other end did not come to relay {}", link.server);
                self.core.handle_relay_failed(now, relay, &reason);
            }
        }
        let late: Vec<Token> = self
            .dials
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some(mut dial) = self.dials.remove(&token) {
                let _ = self.poll.registry().deregister(&mut dial.stream);
                self.core.handle_dial_failed(
                    now,
                    dial.addr,
                    "no answer before the dial's deadline",
                );
            }
        }
        let late: Vec<Token> = self
            .queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some(mut q) = self.queries.remove(&token) {
                let _ = self.poll.registry().deregister(&mut q.stream);
                let reason = format!("no answer within {:?}", self.config.query_timeout);
                self.core.handle_query_done(now, q.id, Err(reason));
            }
        }
    }
}

impl Connection {
    fn flush_on(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        while self.written < self.out.len() {
            match stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Mappings left on the router if `stop` was not called.
        self.reach.release_all(reachability::RELEASE_LIMIT);
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

/// A non-blocking connect still in flight reports `EINPROGRESS` (see DESIGN.md).
fn libc_einprogress() -> i32 {
    libc::EINPROGRESS
}

/// What [`Net::connect`] accepts: a [`Unl`] or a [`SocketAddr`].
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

impl ConnectTarget for SocketAddr {
    type Handle = ();
    fn connect_with(self, net: &mut Net) {
        net.connect_addr(self);
    }
}

fn resolve(what: &'static str, name: &str) -> Result<SocketAddr, NetError> {
    let err = |reason: String| NetError::ResolveServer {
        what,
        name: name.to_owned(),
        reason,
    };
    name.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| err("no IPv4 address".to_owned()))
}
