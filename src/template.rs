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
//!  manager ◄─ EXITED(pid, exit code) ───────────────────────── template (reaped it)
//! ```

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

/// Template side: wait until the control channel has something to read (a fork
/// request, or EOF) or one of the `children` pidfds is readable (that child exited).
/// Returns the index of an exited child, or None for the channel. Blocks.
pub fn wait_for_request(control: RawFd, children: &[RawFd]) -> io::Result<Option<usize>> {
    let mut fds: Vec<libc::pollfd> = std::iter::once(control)
        .chain(children.iter().copied())
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: fds is a valid array of fds.len() pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if let Some(i) = fds[1..].iter().position(|p| p.revents != 0) {
            return Ok(Some(i));
        }
        if fds[0].revents != 0 {
            return Ok(None);
        }
    }
}
