//! What the manager does with what its wait found: frames from the workers and the
//! template, and exits.
//!
//! ```text
//!  worker frames   READY ─► Ready        RESULT ─► the task is done: its outcome goes
//!                  INIT_FAILED ─► it exits      to its claimer or the result thread;
//!                  RETIRING ─► Leaving          the next one it holds starts
//!                  LOG (forward_logs) ─► the log queue, with the worker's pid
//!                  anything else, or a broken framing ─► killed (Faulted)
//!  template frames READY, FORKED(pid) ─► a new worker, EXITED(pid, status) ─► its exit
//!  an exit         its running task fails (WorkerDied) or ends (TaskEnded); tasks it
//!                  held unstarted go back to the queue; a replacement is owed unless
//!                  the pool meant it to leave; WorkerExited says why it left
//! ```

use std::time::Instant;

use super::event_loop::ManagerLoop;
use super::policy::{self, ExitReason, Stop};
use super::poll_io::{IoEvent, Token};
use super::tasks::{Attempt, AttemptEnd, EndCause};
use super::worker::{Phase, Worker};
use super::Event;
use crate::logs::LogRecord;
use crate::platform::ExitStatus;
use crate::shm::Incoming;
use crate::wire::{decode_exited, decode_log, decode_retiring, Frame, Kind};

impl ManagerLoop {
    pub(super) fn handle(&mut self, events: Vec<IoEvent>) {
        for event in events {
            match event {
                IoEvent::Frames {
                    token: Token::Worker(id),
                    frames,
                    corrupt,
                    ..
                } => {
                    for frame in frames {
                        if let Some(i) = self.position(id) {
                            self.on_frame(i, frame);
                        }
                    }
                    if let (Some(reason), Some(i)) = (corrupt, self.position(id)) {
                        self.fail(i, reason);
                    }
                }
                IoEvent::Frames {
                    token: Token::Template,
                    frames,
                    ..
                } => frames.into_iter().for_each(|f| self.on_template_frame(f)),
                IoEvent::Exited {
                    token: Token::Worker(id),
                    status,
                } => {
                    if let Some(i) = self.position(id) {
                        self.on_exit(i, status);
                    }
                }
                IoEvent::Exited {
                    token: Token::Template,
                    ..
                } => self.on_template_exit(),
            }
        }
    }

    fn on_frame(&mut self, i: usize, frame: Frame) {
        if let Phase::Faulted(_) = self.workers[i].phase {
            return;
        }
        let task_id = frame.header.task_id;
        match Kind::from_u32(frame.header.kind) {
            Some(Kind::Result) if self.workers[i].held.front() != Some(&task_id) => {
                self.fail(
                    i,
                    format!("it answered task {task_id} which it was not running"),
                );
            }
            Some(Kind::Result) => self.on_result(i, frame),
            Some(Kind::Ready) => {
                let worker = &mut self.workers[i];
                // Once asked to leave (the pool shrank meanwhile), it stays on its way.
                if worker.phase == Phase::Starting {
                    worker.phase = Phase::Ready;
                    worker.idle_since = Instant::now();
                    self.ready_since_start_death = true;
                }
            }
            Some(Kind::InitFailed) => self.workers[i].phase = Phase::StartFailed(frame.body),
            Some(Kind::Retiring) => {
                // It exits after this message: its queued tasks go to others.
                let worker = &mut self.workers[i];
                worker.phase = Phase::Leaving(if decode_retiring(&frame) {
                    ExitReason::MemoryLimit
                } else {
                    ExitReason::MemoryGrowth
                });
                let unstarted: Vec<u64> = worker.held.drain(..).collect();
                self.shared.tasks.lock().give_back(unstarted);
            }
            Some(Kind::Log) if self.shared.logs.is_some() => self.on_log(i, frame),
            _ => self.fail(i, format!("unexpected message kind {}", frame.header.kind)),
        }
    }

    /// Worker `i` forwards a log record: queued for the log thread, or dropped and
    /// counted if it lags too far behind (never waits).
    fn on_log(&self, i: usize, frame: Frame) {
        let Some(logs) = &self.shared.logs else {
            return;
        };
        let (dropped, body) = decode_log(frame);
        logs.count_dropped(dropped);
        if !body.is_empty() {
            logs.push(LogRecord {
                pid: self.workers[i].pid,
                body,
            });
        }
    }

    /// Worker `i` answered the task it was running: done; the next it holds starts.
    fn on_result(&mut self, i: usize, frame: Frame) {
        let now = Instant::now();
        let worker = &mut self.workers[i];
        let task_id = worker.held.pop_front().expect("checked by the caller");
        worker.tasks_done += 1;
        if worker.held.is_empty() {
            worker.idle_since = now;
        }
        let pid = worker.pid;
        let next = worker.held.front().copied();
        let mut tasks = self.shared.tasks.lock();
        let since = tasks.running_since(task_id);
        tasks.finish(task_id);
        let terminate_next = next.is_some_and(|id| tasks.terminated_unstarted(id));
        if let Some(id) = next {
            tasks.start(id, now);
        }
        drop(tasks);
        if terminate_next {
            // A task terminated before it started starts now: end its worker.
            self.end_worker(i, EndCause::Terminated);
        }
        if let Some(since) = since {
            let spent = now.duration_since(since);
            self.service_time = Some(policy::update_service_time(self.service_time, spent));
        }
        self.shared.emit(Event::Result {
            task_id,
            pid,
            body: frame.body,
            // Mapped at once, so that no descriptor waits in the event queue.
            segment: Incoming::receive(frame.fd),
        });
    }

    /// Worker `i` exited: its running task fails or ends, the others run elsewhere.
    pub(super) fn on_exit(&mut self, i: usize, status: ExitStatus) {
        let mut worker = self.workers.remove(i);
        self.io.remove(Token::Worker(worker.id));
        let phase = std::mem::replace(&mut worker.phase, Phase::Starting);
        if let Phase::StartFailed(body) = phase {
            self.broken = true;
            self.shared.emit(Event::InitFailed {
                pid: worker.pid,
                body,
            });
            return;
        }
        // A starting worker's death breaks the pool unless it is forgiven (see
        // `ready_since_start_death`); a forgiven one is replaced as any death is.
        if phase == Phase::Starting && !std::mem::take(&mut self.ready_since_start_death) {
            self.broken = true;
            self.shared.emit(Event::StartFailed {
                pid: worker.pid,
                exitcode: status,
                error: None,
            });
            return;
        }
        let reason = match &phase {
            Phase::Leaving(reason) if worker.held.is_empty() => *reason,
            Phase::Ending { cause, .. } => match cause {
                EndCause::Timeout => ExitReason::TaskTimeout,
                EndCause::Terminated => ExitReason::TaskTerminated,
                EndCause::MemoryLimit => ExitReason::MemoryLimit,
            },
            Phase::Faulted(_) => ExitReason::Killed,
            _ => ExitReason::Died,
        };
        if reason.owes_replacement() {
            self.starts_owed += 1;
        }
        worker.phase = phase;
        self.fail_running_task(&mut worker, status);
        // Tasks it had received but not started run elsewhere.
        let unstarted: Vec<u64> = worker.held.drain(..).collect();
        self.shared.tasks.lock().give_back(unstarted);
        self.shared.emit(Event::WorkerExited {
            pid: worker.pid,
            exitcode: status,
            reason,
        });
    }

    /// The task `worker` was running when it exited runs again if it may, else fails
    /// (WorkerDied) or ends (TaskEnded). One it had not taken yet did not run: it goes
    /// back to the queue with the others (a worker dying idle may be sent one before
    /// its death is seen), unless it was terminated.
    fn fail_running_task(&mut self, worker: &mut Worker, status: ExitStatus) {
        let mut tasks = self.shared.tasks.lock();
        let ending = match worker.phase {
            Phase::Ending { cause, .. } => Some(cause),
            _ => None,
        };
        if !worker.took_front_task() {
            if ending == Some(EndCause::Terminated) {
                if let Some(id) = worker.held.pop_front() {
                    tasks.finish(id); // terminated before it began: never runs
                }
            }
            return;
        }
        let Some(task_id) = worker.held.pop_front() else {
            return;
        };
        let pid = worker.pid;
        let reason = match &mut worker.phase {
            Phase::Faulted(reason) => std::mem::take(reason),
            _ => String::new(),
        };
        let end = match ending {
            Some(cause) => AttemptEnd::Ended(cause),
            None => AttemptEnd::Died(status, reason.clone()),
        };
        let Some(attempts) = tasks.end_attempt(task_id, Attempt { pid, end }) else {
            return; // it runs again
        };
        drop(tasks);
        self.shared.emit(match ending {
            Some(cause) => Event::TaskEnded {
                task_id,
                pid,
                cause,
                peak_rss: (cause == EndCause::MemoryLimit).then_some(worker.peak_rss),
                attempts,
            },
            None => Event::WorkerDied {
                task_id,
                pid,
                exitcode: status,
                reason,
                attempts,
            },
        });
    }

    // ---- the template ----------------------------------------------------------------

    fn on_template_frame(&mut self, frame: Frame) {
        match Kind::from_u32(frame.header.kind) {
            Some(Kind::Ready) => {
                if let Some(template) = self.template.as_mut() {
                    template.ready = true;
                }
            }
            Some(Kind::Forked) => self.on_forked(frame.header.task_id as i32),
            Some(Kind::Exited) => {
                let (pid, status) = decode_exited(&frame);
                let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
                    return;
                };
                // Results written just before the exit come first.
                let token = Token::Worker(self.workers[i].id);
                if let Some(frames) = self.io.read(token) {
                    self.handle(vec![frames]);
                }
                if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
                    self.on_exit(i, status);
                }
            }
            _ => {}
        }
    }

    fn on_forked(&mut self, pid: i32) {
        let Some(channel) = self.template.as_mut().and_then(|t| t.requested.pop_front()) else {
            return;
        };
        if let Some(spawned) = crate::spawn::forked(pid, channel) {
            self.add_worker(spawned, true);
        }
    }

    /// The template died (it should not; it was reaped): its workers die with it (their
    /// watchdog). Count them as killed and go on with exec'd workers.
    fn on_template_exit(&mut self) {
        if self.template.take().is_none() {
            return;
        }
        self.io.remove(Token::Template);
        self.template_failed = true;
        while let Some(i) = self.workers.iter().position(|w| w.from_template) {
            let token = Token::Worker(self.workers[i].id);
            if let Some(frames) = self.io.read(token) {
                self.handle(vec![frames]);
            }
            if let Some(i) = self.workers.iter().position(|w| w.from_template) {
                self.io.kill(Token::Worker(self.workers[i].id), Stop::Kill);
                self.on_exit(i, crate::platform::KILLED);
            }
        }
    }
}
