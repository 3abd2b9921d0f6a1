"""Synchronisation primitives for processes of loky's contexts.

`Lock`, `RLock`, `Semaphore` and `BoundedSemaphore` are multiprocessing's, named as
loky names them: ``/loky-<pid>-<random>``, the pid of the process that made it, so that
a semaphore left in /dev/shm tells who made it. `Condition`, `Event` and `Barrier` are
multiprocessing's, made of those when they come from a loky context
(``get_context("loky").Event()``). Plus loky's `SemLock`, a POSIX named semaphore with
the exact name given, and `sem_unlink`."""

import os
import secrets
import sys

import _multiprocessing
from multiprocessing import synchronize as _mp
from multiprocessing.synchronize import (  # noqa: F401 (loky's names)
    SEM_VALUE_MAX,
    Barrier,
    Condition,
    Event,
)

__all__ = [
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
    "SemLock", "sem_unlink",
]  # fmt: skip

# The kinds multiprocessing's semaphores are made of.
RECURSIVE_MUTEX, SEMAPHORE = 0, 1

if sys.platform != "win32":
    sem_unlink = _multiprocessing.sem_unlink


def _make_name():
    return f"/loky-{os.getpid()}-{secrets.token_hex(4)}"


class Lock(_mp.Lock):
    __doc__ = _mp.Lock.__doc__
    _make_name = staticmethod(_make_name)


class RLock(_mp.RLock):
    __doc__ = _mp.RLock.__doc__
    _make_name = staticmethod(_make_name)


class Semaphore(_mp.Semaphore):
    __doc__ = _mp.Semaphore.__doc__
    _make_name = staticmethod(_make_name)


class BoundedSemaphore(_mp.BoundedSemaphore):
    __doc__ = _mp.BoundedSemaphore.__doc__
    _make_name = staticmethod(_make_name)


class SemLock:
    """A named semaphore of `kind` (RECURSIVE_MUTEX or SEMAPHORE) holding `value`, at
    most `maxvalue`. With `name`, exactly that name: FileExistsError if a semaphore of
    that name exists. Without, a fresh name. The caller unlinks it (`sem_unlink`)."""

    def __init__(self, kind, value, maxvalue, name=None):
        if name is None:
            name = f"loky-{os.getpid()}-{secrets.token_hex(4)}"
        self._semlock = _multiprocessing.SemLock(kind, value, maxvalue, name, False)
        self.name = name

    def acquire(self, block=True, timeout=None):
        return self._semlock.acquire(block, timeout)

    def release(self):
        self._semlock.release()

    def __enter__(self):
        return self._semlock.__enter__()

    def __exit__(self, *args):
        return self._semlock.__exit__(*args)
