//! The template's loop (`serve_template`, see `crate::template::server`).

use pyo3::prelude::*;

use super::os_error;
use crate::template;

/// Run as the pool's template on descriptor 3, for the pool of process `parent`: fork
/// a worker per request (with `os.fork`, so the interpreter's at-fork handlers run),
/// reap the workers and report their exit statuses. Never returns in the template,
/// which exits once the pool is gone; returns in each forked child, set up as a
/// worker on descriptor 3: the template's pid, the worker's parent.
///
/// The template has one thread: it waits holding the GIL, and signals the interpreter
/// handles (Ctrl-C) stay pending there; a forked child starts without them.
#[pyfunction]
pub fn serve_template(py: Python<'_>, parent: i32) -> PyResult<i32> {
    let fork = py.import("os")?.getattr("fork")?;
    let fork = || -> std::io::Result<i32> { Ok(fork.call0()?.extract::<i32>()?) };
    template::server::serve(parent, fork).map_err(|e| os_error("template", e))
}
