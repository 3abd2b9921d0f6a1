//! The manager's record of each worker: where it is in its life and which tasks it
//! holds. Its process and channel are the I/O layer's (`poll_io.rs`), under its token.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::policy::ExitReason;
use super::tasks::EndCause;
use crate::ledger::TaskLedger;

/// A worker's token: never reused within a pool (pids may be, once reaped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

/// Where a worker is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Started; its initializer has not reported yet.
    Starting,
    /// Takes tasks.
    Ready,
    /// Finishes what it holds, then is asked to leave (task budget spent, pool
    /// shrinking).
    Draining(ExitReason),
    /// Asked to leave (or said it would); waiting for its exit.
    Leaving(ExitReason),
    /// Being ended, with its process tree, for its running task: SIGTERM sent at
    /// `since`, SIGKILL once the grace period is over (`killed`).
    Ending {
        cause: EndCause,
        since: Instant,
        killed: bool,
    },
    /// Killed: it broke the channel's protocol (the text says how).
    Faulted(String),
    /// It could not get ready and exits; the body says why (its stage and error).
    StartFailed(Vec<u8>),
}

pub struct Worker {
    pub id: WorkerId,
    pub pid: i32,
    pub phase: Phase,
    /// The tasks it holds, in order (the table has their state): the first runs.
    pub held: VecDeque<u64>,
    pub tasks_sent: u64,
    /// Tasks it has answered.
    pub tasks_done: u64,
    /// Since when it holds nothing.
    pub idle_since: Instant,
    /// Forked by the template, which reaps it and reports its exit status.
    pub from_template: bool,
    /// Where it records the task it takes (None if none could be made: then the task
    /// at the head of its queue counts as started).
    pub ledger: Option<Arc<TaskLedger>>,
    /// The most resident memory it was seen to hold (when the pool watches memory).
    pub peak_rss: u64,
}

impl Worker {
    pub fn new(id: WorkerId, pid: i32, from_template: bool) -> Worker {
        Worker {
            id,
            pid,
            phase: Phase::Starting,
            held: VecDeque::new(),
            tasks_sent: 0,
            tasks_done: 0,
            idle_since: Instant::now(),
            from_template,
            ledger: TaskLedger::new().ok().map(Arc::new),
            peak_rss: 0,
        }
    }

    /// Counts toward the pool's size (not on its way out).
    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Ready)
    }

    /// Ready and holding nothing.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Ready && self.held.is_empty()
    }

    /// Running a task (its first).
    pub fn is_busy(&self) -> bool {
        !self.held.is_empty() && !matches!(self.phase, Phase::Starting)
    }

    /// Count task `id` as sent to it (by dispatch, or directly by a submitter).
    pub fn hold(&mut self, id: u64) {
        self.held.push_back(id);
        self.tasks_sent += 1;
    }

    /// Finish what it holds, then leave.
    pub fn drain(&mut self, reason: ExitReason) {
        if self.is_live() {
            self.phase = Phase::Draining(reason);
        }
    }

    /// Leave once it has read everything sent so far (the caller closes its channel's
    /// writing side).
    pub fn leave(&mut self, reason: ExitReason) {
        if let Phase::Starting | Phase::Ready | Phase::Draining(_) = self.phase {
            self.phase = Phase::Leaving(reason);
        }
    }

    /// Whether it took the task at the head of its queue to run (it may have died
    /// before reading it).
    pub fn took_front_task(&self) -> bool {
        match (self.held.front(), &self.ledger) {
            (None, _) => false,
            (Some(&id), Some(ledger)) => ledger.took(id),
            (Some(_), None) => true,
        }
    }
}
