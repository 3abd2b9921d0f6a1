"""Functions the benchmark runs inside the workers.

They live in their own small module (found through PYTHONPATH, which bench.py sets)
so that every implementation pickles them by reference, the same cheap way: a function
defined in ``__main__`` would be pickled by value by cloudpickle (loky) but by
reference by the standard library, which would skew the comparison.

Nothing heavy is imported at module level: numpy only when an array task runs.
"""

import os
import time


def noop():
    """The trivial task: nothing to compute, nothing to send back."""
    return None


def identity(x):
    return x


def getpid(_=None):
    return os.getpid()


def barrier(directory, n_workers, timeout):
    """Register this worker in `directory`, then wait until `n_workers` distinct workers
    have registered there (or `timeout` seconds have passed). Returns this worker's pid.

    Two of these submitted to a pool of two can only both finish once two different
    workers run them at the same time, which is how the benchmark tells that every
    worker is up. Polling a directory needs no shared lock, so it works the same with
    every implementation.
    """
    pid = os.getpid()
    open(os.path.join(directory, str(pid)), "w").close()
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < n_workers and time.monotonic() < deadline:
        time.sleep(0.0005)
    return pid


# One array per size, kept in each worker, for the "return only" direction: the task
# then measures sending the result back, not allocating and filling it.
_ARRAYS = {}


def prepare_array(nbytes):
    import numpy as np

    if nbytes not in _ARRAYS:
        _ARRAYS[nbytes] = np.full(nbytes, 7, dtype=np.uint8)
    return os.getpid()


def barrier_with_array(directory, n_workers, timeout, nbytes):
    prepare_array(nbytes)
    return barrier(directory, n_workers, timeout)


def array_out(nbytes):
    """Return the array this worker prepared (see prepare_array); a worker that was
    not warmed up pays for the allocation once."""
    if nbytes not in _ARRAYS:
        prepare_array(nbytes)
    return _ARRAYS[nbytes]


def array_in(array):
    """Receive an array and send back almost nothing."""
    return array.nbytes


def crash(stamp_path):
    """Kill this worker the abrupt way a segfault or an OOM kill would (no cleanup),
    after writing the time of death to `stamp_path` (CLOCK_MONOTONIC is system-wide,
    so the parent can compare it with its own clock)."""
    with open(stamp_path, "w") as f:
        f.write(repr(time.monotonic()))
    os._exit(1)
