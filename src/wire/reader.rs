//! Reading frames from a non-blocking descriptor as bytes arrive.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Instant;

use crate::sys::check;

use super::{recv_with_fd, Attached, Frame, Header, Received, HAS_FD, HEADER_LEN};

pub struct FrameReader {
    stage: Vec<u8>,
    start: usize,
    end: usize,
    /// A frame whose body is being read directly into its own buffer: its length is
    /// what came so far, its capacity the length announced (untouched until it comes,
    /// so a header announcing much and sending nothing costs no memory).
    partial: Option<(Header, Vec<u8>)>,
    /// Descriptors received, in order, for the frames flagged HAS_FD (None: dropped by
    /// the kernel).
    fds: VecDeque<Option<OwnedFd>>,
    /// Set once the framing broke; the reader stops there.
    corrupt: Option<String>,
    /// While a frame is incomplete: when its last bytes came (see `stalled_since`).
    last_progress: Option<Instant>,
    /// Bytes came during the current `read_available` call.
    progressed: bool,
}

const STAGE_LEN: usize = 256 * 1024;

/// Read into the spare capacity of `body`, extending it by what came.
fn read_into(fd: RawFd, body: &mut Vec<u8>) -> io::Result<usize> {
    let spare = body.spare_capacity_mut();
    loop {
        // SAFETY: `spare` is writable memory of spare.len() bytes, owned by `body`.
        match check(unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) }) {
            Ok(n) => {
                // SAFETY: read(2) initialized the first n bytes of the spare capacity.
                unsafe { body.set_len(body.len() + n as usize) };
                return Ok(n as usize);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
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
            last_progress: None,
            progressed: false,
        }
    }
}

/// Frames longer than this are taken for garbage (1 TiB).
const MAX_FRAME_LEN: u64 = 1 << 40;

impl FrameReader {
    /// Read everything available without blocking and return the complete frames.
    ///
    /// A read that returns less than it had room for took all the socket held: the
    /// kernel cuts a read short only after a descriptor (and never here for another
    /// writer: the sockets do not pass credentials). Then nothing more is asked,
    /// sparing the read that would only hear EAGAIN; what comes later, poll(2) reports.
    pub fn read_available(&mut self, fd: RawFd) -> ReadOutcome {
        let mut frames = Vec::new();
        let mut drained = false;
        self.progressed = false;
        loop {
            if self.corrupt.is_some() {
                return self.outcome(frames, true);
            }
            if let Some((header, mut body)) = self.partial.take() {
                // Large body: read straight into it.
                // Only this body's bytes: no later frame (nor its descriptor) is touched.
                let read = read_into(fd, &mut body);
                self.progressed |= matches!(read, Ok(n) if n > 0);
                match read {
                    Ok(0) => return self.outcome(frames, true),
                    Ok(_) if body.len() as u64 == header.len => {
                        let fd = self.take_fd(&header);
                        frames.push(Frame { header, body, fd })
                    }
                    Ok(_) => {
                        self.partial = Some((header, body));
                        return self.outcome(frames, false); // short: drained
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.partial = Some((header, body));
                        return self.outcome(frames, false);
                    }
                    Err(_) => return self.outcome(frames, true),
                }
                continue;
            }
            self.parse_staged(&mut frames);
            if drained {
                return self.outcome(frames, false);
            }
            if self.partial.is_some() {
                continue;
            }
            // Compact, then refill the staging buffer.
            if self.start > 0 {
                self.stage.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let room = self.stage.len() - self.end;
            match recv_with_fd(fd, &mut self.stage[self.end..]) {
                Ok(Received { len: 0, .. }) => return self.outcome(frames, true),
                Ok(received) => {
                    self.progressed = true;
                    drained = received.len < room && received.fd.is_none() && !received.dropped;
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

    /// While a frame has begun and not completed: since when no byte of it came. A peer
    /// that writes its frames whole completes them at the pace the reader reads; one
    /// stalled for long wrote a header and never its body.
    pub fn stalled_since(&self) -> Option<Instant> {
        self.last_progress
    }

    fn outcome(&mut self, frames: Vec<Frame>, closed: bool) -> ReadOutcome {
        let incomplete = self.partial.is_some() || self.end > self.start;
        self.last_progress = match self.last_progress {
            _ if !incomplete => None,
            Some(since) if !self.progressed => Some(since),
            _ => Some(Instant::now()),
        };
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
                body.extend_from_slice(&self.stage[body_start..self.end]);
                self.start = 0;
                self.end = 0;
                self.partial = Some((header, body));
                return;
            }
        }
    }
}
