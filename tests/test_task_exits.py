"""Issue 3: sys.exit(), KeyboardInterrupt and other BaseExceptions raised by a task come
back as that exception, and the worker survives."""

import pytest

from loky.process_executor import _RemoteTraceback

import helpers

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "fn, args, exc_type, check",
    [
        pytest.param(
            helpers.call_sys_exit, (3,), SystemExit, lambda e: e.code == 3, id="sys.exit(3)"
        ),
        pytest.param(
            helpers.call_sys_exit, (0,), SystemExit, lambda e: e.code == 0, id="sys.exit(0)"
        ),
        pytest.param(
            helpers.call_sys_exit,
            ("bye",),
            SystemExit,
            lambda e: e.code == "bye",
            id="sys.exit(str)",
        ),
        pytest.param(
            helpers.raise_keyboard_interrupt,
            (),
            KeyboardInterrupt,
            lambda e: "interrupted in the task" in str(e),
            id="KeyboardInterrupt",
        ),
        pytest.param(
            helpers.raise_custom_base_exception,
            ("custom base",),
            helpers.CustomBaseException,
            lambda e: str(e) == "custom base",
            id="BaseException-subclass",
        ),
    ],
)
def test_base_exception_comes_back_and_worker_survives(
    executor_factory, fn, args, exc_type, check
):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    future = executor.submit(fn, *args)
    with pytest.raises(exc_type) as info:
        future.result(timeout=30)
    exc = info.value
    assert type(exc) is exc_type
    assert check(exc)
    assert isinstance(exc.__cause__, _RemoteTraceback)
    assert fn.__name__ in str(exc.__cause__)
    # Same worker next time: the exception did not end the process.
    assert executor.submit(helpers.get_pid).result(timeout=30) == pid
    assert executor.submit(helpers.square, 6).result(timeout=30) == 36


def test_exception_method_returns_base_exceptions(executor_factory):
    executor = executor_factory(max_workers=1)
    future = executor.submit(helpers.call_sys_exit, 5)
    exc = future.exception(timeout=30)
    assert isinstance(exc, SystemExit) and exc.code == 5


def test_sys_exit_in_map_and_other_items_complete(executor_factory):
    executor = executor_factory(max_workers=2)

    def exit_on_three(x):
        if x == 3:
            raise SystemExit(33)
        return x

    futures = [executor.submit(exit_on_three, x) for x in range(6)]
    outcomes = []
    for f in futures:
        exc = f.exception(timeout=30)
        outcomes.append(exc.code if exc is not None else f.result())
    assert outcomes == [0, 1, 2, 33, 4, 5]
    with pytest.raises(SystemExit):
        list(executor.map(exit_on_three, range(6), chunksize=2))
    assert list(executor.map(helpers.square, range(3))) == [0, 1, 4]


def test_repeated_sys_exit_keeps_the_same_workers(executor_factory):
    executor = executor_factory(max_workers=2)
    # Both workers are up (tasks that wait for each other ran on both).
    pids = helpers.pids_of_all_workers(executor, 2)
    assert set(executor._worker_pids()) == pids
    futures = [executor.submit(helpers.call_sys_exit, i) for i in range(20)]
    assert [f.exception(timeout=30).code for f in futures] == list(range(20))
    assert set(executor._worker_pids()) == pids


def test_a_worker_ending_while_it_lets_go_of_the_arguments_keeps_the_result(executor_factory):
    import lifecycle_tasks

    executor = executor_factory(max_workers=1)
    victim = executor.submit(lifecycle_tasks.type_name, lifecycle_tasks.ExitWhenCollected())
    # The result left before the worker dropped the argument (and exited).
    assert victim.result(timeout=30) == "ExitWhenCollected"
    assert executor.submit(lifecycle_tasks.square, 4).result(timeout=30) == 16
