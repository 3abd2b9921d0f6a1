"""Issue 2: the executor's everyday behaviour, as a user sees it."""

import concurrent.futures
import functools
import operator
import os
import subprocess
import sys
import time
import traceback

import pytest

import loky
from loky import ProcessPoolExecutor, get_reusable_executor
from loky.process_executor import (
    BrokenProcessPool,
    ShutdownExecutorError,
    TerminatedWorkerError,
    _RemoteTraceback,
)

import helpers

pytestmark = pytest.mark.timeout(60)


# -- public API -----------------------------------------------------------------------


def test_public_names_match_loky():
    assert loky.__version__
    assert issubclass(loky.Future, concurrent.futures.Future)
    assert loky.wait is concurrent.futures.wait
    assert loky.as_completed is concurrent.futures.as_completed
    assert loky.Executor is concurrent.futures.Executor
    assert loky.CancelledError is concurrent.futures.CancelledError
    assert loky.TimeoutError is concurrent.futures.TimeoutError
    assert loky.FIRST_COMPLETED == concurrent.futures.FIRST_COMPLETED
    assert loky.FIRST_EXCEPTION == concurrent.futures.FIRST_EXCEPTION
    assert loky.ALL_COMPLETED == concurrent.futures.ALL_COMPLETED
    assert loky.BrokenProcessPool is BrokenProcessPool
    assert issubclass(BrokenProcessPool, concurrent.futures.process.BrokenProcessPool)
    assert issubclass(TerminatedWorkerError, BrokenProcessPool)
    assert issubclass(ShutdownExecutorError, RuntimeError)
    assert issubclass(ProcessPoolExecutor, concurrent.futures.Executor)


PUBLIC_ERRORS = [
    "BrokenProcessPool",
    "TerminatedWorkerError",
    "ShutdownExecutorError",
    "LokyRecursionError",
    "_RemoteTraceback",
]


@pytest.mark.parametrize("name", PUBLIC_ERRORS)
def test_errors_print_and_pickle_under_the_module_loky_users_import_them_from(name):
    import pickle

    import cloudpickle

    error_class = getattr(loky.process_executor, name)
    assert error_class.__module__ == "loky.process_executor"
    error = error_class("what happened")
    (line,) = traceback.format_exception_only(error)
    assert line.startswith(f"loky.process_executor.{name}: ")
    for dumps in (pickle.dumps, cloudpickle.dumps):
        copy = pickle.loads(dumps(error))
        assert type(copy) is error_class
        assert str(copy) == str(error)
    assert loky.process_executor.BrokenExecutor is BrokenProcessPool  # loky's alias


@pytest.mark.parametrize("name", PUBLIC_ERRORS[:4])
def test_errors_travel_to_and_from_a_worker_as_themselves(executor_factory, name):
    error_class = getattr(loky.process_executor, name)
    executor = executor_factory(max_workers=1)
    # The class travels to the worker, and an instance of it back.
    future = executor.submit(helpers.raise_error, error_class, "from the worker")
    error = future.exception(timeout=30)
    assert type(error) is error_class
    assert str(error) == "from the worker"
    text = "".join(traceback.format_exception(error))
    assert f"loky.process_executor.{name}: from the worker" in text
    assert "loky.process_executor._RemoteTraceback: " in text  # the worker's traceback


def test_no_process_starts_before_the_first_submit():
    import psutil

    executor = ProcessPoolExecutor(max_workers=2)
    time.sleep(0.2)
    assert executor._worker_pids() == []
    assert psutil.Process().children(recursive=True) == []
    with executor:
        assert executor.submit(helpers.square, 3).result(timeout=30) == 9
        assert len(executor._worker_pids()) >= 1


class _SeesAWorkerStart:
    """Pickled by a first submit: waits, inside that pickling, for a new child process
    (a worker of the pool that submit starts)."""

    def __init__(self):
        self.children_before = self._children()

    @staticmethod
    def _children():
        import psutil

        return {child.pid for child in psutil.Process().children()}

    def __reduce__(self):
        started = helpers.wait_until(lambda: self._children() - self.children_before, 20)
        return str, ("started" if started else "no worker during the pickling",)


def test_workers_start_while_the_first_task_is_pickled(executor_factory):
    executor = executor_factory(max_workers=2)
    result = executor.submit(helpers.identity, _SeesAWorkerStart()).result(timeout=30)
    assert result == "started"


# -- submit / map -----------------------------------------------------------------------


def test_submit_returns_loky_future_with_result(executor_factory):
    executor = executor_factory(max_workers=2)
    future = executor.submit(helpers.add, 2, b=40)
    assert isinstance(future, loky.Future)
    assert future.result(timeout=30) == 42
    assert future.done() and not future.cancelled()
    assert future.exception() is None


def test_submit_many_spreads_over_workers(executor_factory):
    executor = executor_factory(max_workers=2)
    pids = helpers.pids_of_all_workers(executor, 2)
    # Two workers run two tasks at once.
    assert len(pids) == 2
    assert os.getpid() not in pids


@pytest.mark.parametrize("chunksize", [1, 2, 3, 7, 100])
def test_map_with_chunksize(executor_factory, chunksize):
    executor = executor_factory(max_workers=2)
    results = executor.map(helpers.square, range(23), chunksize=chunksize)
    assert list(results) == [x * x for x in range(23)]


def test_map_several_iterables_stops_at_shortest(executor_factory):
    executor = executor_factory(max_workers=2)
    assert list(executor.map(helpers.add, range(10), range(100, 105), chunksize=3)) == [
        100,
        102,
        104,
        106,
        108,
    ]


def test_map_empty_iterable(executor_factory):
    executor = executor_factory(max_workers=2)
    assert list(executor.map(helpers.square, [], chunksize=4)) == []
    # No iterable at all: nothing to call, as with the builtin map's zip().
    assert list(executor.map(helpers.square)) == []
    assert list(executor.map(helpers.square, progress=lambda done, total: None)) == []


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_raises_the_task_error_at_its_position(executor_factory, chunksize):
    executor = executor_factory(max_workers=2)
    results = executor.map(helpers.fail_on_odd, [0, 2, 4, 5, 6], chunksize=chunksize)
    if chunksize == 1:
        assert next(results) == 0
        assert next(results) == 2
        assert next(results) == 4
    with pytest.raises(ValueError, match="odd input 5") as info:
        list(results)
    assert isinstance(info.value.__cause__, _RemoteTraceback)
    # The executor is still usable.
    assert list(executor.map(helpers.square, range(3))) == [0, 1, 4]


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_timeout(executor_factory, chunksize):
    executor = executor_factory(max_workers=2)
    start = time.monotonic()
    results = executor.map(
        helpers.sleep_and_return, [0.0, 30.0], [1, 2], timeout=0.5, chunksize=chunksize
    )
    with pytest.raises(concurrent.futures.TimeoutError):
        list(results)
    # Generous bound: the point is that it does not wait for the 30 s task.
    assert time.monotonic() - start < 10


def test_map_is_lazy_about_results_but_submits_eagerly(executor_factory, tmp_path):
    executor = executor_factory(max_workers=2)
    path = tmp_path / "log"
    results = executor.map(helpers.append_line, [str(path)] * 5, list("abcde"))
    # All tasks run even if the results are never consumed.
    assert helpers.wait_until(lambda: len(helpers.read_lines(path)) == 5, timeout=30)
    assert list(results) == [None] * 5


# -- wait / as_completed ----------------------------------------------------------------


def test_wait_all_completed(executor_factory):
    executor = executor_factory(max_workers=2)
    futures = [executor.submit(helpers.square, i) for i in range(10)]
    done, not_done = loky.wait(futures, timeout=30, return_when=loky.ALL_COMPLETED)
    assert done == set(futures) and not not_done
    assert sorted(f.result() for f in done) == [i * i for i in range(10)]


def test_wait_first_completed_and_first_exception(executor_factory):
    executor = executor_factory(max_workers=2)
    slow = executor.submit(helpers.sleep_and_return, 30, "slow")
    quick = executor.submit(helpers.square, 5)
    done, not_done = loky.wait([slow, quick], timeout=20, return_when=loky.FIRST_COMPLETED)
    assert quick in done and slow in not_done

    failing = executor.submit(helpers.raise_value_error, "first exception")
    done, not_done = loky.wait(
        [slow, failing], timeout=20, return_when=loky.FIRST_EXCEPTION
    )
    assert failing in done and slow in not_done
    assert isinstance(failing.exception(), ValueError)


def test_wait_timeout(executor_factory):
    executor = executor_factory(max_workers=1)
    slow = executor.submit(helpers.sleep_and_return, 30)
    done, not_done = loky.wait([slow], timeout=0.2)
    assert not done and not_done == {slow}


def test_as_completed_yields_in_completion_order(executor_factory, tmp_path):
    executor = executor_factory(max_workers=2)
    gate = tmp_path / "gate"
    gated = executor.submit(helpers.wait_for_path, str(gate), "gated")
    quick = executor.submit(helpers.sleep_and_return, 0, "quick")
    order = []
    for future in loky.as_completed([gated, quick], timeout=30):
        order.append(future.result())
        gate.touch()  # the gated task can finish only after the first one came out
    assert order == ["quick", "gated"]


def test_as_completed_timeout(executor_factory):
    executor = executor_factory(max_workers=1)
    quick = executor.submit(helpers.square, 2)
    slow = executor.submit(helpers.sleep_and_return, 30)
    assert quick.result(timeout=30) == 4
    seen = []
    with pytest.raises(concurrent.futures.TimeoutError):
        for f in loky.as_completed([quick, slow], timeout=0.5):
            seen.append(f.result())
    assert seen == [4]


def test_result_timeout_then_result(executor_factory):
    executor = executor_factory(max_workers=1)
    future = executor.submit(helpers.sleep_and_return, 1, "late")
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.05)
    assert future.result(timeout=30) == "late"


def test_cancel_a_queued_task(executor_factory):
    executor = executor_factory(max_workers=1)
    running = executor.submit(helpers.sleep_and_return, 1, "ran")
    queued = [executor.submit(helpers.square, i) for i in range(3)]
    cancelled = [f.cancel() for f in queued]
    assert running.result(timeout=30) == "ran"
    for f, was_cancelled in zip(queued, cancelled):
        if was_cancelled:
            assert f.cancelled()
            with pytest.raises(concurrent.futures.CancelledError):
                f.result(timeout=30)
        else:
            assert f.result(timeout=30) in (0, 1, 4)
    assert executor.submit(helpers.square, 9).result(timeout=30) == 81


def test_a_cancelled_queued_task_is_done_for_wait_and_as_completed(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    blocker = executor.submit(helpers.wait_for_path, gate, "blocked", 60)
    queued = [executor.submit(helpers.square, i) for i in range(5)]
    assert queued[-1].cancel()
    # Not later, when the worker would have taken it: now.
    done, not_done = concurrent.futures.wait([queued[-1]], timeout=30)
    assert done == {queued[-1]} and not not_done
    assert list(concurrent.futures.as_completed([queued[-1]], timeout=30)) == [queued[-1]]
    gate.touch()
    assert blocker.result(timeout=60) == "blocked"
    assert [f.result(timeout=60) for f in queued[:-1]] == [0, 1, 4, 9]


# -- exceptions travel back with the worker traceback ----------------------------------


def test_exception_keeps_type_message_and_remote_traceback(executor_factory):
    executor = executor_factory(max_workers=1)
    future = executor.submit(helpers.raise_value_error, "boom from the worker")
    with pytest.raises(ValueError, match="boom from the worker") as info:
        future.result(timeout=30)
    exc = info.value
    assert type(exc) is ValueError
    cause = exc.__cause__
    assert isinstance(cause, _RemoteTraceback)
    text = str(cause)
    assert "Traceback (most recent call last)" in text
    assert "raise_value_error" in text
    assert "helpers.py" in text
    assert "ValueError: boom from the worker" in text
    # The whole chain prints, as in loky.
    printed = "".join(traceback.format_exception(exc))
    assert "raise_value_error" in printed and "boom from the worker" in printed


def test_custom_exception_keeps_its_attributes(executor_factory):
    executor = executor_factory(max_workers=1)
    future = executor.submit(helpers.raise_custom_error, "custom", 7)
    exc = future.exception(timeout=30)
    assert type(exc) is helpers.CustomError
    assert exc.code == 7
    assert exc.args == ("custom", 7)
    assert isinstance(exc.__cause__, _RemoteTraceback)
    assert "raise_custom_error" in str(exc.__cause__)


def test_worker_survives_a_task_exception(executor_factory):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    with pytest.raises(ValueError):
        executor.submit(helpers.raise_value_error, "x").result(timeout=30)
    assert executor.submit(helpers.get_pid).result(timeout=30) == pid


# -- initializer and env ----------------------------------------------------------------


def test_initializer_runs_in_each_worker_before_tasks(executor_factory):
    executor = executor_factory(
        max_workers=2, initializer=helpers.set_initialized, initargs=("ready",)
    )
    results = [
        f.result(timeout=30)
        for f in [executor.submit(helpers.get_initialized) for _ in range(8)]
    ]
    assert {value for value, _ in results} == {"ready"}


def test_initializer_can_be_a_lambda_with_initargs(executor_factory):
    executor = executor_factory(
        max_workers=1,
        initializer=lambda a, b: helpers.set_initialized(a + b),
        initargs=(1, 2),
    )
    assert executor.submit(helpers.get_initialized).result(timeout=30)[0] == 3


def test_env_is_set_in_workers(executor_factory):
    executor = executor_factory(max_workers=1, env={"LOKY_TEST_VALUE": "hello world"})
    assert executor.submit(helpers.getenv, "LOKY_TEST_VALUE").result(timeout=30) == (
        "hello world"
    )
    assert "LOKY_TEST_VALUE" not in os.environ


def test_env_is_set_before_the_worker_interpreter_starts(executor_factory):
    executor = executor_factory(max_workers=1, env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert executor.submit(helpers.dont_write_bytecode_flag).result(timeout=30) == 1


def test_workers_inherit_the_parent_environment(executor_factory, monkeypatch):
    monkeypatch.setenv("LOKY_TEST_INHERITED", "from-parent")
    executor = executor_factory(max_workers=1)
    assert executor.submit(helpers.getenv, "LOKY_TEST_INHERITED").result(timeout=30) == (
        "from-parent"
    )


# -- callables that need cloudpickle ----------------------------------------------------


def test_lambda_and_closure(executor_factory):
    executor = executor_factory(max_workers=2)
    offset = 10
    assert executor.submit(lambda x: x + offset, 5).result(timeout=30) == 15

    def make_multiplier(k):
        return lambda x: x * k

    assert list(executor.map(make_multiplier(3), range(4), chunksize=2)) == [0, 3, 6, 9]


def test_local_class_instances_travel(executor_factory):
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm1(self):
            return abs(self.x) + abs(self.y)

    executor = executor_factory(max_workers=1)
    assert executor.submit(Point.norm1, Point(3, -4)).result(timeout=30) == 7
    result = executor.submit(lambda: Point(1, 2)).result(timeout=30)
    assert (result.x, result.y) == (1, 2)


def test_main_functions_and_no_main_guard(tmp_path):
    # A script without `if __name__ == "__main__":`, using functions, a lambda and a
    # class defined in __main__. Workers must not re-run it (it would print twice and
    # start executors recursively).
    result = helpers.run_script(
        tmp_path,
        """
        import os
        from loky import get_reusable_executor, ProcessPoolExecutor
        import helpers

        RAN_AS_MAIN = True
        print("script body runs in", os.getpid(), flush=True)

        def double(x):
            return 2 * x

        class Box:
            def __init__(self, v):
                self.v = v

        executor = ProcessPoolExecutor(max_workers=2)
        print("double", executor.submit(double, 21).result(timeout=30))
        print("lambda", executor.submit(lambda: "from lambda").result(timeout=30))
        print("box", executor.submit(lambda b: b.v + 1, Box(41)).result(timeout=30))
        print("box arg", executor.submit(helpers.identity, Box(7)).result(timeout=30).v)
        print("map", list(executor.map(double, range(5), chunksize=2)))
        file, ran = executor.submit(helpers.main_module_info).result(timeout=30)
        print("worker main", file, ran)
        executor.shutdown()

        reusable = get_reusable_executor(max_workers=2)
        print("reusable", sum(reusable.map(double, range(10))))
        reusable.shutdown()
        """,
        env={"PYTHONPATH": os.path.dirname(helpers.__file__)},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert sum(line.startswith("script body runs in") for line in out) == 1, out
    assert "double 42" in out
    assert "lambda from lambda" in out
    assert "box 42" in out
    assert "box arg 7" in out
    assert "map [0, 2, 4, 6, 8]" in out
    assert "reusable 90" in out
    worker_main = [line for line in out if line.startswith("worker main")]
    assert worker_main and worker_main[0].endswith("False"), out


# -- fresh interpreters ----------------------------------------------------------------


def test_workers_are_fresh_interpreters(executor_factory, tmp_path, monkeypatch):
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "loky_throwaway_module.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(module_dir))
    import loky_throwaway_module  # noqa: F401
    import decimal  # noqa: F401

    assert "loky_throwaway_module" in sys.modules
    try:
        executor = executor_factory(max_workers=1)
        for name in ("loky_throwaway_module", "decimal"):
            assert executor.submit(helpers.module_loaded, name).result(timeout=30) is False
        # The worker can import it when a task needs it (it sees the parent's sys.path).
        assert (
            executor.submit(helpers.import_then_check, "loky_throwaway_module").result(
                timeout=30
            )
            is True
        )
        assert executor.submit(helpers.module_loaded, "loky_throwaway_module").result(
            timeout=30
        )
        first = executor.submit(helpers.get_pid).result(timeout=30)
        assert first != os.getpid()
        # A replacement worker is fresh too: it has neither the parent's modules nor
        # those its predecessor imported.
        executor.submit(helpers.exit_with, 1).exception(timeout=30)
        assert executor.submit(helpers.get_pid).result(timeout=30) != first
        for name in ("loky_throwaway_module", "decimal"):
            assert executor.submit(helpers.module_loaded, name).result(timeout=30) is False
    finally:
        sys.modules.pop("loky_throwaway_module", None)


def test_a_worker_starts_without_the_modules_pickle_would_bring():
    # Against a bare interpreter of the same environment: its site may import them.
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import loky._worker\n"
        "heavy = {'functools', 'collections', 'types', 'operator', 'struct', 'resource'}\n"
        "print(sorted(heavy & (set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]"]


def test_functools_is_whole_in_a_fresh_worker(executor_factory):
    # The worker's first task: functools is imported then, for real, and the C pickler
    # (imported before it) pickles its partial objects.
    executor = executor_factory(max_workers=1)
    assert executor.submit(functools.reduce, operator.add, [1, 2, 3]).result(timeout=30) == 6
    add_two = executor.submit(functools.partial, operator.add, 2).result(timeout=30)
    assert add_two(3) == 5


def test_worker_does_not_inherit_parent_globals(executor_factory):
    helpers.set_initialized("set in the parent only")
    try:
        executor = executor_factory(max_workers=1)
        assert executor.submit(helpers.get_initialized).result(timeout=30)[0] is None
    finally:
        helpers.set_initialized(None)


# -- shutdown and context manager ----------------------------------------------------


def test_context_manager_waits_for_work():
    with ProcessPoolExecutor(max_workers=2) as executor:
        futures = [executor.submit(helpers.sleep_and_pid, 0.2) for i in range(4)]
    assert all(f.done() for f in futures)
    pids = {f.result() for f in futures}
    assert helpers.wait_pids_gone(pids, timeout=10) == []


def test_shutdown_is_idempotent_and_safe_before_start():
    executor = ProcessPoolExecutor(max_workers=2)
    executor.shutdown()
    executor.shutdown(wait=False)
    executor.shutdown(kill_workers=True)
    with pytest.raises(ShutdownExecutorError):
        executor.submit(helpers.square, 1)


# -- reusable executor (the seed example) ----------------------------------------------


def test_reusable_executor_seed_example():
    executor = get_reusable_executor(max_workers=4, timeout=2)
    assert executor.submit(helpers.get_pid).result(timeout=30) != os.getpid()
    assert len(set(executor.map(helpers.sleep_and_pid, [0.01] * 50))) <= 4
    assert len(helpers.pids_of_all_workers(executor, 4)) == 4
    assert get_reusable_executor(max_workers=4, timeout=2) is executor
    executor.shutdown(wait=True)


# -- large payloads ---------------------------------------------------------------------

# Above 2 GiB: lengths that overflow a signed 32-bit field, and single reads/writes that
# Linux caps below 2 GiB.
BIG = (1 << 31) + 4099

# Measured peak (parent + worker RSS): about 8 GiB for the argument test, 4 GiB for the
# result test, ~10 s each; enabled by default, deselect with -m "not bigmem".
NEEDED_MEMORY = 10 << 30


@pytest.fixture
def enough_memory():
    import psutil

    available = psutil.virtual_memory().available
    if available < NEEDED_MEMORY:
        pytest.skip(
            f"needs {NEEDED_MEMORY >> 30} GiB of free memory, {available >> 30} GiB available"
        )


@pytest.mark.bigmem
@pytest.mark.timeout(300)
def test_argument_larger_than_2gib(executor_factory, enough_memory):
    probes = [0, 1 << 20, (1 << 31) - 1, 1 << 31, BIG - 1]
    data = helpers.make_payload(BIG, probes)
    executor = executor_factory(max_workers=1)
    length, found = executor.submit(helpers.payload_summary, data, probes).result(
        timeout=240
    )
    assert length == BIG
    assert found == bytes(helpers.marker(i) for i in range(len(probes)))


@pytest.mark.bigmem
@pytest.mark.timeout(300)
def test_result_larger_than_2gib(executor_factory, enough_memory):
    probes = [0, (1 << 31) - 1, 1 << 31, BIG - 1]
    executor = executor_factory(max_workers=1)
    data = executor.submit(helpers.make_payload, BIG, probes).result(timeout=240)
    assert len(data) == BIG
    assert bytes(data[p] for p in probes) == bytes(
        helpers.marker(i) for i in range(len(probes))
    )
    del data
    assert executor.submit(helpers.square, 3).result(timeout=30) == 9
