//! `p2pnode.Net`: the node, PyP2P's way (`start()`, `bootstrap()`, `advertise()`,
//! `for con in net`), running on its own thread (see [`crate::driver`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTypeError, PyUserWarning};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use node::connect::ConnectOutcome;
use node::core::ConnId;
use node::wire::unl::v3::AnyUnl;

use crate::driver::{Driver, Waited};
use crate::options::Options;
use crate::py_conn::{PyConnection, PyEvent, addr_tuple, interrupt};
use crate::py_errors::{self, Kind};

/// Callbacks of a connect started with `events=`.
struct Callbacks {
    success: Option<Py<PyAny>>,
    failure: Option<Py<PyAny>>,
}

/// A node. `Net(...)` creates it (resolving its servers); `start()` opens it.
#[pyclass(module = "p2pnode", name = "Net", frozen)]
pub(crate) struct PyNet {
    driver: Arc<Driver>,
    /// One `Connection` object per connection, so `for con in net` yields the same objects.
    conns: Mutex<HashMap<ConnId, Py<PyConnection>>>,
    callbacks: Mutex<HashMap<u64, Callbacks>>,
    /// The connection generation `wait()` last saw.
    generation: AtomicU64,
    send_timeout: Option<Duration>,
}

/// Seconds from Python as a duration (`None` stays `None`).
pub(crate) fn seconds(
    py: Python<'_>,
    name: &str,
    value: Option<f64>,
) -> PyResult<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s.min(1e9)))),
        Some(s) => Err(py_errors::raise(
            py,
            Kind::Config,
            &format!("{name}={s} is not valid: expected seconds >= 0"),
            &[],
        )),
    }
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

impl PyNet {
    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Py<PyConnection>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `Connection` object for `id` (the same one every time).
    fn connection(&self, py: Python<'_>, id: ConnId) -> PyResult<Option<Py<PyConnection>>> {
        if let Some(con) = self.lock_conns().get(&id) {
            return Ok(Some(con.clone_ref(py)));
        }
        let Some(info) = self.driver.conn_info(id) else {
            return Ok(None);
        };
        let con = Py::new(
            py,
            PyConnection::new(&self.driver, id, &info, self.send_timeout),
        )?;
        self.lock_conns().insert(id, con.clone_ref(py));
        Ok(Some(con))
    }

    /// Calls the callbacks of connects that have finished.
    fn dispatch(&self, py: Python<'_>) -> PyResult<()> {
        let tickets: Vec<u64> = self
            .callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        for ticket in tickets {
            let Some(outcome) = self.driver.connect_take(ticket) else {
                continue;
            };
            let callbacks = self
                .callbacks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&ticket);
            let Some(callbacks) = callbacks else { continue };
            match self.outcome_connection(py, &outcome)? {
                Ok(con) => {
                    if let Some(success) = callbacks.success {
                        success.call1(py, (con,))?;
                    }
                }
                Err(err) => {
                    if let Some(failure) = callbacks.failure {
                        failure.call1(py, (err.into_value(py),))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The connection a connect opened, or its `ConnectError`.
    fn outcome_connection(
        &self,
        py: Python<'_>,
        outcome: &ConnectOutcome,
    ) -> PyResult<Result<Py<PyConnection>, PyErr>> {
        match outcome.conn {
            Some(id) if outcome.connected => match self.connection(py, id)? {
                Some(con) => Ok(Ok(con)),
                None => Ok(Err(py_errors::raise(
                    py,
                    Kind::ConnectionClosed,
                    &format!(
                        "connection {id} opened by {} closed at once",
                        outcome.target
                    ),
                    &[],
                ))),
            },
            _ => Ok(Err(py_errors::connect_failed(py, outcome))),
        }
    }
}

/// The error of a blocking call as a Python exception.
pub(crate) fn waited(py: Python<'_>, e: Waited<PyErr>) -> PyErr {
    match e {
        Waited::Failed(e) => py_errors::from_driver(py, &e),
        Waited::Interrupted(e) => e,
    }
}

#[pymethods]
impl PyNet {
    #[new]
    #[pyo3(signature = (
        *, passive_bind=None, passive_port=0, node_type=None, max_outbound=None,
        max_inbound=None, debug=None, rendezvous=None, dht_msg=None, ntp=None,
        forwarding_check=None, wan_ip=None, upnp=None, natpmp=None, listen=None, seed=None,
        net_type=None, interface=None, dht_node=None, send_timeout=None, config=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        passive_bind: Option<String>,
        passive_port: u16,
        node_type: Option<String>,
        max_outbound: Option<usize>,
        max_inbound: Option<usize>,
        debug: Option<u8>,
        rendezvous: Option<Bound<'_, PyAny>>,
        dht_msg: Option<String>,
        ntp: Option<String>,
        forwarding_check: Option<String>,
        wan_ip: Option<String>,
        upnp: Option<bool>,
        natpmp: Option<bool>,
        listen: Option<bool>,
        seed: Option<u64>,
        net_type: Option<String>,
        interface: Option<String>,
        dht_node: Option<Bound<'_, PyAny>>,
        send_timeout: Option<f64>,
        config: Option<Bound<'_, PyDict>>,
    ) -> PyResult<PyNet> {
        if let Some(interface) = interface {
            let warning = py.get_type::<PyUserWarning>();
            let text = format!(
                "interface={interface:?} is ignored: connections go out by the routing table \
                 (passive_bind chooses the listening address)"
            );
            PyErr::warn(py, &warning, &std::ffi::CString::new(text)?, 1)?;
        }
        let rendezvous = match rendezvous {
            None => Vec::new(),
            Some(r) if r.is_instance_of::<PyString>() => vec![r.extract::<String>()?],
            Some(r) => r.extract::<Vec<String>>().map_err(|_| {
                PyTypeError::new_err("rendezvous= takes \"host:port\" or a list of them")
            })?,
        };
        // PyP2P's `dht_node=DHT(...)`: our mailbox server.
        let dht_msg = match (dht_msg, dht_node) {
            (Some(server), _) => Some(server),
            (None, Some(node)) if node.is_instance_of::<PyString>() => Some(node.extract()?),
            (None, Some(node)) => Some(node.getattr("server")?.extract()?),
            (None, None) => None,
        };
        let options = Options {
            passive_bind,
            passive_port,
            node_type,
            net_type,
            max_outbound,
            max_inbound,
            rendezvous,
            dht_msg,
            ntp,
            forwarding_check,
            wan_ip,
            upnp,
            natpmp,
            listen,
            seed,
            config: match config {
                Some(dict) => crate::json::dict_to_map(&dict)?,
                None => serde_json::Map::new(),
            },
        };
        let send_timeout = seconds(py, "send_timeout", send_timeout)?;
        let (config, kind) = options
            .build()
            .map_err(|e| py_errors::raise(py, Kind::Config, &e.to_string(), &[]))?;
        let debug = debug.unwrap_or(0);
        let driver = py
            .detach(|| Driver::spawn(config, kind, debug))
            .map_err(|e| py_errors::from_driver(py, &e))?;
        Ok(PyNet {
            driver: Arc::new(driver),
            conns: Mutex::new(HashMap::new()),
            callbacks: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            send_timeout,
        })
    }

    /// Opens the node: listens, probes reachability (with `forwarding_check`), registers a
    /// simultaneous node for hole punching and its mailbox (with `dht_msg`), each within a
    /// few seconds. Idempotent.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let driver = &self.driver;
        py.detach(|| driver.start(interrupt))
            .map(|_| ())
            .map_err(|e| waited(py, e))
    }

    /// Asks the rendezvous servers for nodes and connects to them; returns
    /// `{"server", "offered", "dialing"}` (`None` on a `net_type="direct"` net). The node
    /// bootstraps again by itself whenever it is below `max_outbound`.
    fn bootstrap<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let driver = &self.driver;
        let report = py
            .detach(|| driver.bootstrap(interrupt))
            .map_err(|e| waited(py, e))?;
        report
            .map(|r| {
                let d = PyDict::new(py);
                d.set_item("server", r.server.to_string())?;
                d.set_item("offered", r.offered)?;
                d.set_item("dialing", r.dialing)?;
                Ok(d)
            })
            .transpose()
    }

    /// Registers this node with the rendezvous so others find it (again every 5 minutes);
    /// returns the port the server saw (`None` on a `net_type="direct"` net).
    fn advertise(&self, py: Python<'_>) -> PyResult<Option<u16>> {
        let driver = &self.driver;
        py.detach(|| driver.advertise(interrupt))
            .map_err(|e| waited(py, e))
    }

    /// Stops the node: removes its registration, flushes, closes every connection and ends
    /// its thread. Blocking calls in other threads return with `NodeStopped`. Idempotent.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let driver = &self.driver;
        py.detach(|| driver.stop(interrupt))?;
        self.lock_conns().clear();
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().start(slf.py())?;
        Ok(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    /// Floods `line` to the whole overlay: every other node gets it once.
    fn broadcast(&self, py: Python<'_>, line: &str) -> PyResult<()> {
        self.driver
            .broadcast(line)
            .map_err(|e| py_errors::from_driver(py, &e))
    }

    /// `for con in net`: calls the callbacks of finished connects, then yields every
    /// connection (open, or closed with unread lines). Never blocks.
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.dispatch(py)?;
        let ids = self.driver.connections();
        let list = PyList::empty(py);
        for id in &ids {
            if let Some(con) = self.connection(py, *id)? {
                list.append(con)?;
            }
        }
        self.lock_conns().retain(|id, _| ids.contains(id));
        Ok(list.try_iter()?.into_any())
    }

    /// Number of open connections (and closed ones with unread lines).
    #[getter]
    fn connection_count(&self) -> usize {
        self.driver.connections().len()
    }

    /// Connects to the node `unl` names (LAN, direct, reverse, punch or relay) and returns
    /// the connection; raises `ConnectError` with every method's reason when none worked,
    /// `P2PTimeout` after `timeout` seconds. With `events={"success": f, "failure": g}` (as
    /// PyP2P) it returns `None` at once and calls `f(con)` or `g(error)` from a later
    /// `for con in net`.
    #[pyo3(signature = (unl, timeout=None, events=None))]
    fn connect(
        &self,
        py: Python<'_>,
        unl: &str,
        timeout: Option<f64>,
        events: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Option<Py<PyConnection>>> {
        let target = AnyUnl::from_str(unl.trim()).map_err(|e| {
            py_errors::raise(py, Kind::Unl, &format!("not a valid UNL {unl:?}: {e}"), &[])
        })?;
        let timeout = seconds(py, "timeout", timeout)?;
        let ticket = self
            .driver
            .connect_start(target)
            .map_err(|e| py_errors::from_driver(py, &e))?;
        if let Some(events) = events {
            let get = |key: &str| -> PyResult<Option<Py<PyAny>>> {
                Ok(events
                    .get_item(key)
                    .ok()
                    .filter(|f| !f.is_none())
                    .map(Bound::unbind))
            };
            let callbacks = Callbacks {
                success: get("success")?,
                failure: get("failure")?,
            };
            self.callbacks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(ticket, callbacks);
            return Ok(None);
        }
        let driver = &self.driver;
        let until = deadline(timeout);
        let outcome = py
            .detach(|| driver.connect_wait(ticket, until, interrupt))
            .map_err(|e| waited(py, e))?;
        match self.outcome_connection(py, &outcome)? {
            Ok(con) => Ok(Some(con)),
            Err(err) => Err(err),
        }
    }

    /// This node's UNL (a `str` subclass with PyP2P's `construct()` and `connect()`): v3,
    /// signed by the node's key, so a node that connects with it gets an encrypted connection
    /// that must prove that key.
    #[getter]
    fn unl<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let driver = &slf.get().driver;
        let text = py
            .detach(|| driver.unl(interrupt))
            .map_err(|e| waited(py, e))?;
        py.import("p2pnode")?.getattr("UNL")?.call1((text, slf))
    }

    /// This node's UNL in PyP2P's v2 format (52 base64 characters, no key: for PyP2P peers,
    /// which connect in plain text), as `unl`.
    #[getter]
    fn unl_v2<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let driver = &slf.get().driver;
        let text = py
            .detach(|| driver.unl_v2(interrupt))
            .map_err(|e| waited(py, e))?;
        py.import("p2pnode")?.getattr("UNL")?.call1((text, slf))
    }

    /// Takes the node's events since the last call (connections opened and closed,
    /// bootstrap and registration results, connects finished, ...).
    fn events(&self, py: Python<'_>) -> PyResult<Vec<Py<PyEvent>>> {
        let (events, _dropped) = self.driver.take_events();
        events
            .into_iter()
            .map(|e| Py::new(py, PyEvent::from(e)))
            .collect()
    }

    /// Waits until a connection has unread lines, or one opened or closed since the last
    /// `wait()`, for at most `timeout` seconds (`None`: no limit). Returns whether something
    /// is there. Releases the GIL; Ctrl-C interrupts it.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let until = deadline(seconds(py, "timeout", timeout)?);
        let seen = self.generation.load(Ordering::SeqCst);
        let driver = &self.driver;
        let (ready, now) = py.detach(|| driver.wait(seen, until, interrupt))?;
        self.generation.store(now, Ordering::SeqCst);
        Ok(ready)
    }

    /// `(ip, port)` the node accepts connections on (`None` before `start()` or when it
    /// does not listen).
    #[getter]
    fn local_addr(&self) -> Option<(String, u16)> {
        self.driver.local_addr().map(addr_tuple)
    }

    /// The listening port (PyP2P's name; 0 before `start()`).
    #[getter]
    fn passive_port(&self) -> u16 {
        self.driver.local_addr().map_or(0, |a| a.port())
    }

    /// Whether the node runs (not stopped).
    #[getter]
    fn is_running(&self) -> bool {
        self.driver.is_running()
    }

    /// `"p2p"` or `"direct"`.
    #[getter]
    fn net_type(&self) -> &'static str {
        match self.driver.kind() {
            crate::options::NetKind::P2p => "p2p",
            crate::options::NetKind::Direct => "direct",
        }
    }

    fn __repr__(&self) -> String {
        let addr = self
            .driver
            .local_addr()
            .map_or_else(|| "not listening".to_owned(), |a| format!("on {a}"));
        let state = if self.driver.is_running() {
            "running"
        } else {
            "stopped"
        };
        format!(
            "<p2pnode.Net {state}, {addr}, {} connections>",
            self.driver.connections().len()
        )
    }
}
