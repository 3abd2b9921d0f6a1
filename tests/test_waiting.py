"""Waiting costs no processor. Workers and the manager watch for what comes next for a
moment before they sleep (src/watch.rs); the watch is bounded, so a worker with nothing
to do and a manager waiting for a long task both sleep."""

import os
import sys
import time

import psutil
import pytest

import helpers

pytestmark = pytest.mark.timeout(60)

# What a sleeping process may still use over the measured half second (its watchdog,
# the scheduler's own accounting); a watch that never ended would use most of it.
IDLE_CPU_BOUND = 0.1
WINDOW = 0.5


def _process_cpu_seconds(pid):
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _thread_cpu_seconds(stat_path):
    with open(stat_path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _managers_cpu_seconds():
    """The CPU time of every executor's manager thread in this process; on Windows,
    where a thread's name cannot be read, of this whole process (its other threads
    are idle meanwhile: the test only waits)."""
    if sys.platform == "win32":
        return _process_cpu_seconds(os.getpid())
    paths = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as comm:
            if comm.read().strip() == "loky-manager":
                paths.append(f"/proc/self/task/{tid}/stat")
    assert paths, "no loky-manager thread"
    return sum(map(_thread_cpu_seconds, paths))


def _cpu_used_over_window(cpu_seconds):
    before = cpu_seconds()
    # A measuring window, not a wait for an event: whatever happens in it is counted.
    time.sleep(WINDOW)
    return cpu_seconds() - before


def test_a_worker_with_nothing_to_do_sleeps(executor_factory):
    executor = executor_factory(max_workers=1)
    # Many quick tasks in a row: the worker watches after each result.
    pid = None
    for _ in range(200):
        pid = executor.submit(helpers.get_pid).result(timeout=30)
    assert _cpu_used_over_window(lambda: _process_cpu_seconds(pid)) < IDLE_CPU_BOUND


@pytest.mark.skipif(
    sys.platform != "win32" and not os.path.exists("/proc/self/task"),
    reason="names the manager thread through /proc",
)
def test_the_manager_waiting_for_a_long_task_sleeps(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    for _ in range(200):
        executor.submit(helpers.get_pid).result(timeout=30)
    gate = tmp_path / "gate"
    # A task larger than a direct send takes (64 KiB) goes through the manager, which
    # then knows its result is due.
    value = b"x" * (100 * 1024)
    future = executor.submit(helpers.wait_for_path, str(gate), value, 30)
    try:
        # A result is due all along: the manager watched at most once, then slept.
        assert _cpu_used_over_window(_managers_cpu_seconds) < IDLE_CPU_BOUND
    finally:
        gate.write_text("go")
    assert future.result(timeout=30) == value
