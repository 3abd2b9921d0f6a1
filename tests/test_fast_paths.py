"""The cheap paths keep the semantics of the slow ones: futures whose Condition is made
only when someone waits, tasks pickled with the standard pickler when cloudpickle would
produce the same thing, and outcomes handed straight to the thread that waits for them."""

import concurrent.futures
import copyreg
import signal
import sys
import threading
import time
import types

import pytest

import helpers
import loky
from loky._base import Future
from loky.backend import reduction

pytestmark = pytest.mark.timeout(120)


# -- futures without a Condition until one is needed --------------------------------


def test_finish_then_read_needs_no_condition():
    future = Future()
    assert future._finish(True, 42)
    assert future.done() and not future.running() and not future.cancelled()
    assert future.result() == 42 and future.exception() is None
    assert future._lazy_condition is None
    assert not future._finish(True, 43), "a second outcome must be refused"
    assert future.result() == 42


def test_failed_future_raises_its_exception():
    future = Future()
    error = ValueError("boom")
    assert future._finish(False, error)
    assert future.exception() is error
    with pytest.raises(ValueError, match="boom"):
        future.result()


def test_callbacks_run_once_whether_added_before_or_after():
    future = Future()
    seen = []
    future.add_done_callback(lambda f: seen.append(("before", f.result())))
    future._finish(True, 1)
    future.add_done_callback(lambda f: seen.append(("after", f.result())))
    assert seen == [("before", 1), ("after", 1)]


def test_cancel_then_finish_is_refused():
    future = Future()
    assert future.cancel()
    assert not future._finish(True, 1)
    assert future.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result()


@pytest.mark.parametrize("how", ["result", "wait", "as_completed"])
def test_waiters_wake_when_the_outcome_arrives_at_any_moment(how):
    # A waiter may make the Condition just before, during or after the outcome is
    # set without one: it must always wake with the result.
    for i in range(300):
        future = Future()
        got = []

        def wait_for_it():
            if how == "result":
                got.append(future.result(timeout=30))
            elif how == "wait":
                concurrent.futures.wait([future], timeout=30)
                got.append(future.result(timeout=0))
            else:
                got.extend(f.result() for f in concurrent.futures.as_completed([future], 30))

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        if i % 3 == 0:
            sys.getswitchinterval()  # no pause: race with the waiter's start
        elif i % 3 == 1:
            threading.Event().wait(0.0005)
        future._finish(True, i)
        waiter.join(30)
        assert not waiter.is_alive() and got == [i]


def test_executor_futures_work_with_wait_and_as_completed(executor_factory):
    executor = executor_factory(max_workers=2)
    futures = [executor.submit(helpers.square, i) for i in range(200)]
    done, not_done = concurrent.futures.wait(futures, timeout=60)
    assert not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == sorted(
        i * i for i in range(200)
    )


# -- the standard pickler where cloudpickle would do the same ----------------------------


def test_by_reference_tasks_take_the_plain_pickler(executor_factory):
    executor = executor_factory(max_workers=1)
    dumps = executor._serializer.dumps_in_order()
    assert dumps[0] is reduction._plain_unless_main
    assert executor.submit(helpers.add, 2, b=3).result(timeout=30) == 5


def test_objects_of_main_are_left_to_cloudpickle():
    main = types.ModuleType("__main__")
    exec("class Box:\n    pass\n", main.__dict__)
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = main
    try:
        assert reduction._plain_unless_main((helpers.identity, (main.Box(),), {}), None) is None
    finally:
        sys.modules["__main__"] = saved


def test_a_module_registered_by_value_travels_by_value(executor_factory):
    cloudpickle = pytest.importorskip("cloudpickle")
    # A module only this process has: the worker cannot import it.
    module = types.ModuleType("loky_module_only_here")
    exec("def triple(x):\n    return 3 * x\n", module.__dict__)
    sys.modules[module.__name__] = module
    executor = executor_factory(max_workers=1)
    try:
        # By reference, the worker cannot find it...
        with pytest.raises(loky.BrokenProcessPool, match="un-serialize"):
            executor.submit(module.triple, 2).result(timeout=30)
        # ...by value, it can: the plain pickler must step aside.
        cloudpickle.register_pickle_by_value(module)
        assert executor._serializer.dumps_in_order() == (executor._serializer.dumps,)
        assert executor.submit(module.triple, 2).result(timeout=30) == 6
    finally:
        try:
            cloudpickle.unregister_pickle_by_value(module)
        except ValueError:
            pass
        del sys.modules[module.__name__]


def test_globally_registered_reducers_still_apply(executor_factory):
    # A class the plain pickler could send by reference: the reducer must win.
    reduction.register(helpers.CustomBaseException, lambda obj: (str, ("reduced",)))
    try:
        executor = executor_factory(max_workers=1)
        arg = helpers.CustomBaseException()
        assert executor.submit(helpers.identity, arg).result(timeout=30) == "reduced"
    finally:
        del reduction._registered_reducers[helpers.CustomBaseException]


def test_reducers_registered_after_tasks_were_pickled_apply_to_later_tasks(
    executor_factory,
):
    # The executor keeps one pickler across tasks: a registration made since (or a
    # reducer replaced) must not go unseen by it.
    executor = executor_factory(max_workers=1)
    arg = helpers.CustomBaseException()
    assert type(executor.submit(helpers.identity, arg).result(timeout=30)) is type(arg)
    assert executor.submit(helpers.identity, [1]).result(timeout=30) == [1]  # other path
    try:
        reduction.register(helpers.CustomBaseException, lambda obj: (str, ("first",)))
        assert executor.submit(helpers.identity, arg).result(timeout=30) == "first"
        reduction.register(helpers.CustomBaseException, lambda obj: (str, ("second",)))
        assert executor.submit(helpers.identity, [arg]).result(timeout=30) == ["second"]
    finally:
        del reduction._registered_reducers[helpers.CustomBaseException]
    assert type(executor.submit(helpers.identity, arg).result(timeout=30)) is type(arg)


class _Unrelated:
    """A type with a registered reducer, which makes tasks take the loky pickler."""


def test_a_copyreg_reducer_replaced_applies_to_later_tasks(executor_factory):
    # Once any reducer is registered, tasks take the loky pickler, whose dispatch table
    # merges copyreg's; replacing copyreg's reducer of a type it already had (the
    # table keeps its size) must not go unseen either.
    executor = executor_factory(max_workers=1)
    arg = helpers.CustomBaseException()
    reduction.register(_Unrelated, lambda obj: (str, ("unrelated",)))
    try:
        copyreg.pickle(helpers.CustomBaseException, lambda obj: (str, ("first",)))
        assert executor.submit(helpers.identity, arg).result(timeout=30) == "first"
        copyreg.pickle(helpers.CustomBaseException, lambda obj: (str, ("second",)))
        assert executor.submit(helpers.identity, arg).result(timeout=30) == "second"
    finally:
        copyreg.dispatch_table.pop(helpers.CustomBaseException, None)
        del reduction._registered_reducers[_Unrelated]
    assert type(executor.submit(helpers.identity, arg).result(timeout=30)) is type(arg)


# -- a waiting thread takes its outcome from the manager in person ------------------------


class _Alarm(Exception):
    pass


def _raise_alarm(signum, frame):
    raise _Alarm()


@pytest.mark.posix_only("interrupts the wait with SIGALRM, which Windows does not have")
def test_a_signal_interrupts_a_wait_and_the_outcome_is_not_lost(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    future = executor.submit(helpers.wait_for_path, str(gate), "late")
    previous = signal.signal(signal.SIGALRM, _raise_alarm)
    try:
        with pytest.raises(_Alarm):
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            future.result()
        # The task waits for the gate, still closed: the signal did not wait for it.
        assert not future.done(), "the signal waited for the task"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    gate.touch()
    assert future.result(timeout=30) == "late"


def test_a_timed_out_wait_leaves_the_outcome_to_a_later_one(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    future = executor.submit(helpers.wait_for_path, str(gate), "late")
    started = time.monotonic()
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.1)
    # It waited its timeout (the upper bound only detects a hang).
    assert 0.09 < time.monotonic() - started < 10
    assert not future.done()
    gate.touch()
    assert future.exception(timeout=30) is None
    assert future.result() == "late"


def test_several_threads_wait_on_one_future(executor_factory):
    executor = executor_factory(max_workers=1)
    future = executor.submit(helpers.sleep_and_return, 0.3, "shared")
    got = []
    threads = [threading.Thread(target=lambda: got.append(future.result(30))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert got == ["shared"] * 4


def test_cancelling_a_future_ends_a_wait_on_it(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    # Holds the only worker until the gate opens: `queued` cannot start before.
    blocker = executor.submit(helpers.wait_for_path, str(gate), None)
    queued = executor.submit(helpers.square, 3)
    outcome = []

    def wait():
        try:
            outcome.append(queued.result(timeout=30))
        except concurrent.futures.CancelledError:
            outcome.append("cancelled")

    waiter = threading.Thread(target=wait)
    waiter.start()
    # Most likely the waiter is in its wait by now; if not, it finds the future
    # cancelled: the outcome is the same.
    time.sleep(0.1)
    assert queued.cancel()
    waiter.join(30)
    assert outcome == ["cancelled"]
    gate.touch()
    blocker.result(timeout=30)


def test_many_waits_while_the_result_thread_is_busy(executor_factory):
    # Outcomes race between the result thread and the waiting thread's claim.
    executor = executor_factory(max_workers=2)
    for _ in range(5):
        futures = [executor.submit(helpers.square, i) for i in range(2000)]
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(2000)]


def test_claimed_outcomes_survive_a_graceful_shutdown():
    # The pool may close while an outcome waits for its claimer: it must still land.
    for _ in range(20):
        executor = loky.ProcessPoolExecutor(max_workers=2)
        futures = [executor.submit(helpers.square, i) for i in range(50)]
        stopper = threading.Thread(target=executor.shutdown)
        stopper.start()
        try:
            assert [f.result(timeout=30) for f in futures] == [i * i for i in range(50)]
        finally:
            stopper.join(30)


class _OpenGateWhenWaiting:
    """Stands for a pool: `wait_outcome` opens `gate` once the wait has claimed the
    outcome (its first look at the future), so the task finishes only after that."""

    def __init__(self, pool, gate):
        self._pool, self._gate = pool, gate

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def wait_outcome(self, task_id, timeout, done, apply):
        def open_gate_then_look():
            self._gate.touch()
            return done()

        return self._pool.wait_outcome(task_id, timeout, open_gate_then_look, apply)


def test_an_outcome_being_applied_by_its_waiter_survives_the_pool_closing(tmp_path):
    # The waiting thread has taken its outcome but not yet applied it when the pool
    # closes: the closing result thread must leave that future to it.
    executor = loky.ProcessPoolExecutor(max_workers=1)
    gate = tmp_path / "gate"
    future = executor.submit(helpers.wait_for_path, gate, "applied", 60)
    state = executor._state
    state.pool = _OpenGateWhenWaiting(state.pool, gate)
    stopper = threading.Thread(target=executor.shutdown)
    handle = state.handle
    applied_by_waiter = []

    def handle_once_closed(events):
        if threading.current_thread() is threading.main_thread():
            applied_by_waiter.append(True)
            stopper.start()
            state.thread.join(60)  # the result thread has closed the pool
            assert not state.thread.is_alive()
        return handle(events)

    state.handle = handle_once_closed
    try:
        assert future.result(timeout=60) == "applied"
        assert applied_by_waiter == [True]
    finally:
        gate.touch()
        if not applied_by_waiter:
            stopper.start()
        stopper.join(60)
