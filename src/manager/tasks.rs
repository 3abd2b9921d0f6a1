//! The task table: the one owner of a task's life, from the manager's receipt of it to
//! its outcome. Every state a task can be in, and who moves it:
//!
//! ```text
//!  submit ──► in transit (the submissions queue) ──receive──► Queued
//!                │ cancel (caller): Withdrawn, dropped on receipt    │ cancel (caller): gone
//!                ▼                                                   ▼ dispatch
//!  direct send (caller, to an idle worker) ─────────────────► Running ◄── Sent (behind
//!                                                             │   │      another task on
//!      result ◄───────────────────────────────────────────────┘   │      its worker; put
//!      (gone: the outcome travels as an Event)                    │      back to Queued if
//!                                                                 │      that worker dies)
//!      timeout, terminate ─► Ending ─► its worker's exit: gone (TaskEnded)
//!      its worker dies while it runs: gone (WorkerDied)
//! ```
//!
//! The manager thread makes every move but two, which callers make under the same
//! lock: taking back a task no worker holds (`cancel`), and recording a task a
//! submitting thread wrote straight to an idle worker (`sent_directly`). A task's
//! outcome, once gone from here, is delivered by `claims.rs`. The table never waits
//! and does no I/O: it is locked for moments.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::policy;
use super::worker::WorkerId;
use crate::platform::ExitStatus;
use crate::shm::OutSegment;
use crate::wire::Body;

/// A pickled call.
pub struct Task {
    pub id: u64,
    pub body: Body,
    /// The shared segment holding its large buffers, passed along with the frame.
    pub segment: Option<Arc<OutSegment>>,
    /// How long it may run, counted from its start on a worker.
    pub timeout: Option<Duration>,
    /// Whether it runs again when its worker dies under it.
    pub retry: Retry,
}

/// How many times a task runs again after its worker died under it (`times`), and
/// whether a run past its time limit counts as such a death (`on_timeout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retry {
    pub times: u32,
    pub on_timeout: bool,
}

/// Why the manager ends a task's worker and its process tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    /// The task ran past its time limit.
    Timeout,
    /// `Future.terminate()`.
    Terminated,
    /// The worker's resident memory passed the pool's limit by the margin.
    MemoryLimit,
}

/// One run of a task that ended with its worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub pid: i32,
    pub end: AttemptEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The worker died: its exit status, and why the manager killed it (empty: it
    /// died by itself).
    Died(ExitStatus, String),
    /// The manager ended the worker for the task.
    Ended(EndCause),
}

/// Where a task is in its life (see the picture above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Written to `worker`'s channel behind another task; not started. `terminate`:
    /// ended as soon as it starts (`Future.terminate()` came meanwhile).
    Sent { worker: WorkerId, terminate: bool },
    /// The task `worker` runs, since `since`.
    Running { worker: WorkerId, since: Instant },
    /// Its worker is being ended for it.
    Ending { worker: WorkerId, cause: EndCause },
    /// Taken back while in transit: dropped when it arrives.
    Withdrawn,
}

struct Entry {
    /// None once withdrawn.
    task: Option<Task>,
    state: TaskState,
    /// Earlier runs that ended with their worker.
    attempts: Vec<Attempt>,
}

#[derive(Default)]
pub struct TaskTable {
    entries: HashMap<u64, Entry>,
    /// Queued ids, oldest first (re-queued ones at the front). A cancelled task's id
    /// stays here until dispatch passes it (cancelling is O(1)).
    queue: VecDeque<u64>,
    /// One more than the highest id received or sent directly. Ids grow in submission
    /// order and travel in that order, so an id at or above it, with no entry, is in
    /// transit.
    received: u64,
    /// Tasks Queued (the length of `queue` without the cancelled ones).
    queued: usize,
}

impl TaskTable {
    /// Manager: a task arrived from the submissions queue: Queued, unless withdrawn.
    pub fn receive(&mut self, task: Task) {
        self.received = self.received.max(task.id + 1);
        if let Some(entry) = self.entries.remove(&task.id) {
            debug_assert_eq!(entry.state, TaskState::Withdrawn);
            return;
        }
        self.queue.push_back(task.id);
        self.queued += 1;
        let state = TaskState::Queued;
        self.entries.insert(
            task.id,
            Entry {
                task: Some(task),
                state,
                attempts: Vec::new(),
            },
        );
    }

    /// Caller: take task `id` back if no worker can hold it. False if one may (or it is
    /// done).
    pub fn cancel(&mut self, id: u64) -> bool {
        match self.entries.get(&id).map(|e| e.state) {
            Some(TaskState::Queued) => {
                self.entries.remove(&id);
                self.queued -= 1;
                true
            }
            Some(TaskState::Withdrawn) => true,
            Some(_) => false,
            None if id >= self.received => {
                let entry = Entry {
                    task: None,
                    state: TaskState::Withdrawn,
                    attempts: Vec::new(),
                };
                self.entries.insert(id, entry);
                true
            }
            None => false, // done
        }
    }

    /// Caller: `task` was written straight to the idle `worker`, where it runs now.
    /// False (and nothing recorded) if it was withdrawn meanwhile: then it must not go.
    pub fn sent_directly(&mut self, task: &Task, worker: WorkerId) -> bool {
        if self.entries.contains_key(&task.id) {
            return false;
        }
        self.received = self.received.max(task.id + 1);
        let state = TaskState::Running {
            worker,
            since: Instant::now(),
        };
        self.entries.insert(
            task.id,
            Entry {
                task: Some(Task {
                    id: task.id,
                    body: task.body.clone(),
                    segment: task.segment.clone(),
                    timeout: task.timeout,
                    retry: task.retry,
                }),
                state,
                attempts: Vec::new(),
            },
        );
        true
    }

    pub fn state(&self, id: u64) -> Option<TaskState> {
        self.entries.get(&id).map(|e| e.state)
    }

    pub fn task(&self, id: u64) -> Option<&Task> {
        self.entries.get(&id)?.task.as_ref()
    }

    /// How many tasks wait for a worker.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The next queued task, dropping cancelled ids on the way.
    pub fn next_queued(&mut self) -> Option<&Task> {
        while let Some(&id) = self.queue.front() {
            if self.state(id) == Some(TaskState::Queued) {
                return self.task(id);
            }
            self.queue.pop_front();
        }
        None
    }

    /// Manager: the next queued task goes to `worker`: it runs at once if the worker
    /// holds nothing else (`starts`), else it waits behind.
    pub fn dispatch_next(&mut self, worker: WorkerId, starts: bool) -> Option<&Task> {
        self.next_queued()?;
        let id = self.queue.pop_front()?;
        self.queued -= 1;
        let entry = self.entries.get_mut(&id)?;
        entry.state = if starts {
            TaskState::Running {
                worker,
                since: Instant::now(),
            }
        } else {
            TaskState::Sent {
                worker,
                terminate: false,
            }
        };
        entry.task.as_ref()
    }

    /// Manager: task `id`, sent behind another, starts now (the one before it ended).
    pub fn start(&mut self, id: u64, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&id) {
            if let TaskState::Sent { worker, .. } = entry.state {
                entry.state = TaskState::Running { worker, since: now };
            }
        }
    }

    /// Manager: the task is over (its outcome goes out as an event).
    pub fn finish(&mut self, id: u64) -> Option<Task> {
        self.entries.remove(&id)?.task
    }

    /// Manager: the worker running task `id` ended with `attempt`. The task runs again
    /// if it may (None: it is queued first); else it is over, and every run it had
    /// is returned, this one last.
    pub fn end_attempt(&mut self, id: u64, attempt: Attempt) -> Option<Vec<Attempt>> {
        let entry = self.entries.get_mut(&id)?;
        let retry = entry.task.as_ref().map(|t| t.retry).unwrap_or_default();
        if policy::may_retry(entry.attempts.len(), retry, &attempt.end) {
            entry.attempts.push(attempt);
            entry.state = TaskState::Queued;
            self.queue.push_front(id);
            self.queued += 1;
            return None;
        }
        let mut attempts = self.entries.remove(&id)?.attempts;
        attempts.push(attempt);
        Some(attempts)
    }

    /// Manager: tasks a worker held unstarted, whose worker leaves, go back to the head
    /// of the queue in order; those terminated meanwhile are dropped (never run).
    pub fn give_back(&mut self, ids: impl IntoIterator<Item = u64>) {
        let ids: Vec<u64> = ids.into_iter().collect();
        for id in ids.into_iter().rev() {
            if self.terminated_unstarted(id) {
                self.entries.remove(&id);
            } else if let Some(entry) = self.entries.get_mut(&id) {
                entry.state = TaskState::Queued;
                self.queue.push_front(id);
                self.queued += 1;
            }
        }
    }

    /// Manager: the worker running task `id` is being ended for it.
    pub fn end(&mut self, id: u64, cause: EndCause) {
        if let Some(entry) = self.entries.get_mut(&id) {
            if let TaskState::Running { worker, .. } = entry.state {
                entry.state = TaskState::Ending { worker, cause };
            }
        }
    }

    /// Manager: `Future.terminate()` on a task its worker holds unstarted: it is ended
    /// when it starts. True if it was so.
    pub fn terminate_on_start(&mut self, id: u64) -> bool {
        match self.entries.get_mut(&id) {
            Some(Entry {
                state: TaskState::Sent { terminate, .. },
                ..
            }) => {
                *terminate = true;
                true
            }
            _ => false,
        }
    }

    /// Whether task `id` was terminated before it started.
    pub fn terminated_unstarted(&self, id: u64) -> bool {
        matches!(
            self.state(id),
            Some(TaskState::Sent {
                terminate: true,
                ..
            })
        )
    }

    /// When the running task `id` must end, if it has a time limit.
    pub fn deadline(&self, id: u64) -> Option<Instant> {
        let entry = self.entries.get(&id)?;
        match entry.state {
            TaskState::Running { since, .. } => Some(since + entry.task.as_ref()?.timeout?),
            _ => None,
        }
    }

    /// When the running task `id` started.
    pub fn running_since(&self, id: u64) -> Option<Instant> {
        match self.state(id)? {
            TaskState::Running { since, .. } => Some(since),
            _ => None,
        }
    }

    /// Whether task `id` has a time limit.
    pub fn has_time_limit(&self, id: u64) -> bool {
        self.task(id).is_some_and(|t| t.timeout.is_some())
    }

    /// Manager, when the pool is killed: every task is dropped.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.queue.clear();
        self.queued = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64) -> Task {
        Task {
            id,
            body: crate::wire::empty_body(),
            segment: None,
            timeout: None,
            retry: Retry::default(),
        }
    }

    const W: WorkerId = WorkerId(1);

    #[test]
    fn a_task_goes_from_queued_to_running_to_gone() {
        let mut table = TaskTable::default();
        table.receive(task(0));
        table.receive(task(1));
        assert_eq!(table.queued(), 2);
        assert_eq!(table.dispatch_next(W, true).map(|t| t.id), Some(0));
        assert_eq!(table.dispatch_next(W, false).map(|t| t.id), Some(1));
        assert!(matches!(table.state(0), Some(TaskState::Running { .. })));
        assert!(matches!(table.state(1), Some(TaskState::Sent { .. })));
        assert!(table.finish(0).is_some());
        table.start(1, Instant::now());
        assert!(matches!(table.state(1), Some(TaskState::Running { .. })));
        assert!(table.finish(1).is_some());
        assert_eq!(table.state(0), None);
        assert_eq!(table.queued(), 0);
    }

    #[test]
    fn only_tasks_no_worker_holds_can_be_taken_back() {
        let mut table = TaskTable::default();
        table.receive(task(0));
        table.receive(task(1));
        table.dispatch_next(W, true);
        assert!(!table.cancel(0), "running");
        assert!(table.cancel(1), "queued");
        assert_eq!(table.queued(), 0);
        assert!(table.next_queued().is_none());
        assert!(table.cancel(2), "in transit");
        table.receive(task(2));
        assert!(table.next_queued().is_none(), "dropped on receipt");
        table.finish(0);
        assert!(!table.cancel(0), "done");
    }

    #[test]
    fn a_direct_send_is_refused_for_a_withdrawn_task() {
        let mut table = TaskTable::default();
        assert!(table.cancel(3));
        assert!(!table.sent_directly(&task(3), W));
        assert!(table.sent_directly(&task(4), W));
        assert!(!table.cancel(4), "runs");
        assert!(!table.cancel(2), "below what was sent: done or running");
    }

    #[test]
    fn unstarted_tasks_of_a_dead_worker_go_back_first_in_order() {
        let mut table = TaskTable::default();
        for id in 0..4 {
            table.receive(task(id));
        }
        table.dispatch_next(W, true);
        table.dispatch_next(W, false);
        table.dispatch_next(W, false);
        table.finish(0);
        table.give_back([1, 2]);
        let order: Vec<u64> =
            std::iter::from_fn(|| table.dispatch_next(W, true).map(|t| t.id)).collect();
        assert_eq!(order, vec![1, 2, 3]);
    }

    #[test]
    fn terminate_marks_unstarted_tasks_and_ends_running_ones() {
        let mut table = TaskTable::default();
        table.receive(task(0));
        table.receive(task(1));
        table.dispatch_next(W, true);
        table.dispatch_next(W, false);
        assert!(!table.terminate_on_start(0), "running: its worker is ended");
        assert!(table.terminate_on_start(1));
        assert!(table.terminated_unstarted(1));
        table.give_back([1]);
        assert_eq!(table.state(1), None, "dropped, never run");
        table.end(0, EndCause::Terminated);
        assert_eq!(
            table.state(0),
            Some(TaskState::Ending {
                worker: W,
                cause: EndCause::Terminated
            })
        );
    }

    #[test]
    fn a_task_runs_again_after_its_worker_died_as_often_as_asked() {
        let mut table = TaskTable::default();
        let mut flaky = task(0);
        flaky.retry = Retry {
            times: 1,
            on_timeout: false,
        };
        table.receive(flaky);
        table.dispatch_next(W, true);
        let died = |pid| Attempt {
            pid,
            end: AttemptEnd::Died(Some(-11), String::new()),
        };
        assert_eq!(table.end_attempt(0, died(10)), None, "runs again");
        assert_eq!(table.state(0), Some(TaskState::Queued));
        table.dispatch_next(W, true);
        assert_eq!(
            table.end_attempt(0, died(11)),
            Some(vec![died(10), died(11)])
        );
        assert_eq!(table.state(0), None);
        table.receive(task(1));
        table.dispatch_next(W, true);
        assert_eq!(
            table.end_attempt(1, died(12)),
            Some(vec![died(12)]),
            "no retries"
        );
    }

    #[test]
    fn a_time_limit_counts_from_the_start() {
        let mut table = TaskTable::default();
        let mut limited = task(0);
        limited.timeout = Some(Duration::from_secs(5));
        table.receive(limited);
        assert_eq!(table.deadline(0), None, "not started");
        table.dispatch_next(W, true);
        let since = table.running_since(0).unwrap();
        assert_eq!(table.deadline(0), Some(since + Duration::from_secs(5)));
    }
}
