"""loky: a robust, reusable process pool executor whose process management is written
in Rust.

Attributes are loaded on first use, so that a worker process, which imports
``loky._worker``, pays only for what it needs.
"""

from ._core import __version__ as __version__  # one source: Cargo.toml

__all__ = [
    "get_reusable_executor",
    "cpu_count",
    "wait",
    "as_completed",
    "Future",
    "Executor",
    "ProcessPoolExecutor",
    "BrokenProcessPool",
    "MemoryLimitError",
    "CancelledError",
    "TimeoutError",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "ALL_COMPLETED",
    "wrap_non_picklable_objects",
    "set_loky_pickler",
]

# name -> module that defines it
_LAZY = {
    **dict.fromkeys(
        [
            "ALL_COMPLETED",
            "FIRST_COMPLETED",
            "FIRST_EXCEPTION",
            "CancelledError",
            "Executor",
            "TimeoutError",
            "as_completed",
            "wait",
        ],
        "concurrent.futures",
    ),
    "Future": "._base",
    "cpu_count": ".backend.context",
    "set_loky_pickler": ".backend.reduction",
    "get_reusable_executor": ".reusable_executor",
    "wrap_non_picklable_objects": ".cloudpickle_wrapper",
    "BrokenProcessPool": ".process_executor",
    "MemoryLimitError": ".process_executor",
    "ProcessPoolExecutor": ".process_executor",
    "use_with_joblib": "._joblib",
}


# Type checkers see the real objects; at run time they are loaded on first use.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import ALL_COMPLETED as ALL_COMPLETED
    from concurrent.futures import FIRST_COMPLETED as FIRST_COMPLETED
    from concurrent.futures import FIRST_EXCEPTION as FIRST_EXCEPTION
    from concurrent.futures import CancelledError as CancelledError
    from concurrent.futures import Executor as Executor
    from concurrent.futures import TimeoutError as TimeoutError
    from concurrent.futures import as_completed as as_completed
    from concurrent.futures import wait as wait

    from . import _base as _base
    from . import backend as backend
    from . import cloudpickle_wrapper as cloudpickle_wrapper
    from . import process_executor as process_executor
    from . import reusable_executor as reusable_executor
    from ._base import Future as Future
    from ._joblib import use_with_joblib as use_with_joblib
    from .backend.context import cpu_count as cpu_count
    from .backend.reduction import set_loky_pickler as set_loky_pickler
    from .cloudpickle_wrapper import wrap_non_picklable_objects as wrap_non_picklable_objects
    from .process_executor import BrokenProcessPool as BrokenProcessPool
    from .process_executor import MemoryLimitError as MemoryLimitError
    from .process_executor import ProcessPoolExecutor as ProcessPoolExecutor
    from .reusable_executor import get_reusable_executor as get_reusable_executor

# Submodules that `import loky` makes available as attributes, as loky does.
_SUBMODULES = frozenset(
    ["_base", "backend", "cloudpickle_wrapper", "process_executor", "reusable_executor"]
)


def __getattr__(name: str) -> object:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loky' has no attribute {name!r}")
    package = __name__ if module.startswith(".") else None
    value = getattr(importlib.import_module(module, package), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
