"""Lifetimes: when the parent dies, its workers and every process they started are
gone within a second; the worker's channel is never inherited by what a task starts."""

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import helpers

pytestmark = pytest.mark.timeout(120)

GRANDCHILD_PARENT = """
import json, os, sys, time
from loky import ProcessPoolExecutor
import helpers

executor = ProcessPoolExecutor(max_workers=2)
new_session = sys.argv[1] == "new-session"
paths = [f"{sys.argv[2]}.{i}" for i in range(2)]
running = [executor.submit(helpers.start_grandchild_and_sleep, p, new_session) for p in paths]
pairs = []
for path in paths:
    assert helpers.wait_until(lambda: os.path.exists(path), 60)
    pairs.append([int(x) for x in open(path).read().split()])
print(json.dumps(pairs), flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("session", ["same-session", "new-session"])
def test_processes_tasks_started_die_with_the_parent(tmp_path, session):
    script = tmp_path / "parent.py"
    script.write_text(GRANDCHILD_PARENT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(helpers.__file__))
    proc = subprocess.Popen(
        [sys.executable, str(script), session, str(tmp_path / "pids")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 90)
        assert ready, "the parent script printed nothing"
        pairs = json.loads(proc.stdout.readline())
        everything = [pid for pair in pairs for pid in pair]
        assert not any(helpers.pid_gone(pid) for pid in everything)
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=30)
        # Within a second of the parent's death (with room for a loaded machine to
        # report it): workers and the `sleep` processes their tasks started.
        alive = helpers.wait_pids_gone(everything, timeout=5)
        assert alive == [], f"{alive} outlived the parent"
        assert time.monotonic() - killed_at < 5
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def channel_identity():
    """What the worker's channel (descriptor 3) is, as /proc names it."""
    return os.readlink("/proc/self/fd/3")


LISTER = """
import os
names = []
for fd in os.listdir("/proc/self/fd"):
    try:
        names.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass  # the descriptor listdir itself used
print("|".join(names))
"""


def descriptors_of_a_started_process(how, tmp):
    """The descriptors a process started by this task holds, as /proc names them."""
    lister = os.path.join(tmp, "lister.py")
    with open(lister, "w") as f:
        f.write(LISTER)
    if how == "subprocess":
        out = subprocess.run(
            [sys.executable, lister], close_fds=False, capture_output=True, text=True
        ).stdout
    else:
        listing = os.path.join(tmp, "listing")
        os.system(f"{sys.executable} {lister} > {listing}")
        with open(listing) as f:
            out = f.read()
    return out.strip().split("|")


@pytest.mark.parametrize("how", ["subprocess", "os.system"])
def test_processes_a_task_starts_never_inherit_the_workers_channel(
    executor_factory, how, tmp_path
):
    executor = executor_factory(max_workers=1)
    channel = executor.submit(channel_identity).result(timeout=60)
    assert channel.startswith("socket:")
    held = executor.submit(descriptors_of_a_started_process, how, str(tmp_path))
    held = held.result(timeout=60)
    assert len(held) >= 3, held  # stdin, stdout, stderr at least
    assert channel not in held
