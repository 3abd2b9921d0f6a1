"""Issue 3: a worker whose channel breaks or carries garbage must not wedge the pool or
bring down the parent ("no failure may hang the pool, the caller, or interpreter exit").

A worker talks to the parent on file descriptor 3 (see README; a pipe handle on
Windows). These tasks damage that channel the way a crash in the middle of a write, or
a stray write from native code, would.
"""

import os

import pytest

from loky.process_executor import BrokenProcessPool

import helpers

pytestmark = pytest.mark.timeout(60)


def die_in_the_middle_of_a_frame():
    """As if the worker were killed while writing its result."""
    helpers.write_to_worker_channel(helpers.raw_result_header(1000) + b"x" * 10)
    os._exit(0)


def close_the_channel():
    helpers.close_worker_channel()
    return "closed"


def write_garbage():
    helpers.write_to_worker_channel(b"\xff" * 64)
    return "garbage"


def check_recovers(executor, pid):
    futures = [executor.submit(helpers.get_pid) for _ in range(3)]
    pids = {f.result(timeout=30) for f in futures}
    assert pid not in pids
    assert list(executor.map(helpers.square, range(4))) == [0, 1, 4, 9]


def test_worker_dies_in_the_middle_of_a_frame(executor_factory):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    exc = executor.submit(die_in_the_middle_of_a_frame).exception(timeout=30)
    assert isinstance(exc, BrokenProcessPool), repr(exc)
    assert "{EXIT(0)}" in str(exc)
    check_recovers(executor, pid)


def test_task_closing_the_channel(executor_factory):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    exc = executor.submit(close_the_channel).exception(timeout=30)
    assert isinstance(exc, BrokenProcessPool), repr(exc)
    check_recovers(executor, pid)


def test_garbage_on_the_channel_fails_the_task_instead_of_hanging(executor_factory):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    # Generous bound: a hang is what is tested, not speed.
    exc = executor.submit(write_garbage).exception(timeout=30)
    assert isinstance(exc, BrokenProcessPool), repr(exc)
    check_recovers(executor, pid)


ABSURD_LENGTH_SCRIPT = """
import os, struct, time
from loky import ProcessPoolExecutor
import helpers

def announce_an_absurd_length():
    helpers.write_to_worker_channel(struct.pack("<QQII", 1 << 60, 0, 1, 0))
    time.sleep(1)
    return "absurd"

executor = ProcessPoolExecutor(max_workers=1)
future = executor.submit(announce_an_absurd_length)
try:
    print("result", future.result(timeout=20), flush=True)
except Exception as exc:
    print("error", type(exc).__name__, flush=True)
print("parent alive, then", executor.submit(pow, 2, 4).result(timeout=20), flush=True)
executor.shutdown(kill_workers=True)
"""


@pytest.mark.timeout(90)
def test_absurd_frame_length_does_not_kill_the_parent(tmp_path):
    tests = os.path.dirname(helpers.__file__)
    result = helpers.run_script(
        tmp_path, ABSURD_LENGTH_SCRIPT, timeout=60, env={"PYTHONPATH": tests}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "error" in result.stdout
    assert "parent alive, then 16" in result.stdout
