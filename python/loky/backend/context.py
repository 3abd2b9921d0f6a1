"""Start methods, and the "loky" and "loky_init_main" multiprocessing contexts.

Importing this module registers the two contexts, so that
``multiprocessing.get_context("loky")`` and ``multiprocessing.set_start_method("loky")``
work. It does not change the start method.

`cpu_count` and its helpers are `_cpu_count`'s; code written for loky imports them from
here, and replaces them here: such a replacement is handed on to `_cpu_count`, where
`cpu_count` looks its helpers up.
"""

import multiprocessing
import multiprocessing.context as _mp_context
import os
import sys
import types
import warnings

from .. import _cpython
from . import _cpu_count
from ._cpu_count import *  # noqa: F403 (loky's names, see the module's docstring)
from ._cpu_count import cpu_count
from .process import LokyInitMainProcess, LokyProcess


class _HandsOnCpuCountHelpers(types.ModuleType):
    """This module's type: setting one of `_cpu_count`'s names here sets it there too."""

    def __setattr__(self, name, value):
        if name in _cpu_count.__all__:
            setattr(_cpu_count, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _HandsOnCpuCountHelpers

# loky's limit on an executor's workers on Windows (from WaitForMultipleObjects), kept
# for code that reads it. This package has no such limit: its manager waits on an I/O
# completion port.
_MAX_WINDOWS_WORKERS = 61

# The start methods an executor accepts. All of them start workers as fresh
# interpreters through this package's spawner; "loky_init_main" and "spawn" also
# import the parent's ``__main__`` module in each worker, as ``__mp_main__``.
# "forkserver" is a POSIX name (multiprocessing has no such context on Windows).
START_METHODS = ["loky", "loky_init_main", "spawn"]
if sys.platform != "win32":
    START_METHODS.append("forkserver")

_DEFAULT_START_METHOD = None


def get_context(method=None):
    """The multiprocessing context for `method` (default: the method chosen with
    `set_start_method`, else "loky")."""
    method = method or _DEFAULT_START_METHOD or "loky"
    if method in ("fork", "forkserver") and sys.platform == "win32":
        raise ValueError(
            f"The {method!r} start method does not exist on Windows. Value should be "
            f"in {START_METHODS}."
        )
    if method == "fork":
        _warn_fork()
    if method in _CONTEXTS:
        return _CONTEXTS[method]
    try:
        return multiprocessing.get_context(method)
    except ValueError:
        raise ValueError(
            f"Unknown context {method!r}. Value should be in {START_METHODS}."
        ) from None


def _warn_fork():
    # The warning points at the first caller outside this package.
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        level, frame = level + 1, frame.f_back
    warnings.warn(
        "The 'fork' context should not be used with loky: forking a process that "
        "runs threads can deadlock, and loky's executors refuse it. Use 'loky' or "
        "'spawn'.",
        UserWarning,
        stacklevel=level,
    )


def set_start_method(method, force=False):
    """Choose the start method used by default by loky's executors and `get_context`.
    Does not change multiprocessing's own start method."""
    global _DEFAULT_START_METHOD
    if _DEFAULT_START_METHOD is not None and not force:
        raise RuntimeError("context has already been set")
    if method is not None and method not in START_METHODS:
        raise ValueError(
            f"{method!r} is not a valid start method for loky. It should be one of "
            f"{START_METHODS}."
        )
    _DEFAULT_START_METHOD = method


def get_start_method():
    """The start method chosen with `set_start_method`, or None."""
    return _DEFAULT_START_METHOD


def executor_start_method(context):
    """The start method an executor's `context` argument (None, a start method name or
    a multiprocessing context) asks for; ValueError for one loky cannot honour."""
    if context is None:
        method = _DEFAULT_START_METHOD or "loky"
    elif isinstance(context, str):
        method = context
    elif callable(getattr(context, "get_start_method", None)):
        method = context.get_start_method()
    else:
        raise TypeError(
            "context must be None, a start method name or a multiprocessing context, "
            f"got {context!r}"
        )
    if method == "fork" and sys.platform == "win32":
        raise ValueError(
            "The 'fork' start method does not exist on Windows. Use context='loky' "
            "(the default), 'loky_init_main' or 'spawn'."
        )
    if method == "fork":
        if isinstance(context, str):
            _warn_fork()  # as get_context("fork") would: the name is looked up first
        raise ValueError(
            "loky executors cannot use the 'fork' start method: their workers are "
            "always fresh interpreters (posix_spawn), because forking a process that "
            "runs threads can deadlock. Use context='loky' (the default), "
            "'loky_init_main' or 'spawn'."
        )
    if method == "forkserver" and sys.platform == "win32":
        raise ValueError(
            "The 'forkserver' start method does not exist on Windows. Use "
            "context='loky' (the default), 'loky_init_main' or 'spawn'."
        )
    if method not in START_METHODS:
        raise ValueError(
            f"Unknown start method {method!r} for a loky executor. It should be one "
            f"of {START_METHODS}."
        )
    return method


class LokyContext(_mp_context.BaseContext):
    """Processes started as fresh interpreters by loky's spawner. Queues pickle their
    items with loky's pickler; locks and the other primitives are multiprocessing's,
    their semaphores named as loky names them."""

    _name = "loky"
    Process = LokyProcess
    cpu_count = staticmethod(cpu_count)

    def Lock(self):
        """A lock named as loky names its semaphores (see `synchronize`)."""
        from .synchronize import Lock

        return Lock(ctx=self.get_context())

    def RLock(self):
        """A recursive lock named as loky names its semaphores."""
        from .synchronize import RLock

        return RLock(ctx=self.get_context())

    def Semaphore(self, value=1):
        """A semaphore named as loky names its semaphores."""
        from .synchronize import Semaphore

        return Semaphore(value, ctx=self.get_context())

    def BoundedSemaphore(self, value=1):
        """A bounded semaphore named as loky names its semaphores."""
        from .synchronize import BoundedSemaphore

        return BoundedSemaphore(value, ctx=self.get_context())

    def Queue(self, maxsize=0, reducers=None):
        """A queue whose items are pickled with loky's pickler (see `queues`)."""
        from .queues import Queue

        return Queue(maxsize, reducers=reducers, ctx=self.get_context())

    def SimpleQueue(self, reducers=None):
        """A simple queue whose items are pickled with loky's pickler."""
        from .queues import SimpleQueue

        return SimpleQueue(reducers=reducers, ctx=self.get_context())


class LokyInitMainContext(LokyContext):
    """Like "loky", and each process first imports the parent's ``__main__`` module as
    ``__mp_main__`` (like multiprocessing's "spawn"): the parent's script must guard
    its entry point with ``if __name__ == "__main__":``."""

    _name = "loky_init_main"
    Process = LokyInitMainProcess


_CONTEXTS = {"loky": LokyContext(), "loky_init_main": LokyInitMainContext()}
for _name, _context in _CONTEXTS.items():
    # Another copy of loky (joblib's) may have registered the names first: keep it.
    if not _cpython.register_mp_context(_name, _context):
        # A process started by name sets that start method in the child, which only
        # a registered name allows: these keep multiprocessing's default instead.
        _context.Process._start_method = None
del _name, _context
