//! `Region`: a shared segment mapped readable and writable in this process, at least a
//! segment header long, unmapped when dropped. A POSIX file mapped with mmap(2), or a
//! Windows section mapped whole.

use std::io;
use std::sync::atomic::AtomicU64;

use super::SEGMENT_HEADER_LEN;
use crate::os::BorrowedObject;

#[cfg(unix)]
pub fn page_size() -> usize {
    // SAFETY: sysconf with a valid name has no side effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// x86-64 Windows pages.
#[cfg(windows)]
pub fn page_size() -> usize {
    4096
}

#[derive(Debug)]
pub struct Region {
    #[cfg(unix)]
    ptr: std::ptr::NonNull<u8>,
    #[cfg(unix)]
    len: usize,
    #[cfg(windows)]
    view: crate::platform::section::View,
}

// SAFETY: the mapping is plain memory owned by this value; nothing in it is tied to
// the thread that made it.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// The first `len` bytes of the segment `fd`, mapped shared (on Windows, the whole
    /// section, which must hold `len` bytes).
    pub fn map(fd: BorrowedObject<'_>, len: usize) -> io::Result<Region> {
        if len < SEGMENT_HEADER_LEN {
            return Err(io::Error::other("segment shorter than its header"));
        }
        Region::map_at_most(fd, len)
    }

    /// The whole segment `fd`, mapped.
    pub fn map_whole(fd: BorrowedObject<'_>) -> io::Result<Region> {
        #[cfg(unix)]
        let len = nix::sys::stat::fstat(fd).map_err(io::Error::from)?.st_size as usize;
        #[cfg(windows)]
        let len = usize::MAX;
        let region = Region::map_at_most(fd, len)?;
        if region.len() < SEGMENT_HEADER_LEN {
            return Err(io::Error::other("segment shorter than its header"));
        }
        Ok(region)
    }

    #[cfg(unix)]
    fn map_at_most(fd: BorrowedObject<'_>, len: usize) -> io::Result<Region> {
        use std::os::fd::AsRawFd;
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
        let ptr = std::ptr::NonNull::new(ptr.cast()).expect("mmap returned null");
        Ok(Region { ptr, len })
    }

    /// The whole section (`len`: the least it must hold).
    #[cfg(windows)]
    fn map_at_most(section: BorrowedObject<'_>, len: usize) -> io::Result<Region> {
        let view = crate::platform::section::View::of(section)?;
        if len != usize::MAX && view.len() < len {
            return Err(io::Error::other("segment shorter than expected"));
        }
        Ok(Region { view })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        #[cfg(unix)]
        return self.ptr.as_ptr();
        #[cfg(windows)]
        return self.view.as_ptr();
    }

    pub fn len(&self) -> usize {
        #[cfg(unix)]
        return self.len;
        #[cfg(windows)]
        return self.view.len();
    }

    /// The state word at its start.
    pub fn state(&self) -> &AtomicU64 {
        // SAFETY: the mapping is live while `self` is, at least a header long, and
        // page-aligned, so the word is aligned.
        unsafe { &*(self.as_ptr() as *const AtomicU64) }
    }
}

#[cfg(unix)]
impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range mapped in `map`, which nothing uses now.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
