//! The blocking end of a channel, as workers and the template use it: the same frame
//! reader and writer as the manager's non-blocking ends, waiting in poll(2) when the
//! socket has nothing to give or no room.
//!
//! The descriptor is made close-on-exec, so the processes a task starts (with
//! `subprocess`, `os.system`...) never inherit it; and a process a task forks without
//! exec cannot use it: the end belongs to the process that took it (`crate::fork`).
//!
//! A worker's end watches for its next task for a moment after each result it sent,
//! before it sleeps (`watch_after_send`, see `crate::watch`): a caller that waits for
//! each result sends the next task within a few µs of it, sooner than a sleeping
//! process wakes.
//!
//! The write side may be shared with other threads of the process (`writer`): each
//! send writes its frames whole, together, under one lock, so frames never interleave.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::fork::generation;
use crate::sys::{poll, pollfd};
use crate::watch::Watch;
use crate::wire::{Frame, FrameReader, FrameWriter, OutFrame};

pub struct Channel {
    reader: FrameReader,
    /// The write side, which also holds the descriptor.
    writer: ChannelWriter,
    /// Frames read and not yet taken, oldest first.
    queued: VecDeque<Frame>,
    closed: bool,
    /// Set by `watch_after_send`.
    watch: Option<Watch>,
    /// With a watch: when the last frame went out, if no wait began since.
    sent_at: Option<Instant>,
}

/// The write side of a channel, for any thread of the process that owns it: a send
/// writes its frames completely and together (one lock), waiting for room as needed.
#[derive(Clone)]
pub struct ChannelWriter {
    fd: Arc<OwnedFd>,
    frames: Arc<Mutex<FrameWriter>>,
    /// Stamp of the process that took the socket: the only one that may use it.
    owner: u64,
}

/// How long a worker's end watches for a task after a result.
const WATCH_AFTER_SEND: Duration = Duration::from_micros(200);

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

/// Whether `fd` has something to read (or was closed), without waiting.
fn ready_now(fd: RawFd) -> bool {
    !matches!(
        poll(&mut [pollfd(fd, libc::POLLIN)], Some(Duration::ZERO)),
        Ok(0)
    )
}

/// Wait until `fd` is ready for `events` (EINTR retried).
fn wait_for(fd: RawFd, events: libc::c_short) -> io::Result<()> {
    loop {
        match poll(&mut [pollfd(fd, events)], None) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
        }
    }
}

/// Refuse in a process forked from the owner: its frames would interleave with the
/// owner's on the same socket.
fn check_owner(owner: u64) -> io::Result<()> {
    if owner == generation() {
        return Ok(());
    }
    Err(io::Error::other(
        "this channel belongs to the process that opened it; a process forked from it \
         may not use it",
    ))
}

impl ChannelWriter {
    /// Write the frames `frames` makes, completely and with nothing between them.
    /// `frames` is called under the lock: what it takes from a queue goes out in the
    /// order taken, whichever thread sends.
    pub fn send_with<I: IntoIterator<Item = OutFrame>>(
        &self,
        frames: impl FnOnce() -> I,
    ) -> io::Result<()> {
        check_owner(self.owner)?;
        let fd = self.fd.as_raw_fd();
        let mut writer = self.frames.lock();
        frames().into_iter().for_each(|frame| writer.push(frame));
        loop {
            writer.flush(fd)?;
            if writer.is_empty() {
                return Ok(());
            }
            wait_for(fd, libc::POLLOUT)?;
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
            reader: FrameReader::default(),
            writer: ChannelWriter {
                // SAFETY: the caller hands the descriptor over.
                fd: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
                frames: Arc::default(),
                owner: generation(),
            },
            queued: VecDeque::new(),
            closed: false,
            watch: None,
            sent_at: None,
        })
    }

    /// Watch for the next frame for up to `WATCH_AFTER_SEND` after each send, before
    /// sleeping.
    pub fn watch_after_send(&mut self) {
        self.watch = Some(Watch::new(WATCH_AFTER_SEND));
    }

    /// Wait for something to read: first by watching, if a frame went out just before;
    /// then asleep in poll(2).
    fn wait_to_read(&mut self) -> io::Result<()> {
        let fd = self.fd();
        match (self.watch.as_mut(), self.sent_at.take()) {
            (Some(watch), Some(since)) => watch
                .wait(
                    since,
                    |wait| {
                        if wait {
                            wait_for(fd, libc::POLLIN).map(|()| true)
                        } else {
                            Ok(ready_now(fd))
                        }
                    },
                    |seen| !matches!(seen, Ok(false)),
                )
                .map(drop),
            _ => wait_for(fd, libc::POLLIN),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.writer.fd.as_raw_fd()
    }

    /// Let go of the descriptor without closing it (a forked child takes its number
    /// over for another socket). Only for a channel whose write side is not shared.
    pub fn into_raw_fd(self) -> RawFd {
        match Arc::try_unwrap(self.writer.fd) {
            Ok(owned) => owned.into_raw_fd(),
            Err(shared) => {
                // A writer elsewhere holds it too: never closed, as asked.
                let fd = shared.as_raw_fd();
                std::mem::forget(shared);
                fd
            }
        }
    }

    /// The write side, for another thread: its sends and this end's never interleave.
    pub fn writer(&self) -> ChannelWriter {
        self.writer.clone()
    }

    /// Whether a frame is waiting to be taken without a read.
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// The next frame, waiting for it as long as needed; None once the peer closed (or
    /// broke the framing, which the peer's side reports).
    pub fn recv(&mut self) -> io::Result<Option<Frame>> {
        check_owner(self.writer.owner)?;
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
                self.wait_to_read()?;
            }
        }
    }

    /// Write `frame` completely, waiting for room as needed.
    pub fn send(&mut self, frame: OutFrame) -> io::Result<()> {
        self.send_with(|| std::iter::once(frame))
    }

    /// Write the frames `frames` makes (see `ChannelWriter::send_with`); with a watch,
    /// the next receive watches from then.
    pub fn send_with<I: IntoIterator<Item = OutFrame>>(
        &mut self,
        frames: impl FnOnce() -> I,
    ) -> io::Result<()> {
        self.writer.send_with(frames)?;
        if self.watch.is_some() {
            self.sent_at = Some(Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Attached, Kind};
    use std::sync::Arc;

    /// The two ends of a fresh socketpair, each a channel.
    fn channel_pair() -> (Channel, Channel) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: the descriptors are handed over to the channels.
        unsafe {
            (
                Channel::from_raw(std::os::fd::IntoRawFd::into_raw_fd(a)).unwrap(),
                Channel::from_raw(std::os::fd::IntoRawFd::into_raw_fd(b)).unwrap(),
            )
        }
    }

    #[test]
    fn frames_cross_between_two_blocking_ends_in_order() {
        let (mut a, mut b) = channel_pair();
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

    #[test]
    fn a_watching_end_receives_what_comes_during_and_after_its_watch() {
        let (mut peer, mut worker) = channel_pair();
        worker.watch_after_send();
        let (to_peer, peer_rx) = std::sync::mpsc::channel::<Duration>();
        let peer_thread = std::thread::spawn(move || {
            // For each delay received: answer a frame after that delay.
            for (id, delay) in peer_rx.iter().enumerate() {
                assert!(peer.recv().unwrap().is_some());
                std::thread::sleep(delay);
                peer.send(OutFrame::new(
                    id as u64,
                    Kind::Task,
                    Arc::new(vec![id as u8]),
                ))
                .unwrap();
            }
            // Then take the last frame and close (closing before would make that
            // send fail, or leave it unread, which resets the connection).
            assert!(peer.recv().unwrap().is_some());
        });
        // Answers within the window, well after it, then within it again.
        for (id, delay) in [Duration::ZERO, WATCH_AFTER_SEND * 10, Duration::ZERO]
            .into_iter()
            .enumerate()
        {
            to_peer.send(delay).unwrap();
            worker
                .send(OutFrame::new(id as u64, Kind::Result, Arc::new(vec![])))
                .unwrap();
            let frame = worker.recv().unwrap().unwrap();
            assert_eq!(
                (frame.header.task_id, frame.body),
                (id as u64, vec![id as u8])
            );
        }
        // The peer closes while the worker watches: recv ends.
        drop(to_peer);
        worker
            .send(OutFrame::new(9, Kind::Result, Arc::new(vec![])))
            .unwrap();
        peer_thread.join().unwrap();
        assert!(worker.recv().unwrap().is_none());
    }
}
