//! The PyO3 classes, by subject; `lib.rs` registers them with the module.

pub mod buffers;
pub mod channel;
pub mod pool;

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyBufferError, PyOSError, PyRuntimeError};
use pyo3::prelude::*;

use crate::shm::CACHE;
use buffers::OutgoingSegment;

create_exception!(
    _core,
    InheritedPoolError,
    PyRuntimeError,
    "The pool belongs to the process this one was forked from."
);

/// A borrowed byte range of a Python buffer, usable without the GIL while the buffer
/// object (held by the caller) lives.
struct Span(*const u8, usize);

// SAFETY: only read, while the GIL-holding caller keeps the buffers alive.
unsafe impl Send for Span {}
unsafe impl Sync for Span {}

pub fn write_segment(
    py: Python<'_>,
    buffers: &[Bound<'_, PyAny>],
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
            CACHE.write(&slices)
        })
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))?;
    Ok((OutgoingSegment { segment }, offsets))
}
