//! Shared segments on Windows: sections backed by the paging file, where POSIX uses a
//! memfd (or an unlinked file) and passes its descriptor with the frame.
//!
//! ```text
//!  sender                                         receiver
//!  Section::new(len)     committed now: creation fails if memory cannot be promised,
//!  map, write buffers    so no page fault can fail later (POSIX pre-allocates for it)
//!  the manager duplicates the handle into the receiving process ──► its value in the frame
//!                                                 View::of(value): map, close the handle
//! ```
//!
//! The manager holds every worker's process handle, so it does the duplicating both
//! ways: into a worker (`share_with`) for a task's segment, out of a worker
//! (`take_from`, closing the worker's copy) for a result's. A worker needs no handle
//! to its parent. A view holds no handle (a mapped section lives as long as its views),
//! as a POSIX mapping holds no descriptor.

use std::io;
use std::os::windows::io::{
    AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle, RawHandle,
};
use std::ptr::{null, null_mut, NonNull};

use windows_sys::Win32::Foundation::{
    DuplicateHandle, DUPLICATE_CLOSE_SOURCE, DUPLICATE_SAME_ACCESS, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, MapViewOfFile, UnmapViewOfFile, VirtualQuery, FILE_MAP_COPY, FILE_MAP_READ,
    FILE_MAP_WRITE, MEMORY_BASIC_INFORMATION, MEMORY_MAPPED_VIEW_ADDRESS, PAGE_READWRITE,
    SEC_COMMIT,
};
use windows_sys::Win32::System::Threading::GetCurrentProcess;

use super::{check, owned};

/// A section: memory that several processes can map.
pub struct Section {
    handle: OwnedHandle,
}

impl Section {
    /// A new section of `len` bytes (rounded up to pages by the system), zeroed and
    /// committed. Not inheritable.
    pub fn new(len: usize) -> io::Result<Section> {
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let size = len as u64;
        // SAFETY: an unnamed section backed by the paging file; the result is checked.
        let handle = owned(unsafe {
            CreateFileMappingW(
                INVALID_HANDLE_VALUE,
                null(),
                PAGE_READWRITE | SEC_COMMIT,
                (size >> 32) as u32,
                size as u32,
                null(),
            )
        })?;
        Ok(Section { handle })
    }

    pub fn as_handle(&self) -> BorrowedHandle<'_> {
        self.handle.as_handle()
    }

    /// Map the whole section, readable and writable.
    #[cfg(test)]
    pub fn map(&self) -> io::Result<View> {
        View::of(self.as_handle(), false)
    }

    /// The section's handle, owned.
    pub fn into_owned(self) -> OwnedHandle {
        self.handle
    }

    /// Give up this handle without closing it, for another process to take
    /// (`take_from`, which closes it here): its value.
    #[cfg(test)]
    pub fn into_raw(self) -> usize {
        std::os::windows::io::IntoRawHandle::into_raw_handle(self.handle) as usize
    }

    /// A duplicate of the section's handle in `process`: the value the handle has
    /// there, for that process to map (and then close).
    #[cfg(test)]
    pub fn share_with(&self, process: BorrowedHandle<'_>) -> io::Result<usize> {
        super::process::duplicate_into(self.handle.as_handle(), process)
    }

    /// Take the section handle `value` out of `process` (closing it there).
    pub fn take_from(process: BorrowedHandle<'_>, value: usize) -> io::Result<OwnedHandle> {
        let mut local: HANDLE = null_mut();
        // SAFETY: duplicates a handle of another process, which the caller's process
        // handle allows (PROCESS_DUP_HANDLE); a wrong value only fails.
        check(unsafe {
            DuplicateHandle(
                process.as_raw_handle() as HANDLE,
                value as HANDLE,
                GetCurrentProcess(),
                &mut local,
                0,
                0,
                DUPLICATE_SAME_ACCESS | DUPLICATE_CLOSE_SOURCE,
            )
        })?;
        // SAFETY: a fresh handle that we now own.
        Ok(unsafe { OwnedHandle::from_raw_handle(local as RawHandle) })
    }
}

/// A mapped view of a whole section. Holds no handle.
#[derive(Debug)]
pub struct View {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain memory owned by this value, tied to no thread.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// Map the whole of `section` (the caller may close the handle afterwards), or a
    /// private copy-on-write view of it. Its length is the view's, a whole number of
    /// pages.
    pub fn of(section: BorrowedHandle<'_>, copy_on_write: bool) -> io::Result<View> {
        let access = if copy_on_write {
            FILE_MAP_COPY
        } else {
            FILE_MAP_READ | FILE_MAP_WRITE
        };
        // SAFETY: maps a live section handle at an address the system picks; checked.
        let view = unsafe { MapViewOfFile(section.as_raw_handle() as HANDLE, access, 0, 0, 0) };
        let Some(ptr) = NonNull::new(view.Value.cast::<u8>()) else {
            return Err(io::Error::last_os_error());
        };
        // SAFETY: plain data for the call to fill.
        let mut info: MEMORY_BASIC_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: asks about our own fresh view, into a live structure.
        let filled = unsafe {
            VirtualQuery(
                ptr.as_ptr().cast(),
                &mut info,
                std::mem::size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        };
        let view = View {
            ptr,
            len: info.RegionSize,
        };
        if filled == 0 {
            return Err(io::Error::last_os_error()); // `view` unmaps as it drops
        }
        Ok(view)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The view's bytes. Other processes may write them meanwhile: callers agree on
    /// who writes when (the segment's state word), as with a POSIX mapping.
    ///
    /// SAFETY (for callers): no other thread of this process writes the view while
    /// the slice lives.
    #[cfg(test)]
    pub unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: the view is live for `len` bytes; see the function's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// SAFETY (for callers): nothing else of this process reads or writes the view
    /// while the slice lives.
    #[cfg(test)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: the view is live and writable for `len` bytes; see the contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let address = MEMORY_MAPPED_VIEW_ADDRESS {
            Value: self.ptr.as_ptr().cast(),
        };
        // SAFETY: unmaps exactly the view mapped in `of`; no slice of it outlives self.
        unsafe { UnmapViewOfFile(address) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_child::with_channel;
    use super::*;

    const PAGE: usize = 4096;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 253) as u8).collect()
    }

    #[test]
    fn two_views_share_memory_and_outlive_the_handle() {
        let section = Section::new(3 * PAGE).unwrap();
        let a = section.map().unwrap();
        let b = View::of(section.as_handle(), false).unwrap();
        drop(section);
        assert_eq!((a.len(), b.len()), (3 * PAGE, 3 * PAGE));
        // SAFETY: this test is the only user of both views.
        unsafe {
            assert!(a.bytes().iter().all(|&x| x == 0), "a new section is zeroed");
            a.bytes_mut()[PAGE + 5] = 42;
            a.as_ptr().add(7).write(9);
            assert_eq!(b.bytes()[PAGE + 5], 42);
            assert_eq!(b.bytes()[7], 9);
        }
    }

    #[test]
    fn a_view_is_as_long_as_the_section_in_whole_pages() {
        let section = Section::new(PAGE + 1).unwrap();
        assert_eq!(section.map().unwrap().len(), 2 * PAGE);
    }

    #[test]
    fn a_section_beyond_what_memory_can_promise_is_refused() {
        // SEC_COMMIT charges the whole size when the section is made: a size no
        // machine can back fails there, not at a later page fault. (Wine charges
        // nothing and accepts 1 TiB on a 24 GiB machine; it refuses this size, which
        // no address space holds.)
        assert!(Section::new(1 << 46).is_err());
    }

    #[test]
    fn a_section_shared_with_a_child_is_seen_and_written_there() {
        let (server, proc) = with_channel("section_peer");
        let section = Section::new(16 * PAGE).unwrap();
        let view = section.map().unwrap();
        // SAFETY: the child writes only after it got the handle, read below after.
        unsafe { view.bytes_mut().copy_from_slice(&pattern(16 * PAGE)) };
        let remote = section.share_with(proc.process.as_handle()).unwrap();
        drop(section);
        server.write_all(&(remote as u64).to_le_bytes()).unwrap();
        // The child checks the contents, writes its reply, and sends back a section
        // of its own (its handle value there).
        let mut answer = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            let n = server.read(&mut answer[got..]).unwrap();
            assert!(n > 0, "the child closed early");
            got += n;
        }
        // SAFETY: the child wrote before answering and writes no more.
        assert_eq!(unsafe { &view.bytes()[..5] }, b"reply");
        let theirs = Section::take_from(
            proc.process.as_handle(),
            u64::from_le_bytes(answer) as usize,
        )
        .unwrap();
        let their_view = View::of(theirs.as_handle(), false).unwrap();
        // SAFETY: the child is done writing its section.
        assert_eq!(unsafe { &their_view.bytes()[..4] }, b"mine");
        drop(server);
        assert_eq!(proc.wait(30_000).unwrap(), Some(0));
    }
}
