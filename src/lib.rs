//! `loky._core`: the process-management core. All PyO3 glue is in `bindings/` (the
//! module's contents in `bindings/module.rs`); the other modules know nothing of Python.
//!
//! What crosses the boundary (documented for Python in `python/loky/_core.pyi`):
//! `Pool` (one executor's manager) and its events, `WorkerEndpoint` (a worker's side of
//! its channel), the template's loop, shared segments, and a few process functions.
//! Rust owns every byte on a socket, every shared segment's life and every wake-up
//! between threads; Python owns every Python object and every message a user reads.

#[cfg(unix)]
mod bindings;
#[cfg(unix)]
mod channel;
#[cfg(unix)]
mod endpoint;
#[cfg(unix)]
mod fork;
#[cfg(unix)]
mod ledger;
#[cfg(unix)]
mod logs;
#[cfg(unix)]
mod manager;
#[cfg(unix)]
mod platform;
/// On Windows only the platform's own facilities are built so far (see
/// `platform/windows/mod.rs`); the pool reaches them through the same seam later.
#[cfg(windows)]
mod platform {
    pub mod windows;
}
#[cfg(unix)]
mod procfs;
#[cfg(unix)]
mod shm;
#[cfg(unix)]
mod spawn;
#[cfg(unix)]
mod sys;
#[cfg(unix)]
mod template;
#[cfg(unix)]
mod watch;
#[cfg(unix)]
mod watchdog;
#[cfg(unix)]
mod wire;

#[cfg(unix)]
use pyo3::prelude::*;

/// The module: its classes and functions are in `bindings/`. Every shared state of the
/// core is behind a lock or an atomic, and its Python classes are immutable but for a
/// worker's endpoint (whose methods PyO3 borrow-checks): it needs no GIL. The
/// free-threaded build is compiled in CI, not run (see README).
#[cfg(unix)]
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    bindings::module::register(m)
}
