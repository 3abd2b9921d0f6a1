//! The Linux fast paths. Each returns the kernel's error when the facility is missing
//! or refused, and the caller (`super::choose`) falls back to the portable way.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::sys::check;

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: the call returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd creation; the result is checked.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } as libc::c_long)
}

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the result is checked.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// waitid(P_PIDFD, WNOHANG): the exit status of our exited child, or None.
pub fn try_reap_pidfd(pidfd: RawFd) -> io::Result<Option<i32>> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid initial value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info points to a live siginfo_t; a bad pidfd only yields an error.
    let ret = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    check(ret)?;
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

pub fn memfd() -> io::Result<OwnedFd> {
    // Through syscall(): glibc's wrapper is 2.27's, newer than the glibc the wheel
    // targets, which would then fail to load (and an old kernel answers ENOSYS here).
    // SAFETY: plain memfd creation; the result is checked.
    owned(unsafe {
        libc::syscall(
            libc::SYS_memfd_create,
            c"loky-buffers".as_ptr(),
            libc::MFD_CLOEXEC,
        )
    })
}

/// Move the mapping `copy` over the one at `base` (both `len` bytes), atomically.
pub fn mremap_over(copy: *mut u8, base: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: mremap replaces the mapping at `base` with `copy`, both the caller's.
    let moved = unsafe {
        libc::mremap(
            copy.cast(),
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            base.cast::<libc::c_void>(),
        )
    };
    if moved == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
