//! Direct send: while the manager sleeps with an idle worker, a submitting thread may
//! write one small task straight to that worker's channel, sparing a wake-up of the
//! manager on the task's way to the worker (a context switch, on the critical path of
//! every round trip).
//!
//! ```text
//!  manager, before it sleeps:  offer(idle worker and its channel)
//!  submitting thread:          take the offer (lock) ─► record the task as running on
//!                              that worker in the task table ─► write the frame
//!  manager, after it wakes:    withdraw(): the offer ends; tasks sent that way are
//!                              recorded as that worker's, in order
//! ```
//!
//! The offer is one worker, one task: it ends with the first task sent or when the
//! manager wakes, whichever comes first, so the manager never writes to a worker's
//! channel concurrently, and the frame goes out whole (the worker was idle, its socket
//! empty; a frame is at most `DIRECT_MAX` bytes). Only the process that owns the pool
//! may take the offer (the handle checks before it comes here).

use parking_lot::Mutex;

use super::poll_io::{write_direct, DirectEnd};
use super::tasks::{Task, TaskTable};
use super::worker::WorkerId;
use crate::wire::{Kind, OutFrame};

/// Larger tasks, and tasks with a segment, go through the manager, which writes
/// without blocking. So do tasks with a time limit: the manager must be awake to arm
/// their deadline, and a direct send would leave it asleep.
pub const DIRECT_MAX: usize = 64 * 1024;

#[derive(Default)]
struct Offer {
    /// The offered worker and its channel.
    worker: Option<(WorkerId, DirectEnd)>,
    /// (worker, task id) sent that way, for the manager to record as the worker's.
    sent: Vec<(WorkerId, u64)>,
}

#[derive(Default)]
pub struct Direct {
    offer: Mutex<Offer>,
}

impl Direct {
    /// Manager, before it sleeps: offer this idle worker.
    pub fn offer(&self, worker: WorkerId, channel: DirectEnd) {
        self.offer.lock().worker = Some((worker, channel));
    }

    /// Manager, after it wakes: end the offer; the tasks sent meanwhile, in order.
    pub fn withdraw(&self) -> Vec<(WorkerId, u64)> {
        let mut offer = self.offer.lock();
        offer.worker = None;
        std::mem::take(&mut offer.sent)
    }

    /// Write `task` to the offered worker, if there is one; gives the task back
    /// otherwise (the manager then takes it). The task is recorded in `tasks` before
    /// the write: once a worker may hold it, it cannot be taken back.
    pub fn try_send(&self, task: Task, tasks: &Mutex<TaskTable>) -> Option<Task> {
        if task.segment.is_some()
            || task.timeout.is_some()
            || (*task.body).as_ref().len() > DIRECT_MAX
        {
            return Some(task);
        }
        let mut offer = self.offer.lock();
        let Some((worker, channel)) = &offer.worker else {
            return Some(task);
        };
        let worker = *worker;
        if !tasks.lock().sent_directly(&task, worker) {
            return None; // taken back while on its way: it must not run
        }
        let frame = OutFrame::new(task.id, Kind::Task, task.body.clone());
        if write_direct(channel, frame).is_err() {
            // The worker is going away: leave the task to the manager.
            tasks.lock().finish(task.id);
            offer.worker = None;
            return Some(task);
        }
        offer.worker = None;
        offer.sent.push((worker, task.id));
        None
    }
}
