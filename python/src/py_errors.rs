//! The exception classes, and the mapping from the node's errors to them.
//!
//! ```text
//! P2PError(Exception)
//! ├── ConfigError(P2PError, ValueError)      a keyword argument the node cannot use
//! ├── UnlError(P2PError, ValueError)         not a UNL (says why: length, base64, field)
//! ├── LineError(P2PError, ValueError)        a line with \r or \n
//! ├── ResolveError(P2PError, OSError)        a server name that does not resolve (.name)
//! ├── BindError(P2PError, OSError)           cannot listen (.addr)
//! ├── RendezvousError(P2PError, ConnectionError)   every rendezvous server failed
//! │                                          (.job, .errors = [(server, reason), ...])
//! ├── ConnectError(P2PError, ConnectionError)      a connect by UNL failed
//! │                                          (.unl, .reasons = {method: reason}, .tries)
//! ├── ConnectionClosed(P2PError, ConnectionError)  send on a closed connection (.reason)
//! ├── P2PTimeout(P2PError, TimeoutError)     a wait ran out (.what)
//! └── NodeStopped(P2PError)                  the node is stopped (.reason)
//! ```
//!
//! Each class is made with Python's `type()` at import, so it can have two bases (a caller's
//! `except ValueError` or `except TimeoutError` still works).

use pyo3::exceptions::{
    PyConnectionError, PyException, PyOSError, PyRuntimeError, PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};

use node::NetError;
use node::connect::{ConnectOutcome, TryResult};

use crate::driver::DriverError;

/// Every exception class, once created.
struct Classes {
    p2p_error: Py<PyType>,
    config_error: Py<PyType>,
    unl_error: Py<PyType>,
    line_error: Py<PyType>,
    resolve_error: Py<PyType>,
    bind_error: Py<PyType>,
    rendezvous_error: Py<PyType>,
    connect_error: Py<PyType>,
    connection_closed: Py<PyType>,
    timeout: Py<PyType>,
    node_stopped: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// Which exception to raise.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Config,
    Unl,
    Line,
    Resolve,
    Bind,
    Rendezvous,
    Connect,
    ConnectionClosed,
    Timeout,
    NodeStopped,
}

fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || make_classes(py))
}

fn make_classes(py: Python<'_>) -> PyResult<Classes> {
    let type_ = py.import("builtins")?.getattr("type")?;
    let make = |name: &str, bases: &[Bound<'_, PyAny>], doc: &str| -> PyResult<Py<PyType>> {
        let namespace = PyDict::new(py);
        namespace.set_item("__module__", "p2pnode")?;
        namespace.set_item("__doc__", doc)?;
        let class = type_.call1((name, PyTuple::new(py, bases)?, namespace))?;
        Ok(class.cast_into::<PyType>()?.unbind())
    };
    let base = make(
        "P2PError",
        &[py.get_type::<PyException>().into_any()],
        "Base class of every p2pnode error.",
    )?;
    let with = |name: &str, other: Bound<'_, PyType>, doc: &str| {
        make(
            name,
            &[base.bind(py).clone().into_any(), other.into_any()],
            doc,
        )
    };
    let value_error = || py.get_type::<PyValueError>();
    let os_error = || py.get_type::<PyOSError>();
    let connection_error = || py.get_type::<PyConnectionError>();
    Ok(Classes {
        config_error: with(
            "ConfigError",
            value_error(),
            "A keyword argument of Net() the node cannot use; the message names it.",
        )?,
        unl_error: with(
            "UnlError",
            value_error(),
            "Not a UNL; the message says why (length, base64, which field).",
        )?,
        line_error: with(
            "LineError",
            value_error(),
            "A line to send contains \\r or \\n.",
        )?,
        resolve_error: with(
            "ResolveError",
            os_error(),
            "A server name does not resolve (.name is the name as given).",
        )?,
        bind_error: with(
            "BindError",
            os_error(),
            "The node cannot listen on its address (.addr).",
        )?,
        rendezvous_error: with(
            "RendezvousError",
            connection_error(),
            "Every rendezvous server failed: .job (bootstrap, advertise, ...) and .errors, \
             a list of (server, reason).",
        )?,
        connect_error: with(
            "ConnectError",
            connection_error(),
            "A connect by UNL failed: .unl, .reasons ({method: reason}) and .tries (every \
             method with its timing and result).",
        )?,
        connection_closed: with(
            "ConnectionClosed",
            connection_error(),
            "The connection is closed (.reason says why).",
        )?,
        timeout: with(
            "P2PTimeout",
            py.get_type::<PyTimeoutError>(),
            "A wait ran out (.what says what).",
        )?,
        node_stopped: make(
            "NodeStopped",
            &[base.bind(py).clone().into_any()],
            "The node is stopped, or stop() was called during this call (.reason).",
        )?,
        p2p_error: base,
    })
}

/// Adds every exception class to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let c = classes(py)?;
    for (name, class) in [
        ("P2PError", &c.p2p_error),
        ("ConfigError", &c.config_error),
        ("UnlError", &c.unl_error),
        ("LineError", &c.line_error),
        ("ResolveError", &c.resolve_error),
        ("BindError", &c.bind_error),
        ("RendezvousError", &c.rendezvous_error),
        ("ConnectError", &c.connect_error),
        ("ConnectionClosed", &c.connection_closed),
        ("P2PTimeout", &c.timeout),
        ("NodeStopped", &c.node_stopped),
    ] {
        m.add(name, class.bind(py))?;
    }
    Ok(())
}

/// An exception of `kind` with `message` and attributes.
pub(crate) fn raise(
    py: Python<'_>,
    kind: Kind,
    message: &str,
    attrs: &[(&str, Bound<'_, PyAny>)],
) -> PyErr {
    match make(py, kind, message, attrs) {
        Ok(err) | Err(err) => err,
    }
}

fn make(
    py: Python<'_>,
    kind: Kind,
    message: &str,
    attrs: &[(&str, Bound<'_, PyAny>)],
) -> PyResult<PyErr> {
    let c = classes(py)?;
    let class = match kind {
        Kind::Config => &c.config_error,
        Kind::Unl => &c.unl_error,
        Kind::Line => &c.line_error,
        Kind::Resolve => &c.resolve_error,
        Kind::Bind => &c.bind_error,
        Kind::Rendezvous => &c.rendezvous_error,
        Kind::Connect => &c.connect_error,
        Kind::ConnectionClosed => &c.connection_closed,
        Kind::Timeout => &c.timeout,
        Kind::NodeStopped => &c.node_stopped,
    };
    let exc = class.bind(py).call1((message,))?;
    for (name, value) in attrs {
        exc.setattr(*name, value)?;
    }
    Ok(PyErr::from_value(exc))
}

/// Attributes to set on an exception.
type Attrs<'py> = Vec<(&'static str, Bound<'py, PyAny>)>;

/// The exception for a node or driver error.
pub(crate) fn from_driver(py: Python<'_>, error: &DriverError) -> PyErr {
    let text = error.to_string();
    let s = |v: &str| v.into_pyobject(py).map(Bound::into_any);
    let attrs = || -> PyResult<(Kind, Attrs<'_>)> {
        Ok(match error {
            DriverError::Net(NetError::Rendezvous { job, errors }) => {
                let list = PyList::empty(py);
                for (server, reason) in errors {
                    list.append((server.to_string(), reason.as_str()))?;
                }
                (
                    Kind::Rendezvous,
                    vec![("job", s(&job.to_string())?), ("errors", list.into_any())],
                )
            }
            DriverError::Net(
                NetError::Resolve { name, .. } | NetError::ResolveServer { name, .. },
            ) => (Kind::Resolve, vec![("name", s(name)?)]),
            DriverError::Net(NetError::Bind { addr, .. }) => {
                (Kind::Bind, vec![("addr", s(&addr.to_string())?)])
            }
            DriverError::Net(NetError::Timeout { what, .. })
            | DriverError::Timeout { what, .. } => (Kind::Timeout, vec![("what", s(what)?)]),
            DriverError::Net(NetError::Send(_)) | DriverError::LineBreak(_) => (Kind::Line, vec![]),
            DriverError::Closed { reason, .. } => {
                (Kind::ConnectionClosed, vec![("reason", s(reason)?)])
            }
            DriverError::Stopped(reason) => (Kind::NodeStopped, vec![("reason", s(reason)?)]),
            DriverError::Net(NetError::Io(_)) | DriverError::Spawn(_) => {
                return Err(PyRuntimeError::new_err(text.clone()));
            }
        })
    };
    match attrs() {
        Ok((kind, attrs)) => raise(py, kind, &text, &attrs),
        Err(e) => e,
    }
}

/// `ConnectError` for a connect that did not connect, with every method's reason.
pub(crate) fn connect_failed(py: Python<'_>, outcome: &ConnectOutcome) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let reasons = PyDict::new(py);
        let tries = PyList::empty(py);
        for t in &outcome.tries {
            let (state, reason) = match &t.result {
                TryResult::Pending => ("pending", None),
                TryResult::Won => ("won", None),
                TryResult::Failed(why) => ("failed", Some(why.as_str())),
                TryResult::Cancelled => ("cancelled", None),
                TryResult::Skipped(why) => ("skipped", Some(why.as_str())),
            };
            let method = t.method.to_string();
            if let Some(why) = reason {
                reasons.set_item(&method, why)?;
            }
            let one = PyDict::new(py);
            one.set_item("method", &method)?;
            one.set_item("addr", t.addr.map(|a| a.to_string()))?;
            one.set_item("result", state)?;
            one.set_item("reason", reason)?;
            one.set_item("started_ms", t.started_ms)?;
            one.set_item("ended_ms", t.ended_ms)?;
            tries.append(one)?;
        }
        let message = format!(
            "cannot connect to {} within {} ms: {} ({})",
            outcome.target,
            outcome.ms,
            outcome.error.as_deref().unwrap_or("no method worked"),
            outcome.describe_tries()
        );
        make(
            py,
            Kind::Connect,
            &message,
            &[
                ("unl", outcome.target.as_str().into_pyobject(py)?.into_any()),
                ("reasons", reasons.into_any()),
                ("tries", tries.into_any()),
            ],
        )
    };
    build().unwrap_or_else(|e| e)
}
