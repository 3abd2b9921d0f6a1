//! The receiving side: a segment that came with a frame, mapped, and the registry of
//! this process's live received mappings (which `fork.rs` snapshots for a child).

use std::collections::HashMap;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use super::{Region, SEGMENT_FREE};
use crate::fork::generation;
use crate::os::BorrowedObject;
use crate::wire::Attached;

/// What this process knows of one live received mapping.
#[cfg_attr(windows, allow(dead_code))] // only fork() makes copies
pub(super) struct Live {
    pub len: usize,
    /// Made private (in a forked child): it releases nothing.
    pub private: bool,
    /// A snapshot of its contents taken just before a fork, for the child.
    pub snapshot: Option<NonNull<u8>>,
}

// SAFETY: plain addresses of mappings this process owns.
unsafe impl Send for Live {}

/// Live received mappings of this process, by base address. Locked across `fork()` by
/// the hooks of `fork.rs`, so the child finds it consistent.
pub(super) static RECEIVED: Mutex<Option<HashMap<usize, Live>>> = Mutex::new(None);

/// A received segment, mapped shared and writable. Holds no descriptor.
#[derive(Debug)]
pub struct Mapping {
    region: Region,
    /// Stamp of the process that mapped it: the only one that may release the segment.
    owner: u64,
}

impl Mapping {
    /// Map the whole segment `fd` (which the caller may close afterwards).
    pub fn new(fd: BorrowedObject<'_>) -> io::Result<Mapping> {
        let region = Region::map_whole(fd)?;
        RECEIVED.lock().get_or_insert_with(HashMap::new).insert(
            region.as_ptr() as usize,
            Live {
                len: region.len(),
                private: false,
                snapshot: None,
            },
        );
        Ok(Mapping {
            region,
            owner: generation(),
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Fault every page in now (see `Region::populate`).
    pub fn populate(&self) {
        self.region.populate();
    }
}

/// The shared segment that came with a frame.
#[derive(Debug)]
pub enum Incoming {
    None,
    Mapped(Mapping),
    /// The kernel dropped its descriptor: this process had none left.
    Dropped,
    /// It came, and could not be mapped.
    Unmappable(io::Error),
}

impl Incoming {
    /// Map the segment attached to a frame now (the descriptor is closed after).
    pub fn receive(fd: Attached) -> Incoming {
        match fd {
            Attached::None => Incoming::None,
            Attached::Dropped => Incoming::Dropped,
            Attached::Fd(fd) => match Mapping::new(crate::os::borrow(&fd)) {
                Ok(mapping) => Incoming::Mapped(mapping),
                Err(err) => Incoming::Unmappable(err),
            },
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let private = RECEIVED
            .lock()
            .as_mut()
            .and_then(|live| live.remove(&(self.as_ptr() as usize)))
            .is_some_and(|live| live.private);
        if !private && self.owner == generation() {
            // Nothing here reads the buffers any more: the sender may write them again.
            self.region.state().store(SEGMENT_FREE, Ordering::Release);
        }
        // The region unmaps itself next.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::send::SegmentCache;

    #[test]
    fn a_mapping_from_another_process_releases_nothing() {
        let cache = SegmentCache::new(1 << 30, 8);
        let (segment, _) = cache.write(&[&[1u8; 10]]).unwrap();
        let mut mapping = Mapping::new(crate::os::borrow(&*segment)).unwrap();
        mapping.owner = generation() + 1; // as if inherited through fork()
        drop(mapping);
        assert!(!segment.is_free());
        drop(Mapping::new(crate::os::borrow(&*segment)).unwrap());
        assert!(segment.is_free());
    }

    #[test]
    #[cfg(unix)]
    fn a_segment_shorter_than_its_header_is_refused() {
        use std::os::fd::AsFd;
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&fd, 8).unwrap();
        assert!(Mapping::new(fd.as_fd()).is_err());
    }
}
