//! The blocking end of a channel, as workers and the template use it: the same frame
//! reader and writer as the manager's non-blocking ends, waiting in poll(2) when the
//! socket has nothing to give or no room.
//!
//! The descriptor is made close-on-exec, so the processes a task starts (with
//! `subprocess`, `os.system`...) never inherit it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::wire::{Frame, FrameReader, FrameWriter, OutFrame};

pub struct Channel {
    fd: OwnedFd,
    reader: FrameReader,
    writer: FrameWriter,
    /// Frames read and not yet taken, oldest first.
    queued: VecDeque<Frame>,
    closed: bool,
}

fn set_flags(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; an invalid one only returns an error.
    unsafe {
        let fd_flags = libc::fcntl(fd, libc::F_GETFD);
        let fl_flags = libc::fcntl(fd, libc::F_GETFL);
        if fd_flags < 0
            || fl_flags < 0
            || libc::fcntl(fd, libc::F_SETFD, fd_flags | libc::FD_CLOEXEC) < 0
            || libc::fcntl(fd, libc::F_SETFL, fl_flags | libc::O_NONBLOCK) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Wait until `fd` is ready for `events` (EINTR retried).
fn wait_for(fd: RawFd, events: libc::c_short) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: polls one live pollfd.
        if unsafe { libc::poll(&mut pfd, 1, -1) } >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

impl Channel {
    /// Take ownership of the socket `fd`.
    ///
    /// SAFETY (for callers): `fd` must be an open socket that nothing else closes.
    pub unsafe fn from_raw(fd: RawFd) -> io::Result<Channel> {
        set_flags(fd)?;
        Ok(Channel {
            // SAFETY: the caller hands the descriptor over.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            reader: FrameReader::default(),
            writer: FrameWriter::default(),
            queued: VecDeque::new(),
            closed: false,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether a frame is waiting to be taken without a read.
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// The next frame, waiting for it as long as needed; None once the peer closed (or
    /// broke the framing, which the peer's side reports).
    pub fn recv(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.queued.pop_front() {
                return Ok(Some(frame));
            }
            if self.closed {
                return Ok(None);
            }
            let outcome = self.reader.read_available(self.fd());
            self.queued.extend(outcome.frames);
            if outcome.closed || outcome.corrupt.is_some() {
                self.closed = true;
            } else if self.queued.is_empty() {
                wait_for(self.fd(), libc::POLLIN)?;
            }
        }
    }

    /// Write `frame` completely, waiting for room as needed.
    pub fn send(&mut self, frame: OutFrame) -> io::Result<()> {
        self.writer.push(frame);
        loop {
            self.writer.flush(self.fd())?;
            if self.writer.is_empty() {
                return Ok(());
            }
            wait_for(self.fd(), libc::POLLOUT)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Attached, Kind};
    use std::sync::Arc;

    #[test]
    fn frames_cross_between_two_blocking_ends_in_order() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: the descriptors are handed over to the channels.
        let (mut a, mut b) = unsafe {
            (
                Channel::from_raw(std::os::fd::IntoRawFd::into_raw_fd(a)).unwrap(),
                Channel::from_raw(std::os::fd::IntoRawFd::into_raw_fd(b)).unwrap(),
            )
        };
        let big = vec![3u8; 8 << 20]; // more than the socket buffers hold
        let sender = std::thread::spawn(move || {
            a.send(OutFrame::new(1, Kind::Task, Arc::new(vec![1, 2])))
                .unwrap();
            a.send(OutFrame::new(2, Kind::Task, Arc::new(big))).unwrap();
            a
        });
        let first = b.recv().unwrap().unwrap();
        let second = b.recv().unwrap().unwrap();
        assert_eq!((first.header.task_id, first.body), (1, vec![1, 2]));
        assert_eq!(second.header.task_id, 2);
        assert!(second.body.iter().all(|&x| x == 3) && second.body.len() == 8 << 20);
        assert!(matches!(second.fd, Attached::None));
        drop(sender.join().unwrap());
        assert!(b.recv().unwrap().is_none());
        // SAFETY: reading the flags of our own descriptor.
        let cloexec = unsafe { libc::fcntl(b.fd(), libc::F_GETFD) } & libc::FD_CLOEXEC;
        assert_ne!(cloexec, 0);
    }
}
