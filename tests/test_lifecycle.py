"""Issue 4: the worker lifecycle — idle timeout and respawn, memory-leak recycling, and
recycling by task count (`max_tasks_per_child`)."""

import os
import time

import pytest

from loky import ProcessPoolExecutor, get_reusable_executor

import helpers
import lifecycle_tasks as tasks

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_singleton_left():
    yield
    from loky import reusable_executor

    if reusable_executor._current_executor() is not None:
        reusable_executor._current_executor().shutdown(wait=True, kill_workers=True)


# -- idle timeout ---------------------------------------------------------------------


@pytest.mark.parametrize("make", ["reusable", "executor"])
def test_idle_workers_exit_after_timeout_and_come_back(make, executor_factory):
    if make == "reusable":
        executor = get_reusable_executor(max_workers=2, timeout=1)
    else:
        executor = executor_factory(max_workers=2, timeout=1)
    # Two tasks that wait for each other: both workers run.
    first = helpers.pids_of_all_workers(executor, 2)
    assert len(first) == 2

    # Idle for `timeout` seconds: the workers exit and the pool is empty.
    assert helpers.wait_until(lambda: executor._worker_pids() == [], 15)
    assert helpers.wait_pids_gone(first, timeout=10) == []

    # The next submits bring the pool back to its size, with new workers.
    assert executor.submit(helpers.square, 7).result(timeout=30) == 49
    second = helpers.pids_of_all_workers(executor, 2)
    assert len(second) == 2
    assert second.isdisjoint(first)
    # No other worker was started (one of these may already have gone idle and exited:
    # the idle timeout is only one second).
    assert set(executor._worker_pids()) <= second
    executor.shutdown(wait=True)


def test_workers_are_not_retired_before_the_timeout(executor_factory):
    executor = executor_factory(max_workers=1, timeout=30)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    time.sleep(1.5)
    assert executor._worker_pids() == [pid]
    assert executor.submit(helpers.get_pid).result(timeout=30) == pid


def test_no_timeout_keeps_idle_workers(executor_factory):
    executor = executor_factory(max_workers=1)  # ProcessPoolExecutor: timeout=None
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    time.sleep(1.5)
    assert executor.submit(helpers.get_pid).result(timeout=30) == pid


def test_busy_workers_are_not_timed_out(executor_factory):
    # A task longer than the idle timeout runs to completion on the same worker.
    executor = executor_factory(max_workers=1, timeout=0.5)
    assert executor.submit(helpers.sleep_and_return, 1.5, "done").result(timeout=30) == "done"


def test_idle_timeout_respawn_keeps_initializer_and_env(executor_factory):
    executor = executor_factory(
        max_workers=1,
        timeout=0.5,
        initializer=helpers.set_initialized,
        initargs=("initialized",),
        env={"LOKY_TEST_VAR": "set"},
    )
    value, first_pid = executor.submit(helpers.get_initialized).result(timeout=30)
    assert value == "initialized"
    assert helpers.wait_pids_gone([first_pid], timeout=15) == []
    value, second_pid = executor.submit(helpers.get_initialized).result(timeout=30)
    assert second_pid != first_pid
    assert value == "initialized"
    assert executor.submit(helpers.getenv, "LOKY_TEST_VAR").result(timeout=30) == "set"


def test_repeated_idle_cycles(executor_factory):
    executor = executor_factory(max_workers=2, timeout=0.3)
    seen = set()
    for i in range(4):
        futures = [executor.submit(tasks.square_and_pid, i * 10 + k) for k in range(6)]
        results = [f.result(timeout=30) for f in futures]
        assert [value for value, _ in results] == [(i * 10 + k) ** 2 for k in range(6)]
        # The workers that ran the tasks (they may have gone idle and exited already).
        pids = {pid for _, pid in results} | set(executor._worker_pids())
        assert helpers.wait_until(lambda: executor._worker_pids() == [], 15)
        assert helpers.wait_pids_gone(pids, timeout=10) == []
        seen |= pids
    assert len(seen) >= 4


def test_idle_timeout_then_resize(executor_factory):
    executor = get_reusable_executor(max_workers=1, timeout=0.5)
    first = executor.submit(helpers.get_pid).result(timeout=30)
    assert helpers.wait_pids_gone([first], timeout=15) == []
    assert get_reusable_executor(max_workers=3, timeout=0.5) is executor
    assert len(helpers.pids_of_all_workers(executor, 3)) == 3
    executor.shutdown(wait=True)


# -- memory-leak recycling ------------------------------------------------------------

LEAK_LIMIT = 20_000_000  # bytes
LEAK_STEP = 30_000_000  # more than the limit in one task


@pytest.mark.timeout(90)
def test_leaking_worker_is_replaced(executor_factory):
    executor = executor_factory(
        max_workers=1, env={"LOKY_MAX_MEMORY_LEAK_SIZE": str(LEAK_LIMIT)}
    )
    # First task: the worker measures its size after it.
    first_pid = executor.submit(helpers.get_pid).result(timeout=30)
    # The check runs at most once a second, between tasks.
    time.sleep(1.2)
    pids = [executor.submit(tasks.leak_and_pid, LEAK_STEP).result(timeout=30)]
    assert pids[0] == first_pid
    # The leaking worker is replaced between tasks: a new pid shows up.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid = executor.submit(helpers.get_pid).result(timeout=30)
        pids.append(pid)
        if pid != first_pid:
            break
        time.sleep(0.3)
    assert pids[-1] != first_pid, "the leaking worker was never replaced"
    assert helpers.wait_pids_gone([first_pid], timeout=10) == []
    # The new worker starts without the leak.
    leaked, pid = executor.submit(tasks.leaked_bytes).result(timeout=30)
    assert leaked == 0 and pid == pids[-1]


@pytest.mark.timeout(90)
def test_leaking_tasks_all_return_results(executor_factory):
    executor = executor_factory(
        max_workers=2, env={"LOKY_MAX_MEMORY_LEAK_SIZE": str(LEAK_LIMIT)}
    )
    futures = []
    # The check runs between tasks, at most once a second after a worker's first task:
    # keep leaking (six rounds at least) until a worker was recycled, however slowly
    # the workers started.
    deadline = time.monotonic() + 20
    while len(futures) < 24 or (
        len({f.result() for f in futures if f.done()}) < 3 and time.monotonic() < deadline
    ):
        futures += [executor.submit(tasks.leak_and_pid, LEAK_STEP // 3) for _ in range(4)]
        time.sleep(0.4)
    squares = [executor.submit(helpers.square, i) for i in range(20)]
    pids = [f.result(timeout=60) for f in futures]
    assert [f.result(timeout=60) for f in squares] == [i * i for i in range(20)]
    # Tasks of 10 MB on two workers with a 20 MB allowance: recycling happened.
    assert len(set(pids)) >= 3


def test_workers_that_do_not_leak_are_kept(executor_factory):
    executor = executor_factory(
        max_workers=1, env={"LOKY_MAX_MEMORY_LEAK_SIZE": str(LEAK_LIMIT)}
    )
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    # Allocated and freed within the task: no growth. Above 32 MiB, glibc's malloc
    # always maps a block of its own and unmaps it when freed; a smaller one (30 MB
    # after a larger one was freed) may come from the heap, which keeps it: resident
    # memory that grew, as the leak check rightly sees it.
    size = 2 * LEAK_STEP
    for _ in range(3):
        time.sleep(1.1)
        assert executor.submit(helpers.payload_summary, bytes(size), [0]).result(
            timeout=30
        ) == (size, b"\x00")
    assert executor.submit(helpers.get_pid).result(timeout=30) == pid


def test_workers_collect_garbage_between_tasks(executor_factory):
    # The automatic collector is off in the worker; the worker's own gc.collect()
    # between tasks (at most once a second) still frees reference cycles.
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    time.sleep(1.2)
    assert executor.submit(tasks.make_garbage_cycle_without_automatic_gc).result(
        timeout=30
    ) == pid
    deadline = time.monotonic() + 20
    collected = False
    while not collected and time.monotonic() < deadline:
        time.sleep(0.5)
        collected, same_pid = executor.submit(tasks.cycle_collected).result(timeout=30)
        assert same_pid == pid
    assert collected, "the worker never collected the garbage cycle between tasks"


# -- recycling by task count ----------------------------------------------------------


@pytest.mark.parametrize("max_workers", [1, 2, 3])
def test_max_tasks_per_child_three_over_ten_tasks(executor_factory, max_workers):
    executor = executor_factory(max_workers=max_workers, max_tasks_per_child=3)
    futures = [executor.submit(tasks.square_and_pid, i) for i in range(10)]
    results = [f.result(timeout=30) for f in futures]
    assert [value for value, _ in results] == [i * i for i in range(10)]
    pids = [pid for _, pid in results]
    assert len(set(pids)) >= 4
    assert max(pids.count(p) for p in set(pids)) <= 3


def test_max_tasks_per_child_counts_across_batches(executor_factory):
    executor = executor_factory(max_workers=2, max_tasks_per_child=3)
    pids = []
    for _ in range(5):
        pids += [executor.submit(helpers.get_pid).result(timeout=30) for _ in range(2)]
    assert len(set(pids)) >= 4
    assert max(pids.count(p) for p in set(pids)) <= 3
    # Retired workers exit; only the pool's size stays alive.
    retired = set(pids) - set(executor._worker_pids())
    assert helpers.wait_pids_gone(retired, timeout=10) == []


def test_max_tasks_per_child_with_map_and_failures(executor_factory):
    executor = executor_factory(max_workers=2, max_tasks_per_child=2)
    assert list(executor.map(helpers.square, range(25))) == [i * i for i in range(25)]
    futures = [executor.submit(helpers.fail_on_odd, i) for i in range(8)]
    for i, f in enumerate(futures):
        if i % 2:
            with pytest.raises(ValueError, match=f"odd input {i}"):
                f.result(timeout=30)
        else:
            assert f.result(timeout=30) == i


def test_max_tasks_per_child_one(executor_factory):
    executor = executor_factory(max_workers=2, max_tasks_per_child=1)
    pids = [f.result(timeout=30) for f in [executor.submit(helpers.get_pid) for _ in range(6)]]
    assert len(set(pids)) == 6


def test_max_tasks_per_child_keeps_initializer(executor_factory):
    executor = executor_factory(
        max_workers=1,
        max_tasks_per_child=2,
        initializer=helpers.set_initialized,
        initargs=("again",),
    )
    results = [executor.submit(helpers.get_initialized).result(timeout=30) for _ in range(6)]
    assert {value for value, _ in results} == {"again"}
    assert len({pid for _, pid in results}) == 3


@pytest.mark.parametrize(
    "bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("3", TypeError)]
)
def test_invalid_max_tasks_per_child(bad, error):
    with pytest.raises(error, match="max_tasks_per_child"):
        ProcessPoolExecutor(max_workers=1, max_tasks_per_child=bad)


# -- the respawn template -------------------------------------------------------------


def test_short_lived_executors_print_nothing_on_stderr(tmp_path):
    result = helpers.run_script(
        tmp_path,
        """
        from loky import ProcessPoolExecutor

        for i in range(5):
            with ProcessPoolExecutor(max_workers=1) as executor:
                assert executor.submit(abs, -i).result(timeout=30) == i
        print("done")
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["done"]
    assert result.stderr == ""


def test_idle_respawns_are_children_of_this_process(executor_factory):
    # Without max_tasks_per_child every worker, replacements included, is a child of
    # this process, as with loky and the standard library.
    executor = executor_factory(max_workers=1, timeout=0.5)
    first_pid, first_parent = executor.submit(tasks.pid_and_parent).result(timeout=30)
    assert first_parent == os.getpid()
    assert helpers.wait_pids_gone([first_pid], timeout=15) == []
    pid, parent = executor.submit(tasks.pid_and_parent).result(timeout=30)
    assert pid != first_pid and parent == os.getpid()
    assert list(executor._processes) == [pid]


@pytest.mark.posix_only("workers forked by the template: Windows has no fork()")
def test_recycled_workers_fork_from_the_template(executor_factory):
    # A pool that replaces workers routinely (max_tasks_per_child) forks replacements
    # from a pre-started template process. The template starts once the first worker
    # is up; until it is ready (a moment, but longer than a task on a busy machine) a
    # replacement is exec'd as the first worker was. So run tasks until one lands on
    # a forked worker.
    executor = executor_factory(max_workers=1, max_tasks_per_child=1)
    deadline = time.monotonic() + 30
    while True:
        pid, parent = executor.submit(tasks.pid_and_parent).result(timeout=30)
        if parent != os.getpid() or time.monotonic() > deadline:
            break
    assert parent != os.getpid()
    # The template is itself a child of this process, which never runs user code:
    # the forked worker is its direct child.
    import psutil

    template = psutil.Process(parent)
    assert template.ppid() == os.getpid()


@pytest.mark.posix_only("workers forked by the template: Windows has no fork()")
def test_template_starts_while_a_worker_is_starting(executor_factory, tmp_path):
    # Under steady recycling a replacement is nearly always starting; the template
    # must start all the same once a worker has spent its tasks. One worker here never
    # finishes starting, so there is always one.
    executor = executor_factory(
        max_workers=2,
        max_tasks_per_child=2,
        initializer=tasks.first_one_stays_starting,
        initargs=(str(tmp_path / "marker"),),
    )
    deadline = time.monotonic() + 30
    while True:
        pid, parent = executor.submit(tasks.pid_and_parent).result(timeout=30)
        if parent != os.getpid() or time.monotonic() > deadline:
            break
    assert parent != os.getpid(), "no worker was forked by the template"


@pytest.mark.posix_only("workers forked by the template: Windows has no fork()")
def test_every_replacement_of_a_recycling_pool_is_forked_by_the_template(executor_factory):
    # The template starts once a worker has spent its tasks; a replacement due while it
    # is still starting waits for it rather than start a whole interpreter.
    executor = executor_factory(max_workers=2, max_tasks_per_child=10)
    seen = list(executor.map(tasks.pid_and_parent, range(200)))
    workers = dict(seen)
    exec_started = sorted(pid for pid, parent in workers.items() if parent == os.getpid())
    assert len(workers) >= 10
    # Only the pool's first two workers were started by this process.
    assert len(exec_started) <= 2, seen
