"""The result side of a pool: its events applied to their futures, and logged.

    Pool.next_events() ─► result thread ─► _PoolState.handle(events)
    Pool.wait_outcome() ─► the thread waiting on one future ─► handle([event])
        TaskResult   ─► the future's result or exception (unpickled here)
        WorkerDied   ─► TerminatedWorkerError on its task
        TaskEnded    ─► TimeoutError, or the future cancelled (terminated)
        WorkerStarted / WorkerExited ─► the "loky" logger (an exit also finishes the
                                        worker's `WorkerProcess`, see `_processes`)
        InitFailed / StartFailed     ─► the executor is broken, its futures fail
        PoolClosed   ─► the result thread ends

Lifecycle events (workers started, recycled, crashed; resizes; shutdowns) are logged to
the ``loky`` logger, silent unless logging is configured, and to multiprocessing's
logger when ``multiprocessing.util.log_to_stderr()`` is on, as loky does. The result
thread runs while its pool is in `_live_pools`, which also holds what the interpreter's
exit and Ctrl-C do to the pools.
"""

import functools
import logging
import os
import warnings
from time import monotonic

from . import _core, _cpython, _inherit, _live_pools
from ._core import EndCause, ExitReason
from ._errors import (
    BrokenProcessPool,
    _decode_result,
    _format_exitcodes,
    _inherited_error,
    _memory_limit_error,
    _shut_down_error,
    _start_error,
    _terminated_worker_error,
    _timeout_error,
    _with_attempts,
    _with_cause,
    _worker_start_error,
)
from ._processes import WorkerProcesses

_logger = logging.getLogger("loky")
_logger.addHandler(logging.NullHandler())  # silent unless the user configures logging


def _log(level, message, *args):
    """Log a lifecycle event to the "loky" logger, and to multiprocessing's when
    ``multiprocessing.util.log_to_stderr()`` turned it on."""
    _logger.log(level, message, *args)
    mp_logger = _cpython.mp_logger()
    if mp_logger is not None:
        mp_logger.log(level, message, *args)


# The reasons a worker is replaced routinely, and what the log says of each.
_RECYCLED = {
    ExitReason.MEMORY_GROWTH: "its memory grew past LOKY_MAX_MEMORY_LEAK_SIZE",
    ExitReason.TASK_LIMIT: "it ran max_tasks_per_child tasks",
    ExitReason.MEMORY_LIMIT: "its memory passed max_worker_memory",
}


def _fail(future, error):
    future._finish(False, error)  # no-op if it finished or was cancelled meanwhile


class _PoolState:
    """What the result thread shares with the executor: no reference to the executor
    itself, so an executor nobody holds can be garbage collected."""

    def __init__(self, pool, has_initializer, flags, start_fds=(), max_worker_memory=None):
        self.pool = pool
        self.max_worker_memory = max_worker_memory
        # The executor's `_flags`, which hold the `broken` reason: they outlive the
        # executor and hold no reference to this state, so that a pool nobody uses can
        # be released as soon as its executor is collected.
        self.flags = flags
        self.owner_pid = os.getpid()
        self.futures = {}
        # Descriptors the workers inherit at start (from the initializer's arguments):
        # ours to close once the pool has closed and starts no worker.
        self.start_fds = list(start_fds)
        # What `executor._processes` hands out.
        self.processes = WorkerProcesses(pool)
        self.has_initializer = has_initializer
        self.closed = False  # the result thread has stopped
        self.log_thread = None  # with forward_logging: hands the workers' records over
        self.warned_of_growth = False
        self._handlers = {
            _core.TaskResult: self._on_result,
            _core.WorkerDied: self._on_worker_died,
            _core.TaskEnded: self._on_task_ended,
            _core.WorkerStarted: self._on_worker_started,
            _core.WorkerExited: self._on_worker_exited,
            _core.InitFailed: self._on_init_failed,
            _core.StartFailed: self._on_start_failed,
            _core.PoolClosed: self._on_closed,
        }

    @property
    def broken(self):
        """The error message once the pool cannot run tasks, else None."""
        return self.flags.broken

    @broken.setter
    def broken(self, reason):
        self.flags.broken = reason

    def inherited(self):
        """True in a process forked from the one that started this pool."""
        return not self.pool.owned_here()

    def unqueue(self, task_id):
        try:
            taken = self.pool.cancel(task_id)
        except _core.InheritedPoolError:
            return False
        if taken:
            self.futures.pop(task_id, None)
        return taken

    def task_running(self, task_id):
        """Whether a worker runs the task now (or is being ended for it)."""
        try:
            state = self.pool.task_state(task_id)
        except _core.InheritedPoolError:
            return False
        return state is _core.TaskState.RUNNING or state is _core.TaskState.ENDING

    def terminate(self, task_id):
        """End the task (see `Future.terminate`); True if it was still queued."""
        try:
            return self.pool.terminate(task_id)
        except _core.InheritedPoolError:
            raise _inherited_error(self.owner_pid, "This future") from None

    def await_outcome(self, future, timeout):
        """Wait for `future`'s outcome in this thread: the manager hands it over
        directly, sparing a hop through the result thread. Returns what is left of
        `timeout` for a standard wait on the future (the outcome went the usual way)."""
        deadline = None if timeout is None else monotonic() + timeout
        apply = functools.partial(self._apply_claimed, future)
        try:
            interruption = self.pool.wait_outcome(future._task_id, timeout, future.done, apply)
        except _core.InheritedPoolError:
            raise _inherited_error(self.owner_pid, "This future") from None
        if interruption is not None:
            raise interruption
        return None if deadline is None else max(0.0, deadline - monotonic())

    def _apply_claimed(self, future, event):
        """Apply an outcome handed to the thread waiting on `future`. The core calls
        this again if a signal handler raises in the middle (Ctrl-C): a second run
        finishes what the first left, and does nothing once the future is finished."""
        if not future.done():
            self.futures.setdefault(future._task_id, future)
        self.handle([event])

    def fail_all(self, make_error, spare=()):
        """Fail every unfinished future but those whose task ids are in `spare`."""
        futures, self.futures = self.futures, {}
        for task_id, future in futures.items():
            if task_id in spare:
                self.futures[task_id] = future
            else:
                _fail(future, make_error())

    def handle(self, events):
        """Apply one batch of events from the core. False once the pool has closed."""
        handlers = self._handlers
        for event in events:
            if handlers[type(event)](event) is False:
                return False
        return True

    def _on_result(self, event):
        future = self.futures.pop(event.task_id, None)
        if future is not None:
            # No-op if cancelled or failed by a kill meanwhile.
            future._finish(*_decode_result(event))

    def _on_worker_died(self, event):
        future = self.futures.pop(event.task_id, None)
        if future is not None:
            error = _terminated_worker_error(event.pid, event.exitcode, event.reason)
            _fail(future, _with_attempts(error, event.attempts))

    def _on_task_ended(self, event):
        future = self.futures.pop(event.task_id, None)
        if future is None:
            return
        if event.cause is EndCause.TIMEOUT:
            _log(logging.WARNING, "loky worker %d ended: its task ran past its timeout of %s s",
                 event.pid, future._timeout)
            error = _timeout_error(future._timeout, event.pid)
        elif event.cause is EndCause.MEMORY_LIMIT:
            _log(logging.WARNING, "loky worker %d ended: its memory passed max_worker_memory "
                 "while it ran a task", event.pid)
            error = _memory_limit_error(
                self.max_worker_memory, event.peak_rss, event.pid, future._fn
            )
        else:
            future._cancel_now()  # terminated: cancelled already, unless it raced
            return
        _fail(future, _with_attempts(error, event.attempts))

    def _on_worker_started(self, event):
        how = "forked from the template" if event.forked else "started"
        _log(logging.DEBUG, "loky worker %d %s", event.pid, how)

    def _on_worker_exited(self, event):
        self.processes.record_exit(event.pid, event.exitcode)
        status = _format_exitcodes([event.exitcode])
        reason = event.reason
        if reason is ExitReason.DIED or reason is ExitReason.KILLED:
            _log(
                logging.WARNING,
                "loky worker %d %s with status %s; a replacement starts",
                event.pid,
                "died" if reason is ExitReason.DIED else "was killed for breaking its channel",
                status,
            )
        elif reason in _RECYCLED:
            _log(logging.INFO, "loky worker %d recycled: %s", event.pid, _RECYCLED[reason])
            if reason is ExitReason.MEMORY_GROWTH and not self.warned_of_growth:
                # One warning per executor (the log has every recycle).
                self.warned_of_growth = True
                warnings.warn(
                    "A loky worker was replaced because its memory grew by more than "
                    "LOKY_MAX_MEMORY_LEAK_SIZE bytes (300 MB by default) while it ran "
                    "tasks: a possible memory leak in the tasks. Its tasks' results "
                    "are not affected.",
                    UserWarning,
                    stacklevel=1,
                )
        else:
            _log(logging.DEBUG, "loky worker %d exited (%s)", event.pid, reason)

    def _on_init_failed(self, event):
        self._break(_worker_start_error(event.body))

    def _on_start_failed(self, event):
        if event.pid:  # 0: no process was started
            self.processes.record_exit(event.pid, event.exitcode)
        self._break(
            _start_error(
                event.pid, event.exitcode, event.errno, event.message, self.has_initializer
            )
        )

    def _on_closed(self, event):
        return False

    def _break(self, error):
        if self.broken is None:
            self.broken = str(error)
            _log(logging.ERROR, "loky executor broken: %s", self.broken)
            self.pool.shutdown(_core.Shutdown.KILL)
        self.fail_all(lambda: _with_cause(BrokenProcessPool(self.broken), error.__cause__))


def _run_results(state):
    """Body of the result thread: apply event batches until the pool closes."""
    try:
        while state.handle(state.pool.next_events()):
            pass
    finally:
        state.closed = True
        _inherit.close_passed(state.start_fds)
        state.start_fds = []
        state.processes.finish_all()
        # Outcomes handed to a waiting thread are that thread's to apply.
        state.fail_all(_shut_down_error, spare=set(state.pool.claimed_outcomes()))
        _live_pools.discard(state)
