"""Issue 3: many threads at once, submit from done-callbacks, callbacks that raise."""

import logging
import threading

import pytest

import loky
from loky.process_executor import ShutdownExecutorError

import helpers

pytestmark = pytest.mark.timeout(60)


def test_ten_threads_submit_at_once(executor_factory):
    executor = executor_factory(max_workers=2)
    n_threads, per_thread = 10, 100
    barrier = threading.Barrier(n_threads)
    results = {}
    errors = []

    def submitter(t):
        try:
            barrier.wait(timeout=30)
            futures = [executor.submit(helpers.add, t, i) for i in range(per_thread)]
            mapped = list(executor.map(helpers.square, range(t, t + 20), chunksize=3))
            results[t] = ([f.result(timeout=60) for f in futures], mapped)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    for t in range(n_threads):
        submitted, mapped = results[t]
        assert submitted == [t + i for i in range(per_thread)]
        assert mapped == [x * x for x in range(t, t + 20)]


def test_threads_submitting_to_the_first_executor_start_it_once(executor_factory):
    # The pool starts on the first submit: racing first submits must not start two.
    executor = executor_factory(max_workers=2)
    barrier = threading.Barrier(10)
    futures = []
    lock = threading.Lock()

    def submitter():
        barrier.wait(timeout=30)
        future = executor.submit(helpers.sleep_and_pid, 0.1)
        with lock:
            futures.append(future)

    threads = [threading.Thread(target=submitter) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    pids = {f.result(timeout=30) for f in futures}
    assert len(futures) == 10 and len(pids) <= 2


def test_submit_racing_with_shutdown_loses_no_accepted_task(executor_factory):
    executor = executor_factory(max_workers=2)
    accepted, refused = [], []
    lock = threading.Lock()
    start = threading.Barrier(5)

    def submitter():
        start.wait(timeout=30)
        for i in range(200):
            try:
                future = executor.submit(helpers.square, i)
            except ShutdownExecutorError:
                with lock:
                    refused.append(i)
                return
            with lock:
                accepted.append((i, future))

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.wait(timeout=30)
    executor.shutdown(wait=True)
    for thread in threads:
        thread.join(timeout=30)
    # Every task accepted before the shutdown ran to completion.
    for i, future in accepted:
        assert future.result(timeout=30) == i * i


def test_submit_from_done_callback(executor_factory):
    executor = executor_factory(max_workers=2)
    done = threading.Event()
    chain = []

    def on_done(future):
        chain.append(future.result())
        if len(chain) < 20:
            executor.submit(helpers.add, future.result(), 1).add_done_callback(on_done)
        else:
            done.set()

    executor.submit(helpers.add, 0, 1).add_done_callback(on_done)
    assert done.wait(timeout=30), f"callback chain stalled at {chain}"
    assert chain == list(range(1, 21))


def test_fan_out_from_done_callbacks(executor_factory):
    # joblib-style: each completion schedules more work from the callback.
    executor = executor_factory(max_workers=2)
    results = []
    lock = threading.Lock()
    all_done = threading.Event()
    expected = 1 + 5 + 25

    def on_done(future):
        value, depth = future.result()
        with lock:
            results.append(value)
            finished = len(results) == expected
        if depth < 2:
            for k in range(5):
                executor.submit(helpers.identity, (value * 5 + k, depth + 1)).add_done_callback(
                    on_done
                )
        if finished:
            all_done.set()

    executor.submit(helpers.identity, (0, 0)).add_done_callback(on_done)
    assert all_done.wait(timeout=30), f"{len(results)} of {expected} results"
    assert sorted(results) == sorted([0] + list(range(5)) + list(range(25)))


def test_callback_on_already_done_future_can_submit(executor_factory):
    executor = executor_factory(max_workers=1)
    first = executor.submit(helpers.square, 3)
    assert first.result(timeout=30) == 9
    nested = []
    first.add_done_callback(lambda f: nested.append(executor.submit(helpers.square, f.result())))
    assert nested[0].result(timeout=30) == 81


def test_raising_done_callback_is_logged_and_pool_carries_on(executor_factory, caplog):
    executor = executor_factory(max_workers=1)
    caplog.set_level(logging.ERROR, logger="concurrent.futures")
    later_callback_ran = threading.Event()

    def bad_callback(future):
        raise RuntimeError("callback blew up")

    future = executor.submit(helpers.square, 4)
    future.add_done_callback(bad_callback)
    future.add_done_callback(lambda f: later_callback_ran.set())
    assert future.result(timeout=30) == 16
    # The other callback still runs, and the error is logged with its traceback.
    assert later_callback_ran.wait(timeout=30)
    records = [
        r for r in caplog.records if r.exc_info and "callback blew up" in str(r.exc_info[1])
    ]
    assert records, [r.getMessage() for r in caplog.records]
    assert "callback" in records[0].getMessage()
    # The pool carries on.
    assert list(executor.map(helpers.square, range(5))) == [0, 1, 4, 9, 16]
    assert executor.submit(helpers.square, 5).result(timeout=30) == 25


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_callback_raising_base_exception_is_logged(executor_factory, caplog, exc_type):
    executor = executor_factory(max_workers=1)
    caplog.set_level(logging.ERROR, logger="concurrent.futures")
    ran = threading.Event()

    def bad_callback(future):
        ran.set()
        raise exc_type("from a callback")

    future = executor.submit(helpers.square, 4)
    future.add_done_callback(bad_callback)
    assert future.result(timeout=30) == 16
    assert ran.wait(timeout=30)
    assert helpers.wait_until(
        lambda: any(r.exc_info and isinstance(r.exc_info[1], exc_type) for r in caplog.records),
        timeout=10,
    )
    # The thread that completes futures survived it.
    assert [executor.submit(helpers.square, i).result(timeout=30) for i in range(3)] == [0, 1, 4]


def test_raising_callback_on_many_futures(executor_factory, caplog):
    executor = executor_factory(max_workers=2)
    caplog.set_level(logging.CRITICAL + 1, logger="concurrent.futures")  # keep output quiet
    futures = [executor.submit(helpers.square, i) for i in range(50)]
    for future in futures:
        future.add_done_callback(lambda f: 1 / 0)
    assert [f.result(timeout=30) for f in futures] == [i * i for i in range(50)]
    assert executor.submit(helpers.square, 2).result(timeout=30) == 4


def test_shutdown_from_a_done_callback_does_not_deadlock(executor_factory):
    executor = executor_factory(max_workers=1)
    returned = threading.Event()

    def shut(future):
        executor.shutdown(wait=True)
        returned.set()

    queued = [executor.submit(helpers.square, i) for i in range(3)]
    queued[0].add_done_callback(shut)
    assert returned.wait(timeout=30)
    assert [f.result(timeout=30) for f in queued] == [0, 1, 4]
    with pytest.raises(ShutdownExecutorError):
        executor.submit(helpers.square, 1)


def test_several_executors_used_from_several_threads():
    executors = [loky.ProcessPoolExecutor(max_workers=1) for _ in range(3)]
    results = [None] * 3

    def use(k):
        results[k] = sum(executors[k].map(helpers.add, range(50), [k] * 50, chunksize=7))

    threads = [threading.Thread(target=use, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [sum(range(50)) + 50 * k for k in range(3)]
    for executor in executors:
        executor.shutdown()
