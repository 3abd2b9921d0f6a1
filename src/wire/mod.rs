//! The framing on every channel: between the manager and a worker, the manager and the
//! template, read and written by the same code on both sides.
//!
//! Every message is a 24-byte little-endian header followed by its body:
//!
//! ```text
//!   u64 body length | u64 task id | u32 kind | u32 flags | body ...
//! ```
//!
//! The body is opaque here (pickles, laid out by the Python side). Lengths are 64-bit,
//! so a body may exceed 4 GiB. Bodies are read straight into their final buffer and
//! written with vectored I/O from the caller's memory. A frame flagged `HAS_FD` carries
//! one descriptor (a shared segment, or a new worker's socket), passed with its first
//! byte (SCM_RIGHTS).
//!
//! A receiver at its descriptor limit gets the bytes of such a frame but not the
//! descriptor: the kernel drops it and flags the message `MSG_CTRUNC`. The reader then
//! hands the frame over as `Attached::Dropped`, so the consumer can say what ran out
//! instead of mistaking it for a broken protocol.

mod out;
#[cfg(unix)]
mod posix;
#[cfg(unix)]
mod reader;
#[cfg(windows)]
mod stream;
#[cfg(unix)]
mod writer;

use std::sync::Arc;

use crate::os::OwnedObject;
use crate::platform::ExitStatus;

pub use out::{empty_body, Attachment, Body, OutFrame};
#[cfg(unix)]
pub use posix::{recv_with_fd, send_iov, Received};
#[cfg(unix)]
pub use reader::FrameReader;
#[cfg(windows)]
pub use stream::{encode_prefix, StreamReader};
#[cfg(unix)]
pub use writer::FrameWriter;

pub const HEADER_LEN: usize = 24;

/// Every kind of message, on every channel. Defined here only; the numbers are the
/// protocol (a test writes a raw RESULT header from them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// Manager to worker: run this task (body: pickled call; descriptor: its segment).
    Task = 1,
    /// Manager to worker, first message: settings and the pickled initializer
    /// (descriptor: the worker's task ledger, see `crate::ledger`).
    Init = 2,
    /// Worker to manager: initialized, ready for tasks. Template to manager: ready to fork.
    Ready = 3,
    /// Worker to manager: it cannot get ready; the body says why. The worker exits.
    InitFailed = 4,
    /// Worker to manager: about to exit on its own (memory growth); send nothing more.
    Retiring = 5,
    /// Manager to template: fork a worker on the attached socket.
    Fork = 6,
    /// Template to manager: forked; the task id field is the new worker's pid.
    Forked = 7,
    /// Template to manager: a worker exited (`encode_exited`).
    Exited = 8,
    /// Worker to manager: the outcome of a task (descriptor: its segment).
    Result = 9,
    /// Manager to worker or template: leave once everything sent before is answered,
    /// as the end of the stream says too (a channel with no half-close needs this).
    Exit = 10,
    /// Worker to manager: a log record, pickled by the Python side (empty: none, only
    /// a count); the task id field counts the records the worker dropped before it
    /// (`encode_log`).
    Log = 11,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Task,
        Kind::Init,
        Kind::Ready,
        Kind::InitFailed,
        Kind::Retiring,
        Kind::Fork,
        Kind::Forked,
        Kind::Exited,
        Kind::Result,
        Kind::Exit,
        Kind::Log,
    ];

    pub fn from_u32(raw: u32) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u32 == raw)
    }
}

/// Template to manager: worker `pid` exited with `status`. The task id field holds the
/// pid; the body the exit code (i64, little-endian), or nothing when it is unknown.
#[cfg(unix)]
pub fn encode_exited(pid: i32, status: ExitStatus) -> OutFrame {
    let body = status.map_or_else(Vec::new, |code| code.to_le_bytes().to_vec());
    OutFrame::new(pid as u32 as u64, Kind::Exited, Arc::new(body))
}

/// The (pid, exit status) of an EXITED frame (see `encode_exited`).
pub fn decode_exited(frame: &Frame) -> (i32, ExitStatus) {
    let code = frame
        .body
        .get(..8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
    (frame.header.task_id as i32, code)
}

/// A RETIRING message: the worker leaves on its own because its memory grew
/// (`over_limit` false) or passed the pool's limit (true).
pub fn encode_retiring(over_limit: bool) -> OutFrame {
    OutFrame::new(0, Kind::Retiring, Arc::new(vec![u8::from(over_limit)]))
}

/// Whether a RETIRING message says the worker passed the pool's memory limit.
pub fn decode_retiring(frame: &Frame) -> bool {
    frame.body.first() == Some(&1)
}

/// A LOG message: a record (empty: none), after `dropped` records the worker could not
/// keep.
pub fn encode_log(dropped: u64, record: Body) -> OutFrame {
    OutFrame::new(dropped, Kind::Log, record)
}

/// The (records dropped before it, record) of a LOG message (see `encode_log`).
pub fn decode_log(frame: Frame) -> (u64, Vec<u8>) {
    (frame.header.task_id, frame.body)
}

/// Header flag: a descriptor travels with this frame.
pub const HAS_FD: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u64,
    pub task_id: u64,
    pub kind: u32,
    pub flags: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..16].copy_from_slice(&self.task_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.kind.to_le_bytes());
        out[20..24].copy_from_slice(&self.flags.to_le_bytes());
        out
    }

    pub fn decode(raw: &[u8]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().unwrap());
        Header {
            len: u64_at(0),
            task_id: u64_at(8),
            kind: u32::from_le_bytes(raw[16..20].try_into().unwrap()),
            flags: u32::from_le_bytes(raw[20..24].try_into().unwrap()),
        }
    }
}

/// The descriptor (a handle on Windows) that came with a received frame.
#[derive(Debug)]
pub enum Attached {
    None,
    Fd(OwnedObject),
    /// The frame announced one, and the kernel dropped it (`MSG_CTRUNC`): this process
    /// had no descriptor left to receive it into.
    Dropped,
}

#[derive(Debug)]
pub struct Frame {
    pub header: Header,
    pub body: Vec<u8>,
    pub fd: Attached,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_keeps_64_bit_lengths() {
        let h = Header {
            len: 5 << 32,
            task_id: u64::MAX - 1,
            kind: Kind::Ready as u32,
            flags: HAS_FD,
        };
        assert_eq!(Header::decode(&h.encode()), h);
    }

    #[test]
    fn every_kind_round_trips_through_its_number() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(Kind::from_u32(0), None);
        // tests/helpers.py writes a raw RESULT header with this number.
        assert_eq!(Kind::Result as u32, 9);
    }
}

#[cfg(all(test, unix))]
mod socket_tests {
    use super::*;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::Arc;

    fn pair() -> (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn many_small_frames_and_one_large_arrive_intact() {
        let (a, b) = pair();
        let mut writer = FrameWriter::default();
        let mut reader = FrameReader::default();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for id in 0..100u64 {
            writer.push(OutFrame::new(
                id,
                Kind::Task,
                Arc::new(vec![id as u8; id as usize]),
            ));
        }
        writer.push(OutFrame::new(1000, Kind::Task, Arc::new(big.clone())));
        let mut got = Vec::new();
        while got.len() < 101 {
            writer.flush(a.as_raw_fd()).unwrap();
            let out = reader.read_available(b.as_raw_fd());
            assert!(!out.closed);
            got.extend(out.frames);
        }
        assert!(writer.is_empty());
        for (id, frame) in got.iter().take(100).enumerate() {
            assert_eq!(frame.header.task_id, id as u64);
            assert_eq!(frame.body, vec![id as u8; id]);
        }
        assert_eq!(got[100].header.task_id, 1000);
        assert_eq!(got[100].body, big);
    }

    #[test]
    fn descriptor_travels_with_its_frame() {
        let (a, b) = pair();
        let (x, _y) = pair();
        let mut writer = FrameWriter::default();
        writer.push(OutFrame::new(1, Kind::Task, Arc::new(vec![1, 2, 3])));
        writer.push(
            OutFrame::new(2, Kind::Task, Arc::new(vec![])).with_fd(Arc::new(OwnedFd::from(x))),
        );
        writer.flush(a.as_raw_fd()).unwrap();
        assert!(writer.is_empty());
        let mut buf = [0u8; HEADER_LEN + 3];
        let got = recv_with_fd(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((got.len, got.fd.is_some()), (HEADER_LEN + 3, false));
        let mut buf = [0u8; HEADER_LEN];
        let got = recv_with_fd(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(got.len, HEADER_LEN);
        assert_eq!(Header::decode(&buf).task_id, 2);
        assert_eq!(Header::decode(&buf).flags, HAS_FD);
        assert!(got.fd.is_some() && !got.dropped);
    }

    #[test]
    fn reader_pairs_descriptors_with_their_frames() {
        let (a, b) = pair();
        let (x, _y) = pair();
        let mut writer = FrameWriter::default();
        writer.push(OutFrame::new(1, Kind::Task, Arc::new(vec![7; 10])));
        writer.push(
            OutFrame::new(2, Kind::Task, Arc::new(vec![8; 10])).with_fd(Arc::new(OwnedFd::from(x))),
        );
        writer.push(OutFrame::new(3, Kind::Task, Arc::new(vec![9; 10])));
        writer.flush(a.as_raw_fd()).unwrap();
        let mut reader = FrameReader::default();
        let mut frames = Vec::new();
        while frames.len() < 3 {
            frames.extend(reader.read_available(b.as_raw_fd()).frames);
        }
        let with_fd: Vec<bool> = frames
            .iter()
            .map(|f| matches!(f.fd, Attached::Fd(_)))
            .collect();
        assert_eq!(with_fd, vec![false, true, false]);
    }

    #[test]
    fn one_read_takes_everything_written_before_it_across_descriptors() {
        // What a worker wrote before it exited is read by one call (the manager reads
        // once more after an exit), though the kernel cuts reads after a descriptor.
        let (a, b) = pair();
        let mut writer = FrameWriter::default();
        for id in 0..6u64 {
            let frame = OutFrame::new(id, Kind::Result, Arc::new(vec![id as u8; 100]));
            let frame = if id % 2 == 1 {
                let (x, _y) = pair();
                frame.with_fd(Arc::new(OwnedFd::from(x)))
            } else {
                frame
            };
            writer.push(frame);
        }
        writer.flush(a.as_raw_fd()).unwrap();
        assert!(writer.is_empty());
        drop(a);
        let mut reader = FrameReader::default();
        let out = reader.read_available(b.as_raw_fd());
        let ids: Vec<u64> = out.frames.iter().map(|f| f.header.task_id).collect();
        assert_eq!(ids, (0..6).collect::<Vec<_>>());
        let with_fd: Vec<bool> = out
            .frames
            .iter()
            .map(|f| matches!(f.fd, Attached::Fd(_)))
            .collect();
        assert_eq!(with_fd, [false, true, false, true, false, true]);
        // The peer's end, closed: seen by the next read at the latest.
        assert!(out.closed || reader.read_available(b.as_raw_fd()).closed);
    }

    #[test]
    fn exit_statuses_round_trip_through_an_exited_frame() {
        let (a, b) = pair();
        let statuses = [Some(0), Some(1), Some(255), Some(-9), None];
        let mut writer = FrameWriter::default();
        for (i, &status) in statuses.iter().enumerate() {
            writer.push(encode_exited(1000 + i as i32, status));
        }
        writer.push(encode_exited(i32::MAX, Some(i64::MIN)));
        writer.flush(a.as_raw_fd()).unwrap();
        let mut reader = FrameReader::default();
        let mut frames = Vec::new();
        while frames.len() < statuses.len() + 1 {
            frames.extend(reader.read_available(b.as_raw_fd()).frames);
        }
        for (i, (frame, &status)) in frames.iter().zip(&statuses).enumerate() {
            assert_eq!(frame.header.kind, Kind::Exited as u32);
            assert_eq!(decode_exited(frame), (1000 + i as i32, status));
        }
        assert_eq!(decode_exited(&frames[5]), (i32::MAX, Some(i64::MIN)));
    }

    #[test]
    fn reports_closed_peer() {
        let (a, b) = pair();
        drop(a);
        let mut reader = FrameReader::default();
        assert!(reader.read_available(b.as_raw_fd()).closed);
    }
}
