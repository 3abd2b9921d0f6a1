//! What the core needs from the operating system, with one portable POSIX way for each
//! facility and Linux fast paths on top, chosen at run time.
//!
//! | facility | Linux fast path | portable POSIX path |
//! |---|---|---|
//! | wake a sleeping thread | eventfd | a non-blocking pipe |
//! | see a child exit | pidfd (poll, waitid) | waitpid(WNOHANG), looked at every `EXIT_POLL` |
//! | shared segments | memfd | an unlinked file in /dev/shm (or the temp dir) |
//! | end with the parent (watchdog) | pidfd on the parent | getppid() polling |
//! | move a mapping | mremap | a fixed private mapping and a copy |
//!
//! A fast path that is missing or refused (`ENOSYS`, `EPERM`: old kernels, seccomp
//! filters in containers and sandboxes) falls back to the portable way for that
//! facility, never to a failure; `facilities()` says which way each one went and why,
//! and the Python side logs it. `LOKY_PORTABLE=1` forces the portable way for every
//! facility (so that CI tests it on Linux); `LOKY_REFUSE_FAST_PATHS=pidfd,memfd,...`
//! (for tests) makes the named fast paths fail with ENOSYS, as a sandbox would. Both are
//! read when the module loads and again when a pool starts (`reread_settings`).
//!
//! Platform code stays in this folder, so that another backend (Windows) would be added
//! here without touching the manager.

mod posix;

#[cfg(target_os = "linux")]
mod linux;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

pub use posix::{
    descriptor_limit, open_descriptors, pipe_nonblocking as pipe, reap_any_child, reserve,
    set_cloexec, socketpair_cloexec,
};

/// How often exits are looked for where no pidfd reports them at once.
pub const EXIT_POLL: Duration = Duration::from_millis(50);

/// The facilities that have a fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Facility {
    Eventfd,
    Pidfd,
    Memfd,
    Mremap,
}

impl Facility {
    pub const ALL: [Facility; 4] = [
        Facility::Eventfd,
        Facility::Pidfd,
        Facility::Memfd,
        Facility::Mremap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Facility::Eventfd => "eventfd",
            Facility::Pidfd => "pidfd",
            Facility::Memfd => "memfd",
            Facility::Mremap => "mremap",
        }
    }
}

static FORCE_PORTABLE: AtomicBool = AtomicBool::new(false);
/// Fast paths refused for tests, by `Facility` index.
static REFUSED: [AtomicBool; 4] = [const { AtomicBool::new(false) }; 4];
/// The last way each facility went: (facility, "fast" or "portable: why").
static REPORT: Mutex<Vec<(Facility, String)>> = Mutex::new(Vec::new());

/// Read `LOKY_PORTABLE` and `LOKY_REFUSE_FAST_PATHS` from the environment.
pub fn reread_settings() {
    let flag = std::env::var("LOKY_PORTABLE").unwrap_or_default();
    FORCE_PORTABLE.store(
        !matches!(flag.trim(), "" | "0" | "false" | "False"),
        Ordering::Relaxed,
    );
    let refused = std::env::var("LOKY_REFUSE_FAST_PATHS").unwrap_or_default();
    for (i, facility) in Facility::ALL.iter().enumerate() {
        let listed = refused.split(',').any(|n| n.trim() == facility.name());
        REFUSED[i].store(listed, Ordering::Relaxed);
    }
}

/// Whether the fast path of `facility` may be tried: Linux, not forced portable, not
/// refused. An `Err` is the reason it may not, as the fast call would have failed.
fn fast_allowed(facility: Facility) -> Result<(), io::Error> {
    if !cfg!(target_os = "linux") {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    if FORCE_PORTABLE.load(Ordering::Relaxed) {
        return Err(io::Error::other("LOKY_PORTABLE is set"));
    }
    let i = Facility::ALL
        .iter()
        .position(|f| *f == facility)
        .unwrap_or(0);
    if REFUSED[i].load(Ordering::Relaxed) {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    Ok(())
}

/// Record which way `facility` went (the last word counts).
fn note(facility: Facility, outcome: Result<(), &io::Error>) {
    let text = match outcome {
        Ok(()) => "fast".to_string(),
        Err(err) => format!("portable ({err})"),
    };
    let mut report = REPORT.lock();
    match report.iter_mut().find(|(f, _)| *f == facility) {
        Some(entry) => entry.1 = text,
        None => report.push((facility, text)),
    }
}

/// Try the fast path of `facility` (when allowed), else the portable one.
fn choose<T>(
    facility: Facility,
    fast: impl FnOnce() -> io::Result<T>,
    portable: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    let attempt = fast_allowed(facility).and_then(|()| fast());
    match attempt {
        Ok(value) => {
            note(facility, Ok(()));
            Ok(value)
        }
        Err(err) => {
            note(facility, Err(&err));
            portable()
        }
    }
}

/// Which way each facility used so far went: (name, "fast" or "portable (why)").
pub fn facilities() -> Vec<(&'static str, String)> {
    REPORT
        .lock()
        .iter()
        .map(|(f, text)| (f.name(), text.clone()))
        .collect()
}

// ---- wake-ups --------------------------------------------------------------------

/// Wakes a thread sleeping in poll(2) on `fd()`.
pub struct Waker {
    read: OwnedFd,
    /// The pipe's write end; None for an eventfd (one descriptor for both).
    write: Option<OwnedFd>,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        #[cfg(target_os = "linux")]
        let fast = || {
            linux::eventfd().map(|fd| Waker {
                read: fd,
                write: None,
            })
        };
        #[cfg(not(target_os = "linux"))]
        let fast = || Err(io::Error::from_raw_os_error(libc::ENOSYS));
        choose(Facility::Eventfd, fast, || {
            let (read, write) = posix::pipe_nonblocking()?;
            Ok(Waker {
                read,
                write: Some(write),
            })
        })
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub fn wake(&self) {
        let fd = self.write.as_ref().unwrap_or(&self.read).as_raw_fd();
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64; a full pipe (EAGAIN) already wakes.
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }

    /// Take the pending wake-ups, so the next poll sleeps.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a live buffer from our non-blocking descriptor.
        while unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {
            if self.write.is_none() {
                break; // an eventfd is emptied by one read
            }
        }
    }
}

// ---- process exits ----------------------------------------------------------------

/// How the exit of one process is seen.
pub enum ExitWatch {
    /// Readable once the process has exited; our child or not.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Pidfd(OwnedFd),
    /// Nothing to poll: look with waitpid (our children) or kill(pid, 0) (others)
    /// every `EXIT_POLL`.
    Poll,
}

impl ExitWatch {
    pub fn open(pid: i32) -> ExitWatch {
        #[cfg(target_os = "linux")]
        let fast = || linux::pidfd_open(pid).map(ExitWatch::Pidfd);
        #[cfg(not(target_os = "linux"))]
        let fast = || {
            let _ = pid; // no pidfd here
            Err(io::Error::from_raw_os_error(libc::ENOSYS))
        };
        choose(Facility::Pidfd, fast, || Ok(ExitWatch::Poll)).unwrap_or(ExitWatch::Poll)
    }

    /// The descriptor to poll for the exit, or -1 (poll ignores it).
    pub fn poll_fd(&self) -> RawFd {
        match self {
            ExitWatch::Pidfd(fd) => fd.as_raw_fd(),
            ExitWatch::Poll => -1,
        }
    }

    pub fn needs_polling(&self) -> bool {
        matches!(self, ExitWatch::Poll)
    }
}

/// How a process ended: its exit code, or minus the signal that killed it; None when
/// it cannot be known (the kernel reaped the child itself because this process ignores
/// SIGCHLD, or other code of this process reaped it). 64 bits, as Windows exit codes
/// are unsigned 32-bit values.
pub type ExitStatus = Option<i64>;

/// The status of a process ended with `manager`'s `Stop::Kill`.
pub const KILLED: ExitStatus = Some(-(libc::SIGKILL as i64));

/// Reap our child `pid` if it has exited: Some(its status) once it has, None while it
/// runs. (A zombie child keeps its pid: no reuse race.) A child that can no longer be
/// waited for (ECHILD) has exited: it was ours, and only its exit reaps it.
pub fn try_reap(pid: i32, watch: &ExitWatch) -> Option<ExitStatus> {
    let reaped = match watch {
        #[cfg(target_os = "linux")]
        ExitWatch::Pidfd(fd) => linux::try_reap_pidfd(fd.as_raw_fd()),
        _ => posix::try_waitpid(pid),
    };
    match reaped {
        Ok(None) => None,
        Ok(Some(code)) => Some(Some(code.into())),
        Err(_) => Some(None),
    }
}

/// Whether the kernel reaps this process's children as they exit, discarding their
/// exit status: SIGCHLD is ignored, or its handler was set with SA_NOCLDWAIT.
pub fn children_reaped_by_kernel() -> bool {
    // SAFETY: sigaction(2) with a null new action only reads the current one into a
    // live, zeroed structure.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut current) != 0 {
            return false;
        }
        current.sa_sigaction == libc::SIG_IGN || current.sa_flags & libc::SA_NOCLDWAIT != 0
    }
}

/// Wait until process `pid` has exited (at most `timeout`), reaping it if it is our
/// child. False on timeout.
pub fn wait_for_exit(pid: i32, watch: &ExitWatch, child: bool, timeout: Option<Duration>) -> bool {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let exited = match watch {
            ExitWatch::Pidfd(fd) => posix::poll_readable(fd.as_raw_fd(), Duration::ZERO),
            ExitWatch::Poll if child => try_reap(pid, watch).is_some(),
            // Not ours to reap: a zombie counts as exited (its parent may be gone).
            ExitWatch::Poll => !crate::procfs::is_running(pid),
        };
        if exited {
            if child {
                let _ = try_reap(pid, watch);
            }
            return true;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return false;
        }
        match watch {
            ExitWatch::Pidfd(fd) => {
                let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
                posix::poll_readable(fd.as_raw_fd(), left.unwrap_or(Duration::from_secs(3600)));
            }
            ExitWatch::Poll => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

// ---- shared segments --------------------------------------------------------------

/// A new, empty, anonymous file for a shared segment (close-on-exec).
pub fn segment_file() -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    let fast = linux::memfd;
    #[cfg(not(target_os = "linux"))]
    let fast = || Err(io::Error::from_raw_os_error(libc::ENOSYS));
    choose(Facility::Memfd, fast, posix::unlinked_file)
}

/// Replace the mapping at `base` (`len` bytes) with the private mapping `copy`.
pub fn move_mapping(copy: *mut u8, base: *mut u8, len: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    let fast = || linux::mremap_over(copy, base, len);
    #[cfg(not(target_os = "linux"))]
    let fast = || Err(io::Error::from_raw_os_error(libc::ENOSYS));
    choose(Facility::Mremap, fast, || posix::copy_over(copy, base, len))
}

// ---- parent death -----------------------------------------------------------------

/// Watch `parent` for exit: a pidfd where allowed, else None (poll getppid()).
pub fn watch_parent(parent: i32) -> Option<OwnedFd> {
    match ExitWatch::open(parent) {
        ExitWatch::Pidfd(fd) => Some(fd),
        ExitWatch::Poll => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_wakers_wake_a_poll_and_drain() {
        for portable in [false, true] {
            FORCE_PORTABLE.store(portable, Ordering::Relaxed);
            let waker = Waker::new().unwrap();
            assert!(!posix::poll_readable(waker.fd(), Duration::ZERO));
            waker.wake();
            waker.wake();
            assert!(posix::poll_readable(waker.fd(), Duration::from_secs(5)));
            waker.drain();
            assert!(!posix::poll_readable(waker.fd(), Duration::ZERO));
            assert_eq!(
                waker.write.is_some(),
                portable || !cfg!(target_os = "linux")
            );
        }
        FORCE_PORTABLE.store(false, Ordering::Relaxed);
    }

    #[test]
    fn portable_segment_files_are_anonymous_and_usable() {
        let fd = posix::unlinked_file().unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        nix::sys::uio::pwrite(&fd, b"abc", 10).unwrap();
        let mut back = [0u8; 3];
        nix::sys::uio::pread(&fd, &mut back, 10).unwrap();
        assert_eq!(&back, b"abc");
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert!(path.to_string_lossy().ends_with("(deleted)"), "{path:?}");
    }

    #[test]
    fn exits_are_seen_both_ways() {
        for portable in [false, true] {
            let child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id() as i32;
            std::mem::forget(child); // reaped below, not by std
            let watch = if portable {
                ExitWatch::Poll
            } else {
                ExitWatch::open(pid)
            };
            assert!(wait_for_exit(
                pid,
                &watch,
                true,
                Some(Duration::from_secs(10))
            ));
            assert!(posix::try_waitpid(pid).is_err(), "reaped");
        }
    }
}
