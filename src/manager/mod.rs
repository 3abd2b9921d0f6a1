//! The manager: one thread per executor that owns the workers, and the handle callers
//! hold. Every path a task can take (its states are the task table's, `tasks.rs`):
//!
//! ```text
//!  submit(task) ─┬─ direct.rs: an idle worker offered while the manager sleeps ──────┐
//!                └─ submissions queue ─(wake-up)─► task table: Queued ─► dispatch ───┴─► worker
//!  cancel(id) ──── taken back while no worker can hold it (task table); its claimer is
//!                  woken
//!
//!  worker ─► RESULT ─► events.rs ─► claims.rs: offer ─┬─► the thread blocked on it
//!                                                     └─► events queue ─► next_events()
//!  worker exits (pidfd, or the template's EXITED) ─► its running task fails
//!        (WorkerDied); tasks it held unstarted go back to the queue; a replacement is
//!        owed unless the pool meant it to leave; WorkerExited says why it left
//!  shutdown ─► graceful: queued work finishes, then the workers get EOF; kill: every
//!        worker tree is killed, queued work dropped ─► Closed, the last event
//!  worker ─► LOG (forward_logs) ─► events.rs ─► the log queue ─► next_logs()
//!        (bounded, apart from the events: see `crate::logs`)
//! ```
//!
//! The thread never touches Python: callers hand it pickled tasks and receive raw
//! outcomes, which the Python side turns into future results. Its loop
//! (`event_loop.rs`) decides; its I/O (`poll_io.rs`) waits in poll(2) on the wake-up
//! eventfd and every worker's channel and pidfd, addressed by token; what it finds is
//! handled in `events.rs`. The handle is stamped with the process that started it
//! (`crate::fork`): a process forked from that one must not use it, and the glue
//! refuses before it gets here.

mod claims;
mod direct;
mod endings;
mod event_loop;
mod events;
mod forking;
pub mod policy;
#[cfg(unix)]
mod poll_io;
#[cfg(windows)]
mod port_io;
#[cfg(windows)]
use port_io as poll_io;
mod tasks;
mod worker;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::logs::{LogBatch, LogQueue, Waited, PARENT_BYTES, PARENT_RECORDS};
use crate::platform::{ExitStatus, Waker};
pub use crate::shm::Incoming;
use crate::shm::OutSegment;
use crate::spawn::WorkerCommand;
use crate::wire::Body;
use claims::Claims;
use direct::Direct;
use event_loop::ManagerLoop;
pub use policy::ExitReason;
pub use tasks::{Attempt, AttemptEnd, EndCause, Retry, TaskState};
use tasks::{Task, TaskTable};

pub struct Config {
    pub command: WorkerCommand,
    /// How to start the template that forks replacement workers; None: always exec.
    pub template: Option<WorkerCommand>,
    /// Body of the first message every worker gets (settings and initializer).
    pub init: Body,
    pub max_workers: usize,
    pub idle_timeout: Option<Duration>,
    pub max_tasks_per_child: Option<u64>,
    /// A worker whose resident memory passes this while it runs a task, by half again,
    /// is ended at once (its task fails); None: not watched.
    pub max_worker_memory: Option<u64>,
    /// The workers forward log records (LOG messages), taken with `Manager::next_logs`.
    pub forward_logs: bool,
}

/// What the manager reports to the Python side.
#[derive(Debug)]
pub enum Event {
    /// A worker sent back the outcome of a task.
    Result {
        task_id: u64,
        pid: i32,
        body: Vec<u8>,
        segment: Incoming,
    },
    /// A worker died while running this task, which is not run again. `reason` says
    /// why the manager killed it (empty: it died by itself); `attempts` lists every
    /// run of the task that ended with its worker, this one last.
    WorkerDied {
        task_id: u64,
        pid: i32,
        exitcode: ExitStatus,
        reason: String,
        attempts: Vec<Attempt>,
    },
    /// The manager ended the worker running this task, with its process tree: the
    /// task ran past its timeout, was terminated, or its worker's memory passed the
    /// limit (`peak_rss`: the most it was seen to hold). Not run again; `attempts` as
    /// for WorkerDied.
    TaskEnded {
        task_id: u64,
        pid: i32,
        cause: EndCause,
        peak_rss: Option<u64>,
        attempts: Vec<Attempt>,
    },
    /// A worker process started (`forked`: by the template).
    WorkerStarted { pid: i32, forked: bool },
    /// A worker that had been ready left the pool.
    WorkerExited {
        pid: i32,
        exitcode: ExitStatus,
        reason: ExitReason,
    },
    /// A worker's initializer failed; the body describes the error. No more workers start.
    InitFailed { pid: i32, body: Vec<u8> },
    /// A worker could not be started (`error`: the system refused; pid 0), or died
    /// before it was ready. No more workers start.
    StartFailed {
        pid: i32,
        exitcode: ExitStatus,
        error: Option<io::Error>,
    },
    /// The manager has stopped and every worker has exited.
    Closed,
}

impl Event {
    /// The task whose outcome this is, for events a waiting thread may claim.
    fn task_id(&self) -> Option<u64> {
        match self {
            Event::Result { task_id, .. }
            | Event::WorkerDied { task_id, .. }
            | Event::TaskEnded { task_id, .. } => Some(*task_id),
            _ => None,
        }
    }

    /// Fault a result's shared pages in, on the thread that takes the event (not the
    /// manager's), so that reading the buffers runs at memory speed.
    fn populate(&self) {
        if let Event::Result {
            segment: Incoming::Mapped(mapping),
            ..
        } = self
        {
            mapping.populate();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Finish pending work, then let the workers exit.
    Graceful,
    /// End every worker and its children now (SIGTERM, a grace period, then
    /// SIGKILL); drop pending work.
    Terminate,
    /// Kill every worker and its children now (SIGKILL); drop pending work.
    Kill,
}

/// What a worker does, as `Manager::stats` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    Starting,
    Idle,
    Busy,
    Exiting,
}

/// One worker, as `Manager::stats` reports it.
#[derive(Clone, Debug)]
pub struct WorkerStat {
    pub pid: i32,
    pub state: WorkerState,
    pub tasks_done: u64,
    /// The running task and how long it has run.
    pub running: Option<(u64, Duration)>,
}

/// Settings and requests callers hand the manager, and what it publishes back.
struct Control {
    max_workers: usize,
    shutdown: Option<Shutdown>,
    pids: Vec<i32>,
    /// Tasks to end: the workers running them are ended (see `Manager::terminate`).
    terminate: Vec<u64>,
    /// Pass SIGINT on to the workers running a task.
    interrupt: bool,
    /// Set by `Manager::stats`; the manager answers in `stats`.
    stats_wanted: bool,
    stats: Option<Vec<WorkerStat>>,
}

/// What the handle and the manager thread share.
struct Shared {
    control: Mutex<Control>,
    /// Signalled when the manager published the stats asked for.
    stats_ready: Condvar,
    /// New tasks; lock-free, so a submitting thread never waits for the manager.
    submissions: Sender<Task>,
    /// Every task the manager received, and its state (see `tasks.rs`).
    tasks: Mutex<TaskTable>,
    /// Set when the manager has been woken and has not yet looked at its inputs.
    notified: AtomicBool,
    /// Set while the manager sleeps with room for a task right away (see
    /// `policy::has_room`); otherwise `submit` need not wake it.
    hungry: AtomicBool,
    /// Set (and signalled) when the manager thread has finished.
    finished: (Mutex<bool>, Condvar),
    wake: Arc<Waker>,
    direct: Direct,
    claims: Claims<Event>,
    /// Where outcomes go when nobody claims them.
    events: Sender<Event>,
    /// With `Config::forward_logs`: the workers' log records, until taken.
    logs: Option<LogQueue>,
}

impl Shared {
    fn wake(&self) {
        self.wake.wake();
    }

    /// Wake the manager unless a wake-up is already on its way.
    fn notify(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// Hand an outcome to its claimer, or queue it for the result thread.
    fn emit(&self, event: Event) {
        let event = match event.task_id() {
            Some(id) => self.claims.offer(id, event),
            None => Some(event),
        };
        if let Some(event) = event {
            let _ = self.events.send(event);
        }
    }
}

/// The handle the Python glue holds.
pub struct Manager {
    shared: Arc<Shared>,
    events: Receiver<Event>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The process that started it (see `crate::fork`).
    generation: u64,
}

impl Manager {
    /// Start the manager thread, which starts the pool's workers at once: a pool is
    /// made for a task on its way.
    pub fn start(config: Config) -> io::Result<Manager> {
        crate::fork::register();
        crate::platform::reread_settings();
        let wake = Arc::new(Waker::new()?);
        let (submissions, submitted) = crossbeam_channel::unbounded();
        let (sender, events) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                max_workers: config.max_workers,
                shutdown: None,
                pids: Vec::new(),
                terminate: Vec::new(),
                interrupt: false,
                stats_wanted: false,
                stats: None,
            }),
            stats_ready: Condvar::new(),
            submissions,
            tasks: Mutex::new(TaskTable::default()),
            notified: AtomicBool::new(false),
            hungry: AtomicBool::new(true),
            finished: (Mutex::new(false), Condvar::new()),
            wake,
            direct: Direct::default(),
            claims: Claims::default(),
            events: sender,
            logs: config
                .forward_logs
                .then(|| LogQueue::new(PARENT_RECORDS, PARENT_BYTES)),
        });
        let mut run = ManagerLoop::new(config, shared.clone(), submitted);
        let thread = std::thread::Builder::new()
            .name("loky-manager".into())
            .spawn(move || run.run())?;
        Ok(Manager {
            shared,
            events,
            thread: Mutex::new(Some(thread)),
            generation: crate::fork::generation(),
        })
    }

    /// Whether this process started the pool (it was not inherited through fork()).
    pub fn owned_here(&self) -> bool {
        self.generation == crate::fork::generation()
    }

    /// Queue a task, which may run for `timeout` at most and runs again after its
    /// worker died under it as `retry` says. Ids must grow from one call to the next.
    pub fn submit(
        &self,
        id: u64,
        body: Body,
        segment: Option<Arc<OutSegment>>,
        timeout: Option<Duration>,
        retry: Retry,
    ) {
        let task = Task {
            id,
            body,
            segment,
            timeout,
            retry,
        };
        let shared = &self.shared;
        let Some(task) = shared.direct.try_send(task, &shared.tasks) else {
            return;
        };
        // The receiver lives as long as the manager thread; after it ended, the task is
        // dropped (the Python side refuses tasks after shutdown anyway).
        let _ = shared.submissions.send(task);
        // Pairs with the manager's store of `hungry` and look at the queue before it
        // sleeps: either it sees this task or this sees it hungry.
        std::sync::atomic::fence(Ordering::SeqCst);
        if shared.hungry.load(Ordering::SeqCst) {
            shared.notify();
        }
    }

    /// Take back a task no worker can have received yet. False if it may have been.
    pub fn cancel(&self, id: u64) -> bool {
        if !self.shared.tasks.lock().cancel(id) {
            return false;
        }
        self.shared.claims.wake(id); // no outcome will come
        true
    }

    /// Where task `id` is in its life; None once it is done (or unknown).
    pub fn task_state(&self, id: u64) -> Option<TaskState> {
        self.shared.tasks.lock().state(id)
    }

    /// End task `id` whatever its state: taken back if no worker can hold it yet (true);
    /// else the worker holding it is ended with its process tree once it runs it (at
    /// once if it does), which `TaskEnded` reports (false). A finished task is left
    /// alone.
    pub fn terminate(&self, id: u64) -> bool {
        if self.cancel(id) {
            return true;
        }
        self.shared.control.lock().terminate.push(id);
        self.shared.notify();
        false
    }

    /// Pass SIGINT on to the process group of every worker running a task (Ctrl-C):
    /// its task gets KeyboardInterrupt; idle workers are left alone.
    pub fn interrupt(&self) {
        self.shared.control.lock().interrupt = true;
        self.shared.notify();
    }

    /// A snapshot of the workers, from the manager thread (waits up to a second for
    /// it to answer).
    pub fn stats(&self) -> Vec<WorkerStat> {
        let mut control = self.shared.control.lock();
        control.stats_wanted = true;
        control.stats = None;
        self.shared.notify();
        let deadline = Instant::now() + Duration::from_secs(1);
        while control.stats.is_none() {
            if self
                .shared
                .stats_ready
                .wait_until(&mut control, deadline)
                .timed_out()
            {
                break;
            }
        }
        control.stats.take().unwrap_or_default()
    }

    pub fn resize(&self, max_workers: usize) {
        self.shared.control.lock().max_workers = max_workers;
        self.shared.notify();
    }

    pub fn shutdown(&self, mode: Shutdown) {
        {
            let mut control = self.shared.control.lock();
            // A harder mode wins over a softer one asked for earlier.
            let rank = |m: Option<Shutdown>| match m {
                None => 0,
                Some(Shutdown::Graceful) => 1,
                Some(Shutdown::Terminate) => 2,
                Some(Shutdown::Kill) => 3,
            };
            if rank(Some(mode)) > rank(control.shutdown) {
                control.shutdown = Some(mode);
            }
        }
        self.shared.notify();
    }

    pub fn pids(&self) -> Vec<i32> {
        self.shared.control.lock().pids.clone()
    }

    /// Wait up to `timeout` for events, then take every event already queued (up to
    /// `max`). Outcomes claimed meanwhile go to their claimers instead.
    pub fn next_events(&self, timeout: Option<Duration>, max: usize) -> Vec<Event> {
        self.shared.claims.batch_applied();
        let first = match timeout {
            Some(t) => self.events.recv_timeout(t).ok(),
            None => self.events.recv().ok(),
        };
        let mut batch: Vec<(Option<u64>, Event)> = Vec::new();
        for event in first
            .into_iter()
            .chain(self.events.try_iter().take(max.max(1) - 1))
        {
            batch.push((event.task_id(), event));
        }
        let events = self.shared.claims.take_batch(batch);
        events.iter().for_each(Event::populate);
        events
    }

    /// Wait up to `timeout` (None: as long as needed) for the workers' log records, and
    /// take them (an empty batch when the time ran out). None once the manager has
    /// stopped and every record was taken, or if the pool does not forward them.
    pub fn next_logs(&self, timeout: Option<Duration>) -> Option<LogBatch> {
        let logs = self.shared.logs.as_ref()?;
        match logs.wait(timeout) {
            Waited::Ready => Some(logs.take()),
            Waited::TimedOut => Some(LogBatch::default()),
            Waited::Closed => None,
        }
    }

    /// Claim task `id`'s outcome for the calling thread (see `claims.rs`). False if it
    /// cannot come that way.
    pub fn claim(&self, id: u64) -> bool {
        self.shared.claims.claim(id)
    }

    /// Wait up to `timeout` for a claimed outcome to need a look.
    pub fn wait_claim(&self, id: u64, timeout: Duration) -> bool {
        self.shared.claims.wait(id, timeout)
    }

    /// End a claim; the outcome, if it arrived, is the caller's to apply, and then to
    /// report with `claim_applied`.
    pub fn release_claim(&self, id: u64) -> Option<Event> {
        let event = self.shared.claims.release(id);
        if let Some(event) = &event {
            event.populate();
        }
        event
    }

    /// The outcome `release_claim` gave for task `id` is applied.
    pub fn claim_applied(&self, id: u64) {
        self.shared.claims.applied(id);
    }

    /// Tasks whose outcome is its claimer's (to take, or being applied).
    pub fn claimed_outcomes(&self) -> Vec<u64> {
        self.shared.claims.arrived()
    }

    /// If the manager thread has finished its work, wait for it to end (at once):
    /// everything it held is dropped then. Never waits for a thread still at work, nor
    /// for one of the process this one was forked from.
    pub fn join_if_finished(&self) {
        if self.owned_here() && *self.shared.finished.0.lock() {
            self.join(Some(Duration::ZERO));
        }
    }

    /// Wait up to `timeout` (None: for ever) for the manager thread to end, after a
    /// shutdown request. True once it has.
    pub fn join(&self, timeout: Option<Duration>) -> bool {
        {
            let (finished, done) = &self.shared.finished;
            let mut finished = finished.lock();
            let deadline = timeout.map(|t| Instant::now() + t);
            while !*finished {
                match deadline {
                    Some(d) => {
                        if done.wait_until(&mut finished, d).timed_out() {
                            break;
                        }
                    }
                    None => done.wait(&mut finished),
                }
            }
            if !*finished {
                return false;
            }
        }
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join(); // it has returned from its loop: ends at once
        }
        true
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // In a forked child the pool is the parent's: leave it alone.
        if self.owned_here() {
            self.shutdown(Shutdown::Graceful);
        }
    }
}
