//! The manager thread's loop: gather the inputs, decide (policy.rs), do the I/O.
//!
//! ```text
//!  loop:
//!    take new submissions; read control (size, shutdown)
//!    kill shutdown ─► kill every tree, stop
//!    adjust the pool: start workers (exec, or forked by the template), retire surplus
//!    dispatch queued tasks to ready workers; retire idle ones; flush channels
//!    shutdown and nothing left ─► stop
//!    offer an idle worker for direct sends, then poll(): wake-up fd, channels, pidfds
//!    withdraw the offer; read channels (results first), then handle exits
//!  stop: end the template, emit Closed, close the claims
//! ```

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::policy::{self, ExitReason, Load};
use super::poll_io::receive_segment;
use super::worker::{EndCause, State, Task, Worker};
use super::{Config, Event, Shared, Shutdown, WorkerStat};
use crate::platform::ExitStatus;
use crate::procfs::kill_tree;
use crate::spawn::{spawn_worker, Spawned};
use crate::template::Template;
use crate::watch::Watch;
use crate::wire::{Frame, Kind};

pub(super) struct ManagerLoop {
    pub(super) config: Config,
    pub(super) shared: Arc<Shared>,
    pub(super) submitted: Receiver<Task>,
    /// Tasks waiting for a worker, oldest first (re-queued ones go to the front).
    pub(super) pending: VecDeque<Task>,
    pub(super) workers: Vec<Worker>,
    /// Workers to start even with no work queued: replacements for workers that left
    /// unplanned, and at first the whole pool (it is made for a task on its way, so its
    /// workers start while that task is being pickled).
    pub(super) starts_owed: usize,
    /// Set once a worker could not start or initialize: start no more.
    pub(super) broken: bool,
    /// A worker became ready since the last death of a starting worker was forgiven.
    /// Workers can start, so such a death was done to the worker (a signal, the OOM
    /// killer): it is replaced. A second one with no worker ready in between breaks
    /// the pool, so a pool that can no longer start workers never loops respawning.
    pub(super) ready_since_start_death: bool,
    /// Moving average of how long a task keeps a worker busy.
    pub(super) service_time: Option<Duration>,
    /// The pids last copied to `Control::pids`.
    pub(super) published_pids: Vec<i32>,
    pub(super) template: Option<Template>,
    /// The template could not start or died: start workers with exec only.
    pub(super) template_failed: bool,
    /// How the loop waits while results are due (see `crate::watch`).
    pub(super) watch: Watch,
}

/// How long the manager watches for results before it sleeps: tiny tasks' results come
/// every few µs; a longer watch found little more and cost throughput on two processors.
const RESULTS_WATCH: Duration = Duration::from_micros(20);

impl ManagerLoop {
    pub(super) fn new(config: Config, shared: Arc<Shared>, submitted: Receiver<Task>) -> Self {
        let pool_size = config.max_workers;
        ManagerLoop {
            config,
            shared,
            submitted,
            pending: VecDeque::new(),
            workers: Vec::new(),
            starts_owed: pool_size,
            broken: false,
            ready_since_start_death: false,
            service_time: None,
            published_pids: Vec::new(),
            template: None,
            template_failed: false,
            watch: Watch::new(RESULTS_WATCH),
        }
    }

    pub(super) fn run(&mut self) {
        loop {
            // Clear the flag before looking, so a later submit wakes us again.
            self.shared.notified.store(false, Ordering::SeqCst);
            self.pending.extend(self.submitted.try_iter());
            let (shutdown, max_workers, terminate, interrupt) = {
                let mut control = self.shared.control.lock();
                let terminate = std::mem::take(&mut control.terminate);
                let interrupt = std::mem::take(&mut control.interrupt);
                (control.shutdown, control.max_workers, terminate, interrupt)
            };
            match shutdown {
                Some(Shutdown::Kill) => {
                    self.kill_all(libc::SIGKILL);
                    break;
                }
                Some(Shutdown::Terminate) => {
                    self.kill_all(libc::SIGTERM);
                    break;
                }
                _ => {}
            }
            if interrupt {
                self.interrupt_busy_workers();
            }
            self.terminate_tasks(&terminate);
            self.enforce_deadlines(Instant::now());
            self.adjust_pool(max_workers, shutdown.is_some());
            if shutdown.is_none() {
                self.maybe_start_template();
            }
            self.dispatch();
            self.retire_idle(shutdown.is_some());
            self.flush_all();
            self.publish_pids();
            // After this turn's starts: a snapshot asked for after a submit shows the
            // workers started for it.
            self.answer_stats();
            if shutdown.is_some() && self.workers.is_empty() && self.nothing_pending() {
                break;
            }
            let live = self.live_count();
            let idle_ready = self.workers.iter().any(Worker::is_idle);
            let hungry =
                shutdown.is_none() && policy::has_room(live, max_workers, self.broken, idle_ready);
            self.shared.hungry.store(hungry, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            if hungry && !self.submitted.is_empty() {
                continue; // a task came in meanwhile, maybe without waking us
            }
            if shutdown.is_none() {
                // After the look at the queue: an offer must not outlive the sleep.
                self.offer_idle_worker();
            }
            self.wait_and_handle();
        }
        self.stop_template();
        self.publish_pids();
        self.shared.emit(Event::Closed);
        self.shared.claims.close();
        let (finished, done) = &self.shared.finished;
        *finished.lock() = true;
        done.notify_all();
    }

    pub(super) fn live_count(&self) -> usize {
        let forking = self.template.as_ref().map_or(0, |t| t.requested.len());
        self.workers.iter().filter(|w| w.is_live()).count() + forking
    }

    pub(super) fn nothing_pending(&self) -> bool {
        self.broken || self.pending.is_empty()
    }

    // ---- pool size -----------------------------------------------------------------

    /// Start workers up to the target while there is work (or a replacement is owed);
    /// retire the surplus when the target shrank.
    fn adjust_pool(&mut self, target: usize, shutting_down: bool) {
        let live = self.live_count();
        if live > target {
            let live_workers: Vec<usize> = (0..self.workers.len())
                .filter(|&i| self.workers[i].is_live())
                .collect();
            let busy: Vec<bool> = live_workers
                .iter()
                .map(|&i| !self.workers[i].inflight.is_empty())
                .collect();
            for (j, now) in policy::shrink_choice(&busy, live - target) {
                let worker = &mut self.workers[live_workers[j]];
                if now {
                    worker.request_exit(ExitReason::Shrink);
                } else {
                    worker.drain(ExitReason::Shrink);
                }
            }
            return;
        }
        if self.broken {
            return;
        }
        let wanted = policy::workers_to_start(
            self.pending.len(),
            live,
            target,
            self.starts_owed,
            shutting_down,
        );
        self.starts_owed = 0;
        for _ in 0..wanted {
            if let Err(err) = self.start_worker() {
                self.broken = true;
                self.shared.emit(Event::StartFailed {
                    pid: 0,
                    exitcode: None,
                    error: Some(err),
                });
                return;
            }
        }
    }

    /// Start one worker: forked by the template when it is ready, else exec'd.
    fn start_worker(&mut self) -> io::Result<()> {
        if let Some(template) = self.template.as_mut().filter(|t| t.ready) {
            return template.request();
        }
        let spawned = spawn_worker(&self.config.command)?;
        self.add_worker(spawned, false);
        Ok(())
    }

    pub(super) fn add_worker(&mut self, spawned: Spawned, forked: bool) {
        let pid = spawned.pid;
        self.workers
            .push(Worker::new(spawned, &self.config.init, forked));
        self.shared.emit(Event::WorkerStarted { pid, forked });
    }

    /// Start the template once the first workers are up, so it does not compete with
    /// them for the CPU during a cold start.
    fn maybe_start_template(&mut self) {
        let Some(command) = &self.config.template else {
            return;
        };
        if self.template.is_some() || self.template_failed || self.broken {
            return;
        }
        let starting = self.workers.iter().any(|w| w.state == State::Starting);
        let ready = self.workers.iter().any(|w| w.state == State::Ready);
        if starting || !ready {
            return;
        }
        match Template::start(command) {
            Ok(template) => self.template = Some(template),
            Err(_) => self.template_failed = true,
        }
    }

    // ---- tasks ---------------------------------------------------------------------

    fn dispatch(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let ready: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].state == State::Ready)
            .collect();
        if ready.is_empty() {
            return;
        }
        let budget = self.config.max_tasks_per_child;
        let loads: Vec<Load> = ready
            .iter()
            .map(|&i| Load {
                inflight: self.workers[i].inflight.len(),
                budget_left: budget.map(|b| b.saturating_sub(self.workers[i].tasks_sent)),
            })
            .collect();
        let limit = policy::batch_limit(self.pending.len(), ready.len(), self.service_time);
        for (j, count) in policy::dispatch_plan(&loads, self.pending.len(), limit) {
            let worker = &mut self.workers[ready[j]];
            let mut sent = 0;
            while sent < count {
                let Some(front) = self.pending.front() else {
                    break;
                };
                let holds_timed = worker.inflight.iter().any(|t| t.timeout.is_some());
                let batched = !worker.inflight.is_empty();
                if batched && (holds_timed || !policy::may_batch(front.timeout.is_some())) {
                    break; // a timed task starts when its worker takes it
                }
                let task = self.pending.pop_front().expect("looked at just above");
                if self.shared.take_for_sending(task.id) {
                    worker.send(task);
                    sent += 1;
                }
            }
            if budget.is_some_and(|b| worker.tasks_sent >= b) {
                // Spent: finish what it holds, then make room for a fresh one.
                worker.drain(ExitReason::TaskLimit);
            }
        }
    }

    /// Ctrl-C: SIGINT to the process group of every worker running a task.
    fn interrupt_busy_workers(&self) {
        for worker in &self.workers {
            let busy = matches!(worker.state, State::Ready | State::Draining)
                && !worker.inflight.is_empty();
            if busy {
                // SAFETY: a signal to the group our worker leads.
                unsafe { libc::killpg(worker.pid, libc::SIGINT) };
            }
        }
    }

    /// End the workers running the tasks in `ids` (terminated by the caller); a task a
    /// worker holds unstarted ends its worker when it starts, if it ever does.
    fn terminate_tasks(&mut self, ids: &[u64]) {
        for &id in ids {
            let found = self.workers.iter().enumerate().find_map(|(i, w)| {
                w.inflight
                    .iter()
                    .position(|t| t.id == id)
                    .map(|pos| (i, pos))
            });
            match found {
                Some((i, 0)) if self.workers[i].ending.is_none() => {
                    self.end_worker(i, EndCause::Terminated)
                }
                Some((i, _)) => self.workers[i].terminate_on_start.push(id),
                None => {} // finished meanwhile
            }
        }
    }

    /// End worker `i` for its running task, with its process tree; the tasks it holds
    /// unstarted run elsewhere (but those terminated meanwhile, which never run).
    fn end_worker(&mut self, i: usize, cause: EndCause) {
        let worker = &mut self.workers[i];
        let running = worker.inflight.pop_front();
        let terminated = std::mem::take(&mut worker.terminate_on_start);
        worker.inflight.retain(|t| !terminated.contains(&t.id));
        Self::requeue_unstarted(&mut self.pending, worker);
        worker.inflight.extend(running);
        worker.end(cause);
    }

    /// Tasks past their time limit end their worker; workers ended and still alive
    /// after the grace period are killed, as are workers that stopped in the middle
    /// of a message.
    fn enforce_deadlines(&mut self, now: Instant) {
        for i in 0..self.workers.len() {
            if self.workers[i].task_deadline().is_some_and(|d| d <= now) {
                self.end_worker(i, EndCause::Timeout);
            }
            if self.workers[i].stall_deadline().is_some_and(|d| d <= now) {
                self.workers[i].fail(format!(
                    "it began a message and sent nothing more of it for {} s",
                    policy::FRAME_STALL.as_secs()
                ));
            }
            let worker = &mut self.workers[i];
            if let Some(ending) = worker.ending.as_mut() {
                if !ending.killed && now.duration_since(ending.since) >= policy::END_GRACE {
                    ending.killed = true;
                    kill_tree(worker.pid, libc::SIGKILL);
                }
            }
        }
    }

    /// Publish a snapshot of the workers if a caller asked for one.
    fn answer_stats(&mut self) {
        let mut control = self.shared.control.lock();
        if !control.stats_wanted {
            return;
        }
        let now = Instant::now();
        let stats = self
            .workers
            .iter()
            .map(|w| {
                let running = w.inflight.front().filter(|_| w.state != State::Starting);
                WorkerStat {
                    pid: w.pid,
                    state: match w.state {
                        State::Starting => "starting",
                        State::Exiting => "exiting",
                        _ if running.is_some() => "busy",
                        _ => "idle",
                    },
                    tasks_done: w.tasks_done,
                    running: running.map(|t| (t.id, now.duration_since(w.busy_since))),
                }
            })
            .collect();
        control.stats = Some(stats);
        control.stats_wanted = false;
        self.shared.stats_ready.notify_all();
    }

    /// Ask idle workers to leave: drained ones, and any idle past the timeout or at
    /// shutdown once nothing is queued.
    fn retire_idle(&mut self, shutting_down: bool) {
        let now = Instant::now();
        let nothing_pending = self.nothing_pending();
        for worker in self.workers.iter_mut() {
            if !worker.inflight.is_empty() {
                continue;
            }
            let reason = match worker.state {
                State::Draining => worker.exit_reason,
                State::Ready => policy::idle_exit(
                    now.duration_since(worker.idle_since),
                    self.config.idle_timeout,
                    shutting_down,
                    nothing_pending,
                ),
                _ => None,
            };
            if let Some(reason) = reason {
                worker.request_exit(reason);
            }
        }
    }

    /// Offer one idle worker for direct sends while the manager sleeps.
    fn offer_idle_worker(&mut self) {
        if !self.pending.is_empty() {
            return;
        }
        let budget = self.config.max_tasks_per_child;
        let idle = self.workers.iter().find(|w| {
            w.is_idle()
                && w.writer.is_empty()
                && !w.channel_closed
                && budget.is_none_or(|b| w.tasks_sent + 1 < b)
        });
        if let Some(worker) = idle {
            self.shared.direct.offer(worker.pid, worker.fd());
        }
    }

    /// End the offer and record what was sent directly meanwhile.
    pub(super) fn withdraw_offer(&mut self) {
        for (pid, task) in self.shared.direct.withdraw() {
            match self.workers.iter_mut().find(|w| w.pid == pid) {
                Some(worker) => worker.record_sent(task),
                None => self.pending.push_front(task), // cannot happen: it was offered
            }
        }
    }

    /// Put the tasks `worker` received but did not start back at the head of the queue.
    pub(super) fn requeue_unstarted(pending: &mut VecDeque<Task>, worker: &mut Worker) {
        for task in worker.inflight.drain(..).rev() {
            pending.push_front(task);
        }
    }

    // ---- I/O -----------------------------------------------------------------------

    pub(super) fn on_frame(&mut self, i: usize, frame: Frame) {
        let worker = &mut self.workers[i];
        if worker.fault.is_some() {
            return;
        }
        let task_id = frame.header.task_id;
        match Kind::from_u32(frame.header.kind) {
            Some(Kind::Result) if worker.inflight.front().map(|t| t.id) != Some(task_id) => {
                worker.fail(format!(
                    "it answered task {task_id} which it was not running"
                ));
            }
            Some(Kind::Result) => {
                let now = Instant::now();
                worker.inflight.pop_front();
                worker.tasks_done += 1;
                let spent = now.duration_since(worker.busy_since);
                worker.busy_since = now;
                if worker.inflight.is_empty() {
                    worker.idle_since = now;
                }
                let pid = worker.pid;
                let next = worker.inflight.front().map(|t| t.id);
                if next.is_some_and(|id| worker.terminate_on_start.contains(&id)) {
                    // A terminated task starts now: end its worker.
                    worker.terminate_on_start.retain(|&id| Some(id) != next);
                    self.end_worker(i, EndCause::Terminated);
                }
                self.service_time = Some(policy::update_service_time(self.service_time, spent));
                self.shared.emit(Event::Result {
                    task_id,
                    pid,
                    body: frame.body,
                    segment: receive_segment(frame.fd),
                });
            }
            Some(Kind::Ready) => {
                // Once asked to leave (the pool shrank meanwhile), it stays on its way.
                if worker.state == State::Starting {
                    worker.state = State::Ready;
                    worker.idle_since = Instant::now();
                    self.ready_since_start_death = true;
                }
            }
            Some(Kind::InitFailed) => worker.init_error = Some(frame.body),
            Some(Kind::Retiring) => {
                // It exits after this message: give its queued tasks to others.
                worker.state = State::Exiting;
                worker.exit_reason = Some(ExitReason::MemoryGrowth);
                Self::requeue_unstarted(&mut self.pending, worker);
            }
            _ => worker.fail(format!("unexpected message kind {}", frame.header.kind)),
        }
    }

    pub(super) fn on_exit(&mut self, mut worker: Worker, exitcode: ExitStatus) {
        if let Some(body) = worker.init_error.take() {
            self.broken = true;
            self.shared.emit(Event::InitFailed {
                pid: worker.pid,
                body,
            });
            return;
        }
        // A starting worker's death breaks the pool unless it is forgiven (see
        // `ready_since_start_death`); a forgiven one is replaced as any death is.
        if worker.state == State::Starting
            && worker.exit_reason.is_none()
            && !std::mem::take(&mut self.ready_since_start_death)
        {
            self.broken = true;
            self.shared.emit(Event::StartFailed {
                pid: worker.pid,
                exitcode,
                error: None,
            });
            return;
        }
        let planned = worker.state == State::Exiting && worker.inflight.is_empty();
        let reason = match (planned, worker.exit_reason, &worker.fault) {
            (true, Some(reason), _) => reason,
            (_, _, Some(_)) => ExitReason::Killed,
            _ => ExitReason::Died,
        };
        if reason.owes_replacement() {
            self.starts_owed += 1;
        }
        // A task it never took did not run: it goes back to the queue with the others
        // (a worker dying idle may be sent one before the manager sees its death).
        let running = if worker.took_front_task() {
            worker.inflight.pop_front()
        } else {
            if worker
                .ending
                .as_ref()
                .is_some_and(|e| e.cause == EndCause::Terminated)
            {
                worker.inflight.pop_front(); // terminated before it began: never runs
            }
            None
        };
        if let Some(running) = running {
            self.shared.emit(match &worker.ending {
                Some(ending) => Event::TaskEnded {
                    task_id: running.id,
                    pid: worker.pid,
                    cause: ending.cause,
                },
                None => Event::WorkerDied {
                    task_id: running.id,
                    pid: worker.pid,
                    exitcode,
                    reason: worker.fault.take().unwrap_or_default(),
                },
            });
        }
        // Terminated tasks it held unstarted never run.
        let terminated = std::mem::take(&mut worker.terminate_on_start);
        worker.inflight.retain(|t| !terminated.contains(&t.id));
        // Tasks it had received but not started run elsewhere.
        Self::requeue_unstarted(&mut self.pending, &mut worker);
        self.shared.emit(Event::WorkerExited {
            pid: worker.pid,
            exitcode,
            reason,
        });
    }

    /// Make the current worker pids visible to callers, when they changed.
    fn publish_pids(&mut self) {
        if !self
            .published_pids
            .iter()
            .copied()
            .eq(self.workers.iter().map(|w| w.pid))
        {
            self.published_pids = self.workers.iter().map(|w| w.pid).collect();
            self.shared.control.lock().pids = self.published_pids.clone();
        }
    }
}
