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
//! `Region` (`region.rs`) is the one owner of a mapping's address range.
//!
//! On Windows a segment is a section backed by the paging file, and its handle travels
//! instead of a descriptor (duplicated into the receiver by the manager, see
//! `platform/windows/section.rs`); there is no fork() there, so no `fork.rs`.
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

#[cfg(unix)]
mod fork;
mod receive;
mod region;
mod send;

#[cfg(unix)]
pub use fork::{fork_child, fork_parent, fork_prepare};
pub use receive::{Incoming, Mapping};
pub use region::{page_size, Region};
pub use send::{OutSegment, CACHE};

/// Bytes before the first buffer of a segment.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Values of a segment's state word.
pub const SEGMENT_FREE: u64 = 0;
pub const SEGMENT_LENT: u64 = 1;
