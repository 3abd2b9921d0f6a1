"""loky: a robust, reusable process pool executor whose process management is written
in Rust.

Attributes are loaded on first use, so that a worker process, which imports
``loky._worker``, pays only for what it needs.
"""

from ._core import __version__  # one source: the crate's version (Cargo.toml)

__all__ = [
    "get_reusable_executor",
    "cpu_count",
    "wait",
    "as_completed",
    "Future",
    "Executor",
    "ProcessPoolExecutor",
    "BrokenProcessPool",
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
    "ProcessPoolExecutor": ".process_executor",
    "use_with_joblib": "._joblib",
}


# Submodules that `import loky` makes available as attributes, as loky does.
_SUBMODULES = frozenset(
    ["_base", "backend", "cloudpickle_wrapper", "process_executor", "reusable_executor"]
)


def __getattr__(name):
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


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
