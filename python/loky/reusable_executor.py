"""The reusable executor: one per thread, as in loky 3.7.

`get_reusable_executor` returns the calling thread's executor and keeps returning it
while the arguments stay the same, so workers (and what they imported) are reused
across calls. A different `max_workers` resizes it in place; other changes, or a broken
or shut-down executor, replace it. Each thread has its own, so one thread's change of
arguments never shuts down an executor another thread is using; an executor whose
thread ended is shut down once nothing refers to it (after its work is done).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from multiprocessing.context import BaseContext
from typing import Any, Literal

from . import _cpython
from ._options import ExecutorOptions
from .process_executor import ProcessPoolExecutor, _log


__all__ = ["get_reusable_executor"]

# Guards the executors' replacement; also each reusable executor's
# `_submit_resize_lock`, so that a submit to an executor being replaced waits for its
# successor.
_executor_lock = threading.RLock()
# Released in the child of a fork(), whichever thread of the parent held it (see
# process_executor._release_submit_locks_in_child). Windows has no fork().
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _cpython.reinit_after_fork(_executor_lock))
_local = threading.local()  # .executor: this thread's reusable executor
_executor_ids = iter(range(1 << 62))


def _current_executor():
    """The calling thread's reusable executor, or None."""
    return getattr(_local, "executor", None)


def get_reusable_executor(
    max_workers: int | None = None,
    context: str | BaseContext | None = None,
    timeout: float | None = 10,
    kill_workers: bool = False,
    reuse: bool | Literal["auto"] = "auto",
    job_reducers: dict[type, Callable[[Any], Any]] | None = None,
    result_reducers: dict[type, Callable[[Any], Any]] | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: Iterable[Any] = (),
    env: dict[str, str] | None = None,
    max_tasks_per_child: int | None = None,
    max_worker_memory: int | None = None,
    forward_logging: int | str | None = None,
    inner_max_num_threads: int | None = None,
) -> _ReusablePoolExecutor:
    """Return this thread's reusable executor, creating or adapting it as needed.

    - `reuse="auto"`: reuse the current executor if all other arguments are equal;
      `reuse=True`: reuse it whatever they are; `reuse=False`: replace it.
    - A different `max_workers` resizes the executor (`None` means `cpu_count()`, or
      the current size when `reuse=True`).
    - A broken or shut-down executor is replaced; the old one is shut down with
      `kill_workers` as given.
    - `timeout`: seconds after which idle workers exit (they come back on demand).
    - `max_worker_memory`, `forward_logging`, `inner_max_num_threads`: see
      `ProcessPoolExecutor`.
    """
    executor, _ = _ReusablePoolExecutor.get_reusable_executor(
        max_workers=max_workers,
        context=context,
        timeout=timeout,
        kill_workers=kill_workers,
        reuse=reuse,
        job_reducers=job_reducers,
        result_reducers=result_reducers,
        initializer=initializer,
        initargs=initargs,
        env=env,
        max_tasks_per_child=max_tasks_per_child,
        max_worker_memory=max_worker_memory,
        forward_logging=forward_logging,
        inner_max_num_threads=inner_max_num_threads,
    )
    return executor


class _ReusablePoolExecutor(ProcessPoolExecutor):
    """The class of the reusable executor; subclasses get the same singleton."""

    def __init__(self, submit_resize_lock, options, executor_id=0):
        self._setup(options)  # checked by `get_reusable_executor`
        self.executor_id = executor_id
        self._submit_resize_lock = submit_resize_lock
        self._successor = None  # the executor that replaced this one

    @classmethod
    def get_reusable_executor(
        cls,
        max_workers=None,
        context=None,
        timeout=10,
        kill_workers=False,
        reuse="auto",
        job_reducers=None,
        result_reducers=None,
        initializer=None,
        initargs=(),
        env=None,
        max_tasks_per_child=None,
        max_worker_memory=None,
        forward_logging=None,
        inner_max_num_threads=None,
    ):
        """Return ``(executor, is_reused)``; see `get_reusable_executor`."""
        if reuse not in ("auto", True, False):
            raise ValueError(f"reuse must be 'auto', True or False, got {reuse!r}")
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
            max_worker_memory=max_worker_memory,
            forward_logging=forward_logging,
            inner_max_num_threads=inner_max_num_threads,
        )
        replaced = None
        with _executor_lock:
            executor = _current_executor()
            if executor is not None:
                if reuse is True and options.max_workers is None:
                    options = replace(options, max_workers=executor._max_workers)
                reusable = reuse is True or (
                    reuse == "auto" and options.same_but_size(executor._options)
                )
                if reusable and not executor._is_broken_or_shut_down():
                    executor._resize(options.workers())
                    return executor, True
                # From now on its submits go to the new executor.
                with executor._submit_lock:
                    executor._flags.shutdown = True
                replaced = executor
            _local.executor = new = cls(_executor_lock, options, next(_executor_ids))
            if replaced is not None:
                replaced._successor = new
        if replaced is not None:
            # Outside the lock: the old executor's done-callbacks may still submit (and
            # reach the new executor) while it finishes its work.
            replaced.shutdown(wait=True, kill_workers=kill_workers)
        return new, False

    def _is_broken_or_shut_down(self):
        """Also true for an executor inherited through fork(): its workers are the
        parent's, and this process needs its own."""
        state = self._state
        return self._flags.shutdown or (
            state is not None and (state.broken is not None or state.inherited())
        )

    def _submit_after_shutdown(self, fn, args, kwargs, limits):
        # A replacement shuts this executor down and sets its successor, both under
        # `_executor_lock`: once that lock is ours, a replaced executor has its
        # successor, and the task runs there.
        with self._submit_resize_lock:
            successor = self._successor
        if successor is None:
            return super()._submit_after_shutdown(fn, args, kwargs, limits)
        return successor._submit(fn, args, kwargs, limits)

    def _resize(self, max_workers):
        """Change the number of workers; surviving workers and queued work stay."""
        if max_workers is None or max_workers < 1:
            raise ValueError("max_workers must be greater than 0")
        # Also under `_submit_lock`, which a submit holds while it starts the pool: the
        # new size is either read by that start or applied to the pool it made.
        with self._submit_resize_lock, self._submit_lock:
            if max_workers == self._max_workers:
                return
            _log(logging.DEBUG, "loky executor resized from %d to %d workers",
                 self._max_workers, max_workers)
            self._max_workers = max_workers
            if self._state is not None:
                self._state.pool.resize(max_workers)
