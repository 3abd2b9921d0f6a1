//! The module's functions, and `register`, which adds them and every class to
//! `loky._core`.

use std::os::fd::IntoRawFd;

use pyo3::prelude::*;

use super::buffers::{OutgoingSegment, Payload, SharedSegment};
use super::pool::{
    InitFailed, Pool, PoolClosed, StartFailed, TaskEnded, TaskResult, WorkerDied, WorkerExited,
    WorkerStarted, WorkerStat,
};
use super::worker::{serve_template, TaskMessage, WorkerEndpoint};
use super::{os_error, InheritedPoolError};
use crate::spawn::WorkerCommand;
use crate::{fork, platform, procfs, shm, spawn, watchdog};

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
        .map_err(|e| os_error(&format!("could not start '{}'", cmd.program), e))?;
    Ok((pid, sentinel.into_raw_fd()))
}

/// Every live descendant of process `pid`, children before grandchildren.
#[pyfunction]
fn descendants(pid: i32) -> Vec<i32> {
    procfs::descendants(pid)
}

/// Which way each operating-system facility used so far went: (name, "fast" or
/// "portable (why)"). See `src/platform/mod.rs`.
#[pyfunction]
fn facilities() -> Vec<(&'static str, String)> {
    platform::facilities()
}

/// Whether the system reaps this process's children itself, discarding their exit
/// status (SIGCHLD is ignored, or handled with SA_NOCLDWAIT).
#[pyfunction]
fn children_reaped_by_kernel() -> bool {
    platform::children_reaped_by_kernel()
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
    watchdog::watch_parent(parent).map_err(|e| os_error("watching the parent process", e))
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
    super::write_segment(py, &buffers)
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

/// Add every class and function of `loky._core` to `m`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    fork::register();
    platform::reread_settings();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    for class in [
        m.py().get_type::<Pool>(),
        m.py().get_type::<super::enums::TaskState>(),
        m.py().get_type::<super::enums::ExitReason>(),
        m.py().get_type::<super::enums::EndCause>(),
        m.py().get_type::<super::enums::WorkerState>(),
        m.py().get_type::<super::enums::Shutdown>(),
        m.py().get_type::<TaskResult>(),
        m.py().get_type::<WorkerDied>(),
        m.py().get_type::<super::pool::Attempt>(),
        m.py().get_type::<TaskEnded>(),
        m.py().get_type::<WorkerStat>(),
        m.py().get_type::<WorkerStarted>(),
        m.py().get_type::<WorkerExited>(),
        m.py().get_type::<InitFailed>(),
        m.py().get_type::<StartFailed>(),
        m.py().get_type::<PoolClosed>(),
        m.py().get_type::<super::pool::WorkerLog>(),
        m.py().get_type::<super::pool::ForwardedLogs>(),
        m.py().get_type::<WorkerEndpoint>(),
        m.py().get_type::<super::worker::LogSink>(),
        m.py().get_type::<TaskMessage>(),
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
        wrap_pyfunction!(serve_template, m)?,
        wrap_pyfunction!(facilities, m)?,
        wrap_pyfunction!(children_reaped_by_kernel, m)?,
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
    Ok(())
}
