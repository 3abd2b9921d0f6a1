//! The manager thread's loop: gather the inputs, decide (policy.rs), do the I/O
//! (poll_io.rs).
//!
//! ```text
//!  loop:
//!    take new submissions into the task table; read control (size, shutdown)
//!    kill shutdown ─► end every tree, stop
//!    deadlines (endings.rs): time limits, grace periods, memory, stalled messages
//!    adjust the pool: start workers (exec, or forked by the template), retire surplus
//!    dispatch queued tasks to ready workers; retire idle ones; flush channels
//!    shutdown and nothing left ─► stop
//!    offer an idle worker for direct sends, then wait (poll_io.rs)
//!    withdraw the offer; handle what the wait found (events.rs)
//!  stop: end the template, close the log queue, emit Closed, close the claims
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::forking::Template;
use super::policy::{self, ExitReason, Load, Stop};
use super::poll_io::{ManagerIo, Token};
use super::tasks::Task;
use super::worker::{Phase, Worker, WorkerId};
use super::{Config, Event, Shared, Shutdown, WorkerStat, WorkerState};
use crate::spawn::{spawn_worker, Spawned};
use crate::watch::Watch;
use crate::wire::{Kind, OutFrame};

pub(super) struct ManagerLoop {
    pub(super) config: Config,
    pub(super) shared: Arc<Shared>,
    pub(super) submitted: Receiver<Task>,
    pub(super) io: ManagerIo,
    /// In the order they started.
    pub(super) workers: Vec<Worker>,
    next_worker: u64,
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
    published_pids: Vec<i32>,
    pub(super) template: Option<Template>,
    /// The template could not start or died: start workers with exec only.
    pub(super) template_failed: bool,
    /// A worker has spent its task budget: replacements are routine from now on.
    recycling: bool,
    /// How the loop waits while results are due (see `crate::watch`).
    watch: Watch,
    /// When the busy workers' memory was last looked at (with `max_worker_memory`).
    pub(super) memory_seen: Instant,
}

/// How long the manager watches for results before it sleeps: tiny tasks' results come
/// every few µs; a longer watch found little more and cost throughput on two processors.
const RESULTS_WATCH: Duration = Duration::from_micros(20);
/// How long the template may take to exit once told to.
const TEMPLATE_EXIT_GRACE: Duration = Duration::from_secs(2);

impl ManagerLoop {
    pub(super) fn new(config: Config, shared: Arc<Shared>, submitted: Receiver<Task>) -> Self {
        let pool_size = config.max_workers;
        ManagerLoop {
            io: ManagerIo::new(shared.wake.clone()),
            config,
            shared,
            submitted,
            workers: Vec::new(),
            next_worker: 0,
            starts_owed: pool_size,
            broken: false,
            ready_since_start_death: false,
            service_time: None,
            published_pids: Vec::new(),
            template: None,
            template_failed: false,
            recycling: false,
            watch: Watch::new(RESULTS_WATCH),
            memory_seen: Instant::now(),
        }
    }

    pub(super) fn run(&mut self) {
        loop {
            // Clear the flag before looking, so a later submit wakes us again.
            self.shared.notified.store(false, Ordering::SeqCst);
            self.receive_submissions();
            let (shutdown, max_workers, terminate, interrupt) = {
                let mut control = self.shared.control.lock();
                let terminate = std::mem::take(&mut control.terminate);
                let interrupt = std::mem::take(&mut control.interrupt);
                (control.shutdown, control.max_workers, terminate, interrupt)
            };
            match shutdown {
                Some(Shutdown::Kill) => {
                    self.end_all(Stop::Kill);
                    break;
                }
                Some(Shutdown::Terminate) => {
                    self.end_all(Stop::Term);
                    break;
                }
                _ => {}
            }
            if interrupt {
                self.interrupt_busy_workers();
            }
            self.terminate_tasks(&terminate);
            self.enforce_deadlines(Instant::now());
            if shutdown.is_none() {
                // First: the replacements this turn owes are then asked of it.
                self.maybe_start_template();
            }
            self.adjust_pool(max_workers, shutdown.is_some());
            self.dispatch();
            self.retire_idle(shutdown.is_some());
            self.io.flush();
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
                self.offer_idle_worker();
            }
            // While results are due, watch for a moment before sleeping.
            let results_due = self.workers.iter().any(Worker::is_busy);
            let deadline = self.next_deadline();
            let watch = results_due.then_some(&mut self.watch);
            let events = self.io.wait(deadline, watch);
            self.withdraw_offer();
            self.handle(events);
        }
        if let Some(template) = self.template.take() {
            drop(template);
            self.io.close_and_reap(Token::Template, TEMPLATE_EXIT_GRACE);
        }
        self.publish_pids();
        if let Some(logs) = &self.shared.logs {
            logs.close();
        }
        self.shared.emit(Event::Closed);
        self.shared.claims.close();
        let (finished, done) = &self.shared.finished;
        *finished.lock() = true;
        done.notify_all();
    }

    fn receive_submissions(&mut self) {
        let mut arrived = self.submitted.try_iter().peekable();
        if arrived.peek().is_some() {
            let mut tasks = self.shared.tasks.lock();
            arrived.for_each(|task| tasks.receive(task));
        }
    }

    pub(super) fn live_count(&self) -> usize {
        let forking = self.template.as_ref().map_or(0, |t| t.requested.len());
        self.workers.iter().filter(|w| w.is_live()).count() + forking
    }

    pub(super) fn nothing_pending(&self) -> bool {
        self.broken || self.shared.tasks.lock().queued() == 0
    }

    pub(super) fn position(&self, id: WorkerId) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
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
                .map(|&i| !self.workers[i].held.is_empty())
                .collect();
            for (j, now) in policy::shrink_choice(&busy, live - target) {
                let i = live_workers[j];
                if now {
                    self.ask_to_leave(i, ExitReason::Shrink);
                } else {
                    self.workers[i].drain(ExitReason::Shrink);
                }
            }
            return;
        }
        if self.broken {
            return;
        }
        let queued = self.shared.tasks.lock().queued();
        let wanted =
            policy::workers_to_start(queued, live, target, self.starts_owed, shutting_down);
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

    /// Start one worker: forked by the template when there is one (starting: once it
    /// is ready, see `forking::START_LIMIT`), else exec'd.
    fn start_worker(&mut self) -> std::io::Result<()> {
        if let Some(template) = self.template.as_mut() {
            let frame = template.request()?;
            self.io.queue(Token::Template, frame);
            return Ok(());
        }
        let spawned = spawn_worker(&self.config.command)?;
        self.add_worker(spawned, false);
        Ok(())
    }

    /// A new worker: its first message carries the settings, the initializer and its
    /// ledger.
    pub(super) fn add_worker(&mut self, spawned: Spawned, forked: bool) {
        let pid = spawned.pid;
        let worker = Worker::new(WorkerId(self.next_worker), pid, forked);
        self.next_worker += 1;
        let token = Token::Worker(worker.id);
        self.io.add(token, spawned, !forked);
        let mut init = OutFrame::new(0, Kind::Init, self.config.init.clone());
        if let Some(ledger) = &worker.ledger {
            init = init.with_fd(ledger.clone());
        }
        self.io.queue(token, init);
        self.workers.push(worker);
        self.shared.emit(Event::WorkerStarted { pid, forked });
    }

    /// Start the template once the first workers are up, so it does not compete with
    /// them for the CPU during a cold start; or as soon as a worker has spent its tasks,
    /// even if a worker is starting: its replacement is due soon, and waits for the
    /// template rather than start a whole interpreter (when replacements follow each
    /// other, one is nearly always starting, and the template would never start).
    fn maybe_start_template(&mut self) {
        let Some(command) = &self.config.template else {
            return;
        };
        if self.template.is_some() || self.template_failed || self.broken {
            return;
        }
        let starting = self.workers.iter().any(|w| w.phase == Phase::Starting);
        let ready = self.workers.iter().any(|w| w.phase == Phase::Ready);
        if !self.recycling && (!ready || starting) {
            return;
        }
        match spawn_worker(command) {
            Ok(spawned) => {
                self.io.add(Token::Template, spawned, true);
                self.template = Some(Template::new());
            }
            Err(_) => self.template_failed = true,
        }
    }

    /// Ask worker `i` to leave once it has read everything sent to it.
    pub(super) fn ask_to_leave(&mut self, i: usize, reason: ExitReason) {
        let worker = &mut self.workers[i];
        worker.leave(reason);
        self.io.ask_to_leave(Token::Worker(worker.id));
    }

    // ---- tasks ---------------------------------------------------------------------

    fn dispatch(&mut self) {
        let ready: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].phase == Phase::Ready)
            .collect();
        if ready.is_empty() {
            return;
        }
        let mut tasks = self.shared.tasks.lock();
        if tasks.queued() == 0 {
            return;
        }
        let budget = self.config.max_tasks_per_child;
        let loads: Vec<Load> = ready
            .iter()
            .map(|&i| Load {
                inflight: self.workers[i].held.len(),
                budget_left: budget.map(|b| b.saturating_sub(self.workers[i].tasks_sent)),
            })
            .collect();
        let limit = policy::batch_limit(tasks.queued(), ready.len(), self.service_time);
        for (j, count) in policy::dispatch_plan(&loads, tasks.queued(), limit) {
            let worker = &mut self.workers[ready[j]];
            let token = Token::Worker(worker.id);
            for _ in 0..count {
                let Some(next_timed) = tasks.next_queued().map(|t| t.timeout.is_some()) else {
                    break;
                };
                let holds_timed = worker.held.iter().any(|&id| tasks.has_time_limit(id));
                let batched = !worker.held.is_empty();
                if batched && (holds_timed || !policy::may_batch(next_timed)) {
                    break; // a timed task starts when its worker takes it
                }
                let starts = worker.held.is_empty();
                let task = tasks
                    .dispatch_next(worker.id, starts)
                    .expect("looked at just above");
                let mut frame = OutFrame::new(task.id, Kind::Task, task.body.clone());
                if let Some(segment) = &task.segment {
                    frame = frame.with_fd(segment.clone());
                }
                let id = task.id;
                self.io.queue(token, frame);
                worker.hold(id);
            }
            if budget.is_some_and(|b| worker.tasks_sent >= b) {
                // Spent: finish what it holds, then make room for a fresh one.
                worker.drain(ExitReason::TaskLimit);
                self.recycling = true;
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
        let tasks = self.shared.tasks.lock();
        let stats = self
            .workers
            .iter()
            .map(|w| {
                let running = w
                    .held
                    .front()
                    .filter(|_| w.phase != Phase::Starting)
                    .and_then(|&id| Some((id, now.duration_since(tasks.running_since(id)?))));
                WorkerStat {
                    pid: w.pid,
                    state: match w.phase {
                        Phase::Starting => WorkerState::Starting,
                        Phase::Ready | Phase::Draining(_) if running.is_some() => WorkerState::Busy,
                        Phase::Ready | Phase::Draining(_) => WorkerState::Idle,
                        _ => WorkerState::Exiting,
                    },
                    tasks_done: w.tasks_done,
                    running,
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
        for i in 0..self.workers.len() {
            let worker = &self.workers[i];
            if !worker.held.is_empty() {
                continue;
            }
            let reason = match worker.phase {
                Phase::Draining(reason) => Some(reason),
                Phase::Ready => policy::idle_exit(
                    now.duration_since(worker.idle_since),
                    self.config.idle_timeout,
                    shutting_down,
                    nothing_pending,
                ),
                _ => None,
            };
            if let Some(reason) = reason {
                self.ask_to_leave(i, reason);
            }
        }
    }

    /// Offer one idle worker for direct sends while the manager sleeps (after the look
    /// at the queue: an offer must not outlive the sleep). Not when the pool watches
    /// its workers' memory: a task sent that way would run while the loop sleeps,
    /// unwatched.
    fn offer_idle_worker(&mut self) {
        if self.config.max_worker_memory.is_some() || self.shared.tasks.lock().queued() > 0 {
            return;
        }
        let budget = self.config.max_tasks_per_child;
        for worker in &self.workers {
            let spent = budget.is_some_and(|b| worker.tasks_sent + 1 >= b);
            if !worker.is_idle() || spent {
                continue;
            }
            if let Some(fd) = self.io.writable_now(Token::Worker(worker.id)) {
                self.shared.direct.offer(worker.id, fd);
                return;
            }
        }
    }

    /// End the offer and record what was sent directly meanwhile.
    fn withdraw_offer(&mut self) {
        for (worker_id, task_id) in self.shared.direct.withdraw() {
            if let Some(i) = self.position(worker_id) {
                self.workers[i].hold(task_id);
            }
        }
    }

    /// End every worker (and the template) with their process trees; queued work is
    /// dropped.
    fn end_all(&mut self, how: Stop) {
        self.template = None;
        self.io.end_all(how);
        self.workers.clear();
        self.shared.tasks.lock().clear();
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
