"""Issue 4: nested executors — the depth of each worker, and LOKY_MAX_DEPTH."""

import pytest

from loky import get_reusable_executor, process_executor
from loky.process_executor import LokyRecursionError

import helpers
import lifecycle_tasks as tasks

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def no_singleton_left():
    yield
    from loky import reusable_executor

    if reusable_executor._current_executor() is not None:
        reusable_executor._current_executor().shutdown(wait=True, kill_workers=True)


def test_depth_is_zero_in_the_parent():
    assert process_executor._CURRENT_DEPTH == 0


def test_depth_is_one_in_workers(executor_factory):
    executor = executor_factory(max_workers=2)
    assert [f.result(timeout=30) for f in [executor.submit(tasks.current_depth) for _ in range(4)]] == [1] * 4


def test_depth_grows_by_one_per_level(executor_factory):
    executor = executor_factory(max_workers=1)
    assert executor.submit(tasks.depths_down, 3).result(timeout=60) == [1, 2, 3, 4]


def test_reusable_executor_depth(executor_factory):
    executor = get_reusable_executor(max_workers=1)
    assert executor.submit(tasks.current_depth).result(timeout=30) == 1
    executor.shutdown(wait=True)


def test_nested_reusable_executor_in_a_worker_is_cleaned_up(executor_factory):
    # The worker leaves its own reusable executor running; the worker's exit (at the
    # outer executor's shutdown) must take the nested workers down too (the autouse
    # fixture checks that no process is left).
    executor = executor_factory(max_workers=1)
    assert executor.submit(tasks.nested_reusable_square, 7).result(timeout=60) == (49, 2)
    pid, children = executor.submit(tasks.pid_and_children).result(timeout=30)
    assert children, "the nested executor's workers should still be running"
    executor.shutdown(wait=True)
    assert helpers.wait_pids_gone([pid, *children], timeout=15) == []


@pytest.mark.parametrize("max_depth", [1, 2, 3])
def test_nesting_stops_at_loky_max_depth(executor_factory, tmp_path, max_depth):
    record = tmp_path / "depths"
    executor = executor_factory(max_workers=1, env={"LOKY_MAX_DEPTH": str(max_depth)})
    assert executor.submit(tasks.max_depth_setting).result(timeout=30) == max_depth
    future = executor.submit(tasks.nest_until_refused, str(record))
    with pytest.raises(LokyRecursionError, match="LOKY_MAX_DEPTH") as info:
        future.result(timeout=60)
    # Workers exist down to depth max_depth; creating an executor there is refused.
    depths = [int(line) for line in record.read_text().split()]
    assert depths == list(range(1, max_depth + 1))
    assert str(max_depth) in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_nesting_down_to_the_limit_works(executor_factory):
    # With LOKY_MAX_DEPTH=3 workers at depths 1, 2 and 3 run tasks.
    executor = executor_factory(max_workers=1, env={"LOKY_MAX_DEPTH": "3"})
    assert executor.submit(tasks.depths_down, 2).result(timeout=60) == [1, 2, 3]
    with pytest.raises(LokyRecursionError, match="LOKY_MAX_DEPTH"):
        executor.submit(tasks.depths_down, 3).result(timeout=60)
    # The executor is still usable after the refusal deep below.
    assert executor.submit(tasks.square, 5).result(timeout=30) == 25


def test_reusable_executor_refused_beyond_the_limit(executor_factory):
    executor = executor_factory(max_workers=1, env={"LOKY_MAX_DEPTH": "1"})
    with pytest.raises(LokyRecursionError, match="LOKY_MAX_DEPTH"):
        executor.submit(tasks.nested_reusable_square, 3).result(timeout=60)


def test_default_max_depth_is_ten(tmp_path, monkeypatch):
    monkeypatch.delenv("LOKY_MAX_DEPTH", raising=False)
    result = helpers.run_script(
        tmp_path,
        """
        from loky import process_executor
        print(process_executor.MAX_DEPTH, process_executor._CURRENT_DEPTH)
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["10", "0"]


def test_refusal_at_the_default_depth_in_a_process_at_depth_ten(monkeypatch):
    # A process at depth 10 (as a worker of the 10th level would be) cannot create
    # executors with the default limit; the error names the variable.
    monkeypatch.setattr(process_executor, "_CURRENT_DEPTH", 10)
    monkeypatch.setattr(process_executor, "MAX_DEPTH", 10)
    with pytest.raises(LokyRecursionError, match="LOKY_MAX_DEPTH"):
        process_executor.ProcessPoolExecutor(max_workers=1)
    with pytest.raises(LokyRecursionError, match="LOKY_MAX_DEPTH"):
        get_reusable_executor(max_workers=1, reuse=False)
    monkeypatch.setattr(process_executor, "_CURRENT_DEPTH", 9)
    process_executor.ProcessPoolExecutor(max_workers=1).shutdown()


@pytest.mark.timeout(120)
def test_nested_executors_down_to_the_default_limit(executor_factory, tmp_path, monkeypatch):
    # Ten levels of one-worker executors, then the refusal at depth 10.
    monkeypatch.delenv("LOKY_MAX_DEPTH", raising=False)
    record = tmp_path / "depths"
    executor = executor_factory(max_workers=1)
    with pytest.raises(LokyRecursionError, match="LOKY_MAX_DEPTH"):
        executor.submit(tasks.nest_until_refused, str(record)).result(timeout=100)
    assert [int(line) for line in record.read_text().split()] == list(range(1, 11))
