"""Issue 3: payloads that cannot travel fail their own future, never the pool."""

import pickle
import threading

import pytest

from loky.process_executor import BrokenProcessPool, TerminatedWorkerError, _RemoteTraceback

import helpers

pytestmark = pytest.mark.timeout(60)


def chain(exc):
    """`exc` and its causes, outermost first."""
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__
    return out


def chain_text(exc):
    return "\n".join(f"{type(e).__name__}: {e}" for e in chain(exc))


def check_pool_still_works(executor, pid=None):
    assert list(executor.map(helpers.square, range(5))) == [0, 1, 4, 9, 16]
    if pid is not None:
        # The same worker: the fault did not cost a process.
        assert executor.submit(helpers.get_pid).result(timeout=30) == pid


# -- the task cannot be pickled in the parent -------------------------------------------


@pytest.mark.parametrize(
    "make_task, cause_type, cause_words",
    [
        pytest.param(
            lambda: (helpers.takes_anything, helpers.Unpicklable()),
            helpers.UnpicklableError,
            "refuses to be pickled",
            id="argument-reduce-raises",
        ),
        pytest.param(
            lambda: (helpers.takes_anything, threading.Lock()),
            TypeError,
            "lock",
            id="argument-lock",
        ),
        pytest.param(
            lambda: (lambda lock=threading.Lock(): lock,),
            TypeError,
            "lock",
            id="callable-closing-over-lock",
        ),
    ],
)
def test_unpicklable_task(executor_factory, make_task, cause_type, cause_words):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    ok_before = executor.submit(helpers.sleep_and_return, 0.2, "before")
    fn, *args = make_task()
    future = executor.submit(fn, *args)
    exc = future.exception(timeout=30)
    assert type(exc) is pickle.PicklingError
    assert str(exc) == "Could not pickle the task to send it to the workers."
    assert isinstance(exc.__cause__, cause_type), chain_text(exc)
    assert cause_words in str(exc.__cause__)
    assert ok_before.result(timeout=30) == "before"
    check_pool_still_works(executor, pid)


def test_unpicklable_argument_in_map(executor_factory):
    executor = executor_factory(max_workers=2)
    results = executor.map(helpers.takes_anything, [1, helpers.Unpicklable(), "x"])
    assert next(results) == "int"
    with pytest.raises(pickle.PicklingError, match="Could not pickle the task"):
        next(results)
    check_pool_still_works(executor)


def test_unpicklable_kwarg(executor_factory):
    executor = executor_factory(max_workers=1)
    future = executor.submit(helpers.takes_anything, obj=helpers.Unpicklable())
    with pytest.raises(pickle.PicklingError, match="Could not pickle the task") as info:
        future.result(timeout=30)
    assert isinstance(info.value.__cause__, helpers.UnpicklableError)
    check_pool_still_works(executor)


# -- the task cannot be unpickled in the worker -----------------------------------------


def test_task_fails_to_unpickle_in_worker(executor_factory):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    future = executor.submit(helpers.takes_anything, helpers.FailsOnLoad("no load in worker"))
    exc = future.exception(timeout=30)
    assert type(exc) is BrokenProcessPool, repr(exc)
    assert not isinstance(exc, TerminatedWorkerError)
    assert "A task has failed to un-serialize" in str(exc)
    # The original error, with the worker traceback, is chained.
    text = chain_text(exc)
    assert "ValueError" in text and "no load in worker" in text, text
    assert "_fail_on_load" in text, text
    check_pool_still_works(executor, pid)


def test_task_whose_function_cannot_be_imported_in_worker(executor_factory, tmp_path, monkeypatch):
    # A module the parent can import but the worker cannot (its directory joined the
    # parent's sys.path after the worker started).
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    module_dir = tmp_path / "late"
    module_dir.mkdir()
    (module_dir / "loky_late_module.py").write_text("def hello():\n    return 'hi'\n")
    monkeypatch.syspath_prepend(str(module_dir))
    try:
        import loky_late_module

        future = executor.submit(loky_late_module.hello)
        exc = future.exception(timeout=30)
    finally:
        import sys

        sys.modules.pop("loky_late_module", None)
    assert type(exc) is BrokenProcessPool, repr(exc)
    assert "A task has failed to un-serialize" in str(exc)
    text = chain_text(exc)
    assert "loky_late_module" in text, text
    check_pool_still_works(executor, pid)


# -- the result cannot be pickled in the worker ------------------------------------------


def test_unpicklable_result(executor_factory):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    future = executor.submit(helpers.return_unpicklable)
    exc = future.exception(timeout=30)
    # The pickling error raised in the worker (cannot pickle a lock).
    assert isinstance(exc, (TypeError, pickle.PicklingError)), repr(exc)
    assert not isinstance(exc, BrokenProcessPool)
    assert "pickle" in str(exc) and "lock" in str(exc)
    cause = exc.__cause__
    assert isinstance(cause, _RemoteTraceback), chain_text(exc)
    assert "Traceback (most recent call last)" in str(cause)
    assert "lock" in str(cause)
    check_pool_still_works(executor, pid)


def test_unpicklable_exception(executor_factory):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    future = executor.submit(helpers.raise_unpicklable_exception)
    exc = future.exception(timeout=30)
    assert isinstance(exc, (TypeError, pickle.PicklingError)), repr(exc)
    assert isinstance(exc.__cause__, _RemoteTraceback), chain_text(exc)
    text = str(exc.__cause__)
    # The worker traceback names both the pickling failure and the task's own error.
    assert "lock" in text
    assert "raise_unpicklable_exception" in text, text
    assert "original task error" in text, text
    check_pool_still_works(executor, pid)


# -- the result cannot be unpickled in the parent -------------------------------------


def test_result_fails_to_unpickle_in_parent(executor_factory):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    others = [executor.submit(helpers.square, i) for i in range(3)]
    future = executor.submit(helpers.return_fails_on_load, "no load in parent")
    more = [executor.submit(helpers.square, i) for i in range(3, 6)]
    exc = future.exception(timeout=30)
    assert type(exc) is BrokenProcessPool, repr(exc)
    assert "A result has failed to un-serialize" in str(exc)
    text = chain_text(exc)
    assert "ValueError" in text and "no load in parent" in text, text
    assert [f.result(timeout=30) for f in others + more] == [i * i for i in range(6)]
    check_pool_still_works(executor, pid)


def test_exception_fails_to_unpickle_in_parent(executor_factory):
    # An exception whose unpickling raises: the same failure, for the error path.
    executor = executor_factory(max_workers=1)

    def raise_fails_on_load():
        raise helpers.CustomError(helpers.FailsOnLoad("exception no load"), 1)

    exc = executor.submit(raise_fails_on_load).exception(timeout=30)
    assert type(exc) is BrokenProcessPool, repr(exc)
    assert "A result has failed to un-serialize" in str(exc)
    assert "exception no load" in chain_text(exc)
    check_pool_still_works(executor)


# -- many faults mixed with good tasks ----------------------------------------------------


def test_pickling_faults_do_not_cost_workers(executor_factory):
    executor = executor_factory(max_workers=2)
    list(executor.map(helpers.get_pid, range(4)))
    pids_before = set(executor._worker_pids())
    assert len(pids_before) == 2
    futures = []
    for i in range(10):
        futures.append(("ok", executor.submit(helpers.square, i)))
        futures.append(("arg", executor.submit(helpers.takes_anything, helpers.Unpicklable())))
        futures.append(("load", executor.submit(helpers.takes_anything, helpers.FailsOnLoad())))
        futures.append(("result", executor.submit(helpers.return_unpicklable)))
        futures.append(("parent", executor.submit(helpers.return_fails_on_load, "x")))
    for kind, future in futures:
        exc = future.exception(timeout=30)
        if kind == "ok":
            assert exc is None
        elif kind == "arg":
            assert type(exc) is pickle.PicklingError
        elif kind in ("load", "parent"):
            assert type(exc) is BrokenProcessPool
        else:
            assert isinstance(exc, (TypeError, pickle.PicklingError))
    # No worker was lost or replaced.
    assert set(executor._worker_pids()) == pids_before
    check_pool_still_works(executor)
