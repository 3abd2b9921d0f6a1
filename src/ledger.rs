//! A worker's task ledger: one shared word where the worker records the task it takes
//! to run, so that when it dies the manager knows whether it had started the task at
//! the head of its queue or died before reading it (a task written to the socket of a
//! worker dying idle must run elsewhere, not fail).
//!
//! ```text
//!  manager: TaskLedger::new() ── with INIT (its descriptor) ──► worker: LedgerWriter::open
//!  manager: ledger.took(id)?  ◄── shared word: id + 1 ──────── each task it takes
//! ```
//!
//! The word holds `LEDGER_UNUSED` until the worker opens it (then every task counts as
//! taken: a worker that could not open its ledger says nothing), `LEDGER_OPEN` until it
//! takes its first task, then the id + 1 of the last task it took (tasks are taken in
//! order).

use std::io;
use std::sync::atomic::Ordering;

use crate::os::{AsObject, BorrowedObject};
use crate::shm::{page_size, OutSegment, Region};

const LEDGER_UNUSED: u64 = 0;
const LEDGER_OPEN: u64 = u64::MAX;

/// The manager's side: makes the page, reads it.
pub struct TaskLedger {
    page: OutSegment,
}

impl TaskLedger {
    pub fn new() -> io::Result<TaskLedger> {
        Ok(TaskLedger {
            page: OutSegment::create(page_size())?,
        })
    }

    /// Whether the worker took task `id` (the last task it took, as tasks are taken
    /// in order). A worker that never opened its ledger counts as having taken it.
    pub fn took(&self, id: u64) -> bool {
        match self.page.state().load(Ordering::Acquire) {
            LEDGER_UNUSED => true,
            last => last == id + 1,
        }
    }
}

impl AsObject for TaskLedger {
    #[cfg(unix)]
    fn as_fd(&self) -> BorrowedObject<'_> {
        crate::os::borrow(&self.page)
    }

    #[cfg(windows)]
    fn as_handle(&self) -> BorrowedObject<'_> {
        crate::os::borrow(&self.page)
    }
}

/// The worker's side: records each task it takes.
pub struct LedgerWriter {
    page: Region,
}

impl LedgerWriter {
    /// Map the ledger that came with the first message, and mark it in use.
    pub fn open(fd: BorrowedObject<'_>) -> io::Result<LedgerWriter> {
        let page = Region::map_whole(fd)?;
        page.state().store(LEDGER_OPEN, Ordering::Release);
        Ok(LedgerWriter { page })
    }

    /// Task `id` is taken to run now.
    pub fn record_taken(&self, id: u64) {
        self.page.state().store(id + 1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_tells_whether_the_worker_took_a_task() {
        let ledger = TaskLedger::new().unwrap();
        assert!(
            ledger.took(0),
            "a ledger the worker never opened says nothing"
        );
        let worker_side = LedgerWriter::open(crate::os::borrow(&ledger)).unwrap();
        assert!(!ledger.took(0), "opened: nothing taken yet");
        worker_side.record_taken(0);
        assert!(ledger.took(0));
        worker_side.record_taken(7);
        assert!(ledger.took(7) && !ledger.took(8));
        drop(worker_side);
        assert!(
            ledger.took(7),
            "a worker's exit leaves its ledger as it was"
        );
    }
}
