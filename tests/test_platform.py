"""The portable POSIX path, and the Linux fast paths falling back to it when refused
(as old kernels and seccomp sandboxes refuse them): the pool works either way. On
Windows there is one way per facility, and LOKY_PORTABLE changes nothing."""

import json
import os
import sys

import pytest

from loky import _core

import helpers

pytestmark = pytest.mark.timeout(120)

FAST_PATHS = ["eventfd", "pidfd", "memfd", "mremap"]
# What Windows reports: its one way for each facility.
WINDOWS_WAYS = {
    "channel": "named pipe",
    "wait": "I/O completion port",
    "segments": "paging-file sections",
    "lifetimes": "Job objects",
}

WORKLOAD = """
import json, os, signal, sys
import numpy as np
from loky import ProcessPoolExecutor, _core
import helpers

with ProcessPoolExecutor(max_workers=2) as executor:
    squares = list(executor.map(helpers.square, range(50)))
    big = executor.submit(np.full, 1 << 18, 3.0).result(timeout=60)   # a shared segment
    total = executor.submit(np.sum, big).result(timeout=60)
    try:
        executor.submit(helpers.exit_with, 7).result(timeout=60)   # a crash is seen
        crash = "no error"
    except Exception as exc:
        crash = type(exc).__name__
    after = executor.submit(helpers.square, 12).result(timeout=60)
    timed = executor.schedule(helpers.sleep_and_return, (30, "late"), timeout=0.5)
    try:
        timed = timed.result(timeout=60)
    except TimeoutError as exc:   # the task's deadline, not result()'s own
        timed = "TimeoutError" if "timeout of 0.5 s" in str(exc) else repr(exc)
    # A result received before a fork stays what it was in the child (POSIX).
    fork_ok = None
    if hasattr(os, "fork"):
        pid = os.fork()
        if pid == 0:
            os._exit(0 if float(big.sum()) == 3.0 * (1 << 18) else 1)
        fork_ok = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
print(json.dumps({
    "squares": squares == [i * i for i in range(50)],
    "total": float(total), "crash": crash, "after": after, "timed": timed,
    "fork_ok": fork_ok, "facilities": dict(_core.facilities()),
}))
"""


def run_workload(tmp_path, env):
    tests_dir = os.path.dirname(helpers.__file__)
    result = helpers.run_script(
        tmp_path, WORKLOAD, timeout=110, env={"PYTHONPATH": tests_dir, **env}
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def check_works(report):
    assert report["squares"] is True
    assert report["total"] == 3.0 * (1 << 18)
    assert report["crash"] == "TerminatedWorkerError"
    assert report["after"] == 144
    assert report["timed"] == "TimeoutError"
    assert report["fork_ok"] is (None if sys.platform == "win32" else True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux fast paths")
@pytest.mark.parametrize("refused", FAST_PATHS + [",".join(FAST_PATHS)])
def test_the_pool_works_with_a_fast_path_refused(tmp_path, refused):
    report = run_workload(tmp_path, {"LOKY_REFUSE_FAST_PATHS": refused, "LOKY_PORTABLE": "0"})
    check_works(report)
    for name in refused.split(","):
        if name in report["facilities"]:
            assert report["facilities"][name].startswith("portable"), report
    others = set(FAST_PATHS) - set(refused.split(","))
    assert all(report["facilities"].get(n, "fast") == "fast" for n in others), report


def test_the_pool_works_on_the_forced_portable_path(tmp_path):
    report = run_workload(tmp_path, {"LOKY_PORTABLE": "1"})
    check_works(report)
    used = report["facilities"]
    if sys.platform == "win32":
        assert used == WINDOWS_WAYS, "LOKY_PORTABLE is a no-op on Windows"
        return
    assert set(used) >= {"eventfd", "pidfd", "memfd"}
    assert all(how.startswith("portable") for how in used.values()), used


def test_facilities_are_reported():
    if sys.platform == "win32":
        assert dict(_core.facilities()) == WINDOWS_WAYS
        return
    names = {name for name, _ in _core.facilities()}
    assert names <= set(FAST_PATHS)
    assert all(how == "fast" or how.startswith("portable (") for _, how in _core.facilities())


BLAS_WHILE_STARTING = """
import threading, numpy as np
from loky import ProcessPoolExecutor

stop = False

def blas():
    a = np.random.randn(300, 300)
    while not stop:
        a @ a

threads = [threading.Thread(target=blas) for _ in range(2)]
for t in threads:
    t.start()
for i in range(30):
    with ProcessPoolExecutor(max_workers=2) as executor:
        executor.submit(abs, -1).result(timeout=60)
stop = True
for t in threads:
    t.join()
print("done")
"""


def test_starting_workers_while_threads_run_blas_does_not_deadlock(tmp_path):
    # Workers start with posix_spawn: a fork() from the manager thread would run
    # OpenBLAS's fork handler, which waits for the BLAS threads of a call running in
    # another thread, and the pool would hang for ever.
    pytest.importorskip("numpy")
    result = helpers.run_script(tmp_path, BLAS_WHILE_STARTING, timeout=100)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
