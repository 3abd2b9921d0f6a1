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
//!
//! The template learns of its children's exits through SIGCHLD (a wake-up pipe) and
//! reaps them with waitpid, and looks at its parent every quarter second where no
//! parent-death signal ends it: the same on every POSIX system.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Template side: wait up to `timeout` (None: for ever) until one of `fds` is readable;
/// the indices of those that are (none on timeout).
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<usize>> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    loop {
        // SAFETY: polled is a valid array of polled.len() pollfd structures.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok((0..polled.len())
                .filter(|&i| polled[i].revents != 0)
                .collect());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
