"""The Future returned by the executors."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar
from concurrent.futures import Future as _StdFuture
from concurrent.futures import InvalidStateError

from ._cpython import future_states

PENDING, RUNNING, CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, LOGGER = future_states()

_T = TypeVar("_T")

_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)

# Guards the state of every future that has no Condition yet, and the making of one.
_no_condition_lock = threading.Lock()


class Future(_StdFuture[_T]):
    """A `concurrent.futures.Future` whose done-callbacks may raise: the error is logged
    and the remaining callbacks still run.

    A future created by an executor can be cancelled only while no worker has received
    its task.

    Most futures are read once they are done and never waited on, so the Condition a
    standard Future builds up front (the larger part of its cost) is made only when a
    thread waits, or when `concurrent.futures.wait` or `as_completed` takes the future.
    Until then `_no_condition_lock` guards its state.

    A thread that waits on the result of an executor's future has the executor hand
    the outcome to it directly (see `_PoolState.await_outcome`).

    A coroutine awaits it in any asyncio event loop (``await future``), as it would
    ``asyncio.wrap_future(future)``.
    """

    _lazy_condition = None
    # Made on first use too: most futures never get a waiter or a callback.
    _waiter_list = None
    _done_callbacks = ()  # a list once a callback is added
    # Set by the executor: `_queue.unqueue(_task_id)` takes the task back from the
    # queue (False once a worker may hold it); `_queue.task_running(_task_id)` tells
    # whether a worker runs it now; `_queue.await_outcome(future, timeout)` waits for
    # the outcome in this thread.
    _queue = None
    _task_id = None
    # Set by the executor too: the callable (for `worker_stats`) and the time limit of
    # the task (for the message of its TimeoutError).
    _fn = None
    _timeout = None

    def __init__(self) -> None:
        self._state = PENDING
        self._result = None
        self._exception = None

    if TYPE_CHECKING:
        # To type checkers, plain attributes, as on the standard Future.
        _condition: threading.Condition
        _waiters: list[Any]
    else:

        @property
        def _condition(self):
            condition = self._lazy_condition
            if condition is None:
                with _no_condition_lock:
                    condition = self._lazy_condition
                    if condition is None:
                        condition = self._lazy_condition = threading.Condition()
            return condition

        @property
        def _waiters(self):
            # Used by `concurrent.futures.wait` and `as_completed` under the Condition.
            waiters = self._waiter_list
            if waiters is None:
                waiters = self._waiter_list = []
            return waiters

    def _finish(self, ok: bool, value: Any) -> bool:
        """Set the outcome from the executor: the result if `ok`, else the exception
        `value`. Returns False if the future was already done (e.g. cancelled)."""
        with _no_condition_lock:
            if self._lazy_condition is None:
                if self._state in _DONE:
                    return False
                if ok:
                    self._result = value
                else:
                    self._exception = value
                self._state = FINISHED
                # Nobody waits on this future: only the callbacks are owed.
                notified = True
            else:
                notified = False
        if not notified:
            try:
                if ok:
                    self.set_result(value)
                else:
                    self.set_exception(value)
            except InvalidStateError:
                return False
        if notified:
            self._invoke_callbacks()
        return True

    def add_done_callback(self, fn: Callable[[Future[_T]], object]) -> None:
        with _no_condition_lock:
            condition = self._lazy_condition
            if condition is None and self._state not in _DONE:
                self._add_callback(fn)
                return
        if condition is not None:
            with condition:
                if self._state not in _DONE:
                    self._add_callback(fn)
                    return
        try:
            fn(self)
        except Exception:
            LOGGER.exception("exception calling callback for %r", self)

    def _add_callback(self, fn: Callable[[Future[_T]], object]) -> None:
        if self._done_callbacks:
            self._done_callbacks.append(fn)
        else:
            self._done_callbacks = [fn]

    # A single attribute read is atomic: no lock (and no Condition) needed.
    def done(self) -> bool:
        return self._state in _DONE

    def cancelled(self) -> bool:
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        state = self._state
        if state == PENDING and self._queue is not None:
            # The core owns the task's state: running from its start on a worker.
            return self._queue.task_running(self._task_id)
        return state == RUNNING

    def result(self, timeout: float | None = None) -> _T:
        # The outcome is written before the state turns FINISHED.
        if self._state == FINISHED and self._exception is None:
            return self._result
        return super().result(self._await_outcome(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(self._await_outcome(timeout))

    def _await_outcome(self, timeout: float | None) -> float | None:
        """Let the executor hand the outcome to this thread, if it can; returns what is
        left of `timeout` for the standard wait that follows."""
        if self._queue is None or self._state in _DONE:
            return timeout
        return self._queue.await_outcome(self, timeout)

    def __await__(self) -> Generator[Any, None, _T]:
        """``await future``, in the event loop that runs the awaiting coroutine: its
        result, or its exception raised. Cancelling the awaiting coroutine (a timeout,
        ``task.cancel()``) cancels the future: a task no worker has taken yet never
        runs; a running task runs on, unless ``terminate()`` ends it. A future the
        executor cancelled (``terminate()``, ``shutdown(cancel_futures=True)``) raises
        ``asyncio.CancelledError`` in the coroutine."""
        if self._state == FINISHED:
            return self.result()
        import asyncio  # here: most programs never await, and workers never do

        # The loop is woken from the thread that finishes the future; cancelling the
        # asyncio future cancels this one.
        return (yield from asyncio.wrap_future(self).__await__())

    def cancel(self) -> bool:
        if self._state == FINISHED:
            # Final: no lock needed. Executor.map calls this on every future it yields.
            return False
        with self._condition:
            if self._state == PENDING and self._queue is not None:
                if not self._queue.unqueue(self._task_id):
                    # A worker already holds the task.
                    self.set_running_or_notify_cancel()
                    return False
        cancelled = super().cancel()
        if cancelled and self._queue is not None:
            # Its task will never run: tell `wait()` and `as_completed()` now (a
            # standard executor does it when it would have started the task).
            self.set_running_or_notify_cancel()
        return cancelled

    def terminate(self) -> bool:
        """End the task whatever its state: a queued task is taken back; a running one
        has its worker, and every process that worker started, ended and replaced.
        The future is then cancelled (`CancelledError`). Returns False only if the
        future had already finished. Unlike `cancel()`, this stops running tasks."""
        if self._state == FINISHED:
            return False
        if self.cancel() or self.cancelled():
            return True
        if self._queue is not None:
            self._queue.terminate(self._task_id)
        return self._cancel_now() or self.cancelled()

    def _cancel_now(self) -> bool:
        """Cancel this future even if its task runs (the executor ends it); tells
        waiters and runs the callbacks. False if it was done already."""
        with _no_condition_lock:
            condition = self._lazy_condition
            if condition is None:
                if self._state in _DONE:
                    return False
                # No Condition: nobody waits on this future, only callbacks are owed.
                self._state = CANCELLED_AND_NOTIFIED
        if condition is not None:
            with condition:
                if self._state in _DONE:
                    return False
                self._state = CANCELLED
                condition.notify_all()
            self.set_running_or_notify_cancel()  # -> CANCELLED_AND_NOTIFIED, waiters told
        self._invoke_callbacks()
        return True

    def _invoke_callbacks(self) -> None:
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException:
                LOGGER.exception("exception calling callback for %r", self)
