//! Log records on their way from the workers' tasks to the parent's loggers, when the
//! pool forwards them (`forward_logging`):
//!
//! ```text
//!  worker: any thread of a task ─ logging handler ─► LogQueue ─► log writer thread ─┐
//!          (a result or any other message first takes what is queued: see endpoint) │
//!                                                                  LOG frames, in order
//!  parent: manager thread ─ on_frame ─► LogQueue ─► `Pool.next_logs()` ─► the log thread ◄┘
//!          (Python: each record handled by the logger of its name)
//! ```
//!
//! A queue is bounded in records and in bytes, and never makes its producer wait: a
//! record that finds it full is dropped and counted, and the count travels on with the
//! next records (the parent says so). What a slow consumer costs is the queue's bound.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A worker keeps at most this many records (or `WORKER_BYTES`) it could not send yet.
pub const WORKER_RECORDS: usize = 1000;
pub const WORKER_BYTES: usize = 1 << 20;
/// The parent keeps at most this many records (or `PARENT_BYTES`) its log thread has not
/// taken yet, all workers together.
pub const PARENT_RECORDS: usize = 10_000;
pub const PARENT_BYTES: usize = 16 << 20;

/// One record, pickled by the worker's Python side; `pid`: the worker it came from (in
/// the parent's queue; 0 in the worker's own).
#[derive(Debug)]
pub struct LogRecord {
    pub pid: i32,
    pub body: Vec<u8>,
}

/// What a take gives: the records queued, oldest first, and how many were dropped since
/// the last take.
#[derive(Debug, Default)]
pub struct LogBatch {
    pub records: Vec<LogRecord>,
    pub dropped: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// Records, or a count of dropped ones, are there to take.
    Ready,
    TimedOut,
    /// Closed, and nothing is left to take.
    Closed,
}

#[derive(Default)]
struct State {
    records: VecDeque<LogRecord>,
    bytes: usize,
    dropped: u64,
    closed: bool,
}

impl State {
    fn has_news(&self) -> bool {
        !self.records.is_empty() || self.dropped > 0
    }
}

pub struct LogQueue {
    state: Mutex<State>,
    news: Condvar,
    max_records: usize,
    max_bytes: usize,
}

impl LogQueue {
    pub fn new(max_records: usize, max_bytes: usize) -> LogQueue {
        LogQueue {
            state: Mutex::default(),
            news: Condvar::new(),
            max_records,
            max_bytes,
        }
    }

    /// Queue `record`, unless the queue is full or closed: then it is dropped (and
    /// counted, if open). Never waits. False if dropped.
    pub fn push(&self, record: LogRecord) -> bool {
        let mut state = self.state.lock();
        if state.closed {
            return false;
        }
        // A record larger than the byte bound still goes, alone.
        let full = state.records.len() >= self.max_records
            || (!state.records.is_empty() && state.bytes + record.body.len() > self.max_bytes);
        if full {
            state.dropped += 1;
        } else {
            state.bytes += record.body.len();
            state.records.push_back(record);
        }
        drop(state);
        self.news.notify_one();
        !full
    }

    /// Count `n` records dropped before they reached this queue.
    pub fn count_dropped(&self, n: u64) {
        if n > 0 {
            self.state.lock().dropped += n;
            self.news.notify_one();
        }
    }

    /// Wait up to `timeout` (None: as long as needed) for something to take.
    pub fn wait(&self, timeout: Option<Duration>) -> Waited {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.state.lock();
        loop {
            if state.has_news() {
                return Waited::Ready;
            }
            if state.closed {
                return Waited::Closed;
            }
            match deadline {
                None => self.news.wait(&mut state),
                Some(d) => {
                    if self.news.wait_until(&mut state, d).timed_out() && !state.has_news() {
                        return if state.closed {
                            Waited::Closed
                        } else {
                            Waited::TimedOut
                        };
                    }
                }
            }
        }
    }

    /// Everything queued now, and the count of records dropped since the last take.
    pub fn take(&self) -> LogBatch {
        let mut state = self.state.lock();
        state.bytes = 0;
        LogBatch {
            records: state.records.drain(..).collect(),
            dropped: std::mem::take(&mut state.dropped),
        }
    }

    /// No more records come: a wait with nothing left to take returns `Closed`; what is
    /// queued can still be taken.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.news.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn record(pid: i32, len: usize) -> LogRecord {
        LogRecord {
            pid,
            body: vec![pid as u8; len],
        }
    }

    #[test]
    fn records_come_out_in_order_and_a_full_queue_drops_and_counts() {
        let queue = LogQueue::new(3, 1000);
        for pid in 1..=5 {
            assert_eq!(queue.push(record(pid, 10)), pid <= 3);
        }
        assert_eq!(queue.wait(Some(Duration::ZERO)), Waited::Ready);
        let batch = queue.take();
        let pids: Vec<i32> = batch.records.iter().map(|r| r.pid).collect();
        assert_eq!((pids, batch.dropped), (vec![1, 2, 3], 2));
        // Room again; the count was reported once.
        assert!(queue.push(record(6, 10)));
        let batch = queue.take();
        assert_eq!((batch.records.len(), batch.dropped), (1, 0));
        assert_eq!(queue.wait(Some(Duration::ZERO)), Waited::TimedOut);
    }

    #[test]
    fn the_byte_bound_lets_one_large_record_through_alone() {
        let queue = LogQueue::new(100, 50);
        assert!(queue.push(record(1, 80)), "alone, it goes");
        assert!(!queue.push(record(2, 1)), "behind it, nothing fits");
        let batch = queue.take();
        assert_eq!((batch.records.len(), batch.dropped), (1, 1));
        assert!(queue.push(record(3, 30)));
        assert!(!queue.push(record(4, 30)), "30 + 30 > 50");
        assert!(queue.push(record(5, 20)));
        let batch = queue.take();
        assert_eq!((batch.records.len(), batch.dropped), (2, 1));
    }

    #[test]
    fn a_waiting_consumer_wakes_for_records_drops_and_the_close() {
        let queue = Arc::new(LogQueue::new(10, 1000));
        let consumer = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let mut seen = (0, 0);
                while queue.wait(None) == Waited::Ready {
                    let batch = queue.take();
                    seen.0 += batch.records.len();
                    seen.1 += batch.dropped;
                }
                seen
            })
        };
        queue.push(record(1, 1));
        queue.count_dropped(4);
        queue.push(record(2, 1));
        queue.close();
        assert!(!queue.push(record(3, 1)), "closed: refused");
        assert_eq!(consumer.join().unwrap(), (2, 4));
    }
}
