"""Processes that real programs create: a daemon that ignores SIGCHLD, a service with
its stdio closed, a container with a small /dev/shm, low limits on descriptors and
processes, and tasks that misbehave on the worker's own channel. None may hang the
pool, crash the user's process, or blame the wrong task; errors name the real cause.

Process-wide conditions are set up in a script run in a fresh interpreter, so that
they do not leak into the rest of the suite. Each case runs on the fast paths and on
the portable POSIX path (LOKY_PORTABLE=1) where the two differ.
"""

import os
import shutil
import subprocess
import sys

import pytest

from loky.process_executor import BrokenProcessPool, TerminatedWorkerError

import helpers

pytestmark = pytest.mark.timeout(120)

PATHS = [pytest.param({}, id="fast"), pytest.param({"LOKY_PORTABLE": "1"}, id="portable")]


def _lines(result):
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


# -- SIGCHLD ignored -------------------------------------------------------------------

SIGCHLD_IGNORED = """
import os, signal, sys, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
from loky import get_reusable_executor
import loky

tasks_per_child = None if sys.argv[1:] == [] else int(sys.argv[1])
ex = get_reusable_executor(max_workers=2, max_tasks_per_child=tasks_per_child)
print("map:", list(ex.map(abs, range(-3, 0))), flush=True)

# A worker killed from outside while it runs a task: the task fails, and says why
# no status is known (a worker forked by the template is the template's child: the
# template reaps it and reports its true status).
def report_pid_then_sleep(path):
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {os.getppid()}")
    os.rename(path + ".tmp", path)
    time.sleep(60)

future = ex.submit(report_pid_then_sleep, "running")
deadline = time.monotonic() + 30
while not os.path.exists("running") and time.monotonic() < deadline:
    time.sleep(0.01)
with open("running") as f:
    pid, parent = map(int, f.read().split())
os.kill(pid, signal.SIGKILL)
error = future.exception(timeout=30)
print("error:", type(error).__name__, str(error).replace(chr(10), " "), flush=True)
print("forked by the template:", parent != os.getpid(), flush=True)

# No spin while it sits: the manager sleeps.
cpu = time.process_time()
time.sleep(0.5)
print("cpu while idle:", round(time.process_time() - cpu, 3), flush=True)
stats = ex.worker_stats()
print("dead worker listed:", any(s.pid == pid for s in stats), flush=True)
print("after:", ex.submit(pow, 2, 5).result(timeout=30), flush=True)

# loky's Process: join() returns and the status is the unknown one.
p = loky.backend.get_context("loky").Process(target=time.sleep, args=(0.01,))
p.start()
p.join(timeout=30)
print("process:", p.is_alive(), p.exitcode, flush=True)

started = time.monotonic()
ex.shutdown(wait=True)
print("shutdown took:", round(time.monotonic() - started, 2), flush=True)
"""


@pytest.mark.posix_only("ignores SIGCHLD, a POSIX signal")
@pytest.mark.parametrize("env", PATHS)
@pytest.mark.parametrize("tasks_per_child", [None, 1], ids=["exec", "template"])
def test_sigchld_ignored_deaths_are_seen_and_shutdown_returns(tmp_path, env, tasks_per_child):
    args = [] if tasks_per_child is None else [str(tasks_per_child)]
    script = tmp_path / "sigchld.py"
    script.write_text(SIGCHLD_IGNORED)
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **env},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    out = _lines(result)
    assert out["map"] == "[3, 2, 1]"
    assert out["error"].startswith("TerminatedWorkerError"), out["error"]
    if out["forked by the template"] == "True":
        assert "SIGKILL(-9)" in out["error"], out["error"]
    else:
        assert "SIGCHLD" in out["error"], out["error"]
    assert float(out["cpu while idle"]) < 0.25, out
    assert out["dead worker listed"] == "False"
    assert out["after"] == "32"
    assert out["process"] == "False 255"
    assert float(out["shutdown took"]) < 10, out


# -- stdio closed ------------------------------------------------------------------

STDIO_CLOSED = """
import os, sys
from loky import get_reusable_executor
import helpers

def chatty(x):
    print("out", x)
    print("err", x, file=sys.stderr)
    return x * 2

ex = get_reusable_executor(max_workers=2)
with open("results.txt", "w") as out:
    out.write(f"map: {list(ex.map(chatty, range(4)))}\\n")
    error = ex.submit(helpers.segfault).exception(timeout=60)
    out.write(f"crash: {type(error).__name__}\\n")
    out.write(f"after: {ex.submit(pow, 3, 2).result(timeout=60)}\\n")
"""


@pytest.mark.posix_only("closes the parent's stdio with sh redirections")
@pytest.mark.parametrize("closed", ["2>&-", ">&-", "<&- >&- 2>&-"])
def test_workers_run_when_the_parent_has_its_stdio_closed(tmp_path, closed):
    env = {"PYTHONPATH": os.path.dirname(__file__)}
    result = helpers.run_script(
        tmp_path, STDIO_CLOSED, env=env, shell_prefix=f'exec "$@" {closed}', timeout=90
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = dict(line.split(": ", 1) for line in (tmp_path / "results.txt").read_text().splitlines())
    assert out == {"map": "[0, 2, 4, 6]", "crash": "TerminatedWorkerError", "after": "9"}


# -- a full /dev/shm ---------------------------------------------------------------

SHM_FULL = """
import numpy as np
from loky import get_reusable_executor

def total(x):
    return int(x.sum())

def ones(n):
    return np.ones(n, dtype=np.uint8)

ex = get_reusable_executor(max_workers=1)
a = np.arange(8 << 20, dtype=np.int64)  # 64 MiB, more than /dev/shm holds
print("send:", ex.submit(total, a).result(timeout=60) == int(a.sum()), flush=True)
r = ex.submit(ones, 64 << 20).result(timeout=60)
print("receive:", r.shape[0] == 64 << 20 and int(r.sum()) == 64 << 20, flush=True)
"""


def _can_mount_a_small_shm():
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.posix_only("mounts a small /dev/shm (Windows sections take no file system)")
@pytest.mark.skipif(not _can_mount_a_small_shm(), reason="needs root and unshare -m")
@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"LOKY_PORTABLE": "1"}, id="portable"),
        pytest.param({"LOKY_REFUSE_FAST_PATHS": "memfd"}, id="memfd-refused"),
    ],
)
def test_large_buffers_travel_when_dev_shm_is_too_small(tmp_path, env):
    pytest.importorskip("numpy")
    result = helpers.run_script(
        tmp_path,
        SHM_FULL,
        env=env,
        # A mount namespace of its own, whose /dev/shm holds 16 MiB.
        shell_prefix='exec unshare -m sh -c "mount -t tmpfs -o size=16m tmpfs /dev/shm '
        '&& exec \\"\\$0\\" \\"\\$@\\"" "$@"',
        timeout=90,
    )
    assert result.returncode == 0, f"status {result.returncode}: {result.stderr[-3000:]}"
    assert _lines(result) == {"send": "True", "receive": "True"}


# -- descriptor and process limits -------------------------------------------------

LOW_DESCRIPTOR_LIMIT = """
import os, resource, sys
from loky import ProcessPoolExecutor
extra = int(sys.argv[1])
open_now = len(os.listdir("/proc/self/fd")) - 1
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + extra, hard))
try:
    with ProcessPoolExecutor(max_workers=2) as ex:
        print("result:", list(ex.map(abs, range(-3, 0))), flush=True)
except Exception as exc:
    print("error:", type(exc).__name__, exc, flush=True)
"""


@pytest.mark.posix_only("lowers RLIMIT_NOFILE; Windows handles have no such limit")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/fd")
@pytest.mark.parametrize("env", PATHS)
def test_a_descriptor_limit_too_low_to_start_is_named(tmp_path, env):
    script = tmp_path / "limit.py"
    script.write_text(LOW_DESCRIPTOR_LIMIT)
    outcomes = []
    for extra in range(1, 9):
        result = subprocess.run(
            [sys.executable, str(script), str(extra)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        out = _lines(result)
        if "result" in out:
            assert out["result"] == "[3, 2, 1]"
            outcomes.append("ran")
            continue
        error = out["error"]
        outcomes.append("refused")
        assert error.startswith("BrokenProcessPool") or error.startswith("OSError"), error
        assert "ulimit -n" in error and "file descriptor" in error, error
        assert "Invalid argument" not in error
    # The lowest limits leave no room at all; a few more descriptors are enough.
    assert outcomes[0] == "refused" and outcomes[-1] == "ran", outcomes


NPROC_LIMIT = """
import os, resource, sys
from loky import ProcessPoolExecutor
import psutil
uid = os.getuid()
threads = sum(p.num_threads() for p in psutil.process_iter() if p.uids().real == uid)
extra = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NPROC, (threads + extra, threads + extra))
try:
    with ProcessPoolExecutor(max_workers=2) as ex:
        print("result:", list(ex.map(abs, range(-3, 0))), flush=True)
except Exception as exc:
    print("error:", type(exc).__name__, str(exc).replace(chr(10), " "), flush=True)
"""


def _runs_as_nobody():
    """Whether a process of user `nobody` can run this interpreter with this
    package (the limit on processes does not apply to root)."""
    if not hasattr(os, "setuid") or os.geteuid() != 0:
        return False
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import loky, psutil"],
            user="nobody",
            capture_output=True,
            timeout=60,
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError, KeyError):
        return False
    return probe.returncode == 0


@pytest.mark.posix_only("lowers RLIMIT_NPROC as user nobody")
@pytest.mark.skipif(not _runs_as_nobody(), reason="needs root and an interpreter `nobody` can run")
def test_a_process_limit_too_low_to_start_is_named(tmp_path):
    script = tmp_path / "nproc.py"
    script.write_text(NPROC_LIMIT)
    os.chmod(tmp_path, 0o755)
    os.chmod(script, 0o644)
    refused = []
    for extra in range(0, 8):
        result = subprocess.run(
            [sys.executable, str(script), str(extra)],
            user="nobody",
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        out = _lines(result)
        if "result" in out:
            assert out["result"] == "[3, 2, 1]"
            continue
        refused.append(out["error"])
        assert "ulimit -u" in out["error"], out["error"]
        assert "import loky" not in out["error"], out["error"]
    assert refused, "the lowest limits must refuse"


# -- tasks that misbehave on the worker's channel ------------------------------------

ANNOUNCED = 2 << 30


def write_a_header_and_nothing_more():
    """A frame header announcing 2 GiB on the worker's channel, then no body."""
    helpers.write_to_worker_channel(helpers.raw_result_header(ANNOUNCED))
    return "returned"


def test_a_frame_that_never_completes_ends_its_worker(executor_factory):
    import psutil

    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    me = psutil.Process()
    before = me.memory_info().rss
    future = executor.submit(write_a_header_and_nothing_more)
    # While the frame stalls, the announced length costs this process nothing.
    peak = before
    while not helpers.wait_until(future.done, timeout=0.05):
        peak = max(peak, me.memory_info().rss)
    assert peak - before < ANNOUNCED // 4, (before, peak)
    error = future.exception(timeout=60)
    assert isinstance(error, TerminatedWorkerError), repr(error)
    assert "nothing more" in str(error) and str(pid) in str(error), str(error)
    # The pool heals; the next tasks run on a new worker; shutdown returns.
    assert executor.submit(helpers.square, 7).result(timeout=30) == 49
    assert executor.submit(helpers.get_pid).result(timeout=30) != pid
    executor.shutdown(wait=True)


def fork_and_return_in_both(child_exit=None):
    """os.fork() without exec; the child returns from the task too (or raises
    SystemExit(child_exit)). The parent reports the child's exit status."""
    pid = os.fork()
    if pid == 0:
        if child_exit is not None:
            raise SystemExit(child_exit)
        return "from the child"
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.posix_only("a task calls os.fork(), which Windows does not have")
@pytest.mark.parametrize("child_exit", [None, 3])
def test_a_process_forked_by_a_task_never_speaks_on_the_channel(executor_factory, child_exit):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    for _ in range(7):
        status = executor.submit(fork_and_return_in_both, child_exit).result(timeout=30)
        assert status == (child_exit or 0)
        # The next, innocent tasks run on the same worker.
        assert executor.submit(helpers.square, 5).result(timeout=30) == 25
        assert executor.submit(helpers.get_pid).result(timeout=30) == pid
