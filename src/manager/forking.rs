//! The manager's side of the template (`crate::template`), the process that forks
//! replacement workers: requests out, and what it reports back.
//!
//! ```text
//!  manager ── FORK (+ the new worker's socket) ──► template ── fork() ──► worker
//!  manager ◄─ FORKED(pid) ─────────────────────── template
//!  manager ◄─ EXITED(pid, exit status) ────────── template (it reaped the worker)
//! ```

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::platform::ExitStatus;
use crate::spawn::channel_pair;
use crate::wire::{empty_body, Frame, Kind, OutFrame};

#[derive(Default)]
pub struct Template {
    /// It said it is ready to fork.
    pub ready: bool,
    /// Our ends of the sockets of workers asked for and not yet forked, in order.
    pub requested: VecDeque<OwnedFd>,
}

impl Template {
    /// The request for one more worker; its socket's other end travels with it.
    pub fn request(&mut self) -> io::Result<OutFrame> {
        let (ours, theirs) = channel_pair()?;
        self.requested.push_back(ours);
        Ok(OutFrame::new(0, Kind::Fork, empty_body()).with_fd(Arc::new(theirs)))
    }
}

/// An EXITED report: (the worker's pid, its exit status). The body holds the exit code
/// (minus the signal number) as a little-endian i64; none means unknown.
pub fn decode_exited(frame: &Frame) -> (i32, ExitStatus) {
    let pid = frame.header.task_id as i32;
    let code = frame
        .body
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(|b| i64::from_le_bytes(b) as i32);
    (pid, code)
}
