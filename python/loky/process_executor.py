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

import itertools
import logging
import os
import pickle
import sys
import threading
import warnings
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from multiprocessing.context import BaseContext
from pickle import PicklingError
from typing import Any, ParamSpec, TypeVar

from . import _core, _cpython, _inherit, _live_pools, _worker
from ._base import Future
from ._errors import (
    BrokenProcessPool,
    LokyRecursionError,
    MemoryLimitError,
    ShutdownExecutorError,
    TerminatedWorkerError,
    _ExceptionWithTraceback,  # noqa: F401 (importable from here, as in loky)
    _RemoteTraceback,  # noqa: F401
    _inherited_error,
    _refused_error,
    _thread_start_error,
    _with_cause,
    task_name,
)
from ._map import executor_map
from ._options import NO_LIMITS, ExecutorOptions, check_task_limits
from ._payload import pack, release_cached_segments
from ._pool_state import _log, _PoolState, _run_results
from ._processes import WorkerProcess
from .backend import reduction

# loky's other name for it.
BrokenExecutor = BrokenProcessPool

_T = TypeVar("_T")
_P = ParamSpec("_P")

__all__ = [
    "ProcessPoolExecutor",
    "BrokenProcessPool",
    "TerminatedWorkerError",
    "ShutdownExecutorError",
    "LokyRecursionError",
    "MemoryLimitError",
    "WorkerStats",
]


# Nesting depth: 0 in the main process, parent's + 1 in a worker (where it is set before
# any task can import this module).
_CURRENT_DEPTH = _worker.DEPTH
MAX_DEPTH = int(os.environ.get("LOKY_MAX_DEPTH", 10))

# Seconds between two memory checks of a worker (read by the workers, where a task may
# change it); the growth allowed is LOKY_MAX_MEMORY_LEAK_SIZE bytes.
_MEMORY_LEAK_CHECK_DELAY = _worker.MemoryGuard.CHECK_INTERVAL

_WORKER_BOOTSTRAP = "from loky._worker import main; main({pid})"
_TEMPLATE_BOOTSTRAP = "from loky._worker import serve_template; serve_template({pid})"

WorkerStats = namedtuple(
    "WorkerStats", ["pid", "state", "tasks_done", "task", "running_for", "rss"]
)
WorkerStats.__doc__ = """One live worker, as `ProcessPoolExecutor.worker_stats()` sees it:
its `pid`; its `state` ("starting", "idle", "busy" or "exiting"); the number of
`tasks_done`; the name of the function its running `task` calls and how many seconds
it has been `running_for` (None when idle); its resident memory `rss` in bytes."""


def _check_max_depth():
    if 0 < MAX_DEPTH <= _CURRENT_DEPTH:
        raise LokyRecursionError(
            f"Could not spawn extra nested workers at depth {_CURRENT_DEPTH}: the "
            f"limit is {MAX_DEPTH}. Raise it with the LOKY_MAX_DEPTH environment "
            "variable if this nesting is intended."
        )


# Every executor of this process. In the child of a fork(), the threads of the parent
# are gone: a submit lock one of them held at that moment is released there, so that
# the child's submits get their error (or `get_reusable_executor` its new executor)
# instead of waiting for ever.
_executors: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()


def _release_submit_locks_in_child() -> None:
    for executor in list(_executors):
        _cpython.reinit_after_fork(executor._submit_lock)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork()
    os.register_at_fork(after_in_child=_release_submit_locks_in_child)


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
            interpreters started by posix_spawn; with "loky_init_main" and "spawn" each
            one first imports the parent's ``__main__`` as ``__mp_main__``. "fork" is
            refused (ValueError).
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker
            before its first task.
        env: environment variables (str to str) set in each worker before its
            interpreter starts.
        max_tasks_per_child: replace a worker after it has run this many tasks.
        max_worker_memory: bytes of resident memory a worker may hold. One past it
            after a task is replaced before its next task (no task fails); one past it
            by half again while it runs a task is ended at once, and that task fails
            with `MemoryLimitError`. None (default): not watched, at no cost.
        forward_logging: a logging level (``logging.INFO``, or its name): records
            logged in the workers at or above it are handled by this process's logger
            of the same name, with the worker's pid as ``record.process``. Never
            blocks a task: records a slow parent does not take in time are dropped,
            and counted. None (default): the workers' logging is their own.
        inner_max_num_threads: the number of threads each worker's BLAS and OpenMP
            runtimes (and numba, numexpr) may use: the workers start with their
            thread-count variables (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS,
            MKL_NUM_THREADS...) set to it, except those `env` or this process's
            environment sets. None (default): nothing is set.
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
        max_worker_memory: int | None = None,
        forward_logging: int | str | None = None,
        inner_max_num_threads: int | None = None,
    ) -> None:
        self._setup(
            ExecutorOptions(
                max_workers=max_workers,
                job_reducers=job_reducers,
                result_reducers=result_reducers,
                timeout=timeout,
                context=context,
                initializer=initializer,
                initargs=initargs,
                env=env,
                max_tasks_per_child=max_tasks_per_child,
                max_worker_memory=max_worker_memory,
                forward_logging=forward_logging,
                inner_max_num_threads=inner_max_num_threads,
            )
        )

    def _setup(self, options):
        """The executor's state, from `options` (checked: a subclass that holds them
        already calls this instead of `__init__`)."""
        self._max_workers = options.workers()  # changed in place by a resize
        _check_max_depth()
        self._options = options
        self._submit_lock = threading.Lock()
        _executors.add(self)
        # Used under _submit_lock only: one task is pickled at a time.
        self._serializer = reduction.Serializer(options.job_reducers)
        self._task_ids = itertools.count()
        self._state = None
        self._flags = _ExecutorFlags()

    @property
    def _timeout(self):
        """Seconds after which an idle worker exits (None: never), as loky names it."""
        return self._options.timeout

    # -- starting ---------------------------------------------------------------

    def _init_message(self, child_settings):
        """The start data every worker receives, and the descriptors it inherits.

        The initializer and its arguments are pickled as at a process start, so that
        locks, events, queues and the like made from a multiprocessing context can be
        handed to the workers through `initargs`, as with multiprocessing's pools.
        Their large buffers (arrays...) are written once to a shared segment that every
        worker inherits and maps copy-on-write, as forked workers would share them."""
        settings = {
            "depth": _CURRENT_DEPTH + 1,
            "sys_path": list(sys.path),
            "pickler": reduction.get_loky_pickler_name(),
            "max_worker_memory": self._options.max_worker_memory,
            "forward_logging": self._options.forward_logging,
        }
        # Resource tracker pipe, joblib switch, authkey, __main__ (see _inherit.py).
        settings.update(child_settings)
        options = self._options
        if options.initializer is None and options.reducers_for_results is None:
            # Nothing for the loky pickler (whose cloudpickle is slow to import).
            initializer, fds = pickle.dumps((None, (), None), protocol=5), []
        else:
            reducers = {**_inherit.multiprocessing_reducers(), **(options.job_reducers or {})}
            (initializer, segment), fds = _inherit.dumps_at_start(
                lambda: pack(
                    [
                        lambda obj, keep_apart: reduction.dumps_bytes(
                            obj, reducers=reducers, buffer_callback=keep_apart
                        )
                    ],
                    (options.initializer, options.initargs, options.reducers_for_results),
                    write_segment=_core.write_lasting_segment,
                )
            )
            if segment is not None:
                # The workers' duplicate holds it (the parent's mapping goes with
                # `segment`); the pool closes it at its end, with the others in `fds`.
                try:
                    fds.append(_inherit.inheritable_duplicate(segment.fileno()))
                except OSError as exc:
                    _inherit.close_passed(fds)
                    raise _refused_error(exc) from None
                settings["initializer_segment"] = fds[-1]
        # The settings are plain values.
        return pickle.dumps((settings, initializer), protocol=5), fds

    def _start_pool(self):
        child_settings, pass_fds = _inherit.child_settings(
            self._options.start_method, process_name="LokyProcess"
        )
        init, start_fds = self._init_message(child_settings)
        try:
            state = self._start_state(pass_fds, init, start_fds)
        except BaseException:
            _inherit.close_passed(start_fds)
            raise
        self._state = state
        return state

    def _start_state(self, pass_fds, init, start_fds):
        try:
            pool = self._new_core_pool(pass_fds, init, start_fds)
        except OSError as exc:
            raise _refused_error(exc) from None
        _log(
            logging.DEBUG,
            "loky core facilities: %s",
            ", ".join(f"{name} {how}" for name, how in _core.facilities()),
        )
        has_initializer = self._options.initializer is not None
        state = _PoolState(
            pool, has_initializer, self._flags, start_fds, self._options.max_worker_memory
        )
        state.thread = threading.Thread(
            target=_run_results, args=(state,), name="loky-results", daemon=True
        )
        if self._options.forward_logging is not None:
            from ._worker_logs import handle_worker_logs

            state.log_thread = threading.Thread(
                target=handle_worker_logs, args=(pool,), name="loky-logs", daemon=True
            )
        _live_pools.add(state)
        for name, thread in [("result thread", state.thread), ("log thread", state.log_thread)]:
            try:
                if thread is not None:
                    thread.start()
            except RuntimeError as exc:
                _live_pools.discard(state)
                pool.shutdown(_core.Shutdown.KILL)
                raise _thread_start_error(name, exc) from None
        # An executor dropped without shutdown() finishes its work, then stops.
        weakref.finalize(self, _shut_down_unreferenced, pool, self._flags).atexit = False
        _live_pools.forward_interrupts()
        return state

    def _new_core_pool(self, pass_fds, init, start_fds):
        worker_code = _WORKER_BOOTSTRAP.format(pid=os.getpid())
        template_code = _TEMPLATE_BOOTSTRAP.format(pid=os.getpid())
        options = self._options
        return _core.Pool(
            program=sys.executable,
            args=["-c", _inherit.python_code(worker_code)],
            env=list(options.worker_env().items()),
            init=init,
            max_workers=self._max_workers,
            idle_timeout=options.timeout,
            max_tasks_per_child=options.max_tasks_per_child,
            # Workers are this process's children, as with loky and the standard
            # library, unless the pool replaces them routinely: then a template
            # process forks the replacements (its children) in a millisecond
            # (POSIX: there is no fork() on Windows).
            template_args=(
                None
                if options.max_tasks_per_child is None or sys.platform == "win32"
                else ["-c", _inherit.python_code(template_code)]
            ),
            pass_fds=pass_fds + start_fds,
            max_worker_memory=options.max_worker_memory,
            forward_logs=options.forward_logging is not None,
        )

    # -- public API ---------------------------------------------------------------

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Future[_T]:
        return self._submit(fn, args, kwargs, NO_LIMITS)

    submit.__doc__ = Executor.submit.__doc__

    def schedule(
        self,
        fn: Callable[..., _T],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retries: int = 0,
        retry_on_timeout: bool = False,
    ) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)``, which may run `timeout` seconds at most,
        counted from the moment it starts on a worker. Past that, the worker and every
        process it started are ended (SIGTERM, then SIGKILL after a second), the future
        fails with TimeoutError, and a replacement worker starts; no other task is
        touched.

        A task whose worker dies under it (a signal, os._exit, a kill for memory) runs
        again on another worker, up to `retries` times; one past its time limit too,
        with `retry_on_timeout`. Exceptions it raises are never retried. The error of a
        task that ran out of retries lists every run (worker pid, exit status)."""
        limits = check_task_limits(timeout, retries, retry_on_timeout)
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict or None, got {type(kwargs).__name__}")
        return self._submit(fn, tuple(args), kwargs, limits)

    def _submit(self, fn, args, kwargs, limits):
        with self._submit_lock:
            if not self._flags.shutdown:
                return self._submit_locked(fn, args, kwargs, limits)
        return self._submit_after_shutdown(fn, args, kwargs, limits)

    def _submit_after_shutdown(self, fn, args, kwargs, limits):
        """A submit that found the executor shut down (outside `_submit_lock`)."""
        raise ShutdownExecutorError("cannot schedule new futures after shutdown")

    def _submit_locked(self, fn, args, kwargs, limits):
        """The submit itself, under `_submit_lock` with the executor not shut down."""
        if _live_pools.interpreter_exiting:
            raise ShutdownExecutorError(
                "cannot schedule new futures after interpreter shutdown"
            )
        state = self._state or self._start_pool()
        if state.broken is not None:
            raise BrokenProcessPool(state.broken)
        future = Future()
        try:
            body, segment = pack(*self._serializer.task(fn, args, kwargs))
        except (Exception, SystemExit) as exc:  # (a __reduce__ may call sys.exit)
            error = PicklingError("Could not pickle the task to send it to the workers.")
            future.set_exception(_with_cause(error, exc))
            return future
        future._queue = state
        future._fn = fn
        future._timeout = limits.timeout
        future._task_id = task_id = next(self._task_ids)
        state.futures[task_id] = future
        try:
            state.pool.submit(task_id, body, segment, *limits)
        except _core.InheritedPoolError:
            del state.futures[task_id]
            raise _inherited_error(state.owner_pid, "This executor") from None
        return future

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool | Callable[[int, int | None], object] = False,
        **unknown: Any,
    ) -> Iterator[_T]:
        """Like the builtin map, evaluated in the workers, results in input order.

        `chunksize` items travel together in one task. With `buffersize`, the inputs
        are read lazily: at most `buffersize` tasks run or wait ahead of the results
        taken, so an endless input streams in bounded memory. `progress=True` shows a
        tqdm bar when tqdm is installed; a callable gets ``(done, total or None)``
        after each result. `timeout` counts from this call. Other keyword arguments
        are ignored with a warning (loky ignores them silently: code written for it
        keeps running, and a misspelt argument is seen)."""
        if unknown:
            warnings.warn(
                f"Executor.map() ignores the keyword arguments it does not take: "
                f"{', '.join(map(repr, sorted(unknown)))}. It takes timeout, "
                "chunksize, buffersize and progress.",
                UserWarning,
                stacklevel=2,
            )
        return executor_map(self.submit, fn, iterables, timeout, chunksize, buffersize, progress)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, kill_workers: bool = False
    ) -> None:
        """Stop the executor. Pending work finishes first, unless `cancel_futures`
        (tasks no worker started are cancelled) or `kill_workers` (every worker is
        killed with its children; unfinished futures fail with
        ShutdownExecutorError). In a process forked from the one that started the
        workers, returns at once: they are not this process's to stop."""
        with self._submit_lock:
            already = self._flags.shutdown
            self._flags.shutdown = True
            state = self._state
        if state is None or state.inherited():
            return
        if not already:
            _log(
                logging.DEBUG,
                "loky executor shutting down (wait=%s, cancel_futures=%s, kill_workers=%s)",
                wait,
                cancel_futures,
                kill_workers,
            )
        if cancel_futures:
            for future in list(state.futures.values()):
                future.cancel()
        if kill_workers:
            self._flags.kill_workers = True
            state.pool.shutdown(_core.Shutdown.KILL)
            state.fail_all(
                lambda: ShutdownExecutorError(
                    "The executor was shut down with kill_workers=True before this "
                    "task finished."
                )
            )
        else:
            state.pool.shutdown(_core.Shutdown.GRACEFUL)
        if wait:
            self._join(state)
        release_cached_segments()

    def terminate_workers(self) -> None:
        """End every worker and every process it started now: SIGTERM, then SIGKILL
        after a second. Unfinished futures are cancelled; the executor cannot be used
        afterwards."""
        self._force_shutdown(_core.Shutdown.TERMINATE)

    def kill_workers(self) -> None:
        """Kill every worker and every process it started now (SIGKILL). Unfinished
        futures are cancelled; the executor cannot be used afterwards."""
        self._force_shutdown(_core.Shutdown.KILL)

    def _force_shutdown(self, how):
        with self._submit_lock:
            self._flags.shutdown = True
            self._flags.kill_workers = True
            state = self._state
        if state is None or state.inherited():
            return
        _log(logging.DEBUG, "loky executor ending its workers (%s)", how)
        state.pool.shutdown(how)
        for future in list(state.futures.values()):
            future._cancel_now()
        self._join(state)
        release_cached_segments()

    def _join(self, state):
        if state.thread is not threading.current_thread():
            state.thread.join()
            while not state.pool.join(0.1):  # in slices, so signals get through
                pass
            # The records the workers sent before they exited are handled by now.
            if state.log_thread not in (None, threading.current_thread()):
                state.log_thread.join()

    def worker_stats(self) -> list[WorkerStats]:
        """One record per live worker (see `WorkerStats`): what each is doing now.
        Cheap enough to call from a progress loop."""
        state = self._state
        if state is None or state.inherited():
            return []
        stats = []
        for worker in state.pool.stats():
            task = None
            if worker.task_id is not None:
                future = state.futures.get(worker.task_id)
                task = None if future is None else task_name(future._fn)
            stats.append(
                WorkerStats(
                    worker.pid,
                    str(worker.state),
                    worker.tasks_done,
                    task,
                    worker.running_for,
                    worker.rss,
                )
            )
        return stats

    def _worker_pids(self) -> list[int]:
        return [] if self._state is None else self._state.pool.pids()

    @property
    def _processes(self) -> dict[int, WorkerProcess]:
        """The live workers, pid -> `WorkerProcess`, as the standard library's and
        loky's executors expose them (tools read it to find the workers). A snapshot:
        each read gives the workers alive at that moment; a worker keeps its object."""
        state = self._state
        if state is None or state.inherited():
            return {}
        return state.processes.alive()

    @property
    def _executor_manager_thread(self) -> threading.Thread | None:
        """The thread that applies the pool's events to the futures; it ends once the
        pool has closed (None before the first submit)."""
        return None if self._state is None else self._state.thread


class _ExecutorFlags:
    """An executor's condition, as loky exposes it: `shutdown` once no new task is
    accepted, `broken` (the reason, or None) once the pool cannot run tasks, and
    `kill_workers` once the workers were or are being killed. Outlives the executor,
    so code holding it sees an unreferenced executor shut down.

    A worker's death does not make the pool broken here, unlike loky: it fails the
    task the worker was running, and a replacement starts."""

    def __init__(self):
        self.shutdown = False
        self.kill_workers = False
        self.broken = None


def _shut_down_unreferenced(pool, flags):
    flags.shutdown = True
    pool.shutdown(_core.Shutdown.GRACEFUL)
