//! Scheduling policy: pure decisions over plain numbers, so each is unit-tested alone.
//! The event loop gathers the numbers, asks here, and does the I/O.

use std::time::{Duration, Instant};

use super::tasks::{AttemptEnd, EndCause, Retry};

/// Tasks faster than this are sent to a worker in batches when many are queued.
pub const BATCH_BELOW: Duration = Duration::from_millis(1);
pub const MAX_BATCH: usize = 64;
/// How long a worker asked to end (SIGTERM) may take before it is killed (SIGKILL).
pub const END_GRACE: Duration = Duration::from_secs(1);

/// How the manager ends a worker and everything it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Asked to end (SIGTERM on POSIX); killed if it is still there after `END_GRACE`.
    /// (Windows has no such request for a process without a window: it is killed.)
    Term,
    /// Killed now (SIGKILL on POSIX, its Job object terminated on Windows).
    Kill,
}
/// How often the memory of workers running a task is looked at, when the pool has a
/// memory limit (reading a process's resident size costs a few µs).
pub const MEMORY_WATCH: Duration = Duration::from_millis(25);

/// Whether a worker holding `rss` bytes while it runs a task is past `limit` by the
/// margin that ends it at once (half the limit again: between tasks, the worker
/// itself leaves once past the limit).
pub fn over_memory_limit(rss: u64, limit: u64) -> bool {
    rss > limit.saturating_add(limit / 2)
}

/// How long a message a worker began may stay incomplete with nothing more of it
/// coming before the worker is killed: its own messages are written whole, so only a
/// task's stray write (a header and no body) stalls one.
pub const FRAME_STALL: Duration = Duration::from_secs(10);

/// Why a worker leaves the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// Idle for longer than the executor's timeout.
    IdleTimeout,
    /// Ran `max_tasks_per_child` tasks.
    TaskLimit,
    /// Its memory grew past the limit (it said so itself).
    MemoryGrowth,
    /// The pool was resized down.
    Shrink,
    /// The executor shut down.
    Shutdown,
    /// It died by itself (crash, signal, os._exit).
    Died,
    /// The manager killed it: it broke the channel protocol.
    Killed,
    /// Its task ran past its timeout: it was ended with its process tree.
    TaskTimeout,
    /// Its task was terminated (`Future.terminate()`): ended with its process tree.
    TaskTerminated,
    /// Its memory passed the pool's limit: after a task it said so itself; while
    /// running one, it was ended at once.
    MemoryLimit,
}

impl ExitReason {
    /// A replacement is owed at once, even with no work queued: the worker left
    /// unplanned. A recycled one is replaced when work comes, like any missing worker.
    pub fn owes_replacement(self) -> bool {
        matches!(
            self,
            ExitReason::Died
                | ExitReason::Killed
                | ExitReason::TaskTimeout
                | ExitReason::TaskTerminated
                | ExitReason::MemoryLimit
        )
    }
}

/// How many tasks a ready worker may hold at once. One, unless tasks have been short and
/// the queue is long: then a share of the queue, small enough that every worker still
/// gets work and a slow task strands little behind it.
pub fn batch_limit(pending: usize, ready: usize, service_time: Option<Duration>) -> usize {
    let ready = ready.max(1);
    match service_time {
        Some(t) if t < BATCH_BELOW && pending >= 4 * ready => {
            (pending / (2 * ready)).clamp(1, MAX_BATCH)
        }
        _ => 1,
    }
}

/// Moving average of how long a task keeps a worker busy.
pub fn update_service_time(average: Option<Duration>, spent: Duration) -> Duration {
    match average {
        Some(avg) => (avg * 7 + spent) / 8,
        None => spent,
    }
}

/// One ready worker as dispatch sees it.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Tasks it holds.
    pub inflight: usize,
    /// Tasks it may still be sent (its `max_tasks_per_child` budget), if limited.
    pub budget_left: Option<u64>,
}

/// How many tasks to send each ready worker, in the order to send them: least loaded
/// first, each up to `limit` held, within its budget, `pending` in all.
pub fn dispatch_plan(loads: &[Load], pending: usize, limit: usize) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..loads.len()).collect();
    order.sort_by_key(|&i| loads[i].inflight);
    let mut left = pending;
    let mut plan = Vec::new();
    for i in order {
        if left == 0 {
            break;
        }
        let room = limit.saturating_sub(loads[i].inflight);
        let budget = loads[i].budget_left.map_or(usize::MAX, |b| b as usize);
        let n = room.min(budget).min(left);
        if n > 0 {
            plan.push((i, n));
            left -= n;
        }
    }
    plan
}

/// How many workers to start: up to the target while there is work; otherwise only the
/// starts owed (the first workers, replacements for crashes), and none while shutting
/// down.
pub fn workers_to_start(
    pending: usize,
    live: usize,
    target: usize,
    owed: usize,
    shutting_down: bool,
) -> usize {
    let room = target.saturating_sub(live);
    if pending > 0 {
        room
    } else if shutting_down {
        0
    } else {
        owed.min(room)
    }
}

/// Which of the live workers (given as "busy?" flags) to retire when the pool shrinks
/// by `count`: idle ones first, asked to exit now (true); then busy ones, which finish
/// what they hold first (false).
pub fn shrink_choice(busy: &[bool], count: usize) -> Vec<(usize, bool)> {
    let idle = (0..busy.len()).filter(|&i| !busy[i]).map(|i| (i, true));
    let working = (0..busy.len()).filter(|&i| busy[i]).map(|i| (i, false));
    idle.chain(working).take(count).collect()
}

/// Whether an idle ready worker should leave now, and why.
pub fn idle_exit(
    idle_for: Duration,
    idle_timeout: Option<Duration>,
    shutting_down: bool,
    nothing_pending: bool,
) -> Option<ExitReason> {
    if shutting_down && nothing_pending {
        Some(ExitReason::Shutdown)
    } else if idle_timeout.is_some_and(|t| idle_for >= t) {
        Some(ExitReason::IdleTimeout)
    } else {
        None
    }
}

/// How long to sleep until the earliest of `deadlines` (None: no deadline, sleep until
/// woken).
pub fn time_to_next(now: Instant, deadlines: impl Iterator<Item = Instant>) -> Option<Duration> {
    deadlines.min().map(|d| d.saturating_duration_since(now))
}

/// A worker's batch may hold only tasks without a time limit: a task with one must
/// start when its worker takes it (its time counts from its start), and one stuck
/// behind it would wait for the whole limit.
pub fn may_batch(has_timeout: bool) -> bool {
    !has_timeout
}

/// Whether a task whose worker ended under it (`end`) runs again, after `attempts`
/// earlier runs that ended so: a death (crash, signal, a kill for memory) while retries
/// are left; a run past its time limit only if asked; a terminated task never.
pub fn may_retry(attempts: usize, retry: Retry, end: &AttemptEnd) -> bool {
    let allowed = match end {
        AttemptEnd::Died(..) | AttemptEnd::Ended(EndCause::MemoryLimit) => true,
        AttemptEnd::Ended(EndCause::Timeout) => retry.on_timeout,
        AttemptEnd::Ended(EndCause::Terminated) => false,
    };
    allowed && attempts < retry.times as usize
}

/// Whether a task submitted now would leave at once: an idle worker, or room to start
/// one. Only then is waking the manager for it worth a context switch.
pub fn has_room(live: usize, target: usize, broken: bool, idle_ready: bool) -> bool {
    (live < target && !broken) || idle_ready
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn batches_only_for_short_tasks_and_long_queues() {
        assert_eq!(batch_limit(100, 2, None), 1, "nothing known yet");
        assert_eq!(batch_limit(100, 2, Some(2 * MS)), 1, "slow tasks");
        assert_eq!(batch_limit(7, 2, Some(MS / 10)), 1, "short queue");
        assert_eq!(batch_limit(100, 2, Some(MS / 10)), 25);
        assert_eq!(batch_limit(100_000, 2, Some(MS / 10)), MAX_BATCH);
        assert_eq!(
            batch_limit(100, 0, Some(MS / 10)),
            50,
            "no ready worker counts as one"
        );
    }

    #[test]
    fn service_time_is_a_moving_average() {
        assert_eq!(update_service_time(None, 8 * MS), 8 * MS);
        assert_eq!(update_service_time(Some(8 * MS), 16 * MS), 9 * MS);
    }

    #[test]
    fn dispatch_fills_the_least_loaded_first_within_limits_and_budgets() {
        let loads = [
            Load {
                inflight: 2,
                budget_left: None,
            },
            Load {
                inflight: 0,
                budget_left: Some(1),
            },
            Load {
                inflight: 1,
                budget_left: None,
            },
        ];
        assert_eq!(dispatch_plan(&loads, 10, 3), vec![(1, 1), (2, 2), (0, 1)]);
        assert_eq!(dispatch_plan(&loads, 2, 3), vec![(1, 1), (2, 1)]);
        assert_eq!(dispatch_plan(&loads, 10, 1), vec![(1, 1)]);
        assert!(dispatch_plan(&loads, 0, 3).is_empty());
    }

    #[test]
    fn workers_start_for_work_or_owed_replacements_only() {
        assert_eq!(workers_to_start(5, 1, 4, 0, false), 3);
        assert_eq!(workers_to_start(0, 1, 4, 0, false), 0, "no work: lazy");
        assert_eq!(
            workers_to_start(0, 1, 4, 1, false),
            1,
            "a crashed worker is replaced"
        );
        assert_eq!(
            workers_to_start(0, 3, 4, 5, false),
            1,
            "never past the target"
        );
        assert_eq!(workers_to_start(0, 1, 4, 2, true), 0, "shutting down");
        assert_eq!(
            workers_to_start(3, 1, 4, 0, true),
            3,
            "queued work still runs"
        );
        assert_eq!(workers_to_start(3, 5, 4, 0, false), 0);
    }

    #[test]
    fn shrinking_retires_idle_workers_first() {
        assert_eq!(
            shrink_choice(&[true, false, true, false], 3),
            vec![(1, true), (3, true), (0, false)]
        );
        assert_eq!(shrink_choice(&[true], 0), vec![]);
    }

    #[test]
    fn idle_workers_leave_on_timeout_or_at_shutdown() {
        let t = Some(100 * MS);
        assert_eq!(idle_exit(50 * MS, t, false, true), None);
        assert_eq!(
            idle_exit(100 * MS, t, false, true),
            Some(ExitReason::IdleTimeout)
        );
        assert_eq!(
            idle_exit(Duration::ZERO, None, true, true),
            Some(ExitReason::Shutdown)
        );
        assert_eq!(
            idle_exit(Duration::ZERO, None, true, false),
            None,
            "queued work first"
        );
    }

    #[test]
    fn room_means_an_idle_worker_or_one_to_start() {
        assert!(has_room(1, 2, false, false));
        assert!(!has_room(2, 2, false, false));
        assert!(has_room(2, 2, false, true));
        assert!(!has_room(1, 2, true, false), "a broken pool starts nothing");
    }

    #[test]
    fn the_next_wakeup_is_the_earliest_deadline() {
        let now = Instant::now();
        let later = [now + 5 * MS, now + 2 * MS, now + 9 * MS];
        assert_eq!(time_to_next(now, later.into_iter()), Some(2 * MS));
        assert_eq!(
            time_to_next(now, [now - MS].into_iter()),
            Some(Duration::ZERO)
        );
        assert_eq!(time_to_next(now, std::iter::empty()), None);
    }

    #[test]
    fn retries_follow_deaths_and_timeouts_only_when_asked() {
        let twice = Retry {
            times: 2,
            on_timeout: false,
        };
        let died = AttemptEnd::Died(None, String::new());
        assert!(may_retry(0, twice, &died));
        assert!(may_retry(1, twice, &died));
        assert!(!may_retry(2, twice, &died), "retries spent");
        assert!(may_retry(
            0,
            twice,
            &AttemptEnd::Ended(EndCause::MemoryLimit)
        ));
        assert!(!may_retry(0, twice, &AttemptEnd::Ended(EndCause::Timeout)));
        let with_timeouts = Retry {
            on_timeout: true,
            ..twice
        };
        assert!(may_retry(
            0,
            with_timeouts,
            &AttemptEnd::Ended(EndCause::Timeout)
        ));
        assert!(!may_retry(
            0,
            with_timeouts,
            &AttemptEnd::Ended(EndCause::Terminated)
        ));
        assert!(!may_retry(0, Retry::default(), &died));
    }

    #[test]
    fn a_running_task_may_take_half_the_memory_limit_again() {
        assert!(!over_memory_limit(150, 100));
        assert!(over_memory_limit(151, 100));
        assert!(!over_memory_limit(u64::MAX, u64::MAX), "no overflow");
    }

    #[test]
    fn tasks_with_a_time_limit_are_never_batched() {
        assert!(may_batch(false));
        assert!(!may_batch(true));
    }

    #[test]
    fn only_unplanned_exits_owe_a_replacement() {
        assert!(ExitReason::Died.owes_replacement());
        assert!(ExitReason::Killed.owes_replacement());
        assert!(ExitReason::TaskTimeout.owes_replacement());
        assert!(ExitReason::TaskTerminated.owes_replacement());
        assert!(!ExitReason::MemoryGrowth.owes_replacement());
        assert!(!ExitReason::IdleTimeout.owes_replacement());
        assert!(!ExitReason::Shrink.owes_replacement());
    }
}
