//! An outgoing frame: its header, its body and what travels with it. How it is written
//! is the platform's (`writer.rs` on a socket, `stream.rs` on a pipe).

use std::sync::Arc;

use super::{Header, Kind, HAS_FD, HEADER_LEN};
use crate::os::AsObject;

/// The bytes of an outgoing body: a Rust buffer, or a Python bytes object kept alive
/// without a copy.
pub type Body = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A descriptor to pass with a frame; the sender keeps its own until the frame is out.
pub type Attachment = Arc<dyn AsObject + Send + Sync>;

pub fn empty_body() -> Body {
    Arc::new(Vec::<u8>::new())
}

/// One outgoing frame: its header, its body (shared with the task table so a task can
/// be re-sent elsewhere if its worker dies before running it) and optionally a
/// descriptor (a handle on Windows) that travels with it.
pub struct OutFrame {
    pub(super) header: [u8; HEADER_LEN],
    pub(super) body: Body,
    /// Dropped once sent: the receiver holds its own copy then.
    pub(super) fd: Option<Attachment>,
}

impl OutFrame {
    pub fn new(task_id: u64, kind: Kind, body: Body) -> OutFrame {
        let header = Header {
            len: (*body).as_ref().len() as u64,
            task_id,
            kind: kind as u32,
            flags: 0,
        };
        OutFrame {
            header: header.encode(),
            body,
            fd: None,
        }
    }

    pub fn with_fd(mut self, fd: Attachment) -> OutFrame {
        let mut header = Header::decode(&self.header);
        header.flags |= HAS_FD;
        self.header = header.encode();
        self.fd = Some(fd);
        self
    }

    pub fn body(&self) -> &[u8] {
        (*self.body).as_ref()
    }

    /// Its body, shared.
    #[cfg_attr(unix, allow(dead_code))] // used by the Windows writers
    pub fn shared_body(&self) -> &Body {
        &self.body
    }

    /// What travels with it, if anything.
    #[cfg_attr(unix, allow(dead_code))]
    pub fn attachment(&self) -> Option<&Attachment> {
        self.fd.as_ref()
    }

    #[cfg(unix)]
    pub(super) fn len(&self) -> usize {
        HEADER_LEN + self.body().len()
    }
}
