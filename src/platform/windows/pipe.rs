//! A worker's channel on Windows: the two ends of a named pipe, carrying the same frames
//! as a socketpair does on POSIX.
//!
//! ```text
//!  pair():  CreateNamedPipeW(unique name, first instance, one instance, local only)
//!           CreateFileW(same name)             the client end, opened by us at once
//!           ConnectNamedPipe                   ERROR_PIPE_CONNECTED: it is ours
//!  manager end: overlapped reads and writes completed through the manager's port
//!  worker end:  inherited by the worker (Command::inherit); blocking reads and writes
//! ```
//!
//! Both ends are opened overlapped, even where used blocking: a handle opened for
//! synchronous I/O lets one operation at a time through, so a thread blocked reading
//! would keep another from writing. A blocking operation here is an overlapped one
//! waited for on an event of its own direction.
//!
//! Nobody else can take the pipe: its name is unique and unguessable, it is made as
//! the first and only instance (a squatter's pipe of that name makes `pair` fail),
//! remote clients are refused, and the server checks that the client that connected
//! is this process.

use std::ffi::OsStr;
use std::io;
use std::os::windows::io::{
    AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle, RawHandle,
};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use windows_sys::Win32::Foundation::{
    ERROR_BROKEN_PIPE, ERROR_IO_PENDING, ERROR_NO_DATA, ERROR_PIPE_CONNECTED,
    ERROR_PIPE_NOT_CONNECTED, GENERIC_READ, GENERIC_WRITE, HANDLE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, ReadFile, WriteFile, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED,
    OPEN_EXISTING, PIPE_ACCESS_DUPLEX,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, GetNamedPipeClientProcessId, PeekNamedPipe,
    PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::CreateEventW;
use windows_sys::Win32::System::IO::{GetOverlappedResult, OVERLAPPED};

use super::{check, owned, wide};

/// The pipe's buffer quota in each direction: a batch of small tasks or results never
/// waits for the peer (the same figure as the POSIX socket buffers).
const BUFFER: u32 = 4 << 20;

/// One end of a channel.
pub struct PipeEnd {
    handle: OwnedHandle,
    /// One blocking operation per direction at a time, each with its own event.
    reading: Mutex<OwnedHandle>,
    writing: Mutex<OwnedHandle>,
}

/// A peer that closed its end: how the pipe's errors say it.
pub(super) fn is_closed(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error().map(|e| e as u32),
        Some(ERROR_BROKEN_PIPE | ERROR_NO_DATA | ERROR_PIPE_NOT_CONNECTED)
    )
}

/// A name no other pipe has: this process, a counter, and randomness.
fn unique_name() -> Vec<u16> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random = {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.load(Ordering::Relaxed));
        hasher.finish()
    };
    let name = format!(
        r"\\.\pipe\loky-{}-{}-{random:016x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    wide(OsStr::new(&name))
}

/// A channel: (the server end, for the manager; the client end, for the worker).
/// Neither is inheritable.
pub fn pair() -> io::Result<(PipeEnd, PipeEnd)> {
    let name = unique_name();
    // SAFETY: creates a pipe by a NUL-terminated name with default security; the
    // result is checked.
    let server = owned(unsafe {
        CreateNamedPipeW(
            name.as_ptr(),
            PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            1,
            BUFFER,
            BUFFER,
            0,
            null(),
        )
    })?;
    // SAFETY: opens the pipe just made, by its NUL-terminated name; checked.
    let client = owned(unsafe {
        CreateFileW(
            name.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            0,
            null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED,
            null_mut(),
        )
    })?;
    let server = PipeEnd::new(server)?;
    let mut overlapped = Overlapped::new(&server.reading.lock())?;
    // SAFETY: our live server handle and OVERLAPPED; the client is already there, so
    // the call completes at once (ERROR_PIPE_CONNECTED), nothing is left pending.
    let connected = unsafe { ConnectNamedPipe(server.raw(), overlapped.as_mut_ptr()) };
    if connected == 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(ERROR_PIPE_CONNECTED as i32) {
            return Err(err);
        }
    }
    let mut client_pid = 0u32;
    // SAFETY: our connected server end and a live u32 to fill.
    check(unsafe { GetNamedPipeClientProcessId(server.raw(), &mut client_pid) })?;
    if client_pid != std::process::id() {
        return Err(io::Error::other(
            "another process connected to a new channel's pipe first",
        ));
    }
    Ok((server, PipeEnd::new(client)?))
}

/// An OVERLAPPED for one operation, signalling `event` when done.
struct Overlapped(Box<OVERLAPPED>);

impl Overlapped {
    fn new(event: &OwnedHandle) -> io::Result<Overlapped> {
        // SAFETY: plain data; zeroed is the required initial value.
        let mut overlapped: Box<OVERLAPPED> = Box::new(unsafe { std::mem::zeroed() });
        overlapped.hEvent = event.as_raw_handle() as HANDLE;
        Ok(Overlapped(overlapped))
    }

    fn as_mut_ptr(&mut self) -> *mut OVERLAPPED {
        &mut *self.0
    }
}

fn new_event() -> io::Result<OwnedHandle> {
    // SAFETY: an unnamed manual-reset event (each operation resets it as it starts);
    // the result is checked.
    owned(unsafe { CreateEventW(null(), 1, 0, null()) })
}

impl PipeEnd {
    fn new(handle: OwnedHandle) -> io::Result<PipeEnd> {
        Ok(PipeEnd {
            handle,
            reading: Mutex::new(new_event()?),
            writing: Mutex::new(new_event()?),
        })
    }

    /// Take ownership of an end inherited from the parent (by its handle value).
    ///
    /// SAFETY (for callers): `value` must be an open pipe end, opened overlapped, that
    /// nothing else in this process owns.
    pub unsafe fn from_raw(value: usize) -> io::Result<PipeEnd> {
        // SAFETY: see the function's contract.
        PipeEnd::new(unsafe { OwnedHandle::from_raw_handle(value as RawHandle) })
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }

    /// Run one overlapped operation and wait for it: the bytes it moved.
    fn blocking(
        &self,
        event: &OwnedHandle,
        start: impl FnOnce(*mut OVERLAPPED) -> i32,
    ) -> io::Result<usize> {
        let mut overlapped = Overlapped::new(event)?;
        if start(overlapped.as_mut_ptr()) == 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(ERROR_IO_PENDING as i32) {
                return Err(err);
            }
        }
        let mut moved = 0u32;
        // SAFETY: waits until the operation started above on our handle is done, so
        // its OVERLAPPED and buffer outlive it.
        check(unsafe { GetOverlappedResult(self.raw(), &*overlapped.0, &mut moved, 1) })?;
        Ok(moved as usize)
    }

    /// Read what is there (at least one byte, waiting for it); 0 once the peer closed.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let event = self.reading.lock();
        let len = buf.len().min(u32::MAX as usize) as u32;
        let handle = self.raw();
        // SAFETY: the buffer is live and writable for `len` bytes until `blocking`
        // has waited for the read to finish.
        let read = self.blocking(&event, |ov| unsafe {
            ReadFile(handle, buf.as_mut_ptr(), len, null_mut(), ov)
        });
        match read {
            Err(err) if is_closed(&err) => Ok(0),
            other => other,
        }
    }

    /// Write some of `buf` (waiting for room); the bytes written.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let event = self.writing.lock();
        let len = buf.len().min(u32::MAX as usize) as u32;
        let handle = self.raw();
        // SAFETY: the buffer is live for `len` bytes until `blocking` has waited for
        // the write to finish.
        self.blocking(&event, |ov| unsafe {
            WriteFile(handle, buf.as_ptr(), len, null_mut(), ov)
        })
    }

    pub fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Bytes ready to be read without waiting; None once the peer closed.
    pub fn available(&self) -> io::Result<Option<usize>> {
        let mut total = 0u32;
        // SAFETY: asks only for the count, into a live u32.
        let peeked = check(unsafe {
            PeekNamedPipe(
                self.raw(),
                null_mut(),
                0,
                null_mut(),
                &mut total,
                null_mut(),
            )
        });
        match peeked {
            Ok(()) => Ok(Some(total as usize)),
            Err(err) if is_closed(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

impl AsHandle for PipeEnd {
    fn as_handle(&self) -> BorrowedHandle<'_> {
        std::os::windows::io::AsHandle::as_handle(&self.handle)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_child::with_channel;
    use super::*;

    #[test]
    fn bytes_cross_both_ways_in_order_and_the_close_is_seen() {
        let (server, client) = pair().unwrap();
        let big: Vec<u8> = (0..(12 << 20)).map(|i| (i % 251) as u8).collect(); // > BUFFER
        let expected = big.clone();
        let writer = std::thread::spawn(move || {
            client.write_all(&big).unwrap();
            let mut reply = [0u8; 5];
            let mut got = 0;
            while got < 5 {
                got += client.read(&mut reply[got..]).unwrap();
            }
            assert_eq!(&reply, b"thank");
            // `client` is dropped: the server sees the close.
        });
        let mut received = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        while received.len() < expected.len() {
            let n = server.read(&mut buf).unwrap();
            assert!(n > 0);
            received.extend_from_slice(&buf[..n]);
        }
        assert!(
            received == expected,
            "the bytes arrived intact and in order"
        );
        server.write_all(b"thank").unwrap();
        writer.join().unwrap();
        assert_eq!(
            server.read(&mut buf).unwrap(),
            0,
            "the peer's close reads as 0"
        );
        assert_eq!(server.available().unwrap(), None);
    }

    #[test]
    fn a_reader_blocked_in_one_thread_does_not_block_a_writer_in_another() {
        let (server, client) = pair().unwrap();
        let server = std::sync::Arc::new(server);
        let reader = {
            let server = server.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1];
                server.read(&mut buf).unwrap();
                buf[0]
            })
        };
        // While the reader waits, a write from this thread goes through.
        server.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 1);
        assert_eq!(client.available().unwrap(), Some(0));
        client.write_all(&[buf[0] + 1]).unwrap();
        assert_eq!(reader.join().unwrap(), b'y');
    }

    #[test]
    fn a_child_process_talks_on_its_inherited_end() {
        let (server, proc) = with_channel("pipe_echo");
        let message: Vec<u8> = (0..100_000).map(|i| (i % 7) as u8).collect();
        server.write_all(&message).unwrap();
        let mut echoed = Vec::new();
        let mut buf = vec![0u8; 65536];
        while echoed.len() < message.len() {
            let n = server.read(&mut buf).unwrap();
            assert!(n > 0, "the child closed early");
            echoed.extend_from_slice(&buf[..n]);
        }
        assert!(echoed.iter().zip(&message).all(|(e, m)| *e == m + 1));
        drop(server);
        assert_eq!(
            proc.wait(30_000).unwrap(),
            Some(0),
            "the child saw the close"
        );
    }
}
