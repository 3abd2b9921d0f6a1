//! The manager: one thread per executor that owns the workers.
//!
//! ```text
//!  submit() ──► submissions queue ──(eventfd)──► manager thread ──► worker channel ──► worker
//!  next_events() ◄── events channel ◄── manager thread ◄── worker channel ◄────────── worker
//!                                              ▲
//!                                  pidfd readable: worker exited
//! ```
//!
//! The thread never touches Python: callers hand it pickled tasks and receive raw
//! outcomes, which the Python side turns into future results in batches. It waits in
//! poll(2) on the wake-up eventfd, every worker's channel and every worker's pidfd, so a
//! result, a death or a request is seen at once.
//!
//! A caller blocked on one task's outcome may claim it (`Manager::claim`): the manager
//! then hands that outcome to the caller itself, sparing the hop through the thread
//! that reads `next_events`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::spawn::{kill_tree, pidfd_open, spawn_worker, try_reap, Spawned, WorkerCommand};
use crate::template::{Template, EXITED, FORKED};
use crate::wire::{Frame, FrameWriter, OutFrame, INIT_FAILED, READY, RESULT, RETIRING, TASK};
use crate::worker_table::{State, Task, Worker};

pub struct Config {
    pub command: WorkerCommand,
    /// How to start the template that forks replacement workers; None: always exec.
    pub template: Option<WorkerCommand>,
    /// Body of the first message every worker gets (settings and initializer).
    pub init: Arc<Vec<u8>>,
    pub max_workers: usize,
    pub idle_timeout: Option<Duration>,
    pub max_tasks_per_child: Option<u64>,
}

/// What the manager reports to the Python side.
#[derive(Debug)]
pub enum Event {
    /// A worker sent back the outcome of a task (large buffers in the memfd `fd`).
    Result {
        task_id: u64,
        pid: i32,
        body: Vec<u8>,
        fd: Option<OwnedFd>,
    },
    /// A worker died while running this task.
    /// `reason` says why the manager killed it (empty: it died by itself).
    WorkerDied {
        task_id: u64,
        pid: i32,
        exitcode: i32,
        reason: String,
    },
    /// A worker's initializer failed; the body describes the error. No more workers start.
    InitFailed { pid: i32, body: Vec<u8> },
    /// A worker could not start at all. No more workers start.
    StartFailed {
        pid: i32,
        exitcode: i32,
        message: String,
    },
    /// The manager has stopped and every worker has exited.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Finish pending work, then let the workers exit.
    Graceful,
    /// Kill every worker and its children now; drop pending work.
    Kill,
}

/// Settings callers change, and what the manager publishes back.
struct Control {
    max_workers: usize,
    shutdown: Option<Shutdown>,
    pids: Vec<i32>,
}

/// Tasks taken back before any worker received them.
#[derive(Default)]
struct Cancelled {
    ids: HashSet<u64>,
}

/// An idle worker the manager offers while it sleeps: a submitting thread may write one
/// task straight to it, sparing a wake-up of the manager on the way to the worker.
#[derive(Default)]
struct Direct {
    /// (pid, channel) of the offered worker.
    offered: Option<(i32, RawFd)>,
    /// Tasks sent that way, for the manager to record as in flight.
    sent: Vec<(i32, Task)>,
}

/// Larger tasks go through the manager, which writes without blocking.
const DIRECT_MAX: usize = 64 * 1024;

/// How long a claimer watches for its outcome before it sleeps.
const CLAIM_SPIN: Duration = Duration::from_micros(50);

/// Where a claimed task's outcome stands.
enum Claim {
    Waiting,
    /// Its outcome went through `next_events` after all; the claimer should look again.
    Woken,
    Arrived(Event),
}

#[derive(Default)]
struct Claims {
    by_task: HashMap<u64, Claim>,
    /// The manager has stopped: no outcome will arrive any more.
    closed: bool,
}

struct Shared {
    control: Mutex<Control>,
    direct: Mutex<Direct>,
    /// New tasks; lock-free, so a submitting thread never waits for the manager.
    submissions: Sender<Task>,
    cancelled: Mutex<Cancelled>,
    /// Mirrors `cancelled.ids.len()`, so dispatch takes the lock only when needed.
    cancelled_count: AtomicUsize,
    /// One more than the highest task id ever sent to a worker. Task ids grow in
    /// submission order and new tasks are sent in that order, so a task was sent
    /// iff its id is below this mark.
    sent_mark: AtomicU64,
    /// Set when the manager has been woken and has not yet looked at its inputs.
    notified: AtomicBool,
    /// Set while the manager sleeps with room for a task right away (an idle worker,
    /// or a worker to start). Otherwise a new task waits for the next result anyway,
    /// and `submit` need not wake the manager: that wake-up would be spent for nothing.
    hungry: AtomicBool,
    /// Set (and signalled) when the manager thread has finished.
    finished: (Mutex<bool>, Condvar),
    wake: OwnedFd,
    claims: Mutex<Claims>,
    /// Signalled when a claim changes.
    claim_changed: Condvar,
    /// Mirrors `claims.by_task.len()`, so the manager takes the lock only when needed.
    claim_count: AtomicUsize,
    /// Bumped whenever a claim changes, for claimers that spin before they sleep.
    claim_changes: AtomicU64,
    /// Where outcomes go when nobody claims them.
    events: Sender<Event>,
}

impl Shared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// Wake the manager unless a wake-up is already on its way.
    fn notify(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// Manager side, just before it decides on a task: false if the task was
    /// cancelled (then it is dropped). Pairs with `Manager::cancel`.
    fn claim_for_sending(&self, id: u64) -> bool {
        self.sent_mark.fetch_max(id + 1, Ordering::SeqCst);
        if self.cancelled_count.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let mut cancelled = self.cancelled.lock();
        if cancelled.ids.remove(&id) {
            self.cancelled_count.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// The handle the Python glue holds.
pub struct Manager {
    shared: Arc<Shared>,
    events: Receiver<Event>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Manager {
    pub fn start(config: Config) -> io::Result<Manager> {
        // SAFETY: plain eventfd creation; the result is checked before use.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let (submissions, submitted) = crossbeam_channel::unbounded();
        let (sender, events) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                max_workers: config.max_workers,
                shutdown: None,
                pids: Vec::new(),
            }),
            submissions,
            direct: Mutex::new(Direct::default()),
            cancelled: Mutex::new(Cancelled::default()),
            cancelled_count: AtomicUsize::new(0),
            sent_mark: AtomicU64::new(0),
            notified: AtomicBool::new(false),
            hungry: AtomicBool::new(true),
            finished: (Mutex::new(false), Condvar::new()),
            // SAFETY: eventfd returned a fresh descriptor that we now own.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
            claims: Mutex::new(Claims::default()),
            claim_changed: Condvar::new(),
            claim_count: AtomicUsize::new(0),
            claim_changes: AtomicU64::new(0),
            events: sender,
        });
        let mut run = ManagerLoop::new(config, shared.clone(), submitted);
        let thread = std::thread::Builder::new()
            .name("loky-manager".into())
            .spawn(move || run.run())?;
        Ok(Manager {
            shared,
            events,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queue a task. Ids must grow from one call to the next.
    pub fn submit(&self, id: u64, body: Vec<u8>, fd: Option<OwnedFd>) {
        let task = Task {
            id,
            body: Arc::new(body),
            fd,
        };
        let Some(task) = self.try_send_direct(task) else {
            return;
        };
        // The receiver lives as long as the manager thread; after it ended, the task is
        // dropped (the Python side refuses tasks after shutdown anyway).
        let _ = self.shared.submissions.send(task);
        // Pairs with the manager's store of `hungry` and look at the queue before it
        // sleeps: either it sees this task or this sees it hungry.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.shared.hungry.load(Ordering::SeqCst) {
            self.shared.notify();
        }
    }

    /// Write `task` to the offered idle worker, if there is one; gives the task back
    /// otherwise.
    fn try_send_direct(&self, task: Task) -> Option<Task> {
        if task.fd.is_some() || task.body.len() > DIRECT_MAX {
            return Some(task);
        }
        let mut direct = self.shared.direct.lock();
        let Some((pid, channel)) = direct.offered else {
            return Some(task);
        };
        self.shared
            .sent_mark
            .fetch_max(task.id + 1, Ordering::SeqCst);
        let mut writer = FrameWriter::default();
        writer.push(OutFrame::new(task.id, TASK, task.body.clone()));
        if writer.flush(channel).is_err() {
            // The worker is going away: leave it to the manager.
            direct.offered = None;
            return Some(task);
        }
        // The socket was empty (the worker idle), so a small frame went out whole; if
        // not, finish it before anything else can write there.
        while !writer.is_empty() {
            let mut out = libc::pollfd {
                fd: channel,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: polls one live pollfd.
            unsafe { libc::poll(&mut out, 1, 100) };
            if writer.flush(channel).is_err() {
                break; // dead worker: its exit handling re-queues or fails the task
            }
        }
        direct.offered = None;
        direct.sent.push((pid, task));
        None
    }

    /// Take back a task no worker has received yet. False if it was already sent.
    pub fn cancel(&self, id: u64) -> bool {
        let mut cancelled = self.shared.cancelled.lock();
        self.shared.cancelled_count.fetch_add(1, Ordering::SeqCst);
        cancelled.ids.insert(id);
        if id < self.shared.sent_mark.load(Ordering::SeqCst) {
            cancelled.ids.remove(&id);
            self.shared.cancelled_count.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub fn resize(&self, max_workers: usize) {
        self.shared.control.lock().max_workers = max_workers;
        self.shared.notify();
    }

    pub fn shutdown(&self, mode: Shutdown) {
        {
            let mut control = self.shared.control.lock();
            if control.shutdown != Some(Shutdown::Kill) {
                control.shutdown = Some(mode);
            }
        }
        self.shared.notify();
    }

    pub fn pids(&self) -> Vec<i32> {
        self.shared.control.lock().pids.clone()
    }

    /// Wait up to `timeout` for events, then take every event already queued.
    pub fn next_events(&self, timeout: Option<Duration>, max: usize) -> Vec<Event> {
        let first = match timeout {
            Some(t) => self.events.recv_timeout(t).ok(),
            None => self.events.recv().ok(),
        };
        let mut out: Vec<Event> = first.into_iter().collect();
        while out.len() < max {
            match self.events.try_recv() {
                Ok(event) => out.push(event),
                Err(_) => break,
            }
        }
        out
    }

    /// Ask for task `id`'s outcome to be handed to the caller, who then waits for it with
    /// `await_claim` and ends the claim with `unclaim`.
    pub fn claim(&self, id: u64) {
        let mut claims = self.shared.claims.lock();
        claims.by_task.insert(id, Claim::Waiting);
        self.shared
            .claim_count
            .store(claims.by_task.len(), Ordering::SeqCst);
    }

    /// Wait up to `timeout` until claimed task `id` needs a look: its outcome arrived
    /// (`unclaim` hands it over), the claim was woken (`wake_claim`), the manager
    /// stopped, or the task is not claimed. False if the time ran out first.
    pub fn await_claim(&self, id: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        // A short task's outcome often comes back sooner than a sleeping thread can be
        // woken: watch for it a little while first, yielding the CPU meanwhile.
        let seen = self.shared.claim_changes.load(Ordering::SeqCst);
        let spin_until = Instant::now() + CLAIM_SPIN.min(timeout);
        while self.shared.claim_changes.load(Ordering::SeqCst) == seen
            && Instant::now() < spin_until
        {
            std::thread::yield_now();
        }
        let mut claims = self.shared.claims.lock();
        let mut timed_out = false;
        loop {
            match claims.by_task.get(&id) {
                Some(Claim::Waiting) if !claims.closed => {}
                _ => return true,
            }
            if timed_out {
                return false;
            }
            // One more look after a timeout: the outcome may have come with the deadline.
            timed_out = self
                .shared
                .claim_changed
                .wait_until(&mut claims, deadline)
                .timed_out();
        }
    }

    /// End a claimer's wait early: task `id`'s outcome was handled without it.
    pub fn wake_claim(&self, id: u64) {
        let mut claims = self.shared.claims.lock();
        if let Some(slot @ Claim::Waiting) = claims.by_task.get_mut(&id) {
            *slot = Claim::Woken;
            self.shared.claim_changes.fetch_add(1, Ordering::SeqCst);
            self.shared.claim_changed.notify_all();
        }
    }

    /// End the claim on task `id`. Returns an outcome that arrived and was not taken:
    /// the claimer applies it (the result thread may have stopped already).
    pub fn unclaim(&self, id: u64) -> Option<Event> {
        let mut claims = self.shared.claims.lock();
        let claim = claims.by_task.remove(&id);
        self.shared
            .claim_count
            .store(claims.by_task.len(), Ordering::SeqCst);
        match claim {
            Some(Claim::Arrived(event)) => Some(event),
            _ => None,
        }
    }

    /// Wait up to `timeout` (None: for ever) for the manager thread to end, after a
    /// shutdown request. True once it has.
    pub fn join(&self, timeout: Option<Duration>) -> bool {
        {
            let (finished, done) = &self.shared.finished;
            let mut finished = finished.lock();
            match timeout {
                Some(t) => {
                    let deadline = Instant::now() + t;
                    while !*finished && !done.wait_until(&mut finished, deadline).timed_out() {}
                }
                None => {
                    while !*finished {
                        done.wait(&mut finished);
                    }
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
        self.shutdown(Shutdown::Graceful);
    }
}

/// Tasks faster than this are sent to a worker in batches when many are queued.
const BATCH_BELOW: Duration = Duration::from_millis(1);
const MAX_BATCH: usize = 64;

struct ManagerLoop {
    config: Config,
    shared: Arc<Shared>,
    submitted: Receiver<Task>,
    /// Tasks waiting for a worker, oldest first (re-queued ones go to the front).
    pending: VecDeque<Task>,
    workers: Vec<Worker>,
    /// Workers that died or were recycled and should be replaced even with no work queued.
    replacements_owed: usize,
    /// Set once a worker could not start or initialize: start no more.
    broken: bool,
    /// Moving average of how long a task keeps a worker busy.
    service_time: Option<Duration>,
    /// The pids last copied to `Control::pids`.
    published_pids: Vec<i32>,
    template: Option<Template>,
    /// The template could not start or died: start workers with exec only.
    template_failed: bool,
}

impl ManagerLoop {
    fn new(config: Config, shared: Arc<Shared>, submitted: Receiver<Task>) -> ManagerLoop {
        ManagerLoop {
            config,
            shared,
            submitted,
            pending: VecDeque::new(),
            workers: Vec::new(),
            replacements_owed: 0,
            broken: false,
            service_time: None,
            published_pids: Vec::new(),
            template: None,
            template_failed: false,
        }
    }

    fn emit(&self, event: Event) {
        let claimable = match &event {
            Event::Result { task_id, .. } | Event::WorkerDied { task_id, .. } => Some(*task_id),
            _ => None,
        };
        if let Some(id) = claimable.filter(|_| self.shared.claim_count.load(Ordering::SeqCst) > 0) {
            let mut claims = self.shared.claims.lock();
            if let Some(slot @ Claim::Waiting) = claims.by_task.get_mut(&id) {
                *slot = Claim::Arrived(event);
                self.shared.claim_changes.fetch_add(1, Ordering::SeqCst);
                self.shared.claim_changed.notify_all();
                return;
            }
        }
        let _ = self.shared.events.send(event);
    }

    fn run(&mut self) {
        loop {
            // Clear the flag before looking, so a later submit wakes us again.
            self.shared.notified.store(false, Ordering::SeqCst);
            self.pending.extend(self.submitted.try_iter());
            let (shutdown, max_workers) = {
                let control = self.shared.control.lock();
                (control.shutdown, control.max_workers)
            };
            if shutdown == Some(Shutdown::Kill) {
                self.kill_all();
                break;
            }
            self.adjust_pool(max_workers, shutdown.is_some());
            if shutdown.is_none() {
                self.maybe_start_template();
            }
            self.dispatch();
            self.retire_idle(shutdown.is_some());
            self.flush_all();
            self.publish_pids();
            if shutdown.is_some() && self.workers.is_empty() && self.nothing_pending() {
                break;
            }
            let hungry = shutdown.is_none() && self.has_room(max_workers);
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
        if let Some(template) = self.template.take() {
            // Its workers are gone; EOF on its socket makes it exit. shutdown(2), not
            // just close: a process forked from ours may hold a copy of the socket.
            // SAFETY: plain shutdown(2) on a socket we own.
            unsafe { libc::shutdown(template.process.channel.as_raw_fd(), libc::SHUT_RDWR) };
            if !wait_for_exit(&template.process.pidfd, Some(TEMPLATE_EXIT_GRACE)) {
                kill_tree(template.process.pid, libc::SIGKILL);
                wait_for_exit(&template.process.pidfd, None);
            }
        }
        self.publish_pids();
        self.emit(Event::Closed);
        self.shared.claims.lock().closed = true;
        self.shared.claim_changes.fetch_add(1, Ordering::SeqCst);
        self.shared.claim_changed.notify_all();
        let (finished, done) = &self.shared.finished;
        *finished.lock() = true;
        done.notify_all();
    }

    /// Offer one idle worker for direct sends while the manager sleeps.
    fn offer_idle_worker(&mut self) {
        if !self.pending.is_empty() {
            return;
        }
        let budget = self.config.max_tasks_per_child;
        let idle = self.workers.iter().find(|w| {
            w.state == State::Ready
                && w.inflight.is_empty()
                && w.writer.is_empty()
                && !w.channel_closed
                && budget.is_none_or(|b| w.tasks_sent < b)
        });
        if let Some(worker) = idle {
            self.shared.direct.lock().offered = Some((worker.pid, worker.fd()));
        }
    }

    /// End the offer and record what was sent directly meanwhile.
    fn withdraw_offer(&mut self) {
        let sent = {
            let mut direct = self.shared.direct.lock();
            direct.offered = None;
            std::mem::take(&mut direct.sent)
        };
        for (pid, task) in sent {
            match self.workers.iter_mut().find(|w| w.pid == pid) {
                Some(worker) => worker.record_sent(task),
                None => self.pending.push_front(task), // cannot happen: it was offered
            }
        }
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

    /// Start one worker: forked by the template when it is ready, else exec'd.
    fn start_worker(&mut self) -> io::Result<()> {
        if let Some(template) = self.template.as_mut().filter(|t| t.ready) {
            return template.request();
        }
        let spawned = spawn_worker(&self.config.command)?;
        self.workers
            .push(Worker::new(spawned, &self.config.init, false));
        Ok(())
    }

    fn nothing_pending(&self) -> bool {
        self.broken || self.pending.is_empty()
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

    /// Put the tasks `worker` received but did not start back at the head of the queue.
    fn requeue_unstarted(pending: &mut VecDeque<Task>, worker: &mut Worker) {
        for task in worker.inflight.drain(..).rev() {
            pending.push_front(task);
        }
    }

    /// Start workers up to the target while there is work (or a replacement is owed);
    /// drain the surplus when the target shrank.
    fn adjust_pool(&mut self, target: usize, shutting_down: bool) {
        let forking = self.template.as_ref().map_or(0, |t| t.requested.len());
        let live = self.workers.iter().filter(|w| w.is_live()).count() + forking;
        if live > target {
            self.shrink(live - target);
            return;
        }
        if self.broken {
            return;
        }
        let wanted = if !self.pending.is_empty() {
            target - live
        } else if shutting_down {
            0
        } else {
            self.replacements_owed.min(target - live)
        };
        self.replacements_owed = 0;
        for _ in 0..wanted {
            match self.start_worker() {
                Ok(()) => {}
                Err(err) => {
                    self.broken = true;
                    self.emit(Event::StartFailed {
                        pid: 0,
                        exitcode: 0,
                        message: format!(
                            "could not start worker '{}': {err}",
                            self.config.command.program
                        ),
                    });
                    return;
                }
            }
        }
    }

    /// Retire `count` workers, idle ones first; busy ones finish what they hold.
    fn shrink(&mut self, mut count: usize) {
        for idle_first in [true, false] {
            for worker in self.workers.iter_mut().filter(|w| w.is_live()) {
                if count == 0 {
                    return;
                }
                if worker.inflight.is_empty() == idle_first {
                    if idle_first {
                        worker.request_exit();
                    } else {
                        worker.state = State::Draining;
                    }
                    count -= 1;
                }
            }
        }
    }

    /// How many tasks a ready worker may hold at once. One, unless tasks have been
    /// short and the queue is long: then a share of the queue, small enough that
    /// every worker still gets work and a slow task strands little behind it.
    /// Whether a task submitted now would leave at once: an idle worker, or room to
    /// start one.
    fn has_room(&self, max_workers: usize) -> bool {
        (self.workers.len() < max_workers && !self.broken)
            || self
                .workers
                .iter()
                .any(|w| w.state == State::Ready && w.inflight.is_empty())
    }

    fn batch_limit(&self, pending: usize, ready: usize) -> usize {
        let ready = ready.max(1);
        match self.service_time {
            Some(t) if t < BATCH_BELOW && pending >= 4 * ready => {
                (pending / (2 * ready)).clamp(1, MAX_BATCH)
            }
            _ => 1,
        }
    }

    fn dispatch(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let ready = self
            .workers
            .iter()
            .filter(|w| w.state == State::Ready)
            .count();
        if ready == 0 {
            return;
        }
        let limit = self.batch_limit(self.pending.len(), ready);
        let budget = self.config.max_tasks_per_child;
        // Least loaded first, so work spreads over the pool.
        let mut order: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].state == State::Ready)
            .collect();
        order.sort_by_key(|&i| self.workers[i].inflight.len());
        for i in order {
            let worker = &mut self.workers[i];
            while worker.inflight.len() < limit {
                if budget.is_some_and(|b| worker.tasks_sent >= b) {
                    break;
                }
                let Some(task) = self.pending.pop_front() else {
                    return;
                };
                if self.shared.claim_for_sending(task.id) {
                    worker.send(task);
                }
            }
            if budget.is_some_and(|b| worker.tasks_sent >= b) {
                // Spent: finish what it holds, then make room for a fresh one.
                worker.state = State::Draining;
            }
        }
    }

    /// Ask idle workers to exit: drained ones, and any idle past the timeout.
    fn retire_idle(&mut self, shutting_down: bool) {
        let now = Instant::now();
        let nothing_pending = self.nothing_pending();
        for worker in self.workers.iter_mut() {
            if !worker.inflight.is_empty() || worker.state == State::Exiting {
                continue;
            }
            let timed_out = worker.state == State::Ready
                && self
                    .config
                    .idle_timeout
                    .is_some_and(|t| now.duration_since(worker.idle_since) >= t);
            let done = shutting_down && nothing_pending && worker.state != State::Starting;
            if worker.state == State::Draining || timed_out || done {
                worker.request_exit();
            }
        }
    }

    fn flush_all(&mut self) {
        if let Some(template) = self.template.as_mut() {
            if template.writer.flush(template.fd()).is_err() {
                self.template_failed = true; // its exit is handled when its pidfd fires
            }
        }
        for worker in self.workers.iter_mut() {
            if worker.channel_closed || worker.writer.is_empty() {
                continue;
            }
            if worker.writer.flush(worker.fd()).is_err() {
                // The worker is going away; its pidfd reports the exit.
                worker.channel_closed = true;
                continue;
            }
            if worker.state == State::Exiting && worker.writer.is_empty() {
                worker.close_write();
            }
        }
    }

    /// Time until the next idle timeout, if any worker is idle.
    fn next_deadline(&self) -> Option<Duration> {
        let timeout = self.config.idle_timeout?;
        let now = Instant::now();
        self.workers
            .iter()
            .filter(|w| w.state == State::Ready && w.inflight.is_empty())
            .map(|w| (w.idle_since + timeout).saturating_duration_since(now))
            .min()
    }

    fn wait_and_handle(&mut self) {
        // poll set: wake fd, then per worker its pidfd and (while open) its channel.
        let mut fds = vec![libc::pollfd {
            fd: self.shared.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for worker in &self.workers {
            // The template reports the exit of the workers it forked.
            fds.push(libc::pollfd {
                fd: if worker.from_template {
                    -1
                } else {
                    worker.pidfd.as_raw_fd()
                },
                events: libc::POLLIN,
                revents: 0,
            });
            let mut events = libc::POLLIN;
            if !worker.writer.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: if worker.channel_closed {
                    -1
                } else {
                    worker.fd()
                },
                events,
                revents: 0,
            });
        }
        let workers_end = fds.len();
        if let Some(template) = &self.template {
            fds.push(libc::pollfd {
                fd: template.process.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            let mut events = libc::POLLIN;
            if !template.writer.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: template.fd(),
                events,
                revents: 0,
            });
        }
        let timeout_ms = match self.next_deadline() {
            Some(d) => d.as_millis().min(i32::MAX as u128) as i32 + 1,
            None => -1,
        };
        // SAFETY: fds is a valid array of fds.len() pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        self.withdraw_offer();
        if n <= 0 {
            return; // timeout or EINTR: the loop re-evaluates everything
        }
        if fds[0].revents != 0 {
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer from our eventfd.
            unsafe { libc::read(fds[0].fd, buf.as_mut_ptr().cast(), 8) };
        }
        // Read channels first, so results written just before an exit are not lost.
        let mut exited = Vec::new();
        for (i, worker_fds) in fds[1..workers_end].chunks(2).enumerate() {
            let (pid_fd, chan) = (worker_fds[0], worker_fds[1]);
            if chan.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                || pid_fd.revents != 0
            {
                self.read_worker(i);
            }
            if pid_fd.revents != 0 {
                exited.push(i);
            }
        }
        // Remove from the back so earlier indices stay valid.
        for &i in exited.iter().rev() {
            if let Ok(Some(exitcode)) = try_reap(self.workers[i].pidfd.as_raw_fd()) {
                let worker = self.workers.remove(i);
                self.on_exit(worker, exitcode);
            }
        }
        if let [pid_fd, chan] = fds[workers_end..] {
            if chan.revents != 0 {
                self.read_template();
            }
            if pid_fd.revents != 0 {
                self.on_template_exit();
            }
        }
    }

    fn read_template(&mut self) {
        let Some(template) = self.template.as_mut() else {
            return;
        };
        let outcome = template.reader.read_available(template.fd());
        for frame in outcome.frames {
            let pid = frame.header.task_id as i32;
            match frame.header.kind {
                READY => {
                    if let Some(t) = self.template.as_mut() {
                        t.ready = true;
                    }
                }
                FORKED => self.on_forked(pid),
                EXITED => {
                    let code = frame
                        .body
                        .get(..8)
                        .map_or(-1, |b| i64::from_le_bytes(b.try_into().unwrap()) as i32);
                    if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
                        self.read_worker(i); // results written just before the exit
                        let worker = self.workers.remove(i);
                        self.on_exit(worker, code);
                    }
                }
                _ => {}
            }
        }
    }

    fn on_forked(&mut self, pid: i32) {
        let Some(channel) = self.template.as_mut().and_then(|t| t.requested.pop_front()) else {
            return;
        };
        match pidfd_open(pid) {
            Ok(pidfd) => {
                let spawned = Spawned {
                    pid,
                    pidfd,
                    channel,
                };
                self.workers
                    .push(Worker::new(spawned, &self.config.init, true));
            }
            // Gone already: the template reports its exit, and the pool tops up.
            Err(_) => self.replacements_owed += 1,
        }
    }

    /// The template died (it should not): its workers die with it (parent-death
    /// signal). Count them as killed and go on with exec'd workers.
    fn on_template_exit(&mut self) {
        let Some(template) = self.template.take() else {
            return;
        };
        wait_for_exit(&template.process.pidfd, None);
        self.template_failed = true;
        let mut i = 0;
        while i < self.workers.len() {
            if self.workers[i].from_template {
                self.read_worker(i);
                let worker = self.workers.remove(i);
                kill_tree(worker.pid, libc::SIGKILL);
                self.on_exit(worker, -libc::SIGKILL);
            } else {
                i += 1;
            }
        }
    }

    fn read_worker(&mut self, i: usize) {
        let worker = &mut self.workers[i];
        if worker.channel_closed {
            return;
        }
        let outcome = worker.reader.read_available(worker.fd());
        if outcome.closed {
            worker.channel_closed = true;
        }
        for frame in outcome.frames {
            self.on_frame(i, frame);
        }
        if let Some(reason) = outcome.corrupt {
            self.workers[i].fail(reason);
        }
    }

    fn on_frame(&mut self, i: usize, frame: Frame) {
        let worker = &mut self.workers[i];
        if worker.fault.is_some() {
            return;
        }
        match frame.header.kind {
            RESULT if worker.inflight.front().map(|t| t.id) != Some(frame.header.task_id) => {
                worker.fail(format!(
                    "it answered task {} which it was not running",
                    frame.header.task_id
                ));
            }
            RESULT => {
                let now = Instant::now();
                let task = worker.inflight.pop_front();
                let spent = now.duration_since(worker.busy_since);
                worker.busy_since = now;
                if worker.inflight.is_empty() {
                    worker.idle_since = now;
                }
                let pid = worker.pid;
                self.service_time = Some(match self.service_time {
                    Some(avg) => (avg * 7 + spent) / 8,
                    None => spent,
                });
                drop(task);
                self.emit(Event::Result {
                    task_id: frame.header.task_id,
                    pid,
                    body: frame.body,
                    fd: frame.fd,
                });
            }
            READY if worker.state == State::Starting => {
                worker.state = State::Ready;
                worker.idle_since = Instant::now();
            }
            INIT_FAILED => worker.init_error = Some(frame.body),
            RETIRING => {
                // It exits after this message: give its queued tasks to others.
                worker.state = State::Exiting;
                self.replacements_owed += 1;
                Self::requeue_unstarted(&mut self.pending, worker);
            }
            kind => worker.fail(format!("unexpected message kind {kind}")),
        }
    }

    fn on_exit(&mut self, mut worker: Worker, exitcode: i32) {
        if let Some(body) = worker.init_error.take() {
            self.broken = true;
            self.emit(Event::InitFailed {
                pid: worker.pid,
                body,
            });
            return;
        }
        if worker.state == State::Starting {
            self.broken = true;
            self.emit(Event::StartFailed {
                pid: worker.pid,
                exitcode,
                message: String::new(),
            });
            return;
        }
        let expected = worker.state == State::Exiting && worker.inflight.is_empty();
        if !expected {
            self.replacements_owed += 1;
        }
        if let Some(running) = worker.inflight.pop_front() {
            self.emit(Event::WorkerDied {
                task_id: running.id,
                pid: worker.pid,
                exitcode,
                reason: worker.fault.take().unwrap_or_default(),
            });
        }
        // Tasks it had received but not started run elsewhere.
        Self::requeue_unstarted(&mut self.pending, &mut worker);
    }

    fn kill_all(&mut self) {
        for worker in &self.workers {
            kill_tree(worker.pid, libc::SIGKILL);
        }
        if let Some(template) = &self.template {
            kill_tree(template.process.pid, libc::SIGKILL);
        }
        for worker in self.workers.drain(..) {
            wait_for_exit(&worker.pidfd, None);
        }
        if let Some(template) = self.template.take() {
            wait_for_exit(&template.process.pidfd, None);
        }
        self.pending.clear();
    }
}

/// How long the template may take to exit once told to.
const TEMPLATE_EXIT_GRACE: Duration = Duration::from_secs(2);

/// Wait until the process behind `pidfd` has exited (at most `timeout`), then reap it
/// if it is our child (the template reaps the workers it forked). False on timeout.
fn wait_for_exit(pidfd: &OwnedFd, timeout: Option<Duration>) -> bool {
    let mut fd = libc::pollfd {
        fd: pidfd.as_raw_fd() as RawFd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout_ms = timeout.map_or(-1, |t| t.as_millis() as i32);
    loop {
        // SAFETY: polls one live pollfd; readable once the process has exited.
        match unsafe { libc::poll(&mut fd, 1, timeout_ms) } {
            0 => return false,
            n if n > 0 => break,
            _ => continue, // EINTR
        }
    }
    let _ = try_reap(pidfd.as_raw_fd());
    true
}
