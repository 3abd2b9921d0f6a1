//! Writing frames to a non-blocking descriptor, vectored, with their descriptors.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use super::{send_iov, Header, Kind, HAS_FD, HEADER_LEN};
use crate::sys::check;

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
            match check(send_iov(fd, &iov, passing)) {
                Ok(n) => self.advance(n as usize),
                Err(err) => match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(()),
                    _ => return Err(err),
                },
            }
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
