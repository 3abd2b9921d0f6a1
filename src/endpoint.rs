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
//! ```
//!
//! EXIT and the end of the stream mean the same: leave once everything sent before is
//! answered (the frames before it are all read first). A message of a kind the worker
//! does not expect breaks the protocol: the receive fails (InvalidData), and the worker
//! leaves as when the manager is gone.
//!
//! The frames travel on a `Transport`: `crate::channel::Channel`, the blocking end of a
//! socket on POSIX, of a named pipe on Windows.

use std::io;
#[cfg(unix)]
use std::os::fd::RawFd;

use crate::channel::Channel;
use crate::ledger::LedgerWriter;
use crate::shm::Incoming;
use crate::wire::{empty_body, encode_retiring, Attached, Attachment, Body, Frame, Kind, OutFrame};

/// Blocking frame I/O on one channel.
pub trait Transport {
    /// The next frame, waiting as long as needed; None once the peer closed its end.
    fn recv(&mut self) -> io::Result<Option<Frame>>;
    /// Write `frame` completely.
    fn send(&mut self, frame: OutFrame) -> io::Result<()>;
}

impl Transport for Channel {
    fn recv(&mut self) -> io::Result<Option<Frame>> {
        Channel::recv(self)
    }

    fn send(&mut self, frame: OutFrame) -> io::Result<()> {
        Channel::send(self, frame)
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
        }
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
        self.transport
            .send(OutFrame::new(0, Kind::Ready, empty_body()))
    }

    /// It cannot get ready: `report` says why (the worker exits next).
    pub fn start_failed(&mut self, report: Body) -> io::Result<()> {
        self.transport
            .send(OutFrame::new(0, Kind::InitFailed, report))
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
        self.transport.send(frame)
    }

    /// It leaves on its own (its memory grew, or passed the pool's limit: `over_limit`):
    /// tasks sent to it go elsewhere.
    pub fn retiring(&mut self, over_limit: bool) -> io::Result<()> {
        self.transport.send(encode_retiring(over_limit))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::ledger::TaskLedger;
    use crate::shm::CACHE;
    use crate::wire::Header;
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

    #[test]
    fn a_start_failure_carries_its_report() {
        let (mut manager, mut worker) = endpoint_pair();
        worker.start_failed(Arc::new(b"why".to_vec())).unwrap();
        let report = manager.recv().unwrap().unwrap();
        assert_eq!(header(&report), (Some(Kind::InitFailed), 0));
        assert_eq!(report.body, b"why");
    }
}
