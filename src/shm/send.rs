//! The sending side: segments this process writes buffers into, and the cache that
//! keeps them to be written again once their receiver released them.
//!
//! Segments are sized to their payload, plus a page per buffer (see `PAGE_PHASE`),
//! rounded up to a page; a kept segment not written again for `IDLE` is let go at the
//! next write.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{page_size, Region, SEGMENT_FREE, SEGMENT_HEADER_LEN, SEGMENT_LENT};
use crate::fork::generation;
use crate::os::{AsObject, BorrowedObject, OwnedObject};

/// A buffer lies at the same place within a 4 KiB page as its source (the segment
/// starts on a page): large copies run at full speed whatever the source's alignment
/// (glibc's memcpy of a large buffer to a destination a little ahead of its source
/// within a page runs several times slower), and the receiver's buffer is exactly as
/// aligned as the sender's was.
const PAGE_PHASE: usize = 4096;
/// A kept segment not written again for this long is let go at the next write.
const IDLE: Duration = Duration::from_secs(30);

/// A segment this process writes buffers into and sends.
pub struct OutSegment {
    /// Its file (POSIX) or section (Windows).
    fd: OwnedObject,
    pub(super) region: Region,
}

impl OutSegment {
    /// A new segment of `capacity` bytes, its pages reserved (see `platform::reserve`).
    #[cfg(unix)]
    pub fn create(capacity: usize) -> io::Result<OutSegment> {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = crate::platform::segment_file()?;
        nix::unistd::ftruncate(&fd, capacity as libc::off_t).map_err(io::Error::from)?;
        crate::platform::reserve(fd.as_raw_fd(), capacity)?;
        let region = Region::map(fd.as_fd(), capacity)?;
        Ok(OutSegment { fd, region })
    }

    /// A new segment of `capacity` bytes, committed (see `platform::section`).
    #[cfg(windows)]
    pub fn create(capacity: usize) -> io::Result<OutSegment> {
        let section = crate::platform::section::Section::new(capacity)?;
        let region = Region::map(section.as_handle(), capacity)?;
        Ok(OutSegment {
            fd: section.into_owned(),
            region,
        })
    }

    /// Its state word (see `crate::shm`).
    pub fn state(&self) -> &AtomicU64 {
        self.region.state()
    }

    /// A new segment holding `buffers` (offsets returned), kept by no cache and
    /// released by no receiver: it lives as long as its descriptor. For data that
    /// every worker of a pool maps copy-on-write (`Region::map_copy_on_write`).
    pub fn filled(buffers: &[&[u8]]) -> io::Result<(OutSegment, Vec<usize>)> {
        let (offsets, size) = layout(buffers);
        let capacity = size.div_ceil(page_size()) * page_size();
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            use std::os::unix::fs::FileExt;
            // write(2) allocates each page as it fills it, where copying through a fresh
            // mapping takes a page fault per page; a full tmpfs is an error here. Its
            // state word is never written: nobody releases this segment.
            let file = std::fs::File::from(crate::platform::segment_file()?);
            file.set_len(capacity as u64)?;
            for (buffer, &offset) in buffers.iter().zip(&offsets) {
                file.write_all_at(buffer, offset as u64)?;
            }
            let fd = std::os::fd::OwnedFd::from(file);
            let region = Region::map(fd.as_fd(), capacity)?;
            Ok((OutSegment { fd, region }, offsets))
        }
        #[cfg(windows)]
        {
            let segment = OutSegment::create(capacity)?;
            // SAFETY: new, so mapped by nobody else.
            unsafe { segment.copy_in(buffers, &offsets) };
            Ok((segment, offsets))
        }
    }

    /// Copy `buffers` to their `offsets` (from `layout`, which fit the segment).
    ///
    /// SAFETY (for callers): no other process or thread reads or writes the segment
    /// meanwhile.
    unsafe fn copy_in(&self, buffers: &[&[u8]], offsets: &[usize]) {
        for (buffer, &offset) in buffers.iter().zip(offsets) {
            assert!(offset >= SEGMENT_HEADER_LEN && offset + buffer.len() <= self.capacity());
            // SAFETY: within the segment (checked), past the header; `layout` makes
            // the buffers' places disjoint; see the function's contract.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    buffer.as_ptr(),
                    self.region.as_ptr().add(offset),
                    buffer.len(),
                )
            };
        }
    }

    pub(super) fn is_free(&self) -> bool {
        self.state().load(Ordering::Acquire) == SEGMENT_FREE
    }

    pub fn capacity(&self) -> usize {
        self.region.len()
    }
}

impl AsObject for OutSegment {
    #[cfg(unix)]
    fn as_fd(&self) -> BorrowedObject<'_> {
        crate::os::borrow(&self.fd)
    }

    #[cfg(windows)]
    fn as_handle(&self) -> BorrowedObject<'_> {
        crate::os::borrow(&self.fd)
    }
}

/// Where each buffer starts in a segment (see `PAGE_PHASE`), and the segment's size.
fn layout(buffers: &[&[u8]]) -> (Vec<usize>, usize) {
    let mut end = SEGMENT_HEADER_LEN;
    let offsets = buffers
        .iter()
        .map(|buffer| {
            let phase = buffer.as_ptr() as usize % PAGE_PHASE;
            let offset = end + (phase + PAGE_PHASE - end % PAGE_PHASE) % PAGE_PHASE;
            end = offset + buffer.len();
            offset
        })
        .collect();
    (offsets, end)
}

struct Kept {
    segment: Arc<OutSegment>,
    last_lent: Instant,
}

struct CacheState {
    /// Stamp of the process the kept segments belong to.
    owner: u64,
    /// Least recently lent first.
    kept: Vec<Kept>,
}

/// The segments this process has sent, kept to be written again.
pub struct SegmentCache {
    state: Mutex<CacheState>,
    max_bytes: AtomicU64,
    max_segments: AtomicU64,
}

impl SegmentCache {
    pub const fn new(max_bytes: u64, max_segments: u64) -> SegmentCache {
        SegmentCache {
            state: Mutex::new(CacheState {
                owner: 0,
                kept: Vec::new(),
            }),
            max_bytes: AtomicU64::new(max_bytes),
            max_segments: AtomicU64::new(max_segments),
        }
    }

    pub fn set_limits(&self, max_bytes: u64, max_segments: u64) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.max_segments.store(max_segments, Ordering::Relaxed);
        self.trim(&mut self.state.lock(), Instant::now());
    }

    /// Copy `buffers` into a segment (reused or new), marked LENT; returns it with the
    /// offset of each buffer. Fails if no segment can be made: send in-band then.
    pub fn write(&self, buffers: &[&[u8]]) -> io::Result<(Arc<OutSegment>, Vec<usize>)> {
        let (offsets, size) = layout(buffers);
        // Room for the same buffers at any place within a page: the next ones of these
        // sizes fit it whatever their alignment.
        let segment = self.take(size, size + PAGE_PHASE * buffers.len())?;
        segment.state().store(SEGMENT_LENT, Ordering::Relaxed);
        // SAFETY: no receiver maps it now (it was FREE and unreferenced, or is new).
        unsafe { segment.copy_in(buffers, &offsets) };
        Ok((segment, offsets))
    }

    /// A segment of at least `size` bytes (a new one is made with `room` bytes), which
    /// the cache keeps from now on.
    fn take(&self, size: usize, room: usize) -> io::Result<Arc<OutSegment>> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if state.owner != generation() {
            // Forked from the process that filled it: its segments are not ours.
            state.kept.clear();
            state.owner = generation();
        }
        let reusable = state
            .kept
            .iter()
            .enumerate()
            .filter(|(_, k)| {
                let capacity = k.segment.capacity();
                capacity >= size
                    && capacity <= 2 * size
                    && Arc::strong_count(&k.segment) == 1
                    && k.segment.is_free()
            })
            .min_by_key(|(_, k)| k.segment.capacity())
            .map(|(i, _)| i);
        let segment = match reusable {
            Some(i) => state.kept.remove(i).segment,
            None => {
                let capacity = room.div_ceil(page_size()) * page_size();
                match OutSegment::create(capacity) {
                    Ok(segment) => Arc::new(segment),
                    Err(_) if !state.kept.is_empty() => {
                        // Out of descriptors or memory: let go of what is kept, once.
                        state.kept.clear();
                        Arc::new(OutSegment::create(capacity)?)
                    }
                    Err(err) => return Err(err),
                }
            }
        };
        state.kept.push(Kept {
            segment: segment.clone(),
            last_lent: now,
        });
        self.trim(&mut state, now);
        Ok(segment)
    }

    /// Drop idle segments, then the oldest ones beyond the limits.
    fn trim(&self, state: &mut CacheState, now: Instant) {
        state.kept.retain(|k| {
            now.duration_since(k.last_lent) < IDLE || Arc::strong_count(&k.segment) > 1
        });
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        let max_segments = self.max_segments.load(Ordering::Relaxed) as usize;
        let mut bytes: u64 = state.kept.iter().map(|k| k.segment.capacity() as u64).sum();
        while !state.kept.is_empty() && (bytes > max_bytes || state.kept.len() > max_segments) {
            bytes -= state.kept.remove(0).segment.capacity() as u64;
        }
    }

    /// Let go of every kept segment (tasks still holding one keep it alive).
    pub fn clear(&self) {
        self.state.lock().kept.clear();
    }

    /// (segments kept, bytes kept), for tests and statistics.
    pub fn usage(&self) -> (usize, u64) {
        let state = self.state.lock();
        if state.owner != generation() {
            return (0, 0);
        }
        let bytes = state.kept.iter().map(|k| k.segment.capacity() as u64).sum();
        (state.kept.len(), bytes)
    }
}

/// This process's sending cache (workers and parents alike send large buffers).
pub static CACHE: SegmentCache = SegmentCache::new(1 << 30, 32);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::Mapping;

    fn receive(segment: &OutSegment) -> Mapping {
        Mapping::new(crate::os::borrow(segment)).unwrap()
    }

    #[test]
    fn a_lasting_segment_is_read_copy_on_write_by_each_process() {
        let a = vec![7u8; 3 * PAGE_PHASE + 5];
        let b = vec![9u8; 100];
        let (segment, offsets) = OutSegment::filled(&[&a, &b]).unwrap();
        let readers = [0, 1].map(|_| {
            let region = Region::map_copy_on_write(crate::os::borrow(&segment)).unwrap();
            region.populate();
            region
        });
        // SAFETY: offsets and lengths lie within the mappings, owned by this test.
        let bytes = |region: &Region, offset: usize, len: usize| unsafe {
            std::slice::from_raw_parts(region.as_ptr().add(offset), len).to_vec()
        };
        // SAFETY: a write within the first reader's private mapping.
        unsafe { *readers[0].as_ptr().add(offsets[1]) = 1 };
        assert_eq!(bytes(&readers[0], offsets[1], 2), [1, 9]);
        assert_eq!(bytes(&readers[1], offsets[0], a.len()), a);
        assert_eq!(
            bytes(&readers[1], offsets[1], b.len()),
            b,
            "the write stayed private"
        );
        let fresh = Region::map_copy_on_write(crate::os::borrow(&segment)).unwrap();
        assert_eq!(bytes(&fresh, offsets[1], b.len()), b);
    }

    #[test]
    fn buffers_arrive_intact_at_their_place_within_a_page() {
        let cache = SegmentCache::new(1 << 30, 8);
        let a = vec![1u8; 100];
        let b = vec![2u8; 5000];
        // Sources at various places within a page: its start, just past the header,
        // near its end.
        let page = vec![3u8; 3 * PAGE_PHASE];
        let at = |phase: usize| {
            let start = (PAGE_PHASE - page.as_ptr() as usize % PAGE_PHASE) % PAGE_PHASE;
            &page[start + phase..start + phase + 100]
        };
        let buffers: [&[u8]; 5] = [&a, &b, at(0), at(SEGMENT_HEADER_LEN + 1), at(4095 - 100)];
        let (segment, offsets) = cache.write(&buffers).unwrap();
        let mut end = SEGMENT_HEADER_LEN;
        for (buffer, &offset) in buffers.iter().zip(&offsets) {
            assert_eq!(offset % PAGE_PHASE, buffer.as_ptr() as usize % PAGE_PHASE);
            assert!(
                offset >= end && offset < end + PAGE_PHASE,
                "no overlap, little padding"
            );
            end = offset + buffer.len();
        }
        let mapping = receive(&segment);
        assert_eq!(mapping.as_ptr() as usize % PAGE_PHASE, 0);
        for (buffer, &offset) in buffers.iter().zip(&offsets) {
            // SAFETY: the offsets and lengths lie within the mapping.
            let got =
                unsafe { std::slice::from_raw_parts(mapping.as_ptr().add(offset), buffer.len()) };
            assert_eq!(got, *buffer);
        }
        assert_eq!(segment.capacity() % page_size(), 0);
    }

    #[test]
    fn a_segment_is_written_again_only_once_free_and_unreferenced() {
        let cache = SegmentCache::new(1 << 30, 8);
        let data = vec![7u8; 200_000];
        let (first, _) = cache.write(&[&data]).unwrap();
        let mapping = receive(&first);
        let first_ptr = first.region.as_ptr();
        drop(first);
        // Still mapped by its receiver: a new write takes another segment.
        let (second, _) = cache.write(&[&data]).unwrap();
        assert_ne!(second.region.as_ptr(), first_ptr);
        drop(second);
        drop(mapping); // FREE now
        let (third, _) = cache.write(&[&data]).unwrap();
        assert!(third.region.as_ptr() == first_ptr || cache.usage().0 == 2);
        // A FREE segment a task still holds is not written again either.
        let held = third.clone();
        drop(receive(&third));
        drop(third);
        let (fourth, _) = cache.write(&[&data]).unwrap();
        assert_ne!(fourth.region.as_ptr(), held.region.as_ptr());
    }

    #[test]
    fn the_cache_keeps_within_its_limits() {
        let cache = SegmentCache::new(3 * 1024 * 1024, 2);
        let data = vec![0u8; 1024 * 1024];
        for _ in 0..5 {
            drop(cache.write(&[&data]).unwrap()); // never released: new each time
        }
        let (count, bytes) = cache.usage();
        assert!(count <= 2 && bytes <= 3 * 1024 * 1024, "{count} {bytes}");
        cache.set_limits(0, 0);
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn segments_are_sized_to_their_payload() {
        let cache = SegmentCache::new(1 << 30, 8);
        let (segment, _) = cache.write(&[&vec![0u8; 200 * 1024]]).unwrap();
        // The payload, its header, room for it at any place within a page, rounded
        // up to a page.
        assert!(
            segment.capacity() < 200 * 1024 + SEGMENT_HEADER_LEN + 2 * PAGE_PHASE + page_size()
        );
    }
}
