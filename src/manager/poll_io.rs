//! The manager thread's I/O, addressed by token: each worker's channel and exit, the
//! template's, and the wake-up. Only system calls live here; what the frames and exits
//! mean is the event loop's.
//!
//! ```text
//!  wait(): poll(2) on the wake-up fd, every open channel (and POLLOUT while frames
//!          are queued for it), every exit watch (pidfd)
//!     ─► Frames { token, frames, closed }   channels first: results written just
//!     ─► Exited { token, status }           before an exit come before it
//!  queue(token, frame) ─► flush(): written without blocking, the rest when writable
//! ```
//!
//! Where no pidfd reports an exit, exits are looked for every `EXIT_POLL`. A worker
//! forked by the template is the template's child: its exit comes from the template,
//! not from here.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::policy;
use super::worker::WorkerId;
use crate::platform::{try_reap, wait_for_exit, ExitStatus, ExitWatch, Waker, EXIT_POLL};
use crate::procfs::{kill_tree, kill_trees};
use crate::spawn::Spawned;
use crate::sys::{poll, pollfd};
use crate::watch::Watch;
use crate::wire::{empty_body, Frame, FrameReader, FrameWriter, Kind, OutFrame};

/// What the manager does I/O with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Token {
    Worker(WorkerId),
    Template,
}

/// What a wait found.
pub enum IoEvent {
    /// Frames read from `token`'s channel, in order; `corrupt`: the peer broke the
    /// framing (nothing more is read). A channel that ended is left alone: the exit of
    /// its process follows.
    Frames {
        token: Token,
        frames: Vec<Frame>,
        corrupt: Option<String>,
    },
    /// The process exited and was reaped.
    Exited { token: Token, status: ExitStatus },
}

struct Endpoint {
    pid: i32,
    exit: ExitWatch,
    channel: OwnedFd,
    reader: FrameReader,
    writer: FrameWriter,
    /// Nothing more can be read or written.
    closed: bool,
    /// Its exit is seen here (not reported by the template).
    ours: bool,
}

pub struct ManagerIo {
    wake: Arc<Waker>,
    endpoints: HashMap<Token, Endpoint>,
}

impl ManagerIo {
    pub fn new(wake: Arc<Waker>) -> ManagerIo {
        ManagerIo {
            wake,
            endpoints: HashMap::new(),
        }
    }

    /// Watch a started process and its channel; `ours`: its exit is seen here.
    pub fn add(&mut self, token: Token, spawned: Spawned, ours: bool) {
        let endpoint = Endpoint {
            pid: spawned.pid,
            exit: spawned.exit,
            channel: spawned.channel,
            reader: FrameReader::default(),
            writer: FrameWriter::default(),
            closed: false,
            ours,
        };
        self.endpoints.insert(token, endpoint);
    }

    /// Forget a process that exited: its channel and exit watch are closed.
    pub fn remove(&mut self, token: Token) {
        self.endpoints.remove(&token);
    }

    pub fn queue(&mut self, token: Token, frame: OutFrame) {
        if let Some(endpoint) = self.endpoints.get_mut(&token) {
            endpoint.writer.push(frame);
        }
    }

    /// Whether nothing is queued for `token` and its channel is open: a direct send
    /// may write there.
    pub fn writable_now(&self, token: Token) -> Option<RawFd> {
        let endpoint = self.endpoints.get(&token)?;
        (!endpoint.closed && endpoint.writer.is_empty()).then(|| endpoint.channel.as_raw_fd())
    }

    /// Tell the process to leave once it has answered what was sent before (EXIT).
    pub fn ask_to_leave(&mut self, token: Token) {
        self.queue(token, OutFrame::new(0, Kind::Exit, empty_body()));
    }

    /// Write what is queued, without blocking. A channel that fails is closed; the
    /// exit of its process is handled when it is seen.
    pub fn flush(&mut self) {
        for endpoint in self.endpoints.values_mut() {
            if endpoint.closed || endpoint.writer.is_empty() {
                continue;
            }
            if endpoint.writer.flush(endpoint.channel.as_raw_fd()).is_err() {
                endpoint.closed = true;
            }
        }
    }

    /// Since when the frame `token` began to send stalls, if one does.
    pub fn stalled_since(&self, token: Token) -> Option<Instant> {
        let endpoint = self.endpoints.get(&token)?;
        if endpoint.closed {
            return None;
        }
        endpoint.reader.stalled_since()
    }

    /// Send `signal` to the process of `token` and everything it started.
    pub fn kill(&self, token: Token, signal: libc::c_int) {
        if let Some(endpoint) = self.endpoints.get(&token) {
            kill_tree(endpoint.pid, signal);
        }
    }

    /// SIGINT to the process group `token` leads (Ctrl-C for its task).
    pub fn interrupt(&self, token: Token) {
        if let Some(endpoint) = self.endpoints.get(&token) {
            // SAFETY: a signal to the group our worker leads.
            unsafe { libc::killpg(endpoint.pid, libc::SIGINT) };
        }
    }

    /// Read what `token`'s channel holds now (before handling an exit the template
    /// reported: results written just before it come first).
    pub fn read(&mut self, token: Token) -> Option<IoEvent> {
        let endpoint = self.endpoints.get_mut(&token)?;
        read_endpoint(token, endpoint)
    }

    /// Wait for I/O (up to `timeout`; watching first when `watch` is given, see
    /// `crate::watch`), then do it: the frames read and the exits seen, in order.
    pub fn wait(&mut self, timeout: Option<Duration>, watch: Option<&mut Watch>) -> Vec<IoEvent> {
        let mut tokens = Vec::with_capacity(self.endpoints.len());
        let mut fds = vec![pollfd(self.wake.fd(), libc::POLLIN)];
        let mut polled_exits = false;
        for (&token, endpoint) in &self.endpoints {
            let exit = if endpoint.ours {
                endpoint.exit.poll_fd()
            } else {
                -1
            };
            polled_exits |= endpoint.ours && endpoint.exit.needs_polling();
            let channel = if endpoint.closed {
                -1
            } else {
                endpoint.channel.as_raw_fd()
            };
            let events = if endpoint.writer.is_empty() {
                libc::POLLIN
            } else {
                libc::POLLIN | libc::POLLOUT
            };
            tokens.push(token);
            fds.push(pollfd(exit, libc::POLLIN));
            fds.push(pollfd(channel, events));
        }
        let timeout = if polled_exits {
            Some(timeout.map_or(EXIT_POLL, |t| t.min(EXIT_POLL)))
        } else {
            timeout
        };
        let ready = match watch {
            Some(watch) => watch.wait(
                Instant::now(),
                |wait| poll(&mut fds, if wait { timeout } else { Some(Duration::ZERO) }),
                |seen| !matches!(seen, Ok(0)),
            ),
            None => poll(&mut fds, timeout),
        };
        if ready.is_err() {
            return Vec::new(); // EINTR: the loop looks at everything again
        }
        if fds[0].revents != 0 {
            self.wake.drain();
        }
        let mut events = Vec::new();
        let mut maybe_exited = Vec::new();
        for (token, pair) in tokens.iter().zip(fds[1..].chunks(2)) {
            let (exit, channel) = (pair[0], pair[1]);
            let Some(endpoint) = self.endpoints.get_mut(token) else {
                continue;
            };
            let readable = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
            if channel.revents & readable != 0 || exit.revents != 0 {
                events.extend(read_endpoint(*token, endpoint));
            }
            if exit.revents != 0 || (endpoint.ours && endpoint.exit.needs_polling()) {
                maybe_exited.push(*token);
            }
        }
        for token in maybe_exited {
            let Some(endpoint) = self.endpoints.get_mut(&token) else {
                continue;
            };
            if let Some(status) = try_reap(endpoint.pid, &endpoint.exit) {
                events.extend(read_endpoint(token, endpoint)); // written just before
                events.push(IoEvent::Exited { token, status });
            }
        }
        events
    }

    /// End every process (with its tree): `signal` now, then SIGKILL for any still
    /// alive after the grace period (at once if `signal` is SIGKILL); wait for them all.
    pub fn end_all(&mut self, signal: libc::c_int) {
        let endpoints: Vec<Endpoint> = self.endpoints.drain().map(|(_, e)| e).collect();
        let pids: Vec<i32> = endpoints.iter().map(|e| e.pid).collect();
        kill_trees(&pids, signal);
        // SIGKILL ends them at once (a group's members cannot fork past it): wait.
        let grace = (signal != libc::SIGKILL).then_some(policy::END_GRACE);
        let deadline = grace.map(|g| Instant::now() + g);
        let stragglers: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                !wait_for_exit(e.pid, &e.exit, e.ours, left)
            })
            .collect();
        if !stragglers.is_empty() {
            kill_trees(
                &stragglers.iter().map(|e| e.pid).collect::<Vec<_>>(),
                libc::SIGKILL,
            );
            for e in stragglers {
                wait_for_exit(e.pid, &e.exit, e.ours, None);
            }
        }
    }

    /// Let `token`'s process (our child) exit by itself within `grace` once its
    /// channel is closed, else kill it; reap it.
    pub fn close_and_reap(&mut self, token: Token, grace: Duration) {
        let Some(endpoint) = self.endpoints.remove(&token) else {
            return;
        };
        // shutdown(2), not just close: a process forked from ours may hold a copy.
        // SAFETY: plain shutdown(2) on a socket we own.
        unsafe { libc::shutdown(endpoint.channel.as_raw_fd(), libc::SHUT_RDWR) };
        if !wait_for_exit(endpoint.pid, &endpoint.exit, true, Some(grace)) {
            kill_tree(endpoint.pid, libc::SIGKILL);
            wait_for_exit(endpoint.pid, &endpoint.exit, true, None);
        }
    }
}

fn read_endpoint(token: Token, endpoint: &mut Endpoint) -> Option<IoEvent> {
    if endpoint.closed {
        return None;
    }
    let outcome = endpoint.reader.read_available(endpoint.channel.as_raw_fd());
    if outcome.closed {
        endpoint.closed = true;
    }
    Some(IoEvent::Frames {
        token,
        frames: outcome.frames,
        corrupt: outcome.corrupt,
    })
}
