//! The manager's side of the template (`crate::template`), the process that forks
//! replacement workers: requests out, and what it reports back.
//!
//! ```text
//!  manager ── FORK (+ the new worker's socket) ──► template ── fork() ──► worker
//!  manager ◄─ FORKED(pid) ─────────────────────── template
//!  manager ◄─ EXITED(pid, exit status) ────────── template (it reaped the worker;
//!                                                  `wire::decode_exited`)
//! ```

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::spawn::{channel_pair, ChannelEnd};
use crate::wire::{empty_body, Kind, OutFrame};

/// How long a template may take to get ready. Workers asked of it meanwhile wait for
/// it (its requests wait in its socket): an exec'd worker would take as long as the
/// template to start, at the cost of a whole interpreter start-up each. A template
/// not ready by then is ended, and the pool goes on with exec'd workers.
pub const START_LIMIT: Duration = Duration::from_secs(10);

pub struct Template {
    /// It said it is ready to fork.
    pub ready: bool,
    /// Our ends of the sockets of workers asked for and not yet forked, in order.
    pub requested: VecDeque<ChannelEnd>,
    pub started: Instant,
    /// Not ready in time: ended, its exit yet to be seen.
    pub given_up: bool,
}

impl Template {
    pub fn new() -> Template {
        Template {
            ready: false,
            requested: VecDeque::new(),
            started: Instant::now(),
            given_up: false,
        }
    }

    /// When it is late to get ready (None: it is ready, or was given up on).
    pub fn start_deadline(&self) -> Option<Instant> {
        (!self.ready && !self.given_up).then_some(self.started + START_LIMIT)
    }

    /// The request for one more worker; its socket's other end travels with it.
    pub fn request(&mut self) -> io::Result<OutFrame> {
        let (ours, theirs) = channel_pair()?;
        self.requested.push_back(ours);
        Ok(OutFrame::new(0, Kind::Fork, empty_body()).with_fd(Arc::new(theirs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_is_late_only_while_it_starts() {
        let mut template = Template::new();
        assert_eq!(
            template.start_deadline(),
            Some(template.started + START_LIMIT)
        );
        template.given_up = true;
        assert_eq!(template.start_deadline(), None);
        let mut ready = Template::new();
        ready.ready = true;
        assert_eq!(ready.start_deadline(), None);
    }
}
