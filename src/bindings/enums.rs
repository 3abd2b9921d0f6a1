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
#[derive(Clone, Copy, PartialEq, Eq)]
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
