"""Issue 3: a worker that dies fails only the task it was running; the pool heals."""

import concurrent.futures
import os
import signal
import sys
import time

import pytest

from loky.process_executor import BrokenProcessPool, TerminatedWorkerError

import helpers

pytestmark = pytest.mark.timeout(60)


def check_terminated_error(exc, status):
    """`exc` is loky's TerminatedWorkerError naming `status`, e.g. "{SIGSEGV(-11)}"."""
    assert type(exc) is TerminatedWorkerError, repr(exc)
    assert isinstance(exc, BrokenProcessPool)
    assert isinstance(exc, concurrent.futures.process.BrokenProcessPool)
    message = str(exc)
    assert status in message, message
    # Says what happened and what the likely causes are.
    assert "terminated" in message
    assert "segmentation fault" in message
    assert "memory" in message


def wait_for_running(path, timeout=30):
    """Wait until a task wrote its worker's pid to `path`; return that pid."""
    assert helpers.wait_until(lambda: path.exists() and path.read_text().strip(), timeout)
    return int(path.read_text().split()[0])


SIGNALLED = pytest.mark.posix_only("a worker ended by a POSIX signal")
DEATHS = [
    pytest.param(helpers.segfault, (), helpers.SEGFAULT_STATUS, id="segfault"),
    pytest.param(helpers.exit_with, (1,), "{EXIT(1)}", id="exit1"),
    pytest.param(helpers.exit_with, (3,), "{EXIT(3)}", id="exit3"),
    pytest.param(helpers.exit_with, (0,), "{EXIT(0)}", id="exit0"),
    pytest.param(
        helpers.kill_self, (helpers.KILL_SIGNAL,), "{SIGKILL(-9)}", id="sigkill", marks=SIGNALLED
    ),
    pytest.param(
        helpers.kill_self, (signal.SIGTERM,), "{SIGTERM(-15)}", id="sigterm", marks=SIGNALLED
    ),
    pytest.param(
        helpers.kill_self, (signal.SIGABRT,), "{SIGABRT(-6)}", id="sigabrt", marks=SIGNALLED
    ),
]


@pytest.mark.parametrize("fn, args, status", DEATHS)
def test_task_killing_its_worker(executor_factory, fn, args, status):
    executor = executor_factory(max_workers=2)
    others = [executor.submit(helpers.sleep_and_return, 0.3, i) for i in range(4)]
    doomed = executor.submit(fn, *args)
    check_terminated_error(doomed.exception(timeout=30), status)
    # The other tasks complete normally.
    assert [f.result(timeout=30) for f in others] == [0, 1, 2, 3]
    # The executor still works, on the full number of workers.
    assert list(executor.map(helpers.square, range(10))) == [x * x for x in range(10)]
    assert len(helpers.pids_of_all_workers(executor, 2)) == 2


@pytest.mark.posix_only("workers forked by the template: Windows has no fork()")
@pytest.mark.parametrize("fn, args, status", DEATHS)
def test_a_worker_forked_by_the_template_dying_names_its_exit_status(
    executor_factory, fn, args, status
):
    # Such a worker is the template's child: the template reaps it and reports how it
    # ended. Until the template is ready, replacements are exec'd: the task dies only
    # on a forked worker, so submit it until it does.
    executor = executor_factory(max_workers=1, max_tasks_per_child=1)
    deadline = time.monotonic() + 30
    while (exc := executor.submit(helpers.when_forked, os.getpid(), fn, *args).exception(
        timeout=30
    )) is None:
        assert time.monotonic() < deadline, "no worker was forked by the template"
    check_terminated_error(exc, status)
    assert executor.submit(helpers.square, 3).result(timeout=30) == 9


@pytest.mark.parametrize(
    "signum, status",
    [
        # (os.kill ends a Windows process with the signal's number as its exit code.)
        pytest.param(
            signal.SIGTERM,
            "{EXIT(15)}" if sys.platform == "win32" else "{SIGTERM(-15)}",
            id="SIGTERM",
        ),
        pytest.param(helpers.KILL_SIGNAL, "{SIGKILL(-9)}", id="SIGKILL", marks=SIGNALLED),
    ],
)
def test_worker_killed_from_outside_while_running(executor_factory, tmp_path, signum, status):
    # As from `kill` or the OOM killer.
    executor = executor_factory(max_workers=2)
    path = tmp_path / "running"
    victim_future = executor.submit(helpers.pid_then_sleep, path, 30)
    victim = wait_for_running(path)
    bystander = executor.submit(helpers.sleep_and_return, 0.5, "bystander")
    os.kill(victim, signum)
    start = time.monotonic()
    check_terminated_error(victim_future.exception(timeout=30), status)
    # Detection is prompt (generous bound: the task itself would sleep for 30 s).
    assert time.monotonic() - start < 10
    assert str(victim) in str(victim_future.exception())
    assert bystander.result(timeout=30) == "bystander"
    assert helpers.wait_until(lambda: victim not in executor._worker_pids(), timeout=10)
    assert executor.submit(helpers.square, 12).result(timeout=30) == 144
    assert executor.submit(helpers.get_pid).result(timeout=30) != victim


def test_idle_worker_killed_from_outside_is_replaced(executor_factory):
    executor = executor_factory(max_workers=1)
    victim = executor.submit(helpers.get_pid).result(timeout=30)
    os.kill(victim, helpers.KILL_SIGNAL)
    assert helpers.wait_pids_gone([victim], timeout=10) == []
    # Nothing was running: no future fails, and the next task runs on a new worker.
    futures = [executor.submit(helpers.get_pid) for _ in range(5)]
    pids = {f.result(timeout=30) for f in futures}
    assert victim not in pids and len(pids) == 1


def test_tasks_sent_to_a_worker_dying_idle_run_elsewhere(executor_factory):
    # A task may reach the socket of a worker that has just died while idle, before
    # the pool sees the death: it never started, so it must run on another worker
    # instead of failing with the dead worker's TerminatedWorkerError.
    executor = executor_factory(max_workers=1)
    for _ in range(20):
        victim = executor.submit(helpers.get_pid).result(timeout=30)
        os.kill(victim, helpers.KILL_SIGNAL)
        futures = [executor.submit(helpers.get_pid) for _ in range(3)]
        pids = {f.result(timeout=30) for f in futures}
        assert victim not in pids


def test_many_crashes_in_a_row(executor_factory):
    executor = executor_factory(max_workers=2)
    doomed = [executor.submit(helpers.segfault) for _ in range(6)]
    doomed += [executor.submit(helpers.exit_with, 5) for _ in range(6)]
    for future in doomed[:6]:
        check_terminated_error(future.exception(timeout=60), helpers.SEGFAULT_STATUS)
    for future in doomed[6:]:
        check_terminated_error(future.exception(timeout=60), "{EXIT(5)}")
    assert executor.submit(helpers.square, 4).result(timeout=30) == 16
    # Replacements do not pile up beyond max_workers.
    assert len(executor._worker_pids()) <= 2


def test_the_error_names_the_dead_workers_pid_and_exit_code(executor_factory):
    # As much as CPython 3.15's own BrokenProcessPool says ("Process <pid> terminated
    # abruptly with exit code <code>").
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    with pytest.raises(TerminatedWorkerError) as info:
        executor.submit(helpers.exit_with, 7).result(timeout=30)
    assert f"worker pid {pid}" in str(info.value) and "EXIT(7)" in str(info.value)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_crash_during_map_raises_when_iterating(executor_factory, chunksize):
    executor = executor_factory(max_workers=2)

    def maybe_crash(x):
        if x == 3:
            os._exit(7)
        return x

    # With chunks of 3, the crash takes items 3 to 5 with it; 0 to 2 are fine.
    results = executor.map(maybe_crash, range(9), chunksize=chunksize)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(TerminatedWorkerError, match=r"\{EXIT\(7\)\}"):
        next(results)
    assert list(executor.map(helpers.square, range(4))) == [0, 1, 4, 9]


def test_crash_fails_only_the_crashing_task_when_tasks_are_batched(executor_factory, tmp_path):
    # One worker and many tiny tasks: the pool sends them in batches, so tasks finish
    # on the worker before the crashing one and others are queued behind it. Only the
    # crashing task may fail; the ones before it keep their results, the ones after it
    # run on the replacement worker, and the crashing task runs exactly once.
    executor = executor_factory(max_workers=1)
    assert list(executor.map(helpers.square, range(200))) == [x * x for x in range(200)]
    record = tmp_path / "crashes"
    before = [executor.submit(helpers.square, i) for i in range(300)]
    doomed = executor.submit(helpers.segfault, str(record))
    after = [executor.submit(helpers.square, i) for i in range(300)]
    check_terminated_error(doomed.exception(timeout=60), helpers.SEGFAULT_STATUS)
    failed = [
        i
        for i, f in enumerate(before + after)
        if f.exception(timeout=60) is not None
    ]
    assert failed == [], f"innocent tasks failed: {failed}"
    assert [f.result() for f in before] == [i * i for i in range(300)]
    assert [f.result() for f in after] == [i * i for i in range(300)]
    runs = record.read_text().split()
    assert len(runs) == 1, f"the crashing task ran {len(runs)} times (pids {runs})"


def test_queued_tasks_of_a_dead_worker_run_elsewhere(executor_factory):
    # Single worker: whatever was queued behind the crash must run on its replacement.
    executor = executor_factory(max_workers=1)
    first_pid = executor.submit(helpers.get_pid).result(timeout=30)
    doomed = executor.submit(helpers.exit_with, 2)
    queued = [executor.submit(helpers.get_pid) for _ in range(20)]
    check_terminated_error(doomed.exception(timeout=30), "{EXIT(2)}")
    pids = {f.result(timeout=30) for f in queued}
    assert first_pid not in pids


SEGFAULT_SCRIPT = """
import sys
from loky import ProcessPoolExecutor
from loky.process_executor import TerminatedWorkerError

def crash_in_a_named_function():
    import ctypes, faulthandler
    if sys.platform == "win32":
        faulthandler._read_null()  # ctypes would catch the fault there
    ctypes.string_at(0)

executor = ProcessPoolExecutor(max_workers=1)
future = executor.submit(crash_in_a_named_function)
try:
    future.result(timeout=60)
except TerminatedWorkerError as exc:
    print("TerminatedWorkerError:", exc, flush=True)
print("after", executor.submit(pow, 2, 10).result(timeout=60), flush=True)
executor.shutdown()
"""


@pytest.mark.timeout(90)
def test_segfault_prints_the_worker_python_traceback(tmp_path):
    result = helpers.run_script(tmp_path, SEGFAULT_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert helpers.SEGFAULT_STATUS in result.stdout
    assert "after 1024" in result.stdout
    # faulthandler's report from the worker, on the parent's stderr.
    fault = "access violation" if sys.platform == "win32" else "Segmentation fault"
    assert fault in result.stderr, result.stderr
    assert "crash_in_a_named_function" in result.stderr, result.stderr
    assert "script.py" in result.stderr, result.stderr


@pytest.mark.timeout(90)
def test_faulthandler_respects_user_setting(tmp_path):
    # PYTHONFAULTHANDLER set by the user decides (here: on, via the environment).
    result = helpers.run_script(tmp_path, SEGFAULT_SCRIPT, env={"PYTHONFAULTHANDLER": "1"})
    assert result.returncode == 0, result.stderr
    assert helpers.SEGFAULT_STATUS in result.stdout
    assert "crash_in_a_named_function" in result.stderr


def test_pool_recovers_when_its_helper_processes_are_killed(executor_factory):
    # The OOM killer may pick any process of the pool, not only a worker: whatever
    # else the executor started (e.g. a process that forks replacements) is killed
    # here, then a worker dies, and the pool must still replace it and run tasks.
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    executor = executor_factory(max_workers=2)
    assert len(helpers.pids_of_all_workers(executor, 2)) == 2
    workers = set(executor._worker_pids())
    extra = [
        p for p in psutil.Process().children(recursive=True)
        if p.pid not in before and p.pid not in workers
    ]
    for proc in extra:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(extra, timeout=5)
    check_terminated_error(
        executor.submit(helpers.exit_with, 4).exception(timeout=30), "{EXIT(4)}"
    )
    assert len(helpers.pids_of_all_workers(executor, 2)) == 2
    assert list(executor.map(helpers.square, range(5))) == [0, 1, 4, 9, 16]


RAISING_SCRIPT = """
from loky import ProcessPoolExecutor

def fail_in_a_named_function():
    raise ValueError("from the task")

with ProcessPoolExecutor(max_workers=1) as executor:
    try:
        executor.submit(fail_in_a_named_function).result(timeout=60)
    except ValueError as exc:
        print(exc.__cause__)
"""


@pytest.mark.timeout(90)
def test_worker_traceback_of_a_main_function_names_the_users_file_and_line(tmp_path):
    # Functions defined in the script travel by value: their code must keep its file
    # name, so that the traceback points at the user's file, line and source.
    result = helpers.run_script(tmp_path, RAISING_SCRIPT)
    assert result.returncode == 0, result.stderr
    expected = f'File "{tmp_path / "script.py"}", line 5, in fail_in_a_named_function'
    assert expected in result.stdout, result.stdout
    assert 'raise ValueError("from the task")' in result.stdout, result.stdout
