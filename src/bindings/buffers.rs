//! Byte buffers crossing the boundary: received bodies and shared segments, exposed
//! through the buffer protocol so Python reads them without a copy, and the segments
//! this process sends.

use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;

use crate::shm::{Mapping, OutSegment, Region};

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

/// A shared-memory segment, mapped: its bytes through the buffer protocol
/// (``memoryview(segment)``), writable. A segment received with a message is released
/// to its sender once its last view is gone; one inherited at start is mapped
/// copy-on-write and releases nothing. Holds no file descriptor.
#[pyclass(module = "loky._core", frozen)]
pub struct SharedSegment {
    memory: Memory,
}

enum Memory {
    Received(Mapping),
    CopyOnWrite(Region),
}

impl SharedSegment {
    pub fn new(mapping: Mapping) -> SharedSegment {
        SharedSegment {
            memory: Memory::Received(mapping),
        }
    }

    pub fn copy_on_write(region: Region) -> SharedSegment {
        SharedSegment {
            memory: Memory::CopyOnWrite(region),
        }
    }

    fn bytes(&self) -> (*mut u8, usize) {
        match &self.memory {
            Memory::Received(mapping) => (mapping.as_ptr(), mapping.len()),
            Memory::CopyOnWrite(region) => (region.as_ptr(), region.len()),
        }
    }
}

#[pymethods]
impl SharedSegment {
    fn __len__(&self) -> usize {
        self.bytes().1
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::ffi::c_int,
    ) -> PyResult<()> {
        let (ptr, len) = slf.get().bytes();
        // SAFETY: the mapping lives as long as `slf`; the view holds a reference to it.
        unsafe { fill_view(slf.as_any(), view, ptr, len, false, flags) }
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

    /// Its file descriptor (Windows: its section's handle), which this object owns:
    /// to be duplicated for processes that inherit it (see `map_inherited_segment`).
    fn fileno(&self) -> isize {
        #[cfg(unix)]
        return std::os::fd::AsRawFd::as_raw_fd(&crate::os::borrow(&*self.segment)) as isize;
        #[cfg(windows)]
        return std::os::windows::io::AsRawHandle::as_raw_handle(&crate::os::borrow(&*self.segment))
            as isize;
    }
}
