//! `p2pnode.Connection` (`for reply in con`, `con.send_line(...)`) and `p2pnode.Event`.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyList;

use node::connect::Method;
use node::core::{ConnId, Direction};

use crate::driver::{ConnInfo, Driver, DriverError};
use crate::events::NodeEvent;
use crate::py_errors;
use crate::py_net::{seconds, waited};

/// The interrupt check of every blocking call: re-takes the GIL for a moment and raises
/// `KeyboardInterrupt` (or what a signal handler raised) if a signal came.
pub(crate) fn interrupt() -> PyResult<()> {
    // A closure, not the method path: `attach` needs it for every `Python<'py>` lifetime.
    #[allow(clippy::redundant_closure_for_method_calls)]
    Python::attach(|py| py.check_signals())
}

/// `(ip, port)`, as PyP2P's `con.addr`.
pub(crate) fn addr_tuple(addr: SocketAddr) -> (String, u16) {
    (addr.ip().to_string(), addr.port())
}

fn method_name(method: Method) -> String {
    method.to_string()
}

/// One connection to a peer. `for reply in con` yields the complete lines received since
/// the last pass (never blocks); `con.send_line(s)` queues a line.
#[pyclass(module = "p2pnode", name = "Connection", frozen)]
pub(crate) struct PyConnection {
    /// Weak, so a connection kept after its `Net` is gone does not keep the node running.
    driver: Weak<Driver>,
    id: ConnId,
    addr: SocketAddr,
    direction: Direction,
    send_timeout: Option<Duration>,
}

impl PyConnection {
    pub(crate) fn new(
        driver: &Arc<Driver>,
        id: ConnId,
        info: &ConnInfo,
        send_timeout: Option<Duration>,
    ) -> PyConnection {
        PyConnection {
            driver: Arc::downgrade(driver),
            id,
            addr: info.addr,
            direction: info.direction,
            send_timeout,
        }
    }

    fn driver(&self, py: Python<'_>) -> PyResult<Arc<Driver>> {
        self.driver.upgrade().ok_or_else(|| {
            py_errors::from_driver(
                py,
                &DriverError::Stopped("its Net was garbage-collected".to_owned()),
            )
        })
    }

    fn info(&self) -> Option<ConnInfo> {
        self.driver.upgrade().and_then(|d| d.conn_info(self.id))
    }
}

#[pymethods]
impl PyConnection {
    /// The lines received since the last pass, oldest first, without line terminators.
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let lines = self
            .driver
            .upgrade()
            .map(|d| d.take_lines(self.id))
            .unwrap_or_default();
        Ok(PyList::new(py, lines)?.try_iter()?.into_any())
    }

    /// Queues `line` (`\r\n` is added). Blocks while 4 MiB are already waiting for a peer
    /// that does not read (up to the Net's `send_timeout`); raises `LineError` for a line with
    /// `\r` or `\n`, `ConnectionClosed` when the connection is closed.
    fn send_line(&self, py: Python<'_>, line: &str) -> PyResult<()> {
        let driver = self.driver(py)?;
        // The GIL is released only when the call has to wait (hundreds of ns saved a line).
        match driver.try_send_line(self.id, line) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(py_errors::from_driver(py, &e)),
        }
        let deadline = self.send_timeout.map(|t| Instant::now() + t);
        py.detach(|| driver.send_line(self.id, line, deadline, interrupt))
            .map_err(|e| waited(py, e))
    }

    /// Takes the oldest unread line, waiting up to `timeout` seconds for one (`None`: as long
    /// as the connection is open; 0: do not wait). `None` when none came or it closed.
    #[pyo3(signature = (timeout=None))]
    fn recv_line(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<String>> {
        let driver = self.driver(py)?;
        let deadline = seconds(py, "timeout", timeout)?.map(|t| Instant::now() + t);
        py.detach(|| driver.recv_line(self.id, deadline, interrupt))
    }

    /// Closes the connection (at the node's next turn; unread lines stay readable).
    fn close(&self) {
        if let Some(driver) = self.driver.upgrade() {
            driver.close(self.id);
        }
    }

    /// The peer's `(ip, port)`.
    #[getter]
    fn addr(&self) -> (String, u16) {
        addr_tuple(self.addr)
    }

    /// How `net.connect(unl)` opened it: `"lan"`, `"direct"`, `"ipv6"`, `"reverse"`, `"punch"`,
    /// `"relay"` or `"existing"`; `None` for overlay and inbound connections.
    #[getter]
    fn method(&self) -> Option<String> {
        self.info().and_then(|i| i.method).map(method_name)
    }

    /// `"inbound"` (the peer dialed) or `"outbound"`.
    #[getter]
    fn direction(&self) -> &'static str {
        match self.direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    /// The connection's number in its node.
    #[getter]
    fn id(&self) -> u64 {
        self.id.0
    }

    /// Whether it is open.
    #[getter]
    fn is_open(&self) -> bool {
        self.info().is_some_and(|i| i.open)
    }

    /// Why it closed (`None` while open).
    #[getter]
    fn close_reason(&self) -> Option<String> {
        match self.info() {
            Some(info) if info.open => None,
            Some(info) => Some(info.reason.unwrap_or_else(|| "closed".to_owned())),
            None => Some("closed".to_owned()),
        }
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyConnection>()
            .is_ok_and(|o| o.get().id == self.id && Weak::ptr_eq(&o.get().driver, &self.driver))
    }

    fn __hash__(&self) -> u64 {
        self.id.0
    }

    fn __repr__(&self) -> String {
        let state = if self.is_open() { "open" } else { "closed" };
        let method = self
            .method()
            .map(|m| format!(" by {m}"))
            .unwrap_or_default();
        format!(
            "<p2pnode.Connection {} {} {}{method} {state}>",
            self.id,
            self.addr,
            self.direction()
        )
    }
}

/// Something that happened in the node (`net.events()`).
#[pyclass(module = "p2pnode", name = "Event", frozen, get_all)]
pub(crate) struct PyEvent {
    /// `connected`, `disconnected`, `dial_failed`, `bootstrapped`, `advertised`, `cleared`,
    /// `nat_detected`, `connect_done`, `mailbox_up`, `mailbox_down`, `reverse_requested`,
    /// `registration`, `challenge` or `rendezvous_failed`.
    kind: &'static str,
    /// The connection's number (`Connection.id`) when it concerns one.
    conn_id: Option<u64>,
    /// The peer's or server's `(ip, port)` when it concerns one.
    addr: Option<(String, u16)>,
    /// Why it failed or closed (when it did).
    reason: Option<String>,
    /// The event in one line.
    text: String,
}

impl From<NodeEvent> for PyEvent {
    fn from(e: NodeEvent) -> PyEvent {
        PyEvent {
            kind: e.kind,
            conn_id: e.conn.map(|c| c.0),
            addr: e.addr.map(addr_tuple),
            reason: e.reason,
            text: e.text,
        }
    }
}

#[pymethods]
impl PyEvent {
    fn __repr__(&self) -> String {
        format!("<p2pnode.Event {}: {}>", self.kind, self.text)
    }
}
