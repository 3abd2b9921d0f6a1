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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sharing {
    Shared,
    CopyOnWrite,
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
        Region::map_as(fd, len, Sharing::Shared)
    }

    /// The whole segment `fd`, mapped.
    pub fn map_whole(fd: BorrowedObject<'_>) -> io::Result<Region> {
        Region::map_whole_as(fd, Sharing::Shared)
    }

    /// The whole segment `fd`, mapped copy-on-write: this process's writes stay its
    /// own, as after fork().
    pub fn map_copy_on_write(fd: BorrowedObject<'_>) -> io::Result<Region> {
        Region::map_whole_as(fd, Sharing::CopyOnWrite)
    }

    fn map_whole_as(fd: BorrowedObject<'_>, sharing: Sharing) -> io::Result<Region> {
        #[cfg(unix)]
        let len = nix::sys::stat::fstat(fd).map_err(io::Error::from)?.st_size as usize;
        #[cfg(windows)]
        let len = usize::MAX;
        let region = Region::map_as(fd, len, sharing)?;
        if region.len() < SEGMENT_HEADER_LEN {
            return Err(io::Error::other("segment shorter than its header"));
        }
        Ok(region)
    }

    #[cfg(unix)]
    fn map_as(fd: BorrowedObject<'_>, len: usize, sharing: Sharing) -> io::Result<Region> {
        use std::os::fd::AsRawFd;
        let flags = match sharing {
            Sharing::Shared => libc::MAP_SHARED,
            Sharing::CopyOnWrite => libc::MAP_PRIVATE,
        };
        // SAFETY: a fresh mapping at an address the kernel picks; no existing memory
        // is affected. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
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
    fn map_as(section: BorrowedObject<'_>, len: usize, sharing: Sharing) -> io::Result<Region> {
        let view = crate::platform::section::View::of(section, sharing == Sharing::CopyOnWrite)?;
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

    /// Fault every page in now (where the kernel can), so the first reads of the
    /// buffers run at memory speed. Best effort.
    pub fn populate(&self) {
        #[cfg(unix)]
        {
            const MADV_POPULATE_READ: libc::c_int = 22; // Linux 5.14
                                                        // SAFETY: advice on our own live mapping; failure (old kernel) is harmless.
            unsafe { libc::madvise(self.as_ptr().cast(), self.len(), MADV_POPULATE_READ) };
        }
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
