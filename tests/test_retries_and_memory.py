"""A task runs again when its worker dies under it (`schedule(..., retries=)`), and a
worker's memory has a cap (`max_worker_memory`): replaced after a task that leaves it
past the cap, ended at once while a task takes it past half again."""

import os
import time

import psutil
import pytest

from loky import MemoryLimitError, ProcessPoolExecutor, get_reusable_executor
from loky.process_executor import TerminatedWorkerError

import helpers

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


def die_on_first_run(record):
    """os._exit(3) the first time (and each time until `record` holds a line)."""
    runs = helpers.read_lines(record)
    helpers.append_line(record, str(os.getpid()))
    if not runs:
        os._exit(3)
    return len(runs) + 1


def count_then_raise(record):
    helpers.append_line(record, str(os.getpid()))
    raise ValueError("raised by the task")


def touched(nbytes):
    block = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        block[i] = 1
    return block


def hold_memory(nbytes, seconds):
    """Hold `nbytes` of touched memory for `seconds` (killed earlier if over a cap)."""
    block = touched(nbytes)
    time.sleep(seconds)
    return len(block)


_kept = []


def keep_memory(nbytes):
    """Leave `nbytes` of touched memory in this worker after the task."""
    _kept.append(touched(nbytes))
    return len(_kept)


def test_a_task_whose_worker_died_runs_again(executor_factory, tmp_path):
    executor = executor_factory(max_workers=2)
    record = tmp_path / "runs"
    assert executor.schedule(die_on_first_run, (record,), retries=1).result(timeout=60) == 2
    runs = helpers.read_lines(record)
    assert len(runs) == 2 and runs[0] != runs[1], "on another worker"


def test_without_retries_the_death_fails_the_task(executor_factory, tmp_path):
    executor = executor_factory(max_workers=2)
    future = executor.schedule(die_on_first_run, (tmp_path / "runs",))
    with pytest.raises(TerminatedWorkerError, match=r"EXIT\(3\)"):
        future.result(timeout=60)


def test_the_final_error_lists_every_run(executor_factory):
    executor = executor_factory(max_workers=2)
    future = executor.schedule(os._exit, (5,), retries=2)
    with pytest.raises(TerminatedWorkerError) as info:
        future.result(timeout=60)
    message = str(info.value)
    assert "ran 3 times" in message, message
    assert message.count("EXIT(5)") >= 3, message
    # The pool heals: other work runs.
    assert executor.submit(helpers.square, 4).result(timeout=60) == 16


def test_exceptions_are_never_retried(executor_factory, tmp_path):
    executor = executor_factory(max_workers=2)
    record = tmp_path / "runs"
    with pytest.raises(ValueError, match="raised by the task"):
        executor.schedule(count_then_raise, (record,), retries=3).result(timeout=60)
    assert len(helpers.read_lines(record)) == 1


def test_timeouts_are_retried_only_when_asked(executor_factory, tmp_path):
    executor = executor_factory(max_workers=2)
    once = tmp_path / "once"
    # (helpers' task: importing this module takes a fresh worker longer than the timeout
    # under Wine, and the time limit counts from the task's start.)
    future = executor.schedule(helpers.slow_first_run, (once, 30), timeout=0.5, retries=2)
    with pytest.raises(TimeoutError):
        future.result(timeout=60)
    assert len(helpers.read_lines(once)) == 1
    again = tmp_path / "again"
    future = executor.schedule(
        helpers.slow_first_run, (again, 30), timeout=0.5, retries=1, retry_on_timeout=True
    )
    assert future.result(timeout=60) == "fast"
    assert len(helpers.read_lines(again)) == 2


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": "2"}, TypeError, "retries"),
        ({"retries": 1.5}, TypeError, "retries"),
        ({"retry_on_timeout": 1}, TypeError, "retry_on_timeout"),
    ],
)
def test_schedule_refuses_bad_retry_arguments(executor_factory, kwargs, error, name):
    executor = executor_factory(max_workers=1)
    with pytest.raises(error, match=name):
        executor.schedule(helpers.square, (2,), **kwargs)
    assert executor._worker_pids() == [], "nothing started"


@pytest.mark.parametrize(
    "value, error",
    [(0, ValueError), (-5, ValueError), ("1GB", TypeError), (2.5e9, TypeError), (True, TypeError)],
)
@pytest.mark.parametrize("make", ["ProcessPoolExecutor", "get_reusable_executor"])
def test_max_worker_memory_refuses_bad_values(make, value, error):
    children = len(psutil.Process().children())
    factory = ProcessPoolExecutor if make == "ProcessPoolExecutor" else get_reusable_executor
    with pytest.raises(error, match="max_worker_memory"):
        factory(max_workers=1, max_worker_memory=value)
    assert len(psutil.Process().children()) == children, "nothing started"


def test_a_task_past_the_cap_by_half_again_is_ended_alone(executor_factory, tmp_path):
    cap = 200 * MiB
    executor = executor_factory(max_workers=2, max_worker_memory=cap)
    gate = tmp_path / "gate"
    other = executor.submit(helpers.check_in_then_wait_for_path, tmp_path / "in", gate, "ok")
    helpers.wait_for_lines(tmp_path / "in", 1)
    hog = executor.submit(hold_memory, 2 * cap, 60)
    with pytest.raises(MemoryLimitError) as info:
        hog.result(timeout=60)
    assert isinstance(info.value, MemoryError)
    message = str(info.value)
    assert "200.0 MiB" in message and "hold_memory" in message, message
    peak = float(message.split(" held ")[1].split(" MiB")[0])
    assert peak > 300, message
    # The other task was not touched, and the pool runs on.
    gate.touch()
    assert other.result(timeout=60) == "ok"
    assert executor.submit(helpers.square, 5).result(timeout=60) == 25


def test_a_worker_left_past_the_cap_is_replaced_before_its_next_task(executor_factory):
    cap = 200 * MiB
    executor = executor_factory(max_workers=1, max_worker_memory=cap)
    first = executor.submit(helpers.get_pid).result(timeout=60)
    # Under half again past the cap: the task finishes, then its worker leaves. (A
    # quarter past the cap with what the worker holds already, which differs from one
    # system to another.)
    held = psutil.Process(first).memory_info().rss
    assert executor.submit(keep_memory, cap + cap // 4 - held).result(timeout=60) == 1
    second = executor.submit(helpers.get_pid).result(timeout=60)
    assert second != first
    assert helpers.wait_pids_gone([first], timeout=30) == []


def test_a_memory_kill_counts_as_a_death_for_retries(executor_factory):
    cap = 100 * MiB
    executor = executor_factory(max_workers=1, max_worker_memory=cap)
    future = executor.schedule(hold_memory, (2 * cap, 60), retries=1)
    with pytest.raises(MemoryLimitError, match="ran 2 times"):
        future.result(timeout=90)
