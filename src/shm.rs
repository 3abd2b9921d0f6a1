//! Shared-memory segments: how large buffers travel between processes, both sides.
//!
//! ```text
//!  sender                                               receiver
//!  SegmentCache::write(buffers)
//!    reuse a FREE segment that fits, or make one (memfd, mapped)
//!    state := LENT, copy the buffers in
//!  frame + the segment's descriptor (SCM_RIGHTS) ──────► Mapping::new(fd): map it, close fd
//!                                                        views of the mapping (arrays...)
//!  keeps its mapping; writes it again once FREE ◄─────── last view gone: state := FREE
//! ```
//!
//! The state word is the first of the `SEGMENT_HEADER_LEN` bytes before the buffers.
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
//!   that mapped them, see `fork`), and after `os.fork()` (the `fork_*` hooks) they
//!   become private copies of what they held at fork time (snapshots taken just
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
//! all; a segment unused for `IDLE` is let go at the next write. Segments are sized to
//! their payload, plus a page per buffer (see `PAGE_PHASE`), rounded up to a page.
//! A new segment's pages are reserved before it is mapped, so that a full tmpfs is an
//! error and not a SIGBUS in the first process that writes it. When no segment can be
//! made (descriptors or memory ran out), `write` fails and the caller sends the
//! buffers in-band instead.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Bytes before the first buffer of a segment.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Values of a segment's state word.
pub const SEGMENT_FREE: u64 = 0;
pub const SEGMENT_LENT: u64 = 1;
/// A buffer lies at the same place within a 4 KiB page as its source (the segment
/// starts on a page): large copies run at full speed whatever the source's alignment
/// (glibc's memcpy of a large buffer to a destination a little ahead of its source
/// within a page runs several times slower: 65 ms instead of 17 for 256 MiB on an AMD
/// EPYC), and the receiver's buffer is exactly as aligned as the sender's was.
const PAGE_PHASE: usize = 4096;
/// A kept segment not written again for this long is let go at the next write.
const IDLE: Duration = Duration::from_secs(30);

fn page_size() -> usize {
    // SAFETY: sysconf with a valid name has no side effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

use crate::fork::generation;

/// mmap(2) of `len` bytes of `fd`, shared and writable.
fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh mapping at an address the kernel picks; no existing memory is
    // affected. The result is checked before use.
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
    Ok(NonNull::new(ptr.cast()).expect("mmap returned null"))
}

/// The state word at the start of a mapping.
///
/// SAFETY (for callers): `ptr` must point to a live mapping of at least
/// `SEGMENT_HEADER_LEN` bytes; mappings are page-aligned, so the word is aligned.
unsafe fn state_word<'a>(ptr: NonNull<u8>) -> &'a AtomicU64 {
    // SAFETY: see the function's contract.
    unsafe { &*(ptr.as_ptr() as *const AtomicU64) }
}

// ---- receiving side --------------------------------------------------------------

/// What this process knows of one live received mapping.
struct Live {
    len: usize,
    /// Made private (in a forked child): it releases nothing.
    private: bool,
    /// A snapshot of its contents taken just before a fork, for the child.
    snapshot: Option<NonNull<u8>>,
}

// SAFETY: plain addresses of mappings this process owns.
unsafe impl Send for Live {}

/// Live received mappings of this process, by base address. Locked across `fork()` by
/// the hooks below, so the child finds it consistent.
static RECEIVED: Mutex<Option<HashMap<usize, Live>>> = Mutex::new(None);

/// A received segment, mapped shared and writable. Holds no descriptor.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Stamp of the process that mapped it: the only one that may release the segment.
    owner: u64,
    /// A segment of buffers (released when dropped), not a ledger.
    releases: bool,
}

// SAFETY: the mapping is plain memory owned by this value; nothing in it is tied to
// the thread that made it.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map the whole segment `fd` (which the caller may close afterwards).
    pub fn new(fd: BorrowedFd<'_>) -> io::Result<Mapping> {
        let mapping = Mapping::map(fd, true)?;
        RECEIVED.lock().get_or_insert_with(HashMap::new).insert(
            mapping.ptr.as_ptr() as usize,
            Live {
                len: mapping.len,
                private: false,
                snapshot: None,
            },
        );
        Ok(mapping)
    }

    fn map(fd: BorrowedFd<'_>, releases: bool) -> io::Result<Mapping> {
        let len = nix::sys::stat::fstat(fd).map_err(io::Error::from)?.st_size as usize;
        if len < SEGMENT_HEADER_LEN {
            return Err(io::Error::other("segment shorter than its header"));
        }
        Ok(Mapping {
            ptr: map_shared(fd, len)?,
            len,
            owner: generation(),
            releases,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Fault every page in now (where the kernel can), so the first reads of the
    /// buffers run at memory speed. Best effort.
    pub fn populate(&self) {
        const MADV_POPULATE_READ: libc::c_int = 22; // Linux 5.14
                                                    // SAFETY: advice on our own live mapping; failure (old kernel) is harmless.
        unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, MADV_POPULATE_READ) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let private = self.releases
            && RECEIVED
                .lock()
                .as_mut()
                .and_then(|live| live.remove(&(self.ptr.as_ptr() as usize)))
                .is_some_and(|live| live.private);
        if self.releases && !private && self.owner == generation() {
            // Nothing here reads the buffers any more: the sender may write them again.
            // SAFETY: the mapping is live and at least a header long.
            unsafe { state_word(self.ptr) }.store(SEGMENT_FREE, Ordering::Release);
        }
        // SAFETY: unmaps exactly the region mapped in `new`; no view of it remains.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

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

// ---- sending side ----------------------------------------------------------------

/// A segment this process writes buffers into and sends.
pub struct OutSegment {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    capacity: usize,
}

// SAFETY: as for Mapping; writes happen only while the cache hands the segment out.
unsafe impl Send for OutSegment {}
unsafe impl Sync for OutSegment {}

impl OutSegment {
    fn create(capacity: usize) -> io::Result<OutSegment> {
        let fd = crate::platform::segment_file()?;
        nix::unistd::ftruncate(&fd, capacity as libc::off_t).map_err(io::Error::from)?;
        // Its pages exist before anything writes them (see `reserve`).
        crate::platform::reserve(fd.as_raw_fd(), capacity)?;
        let ptr = map_shared(fd.as_fd(), capacity)?;
        Ok(OutSegment { fd, ptr, capacity })
    }

    fn state(&self) -> &AtomicU64 {
        // SAFETY: our mapping is live and at least a header long.
        unsafe { state_word(self.ptr) }
    }

    fn is_free(&self) -> bool {
        self.state().load(Ordering::Acquire) == SEGMENT_FREE
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl AsFd for OutSegment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for OutSegment {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly our mapping; the receivers have their own.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.capacity) };
    }
}

/// A worker's ledger: one shared word where the worker records the task it takes to
/// run (its id + 1; `LEDGER_OPEN` before the first; `LEDGER_UNUSED` if the worker
/// never opened it, and then every task counts as taken), so that when it dies the
/// manager knows
/// whether it had started the task at the head of its queue or died before reading
/// it (a task written to the socket of a worker dying idle must run elsewhere, not
/// fail). The manager makes it; the worker maps it from its first message.
pub struct TaskLedger {
    page: OutSegment,
}

impl TaskLedger {
    pub fn new() -> io::Result<TaskLedger> {
        Ok(TaskLedger {
            page: OutSegment::create(page_size())?,
        })
    }

    /// Whether the worker took task `id` (the last task it took, as tasks are taken
    /// in order). A worker that never opened its ledger counts as having taken it.
    pub fn took(&self, id: u64) -> bool {
        match self.page.state().load(Ordering::Acquire) {
            LEDGER_UNUSED => true,
            last => last == id + 1,
        }
    }
}

impl AsFd for TaskLedger {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.page.as_fd()
    }
}

/// Ledger values: never opened by the worker; opened, nothing taken yet.
const LEDGER_UNUSED: u64 = 0;
const LEDGER_OPEN: u64 = u64::MAX;

impl Mapping {
    /// Map a worker's ledger (see `TaskLedger`) and mark it in use: never released,
    /// never snapshot.
    pub fn ledger(fd: BorrowedFd<'_>) -> io::Result<Mapping> {
        let mapping = Mapping::map(fd, false)?;
        // SAFETY: the mapping is live and at least a header long.
        unsafe { state_word(mapping.ptr) }.store(LEDGER_OPEN, Ordering::Release);
        Ok(mapping)
    }

    /// Worker side, on its ledger: task `id` is taken to run now.
    pub fn record_taken(&self, id: u64) {
        // SAFETY: the mapping is live and at least a header long.
        unsafe { state_word(self.ptr) }.store(id + 1, Ordering::Release);
    }
}

/// Where each buffer starts in a segment (see `PAGE_PHASE`), and the segment's size.
pub fn layout(buffers: &[&[u8]]) -> (Vec<usize>, usize) {
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
        for (buffer, &offset) in buffers.iter().zip(&offsets) {
            // SAFETY: the segment holds `size` bytes and the buffers lie within it, at
            // offsets past the header that do not overlap; no receiver maps it now
            // (it was FREE and unreferenced, or is new).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    buffer.as_ptr(),
                    segment.ptr.as_ptr().add(offset),
                    buffer.len(),
                )
            };
        }
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
                let capacity = k.segment.capacity;
                capacity >= size
                    && capacity <= 2 * size
                    && Arc::strong_count(&k.segment) == 1
                    && k.segment.is_free()
            })
            .min_by_key(|(_, k)| k.segment.capacity)
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
        let mut bytes: u64 = state.kept.iter().map(|k| k.segment.capacity as u64).sum();
        while !state.kept.is_empty() && (bytes > max_bytes || state.kept.len() > max_segments) {
            bytes -= state.kept.remove(0).segment.capacity as u64;
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
        let bytes = state.kept.iter().map(|k| k.segment.capacity as u64).sum();
        (state.kept.len(), bytes)
    }
}

/// This process's sending cache (workers and parents alike send large buffers).
pub static CACHE: SegmentCache = SegmentCache::new(1 << 30, 32);

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(segment: &OutSegment) -> Mapping {
        Mapping::new(segment.as_fd()).unwrap()
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
        let first_ptr = first.ptr;
        drop(first);
        // Still mapped by its receiver: a new write takes another segment.
        let (second, _) = cache.write(&[&data]).unwrap();
        assert_ne!(second.ptr, first_ptr);
        drop(second);
        drop(mapping); // FREE now
        let (third, _) = cache.write(&[&data]).unwrap();
        assert!(third.ptr == first_ptr || cache.usage().0 == 2);
        // A FREE segment a task still holds is not written again either.
        let held = third.clone();
        drop(receive(&third));
        drop(third);
        let (fourth, _) = cache.write(&[&data]).unwrap();
        assert_ne!(fourth.ptr, held.ptr);
    }

    #[test]
    fn a_mapping_from_another_process_releases_nothing() {
        let cache = SegmentCache::new(1 << 30, 8);
        let (segment, _) = cache.write(&[&[1u8; 10]]).unwrap();
        let mut mapping = receive(&segment);
        mapping.owner = generation() + 1; // as if inherited through fork()
        drop(mapping);
        assert!(!segment.is_free());
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

    #[test]
    fn a_segment_shorter_than_its_header_is_refused() {
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&fd, 8).unwrap();
        assert!(Mapping::new(fd.as_fd()).is_err());
    }

    #[test]
    fn a_ledger_tells_whether_the_worker_took_a_task() {
        let ledger = TaskLedger::new().unwrap();
        assert!(
            ledger.took(0),
            "a ledger the worker never opened says nothing"
        );
        let worker_side = Mapping::ledger(ledger.as_fd()).unwrap();
        assert!(!ledger.took(0), "opened: nothing taken yet");
        worker_side.record_taken(0);
        assert!(ledger.took(0));
        worker_side.record_taken(7);
        assert!(ledger.took(7) && !ledger.took(8));
        drop(worker_side);
        assert!(
            ledger.took(7),
            "a worker's exit leaves its ledger as it was"
        );
    }

    #[test]
    fn private_copies_keep_their_contents_and_release_nothing() {
        let cache = SegmentCache::new(1 << 30, 8);
        let (segment, offsets) = cache.write(&[&[5u8; 4096]]).unwrap();
        let mapping = receive(&segment);
        let copy = snapshot(mapping.as_ptr(), mapping.len()).unwrap();
        install(copy, mapping.as_ptr(), mapping.len()).unwrap();
        // SAFETY: within both mappings.
        unsafe {
            *segment.ptr.as_ptr().add(offsets[0]) = 9; // the sender writes again
            assert_eq!(*mapping.as_ptr().add(offsets[0]), 5);
        }
    }
}
