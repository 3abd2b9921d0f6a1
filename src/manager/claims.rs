//! Claims: a thread blocked on one task's outcome has it handed over directly, instead
//! of waiting for the result thread to receive it, apply it and wake the waiter.
//!
//! ```text
//!  claimer              claim(id) ── Waiting ── wait(id) ──► release(id) -> the outcome
//!                          │                                   ──► applied(id)
//!                          │ (false: the outcome is with the result thread already)
//!  manager thread       offer(id, outcome): Waiting? -> Arrived, else -> result thread
//!  result thread        next batch: take_batch() hands claimed ones over, records the
//!                       rest as in its hands until the next batch_applied()
//!  cancel / close       wake(id) / close(): the claimer stops waiting, with nothing
//! ```
//!
//! Every outcome has one owner at a time: the manager, the result thread (from
//! `take_batch` until `batch_applied`), or a claimer (from `Arrived` until `applied`:
//! `arrived` names these, so the result thread, closing, leaves their futures alone).
//! A claimer that finds its outcome in the result thread's hands (or the pool closed)
//! gets `false` from `claim` and waits the standard way, on the future itself; one that
//! claims after the outcome was applied learns it from the future, which it looks at
//! after claiming (`claim` then look, against apply then `batch_applied`: one of the two
//! sees the other).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long a claimer watches for its outcome before it sleeps: a short task's outcome
/// often comes back sooner than a sleeping thread can be woken.
const SPIN: Duration = Duration::from_micros(50);

enum Slot<E> {
    Waiting,
    /// Nothing will arrive (the task was taken back); stop waiting.
    Woken,
    Arrived(E),
}

struct Inner<E> {
    slots: HashMap<u64, Slot<E>>,
    /// Tasks whose outcome the result thread received and is applying.
    in_hand: Vec<u64>,
    /// Tasks whose outcome a claimer took and is applying.
    applying: Vec<u64>,
    /// No outcome will arrive any more.
    closed: bool,
}

pub struct Claims<E> {
    inner: Mutex<Inner<E>>,
    changed: Condvar,
    /// Mirrors `slots.len()`, so `offer` takes the lock only when someone claims.
    count: AtomicUsize,
    /// Bumped on every change, for claimers that spin before they sleep.
    changes: AtomicU64,
}

impl<E> Default for Claims<E> {
    fn default() -> Self {
        Claims {
            inner: Mutex::new(Inner {
                slots: HashMap::new(),
                in_hand: Vec::new(),
                applying: Vec::new(),
                closed: false,
            }),
            changed: Condvar::new(),
            count: AtomicUsize::new(0),
            changes: AtomicU64::new(0),
        }
    }
}

impl<E> Claims<E> {
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Claim task `id`'s outcome. False if it cannot come this way (it is with the
    /// result thread, or the pool closed): wait on the future instead. After a true,
    /// look at the future, then `wait`, and always `release`.
    pub fn claim(&self, id: u64) -> bool {
        let mut inner = self.inner.lock();
        if inner.closed
            || inner.in_hand.contains(&id)
            || inner.applying.contains(&id)
            || inner.slots.contains_key(&id)
        {
            // Already claimed by another thread: that one takes the outcome.
            return false;
        }
        inner.slots.insert(id, Slot::Waiting);
        self.count.store(inner.slots.len(), Ordering::SeqCst);
        true
    }

    /// Wait up to `timeout` for claimed task `id` to need a look (its outcome arrived,
    /// it was woken, the pool closed). False if the time ran out first.
    pub fn wait(&self, id: u64, timeout: Duration) -> bool {
        let start = Instant::now();
        let seen = self.changes.load(Ordering::SeqCst);
        let spin_until = start + SPIN.min(timeout);
        while self.changes.load(Ordering::SeqCst) == seen && Instant::now() < spin_until {
            std::thread::yield_now();
        }
        let deadline = start + timeout;
        let mut inner = self.inner.lock();
        loop {
            let waiting = matches!(inner.slots.get(&id), Some(Slot::Waiting));
            if !waiting || inner.closed {
                return true;
            }
            if self.changed.wait_until(&mut inner, deadline).timed_out() {
                // One more look: the outcome may have come with the deadline.
                return !matches!(inner.slots.get(&id), Some(Slot::Waiting)) || inner.closed;
            }
        }
    }

    /// End the claim on `id`; the outcome, if it arrived, is the caller's to apply,
    /// and then to report `applied`.
    pub fn release(&self, id: u64) -> Option<E> {
        let mut inner = self.inner.lock();
        let slot = inner.slots.remove(&id);
        self.count.store(inner.slots.len(), Ordering::SeqCst);
        match slot {
            Some(Slot::Arrived(outcome)) => {
                inner.applying.push(id);
                Some(outcome)
            }
            _ => None,
        }
    }

    /// The outcome `release` gave for `id` is applied.
    pub fn applied(&self, id: u64) {
        self.inner.lock().applying.retain(|&i| i != id);
    }

    /// Manager side: hand `outcome` to the thread waiting for task `id`; gives it back
    /// if nobody claims it.
    pub fn offer(&self, id: u64, outcome: E) -> Option<E> {
        if self.count.load(Ordering::SeqCst) == 0 {
            return Some(outcome);
        }
        let mut inner = self.inner.lock();
        match inner.slots.get_mut(&id) {
            Some(slot @ Slot::Waiting) => {
                *slot = Slot::Arrived(outcome);
                self.changed();
                None
            }
            _ => Some(outcome),
        }
    }

    /// Result thread, before it waits for its next batch: the last one is applied.
    pub fn batch_applied(&self) {
        let mut inner = self.inner.lock();
        inner.in_hand.clear();
    }

    /// Result thread, with a new batch of (task id or None, outcome): hands claimed
    /// outcomes to their claimers and returns the rest, now in the thread's hands.
    pub fn take_batch(&self, batch: Vec<(Option<u64>, E)>) -> Vec<E> {
        let mut inner = self.inner.lock();
        let mut kept = Vec::with_capacity(batch.len());
        let mut handed = false;
        for (id, outcome) in batch {
            let Some(id) = id else {
                kept.push(outcome);
                continue;
            };
            match inner.slots.get_mut(&id) {
                Some(slot @ Slot::Waiting) => {
                    *slot = Slot::Arrived(outcome);
                    handed = true;
                }
                _ => {
                    inner.in_hand.push(id);
                    kept.push(outcome);
                }
            }
        }
        if handed {
            self.changed();
        }
        kept
    }

    /// Stop the wait on `id`: no outcome will come (the task was taken back).
    pub fn wake(&self, id: u64) {
        let mut inner = self.inner.lock();
        if let Some(slot @ Slot::Waiting) = inner.slots.get_mut(&id) {
            *slot = Slot::Woken;
            self.changed();
        }
    }

    /// No outcome will arrive any more: end every wait.
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.changed();
    }

    /// Tasks whose outcome is a claimer's: waiting for it to take it, or being applied.
    pub fn arrived(&self) -> Vec<u64> {
        let inner = self.inner.lock();
        inner
            .slots
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Arrived(_)))
            .map(|(&id, _)| id)
            .chain(inner.applying.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn an_outcome_offered_to_a_claimer_reaches_it() {
        let claims = Arc::new(Claims::default());
        assert!(claims.claim(7));
        let waiter = {
            let claims = claims.clone();
            std::thread::spawn(move || {
                assert!(claims.wait(7, LONG));
                claims.release(7)
            })
        };
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(claims.offer(7, "seven"), None);
        assert_eq!(waiter.join().unwrap(), Some("seven"));
        assert_eq!(claims.offer(7, "again"), Some("again"), "released");
    }

    #[test]
    fn an_outcome_stays_the_claimers_until_applied() {
        let claims = Claims::default();
        assert!(claims.claim(5));
        assert_eq!(claims.offer(5, "five"), None);
        assert_eq!(claims.arrived(), vec![5]);
        assert_eq!(claims.release(5), Some("five"));
        assert_eq!(claims.arrived(), vec![5], "released, not yet applied");
        assert!(!claims.claim(5), "being applied: wait on the future");
        claims.applied(5);
        assert!(claims.arrived().is_empty());
    }

    #[test]
    fn unclaimed_outcomes_go_back_and_are_then_in_the_result_threads_hands() {
        let claims = Claims::default();
        assert_eq!(claims.offer(1, 'a'), Some('a'));
        let kept = claims.take_batch(vec![(Some(1), 'a'), (None, 'x')]);
        assert_eq!(kept, vec!['a', 'x']);
        assert!(!claims.claim(1), "being applied: wait on the future");
        claims.batch_applied();
        assert!(claims.claim(1), "applied: the claimer looks at the future");
        claims.release(1);
    }

    #[test]
    fn the_result_thread_hands_over_what_was_claimed_while_it_was_queued() {
        let claims = Claims::default();
        assert_eq!(claims.offer(3, 30), Some(30)); // on its way to the result thread
        assert!(claims.claim(3));
        assert_eq!(
            claims.take_batch(vec![(Some(3), 30), (Some(4), 40)]),
            vec![40]
        );
        assert!(claims.wait(3, Duration::ZERO));
        assert_eq!(claims.release(3), Some(30));
    }

    #[test]
    fn wake_and_close_end_waits_without_an_outcome() {
        let claims = Arc::new(Claims::<u8>::default());
        assert!(claims.claim(1) && claims.claim(2));
        let waiters: Vec<_> = [1, 2]
            .into_iter()
            .map(|id| {
                let claims = claims.clone();
                std::thread::spawn(move || (claims.wait(id, LONG), claims.release(id)))
            })
            .collect();
        claims.wake(1);
        claims.close();
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), (true, None));
        }
        assert!(!claims.claim(3), "closed");
    }

    #[test]
    fn a_second_claimer_of_one_task_waits_the_standard_way() {
        let claims = Claims::default();
        assert!(claims.claim(9));
        assert!(!claims.claim(9));
        assert_eq!(claims.offer(9, 'x'), None);
        assert!(
            !claims.claim(9),
            "the arrived outcome stays the first claimer's"
        );
        assert_eq!(claims.release(9), Some('x'));
    }

    #[test]
    fn a_wait_that_times_out_says_so_and_the_claim_ends_cleanly() {
        let claims = Claims::<u8>::default();
        assert!(claims.claim(5));
        assert!(!claims.wait(5, Duration::from_millis(20)));
        assert_eq!(claims.release(5), None);
        assert_eq!(claims.offer(5, 1), Some(1));
    }

    #[test]
    fn every_outcome_reaches_exactly_one_owner_under_contention() {
        // Producer and result thread race claimers over many tasks: each outcome ends
        // with a claimer or with the result thread, never both, never neither.
        let claims = Arc::new(Claims::default());
        const N: u64 = 2000;
        let (to_results, from_manager) = crossbeam_channel::unbounded::<(u64, u64)>();
        let manager = {
            let claims = claims.clone();
            std::thread::spawn(move || {
                for id in 0..N {
                    if let Some(outcome) = claims.offer(id, id) {
                        to_results.send((id, outcome)).unwrap();
                    }
                }
            })
        };
        let results = {
            let claims = claims.clone();
            std::thread::spawn(move || {
                let mut applied = Vec::new();
                while let Ok(first) = from_manager.recv() {
                    claims.batch_applied();
                    let mut batch = vec![(Some(first.0), first.1)];
                    batch.extend(from_manager.try_iter().map(|(id, o)| (Some(id), o)));
                    applied.extend(claims.take_batch(batch));
                }
                claims.batch_applied();
                applied
            })
        };
        let claimed: Vec<_> = (0..2)
            .map(|parity| {
                let claims = claims.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for id in (parity..N).step_by(2) {
                        if claims.claim(id) {
                            claims.wait(id, Duration::from_micros(200));
                            got.extend(claims.release(id));
                        }
                    }
                    got
                })
            })
            .collect();
        manager.join().unwrap();
        let mut all: Vec<u64> = claimed
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.extend(results.join().unwrap());
        all.sort_unstable();
        assert_eq!(all, (0..N).collect::<Vec<_>>());
    }
}
