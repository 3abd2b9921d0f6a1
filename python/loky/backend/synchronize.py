"""Synchronisation primitives for processes of loky's contexts: multiprocessing's own
(`Lock`, `RLock`, `Semaphore`, `BoundedSemaphore`, `Condition`, `Event`, `Barrier`,
made from a context: ``get_context("loky").Lock()``), plus loky's `SemLock`, a POSIX
named semaphore with the exact name given, and `sem_unlink`."""

import os
import secrets
import sys

import _multiprocessing
from multiprocessing.synchronize import (  # noqa: F401 (loky's names)
    SEM_VALUE_MAX,
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
)

__all__ = [
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
    "SemLock", "sem_unlink",
]  # fmt: skip

# The kinds multiprocessing's semaphores are made of.
RECURSIVE_MUTEX, SEMAPHORE = 0, 1

if sys.platform != "win32":
    sem_unlink = _multiprocessing.sem_unlink


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
