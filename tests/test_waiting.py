"""Waiting costs no processor. Workers and the manager watch for what comes next for a
moment before they sleep (src/watch.rs); the watch is bounded, so a worker with nothing
to do and a manager waiting for a long task both sleep."""

import os
import time

import pytest

import helpers

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.posix_only("reads the CPU time of threads and processes from /proc"),
    pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc"),
]

# What a sleeping process may still use over the measured half second (its watchdog,
# the scheduler's own accounting); a watch that never ended would use most of it.
IDLE_CPU_BOUND = 0.1
WINDOW = 0.5


def _cpu_seconds(stat_path):
    with open(stat_path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _manager_stat_paths():
    """Every executor's manager thread in this process."""
    paths = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as comm:
            if comm.read().strip() == "loky-manager":
                paths.append(f"/proc/self/task/{tid}/stat")
    assert paths, "no loky-manager thread"
    return paths


def _cpu_used_over_window(stat_paths):
    before = sum(map(_cpu_seconds, stat_paths))
    # A measuring window, not a wait for an event: whatever happens in it is counted.
    time.sleep(WINDOW)
    return sum(map(_cpu_seconds, stat_paths)) - before


def test_a_worker_with_nothing_to_do_sleeps(executor_factory):
    executor = executor_factory(max_workers=1)
    # Many quick tasks in a row: the worker watches after each result.
    pid = None
    for _ in range(200):
        pid = executor.submit(helpers.get_pid).result(timeout=30)
    assert _cpu_used_over_window([f"/proc/{pid}/stat"]) < IDLE_CPU_BOUND


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
        assert _cpu_used_over_window(_manager_stat_paths()) < IDLE_CPU_BOUND
    finally:
        gate.write_text("go")
    assert future.result(timeout=30) == value
