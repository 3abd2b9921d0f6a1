//! The template: an exec'd interpreter that has loaded the worker code and forks new
//! workers on request, so a replacement (after an idle timeout, a crash or recycling) is
//! ready in about a millisecond instead of a whole interpreter start-up.
//!
//! Forking stays safe because the template is single-threaded and never runs user code:
//! each forked child becomes a worker and receives its settings and initializer only
//! then. Workers forked this way are the template's children, so the template reaps them
//! and reports their exit status.
//!
//! ```text
//!  manager ── FORK (+ the new worker's socket, SCM_RIGHTS) ──► template ── fork() ──► worker
//!  manager ◄─ FORKED(pid) ──────────────────────────────────── template
//!  manager ◄─ EXITED(pid, exit status) ─────────────────────── template (reaped it)
//!  manager ── EXIT, or the end of the stream ────────────────► template exits
//! ```
//!
//! This module is the manager's handle on the template; `server` is the template
//! process's side (its loop).

pub mod server;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::spawn::{channel_pair, spawn_worker, Spawned, WorkerCommand};
use crate::wire::{empty_body, FrameReader, FrameWriter, Kind, OutFrame};

pub struct Template {
    pub process: Spawned,
    pub reader: FrameReader,
    pub writer: FrameWriter,
    pub ready: bool,
    /// Our ends of the sockets of workers asked for and not yet forked, in order.
    pub requested: VecDeque<OwnedFd>,
}

impl Template {
    pub fn start(command: &WorkerCommand) -> io::Result<Template> {
        Ok(Template {
            process: spawn_worker(command)?,
            reader: FrameReader::default(),
            writer: FrameWriter::default(),
            ready: false,
            requested: VecDeque::new(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.process.channel.as_raw_fd()
    }

    /// Ask for one more worker; its socket's other end travels with the request.
    pub fn request(&mut self) -> io::Result<()> {
        let (ours, theirs) = channel_pair()?;
        self.writer
            .push(OutFrame::new(0, Kind::Fork, empty_body()).with_fd(Arc::new(theirs)));
        self.requested.push_back(ours);
        Ok(())
    }
}
