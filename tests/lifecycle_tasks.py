"""Task functions for the reusable-executor and lifecycle tests (issue 4).

Workers import this module by name (functions travel by reference), so it imports
nothing heavy at module level. helpers.py holds the generic tasks; these are the ones
that need loky inside the worker (nesting), leak memory, or carry custom types.
"""

import os
import pickle
import sys
import time

# -- memory-leak recycling ---------------------------------------------------------------


def leak_and_pid(nbytes):
    """Keep `nbytes` of touched memory alive in this worker for good; return its pid."""
    if not hasattr(sys, "_leak"):
        sys._leak = []
    sys._leak.append(b"\x01" * nbytes)  # written, so resident
    return os.getpid()


def leaked_bytes(_=None):
    return sum(len(b) for b in getattr(sys, "_leak", [])), os.getpid()


# -- nesting -----------------------------------------------------------------------------


def current_depth(_=None):
    from loky import process_executor

    return process_executor._CURRENT_DEPTH


def depths_down(levels):
    """Depth of this worker, then of each nested worker below it: `levels` more levels,
    each a ProcessPoolExecutor with one worker."""
    from loky import ProcessPoolExecutor, process_executor

    here = [process_executor._CURRENT_DEPTH]
    if levels <= 0:
        return here
    with ProcessPoolExecutor(max_workers=1) as executor:
        return here + executor.submit(depths_down, levels - 1).result(timeout=60)


def nest_until_refused(record):
    """Nest executors (one worker each) until creating one raises; the error travels
    back up. Appends each depth reached to the file `record`."""
    from loky import ProcessPoolExecutor, process_executor

    with open(record, "a") as f:
        f.write(f"{process_executor._CURRENT_DEPTH}\n")
    with ProcessPoolExecutor(max_workers=1) as executor:
        return executor.submit(nest_until_refused, record).result(timeout=60)


def max_depth_setting(_=None):
    from loky import process_executor

    return process_executor.MAX_DEPTH


def nested_reusable_square(x):
    """Use the reusable executor inside a worker, and leave it running: the worker's
    exit must take it down."""
    from loky import get_reusable_executor

    executor = get_reusable_executor(max_workers=1)
    return executor.submit(square, x).result(timeout=60), executor.submit(
        current_depth
    ).result(timeout=60)


def square(x):
    return x * x


def pid_and_children(_=None):
    import psutil

    return os.getpid(), sorted(c.pid for c in psutil.Process().children(recursive=True))


# -- reducers ----------------------------------------------------------------------------


class Tagged:
    """A plain picklable class; reducers in the tests replace it with a marker."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tagged) and other.value == self.value

    def __repr__(self):
        return f"Tagged({self.value!r})"


def reduce_tagged_for_job(obj):
    return str, (f"job-reduced-{obj.value}",)


def reduce_tagged_for_result(obj):
    return str, (f"result-reduced-{obj.value}",)


def describe(obj):
    """A picklable description of what the worker received."""
    if isinstance(obj, dict):
        return {k: describe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)([describe(v) for v in obj])
    if isinstance(obj, Tagged):
        return ("Tagged", obj.value)
    return obj


def make_tagged(values):
    """Return Tagged instances nested in a dict of lists."""
    return {"items": [Tagged(v) for v in values], "plain": 1}


def type_name(obj):
    return type(obj).__name__


def call(fn, *args):
    return fn(*args)


def call_method(obj, name, *args):
    return getattr(obj, name)(*args)


def loky_pickler_name_in_worker(_=None):
    from loky.backend import reduction

    return reduction.get_loky_pickler_name()


# -- a pickler module (for set_loky_pickler("lifecycle_tasks")) ---------------------------

DUMPS = []


class Pickler(pickle.Pickler):
    """A `Pickler` class makes this module usable as a loky pickler; it records each
    pickle it writes."""

    def dump(self, obj):
        DUMPS.append(type(obj).__name__)
        return super().dump(obj)


# -- thread safety -----------------------------------------------------------------------


def tagged_square(tag, x):
    return tag, x * x


def slow_square(x, seconds=0.01):
    time.sleep(seconds)
    return x * x


def square_and_pid(x):
    return x * x, os.getpid()


def worker_cpu_count(_=None):
    import loky

    return loky.cpu_count()


# -- garbage collection between tasks -----------------------------------------------------

_collected = []


class _Cycle:
    def __init__(self):
        self.me = self

    def __del__(self):
        _collected.append(True)


def make_garbage_cycle_without_automatic_gc(_=None):
    """Disable the automatic collector and leave one unreachable reference cycle."""
    import gc

    gc.disable()
    _collected.clear()
    _Cycle()
    return os.getpid()


def cycle_collected(_=None):
    return bool(_collected), os.getpid()


def pid_and_parent(_=None):
    return os.getpid(), os.getppid()


def first_one_stays_starting(marker):
    """Initializer: the first worker to run it (the one that creates `marker`) never
    finishes starting; the others start as usual."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    while True:
        time.sleep(1)


# -- synchronisation objects handed to the workers through initargs --------------------

_shared = {}


def keep_shared(**objects):
    _shared.update(objects)


def put_pid_then_wait_event(_=None):
    """Announce this worker on the shared queue, then wait for the shared event."""
    _shared["queue"].put(os.getpid())
    return _shared["event"].wait(timeout=30)


def under_shared_lock(_=None):
    with _shared["lock"]:
        return os.getpid()


def raise_in_initializer():
    raise RuntimeError("this initializer fails")


class ExitWhenCollected:
    """Ends the worker that unpickled it when that worker lets go of it."""

    armed = False

    def __setstate__(self, state):
        self.armed = True

    def __reduce__(self):
        return (ExitWhenCollected, (), {})

    def __del__(self):
        if self.armed:
            os._exit(7)


def viztracer_active(_=None):
    import viztracer

    tracer = viztracer.get_tracer()
    return tracer is not None and tracer.enable
