//! The blocking end of a channel as a worker uses it on Windows (the counterpart of
//! `channel.rs`): frames on a named pipe (`crate::wire`'s stream layout), read and
//! written with blocking operations.
//!
//! The end comes inherited from the parent, and is made non-inheritable at once, so the
//! processes a task starts never get it. A handle attached to a frame the worker sends
//! (a result's segment) is a duplicate in the worker, which it leaves open: the
//! manager takes it out of the worker and closes it here (`section::take_from`). A
//! handle value in a frame it receives names a handle the manager put in this process
//! for that frame.
//!
//! As on POSIX, the end watches for the next task for a moment after each result it
//! sent before it sleeps (see `crate::watch`).

use std::collections::VecDeque;
use std::io;
use std::os::windows::io::{FromRawHandle, IntoRawHandle, OwnedHandle, RawHandle};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::platform::pipe::PipeEnd;
use crate::platform::process::duplicate;
use crate::watch::Watch;
use crate::wire::{encode_prefix, Attached, Frame, OutFrame, StreamReader};

/// How much one read takes at most.
const READ_BUFFER: usize = 256 * 1024;
/// Bodies up to this are written with their header in one write (a copy); larger ones
/// are written from where they are.
const COPY_BELOW: usize = 64 * 1024;
/// How long a worker's end watches for a task after a result.
const WATCH_AFTER_SEND: Duration = Duration::from_micros(200);

pub struct Channel {
    end: Arc<PipeEnd>,
    writer: ChannelWriter,
    reader: StreamReader,
    buf: Vec<u8>,
    /// Frames read and not yet taken, oldest first.
    queued: VecDeque<Frame>,
    closed: bool,
    /// Set by `watch_after_send`.
    watch: Option<Watch>,
    /// With a watch: when the last frame went out, if no read began since.
    sent_at: Option<Instant>,
}

impl Channel {
    /// Take ownership of the inherited pipe end `value`, and keep it from being
    /// inherited further.
    ///
    /// SAFETY (for callers): `value` must be an open pipe end, opened overlapped, that
    /// nothing else in this process owns.
    pub unsafe fn from_raw(value: usize) -> io::Result<Channel> {
        // SAFETY: see the function's contract.
        let end = Arc::new(unsafe { PipeEnd::from_raw(value) }?);
        crate::platform::not_inheritable(std::os::windows::io::AsHandle::as_handle(&*end))?;
        Ok(Channel {
            writer: ChannelWriter {
                end: end.clone(),
                frames: Arc::default(),
            },
            end,
            reader: StreamReader::default(),
            buf: vec![0; READ_BUFFER],
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

    /// Read what comes next (waiting for it, first by watching if a frame went out
    /// just before); 0 once the peer closed.
    fn read_some(&mut self) -> io::Result<usize> {
        let (end, buf) = (&self.end, &mut self.buf);
        let (Some(watch), Some(since)) = (self.watch.as_mut(), self.sent_at.take()) else {
            return end.read(buf);
        };
        let read = watch.wait(
            since,
            |wait| match (wait, end.available()) {
                (false, Ok(Some(0))) => Ok(None), // nothing yet
                _ => end.read(buf).map(Some),
            },
            |seen| !matches!(seen, Ok(None)),
        );
        Ok(read?.unwrap_or(0))
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
            let n = self.read_some()?;
            if n == 0 {
                self.closed = true;
                continue;
            }
            // SAFETY (in `own`): the manager put this handle in this process for this
            // frame; nothing else owns it.
            let own = |value: u64| {
                Attached::Fd(unsafe { OwnedHandle::from_raw_handle(value as usize as RawHandle) })
            };
            let frames = self.reader.feed(&self.buf[..n], own);
            self.queued.extend(frames);
            if self.reader.corrupt().is_some() {
                self.closed = true;
            }
        }
    }

    /// The write side, for another thread: its sends and this end's never interleave.
    pub fn writer(&self) -> ChannelWriter {
        self.writer.clone()
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

/// The write side of a channel, shared by the threads of a worker (its loop and its log
/// writer). A frame may take several writes: the lock keeps frames whole.
#[derive(Clone)]
pub struct ChannelWriter {
    end: Arc<PipeEnd>,
    frames: Arc<Mutex<()>>,
}

impl ChannelWriter {
    /// Write the frames `frames` makes, completely and with nothing between them.
    /// `frames` is called under the lock: what it takes from a queue goes out in the
    /// order taken, whichever thread sends.
    pub fn send_with<I: IntoIterator<Item = OutFrame>>(
        &self,
        frames: impl FnOnce() -> I,
    ) -> io::Result<()> {
        let _whole = self.frames.lock();
        for frame in frames() {
            write_frame(&self.end, &frame)?;
        }
        Ok(())
    }
}

/// Write one frame completely, waiting for room as needed.
fn write_frame(end: &PipeEnd, frame: &OutFrame) -> io::Result<()> {
    let value = match frame.attachment() {
        // A duplicate the manager takes (and closes here) as it reads the frame.
        Some(attached) => {
            let duplicate = duplicate(crate::os::borrow(&**attached), false)?;
            Some(duplicate.into_raw_handle() as usize as u64)
        }
        None => None,
    };
    let mut bytes = encode_prefix(frame, value);
    let body = frame.body();
    if body.len() <= COPY_BELOW {
        bytes.extend_from_slice(body);
        end.write_all(&bytes)
    } else {
        end.write_all(&bytes)?;
        end.write_all(body)
    }
}
