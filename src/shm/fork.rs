//! What a process created by `fork()` makes of the segments it inherited: its received
//! mappings become private copies of what they held at fork time (the `os.fork` hooks
//! below); its sending cache is dropped unused (`send.rs`, by its stamp).

use std::io;
use std::ptr::NonNull;

use super::receive::RECEIVED;

/// Before `fork()`: hold the registry so that the child finds it consistent, and
/// snapshot every live received mapping: the child gets these copies (fork's copy
/// semantics), as the mappings themselves stay shared with the parent.
pub fn fork_prepare() {
    let mut registry = RECEIVED.lock();
    if let Some(live) = registry.as_mut() {
        for (&base, entry) in live.iter_mut().filter(|(_, e)| !e.private) {
            entry.snapshot = snapshot(base as *const u8, entry.len).ok();
        }
    }
    std::mem::forget(registry);
}

/// After `fork()`, in the parent: the snapshots are the child's business.
pub fn fork_parent() {
    // SAFETY: locked by `fork_prepare` in this thread, whose guard was forgotten.
    unsafe { RECEIVED.force_unlock() };
    if let Some(live) = RECEIVED.lock().as_mut() {
        for entry in live.values_mut() {
            if let Some(copy) = entry.snapshot.take() {
                // SAFETY: a snapshot mapping of `len` bytes made in `fork_prepare`.
                unsafe { libc::munmap(copy.as_ptr().cast(), entry.len) };
            }
        }
    }
}

/// After `fork()`, in the child: every inherited received mapping is replaced by its
/// snapshot, a private copy of what it held at fork time.
pub fn fork_child() {
    // SAFETY: locked by `fork_prepare` before the fork; this is the only thread now.
    unsafe { RECEIVED.force_unlock() };
    if let Some(live) = RECEIVED.lock().as_mut() {
        for (&base, entry) in live.iter_mut() {
            if let Some(copy) = entry.snapshot.take() {
                // On failure the view stays shared; it still releases nothing, as its
                // owner is the parent.
                entry.private = install(copy, base as *mut u8, entry.len).is_ok();
            }
        }
    }
}

/// A private anonymous copy of `len` bytes at `base`.
fn snapshot(base: *const u8, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping, then filled from the live mapping at `base`
    // (both `len` bytes).
    unsafe {
        let copy = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if copy == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        std::ptr::copy_nonoverlapping(base, copy.cast::<u8>(), len);
        Ok(NonNull::new_unchecked(copy.cast()))
    }
}

/// Put the mapping `copy` in place of the one at `base` (both `len` bytes).
fn install(copy: NonNull<u8>, base: *mut u8, len: usize) -> io::Result<()> {
    let moved = crate::platform::move_mapping(copy.as_ptr(), base, len);
    if moved.is_err() {
        // SAFETY: the copy is ours and unused.
        unsafe { libc::munmap(copy.as_ptr().cast(), len) };
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::send::SegmentCache;
    use crate::shm::Mapping;
    use std::os::fd::AsFd;

    #[test]
    fn private_copies_keep_their_contents_and_release_nothing() {
        let cache = SegmentCache::new(1 << 30, 8);
        let (segment, offsets) = cache.write(&[&[5u8; 4096]]).unwrap();
        let mapping = Mapping::new(segment.as_fd()).unwrap();
        let copy = snapshot(mapping.as_ptr(), mapping.len()).unwrap();
        install(copy, mapping.as_ptr(), mapping.len()).unwrap();
        // SAFETY: within both mappings.
        unsafe {
            *segment.region.as_ptr().add(offsets[0]) = 9; // the sender writes again
            assert_eq!(*mapping.as_ptr().add(offsets[0]), 5);
        }
        drop(mapping); // its FREE goes to the private copy
        assert!(!segment.is_free());
    }
}
