//! `Channel`: the worker's and the template's end of their channel to the manager.

use std::os::fd::{AsFd, IntoRawFd};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;

use super::buffers::{OutgoingSegment, Payload, SharedSegment};
use super::os_error;
use crate::channel::Channel as Blocking;
use crate::ledger::LedgerWriter;
use crate::shm::Mapping;
use crate::wire::{Attached, Kind, OutFrame};

/// One message received. A task's shared segment comes mapped (`segment`); a fork
/// request's socket comes as a descriptor the caller owns (`fd`, else -1). When the
/// attachment could not be received, `descriptor_dropped` (no descriptor left in this
/// process) or `map_error` says why.
#[pyclass(module = "loky._core", frozen, get_all)]
pub struct Message {
    kind: u32,
    task_id: u64,
    body: Py<Payload>,
    segment: Option<Py<SharedSegment>>,
    fd: i32,
    descriptor_dropped: bool,
    map_error: Option<String>,
}

/// The blocking end of a channel: frames in and out, with their attachments. Takes
/// the socket `fd` over and makes it close-on-exec. Blocking calls release the GIL.
/// A worker's end (`awaits_tasks`) watches for its next task for a moment after each
/// result before it sleeps (see `crate::channel`).
#[pyclass(module = "loky._core")]
pub struct Channel {
    inner: Blocking,
    /// The worker's ledger, from its first message: where it records each task it
    /// takes (see `crate::ledger`).
    ledger: Option<LedgerWriter>,
}

#[pymethods]
impl Channel {
    #[new]
    #[pyo3(signature = (fd, *, awaits_tasks = false))]
    fn new(fd: i32, awaits_tasks: bool) -> PyResult<Channel> {
        // SAFETY: the caller hands the descriptor over (documented above).
        let mut inner = unsafe { Blocking::from_raw(fd) }
            .map_err(|e| os_error(&format!("channel on descriptor {fd}"), e))?;
        if awaits_tasks {
            inner.watch_after_send();
        }
        Ok(Channel {
            inner,
            ledger: None,
        })
    }

    fn fileno(&self) -> i32 {
        self.inner.fd()
    }

    /// Whether `recv` would return without reading.
    fn has_queued(&self) -> bool {
        self.inner.has_queued()
    }

    /// The next message; None once the manager closed its end.
    fn recv(&mut self, py: Python<'_>) -> PyResult<Option<Message>> {
        let inner = &mut self.inner;
        let Some(frame) = py.detach(|| inner.recv()).map_err(|e| os_error("", e))? else {
            return Ok(None);
        };
        let mut message = Message {
            kind: frame.header.kind,
            task_id: frame.header.task_id,
            body: Py::new(py, Payload::new(frame.body))?,
            segment: None,
            fd: -1,
            descriptor_dropped: false,
            map_error: None,
        };
        if message.kind == Kind::Task as u32 {
            if let Some(ledger) = &self.ledger {
                ledger.record_taken(message.task_id); // it runs as soon as it is returned
            }
        }
        match frame.fd {
            Attached::None => {}
            Attached::Dropped => message.descriptor_dropped = true,
            Attached::Fd(fd) if message.kind == Kind::Fork as u32 => {
                message.fd = fd.into_raw_fd();
            }
            Attached::Fd(fd) if message.kind == Kind::Init as u32 => {
                self.ledger = LedgerWriter::open(fd.as_fd()).ok();
            }
            // Mapped now, as the task is taken to run: see `crate::shm` on ownership.
            Attached::Fd(fd) => match py.detach(|| Mapping::new(fd.as_fd())) {
                Ok(mapping) => {
                    mapping.populate();
                    message.segment = Some(Py::new(py, SharedSegment::new(mapping))?);
                }
                Err(err) => message.map_error = Some(err.to_string()),
            },
        }
        Ok(Some(message))
    }

    /// Send one message (blocking until it is written), with the segment holding its
    /// large buffers.
    #[pyo3(signature = (kind, task_id, body, segment=None))]
    fn send(
        &mut self,
        py: Python<'_>,
        kind: u32,
        task_id: u64,
        body: PyBackedBytes,
        segment: Option<PyRef<'_, OutgoingSegment>>,
    ) -> PyResult<()> {
        let kind = Kind::from_u32(kind)
            .ok_or_else(|| PyValueError::new_err(format!("unknown message kind {kind}")))?;
        // The last reference to the bytes object is dropped here, with the GIL: see
        // `PyBody` for why no Python object may be released without it.
        let body: std::sync::Arc<PyBackedBytes> = std::sync::Arc::new(body);
        let mut frame = OutFrame::new(task_id, kind, body.clone());
        if let Some(segment) = segment {
            frame = frame.with_fd(segment.segment.clone());
        }
        let inner = &mut self.inner;
        py.detach(|| inner.send(frame)).map_err(|e| os_error("", e))
    }
}
