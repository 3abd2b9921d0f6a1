//! Start one worker: a fresh interpreter, fork+exec'd as a direct child, with its own
//! socketpair on fd 3, in its own process group, and killed if the spawning thread dies
//! (where the platform has a parent-death signal; the worker's watchdog covers the
//! rest, see `watchdog.rs`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::platform::{self, socketpair_cloexec, ExitWatch};

/// The descriptor number a worker finds its channel on.
pub const WORKER_FD: RawFd = 3;

/// How to start a worker: the program, its arguments and the environment overrides.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Descriptors the child inherits under the same numbers (e.g. a tracker's pipe).
    pub pass_fds: Vec<RawFd>,
}

/// Clear FD_CLOEXEC so `fd` survives exec. Async-signal-safe.
fn inherit(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; an invalid one only returns an error.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
    Ok(())
}

/// A started worker process, how its exit is seen, and the parent's end of its channel.
pub struct Spawned {
    pub pid: i32,
    pub exit: ExitWatch,
    pub channel: OwnedFd,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Buffer sizes of the channel: big enough that a batch of small tasks or results
/// never waits on the peer.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

fn set_buffer_sizes(fd: RawFd) {
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: fd is an open socket and the option value points to a live c_int.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &SOCKET_BUFFER as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// A worker's channel: (the manager's end, non-blocking; the worker's end).
pub fn channel_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (parent_end, child_end) = socketpair_cloexec()?;
    // The manager multiplexes with poll: its end never blocks.
    // SAFETY: fcntl on a descriptor we own.
    cvt(unsafe { libc::fcntl(parent_end.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) })?;
    set_buffer_sizes(parent_end.as_raw_fd());
    set_buffer_sizes(child_end.as_raw_fd());
    Ok((parent_end, child_end))
}

/// Fork+exec one worker. Between fork and exec the child only calls async-signal-safe
/// functions (dup2, fcntl, setpgid, prctl).
pub fn spawn_worker(cmd: &WorkerCommand) -> io::Result<Spawned> {
    let (parent_end, child_end) = channel_pair()?;
    let child_fd = child_end.as_raw_fd();
    let parent_pid = std::process::id() as libc::pid_t;
    let death_signal = platform::parent_death_signal_allowed();

    let mut command = command_for(cmd);
    let pass_fds = cmd.pass_fds.clone();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe libc calls on descriptors and ids it owns.
    unsafe {
        command.pre_exec(move || {
            if child_fd == WORKER_FD {
                inherit(WORKER_FD)?;
            } else {
                // dup2 clears FD_CLOEXEC on the new descriptor.
                cvt(libc::dup2(child_fd, WORKER_FD))?;
            }
            for &fd in &pass_fds {
                inherit(fd)?;
            }
            // Own process group: killing the group takes the worker's children with it,
            // and a terminal's Ctrl-C goes to the parent only, which then stops the pool.
            cvt(libc::setpgid(0, 0))?;
            // If the parent dies, its workers follow, even in the middle of a task.
            platform::set_parent_death_signal(death_signal, libc::SIGKILL)?;
            if libc::getppid() != parent_pid {
                // The parent died before the signal was set up.
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(child_end);
    let pid = child.id() as i32;
    // The std Child handle is dropped without waiting: the manager reaps the process.
    drop(child);
    Ok(Spawned {
        pid,
        exit: ExitWatch::open(pid),
        channel: parent_end,
    })
}

fn command_for(cmd: &WorkerCommand) -> Command {
    let mut command = Command::new(&cmd.program);
    command.args(&cmd.args).stdin(Stdio::null());
    for (key, value) in &cmd.env {
        command.env(key, value);
    }
    command
}

/// Fork+exec a plain child (no channel, same process group): for multiprocessing-style
/// processes, which manage their own pipes through `pass_fds`. Returns its pid and a
/// sentinel that becomes readable (EOF) once it exited: the read end of a pipe whose
/// write end only the child holds, as multiprocessing's own start methods do. The
/// caller reaps the child (waitpid).
pub fn spawn_process(cmd: &WorkerCommand) -> io::Result<(i32, OwnedFd)> {
    let mut command = command_for(cmd);
    let (sentinel, child_end) = platform::pipe()?;
    let mut pass_fds = cmd.pass_fds.clone();
    pass_fds.push(child_end.as_raw_fd());
    // SAFETY: the closure only clears FD_CLOEXEC (fcntl is async-signal-safe).
    unsafe {
        command.pre_exec(move || {
            for &fd in &pass_fds {
                inherit(fd)?;
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = child.id() as i32;
    drop(child);
    drop(child_end);
    Ok((pid, sentinel))
}
