//! Start one worker: a fresh interpreter, fork+exec'd as a direct child, with its own
//! socketpair on fd 3, in its own process group, and killed if the spawning thread dies.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

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

/// A started worker process, its pidfd and the parent's end of its channel.
pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub channel: OwnedFd,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid two-element array for socketpair to fill.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
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
    let (parent_end, child_end) = socketpair()?;
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
            cvt(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            if libc::getppid() != parent_pid {
                // The parent died before prctl took effect.
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(child_end);
    let pid = child.id() as i32;
    // The std Child handle is dropped without waiting: the pidfd reaps the process.
    drop(child);
    let pidfd = pidfd_open(pid)?;
    Ok(Spawned {
        pid,
        pidfd,
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
/// processes, which manage their own pipes through `pass_fds`.
pub fn spawn_process(cmd: &WorkerCommand) -> io::Result<(i32, OwnedFd)> {
    let mut command = command_for(cmd);
    let pass_fds = cmd.pass_fds.clone();
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
    Ok((pid, pidfd_open(pid)?))
}

/// The exit status of a reaped worker in `multiprocessing` convention: the exit code,
/// or minus the signal number that killed it. `None` while it is still running.
pub fn try_reap(pidfd: RawFd) -> io::Result<Option<i32>> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid initial value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info points to a live siginfo_t; a bad pidfd only yields an error.
    cvt(unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    })?;
    // SAFETY: waitid filled info (or left it zeroed, which si_pid() == 0 reports).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => status,
        _ => -status,
    }))
}
