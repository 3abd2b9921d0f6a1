//! A worker's side of its channel (`WorkerEndpoint`, see `crate::endpoint`) and the
//! template's loop (`serve_template`, see `crate::template`).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;

use super::buffers::{OutgoingSegment, Payload, SharedSegment};
use super::os_error;
use crate::endpoint::Endpoint;
use crate::fork::generation;
use crate::logs::{LogQueue, LogRecord};
use crate::shm::Incoming;
use crate::wire::Attachment;

/// A task taken to run. Its shared segment comes mapped (`segment`); when it could not
/// be received, `descriptor_dropped` (no descriptor was left in this process) or
/// `map_error` says why.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct TaskMessage {
    task_id: u64,
    body: Py<Payload>,
    segment: Option<Py<SharedSegment>>,
    descriptor_dropped: bool,
    map_error: Option<String>,
}

/// Where a worker's logging handler puts the records it forwards (see
/// `WorkerEndpoint.forward_logs`). Never waits; in a process a task forked, takes
/// nothing (the channel is the worker's).
#[pyclass(module = "loky._core", frozen)]
pub struct LogSink {
    queue: Arc<LogQueue>,
    owner: u64,
}

#[pymethods]
impl LogSink {
    /// Queue a pickled record for the parent. False if it was dropped: the queue was
    /// full (the parent has not taken the records before it; the drop is counted and
    /// reported there) or closed, or this is not the worker's process.
    fn put(&self, record: &[u8]) -> bool {
        self.owner == generation()
            && self.queue.push(LogRecord {
                pid: 0,
                body: record.to_vec(),
            })
    }
}

/// A worker's end of its channel to the manager (descriptor 3, taken over and made
/// close-on-exec; on Windows the pipe handle named on the command line, made
/// non-inheritable, and the event that interrupts its tasks is listened to from then
/// on). Blocking calls release the GIL. After each result it watches for its next task
/// for a moment before it sleeps (see `crate::channel`).
#[pyclass(module = "loky._core")]
pub struct WorkerEndpoint {
    inner: Endpoint,
}

#[pymethods]
impl WorkerEndpoint {
    #[new]
    fn new() -> PyResult<WorkerEndpoint> {
        #[cfg(unix)]
        // SAFETY: descriptor 3 is this worker's channel, handed over by its parent.
        let inner = unsafe { Endpoint::from_raw_fd(crate::spawn::WORKER_FD) }
            .map_err(|e| os_error("the worker's channel (descriptor 3)", e))?;
        #[cfg(windows)]
        let inner = windows_endpoint()?;
        Ok(WorkerEndpoint { inner })
    }

    /// The first message's body: settings and initializer. None if told to leave.
    fn recv_init(&mut self, py: Python<'_>) -> PyResult<Option<Payload>> {
        let inner = &mut self.inner;
        let init = py
            .detach(|| inner.recv_init())
            .map_err(|e| os_error("", e))?;
        Ok(init.map(Payload::new))
    }

    /// Initialized: ready for tasks.
    fn ready(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(|| inner.ready()).map_err(|e| os_error("", e))
    }

    /// This worker cannot get ready: `report` says why. It exits next.
    fn start_failed(&mut self, py: Python<'_>, report: PyBackedBytes) -> PyResult<()> {
        // Kept here until sent, so that the bytes object is let go of with the GIL (see
        // `super::PyBody` for why no Python object may be released without it).
        let report = Arc::new(report);
        let inner = &mut self.inner;
        py.detach(|| inner.start_failed(report.clone()))
            .map_err(|e| os_error("", e))
    }

    /// The next task, taken to run now; None once told to leave (or the manager is gone).
    fn recv_task(&mut self, py: Python<'_>) -> PyResult<Option<TaskMessage>> {
        let inner = &mut self.inner;
        let Some(task) = py
            .detach(|| inner.recv_task())
            .map_err(|e| os_error("", e))?
        else {
            return Ok(None);
        };
        let mut message = TaskMessage {
            task_id: task.id,
            body: Py::new(py, Payload::new(task.body))?,
            segment: None,
            descriptor_dropped: false,
            map_error: None,
        };
        match task.segment {
            Incoming::None => {}
            Incoming::Mapped(mapping) => {
                message.segment = Some(Py::new(py, SharedSegment::new(mapping))?)
            }
            Incoming::Dropped => message.descriptor_dropped = true,
            Incoming::Unmappable(err) => message.map_error = Some(err.to_string()),
        }
        Ok(Some(message))
    }

    /// The outcome of task `task_id`, with the segment holding its large buffers.
    #[pyo3(signature = (task_id, body, segment=None))]
    fn send_result(
        &mut self,
        py: Python<'_>,
        task_id: u64,
        body: PyBackedBytes,
        segment: Option<PyRef<'_, OutgoingSegment>>,
    ) -> PyResult<()> {
        // Kept here until sent: see `start_failed`.
        let body = Arc::new(body);
        let segment = segment.map(|s| s.segment.clone() as Attachment);
        let inner = &mut self.inner;
        py.detach(|| inner.send_result(task_id, body.clone(), segment))
            .map_err(|e| os_error("", e))
    }

    /// Forward log records to the parent from now on: the sink the worker's logging
    /// handler puts them in; a thread of the core sends them as they come, each
    /// message of this endpoint after the records put before it.
    fn forward_logs(&mut self) -> PyResult<LogSink> {
        let queue = self
            .inner
            .forward_logs()
            .map_err(|e| os_error("could not start the log writer thread", e))?;
        Ok(LogSink {
            queue,
            owner: generation(),
        })
    }

    /// Send the log records put so far, and forward no more (the worker exits).
    fn finish_logs(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(|| inner.finish_logs())
            .map_err(|e| os_error("", e))
    }

    /// This worker leaves on its own: its memory grew past LOKY_MAX_MEMORY_LEAK_SIZE,
    /// or passed the pool's limit (`over_limit`). Tasks sent to it go elsewhere.
    #[pyo3(signature = (over_limit=false))]
    fn retiring(&mut self, py: Python<'_>, over_limit: bool) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(|| inner.retiring(over_limit))
            .map_err(|e| os_error("", e))
    }
}

/// Run as the pool's template on descriptor 3, for the pool of process `parent`: fork
/// a worker per request (with `os.fork`, so the interpreter's at-fork handlers run),
/// reap the workers and report their exit statuses. Never returns in the template,
/// which exits once the pool is gone; returns in each forked child, set up as a
/// worker on descriptor 3: the template's pid, the worker's parent.
///
/// The template has one thread: it waits holding the GIL, and signals the interpreter
/// handles (Ctrl-C) stay pending there; a forked child starts without them.
#[cfg(unix)]
#[pyfunction]
pub fn serve_template(py: Python<'_>, parent: i32) -> PyResult<i32> {
    let fork = py.import("os")?.getattr("fork")?;
    let fork = || -> std::io::Result<i32> { Ok(fork.call0()?.extract::<i32>()?) };
    crate::template::serve(parent, fork).map_err(|e| os_error("template", e))
}

/// The worker's end on Windows: its channel and interrupt event, whose handle values its
/// command line gives (`crate::spawn`); Ctrl-C from the parent raises SIGINT here.
#[cfg(windows)]
fn windows_endpoint() -> PyResult<Endpoint> {
    use std::os::windows::io::{FromRawHandle, OwnedHandle, RawHandle};

    use crate::platform::interrupt;

    let Some((channel, event)) = crate::spawn::worker_handles() else {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "this process was not started as a loky worker (its command line names no \
             channel)",
        ));
    };
    // SAFETY: the parent made this process inherit these two handles for this use, and
    // named them on its command line; nothing else here owns them.
    let inner = unsafe { Endpoint::from_raw_handle(channel) }
        .map_err(|e| os_error("the worker's channel", e))?;
    // SAFETY: as above.
    let event = unsafe { OwnedHandle::from_raw_handle(event as RawHandle) };
    crate::platform::not_inheritable(std::os::windows::io::AsHandle::as_handle(&event))
        .map_err(|e| os_error("the worker's interrupt event", e))?;
    interrupt::listen(event, interrupt::raise_sigint)
        .map_err(|e| os_error("listening for interrupts", e))?;
    Ok(inner)
}
