//! The manager thread's I/O: the poll set (wake-up fd, every worker's channel and
//! pidfd, the template's), reading frames from the workers and the template, writing
//! what is queued for them, and the ends of processes.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::event_loop::ManagerLoop;
use super::policy;
use super::worker::{State, Worker};
use super::Incoming;
use crate::platform::{try_reap, wait_for_exit, ExitWatch, EXIT_POLL};
use crate::procfs::kill_tree;
use crate::shm::Mapping;
use crate::spawn::Spawned;
use crate::wire::{decode_exited, Attached, Kind};

/// How long the template may take to exit once told to.
const TEMPLATE_EXIT_GRACE: Duration = Duration::from_secs(2);

impl ManagerLoop {
    pub(super) fn stop_template(&mut self) {
        let Some(template) = self.template.take() else {
            return;
        };
        // Its workers are gone; EOF on its socket makes it exit. shutdown(2), not just
        // close: a process forked from ours may hold a copy of the socket.
        // SAFETY: plain shutdown(2) on a socket we own.
        unsafe { libc::shutdown(template.process.channel.as_raw_fd(), libc::SHUT_RDWR) };
        let process = &template.process;
        if !wait_for_exit(process.pid, &process.exit, true, Some(TEMPLATE_EXIT_GRACE)) {
            kill_tree(process.pid, libc::SIGKILL);
            wait_for_exit(process.pid, &process.exit, true, None);
        }
    }
    pub(super) fn flush_all(&mut self) {
        if let Some(template) = self.template.as_mut() {
            if template.writer.flush(template.fd()).is_err() {
                self.template_failed = true; // its exit is handled when it is seen
            }
        }
        for worker in self.workers.iter_mut() {
            if worker.channel_closed || worker.writer.is_empty() {
                continue;
            }
            if worker.writer.flush(worker.fd()).is_err() {
                // The worker is going away; its exit is handled when it is seen.
                worker.channel_closed = true;
                continue;
            }
            if worker.state == State::Exiting && worker.writer.is_empty() {
                worker.close_write();
            }
        }
    }
    /// Time until the next deadline: an idle timeout, a task's time limit, the end of
    /// an ended worker's grace period, a stalled message's limit.
    fn next_deadline(&self) -> Option<Duration> {
        let idle = self.config.idle_timeout.map(|timeout| {
            self.workers
                .iter()
                .filter(|w| w.is_idle())
                .map(move |w| w.idle_since + timeout)
        });
        let tasks = self.workers.iter().filter_map(Worker::task_deadline);
        let grace = self
            .workers
            .iter()
            .filter_map(|w| w.ending.as_ref().filter(|e| !e.killed))
            .map(|e| e.since + policy::END_GRACE);
        let stalls = self.workers.iter().filter_map(Worker::stall_deadline);
        let all = idle
            .into_iter()
            .flatten()
            .chain(tasks)
            .chain(grace)
            .chain(stalls);
        policy::time_to_next(Instant::now(), all)
    }

    pub(super) fn wait_and_handle(&mut self) {
        // poll set: wake fd, then per worker its exit watch and (while open) its
        // channel, then the template's.
        let pollfd = |fd: RawFd, events: libc::c_short| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let wants = |empty: bool| {
            if empty {
                libc::POLLIN
            } else {
                libc::POLLIN | libc::POLLOUT
            }
        };
        let mut fds = vec![pollfd(self.shared.wake.fd(), libc::POLLIN)];
        for worker in &self.workers {
            // The template reports the exit of the workers it forked.
            let exit = if worker.from_template {
                -1
            } else {
                worker.exit.poll_fd()
            };
            fds.push(pollfd(exit, libc::POLLIN));
            let channel = if worker.channel_closed {
                -1
            } else {
                worker.fd()
            };
            fds.push(pollfd(channel, wants(worker.writer.is_empty())));
        }
        let workers_end = fds.len();
        if let Some(template) = &self.template {
            fds.push(pollfd(template.process.exit.poll_fd(), libc::POLLIN));
            fds.push(pollfd(template.fd(), wants(template.writer.is_empty())));
        }
        // Exits no descriptor reports are looked for every EXIT_POLL.
        let polled_exits = self
            .workers
            .iter()
            .filter(|w| !w.from_template)
            .map(|w| &w.exit)
            .chain(self.template.as_ref().map(|t| &t.process.exit))
            .any(ExitWatch::needs_polling);
        let mut wait = self.next_deadline();
        if polled_exits {
            wait = Some(wait.map_or(EXIT_POLL, |d| d.min(EXIT_POLL)));
        }
        let timeout_ms = wait.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32 + 1);
        // SAFETY: fds is a valid array of fds.len() pollfd structures.
        let mut poll = |wait: bool| unsafe {
            let timeout = if wait { timeout_ms } else { 0 };
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout)
        };
        // While results are due, watch for a moment before sleeping (`crate::watch`).
        let n = if self.workers.iter().any(|w| !w.inflight.is_empty()) {
            self.watch.wait(Instant::now(), poll, |&n| n != 0)
        } else {
            poll(true)
        };
        self.withdraw_offer();
        if n < 0 {
            return; // EINTR: the loop re-evaluates everything
        }
        if fds[0].revents != 0 {
            self.shared.wake.drain();
        }
        // Read channels first, so results written just before an exit are not lost.
        let mut maybe_exited = Vec::new();
        for (i, worker_fds) in fds[1..workers_end].chunks(2).enumerate() {
            let (exit, chan) = (worker_fds[0], worker_fds[1]);
            let worker = &self.workers[i];
            let polled = !worker.from_template && worker.exit.needs_polling();
            if chan.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                || exit.revents != 0
            {
                self.read_worker(i);
            }
            if exit.revents != 0 || polled {
                maybe_exited.push(i);
            }
        }
        // Remove from the back so earlier indices stay valid.
        for &i in maybe_exited.iter().rev() {
            let worker = &self.workers[i];
            if let Some(status) = try_reap(worker.pid, &worker.exit) {
                self.read_worker(i); // results written just before the exit
                let worker = self.workers.remove(i);
                self.on_exit(worker, status);
            }
        }
        if let [exit, chan] = fds[workers_end..] {
            if chan.revents != 0 {
                self.read_template();
            }
            let exited = self.template.as_ref().is_some_and(|t| {
                (exit.revents != 0 || t.process.exit.needs_polling())
                    && try_reap(t.process.pid, &t.process.exit).is_some()
            });
            if exited {
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
                    let (pid, status) = decode_exited(&frame);
                    if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
                        self.read_worker(i); // results written just before the exit
                        let worker = self.workers.remove(i);
                        self.on_exit(worker, status);
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
        // Its exit is reported by the template (its parent), which reaps it; the watch
        // serves to wait for it when the pool is killed.
        let exit = ExitWatch::open(pid);
        self.add_worker(Spawned { pid, exit, channel }, true);
    }
    /// The template died (it should not; it was reaped): its workers die with it (their
    /// watchdog). Count them as killed and go on with exec'd workers.
    fn on_template_exit(&mut self) {
        if self.template.take().is_none() {
            return;
        }
        self.template_failed = true;
        let mut i = 0;
        while i < self.workers.len() {
            if self.workers[i].from_template {
                self.read_worker(i);
                let worker = self.workers.remove(i);
                kill_tree(worker.pid, libc::SIGKILL);
                self.on_exit(worker, Some(-libc::SIGKILL));
            } else {
                i += 1;
            }
        }
    }
    pub(super) fn read_worker(&mut self, i: usize) {
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
    /// End every worker (and the template) with their process trees: `signal` now,
    /// then SIGKILL for any still alive after the grace period (at once if `signal`
    /// is SIGKILL). Queued work is dropped.
    pub(super) fn kill_all(&mut self, signal: libc::c_int) {
        let template = self.template.take().map(|t| t.process);
        // (pid, exit watch, our child?)
        let mut procs: Vec<(i32, &ExitWatch, bool)> = self
            .workers
            .iter()
            .map(|w| (w.pid, &w.exit, !w.from_template))
            .collect();
        if let Some(process) = &template {
            procs.push((process.pid, &process.exit, true));
        }
        for &(pid, _, _) in &procs {
            kill_tree(pid, signal);
        }
        let deadline = Instant::now() + policy::END_GRACE;
        for &(pid, exit, child) in &procs {
            let left = deadline.saturating_duration_since(Instant::now());
            if signal == libc::SIGKILL || !wait_for_exit(pid, exit, child, Some(left)) {
                kill_tree(pid, libc::SIGKILL);
                wait_for_exit(pid, exit, child, None);
            }
        }
        self.workers.clear();
        self.pending.clear();
    }
}

/// Map the segment that came with a result at once, so that no descriptor waits in
/// the event queue (results that queue up hold none).
pub(super) fn receive_segment(fd: Attached) -> Incoming {
    match fd {
        Attached::None => Incoming::None,
        Attached::Dropped => Incoming::Dropped,
        Attached::Fd(fd) => match Mapping::new(fd.as_fd()) {
            Ok(mapping) => Incoming::Mapped(mapping),
            Err(err) => Incoming::Unmappable(err),
        },
    }
}
