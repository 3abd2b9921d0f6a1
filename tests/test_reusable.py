"""Issue 4: `get_reusable_executor` and `_ReusablePoolExecutor` — reuse, replacement,
invalid arguments, the subclassable class, and resizing a live executor."""

import sys
import threading
import time

import pytest

import loky
from loky import ProcessPoolExecutor, get_reusable_executor
from loky.process_executor import BrokenProcessPool, ShutdownExecutorError
from loky.reusable_executor import _ReusablePoolExecutor

import helpers
import lifecycle_tasks as tasks

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def fresh_singleton():
    """Each test starts without a reusable executor and leaves none running."""
    _shutdown_singleton()
    yield
    _shutdown_singleton()


def _shutdown_singleton():
    from loky import reusable_executor

    current = reusable_executor._current_executor()
    if current is not None:
        current.shutdown(wait=True, kill_workers=True)


def _run_pids(executor, n, seconds=0.3):
    """Run n sleeping tasks; the set of pids that ran them. Tasks that overlap in time
    may still all run on one worker: use this only for "at most" checks."""
    futures = [executor.submit(helpers.sleep_and_pid, seconds) for _ in range(n)]
    return {f.result(timeout=30) for f in futures}


def _all_pids(executor, n):
    """The pids of n workers, each proven to run a task at the same time as the others
    (they wait for each other); fewer than n if the pool could not run n at once."""
    return helpers.pids_of_all_workers(executor, n)


def _wait_pool_size(executor, n, timeout=15):
    """Wait until the executor reports exactly n worker pids; return them."""
    helpers.wait_until(lambda: len(executor._worker_pids()) == n, timeout)
    pids = executor._worker_pids()
    assert len(pids) == n, pids
    return set(pids)


def _alive(pid):
    return not helpers.pid_gone(pid)


# -- reuse ----------------------------------------------------------------------------


def test_same_arguments_return_the_same_executor_and_workers():
    executor = get_reusable_executor(max_workers=2, timeout=5)
    pids = _all_pids(executor, 2)
    assert len(pids) == 2
    again = get_reusable_executor(max_workers=2, timeout=5)
    assert again is executor
    # The workers (and what they imported) are reused, not restarted.
    assert _all_pids(again, 2) == pids
    assert set(executor._worker_pids()) == pids
    executor.shutdown(wait=True)


def test_default_arguments_reuse():
    executor = get_reusable_executor()
    assert executor.submit(helpers.square, 4).result(timeout=30) == 16
    assert get_reusable_executor() is executor
    assert get_reusable_executor(reuse="auto") is executor
    executor.shutdown(wait=True)


def test_equal_but_not_identical_arguments_reuse():
    executor = get_reusable_executor(
        max_workers=1,
        env={"LOKY_TEST_VAR": "a"},
        job_reducers={tasks.Tagged: tasks.reduce_tagged_for_job},
        initializer=helpers.set_initialized,
        initargs=("x",),
    )
    again = get_reusable_executor(
        max_workers=1,
        env=dict(LOKY_TEST_VAR="a"),
        job_reducers=dict([(tasks.Tagged, tasks.reduce_tagged_for_job)]),
        initializer=helpers.set_initialized,
        initargs=("x",),
    )
    assert again is executor
    executor.shutdown(wait=True)


def _changed(name):
    """Keyword arguments differing from the defaults in one argument only."""
    return {
        "initializer": dict(initializer=helpers.set_initialized, initargs=("changed",)),
        "initargs": dict(initializer=helpers.set_initialized, initargs=("other",)),
        "env": dict(env={"LOKY_TEST_VAR": "changed"}),
        "timeout": dict(timeout=3),
        "job_reducers": dict(job_reducers={tasks.Tagged: tasks.reduce_tagged_for_job}),
        "result_reducers": dict(
            result_reducers={tasks.Tagged: tasks.reduce_tagged_for_result}
        ),
        "context": dict(context="loky_init_main"),
    }[name]


def _base(name):
    # For "initargs" the first executor has the same initializer with other arguments.
    if name == "initargs":
        return dict(initializer=helpers.set_initialized, initargs=("first",))
    return {}


@pytest.mark.parametrize(
    "name",
    ["initializer", "initargs", "env", "timeout", "job_reducers", "result_reducers", "context"],
)
def test_changed_argument_gives_a_new_executor_and_shuts_down_the_old(name):
    old = get_reusable_executor(max_workers=2, **_base(name))
    old_pids = _all_pids(old, 2)
    assert len(old_pids) == 2

    new = get_reusable_executor(max_workers=2, **_changed(name))
    assert new is not old
    # The old executor was shut down: its workers are gone (wait=True joined them).
    assert helpers.wait_pids_gone(old_pids, timeout=10) == []
    assert old._worker_pids() == []
    new_pids = _all_pids(new, 2)
    assert len(new_pids) == 2 and new_pids.isdisjoint(old_pids)
    # And the new one is now the singleton.
    assert get_reusable_executor(max_workers=2, **_changed(name)) is new
    new.shutdown(wait=True)


def test_changed_initializer_and_env_take_effect():
    first = get_reusable_executor(
        max_workers=1, initializer=helpers.set_initialized, initargs=("one",)
    )
    assert first.submit(helpers.get_initialized).result(timeout=30)[0] == "one"
    second = get_reusable_executor(
        max_workers=1, initializer=helpers.set_initialized, initargs=("two",)
    )
    assert second is not first
    assert second.submit(helpers.get_initialized).result(timeout=30)[0] == "two"
    third = get_reusable_executor(max_workers=1, env={"LOKY_TEST_VAR": "three"})
    assert third is not second
    assert third.submit(helpers.getenv, "LOKY_TEST_VAR").result(timeout=30) == "three"
    assert third.submit(helpers.get_initialized).result(timeout=30)[0] is None
    third.shutdown(wait=True)


def test_arrays_in_initargs_are_compared_by_identity():
    """An array's == gives an array, no truth value: the same array object keeps the
    executor, another array (even equal) makes a new one, and neither raises."""
    np = pytest.importorskip("numpy")
    table = np.arange(10)
    first = get_reusable_executor(
        max_workers=1, initializer=helpers.set_initialized, initargs=(table,)
    )
    assert get_reusable_executor(
        max_workers=1, initializer=helpers.set_initialized, initargs=(table,)
    ) is first
    second = get_reusable_executor(
        max_workers=1, initializer=helpers.set_initialized, initargs=(np.arange(10) + 1,)
    )
    assert second is not first
    assert list(second.submit(helpers.get_initialized).result(timeout=30)[0]) == list(
        range(1, 11)
    )
    second.shutdown(wait=True)


def test_old_executor_pending_work_finishes_when_replaced_without_kill():
    old = get_reusable_executor(max_workers=1)
    futures = [old.submit(helpers.sleep_and_return, 0.2, i) for i in range(3)]
    new = get_reusable_executor(max_workers=1, env={"LOKY_TEST_VAR": "x"}, kill_workers=False)
    assert new is not old
    # kill_workers=False: the replaced executor finished its work before returning.
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2]
    new.shutdown(wait=True)


def test_a_replaced_executor_runs_what_it_is_given_on_its_successor():
    old = get_reusable_executor(max_workers=1)
    new = get_reusable_executor(max_workers=1, env={"LOKY_TEST_VAR": "new"})
    assert new is not old
    assert old.submit(helpers.getenv, "LOKY_TEST_VAR").result(timeout=30) == "new"
    assert old.schedule(helpers.getenv, ("LOKY_TEST_VAR",)).result(timeout=30) == "new"
    assert list(old.map(helpers.square, [1, 2, 3])) == [1, 4, 9]
    new.shutdown(wait=True)
    # Its successor shut down and not replaced: the old executor refuses too.
    with pytest.raises(ShutdownExecutorError):
        old.submit(helpers.square, 2)


def test_submits_racing_a_replacement_all_run():
    old = get_reusable_executor(max_workers=2)
    futures, errors = [], []
    stop = threading.Event()

    def submit_until_stopped():
        while not stop.is_set():
            try:
                futures.append(old.submit(helpers.square, 3))
            except Exception as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=submit_until_stopped)
    thread.start()
    try:
        helpers.wait_until(lambda: len(futures) >= 100 or errors, 30)
        new = get_reusable_executor(max_workers=2, env={"LOKY_TEST_VAR": "new"})
        after = len(futures)
        helpers.wait_until(lambda: len(futures) >= after + 100 or errors, 30)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert errors == []
    assert new is not old and len(futures) >= after + 100
    assert all(f.result(timeout=30) == 9 for f in futures)
    new.shutdown(wait=True)


def test_reuse_true_keeps_the_executor_whatever_the_arguments():
    executor = get_reusable_executor(max_workers=2, env={"LOKY_TEST_VAR": "kept"})
    pids = _all_pids(executor, 2)
    assert len(pids) == 2
    again = get_reusable_executor(
        max_workers=2,
        reuse=True,
        env={"LOKY_TEST_VAR": "ignored"},
        timeout=1,
        initializer=helpers.set_initialized,
        initargs=("ignored",),
    )
    assert again is executor
    assert set(executor._worker_pids()) == pids
    # The original settings stay in force.
    assert again.submit(helpers.getenv, "LOKY_TEST_VAR").result(timeout=30) == "kept"
    assert again.submit(helpers.get_initialized).result(timeout=30)[0] is None
    executor.shutdown(wait=True)


def test_reuse_true_with_max_workers_none_keeps_the_current_size(monkeypatch):
    executor = get_reusable_executor(max_workers=1)
    assert executor.submit(helpers.square, 2).result(timeout=30) == 4
    # Even when cpu_count() would say otherwise.
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "2")
    again = get_reusable_executor(reuse=True)
    assert again is executor
    assert again._max_workers == 1
    executor.shutdown(wait=True)


def test_reuse_false_replaces_even_with_equal_arguments():
    old = get_reusable_executor(max_workers=1)
    old_pid = old.submit(helpers.get_pid).result(timeout=30)
    new = get_reusable_executor(max_workers=1, reuse=False)
    assert new is not old
    assert helpers.wait_pids_gone([old_pid], timeout=10) == []
    assert new.submit(helpers.get_pid).result(timeout=30) != old_pid
    # With "auto" and the same arguments the replacement is reused.
    assert get_reusable_executor(max_workers=1) is new
    new.shutdown(wait=True)


def test_shut_down_executor_is_replaced():
    old = get_reusable_executor(max_workers=1)
    assert old.submit(helpers.square, 3).result(timeout=30) == 9
    old.shutdown(wait=True)
    with pytest.raises(ShutdownExecutorError):
        old.submit(helpers.square, 3)
    new = get_reusable_executor(max_workers=1)
    assert new is not old
    assert new.submit(helpers.square, 5).result(timeout=30) == 25
    # Also with reuse=True: a shut-down executor is never handed out.
    new.shutdown(wait=False)
    newer = get_reusable_executor(max_workers=1, reuse=True)
    assert newer is not new
    assert newer.submit(helpers.square, 6).result(timeout=30) == 36
    newer.shutdown(wait=True)


def test_broken_executor_is_replaced():
    broken = get_reusable_executor(
        max_workers=1, initializer=helpers.failing_initializer, initargs=("init boom",)
    )
    future = broken.submit(helpers.square, 2)
    with pytest.raises(BrokenProcessPool, match="initializer"):
        future.result(timeout=30)
    # The same arguments: the broken executor is not reused.
    replacement = get_reusable_executor(
        max_workers=1, initializer=helpers.failing_initializer, initargs=("init boom",)
    )
    assert replacement is not broken
    # reuse=True does not hand out a broken executor either.
    with pytest.raises(BrokenProcessPool):
        replacement.submit(helpers.square, 2).result(timeout=30)
    working = get_reusable_executor(max_workers=1, reuse=True)
    assert working is not replacement
    assert working is not broken
    working.shutdown(wait=True)
    # A healthy one, without the initializer.
    healthy = get_reusable_executor(max_workers=1)
    assert healthy.submit(helpers.square, 7).result(timeout=30) == 49
    healthy.shutdown(wait=True)


def test_broken_executor_submit_raises_until_replaced():
    broken = get_reusable_executor(
        max_workers=1, initializer=helpers.failing_initializer, initargs=("init boom",)
    )
    with pytest.raises(BrokenProcessPool):
        broken.submit(helpers.square, 2).result(timeout=30)
    with pytest.raises(BrokenProcessPool):
        broken.submit(helpers.square, 2).result(timeout=30)
    fresh = get_reusable_executor(max_workers=1)
    assert fresh is not broken
    assert fresh.submit(helpers.square, 3).result(timeout=30) == 9
    fresh.shutdown(wait=True)


def test_replacement_with_kill_workers_kills_the_old_workers(tmp_path):
    old = get_reusable_executor(max_workers=1)
    record = tmp_path / "running"
    running = old.submit(helpers.pid_then_sleep, str(record), 60)
    old_pid = helpers.wait_for_pid(record)
    queued = old.submit(helpers.square, 3)

    start = time.monotonic()
    new = get_reusable_executor(max_workers=1, env={"LOKY_TEST_VAR": "1"}, kill_workers=True)
    # Generous bound: it must not wait for the 60 s task.
    assert time.monotonic() - start < 30
    assert new is not old
    assert helpers.wait_pids_gone([old_pid], timeout=10) == []
    for future in (running, queued):
        with pytest.raises(ShutdownExecutorError):
            future.result(timeout=10)
    assert new.submit(helpers.getenv, "LOKY_TEST_VAR").result(timeout=30) == "1"
    new.shutdown(wait=True)


def test_replacement_kills_grandchildren_with_kill_workers(tmp_path):
    old = get_reusable_executor(max_workers=1)
    pid_file = tmp_path / "pids"
    old.submit(helpers.start_grandchild_and_sleep, str(pid_file))
    worker_pid, grandchild_pid = map(int, helpers.wait_for_lines(pid_file)[0].split())
    new = get_reusable_executor(max_workers=1, reuse=False, kill_workers=True)
    assert helpers.wait_pids_gone([worker_pid, grandchild_pid], timeout=10) == []
    new.shutdown(wait=True)


# -- max_workers ----------------------------------------------------------------------


def test_max_workers_none_means_cpu_count():
    executor = get_reusable_executor()
    assert executor._max_workers == loky.cpu_count()
    n = loky.cpu_count()
    assert len(_all_pids(executor, n)) == n
    executor.shutdown(wait=True)


def test_max_workers_none_follows_loky_max_cpu_count(monkeypatch):
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    executor = get_reusable_executor()
    assert executor._max_workers == 1
    assert len(_run_pids(executor, 3, seconds=0.1)) == 1
    executor.shutdown(wait=True)
    pool = ProcessPoolExecutor()
    assert pool._max_workers == 1
    pool.shutdown()


@pytest.mark.parametrize("bad", [0, -1, -10])
def test_invalid_max_workers(bad):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        get_reusable_executor(max_workers=bad)
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        _ReusablePoolExecutor.get_reusable_executor(max_workers=bad)
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        ProcessPoolExecutor(max_workers=bad)


def test_invalid_max_workers_leaves_the_current_executor_alone():
    executor = get_reusable_executor(max_workers=1)
    assert executor.submit(helpers.square, 3).result(timeout=30) == 9
    with pytest.raises(ValueError):
        get_reusable_executor(max_workers=0)
    assert get_reusable_executor(max_workers=1) is executor
    assert executor.submit(helpers.square, 4).result(timeout=30) == 16
    executor.shutdown(wait=True)


def test_fork_context_is_refused():
    if sys.platform == "win32":
        # There is no such thing there: refused, saying so.
        with pytest.raises(ValueError, match="'fork' start method does not exist on Windows"):
            get_reusable_executor(max_workers=1, context="fork")
    else:
        # As with loky: the name warns as get_context("fork") does, then is refused.
        with pytest.warns(UserWarning, match="'fork' context should not be used"):
            with pytest.raises(ValueError, match="fork"):
                get_reusable_executor(max_workers=1, context="fork")
    # The singleton still works afterwards.
    executor = get_reusable_executor(max_workers=1)
    assert executor.submit(helpers.square, 3).result(timeout=30) == 9
    executor.shutdown(wait=True)


def test_invalid_reuse_value():
    with pytest.raises(ValueError, match="reuse"):
        get_reusable_executor(max_workers=1, reuse="sometimes")


# -- the class ------------------------------------------------------------------------


def test_classmethod_returns_executor_and_is_reused():
    executor, is_reused = _ReusablePoolExecutor.get_reusable_executor(max_workers=1)
    assert isinstance(executor, _ReusablePoolExecutor)
    assert isinstance(executor, ProcessPoolExecutor)
    assert is_reused is False
    again, is_reused = _ReusablePoolExecutor.get_reusable_executor(max_workers=1)
    assert again is executor
    assert is_reused is True
    # Resizing is reuse too.
    again, is_reused = _ReusablePoolExecutor.get_reusable_executor(max_workers=2)
    assert again is executor and is_reused is True
    replaced, is_reused = _ReusablePoolExecutor.get_reusable_executor(
        max_workers=2, env={"LOKY_TEST_VAR": "1"}
    )
    assert replaced is not executor and is_reused is False
    # The module function and the classmethod share the singleton.
    assert get_reusable_executor(max_workers=2, env={"LOKY_TEST_VAR": "1"}) is replaced
    assert replaced.submit(helpers.square, 3).result(timeout=30) == 9
    replaced.shutdown(wait=True)


class _JoblibLikeExecutor(_ReusablePoolExecutor):
    """Like joblib's MemmappingExecutor: a subclass that sets attributes on instances."""

    @classmethod
    def get_memmapping_executor(cls, n_jobs, **kwargs):
        executor, is_reused = super().get_reusable_executor(n_jobs, **kwargs)
        if not is_reused:
            executor._temp_folder_manager = f"manager-{id(executor)}"
        return executor


def test_subclass_gets_instances_of_itself_and_shares_the_singleton():
    executor = _JoblibLikeExecutor.get_memmapping_executor(2, timeout=5)
    assert type(executor) is _JoblibLikeExecutor
    assert executor._temp_folder_manager == f"manager-{id(executor)}"
    assert executor.submit(helpers.square, 5).result(timeout=30) == 25
    # Equal arguments through the subclass: reused, attribute kept.
    assert _JoblibLikeExecutor.get_memmapping_executor(2, timeout=5) is executor
    # The module function sees the same singleton.
    assert get_reusable_executor(max_workers=2, timeout=5) is executor
    same, is_reused = _ReusablePoolExecutor.get_reusable_executor(max_workers=2, timeout=5)
    assert same is executor and is_reused
    # A replacement made through the module function is of the base class...
    base = get_reusable_executor(max_workers=2, timeout=6)
    assert type(base) is _ReusablePoolExecutor
    # ...and one made through the subclass is of the subclass again.
    sub, is_reused = _JoblibLikeExecutor.get_reusable_executor(max_workers=2, timeout=7)
    assert type(sub) is _JoblibLikeExecutor and not is_reused
    assert sub is not base
    assert sub.submit(helpers.square, 6).result(timeout=30) == 36
    sub.shutdown(wait=True)


def test_submit_resize_lock_usable_in_with():
    executor = get_reusable_executor(max_workers=1)
    lock = executor._submit_resize_lock
    with lock:
        # Submitting while holding it is allowed (joblib does this).
        future = executor.submit(helpers.square, 9)
    assert future.result(timeout=30) == 81
    # It is a lock: acquire/release work, and the with block released it.
    assert lock.acquire(timeout=5)
    lock.release()
    executor.shutdown(wait=True)


def test_submit_resize_lock_holds_off_resizes_from_other_threads():
    executor = get_reusable_executor(max_workers=1)
    assert executor.submit(helpers.square, 2).result(timeout=30) == 4
    resized = threading.Event()

    def resize():
        executor._resize(2)  # (another thread's get_reusable_executor has its own)
        resized.set()

    with executor._submit_resize_lock:
        thread = threading.Thread(target=resize)
        thread.start()
        # While the lock is held the resize waits (no executor change mid-submit).
        assert not resized.wait(0.3)
        assert executor._max_workers == 1
    thread.join(timeout=30)
    assert resized.is_set()
    assert executor._max_workers == 2
    executor.shutdown(wait=True)


def test_a_resize_while_the_pool_starts_is_not_lost(monkeypatch):
    executor = get_reusable_executor(max_workers=1)
    sized, release = threading.Event(), threading.Event()
    start_state = executor._start_state

    def start_state_then_hold(*args):
        state = start_state(*args)  # the pool is made for one worker
        sized.set()
        release.wait(30)
        return state

    monkeypatch.setattr(executor, "_start_state", start_state_then_hold)
    first = threading.Thread(target=lambda: executor.submit(helpers.square, 3).result(30))
    first.start()
    assert sized.wait(30)
    resize = threading.Thread(target=executor._resize, args=(2,))
    resize.start()
    release.set()  # the start completes; the resize then applies to its pool
    first.join(timeout=30)
    resize.join(timeout=30)
    assert executor._max_workers == 2
    assert len(_all_pids(executor, 2)) == 2
    executor.shutdown(wait=True)


def test_instances_keep_attributes_set_by_users():
    executor = get_reusable_executor(max_workers=1)
    executor.custom_attribute = "kept"
    assert get_reusable_executor(max_workers=1).custom_attribute == "kept"
    executor.shutdown(wait=True)


# -- resize ---------------------------------------------------------------------------


def test_growing_spawns_only_the_difference():
    executor = get_reusable_executor(max_workers=2)
    before = _all_pids(executor, 2)
    assert len(before) == 2
    assert _wait_pool_size(executor, 2) == before

    assert get_reusable_executor(max_workers=4) is executor
    after_pids = _all_pids(executor, 4)
    assert len(after_pids) == 4
    after = _wait_pool_size(executor, 4)
    assert after_pids == after
    # The two original workers are still there, and only two were added.
    assert before <= after
    assert all(_alive(pid) for pid in before)
    executor.shutdown(wait=True)


def test_shrinking_keeps_surviving_workers():
    executor = get_reusable_executor(max_workers=4)
    before = _all_pids(executor, 4)
    assert len(before) == 4
    before = _wait_pool_size(executor, 4)

    assert get_reusable_executor(max_workers=2) is executor
    survivors = _wait_pool_size(executor, 2)
    assert survivors <= before
    retired = before - survivors
    assert helpers.wait_pids_gone(retired, timeout=10) == []
    assert all(_alive(pid) for pid in survivors)
    # Work runs on the survivors only: no worker was restarted.
    assert _run_pids(executor, 6, seconds=0.05) <= survivors
    assert set(executor._worker_pids()) == survivors
    executor.shutdown(wait=True)


def test_shrinking_while_busy_lets_running_tasks_finish(tmp_path):
    executor = get_reusable_executor(max_workers=3)
    record, gate = tmp_path / "running", tmp_path / "gate"
    futures = [
        executor.submit(helpers.check_in_then_wait_for_path, str(record), str(gate), i)
        for i in range(3)
    ]
    # All three tasks run, on three workers, and wait for the gate.
    assert len(set(helpers.wait_for_lines(record, 3))) == 3
    assert get_reusable_executor(max_workers=1) is executor
    assert not any(f.done() for f in futures)
    gate.touch()
    assert [f.result(timeout=30) for f in futures] == [0, 1, 2]
    assert len(_wait_pool_size(executor, 1)) == 1
    executor.shutdown(wait=True)


def test_no_work_lost_across_resizes():
    executor = get_reusable_executor(max_workers=2)
    futures = []
    for round_, size in enumerate([1, 3, 2, 4, 1, 2]):
        futures += [
            executor.submit(tasks.slow_square, round_ * 100 + i, 0.01) for i in range(15)
        ]
        assert get_reusable_executor(max_workers=size) is executor
    results = [f.result(timeout=60) for f in futures]
    expected = [(r * 100 + i) ** 2 for r in range(6) for i in range(15)]
    assert results == expected
    assert len(_wait_pool_size(executor, 2)) == 2
    executor.shutdown(wait=True)


def test_resize_before_first_submit():
    executor = get_reusable_executor(max_workers=1)
    assert get_reusable_executor(max_workers=3) is executor
    assert executor._max_workers == 3
    assert len(_all_pids(executor, 3)) == 3
    executor.shutdown(wait=True)


# -- max_tasks_per_child through the reusable executor --------------------------------


def test_reusable_max_tasks_per_child():
    executor = get_reusable_executor(max_workers=2, max_tasks_per_child=3)
    pids = [f.result(timeout=30) for f in [executor.submit(helpers.get_pid) for _ in range(10)]]
    assert len(set(pids)) >= 4
    assert max(pids.count(p) for p in set(pids)) <= 3
    # A different max_tasks_per_child is a different executor.
    other = get_reusable_executor(max_workers=2)
    assert other is not executor
    other.shutdown(wait=True)


def test_each_thread_has_its_own_reusable_executor():
    import threading

    mine = get_reusable_executor(max_workers=1)
    seen = {}

    def in_thread(index):
        first = get_reusable_executor(max_workers=1)
        assert get_reusable_executor(max_workers=1) is first
        seen[index] = (first, first.submit(helpers.square, index).result(timeout=30))
        # A change of arguments here replaces this thread's executor only.
        get_reusable_executor(max_workers=1, env={"LOKY_THREAD": str(index)})

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [seen[i][1] for i in range(3)] == [0, 1, 4]
    assert len({id(seen[i][0]) for i in range(3)} | {id(mine)}) == 4
    assert get_reusable_executor(max_workers=1) is mine
    assert mine.submit(helpers.square, 5).result(timeout=30) == 25
