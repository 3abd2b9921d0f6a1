"""Ctrl-C reaches running tasks as it does with loky: they get KeyboardInterrupt, their
futures fail with it, the workers survive; a script interrupted while it waits exits
promptly, leaving no process behind; a user's own SIGINT handler keeps working."""

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

SCRIPT = """
import json, os, signal, sys, time
from loky import get_reusable_executor
import helpers

mode, tmp = sys.argv[1], sys.argv[2]
executor = get_reusable_executor(max_workers=2)
workers = sorted(helpers.pids_of_all_workers(executor, 2))
if mode == "own handler":
    # Not print(): the signal may come while the main thread is inside print() still,
    # and a second print() into the same buffer from the handler then fails.
    signal.signal(signal.SIGINT, lambda *a: os.write(1, b"own handler\\n"))
futures = [executor.submit(helpers.pid_then_sleep, f"{tmp}/task{i}", 30) for i in range(2)]
for i in range(2):
    helpers.wait_for_pid(f"{tmp}/task{i}")
if mode in ("result", "own handler"):
    print(json.dumps(workers), flush=True)
    futures[0].result()
elif mode == "map":
    print(json.dumps(workers), flush=True)
    list(executor.map(time.sleep, [30] * 4))
elif mode == "continue":
    try:
        print(json.dumps(workers), flush=True)  # the interrupt may come at once
        futures[0].result()
    except KeyboardInterrupt:
        print([type(f.exception(timeout=30)).__name__ for f in futures], flush=True)
        print(sorted(helpers.pids_of_all_workers(executor, 2)) == workers, flush=True)
print("end", flush=True)
"""


def run_until_tasks_run(tmp_path, mode):
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(helpers.__file__))
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal job has
    )
    ready, _, _ = select.select([proc.stdout], [], [], 90)
    assert ready, "the script printed nothing"
    return proc, json.loads(proc.stdout.readline())


@pytest.mark.posix_only("sends SIGINT to a script or its process group, as a terminal does")
@pytest.mark.parametrize("mode", ["result", "map"])
@pytest.mark.parametrize("to", ["process group", "parent only"])
def test_ctrl_c_while_waiting_ends_the_script_and_its_workers(tmp_path, mode, to):
    proc, workers = run_until_tasks_run(tmp_path, mode)
    try:
        if to == "process group":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            os.kill(proc.pid, signal.SIGINT)  # kill -INT, a notebook's interrupt
        sent = time.monotonic()
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
        assert "KeyboardInterrupt" in err, err
        assert "end" not in out
        assert took < 15, f"the interrupted script took {took:.1f} s to exit"
        assert helpers.wait_pids_gone(workers, timeout=10) == []
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.posix_only("sends SIGINT to a script or its process group, as a terminal does")
def test_interrupted_tasks_fail_with_keyboard_interrupt_and_workers_survive(tmp_path):
    proc, workers = run_until_tasks_run(tmp_path, "continue")
    try:
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.splitlines() == ["['KeyboardInterrupt', 'KeyboardInterrupt']", "True", "end"]
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.posix_only("sends SIGINT to a script or its process group, as a terminal does")
def test_a_users_own_sigint_handler_keeps_working(tmp_path):
    proc, workers = run_until_tasks_run(tmp_path, "own handler")
    try:
        os.killpg(proc.pid, signal.SIGINT)
        line = proc.stdout.readline()
        assert line == "own handler\n"
        # The user's handler decided: no KeyboardInterrupt, the tasks run on.
        assert all(not helpers.pid_gone(pid) for pid in workers)
    finally:
        proc.kill()
        proc.communicate()


RAISED_IN_THE_PARENT = """
import signal, sys, threading
from loky import get_reusable_executor
import helpers

tmp = sys.argv[1]
executor = get_reusable_executor(max_workers=2)
workers = sorted(helpers.pids_of_all_workers(executor, 2))
futures = [executor.submit(helpers.pid_then_sleep, f"{tmp}/task{i}", 30) for i in range(2)]
for i in range(2):
    helpers.wait_for_pid(f"{tmp}/task{i}")
try:
    # SIGINT as a Ctrl-C brings it to the interpreter (on Windows the console's
    # Ctrl-C reaches the parent only: its workers are in a process group of their own).
    threading.Thread(target=signal.raise_signal, args=(signal.SIGINT,)).start()
    futures[0].result()
except KeyboardInterrupt:
    print([type(f.exception(timeout=30)).__name__ for f in futures], flush=True)
    print(sorted(helpers.pids_of_all_workers(executor, 2)) == workers, flush=True)
print("end", flush=True)
"""


def test_sigint_in_the_parent_interrupts_the_running_tasks_and_workers_survive(tmp_path):
    # The parent passes it on to its busy workers (SIGINT to their process groups on
    # POSIX, their interrupt events on Windows): their tasks get KeyboardInterrupt.
    result = helpers.run_script(
        tmp_path,
        RAISED_IN_THE_PARENT,
        timeout=90,
        env={"PYTHONPATH": os.path.dirname(helpers.__file__)},
        args=[str(tmp_path)],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "['KeyboardInterrupt', 'KeyboardInterrupt']",
        "True",
        "end",
    ], result.stderr


def test_an_interruption_raised_while_checking_the_future_is_not_lost(tmp_path):
    # A signal handler runs at any bytecode, also inside the `done()` the wait calls
    # between slices; its KeyboardInterrupt must reach the waiting caller.
    from loky import ProcessPoolExecutor

    def interrupted_done():
        raise KeyboardInterrupt

    gate = tmp_path / "gate"
    with ProcessPoolExecutor(max_workers=1) as executor:
        future = executor.submit(helpers.wait_for_path, gate, "done", 60)
        applied = []
        interruption = executor._state.pool.wait_outcome(
            future._task_id, 30, interrupted_done, applied.append
        )
        assert applied == []
        assert isinstance(interruption, KeyboardInterrupt)
        gate.touch()
        assert future.result(timeout=60) == "done"


def test_an_interruption_while_the_outcome_is_applied_loses_nothing(tmp_path):
    # Ctrl-C pressed while the waiting thread applies the outcome handed to it (its
    # signal handler runs at any bytecode: here, once the future left the table of
    # unfinished ones and before it was finished). The outcome is applied all the
    # same and the interruption reaches the caller.
    import functools

    from loky import ProcessPoolExecutor

    gate = tmp_path / "gate"
    with ProcessPoolExecutor(max_workers=1) as executor:
        future = executor.submit(helpers.wait_for_path, gate, "done", 60)
        state = executor._state
        calls = []

        def open_gate_then_look():
            gate.touch()  # the task ends after the wait claimed its outcome
            return future.done()

        def interrupted_once(future_, event):
            calls.append(event.task_id)
            if len(calls) == 1:
                state.futures.pop(future_._task_id)
                raise KeyboardInterrupt
            return state._apply_claimed(future_, event)

        interruption = state.pool.wait_outcome(
            future._task_id, 60, open_gate_then_look, functools.partial(interrupted_once, future)
        )
        assert calls == [future._task_id] * 2
        assert isinstance(interruption, KeyboardInterrupt)
        assert future.result(timeout=0) == "done"
