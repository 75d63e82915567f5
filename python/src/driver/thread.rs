//! The node's thread: creates the [`node::Net`], then turns its loop (`poll(None)`: it sleeps
//! until a socket, a timer or the waker) and, after every turn, carries out the Python side's
//! commands and publishes lines, events and connect outcomes into the shared [`State`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Duration;

use mio::Waker;
use node::connect::ConnectId;
use node::core::{ConnId, Direction, Event};
use node::wire::unl::NodeType;
use node::wire::unl::v3::AnyUnl;
use node::{Config, Net, NetError, Role};
use tracing::{info, warn};

use super::{
    Command, ConnState, DriverError, MAX_CLOSED_KEPT, MAX_EVENTS, Shared, StartReport, State,
};
use crate::events::NodeEvent;

/// How long `start()` waits for the node's role, registration and mailbox (as `p2p-node run`
/// does; it keeps trying in the background after that).
const READY_WAIT: Duration = Duration::from_secs(5);

/// The thread's body: `ready` gets the waker once the node exists (or why it could not be
/// created); then the loop runs until `Stop` or until every sender is gone.
pub(super) fn run(
    config: Config,
    debug: u8,
    commands: Receiver<Command>,
    shared: &Arc<Shared>,
    ready: &Sender<Result<Arc<Waker>, NetError>>,
) {
    let _logging = logging(debug);
    let plan = Plan::from(&config);
    let net = match Net::new(config) {
        Ok(net) => net,
        Err(e) => {
            let why = e.to_string();
            let _ = ready.send(Err(e));
            end(shared, why);
            return;
        }
    };
    let _ = ready.send(Ok(net.waker()));
    let mut driver = Loop {
        net,
        shared,
        commands,
        plan,
        started: false,
        nat_detected: false,
        connects: HashMap::new(),
        outbox: Vec::new(),
        closing: HashSet::new(),
    };
    let why = driver.run();
    driver.net.stop();
    driver.publish();
    info!(why, "node thread ends");
    end(shared, why.to_owned());
}

/// What `start()` does beyond opening the listener, from the configuration.
// One flag per thing to do, read once each.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Copy)]
struct Plan {
    has_rendezvous: bool,
    probe: bool,
    passive: bool,
    simultaneous: bool,
    auto: bool,
}

impl From<&Config> for Plan {
    fn from(config: &Config) -> Plan {
        Plan {
            has_rendezvous: !config.rendezvous.is_empty(),
            // As `p2p-node run`: only a forwarding check can prove a mapping, so probe only
            // with one.
            probe: config.listen && config.forwarding_check.is_some(),
            passive: config.node_type == Role::Passive,
            simultaneous: config.node_type == Role::Simultaneous,
            auto: config.node_type == Role::Auto,
        }
    }
}

struct Loop<'a> {
    net: Net,
    shared: &'a Shared,
    commands: Receiver<Command>,
    plan: Plan,
    started: bool,
    nat_detected: bool,
    /// Connects in flight: the node's id → the Python side's ticket.
    connects: HashMap<ConnectId, u64>,
    /// Lines to send, taken from the commands of this turn.
    outbox: Vec<(ConnId, String)>,
    closing: HashSet<ConnId>,
}

impl Loop<'_> {
    /// Runs until stopped; returns why.
    fn run(&mut self) -> &'static str {
        // Until the first command (usually `start()`) the node opens nothing.
        while !self.started {
            match self.commands.recv() {
                Ok(Command::Stop) | Err(_) => return "stopped before it started",
                Ok(command) => {
                    self.handle(command);
                }
            }
        }
        loop {
            // A sender wakes the thread only when `wake_pending` was clear. The flag is
            // cleared before the commands are taken, and the loop waits in `poll` only after
            // a pass in which no command ran the node's loop itself: such a command (a
            // bootstrap, say) may have consumed the waker's event of a command sent
            // meanwhile, which would then wait for the next timer.
            self.shared.wake_pending.store(false, Ordering::SeqCst);
            let mut polled = false;
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Stop) => return "stop() was called",
                    Ok(command) => polled |= self.handle(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return "the Net was dropped",
                }
            }
            if polled {
                continue;
            }
            self.flush_outbox();
            self.publish();
            if let Err(e) = self.net.poll(None) {
                warn!(error = %e, "event loop turn failed");
                // Do not spin on a persistent failure.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Carries out `command`; returns whether it may have run the node's loop (a blocking
    /// node call polls by itself).
    fn handle(&mut self, command: Command) -> bool {
        let polls = !self.started
            || !matches!(
                command,
                Command::Send { .. } | Command::Close(_) | Command::Broadcast(_)
            );
        match command {
            Command::Start(reply) => {
                let report = self.ensure_started().map(|()| StartReport {
                    local_addr: self.net.local_addr(),
                    mailbox_ready: self.net.mailbox_ready(),
                    registered: self.net.registered(),
                });
                let _ = reply.send(report);
            }
            Command::Bootstrap(reply) => {
                let result = self
                    .ensure_started()
                    .and_then(|()| Ok(self.net.bootstrap()?));
                let _ = reply.send(result);
            }
            Command::Advertise(reply) => {
                let result = self
                    .ensure_started()
                    .and_then(|()| Ok(self.net.advertise()?));
                let _ = reply.send(result);
            }
            Command::Unl(reply) => {
                let result = self.ensure_started().map(|()| self.net.unl().to_string());
                let _ = reply.send(result);
            }
            Command::UnlV2(reply) => {
                let result = self
                    .ensure_started()
                    .map(|()| self.net.unl_v2().to_string());
                let _ = reply.send(result);
            }
            Command::Connect { unl, ticket } => self.connect(&unl, ticket),
            Command::Send { conn, line } => self.outbox.push((conn, line)),
            Command::Close(conn) => {
                self.closing.insert(conn);
            }
            Command::Broadcast(line) => {
                if let Err(e) = self.ensure_started() {
                    warn!(error = %e, "cannot start the node to broadcast");
                } else if let Err(e) = self.net.broadcast(&line) {
                    warn!(error = %e, "broadcast refused");
                }
            }
            // Handled by the callers of `handle`.
            Command::Stop => {}
        }
        polls
    }

    /// Starts the node once, the way `p2p-node run` does: listener, reachability probe (with
    /// a forwarding check), NAT detection and registration (simultaneous nodes), mailbox.
    fn ensure_started(&mut self) -> Result<(), DriverError> {
        if self.started {
            return Ok(());
        }
        self.net.start()?;
        self.started = true;
        let mut passive = false;
        if self.plan.probe {
            match self.net.probe_reachability() {
                Ok(report) => {
                    passive = report.node_type == node::reach::NodeKind::Passive;
                    if !passive && self.plan.passive {
                        // As `p2p-node connect`: nobody can dial us, so we ask for no reverse
                        // connect and advertise nothing.
                        info!("this node cannot be dialed: it runs as an active node");
                        self.net.set_reachability(Role::Active, None);
                    }
                }
                Err(e) => warn!(error = %e, "reachability probe failed; the node starts anyway"),
            }
        }
        if self.plan.simultaneous && !passive {
            // An explicit simultaneous node predicts its ports from its NAT's mapping (an
            // auto one detects it by itself).
            self.detect_nat();
        }
        // As `p2p-node run`: the role, the registration and the mailbox before anything is
        // handed out (the UNL must not name what is not established).
        let ready = self.net.wait_ready(READY_WAIT)?;
        if ready.pending.is_empty() {
            info!(role = %ready.role, wan_ip = ?ready.wan_ip, "ready");
        } else {
            warn!(
                pending = %ready.pending.join("; "),
                "not everything was ready within {READY_WAIT:?}; still trying"
            );
        }
        self.shared.lock().local_addr = self.net.local_addr();
        Ok(())
    }

    fn detect_nat(&mut self) {
        if self.nat_detected {
            return;
        }
        self.nat_detected = true;
        match self.net.detect_nat() {
            Ok(report) => info!(mapping = %report.mapping, "NAT detected"),
            Err(e) => warn!(error = %e, "NAT detection failed; assuming a port-preserving NAT"),
        }
    }

    fn connect(&mut self, unl: &AnyUnl, ticket: u64) {
        if let Err(e) = self.ensure_started() {
            warn!(error = %e, "cannot start the node to connect");
        }
        if unl.to_v2().node_type == NodeType::Simultaneous
            && self.plan.has_rendezvous
            && !self.plan.auto
        {
            // A punch predicts our ports from our NAT's mapping (an auto node knows it).
            self.detect_nat();
        }
        let id = self.net.connect(unl);
        self.connects.insert(id, ticket);
    }

    /// Carries out this turn's sends and closes, one pass over the connections.
    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() && self.closing.is_empty() {
            return;
        }
        let mut by_conn: HashMap<ConnId, Vec<String>> = HashMap::new();
        for (conn, line) in self.outbox.drain(..) {
            by_conn.entry(conn).or_default().push(line);
        }
        let mut taken: Vec<(ConnId, usize)> = Vec::with_capacity(by_conn.len());
        for con in self.net.connections() {
            let id = con.id();
            if let Some(lines) = by_conn.remove(&id) {
                let bytes = lines.iter().map(|l| l.len() + 2).sum();
                for line in lines {
                    if let Err(e) = con.send_line(&line) {
                        warn!(conn = %id, error = %e, "line not sent");
                        break;
                    }
                }
                taken.push((id, bytes));
            }
            if self.closing.remove(&id) {
                con.close();
            }
        }
        // Lines for connections that are gone.
        for (id, lines) in by_conn {
            taken.push((id, lines.iter().map(|l| l.len() + 2).sum()));
        }
        self.closing.clear();
        let mut st = self.shared.lock();
        for (id, bytes) in taken {
            if let Some(c) = st.conns.get_mut(&id) {
                c.in_channel = c.in_channel.saturating_sub(bytes);
            }
        }
    }

    /// Moves the node's events and received lines into the shared state; wakes the waiters.
    fn publish(&mut self) {
        let events: Vec<Event> = self.net.events().collect();
        let mut st = self.shared.lock();
        for event in events {
            self.apply(&mut st, &event);
            if st.events.len() >= MAX_EVENTS {
                st.events.pop_front();
                st.dropped_events += 1;
            }
            st.events.push_back(NodeEvent::from(&event));
        }
        for con in self.net.connections() {
            let c = st
                .conns
                .entry(con.id())
                .or_insert_with(|| ConnState::new(con.addr(), con.direction()));
            c.inbox.extend(con.lines());
            c.queued = con.queued_bytes();
        }
        drop(st);
        self.shared.changed.notify_all();
    }

    /// What an event changes in the shared state.
    fn apply(&mut self, st: &mut State, event: &Event) {
        match event {
            Event::Connected {
                conn,
                addr,
                direction,
            } => {
                st.conns
                    .entry(*conn)
                    .or_insert_with(|| ConnState::new(*addr, *direction));
                st.conn_generation += 1;
            }
            Event::Disconnected { conn, addr, reason } => {
                let c = st
                    .conns
                    .entry(*conn)
                    .or_insert_with(|| ConnState::new(*addr, Direction::Outbound));
                c.info.open = false;
                c.info.reason = Some(reason.clone());
                st.conn_generation += 1;
                st.closed_order.push_back(*conn);
                if st.closed_order.len() > MAX_CLOSED_KEPT
                    && let Some(old) = st.closed_order.pop_front()
                {
                    st.conns.remove(&old);
                }
            }
            Event::ConnectDone(outcome) => {
                if let (Some(conn), Some(addr)) = (outcome.conn, outcome.addr) {
                    st.conns
                        .entry(conn)
                        .or_insert_with(|| ConnState::new(addr, Direction::Outbound))
                        .info
                        .method = outcome.method;
                }
                if let Some(ticket) = self.connects.remove(&outcome.id)
                    && !st.abandoned.remove(&ticket)
                {
                    st.connects.insert(ticket, outcome.clone());
                }
            }
            _ => {}
        }
    }
}

/// Marks the thread as ended (blocking calls return with `why`) and wakes every waiter.
fn end(shared: &Shared, why: String) {
    let mut st = shared.lock();
    for c in st.conns.values_mut() {
        if c.info.open {
            c.info.open = false;
            c.info.reason = Some("node stopped".to_owned());
        }
    }
    st.ended = Some(why);
    drop(st);
    shared.changed.notify_all();
}

/// Logs of this node's thread on stderr, when asked for (a scoped subscriber, so each `Net`
/// chooses for itself and nothing global is installed).
fn logging(debug: u8) -> Option<tracing::subscriber::DefaultGuard> {
    if debug == 0 {
        return None;
    }
    let level = if debug == 1 { "info" } else { "debug" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .finish();
    Some(tracing::subscriber::set_default(subscriber))
}
