"""A process created by fork() owns nothing of its parent's pool: not its shared
segments, not its workers' channels, not its task ids. It can never disturb the
parent, and nothing it does with an inherited executor hangs."""

import os
import pickle
import signal
import sys
import threading

import numpy as np
import pytest

import loky
from loky import get_reusable_executor

import helpers
import transport_tasks as tasks

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.posix_only("os.fork(): Windows has no fork()"),
]

BIG = 1 << 20  # float64 items: 8 MiB, sent through a shared segment


def _in_child(body):
    """Run `body()` in a child made by os.fork(); return what it returned (pickled
    through a pipe), or raise what it raised. The child exits with os._exit."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            outcome = ("ok", body())
        except BaseException as exc:  # reported to the parent
            outcome = ("raised", repr(exc))
        with os.fdopen(write, "wb") as out:
            pickle.dump(outcome, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return pickle.loads(data)


def test_a_child_dropping_its_copy_of_a_result_never_frees_the_parents(executor_factory):
    executor = executor_factory(max_workers=1)
    held = executor.submit(tasks.filled, BIG, 1.0).result()
    pid = os.fork()
    if pid == 0:
        # The child's copy goes; it must not mark the segment free for reuse.
        import gc

        del held
        gc.collect()
        os._exit(0)
    os.waitpid(pid, 0)
    # Results the worker sends next must land elsewhere than the parent's array.
    others = [executor.submit(tasks.filled, BIG, 2.0).result() for _ in range(3)]
    assert float(held.sum()) == BIG * 1.0, "the parent's array was overwritten"
    assert all(float(o.sum()) == BIG * 2.0 for o in others)


FORK_THEN_EXIT_SCRIPT = """
import os, sys
import numpy as np
from loky import get_reusable_executor

def filled(value):
    return np.full(1 << 20, value)

executor = get_reusable_executor(max_workers=1)
held = executor.submit(filled, 1.0).result()
busy = executor.submit(pow, 2, 5)
pid = os.fork()
if pid == 0:
    # A normal exit: the interpreter tears down, atexit runs (and with it the
    # executor's exit handler), every object is released.
    del held
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
others = [executor.submit(filled, 2.0).result() for _ in range(3)]
print("parent", float(held.sum()) == float(1 << 20), busy.result())
"""


def test_a_child_exiting_normally_leaves_the_parent_alone(tmp_path):
    result = helpers.run_script(tmp_path, FORK_THEN_EXIT_SCRIPT, timeout=100)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["child 0", "parent True 32"]


def test_a_child_keeps_what_it_saw_at_fork_whatever_the_parent_does(executor_factory):
    executor = executor_factory(max_workers=1)
    held = executor.submit(tasks.filled, BIG, 1.0).result()
    read, write = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.read(go_r, 1)  # the parent has changed and released its array meanwhile
        os.write(write, str(float(held.sum())).encode())
        os._exit(0)
    os.close(write)
    held[:] = 5.0  # in place: fork gives the child a copy, not a shared view
    del held  # released: the worker may write its next result there
    executor.submit(tasks.filled, BIG, 7.0).result()
    os.write(go_w, b"x")
    try:
        assert os.read(read, 64).decode() == str(float(BIG * 1.0))
    finally:
        os.waitpid(pid, 0)
        for fd in (read, go_r, go_w):
            os.close(fd)


def test_a_child_using_an_inherited_executor_gets_a_clear_error_and_the_parent_nothing(
    executor_factory,
):
    executor = executor_factory(max_workers=2)
    futures = [executor.submit(helpers.square, i) for i in range(200)]
    workers = set(executor._worker_pids())

    def submit_in_child():
        try:
            executor.submit(helpers.square, 3)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    for _ in range(10):
        message = _in_child(submit_in_child)[1]
        assert "was forked from it and cannot use" in message, message
        assert str(os.getpid()) in message
        futures += [executor.submit(helpers.square, i) for i in range(200)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(200)] * 11
    assert all(not helpers.pid_gone(pid) for pid in workers), "no parent worker was killed"


def test_a_child_waiting_on_an_inherited_future_gets_an_error_not_a_hang(executor_factory):
    executor = executor_factory(max_workers=1)
    slow = executor.submit(helpers.sleep_and_return, 30, "late")

    def wait_in_child():
        try:
            return slow.result(timeout=60)
        except RuntimeError as exc:
            return str(exc)

    assert "was forked from it" in _in_child(wait_in_child)[1]
    slow.cancel()


@pytest.mark.parametrize("how", ["shutdown", "reusable"])
def test_a_child_never_hangs_on_an_inherited_executor(how):
    executor = get_reusable_executor(max_workers=2, timeout=30)
    assert executor.submit(helpers.square, 4).result(timeout=60) == 16
    busy = executor.submit(helpers.sleep_and_return, 2, "parent's")

    def in_child():
        if how == "shutdown":
            executor.shutdown(wait=True)
            return "returned"
        # Other arguments: the inherited executor is replaced by the child's own.
        own = get_reusable_executor(max_workers=1, timeout=5)
        assert own is not executor
        pid = own.submit(os.getpid).result(timeout=60)
        own.shutdown(wait=True)
        return "own pool" if pid != os.getpid() else "ran in the child itself"

    expected = "returned" if how == "shutdown" else "own pool"
    assert _in_child(in_child) == ("ok", expected)
    assert busy.result(timeout=60) == "parent's"
    assert get_reusable_executor(max_workers=2, timeout=30) is executor


class _HeldWhilePickled:
    """Pickling it holds the submitting thread, inside the executor's submit lock,
    until `release` is set."""

    def __init__(self, entered, release):
        self.entered, self.release = entered, release

    def __reduce__(self):
        self.entered.set()
        self.release.wait(60)
        return (int, (7,))


@pytest.mark.parametrize("how", ["submit", "reusable"])
def test_a_child_forked_while_another_thread_submits_never_hangs(how):
    # The submitting thread does not exist in the child: a lock it held at the fork
    # must not stay held there.
    executor = get_reusable_executor(max_workers=1, timeout=30)
    assert executor.submit(helpers.square, 2).result(timeout=60) == 4
    entered, release = threading.Event(), threading.Event()
    held = _HeldWhilePickled(entered, release)
    submitting = threading.Thread(target=executor.submit, args=(helpers.identity, held))
    submitting.start()
    try:
        assert entered.wait(30)

        def in_child():
            signal.alarm(10)  # a hang ends the child, and the test fails
            if how == "submit":
                try:
                    executor.submit(helpers.square, 3)
                except RuntimeError as exc:
                    return "refused" if "was forked from it" in str(exc) else str(exc)
                return "accepted"
            own = get_reusable_executor(max_workers=1, timeout=5)
            result = own.submit(helpers.square, 5).result(timeout=60)
            own.shutdown(wait=True)
            return result

        assert _in_child(in_child) == ("ok", "refused" if how == "submit" else 25)
    finally:
        release.set()
        submitting.join(timeout=60)


def test_multiprocessing_fork_children_still_use_joblib(tmp_path):
    result = helpers.run_script(
        tmp_path,
        """
        import multiprocessing as mp
        from loky import get_reusable_executor

        def work(_):
            # A fresh pool in the fork child, as joblib would make.
            executor = get_reusable_executor(max_workers=1)
            return executor.submit(abs, -3).result(timeout=60)

        if __name__ == "__main__":
            get_reusable_executor(max_workers=2).submit(abs, -1).result(timeout=60)
            with mp.get_context("fork").Pool(2) as pool:
                print(pool.map(work, range(4)))
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[3, 3, 3, 3]"


def test_module_is_importable_in_a_fork_child():
    assert _in_child(lambda: loky.__version__) == ("ok", loky.__version__)


FORK_WHILE_BUSY = """
import os, sys, threading, time
from loky import ProcessPoolExecutor, _core
import helpers

executor = ProcessPoolExecutor(max_workers=2)
stop = threading.Event()

def feed():
    while not stop.is_set():
        for future in [executor.submit(helpers.square, i) for i in range(200)]:
            future.result(timeout=60)

feeder = threading.Thread(target=feed)
feeder.start()
hung = None
for i in range(1000):
    pid = os.fork()
    if pid == 0:
        _core.facilities()  # any call into the core
        os._exit(0)
    deadline = time.monotonic() + 10
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            hung = i
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.001)
    if hung is not None:
        break
stop.set()
feeder.join()
executor.shutdown()
print("hung at fork", hung)
"""


def test_a_child_forked_while_the_pool_works_can_call_into_the_core(tmp_path):
    # The manager thread lets go of every task it sent; had it released their Python
    # objects itself, a fork at that moment left the child deadlocked on its first
    # call into the core (PyO3's deferred-release lock, held by a thread the child
    # does not have). Old code: a hang within a few hundred forks.
    result = helpers.run_script(
        tmp_path, FORK_WHILE_BUSY, timeout=110, env={"PYTHONPATH": os.path.dirname(helpers.__file__)}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "hung at fork None"
