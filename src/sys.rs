//! The two helpers every POSIX system call here goes through: one turns a failed call
//! into an `io::Error`, one waits in poll(2).

use std::io;
use std::time::Duration;

/// The value of a call that returns -1 (or any negative value) and sets errno on
/// failure.
pub fn check<T: Copy + Default + PartialOrd>(ret: T) -> io::Result<T> {
    if ret < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// poll(2) on `fds` for up to `timeout` (None: until something happens). The number of
/// descriptors with events; `ErrorKind::Interrupted` when a signal came first.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    // Rounded up, so that a deadline is never missed by less than a millisecond.
    let ms = timeout.map_or(-1, |t| {
        let ms = t.as_micros().div_ceil(1000);
        ms.min(i32::MAX as u128) as libc::c_int
    });
    // SAFETY: `fds` is a valid array of fds.len() pollfd structures.
    check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) })
        .map(|n| n as usize)
}

/// A pollfd asking for `events` on `fd` (a negative fd is ignored by poll).
pub fn pollfd(fd: libc::c_int, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_passes_values_and_reports_errno() {
        assert_eq!(check(3).unwrap(), 3);
        // SAFETY: close(2) of a descriptor that cannot be open; it fails with EBADF.
        let err = check(unsafe { libc::close(-1) }).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn poll_times_out_and_sees_a_readable_end() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        let mut fds = [pollfd(a.as_raw_fd(), libc::POLLIN)];
        assert_eq!(poll(&mut fds, Some(Duration::from_millis(1))).unwrap(), 0);
        use std::io::Write;
        (&b).write_all(b"x").unwrap();
        assert_eq!(poll(&mut fds, None).unwrap(), 1);
        assert_ne!(fds[0].revents & libc::POLLIN, 0);
    }
}
