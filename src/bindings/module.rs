//! The module's functions, and `register`, which adds them and every class to
//! `loky._core`. On Windows the POSIX-only ones are absent: `spawn_process` (Python's
//! own spawn starts processes there), `serve_template` (no fork, so no template) and
//! the fork hooks.

use pyo3::prelude::*;

use super::buffers::{OutgoingSegment, Payload, SharedSegment};
use super::pool::{
    InitFailed, Pool, PoolClosed, StartFailed, TaskEnded, TaskResult, WorkerDied, WorkerExited,
    WorkerStarted, WorkerStat,
};
use super::worker::{TaskMessage, WorkerEndpoint};
use super::InheritedPoolError;
use crate::{fork, platform, procfs, shm};

/// Fork+exec `program` with `args`, the environment overrides `env`, and `pass_fds`
/// inherited. Returns (pid, sentinel): the caller owns the sentinel, which becomes
/// readable once the child exited, and reaps the child with `reap`.
#[cfg(unix)]
#[pyfunction]
#[pyo3(signature = (program, args, env, pass_fds=Vec::new()))]
fn spawn_process(
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pass_fds: Vec<i32>,
) -> PyResult<(i32, i32)> {
    use crate::spawn::{self, WorkerCommand};
    use std::os::fd::IntoRawFd;
    let cmd = WorkerCommand {
        program,
        args,
        env,
        pass_fds,
    };
    let (pid, sentinel) = spawn::spawn_process(&cmd)
        .map_err(|e| super::os_error(&format!("could not start '{}'", cmd.program), e))?;
    Ok((pid, sentinel.into_raw_fd()))
}

/// Every live descendant of process `pid`, children before grandchildren.
#[pyfunction]
fn descendants(pid: i32) -> Vec<i32> {
    procfs::descendants(pid)
}

/// The resident memory of process `pid` in bytes (on Windows its working set, what
/// psutil calls its rss); None if it cannot be read.
#[pyfunction]
fn resident_bytes(pid: i32) -> Option<u64> {
    procfs::resident_bytes(pid)
}

/// Which way each operating-system facility used so far went: (name, "fast" or
/// "portable (why)"). See `src/platform/mod.rs`.
#[pyfunction]
fn facilities() -> Vec<(&'static str, String)> {
    platform::facilities()
}

/// Whether the system reaps this process's children itself, discarding their exit
/// status (SIGCHLD is ignored, or handled with SA_NOCLDWAIT). Never on Windows.
#[pyfunction]
fn children_reaped_by_kernel() -> bool {
    #[cfg(unix)]
    return platform::children_reaped_by_kernel();
    #[cfg(windows)]
    return false;
}

/// In a process this package started, first thing: close the descriptors numbered at
/// or above the soft descriptor limit, which posix_spawn could not close for it. (On
/// Windows a process inherits only the handles it was given: nothing to close.)
#[pyfunction]
fn close_descriptors_beyond_limit() {
    #[cfg(unix)]
    crate::spawn::close_beyond_limit();
}

/// In a worker: end this process and everything it started as soon as `parent` (the
/// process expected as its parent) is gone; at once if it already is. (On Windows the
/// worker's Job object, which only the parent holds, does it: the system closes it when
/// the parent exits. This only checks that the parent is still there.)
#[pyfunction]
fn watch_parent(parent: i32) -> PyResult<()> {
    #[cfg(unix)]
    return crate::watchdog::watch_parent(parent)
        .map_err(|e| super::os_error("watching the parent process", e));
    #[cfg(windows)]
    {
        if !procfs::is_running(parent) {
            std::process::exit(1);
        }
        Ok(())
    }
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
    super::write_segment(py, &buffers, false)
}

/// Copy `buffers` into a new shared segment that no cache keeps and no receiver
/// releases: it lives as long as a descriptor of it (the returned object's, and the
/// duplicates of it that processes inherit; see `map_inherited_segment`). Returns the
/// segment and each buffer's offset; raises OSError as `write_segment` does.
#[pyfunction]
fn write_lasting_segment(
    py: Python<'_>,
    buffers: Vec<Bound<'_, PyAny>>,
) -> PyResult<(OutgoingSegment, Vec<usize>)> {
    super::write_segment(py, &buffers, true)
}

/// Map the segment whose descriptor (Windows: handle) `fd` this process inherited,
/// copy-on-write: what this process writes there stays its own, as after fork().
/// Takes the descriptor and closes it.
#[pyfunction]
fn map_inherited_segment(fd: isize) -> PyResult<SharedSegment> {
    if fd < 0 || (cfg!(unix) && fd > i32::MAX as isize) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{fd} is not a descriptor"
        )));
    }
    // SAFETY: the caller hands over a descriptor it inherited and owns (a number that
    // is no open descriptor only makes the mapping fail).
    #[cfg(unix)]
    let owned =
        unsafe { <crate::os::OwnedObject as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // SAFETY: the caller hands over a handle it inherited and owns.
    #[cfg(windows)]
    let owned = unsafe {
        <crate::os::OwnedObject as std::os::windows::io::FromRawHandle>::from_raw_handle(
            fd as std::os::windows::io::RawHandle,
        )
    };
    let region = crate::shm::Region::map_copy_on_write(crate::os::borrow(&owned))
        .map_err(|e| super::os_error("could not map the initializer's shared arguments", e))?;
    region.populate();
    Ok(SharedSegment::copy_on_write(region))
}

/// Limit this process's sending cache of segments to `max_bytes` and `max_segments`
/// (each kept segment holds a descriptor; None: a small share of what the process may
/// open, so that the cache never runs it out of them).
#[pyfunction]
#[pyo3(signature = (max_bytes, max_segments=None, /))]
fn configure_segment_cache(max_bytes: u64, max_segments: Option<u64>) {
    #[cfg(unix)]
    let descriptors = platform::descriptor_limit().unwrap_or(1 << 16);
    #[cfg(windows)]
    let descriptors = 1 << 16; // handles are not that scarce
    let max_segments = max_segments.unwrap_or((descriptors / 32).clamp(1, 64));
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
#[cfg(unix)]
#[pyfunction]
fn fork_prepare() {
    shm::fork_prepare();
}

#[cfg(unix)]
#[pyfunction]
fn fork_parent() {
    shm::fork_parent();
}

#[cfg(unix)]
#[pyfunction]
fn fork_child() {
    shm::fork_child();
}

/// The processors this process may use on Windows: the active processors of every
/// group, less what its affinity leaves out, less what its job's CPU rate cap allows.
#[cfg(windows)]
#[pyfunction]
fn cpu_count() -> usize {
    platform::cpu::cpu_count()
}

/// The physical cores of the machine on Windows; None if they cannot be counted.
#[cfg(windows)]
#[pyfunction]
fn physical_cores() -> Option<usize> {
    platform::cpu::physical_cores()
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
    #[cfg(unix)]
    for function in [
        wrap_pyfunction!(spawn_process, m)?,
        wrap_pyfunction!(super::worker::serve_template, m)?,
        wrap_pyfunction!(fork_prepare, m)?,
        wrap_pyfunction!(fork_parent, m)?,
        wrap_pyfunction!(fork_child, m)?,
    ] {
        m.add_function(function)?;
    }
    #[cfg(windows)]
    for function in [
        wrap_pyfunction!(cpu_count, m)?,
        wrap_pyfunction!(physical_cores, m)?,
    ] {
        m.add_function(function)?;
    }
    for function in [
        wrap_pyfunction!(descendants, m)?,
        wrap_pyfunction!(resident_bytes, m)?,
        wrap_pyfunction!(facilities, m)?,
        wrap_pyfunction!(children_reaped_by_kernel, m)?,
        wrap_pyfunction!(watch_parent, m)?,
        wrap_pyfunction!(write_segment, m)?,
        wrap_pyfunction!(write_lasting_segment, m)?,
        wrap_pyfunction!(map_inherited_segment, m)?,
        wrap_pyfunction!(configure_segment_cache, m)?,
        wrap_pyfunction!(close_descriptors_beyond_limit, m)?,
        wrap_pyfunction!(segment_cache_usage, m)?,
        wrap_pyfunction!(release_cached_segments, m)?,
    ] {
        m.add_function(function)?;
    }
    Ok(())
}
