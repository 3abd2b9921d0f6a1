//! The manager's record of each worker: its process, its channel and the tasks it holds.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::policy::{self, ExitReason};
use crate::ledger::TaskLedger;
use crate::platform::ExitWatch;
use crate::shm::OutSegment;
use crate::spawn::Spawned;
use crate::wire::{Body, FrameReader, FrameWriter, Kind, OutFrame};

/// A pickled call waiting for, or running on, a worker.
pub struct Task {
    pub id: u64,
    pub body: Body,
    /// The shared segment holding its large buffers, passed along with the frame.
    pub segment: Option<Arc<OutSegment>>,
    /// How long it may run, counted from its start on a worker.
    pub timeout: Option<Duration>,
}

/// Why the manager is ending a worker and its process tree, for its running task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    Timeout,
    Terminated,
}

/// A worker being ended: SIGTERM sent to its tree at `since`; SIGKILL after the grace.
pub struct Ending {
    pub cause: EndCause,
    pub since: Instant,
    pub killed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Started; its initializer has not reported yet.
    Starting,
    /// Takes tasks.
    Ready,
    /// Finishes what it holds, then is asked to exit (task budget spent, pool shrinking).
    Draining,
    /// Asked to exit (or announced it would); waiting for the process to end.
    Exiting,
}

pub struct Worker {
    pub pid: i32,
    pub exit: ExitWatch,
    pub channel: OwnedFd,
    pub reader: FrameReader,
    pub writer: FrameWriter,
    pub state: State,
    /// Tasks sent, in order; the first one is running.
    pub inflight: VecDeque<Task>,
    pub tasks_sent: u64,
    pub idle_since: Instant,
    /// When the running task started (the later of its send and the previous result).
    pub busy_since: Instant,
    pub channel_closed: bool,
    /// The worker said why it would exit (its initializer failed).
    pub init_error: Option<Vec<u8>>,
    /// Forked by the template, which reaps it and reports its exit status.
    pub from_template: bool,
    /// Why the manager killed it (it broke the protocol).
    pub fault: Option<String>,
    /// Why it is leaving, once the manager asked it to (or it announced it).
    pub exit_reason: Option<ExitReason>,
    /// Tasks it has answered.
    pub tasks_done: u64,
    /// Set while the manager ends it for its running task.
    pub ending: Option<Ending>,
    /// Tasks it holds unstarted that were terminated: it is ended when one starts.
    pub terminate_on_start: Vec<u64>,
    /// Where it records the task it takes (None if none could be made: then the task
    /// at the head of its queue counts as started).
    pub ledger: Option<Arc<TaskLedger>>,
}

impl Worker {
    pub fn new(spawned: Spawned, init: &Body, from_template: bool) -> Worker {
        let now = Instant::now();
        let ledger = TaskLedger::new().ok().map(Arc::new);
        let mut init = OutFrame::new(0, Kind::Init, init.clone());
        if let Some(ledger) = &ledger {
            init = init.with_fd(ledger.clone());
        }
        let mut writer = FrameWriter::default();
        writer.push(init);
        Worker {
            pid: spawned.pid,
            exit: spawned.exit,
            channel: spawned.channel,
            reader: FrameReader::default(),
            writer,
            state: State::Starting,
            inflight: VecDeque::new(),
            tasks_sent: 0,
            idle_since: now,
            busy_since: now,
            channel_closed: false,
            init_error: None,
            from_template,
            fault: None,
            exit_reason: None,
            tasks_done: 0,
            ending: None,
            terminate_on_start: Vec::new(),
            ledger,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.channel.as_raw_fd()
    }

    pub fn send(&mut self, task: Task) {
        let mut frame = OutFrame::new(task.id, Kind::Task, task.body.clone());
        if let Some(segment) = &task.segment {
            frame = frame.with_fd(segment.clone());
        }
        self.writer.push(frame);
        self.record_sent(task);
    }

    /// Count `task` as sent to this worker (by `send`, or directly by a submitter).
    pub fn record_sent(&mut self, task: Task) {
        if self.inflight.is_empty() {
            self.busy_since = Instant::now();
        }
        self.inflight.push_back(task);
        self.tasks_sent += 1;
    }

    /// Ask the worker to exit once it has read everything sent so far: it sees EOF.
    pub fn request_exit(&mut self, reason: ExitReason) {
        self.state = State::Exiting;
        self.exit_reason.get_or_insert(reason);
        if self.writer.is_empty() {
            self.close_write();
        }
    }

    pub fn close_write(&self) {
        // SAFETY: plain shutdown(2) on a socket we own.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_WR) };
    }

    /// The worker broke the protocol (garbage on its channel, say): kill it. Its
    /// exit is then handled like any death, with `fault` as the reason.
    pub fn fail(&mut self, reason: String) {
        if self.fault.is_none() {
            self.fault = Some(reason);
            crate::procfs::kill_tree(self.pid, libc::SIGKILL);
        }
    }

    /// Counts toward the pool's size (not on its way out).
    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Starting | State::Ready)
    }

    /// When its running task's time runs out, if that task has a limit.
    pub fn task_deadline(&self) -> Option<Instant> {
        if self.ending.is_some() || self.state == State::Starting {
            return None;
        }
        let timeout = self.inflight.front()?.timeout?;
        Some(self.busy_since + timeout)
    }

    /// When it is killed for a message it began and stopped sending, if it did.
    pub fn stall_deadline(&self) -> Option<Instant> {
        if self.channel_closed || self.fault.is_some() {
            return None;
        }
        Some(self.reader.stalled_since()? + policy::FRAME_STALL)
    }

    /// Start ending it, with every process it started, for its running task: SIGTERM
    /// now, SIGKILL after the grace period (see `ManagerLoop::enforce_deadlines`).
    pub fn end(&mut self, cause: EndCause) {
        self.state = State::Exiting;
        self.exit_reason = Some(match cause {
            EndCause::Timeout => ExitReason::TaskTimeout,
            EndCause::Terminated => ExitReason::TaskTerminated,
        });
        self.ending = Some(Ending {
            cause,
            since: Instant::now(),
            killed: false,
        });
        crate::procfs::kill_tree(self.pid, libc::SIGTERM);
    }

    /// Whether it took the task at the head of its queue to run (it may have died
    /// before reading it).
    pub fn took_front_task(&self) -> bool {
        match (self.inflight.front(), &self.ledger) {
            (None, _) => false,
            (Some(task), Some(ledger)) => ledger.took(task.id),
            (Some(_), None) => true,
        }
    }

    /// Ready and holding nothing.
    pub fn is_idle(&self) -> bool {
        self.state == State::Ready && self.inflight.is_empty()
    }

    /// Finish what it holds, then leave (task budget spent, pool shrinking).
    pub fn drain(&mut self, reason: ExitReason) {
        self.state = State::Draining;
        self.exit_reason.get_or_insert(reason);
    }
}
