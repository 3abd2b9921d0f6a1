"""Lifetimes: when the parent dies, its workers and every process they started are
gone within a second; the worker's channel is never inherited by what a task starts."""

import inspect
import json
import os
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
    pairs.append([int(x) for x in helpers.retry_sharing(open, path).read().split()])
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
        line = helpers.readline_within(proc.stdout, 90)
        assert line, "the parent script printed nothing"
        pairs = json.loads(line)
        everything = [pid for pair in pairs for pid in pair]
        assert not any(helpers.pid_gone(pid) for pid in everything)
        proc.kill()  # SIGKILL; on Windows, TerminateProcess
        killed_at = time.monotonic()
        proc.wait(timeout=30)
        # Within a second of the parent's death (with room for a loaded machine to
        # report it): workers and the sleeping processes their tasks started.
        alive = helpers.wait_pids_gone(everything, timeout=5)
        assert alive == [], f"{alive} outlived the parent"
        assert time.monotonic() - killed_at < 5
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def channel_identity():
    """What the worker's channel (descriptor 3) is, as /proc names it."""
    return os.readlink("/proc/self/fd/3")


def open_descriptors(*_):
    """What this process's descriptors are, as /proc names them."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the descriptor listdir itself used
    return names


# The same listing, as a script for processes a task starts.
LISTER = (
    f"import os\n\n{inspect.getsource(open_descriptors)}\n"
    "print('|'.join(open_descriptors()))\n"
)


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


def channel_inheritable():
    if sys.platform == "win32":
        return os.get_handle_inheritable(helpers._worker_channel_handle())
    return os.get_inheritable(helpers.WORKER_CHANNEL_FD)


def test_the_workers_channel_is_not_inheritable(executor_factory):
    # What keeps it from the processes a task starts (on Windows, from those started
    # with every inheritable handle: os.system, close_fds=False).
    executor = executor_factory(max_workers=1)
    assert executor.submit(channel_inheritable).result(timeout=60) is False


@pytest.mark.posix_only("names descriptors through /proc/self/fd")
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


def _report_descriptors(connection):
    connection.send(open_descriptors())


@pytest.mark.posix_only("names descriptors through /proc/self/fd")
@pytest.mark.parametrize("max_tasks_per_child", [None, 1])
def test_inheritable_descriptors_from_outside_reach_no_child(
    executor_factory, max_tasks_per_child
):
    # A pipe this process got without close-on-exec (from whoever started it, or from
    # C code): like multiprocessing's and loky's children, workers (started directly,
    # or forked by the template) and LokyProcesses do not keep it.
    from loky.backend import get_context

    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    stray = os.readlink(f"/proc/self/fd/{write_end}")
    try:
        executor = executor_factory(max_workers=1, max_tasks_per_child=max_tasks_per_child)
        for _ in range(2):  # with max_tasks_per_child=1, the second is a fresh worker
            held = executor.submit(open_descriptors).result(timeout=60)
            assert stray not in held
            assert len(held) >= 3, held
        ctx = get_context("loky")
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_report_descriptors, args=(sender,))
        process.start()
        held = receiver.recv()
        process.join(timeout=60)
        assert process.exitcode == 0
        assert stray not in held
        # What it was handed is still there.
        assert os.readlink(f"/proc/self/fd/{sender.fileno()}") in held
        sender.close()
        receiver.close()
        # Nothing changed in this process.
        assert os.get_inheritable(write_end)
    finally:
        os.close(read_end)
        os.close(write_end)
