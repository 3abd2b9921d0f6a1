//! What the core needs from Windows, one module per facility; the counterpart of the
//! POSIX ways in `platform/posix.rs` and `platform/linux.rs`. On Windows this folder is
//! `crate::platform` (see `lib.rs`); the worker's channel (`channel.rs`), its start
//! (`spawn.rs`) and the process queries the pool makes (`procfs.rs`) live here too,
//! under the names their POSIX twins have at the crate's root.
//!
//! | facility | Windows way | module |
//! |---|---|---|
//! | start a worker | CreateProcessW, inheriting only the handles named, in a Job object | `process` |
//! | end a worker's tree, end with the parent | a Job object per worker (terminate; kill on close) | `job` |
//! | a worker's channel | a named pipe pair, both ends overlapped | `pipe` |
//! | shared segments | pagefile-backed sections, handles duplicated into the receiver | `section` |
//! | wake a sleeping thread, see exits and I/O | an I/O completion port | `port` |
//! | Ctrl-C for a busy worker | an inherited event; the worker raises SIGINT itself | `interrupt` |
//! | cpu count | active processors, affinity, the job's CPU rate cap | `cpu` |
//! | other processes: running, memory, descendants | toolhelp snapshots, process handles | `processes` |
//!
//! There is one way for each facility, so `LOKY_PORTABLE` changes nothing here.

pub mod cpu;
pub mod interrupt;
pub mod job;
pub mod pipe;
pub mod port;
pub mod process;
pub mod processes;
pub mod section;
#[cfg(test)]
mod test_child;

use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{FromRawHandle, OwnedHandle, RawHandle};
use std::sync::Arc;

use windows_sys::core::BOOL;
use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE};

/// How a process ended: its exit code (an unsigned 32-bit value: a crash's is its
/// exception code, 0xC0000005 for an access violation), or minus SIGTERM for a process
/// the pool ended, as multiprocessing reports a `terminate()`d process on Windows.
pub type ExitStatus = Option<i64>;

/// The exit code the pool ends processes with (`job::Job::terminate`): the value
/// multiprocessing's `terminate()` uses on Windows.
pub const TERMINATED: u32 = 0x10000;

/// The status of a process the pool ended (`manager`'s `Stop`).
pub const KILLED: ExitStatus = Some(-(libc::SIGTERM as i64));

/// The status a process's exit code stands for.
pub fn exit_status(code: u32) -> ExitStatus {
    if code == TERMINATED {
        KILLED
    } else {
        Some(code.into())
    }
}

/// Nothing to read: there is one way per facility (`LOKY_PORTABLE` is a no-op).
pub fn reread_settings() {}

/// Which way each facility goes, as `facilities()` says on POSIX.
pub fn facilities() -> Vec<(&'static str, String)> {
    [
        ("channel", "named pipe"),
        ("wait", "I/O completion port"),
        ("segments", "paging-file sections"),
        ("lifetimes", "Job objects"),
    ]
    .into_iter()
    .map(|(name, how)| (name, how.to_string()))
    .collect()
}

/// Wakes the thread waiting on its port (the manager): a packet with token `WAKE`.
pub struct Waker {
    port: Arc<port::Port>,
}

/// The port token of wake-ups; other sources use other tokens.
pub const WAKE: usize = 0;

impl Waker {
    pub fn new() -> io::Result<Waker> {
        Ok(Waker {
            port: Arc::new(port::Port::new()?),
        })
    }

    pub fn wake(&self) {
        // A full port cannot refuse a post; nothing else can fail here.
        let _ = self.port.post(WAKE);
    }

    /// The port the woken thread waits on.
    pub fn port(&self) -> &Arc<port::Port> {
        &self.port
    }
}

/// A BOOL result as an io::Result (the error from GetLastError).
pub(crate) fn check(ok: BOOL) -> io::Result<()> {
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Own a handle returned by a call that reports failure with NULL (most creators) or
/// INVALID_HANDLE_VALUE (CreateFileW, CreateNamedPipeW).
pub(crate) fn owned(handle: HANDLE) -> io::Result<OwnedHandle> {
    if handle.is_null() || handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle the call just returned, owned by nobody else.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) })
}

/// Keep `handle` (inherited) from being inherited further, by the processes this one
/// starts.
pub fn not_inheritable(handle: std::os::windows::io::BorrowedHandle<'_>) -> io::Result<()> {
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Foundation::{SetHandleInformation, HANDLE_FLAG_INHERIT};
    // SAFETY: clears a flag of a live handle of this process.
    check(unsafe { SetHandleInformation(handle.as_raw_handle() as HANDLE, HANDLE_FLAG_INHERIT, 0) })
}

/// `text` as a NUL-terminated UTF-16 string.
fn wide(text: &OsStr) -> Vec<u16> {
    text.encode_wide().chain(Some(0)).collect()
}
