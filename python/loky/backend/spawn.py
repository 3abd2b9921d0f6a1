"""What a new interpreter started by loky takes from its parent besides its environment:
the resource tracker's pipe, the joblib switch and, for the start methods that ask for
it, the parent's ``__main__`` module (imported as ``__mp_main__``).

Used on both sides: `child_settings` in the parent, the `import_main` step and
`loky._joblib.install` in the child.
"""

import sys

# Start methods whose processes import the parent's __main__ as __mp_main__, like
# multiprocessing's "spawn" does.
IMPORTS_MAIN = frozenset({"loky_init_main", "spawn"})


def tracker_fd():
    """The resource tracker's pipe, to be inherited by children; None unless this
    process uses the tracker (it imported `loky.backend.resource_tracker`, as joblib
    does), so that a bare executor does not start a tracker it does not need."""
    tracker = sys.modules.get("loky.backend.resource_tracker")
    if tracker is None:
        return None
    return tracker.getfd()


def joblib_switched():
    """True if ``joblib.externals.loky`` resolves to this package in this process."""
    switch = sys.modules.get("loky._joblib")
    return switch is not None and switch.installed()


def main_module_info():
    """How a child can import this process's ``__main__``: a dict for `import_main`,
    empty when there is nothing to import (interactive session, ``python -m x``...)."""
    from multiprocessing import spawn as mp_spawn

    data = mp_spawn.get_preparation_data("loky")
    keys = ("init_main_from_name", "init_main_from_path")
    return {key: data[key] for key in keys if key in data}


def import_main(info):
    """In a child: import the parent's ``__main__`` module as ``__mp_main__`` (and
    make it this process's ``__main__``), with multiprocessing's own machinery."""
    if info:
        from multiprocessing import spawn as mp_spawn

        mp_spawn.prepare(info)


def child_settings(start_method="loky"):
    """Settings a new interpreter applies at start, and the descriptors it inherits."""
    fd = tracker_fd()
    settings = {
        "tracker_fd": fd,
        "joblib": joblib_switched(),
        "main": main_module_info() if start_method in IMPORTS_MAIN else None,
    }
    return settings, ([] if fd is None else [fd])
