//! Byte buffers crossing the boundary: received bodies and shared segments, exposed
//! through the buffer protocol so Python reads them without a copy, and the segments
//! this process sends.

use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;

use crate::shm::{Mapping, OutSegment};

/// Fill a buffer view of `len` bytes at `ptr`, owned by `owner`.
///
/// SAFETY (for callers): `ptr..ptr+len` must stay valid as long as `owner` lives; the
/// view holds a reference to `owner`.
unsafe fn fill_view(
    owner: &Bound<'_, PyAny>,
    view: *mut pyo3::ffi::Py_buffer,
    ptr: *mut u8,
    len: usize,
    readonly: bool,
    flags: std::ffi::c_int,
) -> PyResult<()> {
    // SAFETY: see the function's contract; `view` comes from the interpreter.
    let status = unsafe {
        pyo3::ffi::PyBuffer_FillInfo(
            view,
            owner.as_ptr(),
            ptr.cast(),
            len as pyo3::ffi::Py_ssize_t,
            readonly as std::ffi::c_int,
            flags,
        )
    };
    if status != 0 {
        return Err(PyErr::take(owner.py())
            .unwrap_or_else(|| PyBufferError::new_err("cannot export the buffer")));
    }
    Ok(())
}

/// A message body received from a channel, readable without a copy
/// (``memoryview(payload)``, ``pickle.loads(payload)``).
#[pyclass(module = "loky._core", frozen)]
pub struct Payload {
    bytes: Vec<u8>,
}

impl Payload {
    pub fn new(bytes: Vec<u8>) -> Payload {
        Payload { bytes }
    }
}

#[pymethods]
impl Payload {
    fn __len__(&self) -> usize {
        self.bytes.len()
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::ffi::c_int,
    ) -> PyResult<()> {
        let bytes = &slf.get().bytes;
        let (ptr, len) = (bytes.as_ptr() as *mut u8, bytes.len());
        // SAFETY: the bytes live as long as `slf`, which is frozen (never changed).
        unsafe { fill_view(slf.as_any(), view, ptr, len, true, flags) }
    }
}

/// A received shared-memory segment, mapped: its bytes through the buffer protocol
/// (``memoryview(segment)``), writable. Once the last view is gone the segment is
/// released to its sender. Holds no file descriptor.
#[pyclass(module = "loky._core", frozen)]
pub struct SharedSegment {
    mapping: Mapping,
}

impl SharedSegment {
    pub fn new(mapping: Mapping) -> SharedSegment {
        SharedSegment { mapping }
    }
}

#[pymethods]
impl SharedSegment {
    fn __len__(&self) -> usize {
        self.mapping.len()
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::ffi::c_int,
    ) -> PyResult<()> {
        let mapping = &slf.get().mapping;
        // SAFETY: the mapping lives as long as `slf`; the view holds a reference to it.
        unsafe {
            fill_view(
                slf.as_any(),
                view,
                mapping.as_ptr(),
                mapping.len(),
                false,
                flags,
            )
        }
    }
}

/// A segment this process filled to send (see `write_segment`).
#[pyclass(module = "loky._core", frozen)]
pub struct OutgoingSegment {
    pub segment: Arc<OutSegment>,
}

#[pymethods]
impl OutgoingSegment {
    fn __len__(&self) -> usize {
        self.segment.capacity()
    }
}
