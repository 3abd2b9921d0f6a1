"""ProcessPoolExecutor: run callables in a pool of fresh Python interpreters.

Data flow::

    submit(fn, *args)  -- pickled here, in the caller's thread, one task at a time
        |
        v
    _core.Pool (Rust)  -- queue -> manager thread -> one socket per worker -> worker
        |                 (spawns, dispatches, reads results, sees deaths at once)
        v
    result thread      -- Pool.next_events(): a batch of events per wake-up, each
        |                 applied to its future (or logged) under one GIL hold
    result() waiting   -- Pool.wait_outcome(): the manager hands that task's outcome
                          to the waiting thread directly, which applies it

The Rust core never runs Python code; this module only pickles, unpickles, keeps the
futures and says what happened. A worker that dies fails only the task it was running
and is replaced.

An executor belongs to the process that started its workers. In a process forked from
that one, it refuses new tasks with a clear error, its unfinished futures raise instead
of waiting for ever, and `shutdown()` returns at once: the workers are the parent's.
`get_reusable_executor()` gives such a process an executor of its own.

Lifecycle events (workers started, recycled, crashed; resizes; shutdowns) are logged to
the ``loky`` logger, silent unless logging is configured, and to multiprocessing's
logger when ``multiprocessing.util.log_to_stderr()`` is on, as loky does.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import sys
import threading
import weakref
from time import monotonic
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool as _StdBrokenProcessPool
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from multiprocessing.context import BaseContext
from pickle import PicklingError
from typing import Any, ParamSpec, TypeVar

from . import _core
from ._base import Future
from ._payload import pack, release_cached_segments, unpack
from ._tasks import OK, RAISED, TASK_NOT_RECEIVED, TASK_UNPICKLE_FAILED, run_chunk
from .backend import reduction
from . import _inherit
from ._options import ExecutorOptions, check_int, check_seconds
from .backend.context import executor_start_method

_T = TypeVar("_T")
_P = ParamSpec("_P")

__all__ = [
    "ProcessPoolExecutor",
    "BrokenProcessPool",
    "TerminatedWorkerError",
    "ShutdownExecutorError",
    "LokyRecursionError",
]


def _depth_of_this_process():
    worker = sys.modules.get("loky._worker")
    return worker.DEPTH if worker is not None else 0


# Nesting depth: 0 in the main process, parent's + 1 in a worker.
_CURRENT_DEPTH = _depth_of_this_process()
MAX_DEPTH = int(os.environ.get("LOKY_MAX_DEPTH", 10))


class LokyRecursionError(RuntimeError):
    """A process tries to start executors nested deeper than LOKY_MAX_DEPTH."""


class BrokenProcessPool(_StdBrokenProcessPool):
    """The executor cannot run tasks any more, or a task's payload could not travel."""


class TerminatedWorkerError(BrokenProcessPool):
    """The worker running a task died (signal, os._exit, out-of-memory kill...)."""


class ShutdownExecutorError(RuntimeError):
    """The executor was shut down while a task was pending or running."""


class _RemoteTraceback(Exception):
    """Carries the worker-side traceback text as the cause of a task's exception."""

    def __init__(self, tb=None):
        self.tb = f'\n"""\n{tb}"""'

    def __str__(self):
        return self.tb


def _rebuild_exc(exc, tb):
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


class _ExceptionWithTraceback:
    """Pickles `exc` so that it unpickles with its traceback text as the cause."""

    def __init__(self, exc):
        import traceback

        tb = exc.__traceback__ or sys.exc_info()[2]
        self.exc = exc
        self.tb = "".join(traceback.format_exception(type(exc), exc, tb))

    def __reduce__(self):
        return _rebuild_exc, (self.exc, self.tb)


def _signal_name(exitcode):
    if exitcode < 0:
        import signal

        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return "UNKNOWN"
    return "EXIT" if exitcode != 255 else "UNKNOWN"


def _format_exitcodes(exitcodes):
    return "{" + ", ".join(f"{_signal_name(e)}({e})" for e in exitcodes) + "}"


def _terminated_worker_error(pid, exitcode, reason):
    if reason:
        return TerminatedWorkerError(
            f"The executor killed worker {pid} because its channel carried something "
            f"that is not a message of this package ({reason}). Did the task write to "
            "or read from file descriptor 3? That descriptor belongs to the worker. "
            f"The exit codes of the workers are {_format_exitcodes([exitcode])}."
        )
    return TerminatedWorkerError(
        "A worker process managed by the executor was unexpectedly terminated. "
        "This could be caused by a segmentation fault while calling the function "
        "or by an excessive memory usage causing the Operating System to kill the "
        f"worker.\n\nThe exit codes of the workers are {_format_exitcodes([exitcode])}"
        f" (worker pid {pid}).\nDetailed tracebacks of the workers should have been "
        "printed to stderr in the executor process if faulthandler was not disabled."
    )


def _with_cause(error, cause):
    error.__cause__ = cause
    return error


_logger = logging.getLogger("loky")
_logger.addHandler(logging.NullHandler())  # silent unless the user configures logging


def _log(level, message, *args):
    """Log a lifecycle event to the "loky" logger, and to multiprocessing's when
    ``multiprocessing.util.log_to_stderr()`` turned it on."""
    _logger.log(level, message, *args)
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None and mp_util._logger is not None:
        mp_util._logger.log(level, message, *args)


def _lost_result_error(event):
    if event.descriptor_dropped:
        return OSError(
            errno.EMFILE,
            "The result of this task carried its large buffers in shared memory, and "
            "this process could not receive them: it had no file descriptor left (see "
            "`ulimit -n`; results kept alive hold none, so they are held elsewhere in "
            f"the program). Worker {event.pid} is fine and keeps running tasks.",
        )
    return OSError(
        "The result of this task carried its large buffers in shared memory, and this "
        f"process could not map them: {event.map_error}. Worker {event.pid} is fine and "
        "keeps running tasks.",
    )


def _decode_result(event):
    """Turn a TaskResult event into (ok, value_or_exception)."""
    if event.descriptor_dropped or event.map_error is not None:
        return False, _lost_result_error(event)
    try:
        outcome = unpack(event.body, event.segment)
    except BaseException as exc:
        import traceback

        return False, _with_cause(
            BrokenProcessPool(
                "A result has failed to un-serialize. Please ensure that the objects "
                "returned by the function are always picklable."
            ),
            _RemoteTraceback("".join(traceback.format_exception(exc))),
        )
    tag = outcome[0]
    if tag == OK:
        return True, outcome[1]
    if tag == RAISED:
        return False, _with_cause(outcome[1], _RemoteTraceback(outcome[2]))
    if tag == TASK_NOT_RECEIVED:
        return False, OSError(outcome[1])
    assert tag == TASK_UNPICKLE_FAILED, tag
    return False, _with_cause(
        BrokenProcessPool(
            "A task has failed to un-serialize. Please ensure that the arguments of "
            "the function are all picklable."
        ),
        _RemoteTraceback(outcome[1]),
    )


def _shut_down_error():
    return ShutdownExecutorError("The executor was shut down.")


def _inherited_error(owner_pid, what):
    return RuntimeError(
        f"{what} belongs to an executor whose workers were started by process "
        f"{owner_pid}; this process ({os.getpid()}) was forked from it and cannot use "
        "them. Create a new executor in this process (get_reusable_executor() makes "
        "one by itself)."
    )


def _fail(future, error):
    future._finish(False, error)  # no-op if it finished or was cancelled meanwhile


class _PoolState:
    """What the result thread shares with the executor: no reference to the executor
    itself, so an executor nobody holds can be garbage collected."""

    def __init__(self, pool, has_initializer):
        self.pool = pool
        self.owner_pid = os.getpid()
        self.futures = {}
        self.broken = None  # error message once the pool cannot run tasks
        self.has_initializer = has_initializer
        self.closed = False  # the result thread has stopped
        self._handlers = {
            _core.TaskResult: self._on_result,
            _core.WorkerDied: self._on_worker_died,
            _core.WorkerStarted: self._on_worker_started,
            _core.WorkerExited: self._on_worker_exited,
            _core.InitFailed: self._on_init_failed,
            _core.StartFailed: self._on_start_failed,
            _core.PoolClosed: self._on_closed,
        }

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

    def await_outcome(self, future, timeout):
        """Wait for `future`'s outcome in this thread: the manager hands it over
        directly, sparing a hop through the result thread. Returns what is left of
        `timeout` for a standard wait on the future (the outcome went the usual way)."""
        deadline = None if timeout is None else monotonic() + timeout
        try:
            event, interruption = self.pool.wait_outcome(future._task_id, timeout, future.done)
        except _core.InheritedPoolError:
            raise _inherited_error(self.owner_pid, "This future") from None
        if event is not None:
            self.handle([event])
        if interruption is not None:
            raise interruption
        return None if deadline is None else max(0.0, deadline - monotonic())

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
            _fail(future, _terminated_worker_error(event.pid, event.exitcode, event.reason))

    def _on_worker_started(self, event):
        how = "forked from the template" if event.forked else "started"
        _log(logging.DEBUG, "loky worker %d %s", event.pid, how)

    def _on_worker_exited(self, event):
        status = _format_exitcodes([event.exitcode])
        if event.reason in ("died", "killed"):
            _log(
                logging.WARNING,
                "loky worker %d %s with status %s; a replacement starts",
                event.pid,
                "died" if event.reason == "died" else "was killed for breaking its channel",
                status,
            )
        elif event.reason in ("memory growth", "task limit"):
            limit = {
                "memory growth": "its memory grew past LOKY_MAX_MEMORY_LEAK_SIZE",
                "task limit": "it ran max_tasks_per_child tasks",
            }[event.reason]
            _log(logging.INFO, "loky worker %d recycled: %s", event.pid, limit)
        else:
            _log(logging.DEBUG, "loky worker %d exited (%s)", event.pid, event.reason)

    def _on_init_failed(self, event):
        self._break(_initializer_error(event.body))

    def _on_start_failed(self, event):
        self._break(_start_error(event.pid, event.exitcode, event.message, self.has_initializer))

    def _on_closed(self, event):
        return False

    def _break(self, error):
        if self.broken is None:
            self.broken = str(error)
            _log(logging.ERROR, "loky executor broken: %s", self.broken)
            self.pool.shutdown(True)
        self.fail_all(lambda: _with_cause(BrokenProcessPool(self.broken), error.__cause__))


def _initializer_error(body):
    from pickle import loads

    exc, tb = loads(body)
    error = BrokenProcessPool(
        "A worker failed to run the executor's initializer, so the executor cannot "
        f"run tasks: {exc!r}. Fix the initializer (its traceback is the cause of this "
        "error) and create a new executor."
    )
    error.__cause__ = _RemoteTraceback(tb)
    if exc is not None:
        error.__cause__.__cause__ = exc
    return error


def _start_error(pid, exitcode, message, has_initializer):
    if message:
        return BrokenProcessPool(f"The executor could not start its workers: {message}.")
    status = _format_exitcodes([exitcode])
    if has_initializer:
        return BrokenProcessPool(
            f"Worker process {pid} died with status {status} before it was ready, "
            "most likely in the executor's initializer (a crash or os._exit there). "
            "Fix the initializer and create a new executor; the worker's stderr may "
            "say more."
        )
    return BrokenProcessPool(
        f"The executor could not start its workers: worker process {pid} exited "
        f"with status {status} before it was ready. Check that {sys.executable!r} "
        "can import loky (its stderr may say more)."
    )


def _run_results(state):
    """Body of the result thread: apply event batches until the pool closes."""
    try:
        while state.handle(state.pool.next_events()):
            pass
    finally:
        state.closed = True
        # Outcomes handed to a waiting thread are that thread's to apply.
        state.fail_all(_shut_down_error, spare=set(state.pool.claimed_outcomes()))
        _live_pools.discard(state)


# Pools whose result thread is running: shut down at interpreter exit.
_live_pools = set()
_interpreter_exiting = False


def _on_interpreter_exit():
    """Let pending tasks finish, then stop every pool before the interpreter goes."""
    global _interpreter_exiting
    _interpreter_exiting = True
    for state in list(_live_pools):
        state.pool.shutdown(False)
    for state in list(_live_pools):
        thread = state.thread
        if thread is not threading.current_thread():
            thread.join()


threading._register_atexit(_on_interpreter_exit)

_WORKER_BOOTSTRAP = "from loky._worker import main; main({pid})"
_TEMPLATE_BOOTSTRAP = "from loky._worker import serve_template; serve_template()"


def _check_max_depth():
    if 0 < MAX_DEPTH <= _CURRENT_DEPTH:
        raise LokyRecursionError(
            f"Could not spawn extra nested workers at depth {_CURRENT_DEPTH}: the "
            f"limit is {MAX_DEPTH}. Raise it with the LOKY_MAX_DEPTH environment "
            "variable if this nesting is intended."
        )


def _chunks(chunksize, *iterables):
    it = zip(*iterables)
    while chunk := tuple(itertools.islice(it, chunksize)):
        yield chunk


class ProcessPoolExecutor(Executor):
    """An executor that runs calls in a pool of worker processes.

    Workers are fresh Python interpreters started on the first `submit`. A worker that
    dies fails only the task it was running (with `TerminatedWorkerError`) and is
    replaced; the executor keeps working.

    Args:
        max_workers: number of worker processes (default: `cpu_count()`).
        job_reducers, result_reducers: dicts of type -> reduce function used when
            pickling tasks (in this process) and results (in the workers). Without
            `result_reducers`, `job_reducers` are used for both.
        timeout: seconds after which an idle worker exits; the pool grows back on the
            next submit. None keeps workers until shutdown.
        context: start method name or multiprocessing context: "loky" (default),
            "loky_init_main", "spawn" or "forkserver". Workers are always fresh
            interpreters started by fork+exec; with "loky_init_main" and "spawn" each
            one first imports the parent's ``__main__`` as ``__mp_main__``. "fork" is
            refused (ValueError).
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker
            before its first task.
        env: environment variables (str to str) set in each worker before its
            interpreter starts.
        max_tasks_per_child: replace a worker after it has run this many tasks.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        job_reducers: dict[type, Callable[[Any], Any]] | None = None,
        result_reducers: dict[type, Callable[[Any], Any]] | None = None,
        timeout: float | None = None,
        context: str | BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        env: dict[str, str] | None = None,
        max_tasks_per_child: int | None = None,
    ) -> None:
        options = ExecutorOptions(
            max_workers=max_workers,
            context=context,
            timeout=timeout,
            job_reducers=job_reducers,
            result_reducers=result_reducers,
            initializer=initializer,
            initargs=initargs,
            env=env,
            max_tasks_per_child=max_tasks_per_child,
        )
        _check_max_depth()
        self._options = options
        self._max_workers = options.max_workers
        self._env = options.env
        self._context = options.context
        self._start_method = executor_start_method(options.context)
        self._initializer = options.initializer
        self._initargs = options.initargs
        self._job_reducers = options.job_reducers
        self._result_reducers = (
            options.job_reducers if options.result_reducers is None else options.result_reducers
        )
        self._timeout = options.timeout
        self._max_tasks_per_child = options.max_tasks_per_child
        self._submit_lock = threading.Lock()
        # Used under _submit_lock only: one task is pickled at a time.
        self._serializer = reduction.Serializer(job_reducers)
        self._task_ids = itertools.count()
        self._state = None
        self._shutdown_thread = False

    # -- starting ---------------------------------------------------------------

    def _init_message(self, child_settings=None):
        settings = {
            "depth": _CURRENT_DEPTH + 1,
            "sys_path": list(sys.path),
            "pickler": reduction.get_loky_pickler_name(),
        }
        # Resource tracker pipe, joblib switch, authkey, __main__ (see _inherit.py).
        settings.update(child_settings or {})
        initializer = reduction.dumps_bytes(
            (self._initializer, self._initargs, self._result_reducers),
            reducers=self._job_reducers,
        )
        return reduction.dumps_bytes((settings, initializer))

    def _start_pool(self):
        child_settings, pass_fds = _inherit.child_settings(
            self._start_method, process_name="LokyProcess"
        )
        worker_code = _WORKER_BOOTSTRAP.format(pid=os.getpid())
        pool = _core.Pool(
            program=sys.executable,
            args=["-c", _inherit.python_code(worker_code)],
            env=list(self._env.items()),
            init=self._init_message(child_settings),
            max_workers=self._max_workers,
            idle_timeout=self._timeout,
            max_tasks_per_child=self._max_tasks_per_child,
            template_args=["-c", _inherit.python_code(_TEMPLATE_BOOTSTRAP)],
            pass_fds=pass_fds,
        )
        state = _PoolState(pool, has_initializer=self._initializer is not None)
        state.thread = threading.Thread(
            target=_run_results, args=(state,), name="loky-results", daemon=True
        )
        _live_pools.add(state)
        state.thread.start()
        # An executor dropped without shutdown() finishes its work, then stops.
        weakref.finalize(self, pool.shutdown, False).atexit = False
        self._state = state
        return state

    # -- public API ---------------------------------------------------------------

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Future[_T]:
        with self._submit_lock:
            if self._shutdown_thread:
                raise ShutdownExecutorError("cannot schedule new futures after shutdown")
            if _interpreter_exiting:
                raise ShutdownExecutorError(
                    "cannot schedule new futures after interpreter shutdown"
                )
            state = self._state or self._start_pool()
            if state.broken is not None:
                raise BrokenProcessPool(state.broken)
            future: Future[_T] = Future()
            try:
                body, segment = pack(self._serializer.dumps_in_order(), (fn, args, kwargs))
            except Exception as exc:
                error = PicklingError("Could not pickle the task to send it to the workers.")
                future.set_exception(_with_cause(error, exc))
                return future
            future._queue = state
            future._task_id = task_id = next(self._task_ids)
            state.futures[task_id] = future
            try:
                state.pool.submit(task_id, body, segment)
            except _core.InheritedPoolError:
                del state.futures[task_id]
                raise _inherited_error(state.owner_pid, "This executor") from None
            return future

    submit.__doc__ = Executor.submit.__doc__

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[_T]:
        """Like the builtin map, evaluated in the workers; `chunksize` items travel
        together in one task."""
        chunksize = check_int("chunksize", chunksize, allow_none=False)
        timeout = check_seconds("timeout", timeout)
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        results = super().map(
            partial(run_chunk, fn), _chunks(chunksize, *iterables), timeout=timeout
        )
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, kill_workers: bool = False) -> None:
        """Stop the executor. Pending work finishes first, unless `kill_workers`:
        then every worker is killed with its children and unfinished futures fail
        with ShutdownExecutorError. In a process forked from the one that started the
        workers, returns at once: they are not this process's to stop."""
        with self._submit_lock:
            already = self._shutdown_thread
            self._shutdown_thread = True
            state = self._state
        if state is None or state.inherited():
            return
        if not already:
            _log(logging.DEBUG, "loky executor shutting down (wait=%s, kill_workers=%s)",
                 wait, kill_workers)
        state.pool.shutdown(bool(kill_workers))
        if kill_workers:
            state.fail_all(
                lambda: ShutdownExecutorError(
                    "The executor was shut down with kill_workers=True before this "
                    "task finished."
                )
            )
        if wait and state.thread is not threading.current_thread():
            state.thread.join()
            while not state.pool.join(0.1):  # in slices, so signals get through
                pass
        release_cached_segments()

    def _worker_pids(self) -> list[int]:
        return [] if self._state is None else self._state.pool.pids()
