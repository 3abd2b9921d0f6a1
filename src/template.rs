//! The template: an exec'd interpreter that has loaded the worker code and forks new
//! workers on request, so a replacement (after an idle timeout, a crash or recycling) is
//! ready in about a millisecond instead of a whole interpreter start-up. This module is
//! the template process's side (its loop); the manager's side is `manager::forking`.
//!
//! Forking stays safe because the template is single-threaded and never runs user code:
//! each forked child becomes a worker and receives its settings and initializer only
//! then. Workers forked this way are the template's children, so the template reaps them
//! and reports their exit status.
//!
//! Its loop forks a worker per request and reports the exit of each worker it forked:
//!
//! ```text
//!  READY ──► loop:
//!    wait: control socket | SIGCHLD (a wake-up pipe) | the parent's exit (pidfd, else
//!          looked at every PARENT_POLL)
//!    reap every child that exited ──────────────────────► EXITED(pid, exit status)
//!    the parent is gone ─────────────────────────────────► exit
//!    FORK(socket) ── fork() ── child: `serve` returns there, on its way to become a
//!                   │                 worker on that socket (as descriptor 3)
//!                   └── template: ──────────────────────► FORKED(pid)
//!    EXIT, the end of the stream, or anything else ──────► exit
//! ```
//!
//! The fork itself is the caller's (`fork` below): the child must go on in the
//! interpreter, so the interpreter's own fork runs, with its at-fork handlers (a
//! reseeded `random`, consistent locks). The template has one thread, so the fork is
//! safe; it never runs user code. Every exit (the pool is gone, or confused) is
//! `_exit(0)`: the template holds nothing to clean up.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::channel::Channel;
use crate::platform;
use crate::spawn::{close_beyond_limit, WORKER_FD};
use crate::sys::{check, poll, pollfd};
use crate::wire::{empty_body, encode_exited, Attached, Kind, OutFrame};

/// How often the parent is looked at where no pidfd says at once that it exited.
const PARENT_POLL: Duration = Duration::from_millis(250);

/// The write end of the pipe SIGCHLD wakes the loop through (-1: none).
static SIGCHLD_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = SIGCHLD_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let saved = Errno::last_raw();
        // SAFETY: write(2) is async-signal-safe; one byte from a live buffer (a full
        // pipe already wakes the loop).
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
        Errno::set_raw(saved);
    }
}

fn set_sigchld(handler: SigHandler) -> io::Result<()> {
    let flags = SaFlags::SA_NOCLDSTOP | SaFlags::SA_RESTART;
    let action = SigAction::new(handler, flags, SigSet::empty());
    // SAFETY: the handler only loads an atomic, writes one byte and keeps errno, all
    // async-signal-safe.
    unsafe { signal::sigaction(Signal::SIGCHLD, &action) }?;
    Ok(())
}

fn parent_is(pid: i32) -> bool {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() == pid }
}

/// Wait up to `timeout` (None: for ever) until one of `fds` is readable (EINTR: back
/// early); whether each one is.
fn wait_readable<const N: usize>(fds: [RawFd; N], timeout: Option<Duration>) -> [bool; N] {
    let mut polled = fds.map(|fd| pollfd(fd, libc::POLLIN));
    let n = poll(&mut polled, timeout).unwrap_or(0);
    polled.map(|p| n > 0 && p.revents != 0)
}

/// Where the loop ended, in this process.
pub enum Served {
    /// The template's work is over: exit.
    Leave,
    /// In a forked child, set up as a worker: the template's pid, its parent.
    Worker { template: i32 },
}

struct Server {
    control: Channel,
    /// SIGCHLD's wake-up pipe: (read, write).
    wake: (OwnedFd, OwnedFd),
    parent: i32,
    /// Readable once the parent exited, where the platform says so.
    parent_exit: Option<OwnedFd>,
}

impl Server {
    fn start(parent: i32) -> io::Result<Server> {
        // SAFETY: descriptor 3 is the template's channel, handed over by its parent.
        let control = unsafe { Channel::from_raw(WORKER_FD) }?;
        let wake = platform::pipe()?;
        SIGCHLD_PIPE.store(wake.1.as_raw_fd(), Ordering::Relaxed);
        set_sigchld(SigHandler::Handler(on_sigchld))?;
        Ok(Server {
            control,
            wake,
            parent,
            parent_exit: platform::watch_parent(parent),
        })
    }

    /// Report every child that exited; false once the manager cannot hear it.
    fn report_exits(&mut self) -> bool {
        let mut drained = [0u8; 64];
        // SAFETY: reads into a live buffer from our non-blocking pipe.
        while unsafe { libc::read(self.wake.0.as_raw_fd(), drained.as_mut_ptr().cast(), 64) } > 0 {}
        while let Some((pid, code)) = platform::reap_any_child() {
            if self.control.send(encode_exited(pid, Some(code))).is_err() {
                return false;
            }
        }
        true
    }

    /// The next fork request's socket; None when the template should leave.
    fn next_request(&mut self) -> Option<OwnedFd> {
        loop {
            let readable = self.control.has_queued() || {
                let parent_fd = self.parent_exit.as_ref().map_or(-1, |fd| fd.as_raw_fd());
                let timeout = self.parent_exit.is_none().then_some(PARENT_POLL);
                let fds = [self.control.fd(), self.wake.0.as_raw_fd(), parent_fd];
                wait_readable(fds, timeout)[0]
            };
            if !self.report_exits() || !parent_is(self.parent) {
                return None;
            }
            if readable {
                return match self.control.recv() {
                    Ok(Some(frame)) if frame.header.kind == Kind::Fork as u32 => match frame.fd {
                        Attached::Fd(socket) => Some(socket),
                        _ => None,
                    },
                    _ => None, // EXIT, the end of the stream, or a confused pool
                };
            }
        }
    }

    /// In the forked child: drop the template's resources and take `socket` as this
    /// worker's channel, on descriptor 3.
    fn become_worker(self, socket: OwnedFd, template: i32) -> io::Result<i32> {
        set_sigchld(SigHandler::SigDfl)?;
        SIGCHLD_PIPE.store(-1, Ordering::Relaxed);
        let Server {
            control,
            wake,
            parent_exit,
            ..
        } = self;
        drop((wake, parent_exit));
        // Its number is the worker's channel's from here on: not closed, let go of.
        let _ = control.into_raw_fd();
        // SAFETY: dup2 onto descriptor 3, which this process let go of just above.
        check(unsafe { libc::dup2(socket.as_raw_fd(), WORKER_FD) })?;
        // A process group of its own, as every worker has (Ctrl-C reaches it only
        // through the parent); it ends with the template through its watchdog.
        // SAFETY: setpgid on this process.
        check(unsafe { libc::setpgid(0, 0) })?;
        if !parent_is(template) {
            // The template died meanwhile: no pool to serve.
            // SAFETY: ends this process at once, holding nothing.
            unsafe { libc::_exit(1) };
        }
        Ok(template)
    }
}

/// Run the template's loop on descriptor 3, for the pool of process `parent`, forking
/// with `fork` (which returns 0 in the child and the child's pid in the template).
/// Returns in the template when its work is over (`Served::Leave`), and in each forked
/// child, which goes on to become a worker.
pub fn run(parent: i32, mut fork: impl FnMut() -> io::Result<i32>) -> io::Result<Served> {
    close_beyond_limit();
    let mut server = Server::start(parent)?;
    // SAFETY: getpid has no preconditions.
    let template = unsafe { libc::getpid() };
    if server
        .control
        .send(OutFrame::new(0, Kind::Ready, empty_body()))
        .is_err()
    {
        return Ok(Served::Leave);
    }
    while let Some(socket) = server.next_request() {
        let pid = fork()?;
        if pid == 0 {
            return server
                .become_worker(socket, template)
                .map(|template| Served::Worker { template });
        }
        drop(socket);
        let forked = OutFrame::new(pid as u32 as u64, Kind::Forked, empty_body());
        if server.control.send(forked).is_err() {
            break;
        }
    }
    Ok(Served::Leave)
}

/// `run`, exiting this process when the template's work is over: returns only in a
/// forked child, with the template's pid.
pub fn serve(parent: i32, fork: impl FnMut() -> io::Result<i32>) -> io::Result<i32> {
    match run(parent, fork)? {
        Served::Worker { template } => Ok(template),
        // SAFETY: ends the template at once; it holds nothing to clean up.
        Served::Leave => unsafe { libc::_exit(0) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::{channel_pair, spawn_worker, WorkerCommand};
    use crate::wire::{decode_exited, Frame};
    use std::os::fd::IntoRawFd;
    use std::sync::Arc;

    const CHILD_TEST: &str = "template::tests::as_a_template_process";
    const ROLE: &str = "LOKY_TEST_TEMPLATE_ROLE";

    /// Run by `a_template_forks_workers_and_reports_their_exits`, in a process of its
    /// own (this test executable again, with fd 3): the template's loop, forking with
    /// fork(2). Each forked worker does what its INIT body says: "exit N" or "kill".
    #[test]
    #[ignore = "the template's side of another test, run only by it"]
    fn as_a_template_process() {
        if std::env::var(ROLE).as_deref() != Ok("template") {
            return;
        }
        // SAFETY: getppid has no preconditions; fork(2) is what the template needs.
        let parent = unsafe { libc::getppid() };
        // SAFETY: as above; the child only uses its endpoint and exits.
        let served = run(parent, || Ok(unsafe { libc::fork() })).unwrap();
        let Served::Worker { template } = served else {
            return; // the template's work is over: the test process exits
        };
        assert_eq!(template, parent_pid_of_self());
        // SAFETY: descriptor 3 is this worker's channel now.
        let mut channel = unsafe { Channel::from_raw(WORKER_FD) }.unwrap();
        let order = String::from_utf8(channel.recv().unwrap().unwrap().body).unwrap();
        channel
            .send(OutFrame::new(0, Kind::Ready, empty_body()))
            .unwrap();
        // SAFETY: ends this forked child at once, as told.
        unsafe {
            match order.split_once(' ') {
                Some(("exit", code)) => libc::_exit(code.parse().unwrap()),
                _ => libc::kill(libc::getpid(), libc::SIGKILL),
            };
            libc::_exit(99)
        }
    }

    fn parent_pid_of_self() -> i32 {
        // SAFETY: getppid has no preconditions.
        unsafe { libc::getppid() }
    }

    fn kind_and_id(frame: &Frame) -> (Option<Kind>, u64) {
        (Kind::from_u32(frame.header.kind), frame.header.task_id)
    }

    /// The template's process (this test executable again, with fd 3) and our end of
    /// its channel, once it said it is ready.
    fn start_template() -> (i32, platform::ExitWatch, Channel) {
        let exe = std::env::current_exe()
            .unwrap()
            .to_string_lossy()
            .to_string();
        // Its test report is kept out of this one's.
        let args = [
            "-c",
            "exec \"$0\" \"$@\" >/dev/null",
            &exe,
            CHILD_TEST,
            "--exact",
            "--ignored",
        ];
        let command = WorkerCommand {
            program: "/bin/sh".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![(ROLE.into(), "template".into())],
            pass_fds: Vec::new(),
        };
        let template = spawn_worker(&command).unwrap();
        // SAFETY: our end of the template's channel, handed over.
        let mut control = unsafe { Channel::from_raw(template.channel.into_raw_fd()) }.unwrap();
        assert_eq!(
            kind_and_id(&control.recv().unwrap().unwrap()).0,
            Some(Kind::Ready)
        );
        (template.pid, template.exit, control)
    }

    /// Once told to leave, the template closes its end and exits.
    fn check_it_leaves(pid: i32, exit: &platform::ExitWatch, control: &mut Channel) {
        assert!(control.recv().unwrap().is_none());
        let timeout = Some(Duration::from_secs(30));
        assert!(platform::wait_for_exit(pid, exit, true, timeout));
    }

    #[test]
    fn a_template_forks_workers_and_reports_their_exits() {
        let (template, exit, mut control) = start_template();
        let orders = [
            ("exit 7", Some(7)),
            ("kill", Some(-libc::SIGKILL)),
            ("exit 0", Some(0)),
        ];
        for (order, status) in orders {
            let (ours, theirs) = channel_pair().unwrap();
            let fork = OutFrame::new(0, Kind::Fork, empty_body()).with_fd(Arc::new(theirs));
            control.send(fork).unwrap();
            let (kind, pid) = kind_and_id(&control.recv().unwrap().unwrap());
            assert_eq!(kind, Some(Kind::Forked));
            // SAFETY: our end of the worker's channel, handed over.
            let mut worker = unsafe { Channel::from_raw(ours.into_raw_fd()) }.unwrap();
            let init = OutFrame::new(0, Kind::Init, Arc::new(order.as_bytes().to_vec()));
            worker.send(init).unwrap();
            assert_eq!(
                kind_and_id(&worker.recv().unwrap().unwrap()).0,
                Some(Kind::Ready)
            );
            let exited = control.recv().unwrap().unwrap();
            assert_eq!(kind_and_id(&exited).0, Some(Kind::Exited));
            assert_eq!(decode_exited(&exited), (pid as i32, status), "{order}");
        }
        control
            .send(OutFrame::new(0, Kind::Exit, empty_body()))
            .unwrap();
        check_it_leaves(template, &exit, &mut control);
    }

    #[test]
    fn a_template_leaves_at_the_end_of_its_stream() {
        let (template, exit, mut control) = start_template();
        // SAFETY: shutdown(2) of the writing half of our own socket.
        unsafe { libc::shutdown(control.fd(), libc::SHUT_WR) };
        check_it_leaves(template, &exit, &mut control);
    }
}
