//! The manager thread's I/O on Windows, addressed by token, with the API of its POSIX
//! twin `poll_io.rs`: each worker's channel (a named pipe) and exit, and the wake-up,
//! all reported through one I/O completion port (`platform::port`). Only system calls
//! live here; what the frames and exits mean is the event loop's.
//!
//! ```text
//!  each worker: a port key; one read in flight on its pipe end, one write in flight;
//!               a wait on its process handle that posts the key when it exits
//!  wait(): the port's packets ─► a read completed: its bytes to the frame reader
//!                                 ─► Frames { token, frames, corrupt }
//!                              ─► a write completed: the next one starts
//!                              ─► the process exited: reported once its channel
//!                                 has been read to the end ─► Exited { token, status }
//!  queue(token, frame) ─► flush(): an overlapped write (small frames batched into
//!                         one buffer, a large body written from where it is)
//! ```
//!
//! A frame's attached handle (a task's segment, the worker's ledger) is duplicated into
//! the worker as the frame is written, and its value written after the header; a handle
//! value in a frame the worker sent names a duplicate there, which the reader takes
//! out of the worker (`wire::stream`). Ending a worker ends its Job object: the worker
//! and everything it started. There is no template on Windows (the `Template` token is
//! never added).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::windows::io::AsHandle;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::policy::Stop;
use super::worker::WorkerId;
use crate::platform::interrupt::Interrupt;
use crate::platform::pipe::PipeEnd;
use crate::platform::port::{self, Bytes, Packet, Port, PortRead, PortWrite};
use crate::platform::process::{duplicate_into, Child};
use crate::platform::section::Section;
use crate::platform::{exit_status, ExitStatus, Waker, TERMINATED, WAKE};
use crate::spawn::Spawned;
use crate::watch::Watch;
use crate::wire::{empty_body, encode_prefix, Attached, Frame, Kind, OutFrame, StreamReader};

/// What the manager does I/O with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Token {
    Worker(WorkerId),
    Template,
}

/// What a wait found.
pub enum IoEvent {
    /// Frames read from `token`'s channel, in order; `corrupt`: the peer broke the
    /// framing (nothing more is read).
    Frames {
        token: Token,
        frames: Vec<Frame>,
        corrupt: Option<String>,
    },
    /// The process exited; everything it wrote before was reported first.
    Exited { token: Token, status: ExitStatus },
}

/// How much one read takes at most.
const READ_BUFFER: usize = 256 * 1024;
/// Bodies up to this are copied into one buffer with their headers (several small frames
/// per write); a larger body is written from where it is.
const COPY_BELOW: usize = 64 * 1024;
/// How long an exited worker's channel may stay open (a handle to it left somewhere)
/// before its exit is reported anyway.
const CLOSE_AFTER_EXIT: Duration = Duration::from_secs(1);
/// How long `end_all` waits for each ended process to be gone.
const END_WAIT_MS: u32 = 30_000;

struct Endpoint {
    // The operations first: dropped (cancelled and ended) before the pipe end.
    read: PortRead,
    write: PortWrite,
    _exit: Option<port::Watch>,
    channel: Arc<PipeEnd>,
    child: Child,
    interrupt: Interrupt,
    reader: StreamReader,
    queue: VecDeque<OutFrame>,
    /// Bytes to write, in order, and how far the first has been written.
    chunks: VecDeque<(Bytes, usize)>,
    /// Nothing more can be read (the end of the stream, or broken framing).
    read_closed: bool,
    /// Nothing more can be written.
    write_closed: bool,
    /// Its exit status, and when its exit was seen.
    exited: Option<(ExitStatus, Instant)>,
    /// Its exit has been reported.
    reported: bool,
}

pub struct ManagerIo {
    port: Arc<Port>,
    endpoints: HashMap<Token, Endpoint>,
    /// The port key of each endpoint; never reused, so a late packet of an endpoint
    /// that is gone names nobody.
    keys: HashMap<usize, Token>,
    next_key: usize,
}

impl ManagerIo {
    pub fn new(wake: Arc<Waker>) -> ManagerIo {
        ManagerIo {
            port: wake.port().clone(),
            endpoints: HashMap::new(),
            keys: HashMap::new(),
            next_key: WAKE + 1,
        }
    }

    /// Watch a started process and its channel. (`_ours`: every worker is our child.)
    pub fn add(&mut self, token: Token, spawned: Spawned, _ours: bool) {
        let key = self.next_key;
        self.next_key += 1;
        let Spawned {
            child,
            channel,
            interrupt,
            ..
        } = spawned;
        let exit = self.port.watch(child.process.as_handle(), key).ok();
        let (read, write) = match (PortRead::new(READ_BUFFER), PortWrite::new()) {
            (Ok(read), Ok(write)) => (read, write),
            _ => {
                // Out of memory or handles: a worker nobody can talk to is ended; its
                // exit comes as any other.
                let _ = child.job.terminate(TERMINATED);
                return;
            }
        };
        let associated = self.port.associate(channel.as_handle(), key).is_ok();
        let mut endpoint = Endpoint {
            read,
            write,
            _exit: exit,
            channel: Arc::new(channel),
            child,
            interrupt,
            reader: StreamReader::default(),
            queue: VecDeque::new(),
            chunks: VecDeque::new(),
            read_closed: !associated,
            write_closed: !associated,
            exited: None,
            reported: false,
        };
        if endpoint._exit.is_none() || !associated {
            // Its exit could not be watched, or its channel used: end it now, and
            // report its exit at the next wait.
            let _ = endpoint.child.job.terminate(TERMINATED);
            endpoint.read_closed = true;
            endpoint.exited = Some((None, Instant::now()));
        }
        endpoint.start_read();
        self.keys.insert(key, token);
        self.endpoints.insert(token, endpoint);
    }

    /// Forget a process that exited: its channel and exit watch are closed, and its Job
    /// object (anything it started and left running ends with it).
    pub fn remove(&mut self, token: Token) {
        self.endpoints.remove(&token);
        self.keys.retain(|_, t| *t != token);
    }

    pub fn queue(&mut self, token: Token, frame: OutFrame) {
        if let Some(endpoint) = self.endpoints.get_mut(&token) {
            endpoint.queue.push_back(frame);
        }
    }

    /// Whether nothing is queued for `token` and its channel is open: a direct send
    /// may write there.
    pub fn writable_now(&self, token: Token) -> Option<DirectEnd> {
        let endpoint = self.endpoints.get(&token)?;
        let idle = endpoint.queue.is_empty() && endpoint.chunks.is_empty();
        let open = !endpoint.write_closed && !endpoint.read_closed;
        (idle && open && !endpoint.write.in_flight()).then(|| endpoint.channel.clone())
    }

    /// Tell the process to leave once it has answered what was sent before (EXIT).
    pub fn ask_to_leave(&mut self, token: Token) {
        self.queue(token, OutFrame::new(0, Kind::Exit, empty_body()));
    }

    /// Start writing what is queued (without waiting). A channel that fails takes no
    /// more writes; the exit of its process is handled when it is seen.
    pub fn flush(&mut self) {
        for endpoint in self.endpoints.values_mut() {
            endpoint.pump_writes();
        }
    }

    /// Since when the frame `token` began to send stalls, if one does.
    pub fn stalled_since(&self, token: Token) -> Option<Instant> {
        let endpoint = self.endpoints.get(&token)?;
        if endpoint.read_closed {
            return None;
        }
        endpoint.reader.stalled_since()
    }

    /// End the process of `token` and everything it started (its Job object; there is
    /// no gentler way for a process without a window, so `Stop::Term` kills too).
    pub fn kill(&self, token: Token, _how: Stop) {
        if let Some(endpoint) = self.endpoints.get(&token) {
            let _ = endpoint.child.job.terminate(TERMINATED);
        }
    }

    /// Ctrl-C for the task `token` runs (its interrupt event, see `platform::interrupt`).
    pub fn interrupt(&self, token: Token) {
        if let Some(endpoint) = self.endpoints.get(&token) {
            let _ = endpoint.interrupt.raise();
        }
    }

    /// What `token`'s channel holds now, before an exit the template reported: there is
    /// no template on Windows, and a worker's own exit comes after its last frames.
    pub fn read(&mut self, _token: Token) -> Option<IoEvent> {
        None
    }

    /// Wait for I/O (up to `timeout`; watching first when `watch` is given, see
    /// `crate::watch`), then do it: the frames read and the exits seen, in order.
    pub fn wait(&mut self, timeout: Option<Duration>, watch: Option<&mut Watch>) -> Vec<IoEvent> {
        let now = Instant::now();
        let mut timeout = timeout;
        for endpoint in self.endpoints.values_mut() {
            endpoint.start_read();
            if let Some((_, since)) = endpoint.exited.filter(|_| !endpoint.reported) {
                let left = (since + CLOSE_AFTER_EXIT).saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
        }
        let mut packets = Vec::new();
        let port = &self.port;
        let mut look = |wait: bool| {
            let before = packets.len();
            let limit = if wait { timeout } else { Some(Duration::ZERO) };
            // A failed wait (a closed port cannot happen here) counts as a timeout.
            let _ = port.wait(&mut packets, limit);
            packets.len() - before
        };
        match watch {
            Some(watch) => watch.wait(now, &mut look, |found| *found > 0),
            None => look(true),
        };
        let mut events = Vec::new();
        for packet in packets {
            self.on_packet(packet, &mut events);
        }
        let now = Instant::now();
        let mut exited = Vec::new();
        for (&token, endpoint) in self.endpoints.iter_mut() {
            endpoint.pump_writes();
            let Some((status, since)) = endpoint.exited.filter(|_| !endpoint.reported) else {
                continue;
            };
            if endpoint.read_closed || now >= since + CLOSE_AFTER_EXIT {
                endpoint.reported = true;
                exited.push(IoEvent::Exited { token, status });
            }
        }
        events.extend(exited);
        events
    }

    fn on_packet(&mut self, packet: Packet, events: &mut Vec<IoEvent>) {
        let Some(&token) = self.keys.get(&packet.token) else {
            return; // a wake-up, or a late packet of an endpoint that is gone
        };
        let Some(endpoint) = self.endpoints.get_mut(&token) else {
            return;
        };
        if packet.operation == endpoint.read.id() && endpoint.read.in_flight() {
            if let Some(event) = endpoint.finish_read(token) {
                events.push(event);
            }
            endpoint.start_read();
        } else if packet.operation == endpoint.write.id() && endpoint.write.in_flight() {
            endpoint.finish_write();
        } else if packet.operation == 0 && endpoint.exited.is_none() {
            let status = match endpoint.child.try_wait() {
                Ok(Some(code)) => exit_status(code),
                _ => None,
            };
            endpoint.exited = Some((status, Instant::now()));
        }
        // Anything else: a direct send's write, done already (see `write_direct`).
    }

    /// End every process (with its tree) now and wait for them to be gone. (`_how`:
    /// there is no gentler way, see `kill`.)
    pub fn end_all(&mut self, _how: Stop) {
        let endpoints: Vec<Endpoint> = self.endpoints.drain().map(|(_, e)| e).collect();
        self.keys.clear();
        for endpoint in &endpoints {
            let _ = endpoint.child.job.terminate(TERMINATED);
        }
        for endpoint in &endpoints {
            let _ = endpoint.child.wait(END_WAIT_MS);
        }
    }

    /// Let `token`'s process exit by itself within `grace` once its channel is closed,
    /// else end it.
    pub fn close_and_reap(&mut self, token: Token, grace: Duration) {
        let Some(endpoint) = self.endpoints.remove(&token) else {
            return;
        };
        self.keys.retain(|_, t| *t != token);
        let Endpoint {
            read,
            write,
            channel,
            child,
            ..
        } = endpoint;
        drop((read, write, channel));
        let grace_ms = grace.as_millis().min(u128::from(u32::MAX - 1)) as u32;
        if !matches!(child.wait(grace_ms), Ok(Some(_))) {
            let _ = child.job.terminate(TERMINATED);
            let _ = child.wait(END_WAIT_MS);
        }
    }
}

impl Endpoint {
    /// Keep a read in flight while the channel is open.
    fn start_read(&mut self) {
        if self.read_closed || self.read.in_flight() {
            return;
        }
        match self.read.start(&self.channel) {
            Ok(true) => {}
            _ => self.read_closed = true,
        }
    }

    /// The read's packet came: the frames its bytes complete.
    fn finish_read(&mut self, token: Token) -> Option<IoEvent> {
        let bytes = match self.read.finish() {
            Ok(bytes) if !bytes.is_empty() => bytes,
            _ => {
                self.read_closed = true;
                return None;
            }
        };
        let process = self.child.process.as_handle();
        // A value that cannot be taken (the worker is gone already) is a segment lost:
        // the task's outcome says so.
        let take = |value: u64| match Section::take_from(process, value as usize) {
            Ok(handle) => Attached::Fd(handle),
            Err(_) => Attached::Dropped,
        };
        let frames = self.reader.feed(bytes, take);
        let corrupt = self.reader.corrupt().cloned();
        if corrupt.is_some() {
            self.read_closed = true;
        }
        (!frames.is_empty() || corrupt.is_some()).then_some(IoEvent::Frames {
            token,
            frames,
            corrupt,
        })
    }

    /// Start the next write, if one is due and none is in flight.
    fn pump_writes(&mut self) {
        if self.write_closed || self.write.in_flight() {
            return;
        }
        if self.chunks.is_empty() && self.encode_queued().is_err() {
            self.close_writes();
            return;
        }
        let Some((bytes, from)) = self.chunks.front() else {
            return;
        };
        if !matches!(
            self.write.start(&self.channel, bytes.clone(), *from),
            Ok(true)
        ) {
            self.close_writes();
        }
    }

    /// The write's packet came: move on by what it wrote.
    fn finish_write(&mut self) {
        match self.write.finish() {
            Ok(written) if written > 0 => {
                let (bytes, from) = self.chunks.front_mut().expect("the write's bytes");
                *from += written;
                if *from >= (**bytes).as_ref().len() {
                    self.chunks.pop_front();
                }
            }
            _ => self.close_writes(),
        }
    }

    fn close_writes(&mut self) {
        self.write_closed = true;
        self.queue.clear();
        self.chunks.clear();
    }

    /// Turn queued frames into bytes to write: small ones together in one buffer, up to
    /// a large body, which is written from where it is. Attached handles are duplicated
    /// into the worker now; that fails only if the worker is gone.
    fn encode_queued(&mut self) -> io::Result<()> {
        let process = self.child.process.as_handle();
        let mut batch: Vec<u8> = Vec::new();
        while let Some(frame) = self.queue.pop_front() {
            let value = match frame.attachment() {
                Some(attached) => Some(duplicate_into(crate::os::borrow(&**attached), process)?),
                None => None,
            };
            batch.extend_from_slice(&encode_prefix(&frame, value.map(|v| v as u64)));
            if frame.body().len() <= COPY_BELOW {
                batch.extend_from_slice(frame.body());
                if batch.len() >= READ_BUFFER {
                    break;
                }
            } else {
                let prefix: Bytes = Arc::new(std::mem::take(&mut batch));
                self.chunks.push_back((prefix, 0));
                self.chunks.push_back((frame.shared_body().clone(), 0));
                break;
            }
        }
        if !batch.is_empty() {
            self.chunks.push_back((Arc::new(batch), 0));
        }
        Ok(())
    }
}

/// Where a direct send writes (see `direct.rs`): an idle worker's pipe end.
pub type DirectEnd = Arc<PipeEnd>;

/// Write `frame` whole to an idle worker's pipe end, from a submitting thread (see
/// `direct.rs`; the manager has a read in flight there, and writes nothing while the
/// offer lasts). Its completion also comes to the manager's port, as a packet of no
/// operation the manager knows, which it ignores. Err only if none of it went out.
pub fn write_direct(channel: &DirectEnd, frame: OutFrame) -> io::Result<()> {
    if frame.attachment().is_some() {
        return Err(io::Error::other("a direct send carries no handle"));
    }
    let mut bytes = encode_prefix(&frame, None);
    bytes.extend_from_slice(frame.body());
    channel.write_all(&bytes)
}
