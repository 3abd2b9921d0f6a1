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
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::policy::{self, ExitReason, Load};
use super::worker::{State, Task, Worker};
use super::{Config, Event, Incoming, Shared, Shutdown};
use crate::procfs::kill_tree;
use crate::shm::Mapping;
use crate::spawn::{pidfd_open, spawn_worker, try_reap, Spawned};
use crate::template::Template;
use crate::wire::{Attached, Frame, Kind};

/// How long the template may take to exit once told to.
const TEMPLATE_EXIT_GRACE: Duration = Duration::from_secs(2);

pub(super) struct ManagerLoop {
    config: Config,
    shared: Arc<Shared>,
    submitted: Receiver<Task>,
    /// Tasks waiting for a worker, oldest first (re-queued ones go to the front).
    pending: VecDeque<Task>,
    workers: Vec<Worker>,
    /// Workers that left unplanned and should be replaced even with no work queued.
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
    pub(super) fn new(config: Config, shared: Arc<Shared>, submitted: Receiver<Task>) -> Self {
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

    pub(super) fn run(&mut self) {
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

    fn live_count(&self) -> usize {
        let forking = self.template.as_ref().map_or(0, |t| t.requested.len());
        self.workers.iter().filter(|w| w.is_live()).count() + forking
    }

    fn nothing_pending(&self) -> bool {
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
            self.replacements_owed,
            shutting_down,
        );
        self.replacements_owed = 0;
        for _ in 0..wanted {
            if let Err(err) = self.start_worker() {
                self.broken = true;
                self.shared.emit(Event::StartFailed {
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

    /// Start one worker: forked by the template when it is ready, else exec'd.
    fn start_worker(&mut self) -> io::Result<()> {
        if let Some(template) = self.template.as_mut().filter(|t| t.ready) {
            return template.request();
        }
        let spawned = spawn_worker(&self.config.command)?;
        self.add_worker(spawned, false);
        Ok(())
    }

    fn add_worker(&mut self, spawned: Spawned, forked: bool) {
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

    fn stop_template(&mut self) {
        let Some(template) = self.template.take() else {
            return;
        };
        // Its workers are gone; EOF on its socket makes it exit. shutdown(2), not just
        // close: a process forked from ours may hold a copy of the socket.
        // SAFETY: plain shutdown(2) on a socket we own.
        unsafe { libc::shutdown(template.process.channel.as_raw_fd(), libc::SHUT_RDWR) };
        if !wait_for_exit(&template.process.pidfd, Some(TEMPLATE_EXIT_GRACE)) {
            kill_tree(template.process.pid, libc::SIGKILL);
            wait_for_exit(&template.process.pidfd, None);
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
                let Some(task) = self.pending.pop_front() else {
                    break;
                };
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
    fn withdraw_offer(&mut self) {
        for (pid, task) in self.shared.direct.withdraw() {
            match self.workers.iter_mut().find(|w| w.pid == pid) {
                Some(worker) => worker.record_sent(task),
                None => self.pending.push_front(task), // cannot happen: it was offered
            }
        }
    }

    /// Put the tasks `worker` received but did not start back at the head of the queue.
    fn requeue_unstarted(pending: &mut VecDeque<Task>, worker: &mut Worker) {
        for task in worker.inflight.drain(..).rev() {
            pending.push_front(task);
        }
    }

    // ---- I/O -----------------------------------------------------------------------

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
            .filter(|w| w.is_idle())
            .map(|w| (w.idle_since + timeout).saturating_duration_since(now))
            .min()
    }

    fn wait_and_handle(&mut self) {
        // poll set: wake fd, then per worker its pidfd and (while open) its channel.
        let pollfd = |fd: RawFd, events: libc::c_short| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let mut fds = vec![pollfd(self.shared.wake.as_raw_fd(), libc::POLLIN)];
        for worker in &self.workers {
            // The template reports the exit of the workers it forked.
            let pidfd = if worker.from_template {
                -1
            } else {
                worker.pidfd.as_raw_fd()
            };
            fds.push(pollfd(pidfd, libc::POLLIN));
            let events = if worker.writer.is_empty() {
                libc::POLLIN
            } else {
                libc::POLLIN | libc::POLLOUT
            };
            let channel = if worker.channel_closed {
                -1
            } else {
                worker.fd()
            };
            fds.push(pollfd(channel, events));
        }
        let workers_end = fds.len();
        if let Some(template) = &self.template {
            fds.push(pollfd(template.process.pidfd.as_raw_fd(), libc::POLLIN));
            let events = if template.writer.is_empty() {
                libc::POLLIN
            } else {
                libc::POLLIN | libc::POLLOUT
            };
            fds.push(pollfd(template.fd(), events));
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
            match Kind::from_u32(frame.header.kind) {
                Some(Kind::Ready) => {
                    if let Some(t) = self.template.as_mut() {
                        t.ready = true;
                    }
                }
                Some(Kind::Forked) => self.on_forked(pid),
                Some(Kind::Exited) => {
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
            Ok(pidfd) => self.add_worker(
                Spawned {
                    pid,
                    pidfd,
                    channel,
                },
                true,
            ),
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
                let spent = now.duration_since(worker.busy_since);
                worker.busy_since = now;
                if worker.inflight.is_empty() {
                    worker.idle_since = now;
                }
                let pid = worker.pid;
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

    fn on_exit(&mut self, mut worker: Worker, exitcode: i32) {
        if let Some(body) = worker.init_error.take() {
            self.broken = true;
            self.shared.emit(Event::InitFailed {
                pid: worker.pid,
                body,
            });
            return;
        }
        if worker.state == State::Starting && worker.exit_reason.is_none() {
            self.broken = true;
            self.shared.emit(Event::StartFailed {
                pid: worker.pid,
                exitcode,
                message: String::new(),
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
            self.replacements_owed += 1;
        }
        if let Some(running) = worker.inflight.pop_front() {
            self.shared.emit(Event::WorkerDied {
                task_id: running.id,
                pid: worker.pid,
                exitcode,
                reason: worker.fault.take().unwrap_or_default(),
            });
        }
        // Tasks it had received but not started run elsewhere.
        Self::requeue_unstarted(&mut self.pending, &mut worker);
        self.shared.emit(Event::WorkerExited {
            pid: worker.pid,
            exitcode,
            reason,
        });
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

/// Map the segment that came with a result at once, so that no descriptor waits in
/// the event queue (results that queue up hold none).
fn receive_segment(fd: Attached) -> Incoming {
    match fd {
        Attached::None => Incoming::None,
        Attached::Dropped => Incoming::Dropped,
        Attached::Fd(fd) => match Mapping::new(fd.as_fd()) {
            Ok(mapping) => Incoming::Mapped(mapping),
            Err(err) => Incoming::Unmappable(err),
        },
    }
}

/// Wait until the process behind `pidfd` has exited (at most `timeout`), then reap it
/// if it is our child (the template reaps the workers it forked). False on timeout.
fn wait_for_exit(pidfd: &OwnedFd, timeout: Option<Duration>) -> bool {
    let mut fd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
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
