//! `p2pnode`, the Python package over the [`node`] library: PyP2P's API and loop shape.
//!
//! ```text
//!   Python: for con in net / for reply in con / con.send_line / net.connect(unl)
//!        │ py_net, py_conn (`PyO3` classes; py_errors maps the node's errors to exceptions)
//!        ▼
//!   driver::Driver ──commands + mio::Waker──▶ the node's thread: node::Net::poll(None)
//!        ▲                                    (keepalives, punches, the rendezvous session
//!        └──── shared state (lines, events) ◀─  never wait for Python)
//! ```
//!
//! - [`options`] turns `Net(...)`'s keyword arguments into a [`node::Config`];
//! - [`driver`] owns the node's thread and every blocking wait (in slices, with an interrupt
//!   check between them, so Ctrl-C and `stop()` are prompt);
//! - [`events`] is the node's events as plain data.
//!
//! These three are pure Rust and tested with `cargo test -p p2p-python`; the `PyO3` layer is
//! tested by pytest against the built wheel (`scripts/python-tests.sh`).
//!
//! The Python module is `p2pnode._native`; the package `p2pnode` (python/p2pnode/) adds
//! PyP2P's `UNL` string and `DHT` names and re-exports everything.

pub mod driver;
pub mod events;
mod json;
pub mod options;
mod py_conn;
mod py_errors;
mod py_net;

use pyo3::prelude::*;

/// The native part of `p2pnode` (import `p2pnode`, not this).
#[pymodule(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<py_net::PyNet>()?;
    m.add_class::<py_conn::PyConnection>()?;
    m.add_class::<py_conn::PyEvent>()?;
    py_errors::register(m)?;
    m.add("HIGH_WATER_BYTES", driver::HIGH_WATER_BYTES)?;
    Ok(())
}
