//! `loky._core`: the process-management core. All PyO3 glue is in this file and in
//! `bindings/`; the other modules know nothing of Python.
//!
//! What crosses the boundary (documented for Python in `python/loky/_core.pyi`):
//! `Pool` (one executor's manager) and its events, `Channel` (a worker's end), shared
//! segments, and a few process functions. Rust owns every byte on a socket, every
//! shared segment's life and every wake-up between threads; Python owns every Python
//! object and every message a user reads.

mod bindings;
mod channel;
mod fork;
mod manager;
mod platform;
mod procfs;
mod shm;
mod spawn;
mod template;
mod watch;
mod watchdog;
mod wire;

use std::os::fd::IntoRawFd;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use bindings::buffers::{OutgoingSegment, Payload, SharedSegment};
use bindings::channel::{Channel, Message};
use bindings::pool::{
    InitFailed, Pool, PoolClosed, StartFailed, TaskEnded, TaskResult, WorkerDied, WorkerExited,
    WorkerStarted, WorkerStat,
};
use bindings::InheritedPoolError;
use spawn::WorkerCommand;

fn os_error(e: std::io::Error) -> PyErr {
    PyOSError::new_err(e.to_string())
}

/// Fork+exec `program` with `args`, the environment overrides `env`, and `pass_fds`
/// inherited. Returns (pid, sentinel): the caller owns the sentinel, which becomes
/// readable once the child exited, and reaps the child with `reap`.
#[pyfunction]
#[pyo3(signature = (program, args, env, pass_fds=Vec::new()))]
fn spawn_process(
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pass_fds: Vec<i32>,
) -> PyResult<(i32, i32)> {
    let cmd = WorkerCommand {
        program,
        args,
        env,
        pass_fds,
    };
    let (pid, sentinel) = spawn::spawn_process(&cmd)
        .map_err(|e| PyOSError::new_err(format!("could not start '{}': {e}", cmd.program)))?;
    Ok((pid, sentinel.into_raw_fd()))
}

/// Every live descendant of process `pid`, children before grandchildren.
#[pyfunction]
fn descendants(pid: i32) -> Vec<i32> {
    procfs::descendants(pid)
}

/// Template side: wait (without the GIL) up to `timeout` seconds (None: for ever)
/// until one of `fds` is readable; the indices of those that are.
#[pyfunction]
#[pyo3(signature = (fds, timeout=None))]
fn template_wait(py: Python<'_>, fds: Vec<i32>, timeout: Option<f64>) -> PyResult<Vec<usize>> {
    let timeout = timeout.map(|t| std::time::Duration::from_secs_f64(t.max(0.0)));
    py.detach(|| template::wait_readable(&fds, timeout))
        .map_err(|e| PyOSError::new_err(format!("template: {e}")))
}

/// In a worker just forked by the template: a process group of its own. (It ends with
/// the template through its watchdog, `watch_parent`.) False if the template is gone.
#[pyfunction]
fn detach_forked_worker(template_pid: i32) -> PyResult<bool> {
    // SAFETY: setpgid on our own process.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        return Err(os_error(std::io::Error::last_os_error()));
    }
    // SAFETY: getppid has no preconditions.
    Ok(unsafe { libc::getppid() } == template_pid)
}

/// Which way each operating-system facility used so far went: (name, "fast" or
/// "portable (why)"). See `src/platform/mod.rs`.
#[pyfunction]
fn facilities() -> Vec<(&'static str, String)> {
    platform::facilities()
}

/// In a process this package started, first thing: close the descriptors numbered at
/// or above the soft descriptor limit, which posix_spawn could not close for it.
#[pyfunction]
fn close_descriptors_beyond_limit() {
    spawn::close_beyond_limit();
}

/// In a worker: end this process and everything it started as soon as `parent` (the
/// process expected as its parent) is gone; at once if it already is.
#[pyfunction]
fn watch_parent(parent: i32) -> PyResult<()> {
    watchdog::watch_parent(parent).map_err(os_error)
}

/// Copy `buffers` (C-contiguous buffer objects) into a shared segment of this
/// process's sending cache. Returns the segment and each buffer's offset in it; raises
/// OSError when no segment can be made (out of descriptors or memory), and the caller
/// then sends the buffers in-band.
#[pyfunction]
fn write_segment(
    py: Python<'_>,
    buffers: Vec<Bound<'_, PyAny>>,
) -> PyResult<(OutgoingSegment, Vec<usize>)> {
    bindings::write_segment(py, &buffers)
}

/// Limit this process's sending cache of segments to `max_bytes` and `max_segments`
/// (each kept segment holds a descriptor; None: a small share of what the process may
/// open, so that the cache never runs it out of them).
#[pyfunction]
#[pyo3(signature = (max_bytes, max_segments=None, /))]
fn configure_segment_cache(max_bytes: u64, max_segments: Option<u64>) {
    let max_segments = max_segments
        .unwrap_or_else(|| (platform::descriptor_limit().unwrap_or(1 << 16) / 32).clamp(1, 64));
    shm::CACHE.set_limits(max_bytes, max_segments);
}

/// (segments kept, bytes kept) by this process's sending cache.
#[pyfunction]
fn segment_cache_usage() -> (usize, u64) {
    shm::CACHE.usage()
}

/// Let go of every segment the sending cache keeps (receivers keep what they use).
#[pyfunction]
fn release_cached_segments() {
    shm::CACHE.clear();
}

/// `os.register_at_fork` hooks: received segments become private copies in the child.
#[pyfunction]
fn fork_prepare() {
    shm::fork_prepare();
}

#[pyfunction]
fn fork_parent() {
    shm::fork_parent();
}

#[pyfunction]
fn fork_child() {
    shm::fork_child();
}

// Every shared state of the core is behind a lock or an atomic, and its Python classes
// are immutable but for a worker's channel (whose methods PyO3 borrow-checks): it needs
// no GIL. The free-threaded build is compiled in CI, not run (see README).
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    fork::register();
    platform::reread_settings();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    for class in [
        m.py().get_type::<Pool>(),
        m.py().get_type::<TaskResult>(),
        m.py().get_type::<WorkerDied>(),
        m.py().get_type::<TaskEnded>(),
        m.py().get_type::<WorkerStat>(),
        m.py().get_type::<WorkerStarted>(),
        m.py().get_type::<WorkerExited>(),
        m.py().get_type::<InitFailed>(),
        m.py().get_type::<StartFailed>(),
        m.py().get_type::<PoolClosed>(),
        m.py().get_type::<Channel>(),
        m.py().get_type::<Message>(),
        m.py().get_type::<Payload>(),
        m.py().get_type::<SharedSegment>(),
        m.py().get_type::<OutgoingSegment>(),
    ] {
        m.add(class.name()?, class)?;
    }
    m.add(
        "InheritedPoolError",
        m.py().get_type::<InheritedPoolError>(),
    )?;
    for function in [
        wrap_pyfunction!(spawn_process, m)?,
        wrap_pyfunction!(descendants, m)?,
        wrap_pyfunction!(template_wait, m)?,
        wrap_pyfunction!(detach_forked_worker, m)?,
        wrap_pyfunction!(facilities, m)?,
        wrap_pyfunction!(watch_parent, m)?,
        wrap_pyfunction!(write_segment, m)?,
        wrap_pyfunction!(configure_segment_cache, m)?,
        wrap_pyfunction!(close_descriptors_beyond_limit, m)?,
        wrap_pyfunction!(segment_cache_usage, m)?,
        wrap_pyfunction!(release_cached_segments, m)?,
        wrap_pyfunction!(fork_prepare, m)?,
        wrap_pyfunction!(fork_parent, m)?,
        wrap_pyfunction!(fork_child, m)?,
    ] {
        m.add_function(function)?;
    }
    for kind in wire::Kind::ALL {
        m.add(kind.name(), kind as u32)?;
    }
    m.add("WORKER_FD", spawn::WORKER_FD)?;
    Ok(())
}
