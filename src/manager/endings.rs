//! Ending a task's worker: when a task runs past its time limit, is terminated, or its
//! worker's memory passes the limit; killing a worker that stopped in the middle of a
//! message or broke the protocol; passing Ctrl-C on to busy workers; and the next
//! deadline the loop must wake for.
//!
//! ```text
//!  time limit, terminate ─► end_worker: SIGTERM to its tree ─(END_GRACE)─► SIGKILL
//!  memory past the limit by half again (looked at every MEMORY_WATCH) ─► SIGKILL now
//!  a message begun and not finished for FRAME_STALL, garbage ─► fail: SIGKILL now
//!  then its exit (events.rs) ends the task (TaskEnded / WorkerDied) or runs it again
//! ```

use std::time::{Duration, Instant};

use super::event_loop::ManagerLoop;
use super::policy::{self, Stop};
use super::poll_io::Token;
use super::tasks::{EndCause, TaskState};
use super::worker::Phase;

impl ManagerLoop {
    /// Ctrl-C: SIGINT to the process group of every worker running a task.
    pub(super) fn interrupt_busy_workers(&self) {
        for worker in self.workers.iter().filter(|w| w.is_busy()) {
            if let Phase::Ready | Phase::Draining(_) = worker.phase {
                self.io.interrupt(Token::Worker(worker.id));
            }
        }
    }

    /// End the tasks in `ids` (terminated by the caller, who could not take them
    /// back): a running task ends its worker now, one its worker holds unstarted when
    /// it starts, one put back in the queue (its worker died) is dropped.
    pub(super) fn terminate_tasks(&mut self, ids: &[u64]) {
        for &id in ids {
            let state = self.shared.tasks.lock().state(id);
            match state {
                Some(TaskState::Running { worker, .. }) => {
                    if let Some(i) = self.position(worker) {
                        self.end_worker(i, EndCause::Terminated);
                    }
                }
                Some(TaskState::Sent { .. }) => {
                    self.shared.tasks.lock().terminate_on_start(id);
                }
                Some(TaskState::Queued) => {
                    self.shared.tasks.lock().cancel(id);
                }
                _ => {} // ending already, or finished meanwhile
            }
        }
    }

    /// End worker `i` for its running task, with its process tree: SIGTERM now,
    /// SIGKILL after the grace period. The tasks it holds unstarted run elsewhere (but
    /// those terminated meanwhile, which never run).
    pub(super) fn end_worker(&mut self, i: usize, cause: EndCause) {
        let worker = &mut self.workers[i];
        if matches!(worker.phase, Phase::Ending { .. }) {
            return;
        }
        let running = worker.held.pop_front();
        let unstarted: Vec<u64> = worker.held.drain(..).collect();
        worker.held.extend(running);
        worker.phase = Phase::Ending {
            cause,
            since: Instant::now(),
            killed: false,
        };
        let token = Token::Worker(worker.id);
        let mut tasks = self.shared.tasks.lock();
        if let Some(id) = running {
            tasks.end(id, cause);
        }
        tasks.give_back(unstarted);
        drop(tasks);
        if cause == EndCause::MemoryLimit {
            // It takes memory from everything else: no grace period.
            if let Phase::Ending { killed, .. } = &mut worker.phase {
                *killed = true;
            }
            self.io.kill(token, Stop::Kill);
        } else {
            self.io.kill(token, Stop::Term);
        }
    }

    /// Tasks past their time limit end their worker; workers ended and still alive
    /// after the grace period are killed, as are workers that stopped in the middle
    /// of a message.
    pub(super) fn enforce_deadlines(&mut self, now: Instant) {
        if let Some(template) = self.template.as_mut() {
            if template.start_deadline().is_some_and(|d| d <= now) {
                // Its exit (seen as any) hands its requests over to exec'd workers.
                template.given_up = true;
                self.io.kill(Token::Template, Stop::Kill);
            }
        }
        let look_at_memory = self.memory_watch_due().is_some_and(|d| d <= now);
        if look_at_memory {
            self.memory_seen = now;
        }
        for i in 0..self.workers.len() {
            if look_at_memory {
                self.look_at_memory(i);
            }
            let overdue = self.task_deadline(i).is_some_and(|d| d <= now);
            if overdue {
                self.end_worker(i, EndCause::Timeout);
            }
            let worker = &mut self.workers[i];
            let token = Token::Worker(worker.id);
            if let Phase::Ending { since, killed, .. } = &mut worker.phase {
                if !*killed && now.duration_since(*since) >= policy::END_GRACE {
                    *killed = true;
                    self.io.kill(token, Stop::Kill);
                }
            }
            if self.memory_over_limit(i) {
                self.end_worker(i, EndCause::MemoryLimit);
            }
            if self.stall_deadline(i).is_some_and(|d| d <= now) {
                self.fail(
                    i,
                    format!(
                        "it began a message and sent nothing more of it for {} s",
                        policy::FRAME_STALL.as_secs()
                    ),
                );
            }
        }
    }

    /// When the busy workers' memory is next looked at: with a memory limit, while a
    /// worker runs a task.
    fn memory_watch_due(&self) -> Option<Instant> {
        self.config.max_worker_memory?;
        let busy = self.workers.iter().any(|w| w.is_busy());
        busy.then_some(self.memory_seen + policy::MEMORY_WATCH)
    }

    /// Note worker `i`'s resident memory, if it runs a task.
    fn look_at_memory(&mut self, i: usize) {
        let worker = &mut self.workers[i];
        if !worker.is_busy() || !matches!(worker.phase, Phase::Ready | Phase::Draining(_)) {
            return;
        }
        if let Some(rss) = crate::procfs::resident_bytes(worker.pid) {
            worker.peak_rss = worker.peak_rss.max(rss);
        }
    }

    /// Whether worker `i`, running a task, holds more memory than the limit allows.
    fn memory_over_limit(&self, i: usize) -> bool {
        let worker = &self.workers[i];
        let Some(limit) = self.config.max_worker_memory else {
            return false;
        };
        worker.is_busy()
            && matches!(worker.phase, Phase::Ready | Phase::Draining(_))
            && policy::over_memory_limit(worker.peak_rss, limit)
    }

    /// When worker `i`'s running task must end, if it has a time limit.
    fn task_deadline(&self, i: usize) -> Option<Instant> {
        let worker = &self.workers[i];
        if let Phase::Starting | Phase::Ending { .. } = worker.phase {
            return None;
        }
        self.shared.tasks.lock().deadline(*worker.held.front()?)
    }

    /// When worker `i` is killed for a message it began and stopped sending, if it did.
    fn stall_deadline(&self, i: usize) -> Option<Instant> {
        let worker = &self.workers[i];
        if let Phase::Faulted(_) | Phase::Ending { .. } = worker.phase {
            return None;
        }
        Some(self.io.stalled_since(Token::Worker(worker.id))? + policy::FRAME_STALL)
    }

    /// Worker `i` broke the protocol (garbage on its channel, say): kill it. Its exit
    /// is then handled like any death, with the reason.
    pub(super) fn fail(&mut self, i: usize, reason: String) {
        let worker = &mut self.workers[i];
        if let Phase::Faulted(_) | Phase::Ending { .. } = worker.phase {
            return;
        }
        worker.phase = Phase::Faulted(reason);
        self.io.kill(Token::Worker(worker.id), Stop::Kill);
    }

    /// Time until the next deadline: an idle timeout, a task's time limit, the end of
    /// an ended worker's grace period, a stalled message's limit.
    pub(super) fn next_deadline(&self) -> Option<Duration> {
        let idle = self.config.idle_timeout.map(|timeout| {
            self.workers
                .iter()
                .filter(|w| w.is_idle())
                .map(move |w| w.idle_since + timeout)
        });
        let tasks = (0..self.workers.len()).filter_map(|i| self.task_deadline(i));
        let grace = self.workers.iter().filter_map(|w| match w.phase {
            Phase::Ending {
                since,
                killed: false,
                ..
            } => Some(since + policy::END_GRACE),
            _ => None,
        });
        let stalls = (0..self.workers.len()).filter_map(|i| self.stall_deadline(i));
        let all = idle
            .into_iter()
            .flatten()
            .chain(tasks)
            .chain(grace)
            .chain(stalls)
            .chain(self.memory_watch_due())
            .chain(self.template.as_ref().and_then(|t| t.start_deadline()));
        policy::time_to_next(Instant::now(), all)
    }
}
