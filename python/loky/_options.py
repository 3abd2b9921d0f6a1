"""An executor's options, checked once, here, where the messages live.

`ExecutorOptions` is the one value, frozen, that both builds an executor and decides
whether `get_reusable_executor` may reuse the current one: the executors' signatures
hand their arguments to it, and pass it on whole. Wrong types raise `TypeError`
naming the parameter and the type given; wrong values raise `ValueError`. Nothing is
started before the checks pass.
"""

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.context import BaseContext
from numbers import Integral, Real
from typing import NamedTuple

from .backend.context import cpu_count, executor_start_method


def _describe(value):
    return f"{value!r} ({type(value).__name__})"


def check_int(name, value, minimum=1, allow_none=True):
    """`value` as an int >= `minimum` (or None if allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        expected = "an int or None" if allow_none else "an int"
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}")
    value = int(value)
    if value < minimum:
        # The standard library's and loky's wording, which callers may match.
        bound = "greater than 0" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be {bound}")
    return value


def check_seconds(name, value):
    """`value` as a float number of seconds >= 0, or None (no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number of seconds or None, got {_describe(value)}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0 or None, got {value!r}")
    return None if math.isinf(value) else value


class TaskLimits(NamedTuple):
    """What `schedule` asks of one task: at most `timeout` seconds from its start on a
    worker; `retries` more runs if its worker dies under it (a signal, os._exit, a kill
    for memory), counting a run past its time limit as such a death only with
    `retry_on_timeout`. Exceptions the task raises are never retried."""

    timeout: float | None = None
    retries: int = 0
    retry_on_timeout: bool = False


NO_LIMITS = TaskLimits()


def check_task_limits(timeout, retries, retry_on_timeout):
    if not isinstance(retry_on_timeout, bool):
        raise TypeError(f"retry_on_timeout must be a bool, got {_describe(retry_on_timeout)}")
    return TaskLimits(
        check_seconds("timeout", timeout),
        check_int("retries", retries, minimum=0, allow_none=False),
        retry_on_timeout,
    )


def check_log_level(name, value):
    """`value` as a logging level (an int >= 0, or a level name such as "INFO"), or
    None."""
    if value is None:
        return None
    if isinstance(value, str):
        levels = logging.getLevelNamesMapping()
        if value not in levels:
            raise ValueError(
                f"{name} must be a logging level or None; {value!r} is not a level name "
                f"(one of {', '.join(sorted(levels, key=levels.__getitem__))})"
            )
        return levels[value]
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(
            f"{name} must be a logging level (an int, or a name such as 'INFO') or None, "
            f"got {_describe(value)}"
        )
    if value < 0:
        raise ValueError(f"{name} must be a logging level >= 0 or None, got {value!r}")
    return int(value)


def check_callable(name, value):
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable or None, got {_describe(value)}")
    return value


def check_reducers(name, value):
    if value is not None and not isinstance(value, dict):
        raise TypeError(
            f"{name} must be a dict of type -> reduce function, or None, got {_describe(value)}"
        )
    return value


def check_env(env):
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise TypeError(f"env must be a dict of str to str, got {_describe(env)}")
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"env must map str to str; got {key!r}: {value!r} "
                f"({type(key).__name__}: {type(value).__name__})"
            )
    return dict(env)


def check_initargs(initargs):
    if isinstance(initargs, (str, bytes)):
        raise TypeError(f"initargs must be a tuple of arguments, got {_describe(initargs)}")
    try:
        return tuple(initargs)
    except TypeError:
        raise TypeError(
            f"initargs must be a tuple of arguments, got {_describe(initargs)}"
        ) from None


# What `inner_max_num_threads` sets in the workers: the thread-count variables of the
# BLAS and OpenMP runtimes (OpenMP, OpenBLAS, MKL, BLIS, Accelerate) and of numba and
# numexpr, as joblib sets them for its workers.
INNER_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


@dataclass(frozen=True, kw_only=True)
class ExecutorOptions:
    """Everything an executor is built from, checked when made (in the order below,
    so that the first wrong argument is the one reported). `max_workers` is the only
    option an executor changes in place (a resize); the others decide whether
    `get_reusable_executor` may reuse it."""

    max_workers: int | None = None  # None: `cpu_count()` (see `workers`)
    context: str | BaseContext | None = None  # None: loky's default start method
    timeout: float | None = None  # seconds an idle worker waits before it exits
    job_reducers: dict | None = None
    result_reducers: dict | None = None  # None: the job reducers
    initializer: Callable[..., object] | None = None
    initargs: tuple = ()
    env: dict[str, str] | None = None  # {} once checked
    max_tasks_per_child: int | None = None
    max_worker_memory: int | None = None  # bytes of resident memory per worker
    # Records at or above this level, logged in the workers, are handled by this
    # process's loggers (None: not forwarded).
    forward_logging: int | None = None
    # Set in the workers' BLAS and OpenMP thread-count variables (None: nothing set).
    inner_max_num_threads: int | None = None
    # The start method `context` asks for. Derived, so not compared: two executors
    # asked for with the same `context` are alike, as in loky.
    start_method: str = field(init=False, compare=False)

    def __post_init__(self):
        checked = {
            "max_workers": check_int("max_workers", self.max_workers),
            "start_method": executor_start_method(self.context),  # refuses "fork"
            "timeout": check_seconds("timeout", self.timeout),
            "job_reducers": check_reducers("job_reducers", self.job_reducers),
            "result_reducers": check_reducers("result_reducers", self.result_reducers),
            "initializer": check_callable("initializer", self.initializer),
            "initargs": check_initargs(self.initargs),
            "env": check_env(self.env),
            "max_tasks_per_child": check_int("max_tasks_per_child", self.max_tasks_per_child),
            "max_worker_memory": check_int("max_worker_memory", self.max_worker_memory),
            "forward_logging": check_log_level("forward_logging", self.forward_logging),
            "inner_max_num_threads": check_int(
                "inner_max_num_threads", self.inner_max_num_threads
            ),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    def worker_env(self):
        """The environment variables the workers start with, beyond this process's:
        `env`, and with `inner_max_num_threads`, the thread-count variables that
        neither `env` nor this process's environment sets (read now, at the pool's
        start)."""
        if self.inner_max_num_threads is None:
            return self.env
        threads = str(self.inner_max_num_threads)
        limits = dict.fromkeys(INNER_THREAD_VARIABLES, threads)
        # As joblib does too: the workers' TBB schedulers share the cores between them.
        limits["ENABLE_IPC"] = "1"
        env = {name: value for name, value in limits.items() if name not in os.environ}
        env.update(self.env)
        return env

    def workers(self):
        """The number of workers asked for (`cpu_count()` when `max_workers` is None)."""
        return cpu_count() if self.max_workers is None else self.max_workers

    @property
    def reducers_for_results(self):
        """The reducers the workers pickle results with."""
        return self.job_reducers if self.result_reducers is None else self.result_reducers

    def same_but_size(self, other):
        """True if `other` differs from these options in `max_workers` at most. Values
        whose comparison is no truth value (numpy arrays in `initargs`) are alike only
        if they are the same object."""
        if other is None:
            return False
        try:
            return replace(other, max_workers=self.max_workers) == self
        except (ValueError, TypeError):
            return False
