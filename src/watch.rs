//! Watching before sleeping. A process asleep in poll(2) takes this host ~35 µs to wake
//! (an interrupt to the other processor, then a context switch), paid by the waker and
//! the sleeper both. When what a thread waits for usually comes within a few µs, it is
//! cheaper, in time and in processor, to watch for it for a moment first.
//!
//! A watch is bounded by its window and follows the pace it sees: after a wait that
//! outlasted the window, the next wait sleeps at once; watching resumes after a wait
//! that ended within the window. A slow pace never makes a thread spin more than one
//! window in a row.
//!
//! Users: a worker's channel after each result it sends (`crate::channel`: the caller's
//! next task comes a few µs after the result), and the manager while results are due
//! (`crate::manager`: tiny tasks' results come every few µs).

use std::time::{Duration, Instant};

pub struct Watch {
    window: Duration,
    /// The last wait outlasted the window.
    slow: bool,
}

impl Watch {
    pub const fn new(window: Duration) -> Watch {
        Watch {
            window,
            slow: false,
        }
    }

    /// Wait for something, counted from `since`. `look(false)` looks without waiting,
    /// `look(true)` waits; `found` tells whether a look without waiting found
    /// something. Until `since + window`, looks without waiting (unless the last wait
    /// was slow), yielding the processor between looks; then waits.
    pub fn wait<T>(
        &mut self,
        since: Instant,
        mut look: impl FnMut(bool) -> T,
        found: impl Fn(&T) -> bool,
    ) -> T {
        let end = since + self.window;
        if !self.slow {
            while Instant::now() < end {
                let seen = look(false);
                if found(&seen) {
                    return seen;
                }
                // Another thread of this process, or a process waiting for this
                // processor, runs first.
                std::thread::yield_now();
            }
        }
        let woken = look(true);
        self.slow = Instant::now() >= end;
        woken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_watch_stops_after_a_slow_wait_and_resumes_after_a_quick_one() {
        // A long window, so that the quick cases stay quick on a busy machine.
        let window = Duration::from_secs(10);
        let mut watch = Watch::new(window);
        // Something is there at once: a look finds it, a wait returns at once.
        let looks = Cell::new(0);
        let look = |wait: bool| {
            if wait {
                "slept"
            } else {
                looks.set(looks.get() + 1);
                "seen"
            }
        };
        let found = |seen: &&str| *seen == "seen";
        let now = Instant::now();
        assert_eq!(watch.wait(now, look, found), "seen");
        // Counted from long ago: the window is over, no look; the wait was slow.
        let long_ago = now.checked_sub(window * 2).unwrap();
        looks.set(0);
        assert_eq!(watch.wait(long_ago, look, found), "slept");
        assert_eq!(looks.get(), 0);
        // After a slow wait: straight to sleep, though a look would find something.
        // That sleep ended within the window, so the next wait watches again.
        assert_eq!(watch.wait(Instant::now(), look, found), "slept");
        assert_eq!(looks.get(), 0);
        assert_eq!(watch.wait(Instant::now(), look, found), "seen");
        assert_eq!(looks.get(), 1);
    }

    #[test]
    fn a_watch_that_sees_nothing_sleeps_when_its_window_ends() {
        let mut watch = Watch::new(Duration::from_millis(2));
        let looks = Cell::new(0);
        let start = Instant::now();
        let woken = watch.wait(
            start,
            |wait| {
                looks.set(looks.get() + u32::from(!wait));
                wait.then(|| start.elapsed())
            },
            Option::is_some,
        );
        let woken = woken.unwrap();
        assert!(
            woken >= Duration::from_millis(2),
            "slept after the window: {woken:?}"
        );
        assert!(looks.get() >= 1);
    }
}
