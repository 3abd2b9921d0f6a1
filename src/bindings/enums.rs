//! The named values that cross the boundary: Python compares them by identity
//! (`event.reason is ExitReason.DIED`) instead of matching strings.

use pyo3::prelude::*;

use crate::manager;

/// Where a task is in its life (`Pool.task_state`). A task that is done has no state.
#[pyclass(
    module = "loky._core",
    eq,
    eq_int,
    frozen,
    rename_all = "SCREAMING_SNAKE_CASE"
)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Written to a worker behind another task; not started.
    Sent,
    /// Running on a worker.
    Running,
    /// Its worker is being ended for it (time limit, terminate).
    Ending,
}

impl From<manager::TaskState> for Option<TaskState> {
    fn from(state: manager::TaskState) -> Self {
        Some(match state {
            manager::TaskState::Queued => TaskState::Queued,
            manager::TaskState::Sent { .. } => TaskState::Sent,
            manager::TaskState::Running { .. } => TaskState::Running,
            manager::TaskState::Ending { .. } => TaskState::Ending,
            manager::TaskState::Withdrawn => return None,
        })
    }
}

/// Why a worker left the pool (`WorkerExited.reason`).
#[pyclass(
    module = "loky._core",
    eq,
    eq_int,
    frozen,
    hash,
    rename_all = "SCREAMING_SNAKE_CASE"
)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// Idle for longer than the executor's timeout.
    IdleTimeout,
    /// Ran `max_tasks_per_child` tasks.
    TaskLimit,
    /// Its memory grew past LOKY_MAX_MEMORY_LEAK_SIZE (it said so itself).
    MemoryGrowth,
    /// The pool was resized down.
    Shrink,
    /// The executor shut down.
    Shutdown,
    /// It died by itself (crash, signal, os._exit).
    Died,
    /// The manager killed it: it broke the channel's protocol.
    Killed,
    /// Its task ran past its time limit.
    TaskTimeout,
    /// Its task was terminated.
    TaskTerminated,
    /// Its memory passed the pool's limit while it ran a task.
    MemoryLimit,
}

impl From<manager::ExitReason> for ExitReason {
    fn from(reason: manager::ExitReason) -> Self {
        use manager::ExitReason as R;
        match reason {
            R::IdleTimeout => ExitReason::IdleTimeout,
            R::TaskLimit => ExitReason::TaskLimit,
            R::MemoryGrowth => ExitReason::MemoryGrowth,
            R::Shrink => ExitReason::Shrink,
            R::Shutdown => ExitReason::Shutdown,
            R::Died => ExitReason::Died,
            R::Killed => ExitReason::Killed,
            R::TaskTimeout => ExitReason::TaskTimeout,
            R::TaskTerminated => ExitReason::TaskTerminated,
            R::MemoryLimit => ExitReason::MemoryLimit,
        }
    }
}

/// Why the manager ended a task's worker (`TaskEnded.cause`, `Attempt.cause`).
#[pyclass(
    module = "loky._core",
    eq,
    eq_int,
    frozen,
    hash,
    rename_all = "SCREAMING_SNAKE_CASE"
)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndCause {
    /// The task ran past its time limit.
    Timeout,
    /// `Future.terminate()`.
    Terminated,
    /// The worker's memory passed the pool's limit by half again.
    MemoryLimit,
}

impl From<manager::EndCause> for EndCause {
    fn from(cause: manager::EndCause) -> Self {
        match cause {
            manager::EndCause::Timeout => EndCause::Timeout,
            manager::EndCause::Terminated => EndCause::Terminated,
            manager::EndCause::MemoryLimit => EndCause::MemoryLimit,
        }
    }
}

/// What a worker does (`WorkerStat.state`).
#[pyclass(
    module = "loky._core",
    eq,
    eq_int,
    frozen,
    hash,
    rename_all = "SCREAMING_SNAKE_CASE"
)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerState {
    /// Its initializer has not reported yet.
    Starting,
    /// Ready, running nothing.
    Idle,
    /// Running a task.
    Busy,
    /// On its way out.
    Exiting,
}

impl From<manager::WorkerState> for WorkerState {
    fn from(state: manager::WorkerState) -> Self {
        match state {
            manager::WorkerState::Starting => WorkerState::Starting,
            manager::WorkerState::Idle => WorkerState::Idle,
            manager::WorkerState::Busy => WorkerState::Busy,
            manager::WorkerState::Exiting => WorkerState::Exiting,
        }
    }
}

/// How a pool stops (`Pool.shutdown`).
#[pyclass(
    module = "loky._core",
    eq,
    eq_int,
    frozen,
    hash,
    from_py_object,
    rename_all = "SCREAMING_SNAKE_CASE"
)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// Queued work finishes, then the workers leave.
    Graceful,
    /// Every worker's tree gets SIGTERM now, SIGKILL after a grace period; queued work
    /// is dropped.
    Terminate,
    /// Every worker's tree is killed now; queued work is dropped.
    Kill,
}

impl From<Shutdown> for manager::Shutdown {
    fn from(mode: Shutdown) -> Self {
        match mode {
            Shutdown::Graceful => manager::Shutdown::Graceful,
            Shutdown::Terminate => manager::Shutdown::Terminate,
            Shutdown::Kill => manager::Shutdown::Kill,
        }
    }
}

/// `str(value)`: the words a log or a message uses for it.
macro_rules! labels {
    ($name:ident { $($variant:ident => $label:literal),* $(,)? }) => {
        #[pymethods]
        impl $name {
            fn __str__(&self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }
    };
}

labels!(TaskState {
    Queued => "queued",
    Sent => "sent",
    Running => "running",
    Ending => "ending",
});
labels!(ExitReason {
    IdleTimeout => "idle timeout",
    TaskLimit => "task limit",
    MemoryGrowth => "memory growth",
    Shrink => "pool shrank",
    Shutdown => "shutdown",
    Died => "died",
    Killed => "killed",
    TaskTimeout => "task timeout",
    TaskTerminated => "task terminated",
    MemoryLimit => "memory limit",
});
labels!(EndCause {
    Timeout => "timeout",
    Terminated => "terminated",
    MemoryLimit => "memory limit",
});
labels!(WorkerState {
    Starting => "starting",
    Idle => "idle",
    Busy => "busy",
    Exiting => "exiting",
});
labels!(Shutdown {
    Graceful => "graceful",
    Terminate => "terminate",
    Kill => "kill",
});
