//! The worker's end of its conversation with the manager, typed: the worker loop
//! (`python/loky/_worker.py`) says what it does, and this module picks the frames.
//!
//! ```text
//!  manager                                          worker: Endpoint
//!  INIT (settings, initializer; the task ledger) ─► recv_init(): the ledger opened
//!        ◄───────────────────────────────────────── ready(), or start_failed(report) then exit
//!  TASK (pickled call; its segment) ──────────────► recv_task(): taken (ledger), segment mapped
//!        ◄───────────────────────────────────────── send_result(id, outcome; its segment)
//!        ◄───────────────────────────────────────── retiring() then exit (memory)
//!  EXIT, or the end of the stream ────────────────► recv_*() gives None: the worker exits
//!        ◄── LOG (records, with forward_logs()) ─── the log writer thread, any time;
//!                                                    every message above takes the
//!                                                    records queued before it first
//! ```
//!
//! EXIT and the end of the stream mean the same: leave once everything sent before is
//! answered (the frames before it are all read first). A message of a kind the worker
//! does not expect breaks the protocol: the receive fails (InvalidData), and the worker
//! leaves as when the manager is gone.
//!
//! With log forwarding (`forward_logs`, see `crate::logs`), the worker's logging
//! handler queues records from any thread without waiting, and a thread of the endpoint
//! writes them as LOG messages through the channel's shared write side; each message
//! the worker loop sends goes out after the records queued before it, under the same
//! lock, so a task's records reach the manager before its result.
//!
//! The frames travel on a `Transport`: `crate::channel::Channel`, the blocking end of a
//! socket on POSIX, of a named pipe on Windows.

use std::io;
#[cfg(unix)]
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::channel::{Channel, ChannelWriter};
use crate::ledger::LedgerWriter;
use crate::logs::{LogBatch, LogQueue, Waited, WORKER_BYTES, WORKER_RECORDS};
use crate::shm::Incoming;
use crate::wire::{
    empty_body, encode_log, encode_retiring, Attached, Attachment, Body, Frame, Kind, OutFrame,
};

/// Blocking frame I/O on one channel, whose write side other threads may share.
pub trait Transport {
    type Writer: FrameSink + Send + 'static;
    /// The next frame, waiting as long as needed; None once the peer closed its end.
    fn recv(&mut self) -> io::Result<Option<Frame>>;
    /// Write the frames `frames` makes completely, with no frame of another thread
    /// between them; `frames` is called under the write side's lock.
    fn send_with<I: IntoIterator<Item = OutFrame>>(
        &mut self,
        frames: impl FnOnce() -> I,
    ) -> io::Result<()>;
    /// The write side, for another thread of this process.
    fn writer(&self) -> Self::Writer;
}

/// The shared write side of a channel (see `Transport::send_with`).
pub trait FrameSink {
    fn send_with<I: IntoIterator<Item = OutFrame>>(
        &self,
        frames: impl FnOnce() -> I,
    ) -> io::Result<()>;
}

impl Transport for Channel {
    type Writer = ChannelWriter;

    fn recv(&mut self) -> io::Result<Option<Frame>> {
        Channel::recv(self)
    }

    fn send_with<I: IntoIterator<Item = OutFrame>>(
        &mut self,
        frames: impl FnOnce() -> I,
    ) -> io::Result<()> {
        Channel::send_with(self, frames)
    }

    fn writer(&self) -> ChannelWriter {
        Channel::writer(self)
    }
}

impl FrameSink for ChannelWriter {
    fn send_with<I: IntoIterator<Item = OutFrame>>(
        &self,
        frames: impl FnOnce() -> I,
    ) -> io::Result<()> {
        ChannelWriter::send_with(self, frames)
    }
}

/// The LOG messages of `batch`: the count of dropped records travels with the first
/// (alone, if no record is left).
fn log_frames(batch: LogBatch) -> Vec<OutFrame> {
    let mut dropped = batch.dropped;
    let mut frames: Vec<OutFrame> = batch
        .records
        .into_iter()
        .map(|record| encode_log(std::mem::take(&mut dropped), Arc::new(record.body)))
        .collect();
    if dropped > 0 {
        frames.push(encode_log(dropped, empty_body()));
    }
    frames
}

/// The log writer thread: sends what the queue holds as it comes, until it is closed
/// or the channel breaks. Takes under the write side's lock (see `Endpoint::send`).
fn write_logs(queue: &LogQueue, writer: &impl FrameSink) {
    while queue.wait(None) == Waited::Ready {
        if writer.send_with(|| log_frames(queue.take())).is_err() {
            return;
        }
    }
}

/// A task taken to run: recorded in the ledger, its segment mapped.
pub struct TakenTask {
    pub id: u64,
    pub body: Vec<u8>,
    pub segment: Incoming,
}

pub struct Endpoint<T: Transport = Channel> {
    transport: T,
    /// From the first message: where each task taken is recorded.
    ledger: Option<LedgerWriter>,
    /// Told to leave (EXIT or the end of the stream): nothing more is read.
    leaving: bool,
    /// With log forwarding: the records to send.
    logs: Option<Arc<LogQueue>>,
}

impl Endpoint<Channel> {
    /// The worker's end on the socket `fd`, which it takes over (made close-on-exec);
    /// it watches for its next task for a moment after each result it sends.
    ///
    /// SAFETY (for callers): `fd` must be an open socket that nothing else closes.
    #[cfg(unix)]
    pub unsafe fn from_raw_fd(fd: RawFd) -> io::Result<Endpoint<Channel>> {
        // SAFETY: the caller hands the descriptor over.
        let mut channel = unsafe { Channel::from_raw(fd) }?;
        channel.watch_after_send();
        Ok(Endpoint::new(channel))
    }

    /// The worker's end on the pipe handle `value`, inherited from its parent, which it
    /// takes over (no longer inheritable); it watches for its next task for a moment
    /// after each result it sends.
    ///
    /// SAFETY (for callers): `value` must be an open pipe end that nothing else owns.
    #[cfg(windows)]
    pub unsafe fn from_raw_handle(value: usize) -> io::Result<Endpoint<Channel>> {
        // SAFETY: the caller hands the handle over.
        let mut channel = unsafe { Channel::from_raw(value) }?;
        channel.watch_after_send();
        Ok(Endpoint::new(channel))
    }
}

fn expect(frame: &Frame, kind: Kind) -> io::Result<()> {
    if frame.header.kind == kind as u32 {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the manager sent a message of kind {} where {kind:?} was expected",
            frame.header.kind
        ),
    ))
}

impl<T: Transport> Endpoint<T> {
    pub fn new(transport: T) -> Endpoint<T> {
        Endpoint {
            transport,
            ledger: None,
            leaving: false,
            logs: None,
        }
    }

    /// Write `frame` after the log records queued so far.
    fn send(&mut self, frame: OutFrame) -> io::Result<()> {
        match &self.logs {
            None => self.transport.send_with(|| std::iter::once(frame)),
            Some(logs) => self.transport.send_with(|| {
                let mut frames = log_frames(logs.take());
                frames.push(frame);
                frames
            }),
        }
    }

    /// Forward log records from now on: the queue the worker's logging handler puts
    /// them in (from any thread, never waiting), which a thread of its own sends.
    pub fn forward_logs(&mut self) -> io::Result<Arc<LogQueue>> {
        if let Some(logs) = &self.logs {
            return Ok(logs.clone());
        }
        let logs = Arc::new(LogQueue::new(WORKER_RECORDS, WORKER_BYTES));
        let (queue, writer) = (logs.clone(), self.transport.writer());
        std::thread::Builder::new()
            .name("loky-log-writer".into())
            .spawn(move || write_logs(&queue, &writer))?;
        self.logs = Some(logs.clone());
        Ok(logs)
    }

    /// Send the log records queued so far, and forward no more (the worker exits).
    pub fn finish_logs(&mut self) -> io::Result<()> {
        let Some(logs) = self.logs.take() else {
            return Ok(());
        };
        logs.close();
        self.transport.send_with(|| log_frames(logs.take()))
    }

    /// The next frame, or None once told to leave.
    fn next(&mut self) -> io::Result<Option<Frame>> {
        if self.leaving {
            return Ok(None);
        }
        match self.transport.recv()? {
            Some(frame) if frame.header.kind != Kind::Exit as u32 => Ok(Some(frame)),
            _ => {
                self.leaving = true;
                Ok(None)
            }
        }
    }

    /// The first message's body (settings and initializer), or None if told to leave.
    pub fn recv_init(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(frame) = self.next()? else {
            return Ok(None);
        };
        expect(&frame, Kind::Init)?;
        if let Attached::Fd(fd) = &frame.fd {
            // Without it, the manager counts every task it sent here as taken.
            self.ledger = LedgerWriter::open(crate::os::borrow(fd)).ok();
        }
        Ok(Some(frame.body))
    }

    /// The next task, taken to run now, or None if told to leave.
    pub fn recv_task(&mut self) -> io::Result<Option<TakenTask>> {
        let Some(frame) = self.next()? else {
            return Ok(None);
        };
        expect(&frame, Kind::Task)?;
        let id = frame.header.task_id;
        if let Some(ledger) = &self.ledger {
            ledger.record_taken(id);
        }
        // Mapped only now, as the task is taken: see `crate::shm` on ownership.
        let segment = Incoming::receive(frame.fd);
        if let Incoming::Mapped(mapping) = &segment {
            mapping.populate();
        }
        Ok(Some(TakenTask {
            id,
            body: frame.body,
            segment,
        }))
    }

    /// Initialized: ready for tasks.
    pub fn ready(&mut self) -> io::Result<()> {
        self.send(OutFrame::new(0, Kind::Ready, empty_body()))
    }

    /// It cannot get ready: `report` says why (the worker exits next).
    pub fn start_failed(&mut self, report: Body) -> io::Result<()> {
        self.send(OutFrame::new(0, Kind::InitFailed, report))
    }

    /// The outcome of task `task_id`, with the segment holding its large buffers.
    pub fn send_result(
        &mut self,
        task_id: u64,
        body: Body,
        segment: Option<Attachment>,
    ) -> io::Result<()> {
        let mut frame = OutFrame::new(task_id, Kind::Result, body);
        if let Some(segment) = segment {
            frame = frame.with_fd(segment);
        }
        self.send(frame)
    }

    /// It leaves on its own (its memory grew, or passed the pool's limit: `over_limit`):
    /// tasks sent to it go elsewhere.
    pub fn retiring(&mut self, over_limit: bool) -> io::Result<()> {
        self.send(encode_retiring(over_limit))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::ledger::TaskLedger;
    use crate::logs::LogRecord;
    use crate::shm::CACHE;
    use crate::wire::{decode_log, Header};
    use std::os::fd::IntoRawFd;
    use std::sync::Arc;

    /// (the manager's end, the worker's endpoint), on a fresh socketpair.
    fn endpoint_pair() -> (Channel, Endpoint) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: the descriptors are handed over.
        unsafe {
            (
                Channel::from_raw(a.into_raw_fd()).unwrap(),
                Endpoint::from_raw_fd(b.into_raw_fd()).unwrap(),
            )
        }
    }

    fn frame(kind: Kind, id: u64, body: &[u8]) -> OutFrame {
        OutFrame::new(id, kind, Arc::new(body.to_vec()))
    }

    fn header(frame: &Frame) -> (Option<Kind>, u64) {
        let Header { kind, task_id, .. } = frame.header;
        (Kind::from_u32(kind), task_id)
    }

    #[test]
    fn a_worker_conversation_from_init_to_exit() {
        let (mut manager, mut worker) = endpoint_pair();
        let ledger = Arc::new(TaskLedger::new().unwrap());
        manager
            .send(frame(Kind::Init, 0, b"settings").with_fd(ledger.clone()))
            .unwrap();
        assert_eq!(worker.recv_init().unwrap().unwrap(), b"settings");
        assert!(!ledger.took(5), "opened, nothing taken");
        worker.ready().unwrap();
        assert_eq!(
            header(&manager.recv().unwrap().unwrap()),
            (Some(Kind::Ready), 0)
        );

        // A task with a segment: taken (the ledger says so) and mapped.
        let (segment, offsets) = CACHE.write(&[&[42u8; 1000]]).unwrap();
        manager
            .send(frame(Kind::Task, 5, b"call").with_fd(segment.clone()))
            .unwrap();
        manager.send(frame(Kind::Task, 6, b"next")).unwrap();
        manager.send(frame(Kind::Exit, 0, b"")).unwrap();
        let task = worker.recv_task().unwrap().unwrap();
        assert!(ledger.took(5) && !ledger.took(6));
        assert_eq!((task.id, &task.body[..]), (5, &b"call"[..]));
        let Incoming::Mapped(mapping) = &task.segment else {
            panic!("{:?}", task.segment)
        };
        // SAFETY: the offset lies within the mapping.
        assert_eq!(unsafe { *mapping.as_ptr().add(offsets[0]) }, 42);
        worker
            .send_result(5, Arc::new(b"outcome".to_vec()), Some(segment.clone()))
            .unwrap();
        let result = manager.recv().unwrap().unwrap();
        assert_eq!(header(&result), (Some(Kind::Result), 5));
        assert_eq!(result.body, b"outcome");
        assert!(matches!(result.fd, Attached::Fd(_)));

        // The task sent before EXIT is still taken; then the worker is told to leave,
        // and stays told.
        let task = worker.recv_task().unwrap().unwrap();
        assert!(matches!(task.segment, Incoming::None));
        assert!(ledger.took(6));
        assert!(worker.recv_task().unwrap().is_none());
        assert!(worker.recv_task().unwrap().is_none());
        worker.retiring(false).unwrap();
        assert_eq!(
            header(&manager.recv().unwrap().unwrap()),
            (Some(Kind::Retiring), 0)
        );
    }

    #[test]
    fn the_end_of_the_stream_means_leave_too() {
        let (mut manager, mut worker) = endpoint_pair();
        manager.send(frame(Kind::Init, 0, b"")).unwrap();
        manager.send(frame(Kind::Task, 1, b"")).unwrap();
        drop(manager);
        assert!(worker.recv_init().unwrap().is_some());
        assert_eq!(worker.recv_task().unwrap().unwrap().id, 1);
        assert!(worker.recv_task().unwrap().is_none());

        let (mut manager, mut worker) = endpoint_pair();
        manager.send(frame(Kind::Exit, 0, b"")).unwrap();
        assert!(
            worker.recv_init().unwrap().is_none(),
            "told to leave before INIT"
        );
    }

    #[test]
    fn a_message_of_the_wrong_kind_breaks_the_protocol() {
        let (mut manager, mut worker) = endpoint_pair();
        manager.send(frame(Kind::Task, 1, b"")).unwrap();
        manager.send(frame(Kind::Init, 0, b"")).unwrap();
        let err = worker.recv_init().err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = worker.recv_task().err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    fn log(i: u32, len: usize) -> LogRecord {
        let mut body = i.to_le_bytes().to_vec();
        body.resize(len, 0);
        LogRecord { pid: 0, body }
    }

    /// Until a frame of `kind`: (the number of each LOG record, the drops counted).
    fn read_logs_until(manager: &mut Channel, kind: Kind) -> (Vec<u32>, u64) {
        let (mut numbers, mut dropped) = (Vec::new(), 0);
        loop {
            let frame = manager.recv().unwrap().unwrap();
            if frame.header.kind == kind as u32 {
                return (numbers, dropped);
            }
            assert_eq!(frame.header.kind, Kind::Log as u32);
            let (count, body) = decode_log(frame);
            dropped += count;
            if !body.is_empty() {
                numbers.push(u32::from_le_bytes(body[..4].try_into().unwrap()));
            }
        }
    }

    #[test]
    fn log_records_go_in_order_and_before_the_next_message() {
        let (mut manager, mut worker) = endpoint_pair();
        let logs = worker.forward_logs().unwrap();
        for i in 0..50 {
            assert!(logs.push(log(i, 100)));
        }
        worker.send_result(7, empty_body(), None).unwrap();
        assert_eq!(
            read_logs_until(&mut manager, Kind::Result),
            ((0..50).collect(), 0)
        );
        // From the writer thread alone, while the worker sends nothing.
        assert!(logs.push(log(50, 10)));
        let frame = manager.recv().unwrap().unwrap();
        assert_eq!(header(&frame), (Some(Kind::Log), 0));
        assert_eq!(frame.body[..4], 50u32.to_le_bytes());
    }

    #[test]
    fn a_manager_that_does_not_read_never_makes_the_logging_thread_wait() {
        let (mut manager, mut worker) = endpoint_pair();
        let logs = worker.forward_logs().unwrap();
        let total = 20_000; // 20 MB: past the socket's buffers and the queue's bound
        let (done, pushed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let kept = (0..total).filter(|&i| logs.push(log(i, 1000))).count();
            done.send(kept).unwrap();
        });
        let kept = pushed
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("pushing never waits for the reader");
        assert!(kept < total as usize, "some were dropped");
        // The manager reads now: every record is either received, in order, or counted.
        let reader = std::thread::spawn(move || read_logs_until(&mut manager, Kind::Result));
        worker.send_result(1, empty_body(), None).unwrap();
        let (numbers, dropped) = reader.join().unwrap();
        assert_eq!(numbers.len() as u64 + dropped, u64::from(total));
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(numbers[0], 0, "the oldest are kept");
    }

    #[test]
    fn a_start_failure_carries_its_report() {
        let (mut manager, mut worker) = endpoint_pair();
        worker.start_failed(Arc::new(b"why".to_vec())).unwrap();
        let report = manager.recv().unwrap().unwrap();
        assert_eq!(header(&report), (Some(Kind::InitFailed), 0));
        assert_eq!(report.body, b"why");
    }
}
