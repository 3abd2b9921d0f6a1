//! Reading frames from a non-blocking descriptor as bytes arrive.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};

use super::{recv_with_fd, Attached, Frame, Header, Received, HAS_FD, HEADER_LEN};

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
    ///
    /// A read that returns less than it had room for took all the socket held: the
    /// kernel cuts a read short only after a descriptor (and never here for another
    /// writer: the sockets do not pass credentials). Then nothing more is asked,
    /// sparing the read that would only hear EAGAIN; what comes later, poll(2) reports.
    pub fn read_available(&mut self, fd: RawFd) -> ReadOutcome {
        let mut frames = Vec::new();
        let mut drained = false;
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
                    Ok(n) => {
                        self.partial = Some((header, body, filled + n));
                        return self.outcome(frames, false); // short: drained
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.partial = Some((header, body, filled));
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
