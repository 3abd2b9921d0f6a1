//! The PyO3 classes, by subject; `lib.rs` registers them with the module.

pub mod buffers;
pub mod enums;
pub mod module;
pub mod pool;
pub mod worker;

use std::mem::ManuallyDrop;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyBufferError, PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;

use crate::shm::{OutSegment, CACHE};
use buffers::OutgoingSegment;

/// `err` as the OSError Python raises for its errno (BlockingIOError for EAGAIN, and
/// so on, with `errno` set), its text prefixed with `context` when there is one.
pub fn os_error(context: &str, err: std::io::Error) -> PyErr {
    // The system's text alone ("... (os error N)" without its tail), as Python words it.
    let full = err.to_string();
    let text = match err.raw_os_error() {
        Some(_) => full
            .rsplit_once(" (os error ")
            .map_or(&*full, |(text, _)| text),
        None => &full,
    };
    let text = if context.is_empty() {
        text.to_string()
    } else {
        format!("{context}: {text}")
    };
    match err.raw_os_error() {
        Some(code) => PyOSError::new_err((code, text)),
        None => PyOSError::new_err(text),
    }
}

create_exception!(
    _core,
    InheritedPoolError,
    PyRuntimeError,
    "The pool belongs to the process this one was forked from."
);

/// The bytes of a Python bytes object, kept without a copy as the body of a task the
/// manager thread sends.
///
/// Released on a thread without the GIL (the manager thread drops every task it sent),
/// the bytes object would go to PyO3's global queue of deferred decrefs, under a lock;
/// a `fork()` while the manager thread holds that lock leaves the child deadlocked in
/// its first call into this module (a multiprocessing or joblib child of a process
/// that uses a pool makes such calls). So a dropped body goes to its pool's
/// `ReleasedBytes`, which the pool's result thread empties with the GIL.
pub struct PyBody {
    bytes: ManuallyDrop<PyBackedBytes>,
    released: Arc<ReleasedBytes>,
}

impl PyBody {
    pub fn new(bytes: PyBackedBytes, released: &Arc<ReleasedBytes>) -> Self {
        PyBody {
            bytes: ManuallyDrop::new(bytes),
            released: released.clone(),
        }
    }
}

impl AsRef<[u8]> for PyBody {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PyBody {
    fn drop(&mut self) {
        // SAFETY: taken once, here; `bytes` is not used afterwards.
        let bytes = unsafe { ManuallyDrop::take(&mut self.bytes) };
        self.released.bytes.lock().push(bytes);
    }
}

/// Task bodies let go of, until a thread holding the GIL calls `drain`.
#[derive(Default)]
pub struct ReleasedBytes {
    bytes: Mutex<Vec<PyBackedBytes>>,
}

impl ReleasedBytes {
    /// Release the bytes objects handed here; `_py`: the caller holds the GIL.
    pub fn drain(&self, _py: Python<'_>) {
        let bytes = std::mem::take(&mut *self.bytes.lock());
        drop(bytes);
    }
}

impl Drop for ReleasedBytes {
    fn drop(&mut self) {
        // Left over only if the manager thread outlived its pool's handle, which drains
        // this with the GIL as it goes: whoever drops this last may not hold the GIL,
        // so these few bytes objects are leaked rather than risk the deadlock above.
        std::mem::forget(std::mem::take(self.bytes.get_mut()));
    }
}

/// A borrowed byte range of a Python buffer, usable without the GIL while the buffer
/// object (held by the caller) lives.
struct Span(*const u8, usize);

// SAFETY: only read, while the GIL-holding caller keeps the buffers alive.
unsafe impl Send for Span {}
unsafe impl Sync for Span {}

pub fn write_segment(
    py: Python<'_>,
    buffers: &[Bound<'_, PyAny>],
    lasting: bool,
) -> PyResult<(OutgoingSegment, Vec<usize>)> {
    let views = buffers
        .iter()
        .map(|b| PyBuffer::<u8>::get(b))
        .collect::<PyResult<Vec<_>>>()?;
    if views.iter().any(|v| !v.is_c_contiguous()) {
        return Err(PyBufferError::new_err(
            "shared segments take C-contiguous buffers",
        ));
    }
    let spans: Vec<Span> = views
        .iter()
        .map(|v| Span(v.buf_ptr() as *const u8, v.len_bytes()))
        .collect();
    let (segment, offsets) = py
        .detach(|| {
            // SAFETY: each span is a live, C-contiguous buffer held by `views`.
            let slices: Vec<&[u8]> = spans
                .iter()
                .map(|s| unsafe { std::slice::from_raw_parts(s.0, s.1) })
                .collect();
            if lasting {
                OutSegment::filled(&slices).map(|(segment, offsets)| (Arc::new(segment), offsets))
            } else {
                CACHE.write(&slices)
            }
        })
        .map_err(|e| os_error("", e))?;
    Ok((OutgoingSegment { segment }, offsets))
}
