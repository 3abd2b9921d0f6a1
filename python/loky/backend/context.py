"""Start methods and the number of usable CPUs."""

import os

from .. import _core


def cpu_count(only_physical_cores: bool = False) -> int:
    """Number of CPUs this process can use.

    The minimum of the machine's online CPUs, the CPU affinity mask, the CPU quota of
    this process's own cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``, rounded up)
    and the ``LOKY_MAX_CPU_COUNT`` environment variable; never below 1. With
    `only_physical_cores`, hyper-threads of one core count once (where the kernel
    reports the topology).
    """
    limit = os.environ.get("LOKY_MAX_CPU_COUNT")
    if limit is not None:
        try:
            limit = int(limit)
        except ValueError:
            raise ValueError(
                f"LOKY_MAX_CPU_COUNT must be an integer, got {limit!r}"
            ) from None
    return _core.cpu_count(bool(only_physical_cores), limit)


# The most workers an executor may have on Windows, where this package does not run
# (loky's limit there, from WaitForMultipleObjects); kept for code that reads it.
_MAX_WINDOWS_WORKERS = 61


# -- start methods and multiprocessing contexts ---------------------------------------
#
# Importing this module registers two multiprocessing contexts, "loky" and
# "loky_init_main", so that ``multiprocessing.get_context("loky")`` and
# ``multiprocessing.set_start_method("loky")`` work. It does not change the start method.

import multiprocessing
import multiprocessing.context as _mp_context
import warnings

from .process import LokyInitMainProcess, LokyProcess

# The start methods an executor accepts. All of them start workers as fresh
# interpreters through this package's spawner; "loky_init_main" and "spawn" also
# import the parent's ``__main__`` module in each worker, as ``__mp_main__``.
START_METHODS = ["loky", "loky_init_main", "spawn", "forkserver"]

_DEFAULT_START_METHOD = None


def get_context(method=None):
    """The multiprocessing context for `method` (default: the method chosen with
    `set_start_method`, else "loky")."""
    method = method or _DEFAULT_START_METHOD or "loky"
    if method == "fork":
        warnings.warn(
            "The 'fork' context should not be used with loky: forking a process that "
            "runs threads can deadlock, and loky's executors refuse it. Use 'loky' or "
            "'spawn'.",
            UserWarning,
            stacklevel=2,
        )
    if method in _CONTEXTS:
        return _CONTEXTS[method]
    try:
        return multiprocessing.get_context(method)
    except ValueError:
        raise ValueError(
            f"Unknown context {method!r}. Value should be in {START_METHODS}."
        ) from None


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
    if method == "fork":
        raise ValueError(
            "loky executors cannot use the 'fork' start method: their workers are "
            "always fresh interpreters (posix_spawn), because forking a process that "
            "runs threads can deadlock. Use context='loky' (the default), "
            "'loky_init_main' or 'spawn'."
        )
    if method not in START_METHODS:
        raise ValueError(
            f"Unknown start method {method!r} for a loky executor. It should be one "
            f"of {START_METHODS}."
        )
    return method


class LokyContext(_mp_context.BaseContext):
    """Processes started as fresh interpreters by loky's spawner. Queues pickle their
    items with loky's pickler; locks and the other primitives are multiprocessing's."""

    _name = "loky"
    Process = LokyProcess
    cpu_count = staticmethod(cpu_count)

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
    _mp_context._concrete_contexts.setdefault(_name, _context)
del _name, _context
