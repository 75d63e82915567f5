//! What the Python side and the node's thread share: the commands one way, the published
//! state (inboxes, events, outcomes) the other, and the wake-up flag.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use node::BootstrapReport;
use node::connect::ConnectOutcome;
use node::core::{ConnId, Direction};
use node::wire::unl::v3::AnyUnl;

use super::{ConnInfo, DriverError, SLICE, StartReport};
use crate::events::NodeEvent;

/// A reply channel for one request.
pub(super) type Reply<T> = Sender<Result<T, DriverError>>;

/// What the Python side asks of the node's thread.
pub(super) enum Command {
    Start(Reply<StartReport>),
    Bootstrap(Reply<BootstrapReport>),
    Advertise(Reply<u16>),
    Unl(Reply<String>),
    UnlV2(Reply<String>),
    Connect { unl: AnyUnl, ticket: u64 },
    Send { conn: ConnId, line: String },
    Close(ConnId),
    Broadcast(String),
    Stop,
}

/// A connection's state on the Python side of the thread boundary.
#[derive(Debug)]
pub(super) struct ConnState {
    pub(super) info: ConnInfo,
    pub(super) inbox: VecDeque<String>,
    /// Bytes the node had queued for the peer after its last turn.
    pub(super) queued: usize,
    /// Bytes sent from Python that the node's thread has not taken yet.
    pub(super) in_channel: usize,
}

impl ConnState {
    pub(super) fn new(addr: SocketAddr, direction: Direction) -> ConnState {
        ConnState {
            info: ConnInfo {
                addr,
                direction,
                method: None,
                open: true,
                reason: None,
            },
            inbox: VecDeque::new(),
            queued: 0,
            in_channel: 0,
        }
    }
}

/// Everything the node's thread publishes after each turn.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) conns: BTreeMap<ConnId, ConnState>,
    pub(super) closed_order: VecDeque<ConnId>,
    pub(super) events: VecDeque<NodeEvent>,
    pub(super) dropped_events: u64,
    /// Finished connects by ticket.
    pub(super) connects: HashMap<u64, ConnectOutcome>,
    /// Tickets nobody waits for any more (their outcome is dropped when it comes).
    pub(super) abandoned: HashSet<u64>,
    pub(super) local_addr: Option<SocketAddr>,
    /// Set when the thread ended, with why.
    pub(super) ended: Option<String>,
    /// Bumped when a connection opens or closes.
    pub(super) conn_generation: u64,
}

/// What both sides share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
    /// Set by a sender that woke the thread; cleared by the thread before it takes commands.
    pub(super) wake_pending: AtomicBool,
    /// Set by `stop()`: blocking calls return at once.
    pub(super) stopping: AtomicBool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits on the condition variable for one slice.
    pub(super) fn wait_slice<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(guard, SLICE)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}
