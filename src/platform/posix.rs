//! The portable POSIX ways, used wherever a Linux fast path is missing or refused.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::sys::{check, poll, pollfd};

/// This process's soft limit on open descriptors; None when unlimited or unknown. No
/// descriptor numbered at or above it can be opened, duplicated to, or named in
/// posix_spawn's file actions; one may still be open, inherited or opened before the
/// limit was lowered.
pub fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the rlimit structure it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux and macOS, not everywhere
    Some(limit.rlim_cur as u64)
}

/// The descriptors this process has open (the listing's own among them, now closed).
pub fn open_descriptors() -> Vec<RawFd> {
    let dir = if cfg!(target_os = "linux") {
        "/proc/self/fd"
    } else {
        "/dev/fd"
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .collect()
}

/// Set close-on-exec on `fd` (where the kernel has no flag to do it at creation).
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; an invalid one only returns an error.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; an invalid one only returns an error.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

fn owned_pair(fds: [RawFd; 2]) -> (OwnedFd, OwnedFd) {
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A stream socketpair, both ends close-on-exec.
pub fn socketpair_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    #[cfg(target_os = "linux")]
    let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    #[cfg(not(target_os = "linux"))]
    let kind = libc::SOCK_STREAM;
    // SAFETY: fds is a valid two-element array for socketpair to fill.
    check(unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) })?;
    let (a, b) = owned_pair(fds);
    if !cfg!(target_os = "linux") {
        set_cloexec(a.as_raw_fd())?;
        set_cloexec(b.as_raw_fd())?;
    }
    Ok((a, b))
}

/// A pipe, both ends non-blocking and close-on-exec: (read, write).
pub fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid two-element array for pipe to fill.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
    let (read, write) = owned_pair(fds);
    for fd in [&read, &write] {
        set_cloexec(fd.as_raw_fd())?;
        set_nonblocking(fd.as_raw_fd())?;
    }
    Ok((read, write))
}

/// Whether `fd` becomes readable within `timeout` (EINTR counts as not yet).
pub fn poll_readable(fd: RawFd, timeout: Duration) -> bool {
    matches!(poll(&mut [pollfd(fd, libc::POLLIN)], Some(timeout)), Ok(n) if n > 0)
}

/// A wait status as one number: the exit code, or minus the signal that killed it.
fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// waitpid(`pid`, WNOHANG), EINTR retried: (pid, exit code) of a child reaped, None
/// while it runs (or, for -1, while every child runs).
fn waitpid_nohang(pid: i32) -> io::Result<Option<(i32, i32)>> {
    let mut status = 0;
    loop {
        // SAFETY: status points to a live c_int.
        match check(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) }) {
            Ok(0) => return Ok(None),
            Ok(reaped) => return Ok(Some((reaped, exit_code(status)))),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

/// waitpid(pid, WNOHANG) on our child: its exit code (minus the signal number when a
/// signal killed it), None while it runs.
pub fn try_waitpid(pid: i32) -> io::Result<Option<i32>> {
    Ok(waitpid_nohang(pid)?.map(|(_, code)| code))
}

/// Reap one of our children that exited, if any: (pid, exit code as `try_waitpid`).
/// None while every child runs, or when there is none.
pub fn reap_any_child() -> Option<(i32, i32)> {
    waitpid_nohang(-1).ok().flatten()
}

/// A new empty file with no name, in memory where the system has a tmpfs (/dev/shm),
/// else in the temp directory: made with mkstemp (mode 0600, a fresh random name) and
/// unlinked at once. Close-on-exec.
pub fn unlinked_file() -> io::Result<OwnedFd> {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let template = dir.join("loky-segment-XXXXXX");
    let mut path = std::ffi::CString::new(template.as_os_str().as_encoded_bytes())
        .map_err(io::Error::other)?
        .into_bytes_with_nul();
    // SAFETY: `path` is a writable NUL-terminated template that mkstemp fills in.
    let fd = check(unsafe { libc::mkstemp(path.as_mut_ptr().cast()) })?;
    // SAFETY: mkstemp returned a fresh descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: unlinks the file mkstemp just made (the path it filled in).
    check(unsafe { libc::unlink(path.as_ptr().cast()) })?;
    set_cloexec(fd.as_raw_fd())?;
    Ok(fd)
}

/// Give the file `fd` its first `len` bytes of storage now, so that writing them
/// through a mapping cannot fault: a full tmpfs (a container's small /dev/shm) is an
/// error here instead of a SIGBUS in whatever process writes the mapping first.
pub fn reserve(fd: RawFd, len: usize) -> io::Result<()> {
    #[cfg(not(target_vendor = "apple"))]
    {
        // SAFETY: posix_fallocate on a descriptor the caller owns; it returns the error.
        let ret = unsafe { libc::posix_fallocate(fd, 0, len as libc::off_t) };
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
    }
    #[cfg(target_vendor = "apple")]
    {
        // No posix_fallocate: a byte written into each page allocates it.
        let page = 4096;
        for offset in (0..len).step_by(page) {
            // SAFETY: writes one byte from a live buffer at an offset within the file.
            check(unsafe { libc::pwrite(fd, [0u8].as_ptr().cast(), 1, offset as libc::off_t) })?;
        }
    }
    Ok(())
}

/// Replace the mapping at `base` with a private one holding the contents of the
/// mapping `copy` (both `len` bytes), then drop `copy`.
pub fn copy_over(copy: *mut u8, base: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: maps fresh private memory exactly over the caller's mapping at `base`,
    // fills it from `copy`, then unmaps `copy`; both are the caller's.
    unsafe {
        let fixed = libc::mmap(
            base.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANON | libc::MAP_FIXED,
            -1,
            0,
        );
        if fixed == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        std::ptr::copy_nonoverlapping(copy, base, len);
        libc::munmap(copy.cast(), len);
    }
    Ok(())
}
