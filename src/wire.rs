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

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

pub const HEADER_LEN: usize = 24;

/// Every kind of message, on every channel. Defined here only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// Manager to worker: run this task (body: pickled call; descriptor: its segment).
    Task = 1,
    /// Manager to worker, first message: settings and the pickled initializer.
    Init = 2,
    /// Worker to manager: initialized, ready for tasks. Template to manager: ready to fork.
    Ready = 3,
    /// Worker to manager: the initializer failed; the body says why. The worker exits.
    InitFailed = 4,
    /// Worker to manager: about to exit on its own (memory growth); send nothing more.
    Retiring = 5,
    /// Manager to template: fork a worker on the attached socket.
    Fork = 6,
    /// Template to manager: forked; the task id field is the new worker's pid.
    Forked = 7,
    /// Template to manager: a worker exited; task id = pid, body = exit code (i64 LE).
    Exited = 8,
    /// Worker to manager: the outcome of a task (descriptor: its segment).
    Result = 9,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Task,
        Kind::Init,
        Kind::Ready,
        Kind::InitFailed,
        Kind::Retiring,
        Kind::Fork,
        Kind::Forked,
        Kind::Exited,
        Kind::Result,
    ];

    pub fn from_u32(raw: u32) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u32 == raw)
    }

    /// The name the Python side knows it by (`loky._core.KIND_...`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Task => "KIND_TASK",
            Kind::Init => "KIND_INIT",
            Kind::Ready => "KIND_READY",
            Kind::InitFailed => "KIND_INIT_FAILED",
            Kind::Retiring => "KIND_RETIRING",
            Kind::Fork => "KIND_FORK",
            Kind::Forked => "KIND_FORKED",
            Kind::Exited => "KIND_EXITED",
            Kind::Result => "KIND_RESULT",
        }
    }
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

/// The descriptor that came with a received frame.
#[derive(Debug)]
pub enum Attached {
    None,
    Fd(OwnedFd),
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

/// Reads frames from a non-blocking descriptor as bytes arrive.
pub struct FrameReader {
    stage: Vec<u8>,
    start: usize,
    end: usize,
    /// A frame whose body is being read directly into its own buffer.
    partial: Option<(Header, Vec<u8>, usize)>,
    /// Descriptors received, in order, for the frames flagged HAS_FD (None: dropped by
    /// the kernel).
    fds: VecDeque<Option<OwnedFd>>,
    /// Set once the framing broke; the reader stops there.
    corrupt: Option<String>,
}

const STAGE_LEN: usize = 256 * 1024;

fn read_into(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a valid writable slice of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// What one `read_available` call found.
pub struct ReadOutcome {
    pub frames: Vec<Frame>,
    /// The peer closed its end (or the channel failed).
    pub closed: bool,
    /// The peer broke the framing: what was wrong. Nothing more is read.
    pub corrupt: Option<String>,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            stage: vec![0u8; STAGE_LEN],
            start: 0,
            end: 0,
            partial: None,
            fds: VecDeque::new(),
            corrupt: None,
        }
    }
}

/// Frames longer than this are taken for garbage (1 TiB).
const MAX_FRAME_LEN: u64 = 1 << 40;

impl FrameReader {
    /// Read everything available without blocking and return the complete frames.
    pub fn read_available(&mut self, fd: RawFd) -> ReadOutcome {
        let mut frames = Vec::new();
        loop {
            if self.corrupt.is_some() {
                return self.outcome(frames, true);
            }
            if let Some((header, mut body, filled)) = self.partial.take() {
                // Large body: read straight into it.
                // Only this body's bytes: no later frame (nor its descriptor) is touched.
                match read_into(fd, &mut body[filled..]) {
                    Ok(0) => return self.outcome(frames, true),
                    Ok(n) if filled + n == body.len() => {
                        let fd = self.take_fd(&header);
                        frames.push(Frame { header, body, fd })
                    }
                    Ok(n) => self.partial = Some((header, body, filled + n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.partial = Some((header, body, filled));
                        return self.outcome(frames, false);
                    }
                    Err(_) => return self.outcome(frames, true),
                }
                continue;
            }
            self.parse_staged(&mut frames);
            if self.partial.is_some() {
                continue;
            }
            // Compact, then refill the staging buffer.
            if self.start > 0 {
                self.stage.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match recv_with_fd(fd, &mut self.stage[self.end..]) {
                Ok(Received { len: 0, .. }) => return self.outcome(frames, true),
                Ok(received) => {
                    self.end += received.len;
                    if received.fd.is_some() || received.dropped {
                        self.fds.push_back(received.fd);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.outcome(frames, false)
                }
                Err(_) => return self.outcome(frames, true),
            }
        }
    }

    fn outcome(&self, frames: Vec<Frame>, closed: bool) -> ReadOutcome {
        ReadOutcome {
            frames,
            closed,
            corrupt: self.corrupt.clone(),
        }
    }

    fn take_fd(&mut self, header: &Header) -> Attached {
        if header.flags & HAS_FD == 0 {
            return Attached::None;
        }
        match self.fds.pop_front() {
            Some(Some(fd)) => Attached::Fd(fd),
            _ => Attached::Dropped,
        }
    }

    /// Take complete frames out of the staging buffer; start a partial one if a body
    /// does not fit.
    fn parse_staged(&mut self, frames: &mut Vec<Frame>) {
        while self.end - self.start >= HEADER_LEN {
            let header = Header::decode(&self.stage[self.start..self.start + HEADER_LEN]);
            if header.flags & !HAS_FD != 0 || header.len > MAX_FRAME_LEN {
                self.corrupt = Some(format!("malformed frame header {header:?}"));
                return;
            }
            if header.flags & HAS_FD != 0 && self.fds.is_empty() {
                self.corrupt = Some("a frame announced a descriptor that did not come".into());
                return;
            }
            let body_start = self.start + HEADER_LEN;
            let available = self.end - body_start;
            let len = header.len as usize;
            if available >= len {
                let body = self.stage[body_start..body_start + len].to_vec();
                self.start = body_start + len;
                let fd = self.take_fd(&header);
                frames.push(Frame { header, body, fd });
            } else if HEADER_LEN + len <= self.stage.len() {
                return; // fits in the stage once more bytes arrive
            } else {
                let mut body = Vec::new();
                if body.try_reserve_exact(len).is_err() {
                    self.corrupt = Some(format!("cannot allocate a frame of {len} bytes"));
                    return;
                }
                body.resize(len, 0);
                body[..available].copy_from_slice(&self.stage[body_start..self.end]);
                self.start = 0;
                self.end = 0;
                self.partial = Some((header, body, available));
                return;
            }
        }
    }
}

/// The bytes of an outgoing body: a Rust buffer, or a Python bytes object kept alive
/// without a copy.
pub type Body = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A descriptor to pass with a frame; the sender keeps its own until the frame is out.
pub type Attachment = Arc<dyn AsFd + Send + Sync>;

pub fn empty_body() -> Body {
    Arc::new(Vec::<u8>::new())
}

/// One outgoing frame: its header, its body (shared with the task table so a task can
/// be re-sent elsewhere if its worker dies before running it) and optionally a
/// descriptor that travels with its first byte (SCM_RIGHTS).
pub struct OutFrame {
    header: [u8; HEADER_LEN],
    body: Body,
    fd: Option<Attachment>,
}

impl OutFrame {
    pub fn new(task_id: u64, kind: Kind, body: Body) -> OutFrame {
        let header = Header {
            len: (*body).as_ref().len() as u64,
            task_id,
            kind: kind as u32,
            flags: 0,
        };
        OutFrame {
            header: header.encode(),
            body,
            fd: None,
        }
    }

    pub fn with_fd(mut self, fd: Attachment) -> OutFrame {
        let mut header = Header::decode(&self.header);
        header.flags |= HAS_FD;
        self.header = header.encode();
        self.fd = Some(fd);
        self
    }

    fn body(&self) -> &[u8] {
        (*self.body).as_ref()
    }

    fn len(&self) -> usize {
        HEADER_LEN + self.body().len()
    }
}

/// Frames waiting to be written to a non-blocking descriptor.
#[derive(Default)]
pub struct FrameWriter {
    queue: VecDeque<OutFrame>,
    /// Bytes of the first queued frame already written.
    written: usize,
}

const MAX_IOVECS: usize = 64;

impl FrameWriter {
    pub fn push(&mut self, frame: OutFrame) {
        self.queue.push_back(frame);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Write as much as the descriptor takes. Returns Err on a broken channel.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<()> {
        while !self.queue.is_empty() {
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(MAX_IOVECS);
            let mut skip = self.written;
            // A frame carrying a descriptor starts a call of its own, so the descriptor
            // arrives with that frame's first byte.
            let passing = if self.written == 0 {
                self.queue[0].fd.as_ref().map(|fd| fd.as_fd().as_raw_fd())
            } else {
                None
            };
            for (i, frame) in self.queue.iter().enumerate() {
                if i > 0 && (passing.is_some() || frame.fd.is_some()) {
                    break;
                }
                for part in [&frame.header[..], frame.body()] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    let rest = &part[skip..];
                    skip = 0;
                    iov.push(libc::iovec {
                        iov_base: rest.as_ptr() as *mut libc::c_void,
                        iov_len: rest.len(),
                    });
                }
                if iov.len() >= MAX_IOVECS - 1 {
                    break;
                }
            }
            let n = send_iov(fd, &iov, passing);
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(()),
                    _ => return Err(err),
                }
            }
            self.advance(n as usize);
        }
        Ok(())
    }

    fn advance(&mut self, mut n: usize) {
        if n > 0 {
            // Sent with the first byte: the peer holds its own copy now.
            self.queue[0].fd = None;
        }
        while n > 0 {
            let remaining = self.queue[0].len() - self.written;
            if n >= remaining {
                n -= remaining;
                self.written = 0;
                self.queue.pop_front();
            } else {
                self.written += n;
                n = 0;
            }
        }
    }
}

/// Room for one descriptor's control message, on the stack (aligned for cmsghdr):
/// the buffer and the length to declare.
fn control_buffer() -> ([u64; 4], usize) {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    assert!(space <= std::mem::size_of::<[u64; 4]>());
    ([0u64; 4], space)
}

/// sendmsg(2) of `iov`, with a descriptor attached if given. MSG_NOSIGNAL: a dead peer
/// is an error to handle, not a SIGPIPE.
pub fn send_iov(sock: RawFd, iov: &[libc::iovec], fd: Option<RawFd>) -> isize {
    let (mut control, space) = control_buffer();
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call,
    // and the control buffer is large enough for one descriptor (CMSG_SPACE).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len();
        let Some(fd) = fd else {
            return libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    }
}

/// What one recvmsg(2) brought.
pub struct Received {
    pub len: usize,
    pub fd: Option<OwnedFd>,
    /// A descriptor came and the kernel dropped it (`MSG_CTRUNC`): no room for it here.
    pub dropped: bool,
}

/// recvmsg(2) into `buf`, accepting at most one descriptor (close-on-exec).
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let (mut control, space) = control_buffer();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as in send_iov; the kernel writes at most msg_controllen bytes of
    // control data and at most buf.len() bytes of data.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fd = None;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        {
            let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd);
            fd = Some(OwnedFd::from_raw_fd(raw));
        }
        Ok(Received {
            len: n as usize,
            dropped: fd.is_none() && msg.msg_flags & libc::MSG_CTRUNC != 0,
            fd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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
    fn every_kind_round_trips_through_its_number() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(Kind::from_u32(0), None);
        let names: std::collections::HashSet<_> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), Kind::ALL.len());
    }

    #[test]
    fn reports_closed_peer() {
        let (a, b) = pair();
        drop(a);
        let mut reader = FrameReader::default();
        assert!(reader.read_available(b.as_raw_fd()).closed);
    }
}
