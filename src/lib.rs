//! `loky._core`: the Python bindings of the process-management core. All PyO3 glue is
//! here; the modules below know nothing of Python.

mod cpu;
mod manager;
mod procfs;
mod shm;
mod spawn;
mod template;
mod wire;
mod worker_table;

use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyBufferError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use manager::{Config, Event, Manager, Shutdown};
use spawn::WorkerCommand;

/// Longest a blocking call waits before it lets pending signals be handled.
const SIGNAL_SLICE: Duration = Duration::from_millis(100);

/// Event kinds returned by `Pool.next_events`.
const EV_RESULT: u8 = 0;
const EV_WORKER_DIED: u8 = 1;
const EV_INIT_FAILED: u8 = 2;
const EV_START_FAILED: u8 = 3;
const EV_CLOSED: u8 = 4;

/// One event as a tuple: (kind, task_id, pid, body or None, fd or -1, exitcode,
/// message). A descriptor returned here belongs to the caller.
type EventTuple<'py> = (u8, u64, i32, Option<Bound<'py, PyBytes>>, i32, i32, String);

fn event_tuple(py: Python<'_>, event: Event) -> EventTuple<'_> {
    let none = String::new;
    match event {
        Event::Result {
            task_id,
            pid,
            body,
            fd,
        } => {
            let fd = fd.map_or(-1, IntoRawFd::into_raw_fd);
            (
                EV_RESULT,
                task_id,
                pid,
                Some(PyBytes::new(py, &body)),
                fd,
                0,
                none(),
            )
        }
        Event::WorkerDied {
            task_id,
            pid,
            exitcode,
            reason,
        } => (EV_WORKER_DIED, task_id, pid, None, -1, exitcode, reason),
        Event::InitFailed { pid, body } => (
            EV_INIT_FAILED,
            0,
            pid,
            Some(PyBytes::new(py, &body)),
            -1,
            0,
            none(),
        ),
        Event::StartFailed {
            pid,
            exitcode,
            message,
        } => (EV_START_FAILED, 0, pid, None, -1, exitcode, message),
        Event::Closed => (EV_CLOSED, 0, 0, None, -1, 0, none()),
    }
}

fn os_error(e: std::io::Error) -> PyErr {
    PyOSError::new_err(e.to_string())
}

/// A duplicate of the caller's descriptor `fd` (-1: none), so the caller may close its own.
fn dup_fd(fd: i32) -> PyResult<Option<OwnedFd>> {
    if fd < 0 {
        return Ok(None);
    }
    // SAFETY: borrowed only for the duplication; the caller keeps `fd` open meanwhile.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().map(Some).map_err(os_error)
}

/// A pool of worker processes driven by a manager thread.
#[pyclass(module = "loky._core", frozen)]
struct Pool {
    manager: Manager,
}

#[pymethods]
impl Pool {
    #[new]
    #[pyo3(signature = (program, args, env, init, max_workers, idle_timeout=None, max_tasks_per_child=None, pass_fds=Vec::new(), template_args=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
        init: Vec<u8>,
        max_workers: usize,
        idle_timeout: Option<f64>,
        max_tasks_per_child: Option<u64>,
        pass_fds: Vec<i32>,
        template_args: Option<Vec<String>>,
    ) -> PyResult<Self> {
        if max_workers == 0 {
            return Err(PyValueError::new_err("max_workers must be greater than 0"));
        }
        let idle_timeout = match idle_timeout {
            Some(t) if !(t.is_finite() && t >= 0.0) => {
                return Err(PyValueError::new_err(format!(
                    "timeout must be a non-negative number of seconds, got {t}"
                )))
            }
            t => t.map(Duration::from_secs_f64),
        };
        let command = WorkerCommand {
            program,
            args,
            env,
            pass_fds,
        };
        let template = template_args.map(|args| WorkerCommand {
            args,
            ..command.clone()
        });
        let config = Config {
            command,
            template,
            init: init.into(),
            max_workers,
            idle_timeout,
            max_tasks_per_child,
        };
        let manager = Manager::start(config)
            .map_err(|e| PyOSError::new_err(format!("could not start the pool manager: {e}")))?;
        Ok(Pool { manager })
    }

    /// Queue a pickled task, with the memfd `fd` holding its large buffers if >= 0.
    /// Both are copied (the descriptor duplicated): the caller may reuse or close its own.
    #[pyo3(signature = (task_id, body, fd=-1))]
    fn submit(&self, task_id: u64, body: &[u8], fd: i32) -> PyResult<()> {
        self.manager.submit(task_id, body.to_vec(), dup_fd(fd)?);
        Ok(())
    }

    /// Take a task back if no worker has received it yet.
    fn cancel(&self, task_id: u64) -> bool {
        self.manager.cancel(task_id)
    }

    fn resize(&self, max_workers: usize) -> PyResult<()> {
        if max_workers == 0 {
            return Err(PyValueError::new_err("max_workers must be greater than 0"));
        }
        self.manager.resize(max_workers);
        Ok(())
    }

    /// Graceful: finish queued work, then stop the workers. Kill: stop them now.
    fn shutdown(&self, kill: bool) {
        self.manager.shutdown(if kill {
            Shutdown::Kill
        } else {
            Shutdown::Graceful
        });
    }

    /// Wait up to `timeout` seconds (None: for ever) for the manager thread to end,
    /// without holding the GIL. True once it has.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> bool {
        let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        py.detach(|| self.manager.join(timeout))
    }

    fn pids(&self) -> Vec<i32> {
        self.manager.pids()
    }

    /// Have task `task_id`'s outcome handed to this caller (see `await_claim`); end the
    /// claim with `unclaim`.
    fn claim(&self, task_id: u64) {
        self.manager.claim(task_id);
    }

    /// Wait up to `timeout` seconds (None: no limit) until a claimed task's outcome has
    /// arrived (`unclaim` hands it over) or was handled elsewhere. Waits in slices, so
    /// that signals (Ctrl-C) get through.
    #[pyo3(signature = (task_id, timeout=None))]
    fn await_claim(&self, py: Python<'_>, task_id: u64, timeout: Option<f64>) -> PyResult<()> {
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice = deadline.map_or(SIGNAL_SLICE, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(SIGNAL_SLICE)
            });
            if py.detach(|| self.manager.await_claim(task_id, slice))
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                return Ok(());
            }
            py.check_signals()?;
        }
    }

    /// End a claimer's wait: task `task_id`'s outcome was handled by another thread.
    fn wake_claim(&self, task_id: u64) {
        self.manager.wake_claim(task_id);
    }

    /// End the claim on `task_id`. Returns the event tuple of an outcome that arrived
    /// and was not taken (the caller applies it), else None.
    fn unclaim<'py>(&self, py: Python<'py>, task_id: u64) -> Option<EventTuple<'py>> {
        self.manager
            .unclaim(task_id)
            .map(|event| event_tuple(py, event))
    }

    /// Wait (without the GIL) for at least one event, or `timeout` seconds, and return
    /// every event queued by then.
    #[pyo3(signature = (timeout=None, max_events=4096))]
    fn next_events<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        max_events: usize,
    ) -> Vec<EventTuple<'py>> {
        let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        let events = py.detach(|| self.manager.next_events(timeout, max_events));
        events.into_iter().map(|e| event_tuple(py, e)).collect()
    }
}

/// Fork+exec `program` with `args`, the environment overrides `env`, and `pass_fds`
/// inherited. Returns (pid, pidfd); the caller owns the pidfd (pollable: readable once
/// the process has exited) and reaps the child with `reap`.
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
    let (pid, pidfd) = spawn::spawn_process(&cmd)
        .map_err(|e| PyOSError::new_err(format!("could not start '{}': {e}", cmd.program)))?;
    Ok((pid, std::os::fd::IntoRawFd::into_raw_fd(pidfd)))
}

/// Reap the child behind `pidfd` if it has exited: its exit code, or minus the signal
/// that killed it; None while it runs. Does not close `pidfd`.
#[pyfunction]
fn reap(pidfd: i32) -> PyResult<Option<i32>> {
    spawn::try_reap(pidfd).map_err(|e| PyOSError::new_err(e.to_string()))
}

/// Template side: block (without the GIL) until the manager asks for a worker or a
/// forked worker exits. Returns ("fork", socket fd), ("exited", index into
/// `children`) or ("closed", -1).
#[pyfunction]
fn template_next(
    py: Python<'_>,
    control: i32,
    children: Vec<i32>,
) -> PyResult<(&'static str, i64)> {
    let request = py
        .detach(|| template::next_request(control, &children))
        .map_err(|e| PyOSError::new_err(format!("template control socket: {e}")))?;
    Ok(match request {
        template::Request::Fork(fd) => ("fork", std::os::fd::IntoRawFd::into_raw_fd(fd) as i64),
        template::Request::ChildExited(i) => ("exited", i as i64),
        template::Request::Closed => ("closed", -1),
    })
}

/// In a worker just forked by the template: own process group, and die with the
/// template (which dies with the executor's process). False if the template is gone.
#[pyfunction]
fn detach_forked_worker(template_pid: i32) -> PyResult<bool> {
    // SAFETY: plain syscalls on our own process.
    unsafe {
        if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(PyOSError::new_err(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        Ok(libc::getppid() == template_pid)
    }
}

/// Receive up to `max` bytes from socket `sock` (blocking), with the descriptor that
/// came with them, if any: (data, fd or -1). Empty data means the peer closed.
#[pyfunction]
fn recv_with_fd<'py>(
    py: Python<'py>,
    sock: i32,
    max: usize,
) -> PyResult<(Bound<'py, PyBytes>, i32)> {
    thread_local! {
        // Reused: a fresh zeroed buffer of `max` bytes per call costs more than the
        // call itself when `max` is large and the message small.
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buf| {
        if buf.len() < max {
            buf.resize(max, 0);
        }
        let window = &mut buf[..max];
        let (n, fd) = py
            .detach(|| wire::recv_with_fd(sock, window))
            .map_err(os_error)?;
        Ok((
            PyBytes::new(py, &buf[..n]),
            fd.map_or(-1, IntoRawFd::into_raw_fd),
        ))
    })
}

/// Send `data` on socket `sock` (blocking) with descriptor `fd` attached to its first
/// byte. Returns how many bytes were sent; the caller sends the rest plainly.
#[pyfunction]
fn send_with_fd(py: Python<'_>, sock: i32, data: &[u8], fd: i32) -> PyResult<usize> {
    let n = py.detach(|| {
        let iov = [libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        }];
        wire::send_iov(sock, &iov, Some(fd))
    });
    if n < 0 {
        return Err(os_error(std::io::Error::last_os_error()));
    }
    Ok(n as usize)
}

/// Number of CPUs this process can use (see `loky.cpu_count`). `root` points the
/// /proc and /sys lookups at another directory tree (for tests).
#[pyfunction]
#[pyo3(signature = (only_physical_cores=false, limit=None, root="/"))]
fn cpu_count(only_physical_cores: bool, limit: Option<i64>, root: &str) -> usize {
    let limit = limit.map(|l| l.max(1) as usize);
    cpu::cpu_count(std::path::Path::new(root), only_physical_cores, limit)
}

/// A received shared-memory segment, mapped: exposes its bytes through the buffer
/// protocol (``memoryview(segment)``). Once the last view is gone the segment is marked
/// free for its sender and unmapped. Holds no file descriptor.
#[pyclass(module = "loky._core", frozen)]
struct SharedSegment {
    mapping: shm::Mapping,
}

#[pymethods]
impl SharedSegment {
    /// Map the first `length` bytes of the segment file `fd` (the caller keeps `fd`).
    #[new]
    fn new(py: Python<'_>, fd: i32, length: usize) -> PyResult<SharedSegment> {
        // SAFETY: the caller keeps `fd` open for the duration of this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mapping = py
            .detach(|| shm::Mapping::new(fd, length))
            .map_err(os_error)?;
        Ok(SharedSegment { mapping })
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::ffi::c_int,
    ) -> PyResult<()> {
        let mapping = &slf.get().mapping;
        // SAFETY: `view` comes from the interpreter; the view holds a reference to
        // `slf`, so the mapping outlives it.
        let status = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                mapping.as_ptr().cast(),
                mapping.len() as pyo3::ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if status != 0 {
            return Err(PyErr::take(slf.py())
                .unwrap_or_else(|| PyBufferError::new_err("cannot export the segment")));
        }
        Ok(())
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Pool>()?;
    m.add_class::<SharedSegment>()?;
    m.add("SEGMENT_HEADER_LEN", shm::SEGMENT_HEADER_LEN)?;
    m.add("SEGMENT_FREE", shm::SEGMENT_FREE)?;
    m.add("SEGMENT_LENT", shm::SEGMENT_LENT)?;
    m.add_function(wrap_pyfunction!(cpu_count, m)?)?;
    m.add_function(wrap_pyfunction!(spawn_process, m)?)?;
    m.add_function(wrap_pyfunction!(reap, m)?)?;
    m.add_function(wrap_pyfunction!(template_next, m)?)?;
    m.add_function(wrap_pyfunction!(recv_with_fd, m)?)?;
    m.add_function(wrap_pyfunction!(send_with_fd, m)?)?;
    m.add("FLAG_HAS_FD", wire::HAS_FD)?;
    m.add_function(wrap_pyfunction!(detach_forked_worker, m)?)?;
    m.add("KIND_FORKED", template::FORKED)?;
    m.add("KIND_EXITED", template::EXITED)?;
    m.add("EV_RESULT", EV_RESULT)?;
    m.add("EV_WORKER_DIED", EV_WORKER_DIED)?;
    m.add("EV_INIT_FAILED", EV_INIT_FAILED)?;
    m.add("EV_START_FAILED", EV_START_FAILED)?;
    m.add("EV_CLOSED", EV_CLOSED)?;
    m.add("HEADER_LEN", wire::HEADER_LEN)?;
    m.add("KIND_TASK", wire::TASK)?;
    m.add("KIND_INIT", wire::INIT)?;
    m.add("KIND_RESULT", wire::RESULT)?;
    m.add("KIND_READY", wire::READY)?;
    m.add("KIND_INIT_FAILED", wire::INIT_FAILED)?;
    m.add("KIND_RETIRING", wire::RETIRING)?;
    m.add("WORKER_FD", spawn::WORKER_FD)?;
    Ok(())
}
