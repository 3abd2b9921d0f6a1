"""Issue 3: randomized fault injection.

Many rounds of mixed tasks (ok, raise, segfault, os._exit, SIGKILL, sys.exit,
unpicklable argument, unpicklable result, payloads failing to unpickle on either side,
slow) are spread over several executors, some of which are shut down (killing their
workers, or not) and replaced along the way. Every future must complete with the outcome
its task calls for, within a bound, and no process may survive.

    LOKY_FAULT_ROUNDS=500 pytest tests/test_fault_injection.py    # a longer run
    LOKY_FAULT_SEED=1234 pytest tests/test_fault_injection.py     # replay a failure
"""

import concurrent.futures
import gc
import os
import pickle
import random
import signal
import sys
import threading

import psutil
import pytest

from loky import ProcessPoolExecutor
from loky.process_executor import (
    BrokenProcessPool,
    ShutdownExecutorError,
    TerminatedWorkerError,
    _RemoteTraceback,
)

import helpers

# The default size takes about 25 s on a 2-CPU machine (300 rounds: about 65 s).
ROUNDS = int(os.environ.get("LOKY_FAULT_ROUNDS", "100"))
SEED = int(os.environ.get("LOKY_FAULT_SEED", str(random.SystemRandom().randrange(1 << 32))))
# Longest a round may take; a round is at most ~40 tasks of at most 0.2 s each.
ROUND_BOUND = 60.0

# kind -> relative weight
KINDS = {
    "ok": 30,
    "slow": 8,
    "raise": 8,
    "sys_exit": 3,
    "segfault": 4,
    "exit": 4,
    # (POSIX: a worker ending itself with a signal.)
    **({} if sys.platform == "win32" else {"sigkill": 2}),
    "unpicklable_arg": 4,
    "unpicklable_result": 4,
    "task_unpickle": 3,
    "result_unpickle": 3,
    "big_arg": 3,
    "big_result": 3,
}


def make_task(kind, i, rng):
    """Return (fn, args, check), where check(future) asserts the expected outcome."""
    if kind == "ok":
        return helpers.square, (i,), expect_value(i * i)
    if kind == "slow":
        return helpers.sleep_and_return, (rng.uniform(0.01, 0.2), i), expect_value(i)
    if kind == "raise":
        return helpers.raise_value_error, (f"task {i}",), expect_raise(i)
    if kind == "sys_exit":
        return helpers.call_sys_exit, (i,), expect_sys_exit(i)
    if kind == "segfault":
        return helpers.segfault, (), expect_terminated(helpers.SEGFAULT_STATUS)
    if kind == "exit":
        code = rng.randrange(1, 100)
        return helpers.exit_with, (code,), expect_terminated(f"{{EXIT({code})}}")
    if kind == "sigkill":
        return helpers.kill_self, (helpers.KILL_SIGNAL,), expect_terminated("{SIGKILL(-9)}")
    if kind == "unpicklable_arg":
        return helpers.takes_anything, (helpers.Unpicklable(),), expect_pickling_error
    if kind == "unpicklable_result":
        return helpers.return_unpicklable, (), expect_unpicklable_result
    if kind == "task_unpickle":
        return (
            helpers.takes_anything,
            (helpers.FailsOnLoad(f"arg {i}"),),
            expect_broken("A task has failed to un-serialize", f"arg {i}"),
        )
    if kind == "result_unpickle":
        return (
            helpers.return_fails_on_load,
            (f"result {i}",),
            expect_broken("A result has failed to un-serialize", f"result {i}"),
        )
    if kind in ("big_arg", "big_result"):
        # Large buffers take the shared-memory path, with a descriptor per frame.
        size = rng.randrange(1 << 17, 4 << 20)
        probes = sorted({0, rng.randrange(size), size - 1})
        markers = bytes(helpers.marker(k) for k in range(len(probes)))
        if kind == "big_arg":
            data = helpers.make_payload(size, probes)
            return helpers.payload_summary, (data, probes), expect_value((size, markers))
        return helpers.make_payload, (size, probes), expect_payload(size, probes, markers)
    raise AssertionError(kind)


def expect_value(value):
    def check(future):
        assert future.exception() is None, repr(future.exception())
        assert future.result() == value

    return check


def expect_payload(size, probes, markers):
    def check(future):
        assert future.exception() is None, repr(future.exception())
        data = future.result()
        assert len(data) == size
        assert bytes(data[p] for p in probes) == markers

    return check


def expect_raise(i):
    def check(future):
        exc = future.exception()
        assert type(exc) is ValueError and str(exc) == f"task {i}", repr(exc)
        assert isinstance(exc.__cause__, _RemoteTraceback)
        assert "raise_value_error" in str(exc.__cause__)

    return check


def expect_sys_exit(code):
    def check(future):
        exc = future.exception()
        assert type(exc) is SystemExit and exc.code == code, repr(exc)

    return check


def expect_terminated(status):
    def check(future):
        exc = future.exception()
        assert type(exc) is TerminatedWorkerError, repr(exc)
        assert status in str(exc), str(exc)

    return check


def expect_pickling_error(future):
    exc = future.exception()
    assert type(exc) is pickle.PicklingError, repr(exc)
    assert str(exc) == "Could not pickle the task to send it to the workers."
    assert isinstance(exc.__cause__, helpers.UnpicklableError)


def expect_unpicklable_result(future):
    exc = future.exception()
    assert isinstance(exc, (TypeError, pickle.PicklingError)), repr(exc)
    assert "pickle" in str(exc)
    assert isinstance(exc.__cause__, _RemoteTraceback)


def expect_broken(message, original):
    def check(future):
        exc = future.exception()
        assert type(exc) is BrokenProcessPool, repr(exc)
        assert message in str(exc)
        cause = exc.__cause__
        assert cause is not None and original in str(cause), repr(cause)

    return check


def submit_with_event(plan, event, rng):
    """Submit `plan` in order; at a random point, shut down one executor and replace
    it. Returns the (executor, kind, future, check) list and the ids of killed ones."""
    tasks, killed = [], set()
    event_at = rng.randrange(len(plan)) if event != "none" else -1
    for i, (slot, kind, fn, args, check) in enumerate(plan):
        if i == event_at:
            victim = rng.choice(plan)[0]
            if event == "kill":
                victim.executor.shutdown(wait=rng.random() < 0.5, kill_workers=True)
                killed.add(id(victim.executor))
            else:
                victim.executor.shutdown(wait=False)
            victim.replace()
        tasks.append((slot.executor, kind, slot.executor.submit(fn, *args), check))
    return tasks, killed


def submit_from_threads(plan, n_threads):
    """Submit `plan` split over `n_threads` threads that start together."""
    barrier = threading.Barrier(n_threads)
    shares = [plan[k::n_threads] for k in range(n_threads)]
    results = [[] for _ in range(n_threads)]
    errors = []

    def run(k):
        try:
            barrier.wait(timeout=30)
            for slot, kind, fn, args, check in shares[k]:
                executor = slot.executor
                results[k].append((executor, kind, executor.submit(fn, *args), check))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return [task for share in results for task in share]


def describe(pids):
    """Each process's pid and command line (for a failure's message)."""
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:200]}")
        except psutil.Error:
            out.append(f"{pid}: (gone)")
    return out


def open_descriptors():
    """What this process's descriptors point to (a set of "fd -> target")."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return out


class Slot:
    """One executor position; its executor may be shut down and replaced."""

    def __init__(self, max_workers):
        self.max_workers = max_workers
        self.executor = ProcessPoolExecutor(max_workers=max_workers)
        self.retired = []

    def replace(self):
        self.retired.append(self.executor)
        self.executor = ProcessPoolExecutor(max_workers=self.max_workers)


def run_rounds(rng, seen):
    """Run ROUNDS rounds over three executors, checking every outcome; then shut the
    executors down."""
    kinds, weights = zip(*KINDS.items())
    slots = [Slot(max_workers) for max_workers in (1, 2, 3)]
    try:
        for round_no in range(ROUNDS):
            where = f"seed={SEED} round={round_no}"
            n_tasks = rng.randint(5, 40)
            plan = []  # (slot, kind, fn, args, check)
            for i in range(n_tasks):
                kind = rng.choices(kinds, weights)[0]
                seen[kind] += 1
                plan.append((rng.choice(slots), kind, *make_task(kind, round_no * 1000 + i, rng)))
            # Sometimes one executor is shut down in the middle of the round; other
            # rounds are submitted from three threads at once.
            event = rng.choices(["none", "kill", "graceful", "threads"], weights=[12, 2, 2, 4])[0]
            if event == "threads":
                tasks = submit_from_threads(plan, n_threads=3)
                killed = set()
            else:
                tasks, killed = submit_with_event(plan, event, rng)

            futures = [future for _, _, future, _ in tasks]
            _, not_done = concurrent.futures.wait(futures, timeout=ROUND_BOUND)
            stuck = [kind for _, kind, future, _ in tasks if future in not_done]
            assert not stuck, (
                f"{where} ({event}): {len(stuck)} futures not done after {ROUND_BOUND}s: {stuck}"
            )
            for executor, kind, future, check in tasks:
                if id(executor) in killed and isinstance(
                    future.exception(), ShutdownExecutorError
                ):
                    continue  # it was pending or running when its executor was killed
                try:
                    check(future)
                except AssertionError as exc:
                    raise AssertionError(f"{where} ({event}): task kind {kind!r}: {exc}") from None

        # Every executor still works and has not grown beyond its size.
        for slot in slots:
            executor = slot.executor
            assert list(executor.map(helpers.square, range(10))) == [x * x for x in range(10)]
            assert helpers.wait_until(
                lambda: len(executor._worker_pids()) <= slot.max_workers, timeout=10
            ), f"seed={SEED}: {executor._worker_pids()} for max_workers={slot.max_workers}"
    finally:
        for slot in slots:
            for executor in slot.retired + [slot.executor]:
                executor.shutdown(wait=True)


@pytest.mark.timeout(max(120, ROUNDS * 6))
def test_random_faults_never_hang_or_leak():
    print(f"fault injection: seed={SEED} rounds={ROUNDS} (LOKY_FAULT_SEED to replay)")
    fds_before = open_descriptors()
    seen = dict.fromkeys(KINDS, 0)
    run_rounds(random.Random(SEED), seen)
    print("kinds run:", seen)
    # Every executor is gone now: so must be their processes and descriptors.
    gc.collect()
    children = psutil.Process().children(recursive=True)
    alive = helpers.wait_pids_gone([p.pid for p in children], timeout=10)
    assert alive == [], f"seed={SEED}: processes left: {describe(alive)}"
    # Channels, pidfds, eventfds, shared-memory files: none may leak (a little slack
    # for descriptors held by caches of the standard library).
    helpers.wait_until(lambda: not open_descriptors() - fds_before, timeout=5)
    leaked = open_descriptors() - fds_before
    assert len(leaked) <= 2, f"seed={SEED}: {len(leaked)} descriptors leaked: {sorted(leaked)}"
