"""`Executor.map` with CPython 3.14's `buffersize`, chunks, and progress reports.

    map(fn, *iterables, timeout, chunksize, buffersize, progress)
      inputs ─ zip (or chunks of `chunksize`) ─► submit ─► futures, oldest first
                 all at once (buffersize=None, as the standard library does), or
                 `buffersize` ahead, one more each time a result is yielded
      results ◄─ in input order, within `timeout` from the call; progress reported
                 after each; the futures left are cancelled when the caller stops
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from ._options import check_int, check_seconds
from ._tasks import run_chunk

Progress = Callable[[int, "int | None"], object]


def _chunks(chunksize, args):
    while chunk := tuple(itertools.islice(args, chunksize)):
        yield chunk


def _total(iterables):
    """The number of items `zip(*iterables)` yields, if every iterable knows its length."""
    try:
        return min((len(it) for it in iterables), default=0)
    except TypeError:
        return None


_bar_class = None


def _progress_bar_class():
    """tqdm's bar (None without tqdm), with a lock of threads only unless tqdm has made
    its usual lock already.

    tqdm's usual lock also holds a ``multiprocessing.RLock``, for bars written from
    several processes. Where multiprocessing's start method is "forkserver" or "spawn"
    (by default from CPython 3.14 on Linux), making such a lock starts multiprocessing's
    resource tracker, a process that lasts as long as the interpreter. A bar that only
    this process writes needs no such lock, and `map` must not leave a process behind."""
    global _bar_class
    if _bar_class is None:
        try:
            from tqdm.auto import tqdm
            from tqdm.std import TqdmDefaultWriteLock
        except ImportError:
            return None

        class _ProgressBar(tqdm):
            pass

        if not hasattr(tqdm, "_lock"):
            # The lock of threads every usual tqdm lock holds, so that this bar and the
            # process's other bars still take turns.
            lock = getattr(TqdmDefaultWriteLock, "th_lock", None)
            _ProgressBar.set_lock(lock if lock is not None else threading.RLock())
        _bar_class = _ProgressBar
    return _bar_class


def _progress_reporter(progress, total) -> tuple[Progress | None, Callable[[], None]]:
    """(report(done, total), close()) for the `progress` argument of `map`."""
    if progress is False or progress is None:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    if progress is not True:
        raise TypeError(
            f"progress must be True, False or a callable(done, total), got {progress!r}"
        )
    bar_class = _progress_bar_class()
    if bar_class is None:
        return None, lambda: None  # no tqdm: no bar, and no error
    bar = bar_class(total=total)

    def report(done, _total):
        bar.update(done - bar.n)

    return report, bar.close


def executor_map(
    submit: Callable[..., Any],
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
    progress: Any,
) -> Iterator[Any]:
    """Submit the calls (all of them, or `buffersize` ahead) and return the iterator
    of their results; `submit(fn, *args)` makes a future."""
    chunksize = check_int("chunksize", chunksize, allow_none=False)
    buffersize = check_int("buffersize", buffersize)
    timeout = check_seconds("timeout", timeout)
    total = _total(iterables)
    report, close = _progress_reporter(progress, total)
    deadline = None if timeout is None else time.monotonic() + timeout
    args = zip(*iterables)
    if chunksize > 1:
        call, args = partial(run_chunk, fn), ((chunk,) for chunk in _chunks(chunksize, args))
    else:
        call = fn
    futures = deque(submit(call, *a) for a in itertools.islice(args, buffersize))
    if buffersize is None:
        # All submitted: the iterator keeps no reference to the executor, which may
        # be collected (and shut down) while the results are read, as with loky.
        submit = args = None
    return _results(submit, call, args, futures, deadline, chunksize, report, close, total)


def _results(submit, call, args, futures, deadline, chunksize, report, close, total):
    done = 0
    try:
        while futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = futures.popleft().result(left)
            # One more in flight for each one taken.
            if args is not None:
                for more in itertools.islice(args, 1):
                    futures.append(submit(call, *more))
            done += len(result) if chunksize > 1 else 1
            if report is not None:
                report(done, total)  # before yielding: a caller may stop at any item
            if chunksize > 1:
                yield from result
            else:
                yield result
    finally:
        for future in futures:
            future.cancel()
        close()
