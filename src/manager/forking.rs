//! The manager's side of the template (`crate::template`), the process that forks
//! replacement workers: requests out, and what it reports back.
//!
//! ```text
//!  manager ── FORK (+ the new worker's socket) ──► template ── fork() ──► worker
//!  manager ◄─ FORKED(pid) ─────────────────────── template
//!  manager ◄─ EXITED(pid, exit status) ────────── template (it reaped the worker;
//!                                                  `wire::decode_exited`)
//! ```

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use crate::spawn::{channel_pair, ChannelEnd};
use crate::wire::{empty_body, Kind, OutFrame};

#[derive(Default)]
pub struct Template {
    /// It said it is ready to fork.
    pub ready: bool,
    /// Our ends of the sockets of workers asked for and not yet forked, in order.
    pub requested: VecDeque<ChannelEnd>,
}

impl Template {
    /// The request for one more worker; its socket's other end travels with it.
    pub fn request(&mut self) -> io::Result<OutFrame> {
        let (ours, theirs) = channel_pair()?;
        self.requested.push_back(ours);
        Ok(OutFrame::new(0, Kind::Fork, empty_body()).with_fd(Arc::new(theirs)))
    }
}
