//! The manager's record of each worker: its process, its channel and the tasks it holds.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use crate::spawn::Spawned;
use crate::wire::{FrameReader, FrameWriter, OutFrame, INIT, TASK};

/// A pickled call waiting for, or running on, a worker.
pub struct Task {
    pub id: u64,
    pub body: Arc<Vec<u8>>,
    /// A memfd holding its large buffers; each worker it is sent to gets a duplicate.
    pub fd: Option<OwnedFd>,
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
    pub pidfd: OwnedFd,
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
}

impl Worker {
    pub fn new(spawned: Spawned, init: &Arc<Vec<u8>>, from_template: bool) -> Worker {
        let now = Instant::now();
        let mut writer = FrameWriter::default();
        writer.push(OutFrame::new(0, INIT, init.clone()));
        Worker {
            pid: spawned.pid,
            pidfd: spawned.pidfd,
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
        }
    }

    pub fn fd(&self) -> RawFd {
        self.channel.as_raw_fd()
    }

    pub fn send(&mut self, task: Task) {
        let mut frame = OutFrame::new(task.id, TASK, task.body.clone());
        if let Some(fd) = task.fd.as_ref().and_then(|fd| fd.try_clone().ok()) {
            frame = frame.with_fd(fd);
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
    pub fn request_exit(&mut self) {
        self.state = State::Exiting;
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
            crate::spawn::kill_tree(self.pid, libc::SIGKILL);
        }
    }

    /// Counts toward the pool's size (not on its way out).
    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Starting | State::Ready)
    }
}
