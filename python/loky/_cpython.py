"""The parts of CPython this package uses that CPython does not document, all here.

Each function below reaches one of them, names the CPython versions it was checked on,
and says what the package does where it is missing: a fallback, at worst a lost
refinement, never an error. `missing()` lists the ones this interpreter lacks (the
tests check that none is missing on the versions CI runs, and that the package works
with each taken away). Workers import this module: nothing is imported at the top.

    what                                         used for
    concurrent.futures._base: state names,       the executors' Future, which keeps the
      LOGGER                                       standard Future's states
    threading._register_atexit                   pools stop before the interpreter joins
                                                   its threads at exit
    threading._shutdown, atexit._run_exitfuncs   a worker's quick exit
    lock._at_fork_reinit                         locks released in a fork() child
    multiprocessing.resource_tracker:            children report to their parent's
      _resource_tracker._fd                        tracker
    multiprocessing.util: _log_to_stderr,        lifecycle events mirrored to
      _logger                                      multiprocessing's logger
    multiprocessing.context: _concrete_contexts  multiprocessing.get_context("loky")
      get_spawning_popen, set_spawning_popen     locks and queues travel at process start
    multiprocessing.reduction.ForkingPickler:    connections and sockets travel at
      _extra_reducers                              process start
    multiprocessing.spawn: get_preparation_data, the parent's __main__ in children
      prepare                                      ("spawn", "loky_init_main")

Also relied upon, as loky does, with no fallback: how a multiprocessing context is
written (`multiprocessing.context.BaseContext`, `multiprocessing.process.BaseProcess`
with `_start_method` and `_Popen`, ``current_process()._inheriting`` while a child
unpickles its process); a CPython changing those changes multiprocessing's own
contexts alike. And the C modules `_pickle` and `_signal`, which every CPython build
has, imported directly where a worker's start time counts.
"""

import sys

# Every entry was checked on these versions (Debian's 3.14.10 and 3.15.2 for the last two).
CHECKED_ON = ("3.11", "3.12", "3.13", "3.14", "3.15")

# (module, dotted attribute) of each internal, for `missing()`.
INTERNALS = (
    ("concurrent.futures._base", "PENDING"),
    ("concurrent.futures._base", "RUNNING"),
    ("concurrent.futures._base", "CANCELLED"),
    ("concurrent.futures._base", "CANCELLED_AND_NOTIFIED"),
    ("concurrent.futures._base", "FINISHED"),
    ("concurrent.futures._base", "LOGGER"),
    ("threading", "_register_atexit"),
    ("threading", "_shutdown"),
    ("atexit", "_run_exitfuncs"),
    ("threading", "Lock._at_fork_reinit"),
    ("threading", "RLock._at_fork_reinit"),
    ("multiprocessing.resource_tracker", "_resource_tracker._fd"),
    ("multiprocessing.util", "_log_to_stderr"),
    ("multiprocessing.util", "_logger"),
    ("multiprocessing.context", "_concrete_contexts"),
    ("multiprocessing.context", "get_spawning_popen"),
    ("multiprocessing.context", "set_spawning_popen"),
    ("multiprocessing.reduction", "ForkingPickler._extra_reducers"),
    ("multiprocessing.spawn", "get_preparation_data"),
    ("multiprocessing.spawn", "prepare"),
)
if sys.platform == "win32":
    # No fork() to reinitialize locks after, and no multiprocessing tracker to share:
    # the package uses neither internal there.
    INTERNALS = tuple(
        (module, dotted)
        for module, dotted in INTERNALS
        if not dotted.endswith("._at_fork_reinit")
        and module != "multiprocessing.resource_tracker"
    )

_ABSENT = object()


def _find(module_name, dotted, default=None):
    """`module_name.dotted`, or `default` where the module or an attribute is missing."""
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:
            return default
    value = module
    for name in dotted.split("."):
        value = getattr(value, name, _ABSENT)
        if value is _ABSENT:
            return default
    return value


def missing():
    """The internals above this interpreter lacks, as "module.attribute"."""
    found = []
    for module_name, dotted in INTERNALS:
        if dotted.endswith("._at_fork_reinit"):
            # Ask a lock made now: `Lock` and `RLock` are factories.
            lock = _find(module_name, dotted.rsplit(".", 1)[0])
            present = lock is not None and hasattr(lock(), "_at_fork_reinit")
        elif module_name == "multiprocessing.resource_tracker":
            # `_fd` is set on the tracker object once it starts; before, it is None.
            tracker = _find(module_name, "_resource_tracker")
            present = "_fd" in getattr(tracker, "__dict__", ())
        else:
            present = _find(module_name, dotted, _ABSENT) is not _ABSENT
        if not present:
            found.append(f"{module_name}.{dotted}")
    return found


# -- concurrent.futures ------------------------------------------------------------


def future_states():
    """(PENDING, RUNNING, CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, LOGGER) of
    `concurrent.futures._base`, which the standard Future's methods compare its state
    with. Checked on CHECKED_ON. Missing: the values those versions have (the names
    as strings; the "concurrent.futures" logger)."""
    names = ("PENDING", "RUNNING", "CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED")
    states = tuple(_find("concurrent.futures._base", name, name) for name in names)
    logger = _find("concurrent.futures._base", "LOGGER")
    if logger is None:
        import logging

        logger = logging.getLogger("concurrent.futures")
    return (*states, logger)


# -- threads, exit and fork ----------------------------------------------------------


def register_before_threads_join(fn):
    """Call `fn` at interpreter exit before non-daemon threads are joined, as
    `concurrent.futures` does for its own executors (`threading._register_atexit`).
    Checked on CHECKED_ON. Missing: `atexit.register`, which runs `fn` after those
    threads are joined: a thread of the user's still waiting on a result at exit keeps
    the pool working until it has it, and the pool stops after."""
    import threading

    register = getattr(threading, "_register_atexit", None)
    if register is None:
        import atexit

        atexit.register(fn)
    else:
        register(fn)


def exit_quickly():
    """Exit this process as a normal exit would, the user's threads joined
    (`threading._shutdown`), atexit functions run (`atexit._run_exitfuncs`) and output
    flushed, but without tearing the interpreter down module by module. Checked on
    CHECKED_ON. Missing either: `sys.exit(0)`, a normal exit (slower by the
    teardown)."""
    import atexit

    threading = sys.modules.get("threading")
    join_threads = None if threading is None else getattr(threading, "_shutdown", None)
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_functions is None or (threading is not None and join_threads is None):
        sys.exit(0)
    if join_threads is not None:
        join_threads()
    run_exit_functions()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    import os

    os._exit(0)


def reinit_after_fork(lock):
    """In the child of a fork(): release `lock` (a `threading.Lock` or `RLock`),
    whichever thread of the parent held it, as the standard library does with its own
    locks (`_at_fork_reinit`). Checked on CHECKED_ON. Missing: the lock stays as it
    was, so a child forked while another thread held it waits on it, as it would with
    any other library's lock."""
    reinit = getattr(lock, "_at_fork_reinit", None)
    if reinit is not None:
        reinit()


# -- multiprocessing -----------------------------------------------------------------


def mp_tracker_fd():
    """The write end of the pipe to multiprocessing's resource tracker, started if need
    be. Checked on CHECKED_ON. Missing: None, and children start their own tracker if
    they need one (a segment made here and unlinked in a child may then be reported as
    leaked by this process's tracker at exit)."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    return _find("multiprocessing.resource_tracker", "_resource_tracker._fd")


def set_mp_tracker_fd(fd):
    """In a child: report to the parent's multiprocessing resource tracker through `fd`.
    Checked on CHECKED_ON. Missing: nothing is set (see `mp_tracker_fd`)."""
    tracker = _find("multiprocessing.resource_tracker", "_resource_tracker")
    if "_fd" in getattr(tracker, "__dict__", ()):
        tracker._fd = fd


def mp_logger():
    """multiprocessing's logger if `multiprocessing.util.log_to_stderr()` turned it on,
    else None. Checked on CHECKED_ON. Missing: None (events go to the "loky" logger
    only, and children do not turn multiprocessing's logging on)."""
    util = sys.modules.get("multiprocessing.util")
    if util is None or not getattr(util, "_log_to_stderr", False):
        return None
    return getattr(util, "_logger", None)


def register_mp_context(name, context):
    """Make `multiprocessing.get_context(name)` answer `context` (unless another copy of
    loky, joblib's, registered the name first); False if it cannot be. Checked on
    CHECKED_ON. Missing: not registered; loky's own `get_context(name)` still answers
    it."""
    contexts = _find("multiprocessing.context", "_concrete_contexts")
    if contexts is None:
        return False
    contexts.setdefault(name, context)
    return True


def get_spawning_popen():
    """Checked on CHECKED_ON. Missing: None (see `set_spawning_popen`)."""
    get = _find("multiprocessing.context", "get_spawning_popen")
    return None if get is None else get()


def set_spawning_popen(popen):
    """Tell multiprocessing's locks, queues and connections that they are pickled to
    start a process (they refuse to be pickled otherwise). Checked on CHECKED_ON.
    Missing: nothing is told; those objects then refuse to travel at start, with
    multiprocessing's own error."""
    set_popen = _find("multiprocessing.context", "set_spawning_popen")
    if set_popen is not None:
        set_popen(popen)


def mp_reducers():
    """The reducers multiprocessing registered for its own pickler (connections,
    sockets, ...). Checked on CHECKED_ON. Missing: none, and those objects travel as
    the loky pickler can take them."""
    reducers = _find("multiprocessing.reduction", "ForkingPickler._extra_reducers")
    return {} if reducers is None else dict(reducers)


def main_module_info(start_method):
    """How a child can import this process's ``__main__`` (multiprocessing's
    preparation data, the keys naming it). Checked on CHECKED_ON. Missing: {}, and
    children do not import ``__main__`` (functions defined there still travel by
    value)."""
    get_data = _find("multiprocessing.spawn", "get_preparation_data")
    if get_data is None:
        return {}
    data = get_data(start_method)
    keys = ("init_main_from_name", "init_main_from_path")
    return {key: data[key] for key in keys if key in data}


def import_main(info):
    """In a child: import the parent's ``__main__`` as ``__mp_main__`` from `info`.
    Checked on CHECKED_ON. Missing: nothing is imported (see `main_module_info`)."""
    prepare = _find("multiprocessing.spawn", "prepare")
    if prepare is not None:
        prepare(info)
