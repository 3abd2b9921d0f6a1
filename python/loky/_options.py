"""An executor's options, checked once, here, where the messages live.

`ExecutorOptions` is the one value that both builds an executor and decides whether
`get_reusable_executor` may reuse the current one. Wrong types raise `TypeError`
naming the parameter and the type given; wrong values raise `ValueError`. Nothing is
started before the checks pass.
"""

import math
from numbers import Integral, Real


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


class ExecutorOptions:
    """Everything an executor is built from, checked. `max_workers` is the only option
    an executor changes in place; the others decide whether it can be reused."""

    _REUSE_KEYS = (
        "context",
        "timeout",
        "job_reducers",
        "result_reducers",
        "initializer",
        "initargs",
        "env",
        "max_tasks_per_child",
    )
    __slots__ = ("max_workers",) + _REUSE_KEYS

    def __init__(
        self,
        max_workers=None,
        context=None,
        timeout=None,
        job_reducers=None,
        result_reducers=None,
        initializer=None,
        initargs=(),
        env=None,
        max_tasks_per_child=None,
        *,
        default_max_workers=None,
    ):
        """Check every argument; `max_workers=None` becomes `default_max_workers()`
        (default: the number of usable CPUs)."""
        from .backend.context import cpu_count, executor_start_method

        max_workers = check_int("max_workers", max_workers)
        executor_start_method(context)  # refuses unknown and "fork" contexts
        self.context = context
        self.timeout = check_seconds("timeout", timeout)
        self.job_reducers = check_reducers("job_reducers", job_reducers)
        self.result_reducers = check_reducers("result_reducers", result_reducers)
        self.initializer = check_callable("initializer", initializer)
        self.initargs = check_initargs(initargs)
        self.env = check_env(env)
        self.max_tasks_per_child = check_int("max_tasks_per_child", max_tasks_per_child)
        if max_workers is None:
            max_workers = (default_max_workers or cpu_count)()
        self.max_workers = max_workers

    def same_but_size(self, other):
        """True if `other` differs from these options in `max_workers` at most."""
        return other is not None and all(
            getattr(self, key) == getattr(other, key) for key in self._REUSE_KEYS
        )
