//! The blocking end of a channel, as workers and the template use it: the same frame
//! reader and writer as the manager's non-blocking ends, waiting in poll(2) when the
//! socket has nothing to give or no room.
//!
//! The descriptor is made close-on-exec, so the processes a task starts (with
//! `subprocess`, `os.system`...) never inherit it.
//!
//! A worker's end watches for its next task for a moment after it sent a result, before
//! it sleeps in poll(2) (`watch_after_send`): waking a sleeping process takes this host
//! ~35 µs (an interrupt to the other processor), more than the rest of a small task's
//! round trip, and a caller that waits for each result submits its next task within a
//! few µs of it. The watch costs the worker's processor at most `WATCH` per task, and
//! only while tasks keep coming that soon: once a wait outlasts `WATCH`, the next wait
//! sleeps at once, until a task again comes within `WATCH` of a result.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::wire::{Frame, FrameReader, FrameWriter, OutFrame};

pub struct Channel {
    fd: OwnedFd,
    reader: FrameReader,
    writer: FrameWriter,
    /// Frames read and not yet taken, oldest first.
    queued: VecDeque<Frame>,
    closed: bool,
    watch: Option<Watch>,
}

/// How long a worker's end watches for a task after a result (see the module's text).
const WATCH: Duration = Duration::from_micros(200);

#[derive(Default)]
struct Watch {
    /// When the last frame went out, if nothing was received since.
    sent_at: Option<Instant>,
    /// Whether the last wait for a frame ended more than `WATCH` after a send.
    slow: bool,
}

impl Watch {
    fn sent(&mut self, now: Instant) {
        self.sent_at = Some(now);
    }

    /// Before a wait: until when to watch, if at all. The end of the window, watched
    /// or not, goes to `slept` if the wait then sleeps.
    fn window(&mut self) -> (Option<Instant>, Option<Instant>) {
        let end = self.sent_at.take().map(|sent| sent + WATCH);
        (end.filter(|_| !self.slow), end)
    }

    /// After a sleep that ended at `now`: whether the next wait may watch.
    fn slept(&mut self, now: Instant, window_end: Option<Instant>) {
        self.slow = window_end.is_none_or(|end| now >= end);
    }
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

/// Whether `fd` has something to read (or was closed), without waiting.
fn ready_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one live pollfd, without waiting.
    unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
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
            watch: None,
        })
    }

    /// Watch for the next frame for up to `WATCH` after each send, before sleeping.
    pub fn watch_after_send(&mut self) {
        self.watch = Some(Watch::default());
    }

    /// Wait for something to read: first by watching, if a frame went out just before
    /// and the last wait was short; then asleep in poll(2).
    fn wait_to_read(&mut self) -> io::Result<()> {
        let fd = self.fd();
        let Some(watch) = self.watch.as_mut() else {
            return wait_for(fd, libc::POLLIN);
        };
        let (watch_until, window_end) = watch.window();
        if let Some(until) = watch_until {
            while Instant::now() < until {
                if ready_now(fd) {
                    return Ok(());
                }
                // Let another thread of this process, or another process waiting for
                // this processor, run first.
                std::thread::yield_now();
            }
        }
        wait_for(fd, libc::POLLIN)?;
        watch.slept(Instant::now(), window_end);
        Ok(())
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
                self.wait_to_read()?;
            }
        }
    }

    /// Write `frame` completely, waiting for room as needed.
    pub fn send(&mut self, frame: OutFrame) -> io::Result<()> {
        self.writer.push(frame);
        loop {
            self.writer.flush(self.fd())?;
            if self.writer.is_empty() {
                if let Some(watch) = self.watch.as_mut() {
                    watch.sent(Instant::now());
                }
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

    #[test]
    fn the_watch_stops_after_a_slow_wait_and_comes_back_after_a_quick_one() {
        let t0 = Instant::now();
        let mut watch = Watch::default();
        assert_eq!(watch.window(), (None, None), "nothing sent: no window");
        watch.sent(t0);
        let (until, end) = watch.window();
        assert_eq!(until, Some(t0 + WATCH), "first wait after a send: watched");
        assert_eq!(watch.window(), (None, None), "one window per send");
        // The watch saw nothing; the frame came later, in the sleep.
        watch.slept(t0 + WATCH * 3, end);
        let t1 = t0 + WATCH * 4;
        watch.sent(t1);
        let (until, end) = watch.window();
        assert_eq!(
            (until, end),
            (None, Some(t1 + WATCH)),
            "after a slow wait: no watch"
        );
        // The sleep ended within the window: tasks come soon again.
        watch.slept(t1 + WATCH / 2, end);
        let t2 = t1 + WATCH;
        watch.sent(t2);
        assert_eq!(watch.window().0, Some(t2 + WATCH));
        // A receive with nothing sent before it says nothing about the pace.
        watch.slept(t2 + WATCH * 9, None);
        watch.sent(t2);
        assert_eq!(watch.window().0, None);
    }

    #[test]
    fn a_watching_end_receives_what_comes_during_and_after_its_watch() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: the descriptors are handed over to the channels.
        let (mut peer, mut worker) = unsafe {
            (
                Channel::from_raw(std::os::fd::IntoRawFd::into_raw_fd(a)).unwrap(),
                Channel::from_raw(std::os::fd::IntoRawFd::into_raw_fd(b)).unwrap(),
            )
        };
        worker.watch_after_send();
        let (to_peer, peer_rx) = std::sync::mpsc::channel::<Duration>();
        let peer_thread = std::thread::spawn(move || {
            // For each delay received: answer a frame after that delay, then close.
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
        });
        // Answers within the window, well after it, then within it again.
        for (id, delay) in [Duration::ZERO, WATCH * 10, Duration::ZERO]
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
