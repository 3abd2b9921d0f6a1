//! Receiving side of the shared-memory segments that carry large buffers.
//!
//! A sender writes buffers into a segment (a memfd) after a `SEGMENT_HEADER_LEN`-byte
//! header whose first word says whether the segment is `LENT` or `FREE`, and passes
//! the descriptor along with its frame. The receiver maps it here; when the last
//! view of the mapping is gone it marks the segment `FREE`, then unmaps it, so the
//! sender may write the next buffers into the same pages instead of new ones.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Bytes before the first buffer of a segment (a cache line: buffers stay aligned).
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Values of a segment's state word.
pub const SEGMENT_FREE: u64 = 0;
pub const SEGMENT_LENT: u64 = 1;

/// A shared, writable mapping of the first `len` bytes of a received segment.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing in it is tied to
// the thread that made it.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `len` bytes of the segment `fd` (which may then be closed), with every page
    /// mapped up front.
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> std::io::Result<Mapping> {
        let size = std::num::NonZeroUsize::new(len)
            .filter(|_| len >= SEGMENT_HEADER_LEN)
            .ok_or_else(|| std::io::Error::other("segment shorter than its header"))?;
        // SAFETY: a fresh mapping at an address the kernel picks; no existing memory
        // is affected.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE,
                fd,
                0,
            )
        }?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn state(&self) -> &AtomicU64 {
        // SAFETY: the header is inside the mapping (len >= SEGMENT_HEADER_LEN) and
        // page-aligned, so aligned for an AtomicU64; the sender only reads it while
        // the segment is lent.
        unsafe { &*(self.ptr.as_ptr() as *const AtomicU64) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Nothing reads the buffers any more: the sender may reuse the segment.
        self.state().store(SEGMENT_FREE, Ordering::Release);
        // SAFETY: unmaps exactly the region mapped in `new`; no view of it remains.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn dropping_a_mapping_marks_its_segment_free() {
        let fd =
            nix::sys::memfd::memfd_create(c"test", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        let lent = SEGMENT_LENT.to_le_bytes();
        nix::sys::uio::pwrite(&fd, &lent, 0).unwrap();
        let mapping = Mapping::new(fd.as_fd(), 4096).unwrap();
        // SAFETY: within the mapping.
        unsafe { *mapping.as_ptr().add(100) = 7 };
        assert_eq!(mapping.state().load(Ordering::Acquire), SEGMENT_LENT);
        drop(mapping);
        let mut word = [0xffu8; 8];
        nix::sys::uio::pread(&fd, &mut word, 0).unwrap();
        assert_eq!(u64::from_le_bytes(word), SEGMENT_FREE);
        let mut byte = [0u8; 1];
        nix::sys::uio::pread(&fd, &mut byte, 100).unwrap();
        assert_eq!(byte[0], 7, "writes through the mapping reach the segment");
    }

    #[test]
    fn a_segment_shorter_than_its_header_is_refused() {
        let fd =
            nix::sys::memfd::memfd_create(c"test", nix::sys::memfd::MFdFlags::empty()).unwrap();
        assert!(Mapping::new(fd.as_fd(), 8).is_err());
    }
}
