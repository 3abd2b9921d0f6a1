//! `loky._core`: the process-management core. All PyO3 glue is in `bindings/` (the
//! module's contents in `bindings/module.rs`); the other modules know nothing of Python.
//!
//! What crosses the boundary (documented for Python in `python/loky/_core.pyi`):
//! `Pool` (one executor's manager) and its events, `WorkerEndpoint` (a worker's side of
//! its channel), the template's loop, shared segments, and a few process functions.
//! Rust owns every byte on a socket, every shared segment's life and every wake-up
//! between threads; Python owns every Python object and every message a user reads.
//!
//! One crate for both platform families: the manager, the task table, the frames'
//! codec, shared segments and the worker's endpoint are common; what each system does
//! differently sits behind modules of the same name, chosen here (POSIX: sockets,
//! poll(2), posix_spawn, memfd; Windows: named pipes, an I/O completion port,
//! CreateProcessW and Job objects, sections; see `platform/windows/mod.rs`). POSIX alone
//! has the template that forks workers, and fork() to survive.

mod bindings;
mod endpoint;
mod fork;
mod ledger;
mod logs;
mod manager;
mod os;
mod shm;
mod watch;
mod wire;

#[cfg(unix)]
mod channel;
#[cfg(unix)]
mod platform;
#[cfg(unix)]
mod procfs;
#[cfg(unix)]
mod spawn;
#[cfg(unix)]
mod sys;
#[cfg(unix)]
mod template;
#[cfg(unix)]
mod watchdog;

#[cfg(windows)]
#[path = "platform/windows/channel.rs"]
mod channel;
#[cfg(windows)]
#[path = "platform/windows/mod.rs"]
mod platform;
#[cfg(windows)]
#[path = "platform/windows/procfs.rs"]
mod procfs;
#[cfg(windows)]
#[path = "platform/windows/spawn.rs"]
mod spawn;

use pyo3::prelude::*;

/// The module: its classes and functions are in `bindings/`. Every shared state of the
/// core is behind a lock or an atomic, and its Python classes are immutable but for a
/// worker's endpoint (whose methods PyO3 borrow-checks): it needs no GIL. The
/// free-threaded build is compiled in CI, not run (see README).
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    bindings::module::register(m)
}
