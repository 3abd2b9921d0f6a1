"""`await future` in asyncio: results and errors, any event loop, cancellation of the
awaiting coroutine, and a timeout-bounded await that ends its task."""

import asyncio
import concurrent.futures
import os
import threading

import pytest

from loky import get_reusable_executor

import helpers

pytestmark = pytest.mark.timeout(120)


def test_await_gives_the_result_and_raises_the_tasks_error(executor_factory):
    executor = executor_factory(max_workers=2)

    async def main():
        squares = await asyncio.gather(*(executor.submit(helpers.square, i) for i in range(20)))
        one = executor.submit(helpers.square, 7)
        first, again = await one, await one  # a done future is awaited again
        with pytest.raises(ValueError, match="from the task") as info:
            await executor.submit(helpers.raise_value_error, "from the task")
        return squares, first, again, info.value

    squares, first, again, error = asyncio.run(main())
    assert squares == [i * i for i in range(20)]
    assert first == again == 49
    assert "raise_value_error" in str(error.__cause__), "the worker's traceback"


def test_await_in_a_loop_of_another_thread_and_in_a_selector_loop(executor_factory):
    executor = executor_factory(max_workers=1)
    results = []

    def in_thread():
        loop = asyncio.new_event_loop()
        try:
            results.append(loop.run_until_complete(_awaited(executor.submit(helpers.square, 5))))
        finally:
            loop.close()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(timeout=60)
    assert results == [25]
    selector_loop = asyncio.SelectorEventLoop()
    try:
        future = executor.submit(helpers.square, 6)
        assert selector_loop.run_until_complete(_awaited(future)) == 36
    finally:
        selector_loop.close()


async def _awaited(future):
    return await future


def test_wrap_future_and_run_in_executor_keep_working(executor_factory):
    executor = executor_factory(max_workers=1)

    async def main():
        loop = asyncio.get_running_loop()
        wrapped = await asyncio.wrap_future(executor.submit(helpers.square, 3))
        ran = await loop.run_in_executor(executor, helpers.add, 2, 5)
        return wrapped, ran

    assert asyncio.run(main()) == (9, 7)


def test_cancelling_the_awaiting_coroutine_cancels_a_queued_task(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    blocker = executor.submit(helpers.wait_for_path, gate, "blocked", 60)
    queued = executor.submit(helpers.append_line, tmp_path / "ran", "x")

    async def main():
        waiter = asyncio.ensure_future(_awaited(queued))
        await asyncio.sleep(0)  # the coroutine now awaits the future
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    assert queued.cancelled()
    gate.touch()
    assert blocker.result(timeout=60) == "blocked"
    # The only worker runs tasks in order: the cancelled one would have run by now.
    assert executor.submit(helpers.square, 3).result(timeout=60) == 9
    assert not (tmp_path / "ran").exists(), "a task cancelled while queued never runs"


def test_a_running_task_runs_on_when_its_awaiting_coroutine_is_cancelled(
    executor_factory, tmp_path
):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    running = executor.submit(helpers.check_in_then_wait_for_path, tmp_path / "in", gate, "ran")
    helpers.wait_for_lines(tmp_path / "in", 1)

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(running, 0.05)

    asyncio.run(main())
    assert not running.cancelled()
    gate.touch()
    assert running.result(timeout=60) == "ran"


def test_a_timeout_bounded_await_ends_its_task_with_terminate(executor_factory, tmp_path):
    executor = executor_factory(max_workers=2)
    pid_file = tmp_path / "running"
    stuck = executor.submit(helpers.pid_then_sleep, pid_file, 60)
    worker = helpers.wait_for_pid(pid_file)

    async def bounded(future, seconds):
        try:
            return await asyncio.wait_for(future, seconds)
        except TimeoutError:
            future.terminate()
            return "ended"

    async def main():
        others = [executor.submit(helpers.square, i) for i in range(10)]
        return await asyncio.gather(bounded(stuck, 0.2), *(bounded(f, 60) for f in others))

    results = asyncio.run(main())
    assert results == ["ended"] + [i * i for i in range(10)]
    assert stuck.cancelled()
    assert helpers.wait_pids_gone([worker], timeout=10) == []
    assert executor.submit(helpers.square, 4).result(timeout=60) == 16


def test_awaiting_a_terminated_future_raises_cancelled_error(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    executor.submit(helpers.wait_for_path, gate, "blocked", 60)
    queued = executor.submit(helpers.square, 2)
    assert queued.terminate() is True

    async def main():
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(concurrent.futures.CancelledError):
            queued.result()

    asyncio.run(main())
    gate.touch()


def test_reusable_executor_futures_are_awaitable():
    executor = get_reusable_executor(max_workers=1)
    assert asyncio.run(_awaited(executor.submit(helpers.square, 8))) == 64


def test_a_program_that_never_awaits_does_not_import_asyncio(tmp_path):
    code = """
        import sys
        from loky import get_reusable_executor
        import helpers
        assert get_reusable_executor(max_workers=1).submit(helpers.square, 3).result() == 9
        print('asyncio' in sys.modules)
    """
    tests = os.path.dirname(helpers.__file__)
    out = helpers.run_script(tmp_path, code, env={"PYTHONPATH": tests})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
