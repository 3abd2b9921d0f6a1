//! `Pool`, the handle of one executor's manager, and the events it reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;

use super::buffers::{OutgoingSegment, Payload, SharedSegment};
use super::enums::{EndCause, ExitReason, Shutdown, TaskState, WorkerState};
use super::{os_error, InheritedPoolError, PyBody, ReleasedBytes};
use crate::manager::{self, AttemptEnd, Config, Event, Incoming, Manager, Retry};
use crate::spawn::WorkerCommand;

/// Longest a blocking call waits before it lets pending signals be handled.
const SIGNAL_SLICE: Duration = Duration::from_millis(100);

/// A worker returned the outcome of a task. `body` is the pickled outcome; `segment`
/// holds its large buffers. When they could not be received, `segment` is None and
/// `descriptor_dropped` (this process had no descriptor left) or `map_error` says why.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct TaskResult {
    task_id: u64,
    pid: i32,
    body: Py<Payload>,
    segment: Option<Py<SharedSegment>>,
    descriptor_dropped: bool,
    map_error: Option<String>,
}

/// One run of a task that ended with its worker: the worker's `pid`, then either its
/// `exitcode` (None if unknown) and why the manager killed it (`reason`, empty if it
/// died by itself), or the `cause` for which the manager ended it.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct Attempt {
    pid: i32,
    exitcode: Option<i64>,
    reason: String,
    cause: Option<EndCause>,
}

impl Attempt {
    fn new(attempt: manager::Attempt) -> Attempt {
        let (exitcode, reason, cause) = match attempt.end {
            AttemptEnd::Died(status, reason) => (status, reason, None),
            AttemptEnd::Ended(cause) => (None, String::new(), Some(cause.into())),
        };
        Attempt {
            pid: attempt.pid,
            exitcode,
            reason,
            cause,
        }
    }
}

fn attempts(py: Python<'_>, attempts: Vec<manager::Attempt>) -> PyResult<Vec<Py<Attempt>>> {
    attempts
        .into_iter()
        .map(|a| Py::new(py, Attempt::new(a)))
        .collect()
}

/// The worker running a task died, and the task is not run again. `reason` says why
/// the manager killed it (empty: it died by itself); `exitcode` is minus the signal
/// number for a signal, None if unknown; `attempts`: every run of the task that ended
/// with its worker, this one last.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct WorkerDied {
    task_id: u64,
    pid: i32,
    exitcode: Option<i64>,
    reason: String,
    attempts: Vec<Py<Attempt>>,
}

/// The manager ended the worker running task `task_id`, with every process it
/// started, for `cause` (`peak_rss`: with MEMORY_LIMIT, the most memory the worker was
/// seen to hold). A replacement starts; `attempts` as for WorkerDied.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct TaskEnded {
    task_id: u64,
    pid: i32,
    cause: EndCause,
    peak_rss: Option<u64>,
    attempts: Vec<Py<Attempt>>,
}

/// One worker as `Pool.stats()` sees it: `task_id` and `running_for` (seconds)
/// describe its running task; `rss` is its resident memory in bytes (None if unknown).
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct WorkerStat {
    pid: i32,
    state: WorkerState,
    tasks_done: u64,
    task_id: Option<u64>,
    running_for: Option<f64>,
    rss: Option<u64>,
}

/// A worker process started (`forked`: by the template, as a replacement).
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct WorkerStarted {
    pid: i32,
    forked: bool,
}

/// A worker left the pool, and why.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct WorkerExited {
    pid: i32,
    exitcode: Option<i64>,
    reason: ExitReason,
}

/// A worker's initializer failed; `body` pickles (exception or None, traceback text).
/// No more workers start.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct InitFailed {
    pid: i32,
    body: Py<Payload>,
}

/// A worker could not be started (pid 0; `errno` and `message` say why the system
/// refused), or died before it was ready (`exitcode`, None if unknown). No more
/// workers start.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct StartFailed {
    pid: i32,
    exitcode: Option<i64>,
    errno: Option<i32>,
    message: String,
}

/// A log record a worker forwarded: `body` pickles the record's attributes (see
/// `loky._worker_logs`); `pid`: the worker's.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct WorkerLog {
    pid: i32,
    body: Py<Payload>,
}

/// What `Pool.next_logs` gives: the records forwarded since the last call, in the
/// order each worker sent them, and how many were `dropped` meanwhile (by the workers
/// or here) because they came faster than they were taken.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct ForwardedLogs {
    records: Vec<Py<WorkerLog>>,
    dropped: u64,
}

/// The manager has stopped and every worker has exited: the last event.
#[pyclass(module = "loky._core", frozen)]
pub struct PoolClosed {}

fn to_python(py: Python<'_>, event: Event) -> PyResult<Py<PyAny>> {
    let payload = |body: Vec<u8>| Py::new(py, Payload::new(body));
    Ok(match event {
        Event::Result {
            task_id,
            pid,
            body,
            segment,
        } => {
            let (segment, descriptor_dropped, map_error) = match segment {
                Incoming::None => (None, false, None),
                Incoming::Mapped(m) => (Some(Py::new(py, SharedSegment::new(m))?), false, None),
                Incoming::Dropped => (None, true, None),
                Incoming::Unmappable(err) => (None, false, Some(err.to_string())),
            };
            let result = TaskResult {
                task_id,
                pid,
                body: payload(body)?,
                segment,
                descriptor_dropped,
                map_error,
            };
            Py::new(py, result)?.into_any()
        }
        Event::WorkerDied {
            task_id,
            pid,
            exitcode,
            reason,
            attempts: runs,
        } => Py::new(
            py,
            WorkerDied {
                task_id,
                pid,
                exitcode,
                reason,
                attempts: attempts(py, runs)?,
            },
        )?
        .into_any(),
        Event::TaskEnded {
            task_id,
            pid,
            cause,
            peak_rss,
            attempts: runs,
        } => Py::new(
            py,
            TaskEnded {
                task_id,
                pid,
                cause: cause.into(),
                peak_rss,
                attempts: attempts(py, runs)?,
            },
        )?
        .into_any(),
        Event::WorkerStarted { pid, forked } => {
            Py::new(py, WorkerStarted { pid, forked })?.into_any()
        }
        Event::WorkerExited {
            pid,
            exitcode,
            reason,
        } => Py::new(
            py,
            WorkerExited {
                pid,
                exitcode,
                reason: reason.into(),
            },
        )?
        .into_any(),
        Event::InitFailed { pid, body } => Py::new(
            py,
            InitFailed {
                pid,
                body: payload(body)?,
            },
        )?
        .into_any(),
        Event::StartFailed {
            pid,
            exitcode,
            error,
        } => Py::new(
            py,
            StartFailed {
                pid,
                exitcode,
                errno: error.as_ref().and_then(std::io::Error::raw_os_error),
                message: error.map(|e| e.to_string()).unwrap_or_default(),
            },
        )?
        .into_any(),
        Event::Closed => Py::new(py, PoolClosed {})?.into_any(),
    })
}

fn seconds(value: Option<f64>) -> Option<Duration> {
    value.map(|t| Duration::from_secs_f64(t.max(0.0)))
}

/// A pool of worker processes driven by a manager thread. A pool belongs to the
/// process that made it: in a process forked from that one, `submit`, `cancel`,
/// `resize` and waits raise `InheritedPoolError`, while `shutdown` and `join` do
/// nothing (the workers are the parent's).
#[pyclass(module = "loky._core", frozen)]
pub struct Pool {
    manager: Manager,
    /// Task bodies the manager thread let go of (see `PyBody`); emptied by
    /// `next_events`.
    released: Arc<ReleasedBytes>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // With the GIL (the Python object is being freed). A finished manager thread is
        // waited for, so that what it dropped last is released here too. In a forked
        // child both belong to the parent: left alone.
        if self.manager.owned_here() {
            self.manager.join_if_finished();
            Python::attach(|py| self.released.drain(py));
        }
    }
}

impl Pool {
    fn owned(&self) -> PyResult<&Manager> {
        if self.manager.owned_here() {
            Ok(&self.manager)
        } else {
            Err(InheritedPoolError::new_err(()))
        }
    }
}

#[pymethods]
impl Pool {
    #[new]
    #[pyo3(signature = (*, program, args, env, init, max_workers, idle_timeout=None, max_tasks_per_child=None, pass_fds=Vec::new(), template_args=None, max_worker_memory=None, forward_logs=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
        init: PyBackedBytes,
        max_workers: usize,
        idle_timeout: Option<f64>,
        max_tasks_per_child: Option<u64>,
        pass_fds: Vec<i32>,
        template_args: Option<Vec<String>>,
        max_worker_memory: Option<u64>,
        forward_logs: bool,
    ) -> PyResult<Self> {
        // The arguments were checked by the Python side (`loky._options`).
        let released = Arc::new(ReleasedBytes::default());
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
            init: Arc::new(PyBody::new(init, &released)),
            max_workers: max_workers.max(1),
            idle_timeout: seconds(idle_timeout),
            max_tasks_per_child,
            max_worker_memory,
            forward_logs,
        };
        let manager =
            Manager::start(config).map_err(|e| os_error("could not start the pool manager", e))?;
        Ok(Pool { manager, released })
    }

    /// Queue a pickled task (kept without a copy), with the segment holding its large
    /// buffers; it may run `timeout` seconds at most, from its start on a worker, and
    /// runs again up to `retries` times after its worker died under it (a run past its
    /// time limit counts as such a death only with `retry_on_timeout`).
    #[pyo3(signature = (task_id, body, segment=None, timeout=None, retries=0, retry_on_timeout=false))]
    fn submit(
        &self,
        task_id: u64,
        body: PyBackedBytes,
        segment: Option<PyRef<'_, OutgoingSegment>>,
        timeout: Option<f64>,
        retries: u32,
        retry_on_timeout: bool,
    ) -> PyResult<()> {
        let segment = segment.map(|s| s.segment.clone());
        let retry = Retry {
            times: retries,
            on_timeout: retry_on_timeout,
        };
        self.owned()?.submit(
            task_id,
            Arc::new(PyBody::new(body, &self.released)),
            segment,
            seconds(timeout),
            retry,
        );
        Ok(())
    }

    /// End a task whatever its state: True if it was taken back from the queue; False
    /// if a worker may hold it: that worker is then ended once it runs it, and a
    /// TaskEnded event follows (unless the task finished first).
    fn terminate(&self, task_id: u64) -> PyResult<bool> {
        Ok(self.owned()?.terminate(task_id))
    }

    /// Ctrl-C: pass SIGINT on to the workers running a task.
    fn interrupt(&self) -> PyResult<()> {
        self.owned()?.interrupt();
        Ok(())
    }

    /// A snapshot of the workers (asks the manager thread; cheap).
    fn stats(&self, py: Python<'_>) -> PyResult<Vec<WorkerStat>> {
        let manager = self.owned()?;
        Ok(py.detach(|| {
            manager
                .stats()
                .into_iter()
                .map(|w| WorkerStat {
                    pid: w.pid,
                    state: w.state.into(),
                    tasks_done: w.tasks_done,
                    task_id: w.running.map(|(id, _)| id),
                    running_for: w.running.map(|(_, d)| d.as_secs_f64()),
                    rss: crate::procfs::resident_bytes(w.pid),
                })
                .collect()
        }))
    }

    /// Take a task back if no worker can have received it yet.
    fn cancel(&self, task_id: u64) -> PyResult<bool> {
        Ok(self.owned()?.cancel(task_id))
    }

    /// Where task `task_id` is in its life; None once it is done (or taken back).
    fn task_state(&self, task_id: u64) -> PyResult<Option<TaskState>> {
        Ok(self.owned()?.task_state(task_id).and_then(Into::into))
    }

    fn resize(&self, max_workers: usize) -> PyResult<()> {
        self.owned()?.resize(max_workers.max(1));
        Ok(())
    }

    /// Stop the pool as `how` says (see `Shutdown`).
    fn shutdown(&self, how: Shutdown) -> PyResult<()> {
        let mode: manager::Shutdown = how.into();
        if self.manager.owned_here() {
            self.manager.shutdown(mode);
        }
        Ok(())
    }

    /// Wait up to `timeout` seconds (None: for ever) for the manager thread to end,
    /// without holding the GIL. True once it has.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> bool {
        if !self.manager.owned_here() {
            return true;
        }
        py.detach(|| self.manager.join(seconds(timeout)))
    }

    fn owned_here(&self) -> bool {
        self.manager.owned_here()
    }

    fn pids(&self) -> Vec<i32> {
        if self.manager.owned_here() {
            self.manager.pids()
        } else {
            Vec::new()
        }
    }

    /// Wait (without the GIL) for at least one event, or `timeout` seconds, and return
    /// every event queued by then.
    #[pyo3(signature = (timeout=None, max_events=4096))]
    fn next_events(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        max_events: usize,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let manager = self.owned()?;
        let events = py.detach(|| manager.next_events(seconds(timeout), max_events));
        self.released.drain(py);
        events.into_iter().map(|e| to_python(py, e)).collect()
    }

    /// Wait (without the GIL) up to `timeout` seconds (None: as long as needed) for log
    /// records the workers forwarded, and take them: an empty batch if the time ran
    /// out; None once the pool has closed and every record was taken, or if the pool
    /// was made without `forward_logs`.
    #[pyo3(signature = (timeout=None))]
    fn next_logs(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<ForwardedLogs>> {
        let manager = self.owned()?;
        let Some(batch) = py.detach(|| manager.next_logs(seconds(timeout))) else {
            return Ok(None);
        };
        let records = batch
            .records
            .into_iter()
            .map(|record| {
                let body = Py::new(py, Payload::new(record.body))?;
                Py::new(
                    py,
                    WorkerLog {
                        pid: record.pid,
                        body,
                    },
                )
            })
            .collect::<PyResult<_>>()?;
        Ok(Some(ForwardedLogs {
            records,
            dropped: batch.dropped,
        }))
    }

    /// Wait up to `timeout` seconds (None: no limit) for task `task_id`'s outcome in
    /// this thread: the manager hands it over directly. `done()` tells whether the
    /// future is finished already. A handed-over event (a TaskResult, WorkerDied or
    /// TaskEnded) is applied here, by `apply(event)`, before this returns: once it
    /// returns, the interpreter may run a pending signal handler (Python 3.13 does so
    /// right after a call), whose exception would drop an outcome still in flight.
    /// `apply` must be idempotent: a handler raising inside it makes it run again.
    /// Returns the exception a signal handler raised meanwhile (KeyboardInterrupt...),
    /// for the caller to raise, or None. Without a handed-over event, the outcome went
    /// the usual way (`next_events`): wait on the future.
    #[pyo3(signature = (task_id, timeout, done, apply))]
    fn wait_outcome<'py>(
        &self,
        py: Python<'py>,
        task_id: u64,
        timeout: Option<f64>,
        done: Bound<'py, PyAny>,
        apply: Bound<'py, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let manager = self.owned()?;
        if !manager.claim(task_id) {
            return Ok(py.None());
        }
        let deadline = seconds(timeout).map(|t| Instant::now() + t);
        let mut interruption = loop {
            // Looked at after claiming: an outcome applied just before is seen here.
            // A signal handler may run inside `done()`: its exception is the
            // interruption, never swallowed.
            match done.call0().and_then(|d| d.is_truthy()) {
                Ok(true) => break None,
                Ok(false) => {}
                Err(err) => break Some(err),
            }
            let slice = deadline.map_or(SIGNAL_SLICE, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(SIGNAL_SLICE)
            });
            if py.detach(|| manager.wait_claim(task_id, slice))
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                break None;
            }
            if let Err(err) = py.check_signals() {
                break Some(err);
            }
        };
        if let Some(event) = py.detach(|| manager.release_claim(task_id)) {
            let event = to_python(py, event).inspect_err(|_| manager.claim_applied(task_id))?;
            // A handler raising before `apply` ran, or within it: apply again (it stops
            // once the signals pending are handled); the first exception is reported.
            loop {
                match apply.call1((event.clone_ref(py),)) {
                    Ok(_) => break,
                    Err(err) => {
                        interruption.get_or_insert(err);
                    }
                }
            }
            manager.claim_applied(task_id);
        }
        Ok(interruption.map_or_else(|| py.None(), |e| e.into_value(py).into_any()))
    }

    /// Tasks whose outcome is the thread's that claimed it (to take, or being applied):
    /// a closing pool leaves their futures to that thread.
    fn claimed_outcomes(&self) -> Vec<u64> {
        if self.manager.owned_here() {
            self.manager.claimed_outcomes()
        } else {
            Vec::new()
        }
    }
}
