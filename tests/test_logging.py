"""Lifecycle events are logged to the "loky" logger (silent unless configured), and to
multiprocessing's logger when `multiprocessing.util.log_to_stderr()` is on."""

import logging

import pytest

from loky import ProcessPoolExecutor, get_reusable_executor

import helpers

pytestmark = pytest.mark.timeout(120)


def _records(caplog, level=logging.DEBUG):
    return [r for r in caplog.records if r.name == "loky" and r.levelno >= level]


def _wait_for_record(caplog, text, timeout=60):
    return helpers.wait_until(
        lambda: any(text in r.getMessage() for r in _records(caplog)), timeout
    )


def test_a_crash_is_one_warning_naming_the_worker_and_its_status(caplog, executor_factory):
    caplog.set_level(logging.DEBUG, logger="loky")
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=60)
    with pytest.raises(Exception):
        executor.submit(helpers.exit_with, 3).result(timeout=60)
    assert _wait_for_record(caplog, f"loky worker {pid} died")
    warnings = [r for r in _records(caplog, logging.WARNING) if str(pid) in r.getMessage()]
    assert len(warnings) == 1
    assert "EXIT(3)" in warnings[0].getMessage()
    # The replacement's start is logged too.
    new_pid = executor.submit(helpers.get_pid).result(timeout=60)
    assert _wait_for_record(caplog, f"loky worker {new_pid} ")


def test_recycling_for_the_task_limit_is_reported_once_with_the_reason(caplog):
    caplog.set_level(logging.DEBUG, logger="loky")
    executor = ProcessPoolExecutor(max_workers=1, max_tasks_per_child=1)
    try:
        first = executor.submit(helpers.get_pid).result(timeout=60)
        executor.submit(helpers.get_pid).result(timeout=60)
        assert _wait_for_record(caplog, f"loky worker {first} recycled")
    finally:
        executor.shutdown()
    infos = [r for r in _records(caplog, logging.INFO) if f"worker {first} " in r.getMessage()]
    assert len(infos) == 1 and "max_tasks_per_child" in infos[0].getMessage()


def test_recycling_for_memory_growth_is_reported(caplog):
    caplog.set_level(logging.INFO, logger="loky")
    executor = ProcessPoolExecutor(
        max_workers=1, env={"LOKY_MAX_MEMORY_LEAK_SIZE": str(10 << 20)}
    )
    try:
        # Each task keeps 20 MB more; the worker checks itself at most once a second.
        def grown():
            executor.submit(helpers.keep_memory, 20 << 20).result(timeout=60)
            return any("memory grew" in r.getMessage() for r in _records(caplog))

        assert helpers.wait_until(grown, timeout=60, interval=0.2)
    finally:
        executor.shutdown()


def test_resizes_and_shutdowns_are_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="loky")
    executor = get_reusable_executor(max_workers=1)
    executor.submit(helpers.square, 2).result(timeout=60)
    get_reusable_executor(max_workers=2)
    executor.shutdown()
    messages = [r.getMessage() for r in _records(caplog)]
    assert "loky executor resized from 1 to 2 workers" in messages
    assert any(m.startswith("loky executor shutting down") for m in messages)


CRASH_SCRIPT = """
import logging, sys
from loky import ProcessPoolExecutor
import helpers

if sys.argv[1] == "mp":
    import multiprocessing.util
    multiprocessing.util.log_to_stderr(logging.DEBUG)
with ProcessPoolExecutor(max_workers=1) as executor:
    try:
        executor.submit(helpers.exit_with, 5).result(timeout=60)
    except Exception:
        pass
    executor.submit(abs, 1).result(timeout=60)
print("done")
"""


@pytest.mark.parametrize("how", ["silent", "mp"])
def test_silent_by_default_and_shown_by_log_to_stderr(tmp_path, how):
    import os

    tests_dir = os.path.dirname(helpers.__file__)
    source = f"import sys; sys.argv.append({how!r})\n" + CRASH_SCRIPT
    result = helpers.run_script(tmp_path, source, timeout=90, env={"PYTHONPATH": tests_dir})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    if how == "silent":
        assert "loky" not in result.stderr, result.stderr
    else:
        assert "died with status {EXIT(5)}" in result.stderr, result.stderr


def test_recycling_for_memory_growth_is_one_warning_per_process(tmp_path):
    # Two recycles, one UserWarning on stderr (Python's default warning filter).
    result = helpers.run_script(
        tmp_path,
        """
        import os
        from loky import ProcessPoolExecutor

        def keep(nbytes):
            os.__dict__.setdefault("_kept", []).append(bytearray(nbytes))
            return os.getpid()

        if __name__ == "__main__":
            with ProcessPoolExecutor(
                max_workers=1,
                env={"LOKY_MAX_MEMORY_LEAK_SIZE": str(10 << 20)},
            ) as executor:
                pids = []
                while len(set(pids)) < 3:  # the worker checks itself once a second
                    pids.append(executor.submit(keep, 20 << 20).result(timeout=60))
            print("recycled", len(set(pids)) - 1)
        """,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    assert "recycled 2" in result.stdout
    assert result.stderr.count("UserWarning") == 1, result.stderr
    assert "memory grew" in result.stderr and "memory leak" in result.stderr
