//! Start processes: a worker (a fresh interpreter with its own socketpair on fd 3, in
//! its own process group), the template, or a plain child for multiprocessing.
//!
//! Everything starts with posix_spawn(3), never fork(2): the caller is a thread of a
//! process full of other threads and libraries, and fork() would run every library's
//! fork handlers in it (OpenBLAS's, for one, joins its thread pool there, and deadlocks
//! against a BLAS call running in another thread). posix_spawn runs none of them and
//! copies no page table. What a forked child would have done before exec (the channel
//! on fd 3, inherited descriptors, the process group, default signal handling) is asked
//! of posix_spawn instead. A worker ends with its parent through its own watchdog
//! (`watchdog.rs`), which also catches a parent that died while the worker started.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use crate::platform::{self, socketpair_cloexec, ExitWatch};
use crate::sys::check;

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

/// A started worker process, how its exit is seen, and the parent's end of its channel.
pub struct Spawned {
    pub pid: i32,
    pub exit: ExitWatch,
    pub channel: OwnedFd,
}

/// The parent's end of a worker's channel.
pub type ChannelEnd = OwnedFd;

/// A worker the template forked on the channel `channel` (the template reaps it and
/// reports its exit; its watch serves to wait for it when the pool is killed).
pub fn forked(pid: i32, channel: ChannelEnd) -> Option<Spawned> {
    Some(Spawned {
        pid,
        exit: ExitWatch::open(pid),
        channel,
    })
}

/// posix_spawn's functions return the error number instead of setting errno.
fn spawn_check(ret: libc::c_int) -> io::Result<()> {
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::other("a NUL byte in a command or environment"))
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
    check(unsafe { libc::fcntl(parent_end.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) })?;
    set_buffer_sizes(parent_end.as_raw_fd());
    set_buffer_sizes(child_end.as_raw_fd());
    Ok((parent_end, child_end))
}

/// This process's descriptors above the standard ones that a child would inherit
/// (no close-on-exec flag) and that are not in `keep`: descriptors the process got from
/// whoever started it (a job server's pipes, say) or from C code. A child closes them
/// before exec, as multiprocessing's and loky's children do: a long-lived worker would
/// otherwise hold, for one, a pipe its grandparent waits to see closed.
///
/// posix_spawn refuses to close a descriptor numbered at or above the soft descriptor
/// limit (EBADF, and no process starts): those are left out here, and the child closes
/// them as it starts (`close_beyond_limit`).
fn inheritable_strays(keep: &[RawFd]) -> Vec<RawFd> {
    let limit = platform::descriptor_limit().unwrap_or(u64::MAX);
    platform::open_descriptors()
        .into_iter()
        .filter(|&fd| fd > 2 && (fd as u64) < limit && !keep.contains(&fd))
        .filter(|&fd| is_inherited(fd))
        .collect()
}

/// Child side, first thing: close every descriptor numbered at or above the soft
/// descriptor limit. Only strays can be there (a descriptor passed on has a number the
/// parent could duplicate to, below the limit), which the parent could not close for
/// the child (see `inheritable_strays`).
pub fn close_beyond_limit() {
    let Some(limit) = platform::descriptor_limit() else {
        return;
    };
    for fd in platform::open_descriptors() {
        if fd as u64 >= limit {
            // SAFETY: a descriptor nothing in this starting process uses.
            unsafe { libc::close(fd) };
        }
    }
}

/// A close-on-exec duplicate of `fd` numbered above `floor` (every target of the
/// spawn), so that dup2-ing it onto any target clears its close-on-exec flag (dup2
/// onto the same number would not) and no duplicate sits where another one goes.
fn high_duplicate(fd: RawFd, floor: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor the caller keeps open; the result is checked.
    let dup =
        check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor + 1) }).map_err(|err| {
            // EINVAL: `floor` is at the descriptor limit; no descriptor is left above it.
            match err.raw_os_error() {
                Some(libc::EINVAL) => io::Error::from_raw_os_error(libc::EMFILE),
                _ => err,
            }
        })?;
    // SAFETY: a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Whether a child would inherit `fd`: open here, without close-on-exec.
fn is_inherited(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the flags of a descriptor number.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    flags >= 0 && flags & libc::FD_CLOEXEC == 0
}

/// posix_spawn `cmd`, with each (source, target) of `fds` available at `target` in the
/// child, in a process group of its own if `own_group`. Returns the pid.
fn spawn(cmd: &WorkerCommand, fds: &[(RawFd, RawFd)], own_group: bool) -> io::Result<i32> {
    let program = cstring(cmd.program.as_bytes())?;
    let mut argv: Vec<CString> = vec![program.clone()];
    for arg in &cmd.args {
        argv.push(cstring(arg.as_bytes())?);
    }
    let mut env: Vec<CString> = Vec::new();
    for (key, value) in std::env::vars_os() {
        if !cmd.env.iter().any(|(k, _)| OsStr::new(k) == key) {
            env.push(cstring(&[key.as_bytes(), b"=", value.as_bytes()].concat())?);
        }
    }
    for (key, value) in &cmd.env {
        env.push(cstring(format!("{key}={value}").as_bytes())?);
    }
    let mut argv_ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut env_ptrs: Vec<*mut libc::c_char> = env.iter().map(|e| e.as_ptr() as *mut _).collect();
    env_ptrs.push(std::ptr::null_mut());
    // Listed before the duplicates below are made (those are close-on-exec anyway);
    // a source that is not a target is a stray too: the child gets its duplicate.
    let targets: Vec<RawFd> = fds.iter().map(|&(_, target)| target).collect();
    let strays = inheritable_strays(&targets);
    // Sources duplicated out of the way first: a source may sit at another's target.
    let floor = targets.iter().copied().fold(2, RawFd::max);
    let sources: Vec<OwnedFd> = fds
        .iter()
        .map(|&(source, _)| high_duplicate(source, floor))
        .collect::<io::Result<_>>()?;
    // Output the child would not inherit (the parent was started with stdout or
    // stderr closed, and may have reused the number since) goes to /dev/null: an
    // interpreter without it fails to start its fault handler, and a file the child
    // opens must not land there.
    let closed_outputs: Vec<RawFd> = [1, 2].into_iter().filter(|&fd| !is_inherited(fd)).collect();

    // SAFETY: the file actions and attributes are initialized before use and destroyed
    // after; every pointer given to posix_spawn points into vectors alive until it
    // returns; the descriptors named stay open meanwhile.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        spawn_check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(err) = spawn_check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(err);
        }
        let result = (|| {
            // First, so that no dup2 below is undone. (glibc ignores closing a
            // descriptor another thread closed since the listing; other libcs may
            // fail the start with EBADF in that race.)
            for &fd in &strays {
                spawn_check(libc::posix_spawn_file_actions_addclose(&mut actions, fd))?;
            }
            spawn_check(libc::posix_spawn_file_actions_addopen(
                &mut actions,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            for &fd in &closed_outputs {
                spawn_check(libc::posix_spawn_file_actions_addopen(
                    &mut actions,
                    fd,
                    c"/dev/null".as_ptr(),
                    libc::O_WRONLY,
                    0,
                ))?;
            }
            for (source, &(_, target)) in sources.iter().zip(fds) {
                // dup2 clears close-on-exec on the target.
                spawn_check(libc::posix_spawn_file_actions_adddup2(
                    &mut actions,
                    source.as_raw_fd(),
                    target,
                ))?;
            }
            // Default handling of the signals a parent may ignore or block (Python
            // ignores SIGPIPE), and an empty signal mask.
            let mut defaults: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut defaults);
            for signal in [libc::SIGPIPE, libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
                libc::sigaddset(&mut defaults, signal);
            }
            spawn_check(libc::posix_spawnattr_setsigdefault(&mut attr, &defaults))?;
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            spawn_check(libc::posix_spawnattr_setsigmask(&mut attr, &empty))?;
            let mut flags = libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK;
            if own_group {
                // Killing the group takes the worker's children with it; a terminal's
                // Ctrl-C goes to the parent, which passes it on to busy workers.
                spawn_check(libc::posix_spawnattr_setpgroup(&mut attr, 0))?;
                flags |= libc::POSIX_SPAWN_SETPGROUP;
            }
            spawn_check(libc::posix_spawnattr_setflags(&mut attr, flags as _))?;
            let mut pid: libc::pid_t = 0;
            spawn_check(libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions,
                &attr,
                argv_ptrs.as_ptr(),
                env_ptrs.as_ptr(),
            ))?;
            Ok(pid)
        })();
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        result
    }
}

/// Start one worker (or the template): its channel's other end on fd 3, the
/// descriptors of `pass_fds` inherited, a process group of its own.
pub fn spawn_worker(cmd: &WorkerCommand) -> io::Result<Spawned> {
    let (parent_end, child_end) = channel_pair()?;
    let mut fds = vec![(child_end.as_raw_fd(), WORKER_FD)];
    fds.extend(cmd.pass_fds.iter().map(|&fd| (fd, fd)));
    let pid = spawn(cmd, &fds, true)?;
    Ok(Spawned {
        pid,
        exit: ExitWatch::open(pid),
        channel: parent_end,
    })
}

/// Start a plain child (no channel, same process group): for multiprocessing-style
/// processes, which manage their own pipes through `pass_fds`. Returns its pid and a
/// sentinel that becomes readable once it exited. The caller reaps the child (waitpid).
///
/// The sentinel is the child's pidfd where pidfds work: the child then holds no
/// descriptor for it, and nothing the child starts can hold it open after the child
/// exited. Elsewhere it is the read end of a pipe whose write end only the child
/// holds, as with multiprocessing's own start methods.
pub fn spawn_process(cmd: &WorkerCommand) -> io::Result<(i32, OwnedFd)> {
    let mut fds: Vec<(RawFd, RawFd)> = cmd.pass_fds.iter().map(|&fd| (fd, fd)).collect();
    if let ExitWatch::Pidfd(_) = ExitWatch::open(std::process::id() as i32) {
        let pid = spawn(cmd, &fds, false)?;
        return match ExitWatch::open(pid) {
            ExitWatch::Pidfd(sentinel) => Ok((pid, sentinel)),
            // Out of descriptors, say: a child nobody could watch is not left running.
            ExitWatch::Poll => {
                // SAFETY: `pid` is our child, not reaped yet: the pid is still its own.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                Err(io::Error::other(
                    "no pidfd to watch its exit (out of file descriptors?)",
                ))
            }
        };
    }
    let (sentinel, child_end) = platform::pipe()?;
    // The child's end keeps its number in the child: it is not one of pass_fds.
    fds.push((child_end.as_raw_fd(), child_end.as_raw_fd()));
    let pid = spawn(cmd, &fds, false)?;
    drop(child_end);
    Ok((pid, sentinel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_gets_its_channel_on_fd_3_and_its_own_group() {
        let cmd = WorkerCommand {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo \"$(ps -o pgid= -p $$ | tr -d ' ') $$ $LOKY_SPAWN_TEST\" >&3".into(),
            ],
            env: vec![("LOKY_SPAWN_TEST".into(), "set".into())],
            pass_fds: Vec::new(),
        };
        let spawned = spawn_worker(&cmd).unwrap();
        assert!(platform::wait_for_exit(
            spawned.pid,
            &spawned.exit,
            true,
            Some(std::time::Duration::from_secs(10))
        ));
        let mut buf = [0u8; 128];
        // SAFETY: reads into a live buffer from our end of the channel.
        let n = unsafe { libc::read(spawned.channel.as_raw_fd(), buf.as_mut_ptr().cast(), 128) };
        let text = String::from_utf8_lossy(&buf[..n.max(0) as usize]).to_string();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "{text:?}");
        assert_eq!(fields[0], fields[1], "its own process group");
        assert_eq!(fields[2], "set");
    }
}
