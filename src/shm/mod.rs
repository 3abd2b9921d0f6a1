//! Shared-memory segments: how large buffers travel between processes.
//!
//! ```text
//!  sender (send.rs)                                     receiver (receive.rs)
//!  SegmentCache::write(buffers)
//!    reuse a FREE segment that fits, or make one (memfd, mapped)
//!    state := LENT, copy the buffers in
//!  frame + the segment's descriptor (SCM_RIGHTS) ──────► Mapping::new(fd): map it, close fd
//!                                                        views of the mapping (arrays...)
//!  keeps its mapping; writes it again once FREE ◄─────── last view gone: state := FREE
//! ```
//!
//! The state word is the first of the `SEGMENT_HEADER_LEN` bytes before the buffers.
//! Each side's module owns its half; `fork.rs` owns what a forked child inherits;
//! `Region` (here) is the one owner of a mapping's address range.
//!
//! Ownership, stated once:
//! - A segment is released (FREE) only by the process that mapped it on receipt, and
//!   only once its last view there is gone (`Mapping::drop`). Each segment is mapped by
//!   one receiver: a worker maps a task's segment when it takes the task to run it, so
//!   tasks it hands back unrun never touch theirs.
//! - The sender writes a segment again only when it is FREE *and* no queued or
//!   in-flight task still holds it (the cache's reference is the only one left).
//! - `fork()`: a child created from a process owns none of that process's segments.
//!   Its inherited mappings never release anything (they are stamped with the process
//!   that mapped them, see `crate::fork`), and after `os.fork()` (the `fork_*` hooks)
//!   they become private copies of what they held at fork time (snapshots taken just
//!   before, at the cost of one copy of the live segments per fork), whatever the
//!   parent does next. Its inherited sending cache is dropped unused (stamped too).
//!
//! Memory ordering: the sender stores LENT, copies the buffers in, then sends the
//! descriptor (the system call orders the writes before the receiver can map). The
//! receiver's FREE store is Release, after its last read through the mapping; the
//! sender's FREE load is Acquire, before its next write.
//!
//! Resources: a live mapping holds no descriptor. The sending cache holds one descriptor
//! and one mapping per kept segment, at most `max_segments` of them and `max_bytes` in
//! all; a segment unused for a while is let go at the next write. A new segment's pages
//! are reserved before it is mapped, so that a full tmpfs is an error and not a SIGBUS
//! in the first process that writes it. When no segment can be made (descriptors or
//! memory ran out), `write` fails and the caller sends the buffers in-band instead.

mod fork;
mod receive;
mod send;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

pub use fork::{fork_child, fork_parent, fork_prepare};
pub use receive::{Incoming, Mapping};
pub use send::{OutSegment, CACHE};

/// Bytes before the first buffer of a segment.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Values of a segment's state word.
pub const SEGMENT_FREE: u64 = 0;
pub const SEGMENT_LENT: u64 = 1;

pub fn page_size() -> usize {
    // SAFETY: sysconf with a valid name has no side effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// A shared file mapped readable and writable in this process, at least a segment
/// header long; unmapped when dropped.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing in it is tied to
// the thread that made it.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// mmap(2) of the first `len` bytes of `fd`, shared.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Region> {
        if len < SEGMENT_HEADER_LEN {
            return Err(io::Error::other("segment shorter than its header"));
        }
        // SAFETY: a fresh mapping at an address the kernel picks; no existing memory
        // is affected. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).expect("mmap returned null");
        Ok(Region { ptr, len })
    }

    /// The whole file `fd`, mapped.
    pub fn map_whole(fd: BorrowedFd<'_>) -> io::Result<Region> {
        let len = nix::sys::stat::fstat(fd).map_err(io::Error::from)?.st_size as usize;
        Region::map(fd, len)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The state word at its start.
    pub fn state(&self) -> &AtomicU64 {
        // SAFETY: the mapping is live while `self` is, at least a header long, and
        // page-aligned, so the word is aligned.
        unsafe { &*(self.ptr.as_ptr() as *const AtomicU64) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range mapped in `map`, which nothing uses now.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
