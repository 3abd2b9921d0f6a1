//! What the core needs from Windows, one module per facility; the counterpart of the
//! POSIX ways in `platform/posix.rs` and `platform/linux.rs`.
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
//! The pool does not use them yet: they are the leaves the manager's wait and the
//! worker's channel plug into (see notes in `process`, `port`).

#![cfg_attr(not(test), allow(dead_code))]

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

use windows_sys::core::BOOL;
use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE};

/// A BOOL result as an io::Result (the error from GetLastError).
fn check(ok: BOOL) -> io::Result<()> {
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Own a handle returned by a call that reports failure with NULL (most creators) or
/// INVALID_HANDLE_VALUE (CreateFileW, CreateNamedPipeW).
fn owned(handle: HANDLE) -> io::Result<OwnedHandle> {
    if handle.is_null() || handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle the call just returned, owned by nobody else.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) })
}

/// `text` as a NUL-terminated UTF-16 string.
fn wide(text: &OsStr) -> Vec<u16> {
    text.encode_wide().chain(Some(0)).collect()
}
