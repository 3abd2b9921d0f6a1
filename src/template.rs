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
use crate::wire::{recv_with_fd, FrameReader, FrameWriter, Header, OutFrame, HEADER_LEN};

/// Manager to template: fork a worker on the attached socket.
pub const FORK: u32 = 6;
/// Template to manager: forked; the task id field is the new worker's pid.
pub const FORKED: u32 = 7;
/// Template to manager: a worker exited; task id = pid, body = exit code (i64 LE).
pub const EXITED: u32 = 8;

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
            .push(OutFrame::new(0, FORK, Arc::new(Vec::new())).with_fd(theirs));
        self.requested.push_back(ours);
        Ok(())
    }
}

/// What the template process is asked to do next.
pub enum Request {
    /// Fork a worker on this socket.
    Fork(OwnedFd),
    /// This child (by index in the list given) has exited.
    ChildExited(usize),
    /// The manager closed the control socket: exit.
    Closed,
}

/// Template side: wait for a fork request on `control` or the exit of a child (its
/// pidfd in `children`). Blocks.
pub fn next_request(control: RawFd, children: &[RawFd]) -> io::Result<Request> {
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
            return Ok(Request::ChildExited(i));
        }
        if fds[0].revents != 0 {
            return read_fork_request(control);
        }
    }
}

fn read_fork_request(control: RawFd) -> io::Result<Request> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    let mut socket = None;
    while filled < HEADER_LEN {
        let (n, fd) = recv_with_fd(control, &mut header[filled..])?;
        if n == 0 {
            return Ok(Request::Closed);
        }
        socket = socket.or(fd);
        filled += n;
    }
    let header = Header::decode(&header);
    match (header.kind, socket) {
        (FORK, Some(socket)) => Ok(Request::Fork(socket)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected message {header:?} on the template's control socket"),
        )),
    }
}
