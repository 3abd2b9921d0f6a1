"""Issue 3: when the parent dies, its workers follow within a second; no orphans."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import helpers

pytestmark = pytest.mark.timeout(90)

PARENT_SCRIPT = """
import json, os, sys, time
from loky import ProcessPoolExecutor, get_reusable_executor
import helpers

mode, how, marks = sys.argv[1], sys.argv[2], sys.argv[3]
if how == "reusable":
    executor = get_reusable_executor(max_workers=2)
else:
    executor = ProcessPoolExecutor(max_workers=2)
# Both workers are up and known.
pids = sorted(helpers.pids_of_all_workers(executor, 2))
if mode == "replaced":
    # Both workers die and are replaced (respawned workers may start differently).
    for f in [executor.submit(helpers.exit_with, 1) for _ in pids]:
        f.exception(timeout=60)
    new = sorted(helpers.pids_of_all_workers(executor, 2))
    assert not set(new) & set(pids), (pids, new)
    pids = new
if mode in ("busy", "replaced"):
    paths = [os.path.join(marks, f"running-{i}") for i in range(len(pids))]
    running = [executor.submit(helpers.pid_then_sleep, path, 100) for path in paths]
    # Every worker runs a task (each wrote its pid).
    assert sorted(helpers.wait_for_pid(path, timeout=60) for path in paths) == pids
print(json.dumps({"parent": os.getpid(), "workers": pids}), flush=True)
if mode == "exit":
    os._exit(0)  # no cleanup at all
time.sleep(100)
"""


def start_parent(tmp_path, mode, how="plain"):
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(helpers.__file__))
    return subprocess.Popen(
        [sys.executable, str(script), mode, how, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def read_line(proc, timeout):
    line = helpers.readline_within(proc.stdout, timeout)
    if line is None:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the parent script printed nothing within {timeout}s; stderr:\n{err}")
    return line


def check_workers_die_with_parent(proc, kill):
    try:
        info = json.loads(read_line(proc, timeout=60))
        workers = info["workers"]
        assert len(workers) == 2 and proc.pid == info["parent"]
        if kill:
            assert not any(helpers.pid_gone(pid) for pid in workers)
            proc.kill()  # SIGKILL; on Windows, TerminateProcess
        killed_at = time.monotonic()
        proc.wait(timeout=30)
        # The issue asks for every worker to exit within one second of the parent's
        # death (it is immediate: the kernel kills them). The bound is looser so that a
        # busy machine does not make the test flaky; a worker that does not notice its
        # parent's death never exits.
        alive = helpers.wait_pids_gone(workers, timeout=5.0 - (time.monotonic() - killed_at))
        assert alive == [], f"workers {alive} outlived their parent by more than 5 s"
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    return workers


@pytest.mark.parametrize("mode", ["idle", "busy", "replaced"])
def test_sigkilled_parent_takes_its_workers_along(tmp_path, mode):
    proc = start_parent(tmp_path, mode)
    check_workers_die_with_parent(proc, kill=True)
    # (subprocess ends a Windows process with exit code 1.)
    assert proc.returncode == (1 if sys.platform == "win32" else -signal.SIGKILL)


def test_sigkilled_parent_with_reusable_executor(tmp_path):
    proc = start_parent(tmp_path, "busy", how="reusable")
    check_workers_die_with_parent(proc, kill=True)


def test_parent_exiting_without_cleanup(tmp_path):
    # os._exit: no atexit, no shutdown; the workers see it anyway.
    proc = start_parent(tmp_path, "exit")
    check_workers_die_with_parent(proc, kill=False)
    assert proc.returncode == 0
