"""Issue 4: many threads calling `get_reusable_executor` and `submit` at once never get
a shut-down executor and never lose a task."""

import os
import threading

import pytest

from loky import get_reusable_executor
from loky.process_executor import ShutdownExecutorError

import helpers
import lifecycle_tasks as tasks

pytestmark = pytest.mark.timeout(120)

N_THREADS = 8
N_ITERATIONS = 50


@pytest.fixture(autouse=True)
def no_singleton_left():
    yield
    from loky import reusable_executor

    if reusable_executor._current_executor() is not None:
        reusable_executor._current_executor().shutdown(wait=True, kill_workers=True)


def _hammer(body, n_threads=N_THREADS):
    """Run body(thread_index) in n threads started together; re-raise the first error."""
    barrier = threading.Barrier(n_threads)
    errors = []
    outputs = [None] * n_threads

    def run(index):
        try:
            barrier.wait(timeout=30)
            outputs[index] = body(index)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    if errors:
        raise errors[0]
    return outputs


def test_concurrent_get_and_submit_with_resizes():
    seen_executors = set()

    def body(index):
        futures = []
        for i in range(N_ITERATIONS):
            # Alternate the size so that resizes happen while others submit.
            executor = get_reusable_executor(max_workers=1 + (index + i) % 3, timeout=5)
            seen_executors.add(id(executor))
            futures.append((i, executor.submit(tasks.tagged_square, (index, i), i)))
        return [(i, f.result(timeout=60)) for i, f in futures]

    outputs = _hammer(body)
    for index, results in enumerate(outputs):
        assert results == [(i, ((index, i), i * i)) for i in range(N_ITERATIONS)]
    # One executor per thread (loky 3.7), which resizing never replaced.
    assert len(seen_executors) == N_THREADS
    get_reusable_executor(max_workers=1).shutdown(wait=True)


def test_concurrent_map_with_resizes():
    def body(index):
        executor = get_reusable_executor(max_workers=1 + index % 2)
        values = list(range(index * 100, index * 100 + 40))
        return list(executor.map(helpers.square, values)), values

    for results, values in _hammer(body):
        assert results == [v * v for v in values]


def test_executor_returned_is_never_shut_down_while_others_replace_it():
    # Some threads ask for a different configuration (so the executor is replaced,
    # without killing work), others submit to whatever they were given.
    def body(index):
        results = []
        for i in range(20):
            if index % 4 == 0 and i % 5 == 0:
                executor = get_reusable_executor(
                    max_workers=2, env={"LOKY_TEST_VAR": f"{index}-{i}"}
                )
            else:
                executor = get_reusable_executor(max_workers=2, reuse=True)
            try:
                future = executor.submit(tasks.tagged_square, (index, i), i)
            except ShutdownExecutorError as exc:  # the bug this test looks for
                raise AssertionError(
                    f"thread {index} iteration {i}: submit to a shut-down executor"
                ) from exc
            results.append(future)
        return [f.result(timeout=60) for f in results]

    outputs = _hammer(body)
    for index, results in enumerate(outputs):
        assert results == [((index, i), i * i) for i in range(20)]
    get_reusable_executor(max_workers=1, reuse=True).shutdown(wait=True)


def test_submit_from_done_callbacks_during_resizes():
    # joblib submits the next task from the done-callback of the previous one; here
    # 8 chains of 10 tasks do so while the callbacks also resize the executor.
    n_chains, length = 8, 10
    results = {c: [] for c in range(n_chains)}
    finished = threading.Semaphore(0)

    def make_callback(chain, step):
        def callback(future):
            results[chain].append(future.result())
            if step + 1 == length:
                finished.release()
                return
            executor = get_reusable_executor(max_workers=1 + (chain + step) % 3)
            executor.submit(tasks.tagged_square, (chain, step + 1), step + 1).add_done_callback(
                make_callback(chain, step + 1)
            )

        return callback

    executor = get_reusable_executor(max_workers=2)
    for chain in range(n_chains):
        executor.submit(tasks.tagged_square, (chain, 0), 0).add_done_callback(
            make_callback(chain, 0)
        )
    for _ in range(n_chains):
        assert finished.acquire(timeout=60), "a chain of callbacks stopped"
    for chain in range(n_chains):
        assert results[chain] == [((chain, s), s * s) for s in range(length)]
    get_reusable_executor(max_workers=1).shutdown(wait=True)


@pytest.mark.parametrize("resubmit", ["old_executor", "get_reusable_executor"])
def test_replacing_while_a_done_callback_submits_does_not_hang(tmp_path, resubmit):
    # In a subprocess: a hang there is detected and the process ended, this one stays
    # clean. The callback of a running task submits again while the main thread
    # replaces the executor (other env, kill_workers=False: the task finishes first).
    result = helpers.run_script(
        tmp_path,
        f"""
        import os, sys, threading
        sys.path.insert(0, {os.path.dirname(helpers.__file__)!r})
        import helpers
        from loky import get_reusable_executor

        old = get_reusable_executor(max_workers=1)
        assert old.submit(helpers.square, 1).result(timeout=30) == 1
        resubmitted = []

        def callback(future):
            if {resubmit!r} == "old_executor":
                executor = old
            else:
                executor = get_reusable_executor(max_workers=1, reuse=True)
            resubmitted.append(executor.submit(helpers.square, 3))

        running = old.submit(helpers.sleep_and_return, 0.5, "first")
        running.add_done_callback(callback)
        replaced = []
        thread = threading.Thread(
            target=lambda: replaced.append(
                get_reusable_executor(max_workers=1, env={{"LOKY_TEST_VAR": "new"}})
            ),
            daemon=True,
        )
        thread.start()
        thread.join(timeout=30)  # generous: a deadlock is what is tested
        if thread.is_alive():
            print("HANG")
            sys.stdout.flush()
            os._exit(3)
        print(running.result(timeout=10), resubmitted[0].result(timeout=30))
        replaced[0].shutdown(wait=True)
        """,
        timeout=60,
    )
    assert "HANG" not in result.stdout, "replacing the executor deadlocked"
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["first", "9"]
