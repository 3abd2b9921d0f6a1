//! Which process a resource belongs to, across `fork()`.
//!
//! Every child created by `fork()` bumps a counter (a `pthread_atfork` handler,
//! registered once when the module loads), so a value stamped with the generation of
//! its creator tells, with one atomic load, whether this process is still that creator.
//! Pools, sending caches and received mappings are stamped: a forked child finds them
//! foreign and never touches its parent's workers or segments through them. Windows
//! has no fork(): there the stamp never changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

#[cfg(unix)]
extern "C" fn in_child() {
    // Async-signal-safe: one atomic add.
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Install the fork handler (idempotent).
pub fn register() {
    REGISTER.call_once(|| {
        // SAFETY: registers a handler that only performs an atomic add.
        #[cfg(unix)]
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child))
        };
    });
}

/// The stamp of this process: changes in every child created by `fork()`.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_has_another_generation() {
        register();
        let before = generation();
        let mut pipe = [0; 2];
        // SAFETY: a pipe, a fork whose child only writes one byte and exits.
        unsafe {
            assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
            let pid = libc::fork();
            if pid == 0 {
                let changed = u8::from(generation() != before);
                libc::write(pipe[1], (&changed as *const u8).cast(), 1);
                libc::_exit(0);
            }
            let mut byte = 0u8;
            libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
            assert_eq!(byte, 1);
        }
        assert_eq!(generation(), before, "the parent keeps its own");
    }
}
