//! In a worker: a thread that ends the worker and every process it started as soon as
//! its parent is gone, so nothing a task started outlives the executor.
//!
//! A parent-death signal cannot do it: it kills the worker at once, and the worker's
//! children are then orphans that nobody ends. This thread walks the worker's
//! descendants, kills them, then the worker. It watches the parent through a pidfd
//! (at once) where the platform has one, else by looking at getppid() every
//! `POLL_INTERVAL`; a parent that died while the worker started is caught by the first
//! look, at the start.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::platform;
use crate::procfs::kill_tree;
use crate::sys::{poll, pollfd};

/// How often the parent is looked at where no pidfd says at once that it exited.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn parent_is(pid: i32) -> bool {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() == pid }
}

/// Kill every descendant of this process, then the process itself.
fn end_this_tree() -> ! {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    kill_tree(me, libc::SIGKILL);
    // SAFETY: exits this process; reached only if the signal above did not.
    unsafe { libc::_exit(1) }
}

/// Start watching `parent`, the process this worker expects as its parent. If it is
/// already gone, the tree ends now.
pub fn watch_parent(parent: i32) -> io::Result<()> {
    if !parent_is(parent) {
        end_this_tree();
    }
    let pidfd = platform::watch_parent(parent);
    std::thread::Builder::new()
        .name("loky-watchdog".into())
        .spawn(move || loop {
            match &pidfd {
                // Readable once the parent exited.
                Some(fd) => drop(poll(
                    &mut [pollfd(fd.as_raw_fd(), libc::POLLIN)],
                    Some(POLL_INTERVAL),
                )),
                None => std::thread::sleep(POLL_INTERVAL),
            }
            if !parent_is(parent) {
                end_this_tree();
            }
        })?;
    Ok(())
}
