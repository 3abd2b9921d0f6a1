//! The manager's wait on Windows: one I/O completion port for everything it waits on,
//! where POSIX uses poll(2) on a wake-up descriptor, channels and pidfds.
//!
//! ```text
//!  another thread ── Port::post(token) ───────────────────────────┐
//!  a worker's pipe end (associated under its token)                │
//!    PortRead::start ── ... the bytes arrive ── packet(token, id) ─┤
//!  a process (or any waitable handle)                              ├──► Port::wait
//!    Port::watch ── a thread-pool wait ── it ends ── packet(token) ┘     (the manager)
//! ```
//!
//! Every source is told apart by the token the caller gave it (the manager's tokens
//! name a worker and its generation, so a late packet of a worker that is gone names
//! nobody). There is no limit on how many sources one port serves: waiting on handles
//! with WaitForMultipleObjects stops at 64, which is why loky caps Windows pools at 61
//! workers; the thread pool groups its waits by 63 per thread instead, as many as it
//! needs.

use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, OwnedHandle};
use std::ptr::{null, null_mut};
use std::sync::Arc;
use std::time::Duration;

use windows_sys::Win32::Foundation::{
    ERROR_IO_PENDING, HANDLE, INVALID_HANDLE_VALUE, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{ReadFile, WriteFile};
use windows_sys::Win32::System::Threading::{
    CreateEventW, RegisterWaitForSingleObject, UnregisterWaitEx, INFINITE, WT_EXECUTEINWAITTHREAD,
    WT_EXECUTEONLYONCE,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, CreateIoCompletionPort, GetOverlappedResult, GetQueuedCompletionStatusEx,
    PostQueuedCompletionStatus, OVERLAPPED, OVERLAPPED_ENTRY,
};

use super::pipe::PipeEnd;
use super::{check, owned};

/// What one packet said: whose it is, and for an I/O, which operation (the id of a
/// `PortRead`; 0 for a post or a watch) and how many bytes it moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub token: usize,
    pub operation: usize,
    pub bytes: u32,
}

/// An I/O completion port.
pub struct Port {
    handle: Arc<OwnedHandle>,
}

/// At most this many packets are taken per wait.
const BATCH: usize = 64;

impl Port {
    pub fn new() -> io::Result<Port> {
        // SAFETY: creates a new port (no file yet); the result is checked.
        let handle =
            owned(unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, null_mut(), 0, 1) })?;
        Ok(Port {
            handle: Arc::new(handle),
        })
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }

    /// Wake the waiting thread with a packet carrying `token`.
    pub fn post(&self, token: usize) -> io::Result<()> {
        post(self.raw(), token)
    }

    /// Let the completions of overlapped I/O on `handle` come here, under `token`.
    pub fn associate(&self, handle: BorrowedHandle<'_>, token: usize) -> io::Result<()> {
        // SAFETY: associates a live handle, opened overlapped, with our live port.
        let port = unsafe {
            CreateIoCompletionPort(handle.as_raw_handle() as HANDLE, self.raw(), token, 0)
        };
        if port.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A packet carrying `token` once `handle` is signalled (a process: once it has
    /// exited), once. Dropping the watch before then cancels it.
    pub fn watch(&self, handle: BorrowedHandle<'_>, token: usize) -> io::Result<Watch> {
        let context = Box::new(WatchContext {
            port: self.handle.clone(),
            token,
        });
        let mut wait: HANDLE = null_mut();
        // SAFETY: `context` is boxed and kept by the returned Watch, whose Drop
        // unregisters the wait (waiting for a running callback) before freeing it.
        check(unsafe {
            RegisterWaitForSingleObject(
                &mut wait,
                handle.as_raw_handle() as HANDLE,
                Some(on_signalled),
                (&*context as *const WatchContext).cast(),
                INFINITE,
                WT_EXECUTEONLYONCE | WT_EXECUTEINWAITTHREAD,
            )
        })?;
        Ok(Watch {
            wait,
            _context: context,
        })
    }

    /// Wait up to `timeout` (None: for ever) for packets, and append those there are
    /// to `out`; nothing on a timeout.
    pub fn wait(&self, out: &mut Vec<Packet>, timeout: Option<Duration>) -> io::Result<()> {
        let ms = timeout.map_or(INFINITE, |t| t.as_millis().min(INFINITE as u128 - 1) as u32);
        // SAFETY: plain data for the call to fill.
        let mut entries: [OVERLAPPED_ENTRY; BATCH] = unsafe { std::mem::zeroed() };
        let mut taken = 0u32;
        // SAFETY: the array holds BATCH entries for the call to fill.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.raw(),
                entries.as_mut_ptr(),
                BATCH as u32,
                &mut taken,
                ms,
                0,
            )
        };
        if ok == 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(code) if code as u32 == WAIT_TIMEOUT => Ok(()),
                _ => Err(err),
            };
        }
        out.extend(entries[..taken as usize].iter().map(|e| Packet {
            token: e.lpCompletionKey,
            operation: e.lpOverlapped as usize,
            bytes: e.dwNumberOfBytesTransferred,
        }));
        Ok(())
    }
}

fn post(port: HANDLE, token: usize) -> io::Result<()> {
    // SAFETY: posts a packet with no OVERLAPPED to a live port.
    check(unsafe { PostQueuedCompletionStatus(port, 0, token, null()) })
}

struct WatchContext {
    port: Arc<OwnedHandle>,
    token: usize,
}

unsafe extern "system" fn on_signalled(context: *mut std::ffi::c_void, _timed_out: bool) {
    // SAFETY: the context registered with this wait, alive until it is unregistered.
    let context = unsafe { &*(context as *const WatchContext) };
    // A full port cannot refuse a post; there is nobody to tell of another failure.
    let _ = post(context.port.as_raw_handle() as HANDLE, context.token);
}

/// A registered wait; dropping it unregisters it.
pub struct Watch {
    wait: HANDLE,
    _context: Box<WatchContext>,
}

// SAFETY: the wait handle is a plain identifier, usable from any thread.
unsafe impl Send for Watch {}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: our registered wait; INVALID_HANDLE_VALUE makes the call wait for a
        // callback under way, so the context outlives every use of it.
        unsafe { UnregisterWaitEx(self.wait, INVALID_HANDLE_VALUE) };
    }
}

/// An overlapped operation on a pipe end associated with a port, whose OVERLAPPED (and
/// the caller's buffer) must stay put until the port reports it. Dropped while in
/// flight, it cancels the operation and waits for it to end.
struct Pending {
    overlapped: Box<OVERLAPPED>,
    /// The OVERLAPPED's event, signalled when the operation ends (for a drop in flight).
    _done: OwnedHandle,
    /// The pipe end an operation is in flight on.
    in_flight: Option<HANDLE>,
}

// SAFETY: the raw handle is the pipe end's, used only to collect, cancel and wait.
unsafe impl Send for Pending {}

impl Pending {
    fn new() -> io::Result<Pending> {
        // SAFETY: an unnamed manual-reset event; the result is checked.
        let done = owned(unsafe { CreateEventW(null(), 1, 0, null()) })?;
        // SAFETY: plain data; zeroed is the required initial value.
        let mut overlapped: Box<OVERLAPPED> = Box::new(unsafe { std::mem::zeroed() });
        overlapped.hEvent = done.as_raw_handle() as HANDLE;
        Ok(Pending {
            overlapped,
            _done: done,
            in_flight: None,
        })
    }

    fn id(&self) -> usize {
        &*self.overlapped as *const OVERLAPPED as usize
    }

    /// Start an operation on `end` with `call(handle, overlapped)` (ReadFile, WriteFile).
    /// False if the peer already closed: no packet will come.
    fn start(
        &mut self,
        end: &PipeEnd,
        call: impl FnOnce(HANDLE, *mut OVERLAPPED) -> i32,
    ) -> io::Result<bool> {
        assert!(self.in_flight.is_none(), "one operation at a time");
        let handle = end.as_handle().as_raw_handle() as HANDLE;
        if call(handle, &mut *self.overlapped) == 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(ERROR_IO_PENDING as i32) {
                return if super::pipe::is_closed(&err) {
                    Ok(false)
                } else {
                    Err(err)
                };
            }
        }
        // Done at once or pending, its packet comes through the port.
        self.in_flight = Some(handle);
        Ok(true)
    }

    /// Once its packet came: the bytes it moved (0 once the peer closed).
    fn finish(&mut self) -> io::Result<usize> {
        let handle = self.in_flight.take().expect("an operation in flight");
        let mut moved = 0u32;
        // SAFETY: the operation has ended (its packet came); this only collects its
        // result.
        let result =
            check(unsafe { GetOverlappedResult(handle, &*self.overlapped, &mut moved, 0) });
        match result {
            Ok(()) => Ok(moved as usize),
            Err(err) if super::pipe::is_closed(&err) => Ok(0),
            Err(err) => Err(err),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(handle) = self.in_flight.take() {
            let mut moved = 0u32;
            // SAFETY: cancels our own operation, then waits for it to end, so the
            // buffer and the OVERLAPPED outlive it. (Its packet still comes: the
            // caller's tokens say it is stale.)
            unsafe {
                CancelIoEx(handle, &*self.overlapped);
                GetOverlappedResult(handle, &*self.overlapped, &mut moved, 1);
            }
        }
    }
}

/// One overlapped read at a time on a pipe end associated with a port, into a buffer of
/// its own.
pub struct PortRead {
    /// Declared first: dropped (the read cancelled and ended) before the buffer.
    op: Pending,
    buf: Vec<u8>,
}

impl PortRead {
    pub fn new(capacity: usize) -> io::Result<PortRead> {
        Ok(PortRead {
            op: Pending::new()?,
            buf: vec![0; capacity],
        })
    }

    /// The id its packets carry (`Packet::operation`).
    pub fn id(&self) -> usize {
        self.op.id()
    }

    pub fn in_flight(&self) -> bool {
        self.op.in_flight.is_some()
    }

    /// Start reading from `end` (associated with a port). False if the peer already
    /// closed: no packet will come.
    pub fn start(&mut self, end: &PipeEnd) -> io::Result<bool> {
        let buf = &mut self.buf;
        let len = buf.len().min(u32::MAX as usize) as u32;
        // SAFETY: the buffer and the OVERLAPPED are owned by self and stay put until
        // the read ends (`finish`, or Drop's cancel and wait).
        self.op.start(end, |handle, overlapped| unsafe {
            ReadFile(handle, buf.as_mut_ptr(), len, null_mut(), overlapped)
        })
    }

    /// Once its packet came: the bytes read (empty once the peer closed).
    pub fn finish(&mut self) -> io::Result<&[u8]> {
        let moved = self.op.finish()?;
        Ok(&self.buf[..moved])
    }
}

/// Bytes to write, kept alive without a copy (a frame's body, shared with its task).
pub type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// One overlapped write at a time on a pipe end associated with a port, from bytes it
/// keeps until the port reports the write.
pub struct PortWrite {
    /// Declared first: dropped (the write cancelled and ended) before the bytes.
    op: Pending,
    bytes: Option<Bytes>,
}

impl PortWrite {
    pub fn new() -> io::Result<PortWrite> {
        Ok(PortWrite {
            op: Pending::new()?,
            bytes: None,
        })
    }

    /// The id its packets carry (`Packet::operation`).
    pub fn id(&self) -> usize {
        self.op.id()
    }

    pub fn in_flight(&self) -> bool {
        self.op.in_flight.is_some()
    }

    /// Start writing `bytes` from `from` on to `end` (associated with a port). False if
    /// the peer already closed: no packet will come.
    pub fn start(&mut self, end: &PipeEnd, bytes: Bytes, from: usize) -> io::Result<bool> {
        let data = &(*bytes).as_ref()[from..];
        let (ptr, len) = (data.as_ptr(), data.len().min(u32::MAX as usize) as u32);
        self.bytes = Some(bytes.clone());
        // SAFETY: the bytes are kept by self (an Arc) until the write ends (`finish`,
        // or Drop's cancel and wait); the OVERLAPPED is owned by self too.
        self.op.start(end, |handle, overlapped| unsafe {
            WriteFile(handle, ptr, len, null_mut(), overlapped)
        })
    }

    /// Once its packet came: how many bytes were written (0 once the peer closed).
    pub fn finish(&mut self) -> io::Result<usize> {
        let moved = self.op.finish();
        self.bytes = None;
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::super::pipe::pair;
    use super::super::test_child::{child, Event};
    use super::*;

    use std::time::Instant;

    #[test]
    fn a_post_from_another_thread_wakes_the_wait_and_a_timeout_returns_nothing() {
        let port = Arc::new(Port::new().unwrap());
        let mut packets = Vec::new();
        let start = Instant::now();
        port.wait(&mut packets, Some(Duration::from_millis(50)))
            .unwrap();
        assert!(packets.is_empty());
        assert!(
            start.elapsed() >= Duration::from_millis(40),
            "{:?}",
            start.elapsed()
        );
        let poster = {
            let port = port.clone();
            std::thread::spawn(move || port.post(7).unwrap())
        };
        port.wait(&mut packets, Some(Duration::from_secs(30)))
            .unwrap();
        poster.join().unwrap();
        assert_eq!(
            packets,
            vec![Packet {
                token: 7,
                operation: 0,
                bytes: 0
            }]
        );
    }

    #[test]
    fn many_more_than_64_handles_are_watched_at_once() {
        let port = Port::new().unwrap();
        let events: Vec<Event> = (0..200).map(|_| Event::new().unwrap()).collect();
        let _watches: Vec<Watch> = events
            .iter()
            .enumerate()
            .map(|(i, e)| port.watch(e.as_handle(), 1000 + i).unwrap())
            .collect();
        for event in events.iter().rev() {
            super::super::test_child::set(event);
        }
        let mut packets = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while packets.len() < events.len() && Instant::now() < deadline {
            port.wait(&mut packets, Some(Duration::from_secs(1)))
                .unwrap();
        }
        let mut tokens: Vec<usize> = packets.iter().map(|p| p.token).collect();
        tokens.sort();
        assert_eq!(tokens, (1000..1200).collect::<Vec<_>>(), "each once");
    }

    #[test]
    fn a_process_exit_comes_as_its_token() {
        let port = Port::new().unwrap();
        let mut cmd = child("exit");
        cmd.env("LOKY_TEST_CODE", "0");
        let proc = cmd.spawn().unwrap();
        let _watch = port.watch(proc.process.as_handle(), 42).unwrap();
        let mut packets = Vec::new();
        port.wait(&mut packets, Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(
            packets.iter().map(|p| p.token).collect::<Vec<_>>(),
            vec![42]
        );
        assert_eq!(proc.wait(0).unwrap(), Some(0));
    }

    #[test]
    fn a_pipe_read_completes_through_the_port_and_the_close_reads_empty() {
        let port = Port::new().unwrap();
        let (server, client) = pair().unwrap();
        port.associate(server.as_handle(), 5).unwrap();
        let mut read = PortRead::new(1024).unwrap();
        assert!(read.start(&server).unwrap());
        client.write_all(b"hello").unwrap();
        let mut packets = Vec::new();
        port.wait(&mut packets, Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(
            packets,
            vec![Packet {
                token: 5,
                operation: read.id(),
                bytes: 5
            }]
        );
        assert_eq!(read.finish().unwrap(), b"hello");
        // A read pending when the peer closes ends, empty.
        assert!(read.start(&server).unwrap());
        drop(client);
        packets.clear();
        port.wait(&mut packets, Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(packets.len(), 1);
        assert_eq!(read.finish().unwrap(), b"");
        assert!(
            !read.start(&server).unwrap(),
            "no read starts on a closed pipe"
        );
    }

    #[test]
    fn a_write_completes_through_the_port_with_the_bytes_it_keeps() {
        let port = Port::new().unwrap();
        let (server, client) = pair().unwrap();
        port.associate(server.as_handle(), 3).unwrap();
        let data: Vec<u8> = (0..(6 << 20)).map(|i| (i % 249) as u8).collect(); // > BUFFER
        let total = data.len();
        let expected = data.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            while got.len() < expected.len() {
                let n = client.read(&mut buf).unwrap();
                assert!(n > 0, "the writer closed early");
                got.extend_from_slice(&buf[..n]);
            }
            got == expected
        });
        let mut write = PortWrite::new().unwrap();
        let bytes: Bytes = Arc::new(data);
        let mut from = 0;
        let mut packets = Vec::new();
        while from < total {
            assert!(write.start(&server, bytes.clone(), from).unwrap());
            packets.clear();
            port.wait(&mut packets, Some(Duration::from_secs(30)))
                .unwrap();
            assert_eq!(packets.len(), 1);
            assert_eq!((packets[0].token, packets[0].operation), (3, write.id()));
            let written = write.finish().unwrap();
            assert!(written > 0);
            from += written;
        }
        assert_eq!(from, total);
        assert!(
            reader.join().unwrap(),
            "the bytes arrived intact and in order"
        );
    }

    #[test]
    fn a_read_dropped_in_flight_is_cancelled() {
        let port = Port::new().unwrap();
        let (server, _client) = pair().unwrap();
        port.associate(server.as_handle(), 9).unwrap();
        let mut read = PortRead::new(64).unwrap();
        assert!(read.start(&server).unwrap());
        drop(read); // returns only once the read has ended
        let mut packets = Vec::new();
        port.wait(&mut packets, Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(packets.len(), 1, "the cancelled read's packet still comes");
        assert_eq!((packets[0].token, packets[0].bytes), (9, 0));
    }
}
