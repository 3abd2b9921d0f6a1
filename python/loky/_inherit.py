"""What a new interpreter started by loky takes over from its parent, besides its
environment and ``sys.path``:

- the resource tracker's pipe (a descriptor it inherits), so that parent and workers
  share one tracker; and multiprocessing's tracker pipe, if the parent uses that one;
- the joblib switch (`loky._joblib`), so that ``joblib.externals.loky`` means the same
  thing on both sides of the pipe;
- multiprocessing's authentication key, so that manager proxies and listeners created
  by the parent accept the children (as with multiprocessing's own start methods), and
  for executor workers a multiprocessing process name, ``LokyProcess-<pid>``;
- multiprocessing's logging to stderr (``multiprocessing.util.log_to_stderr``), if the
  parent turned it on; the viztracer profiler, if it runs in the parent;
- for the "loky_init_main" and "spawn" start methods, the parent's ``__main__`` module,
  imported as ``__mp_main__``.

`child_settings` runs in the parent; `apply` and `import_main` in the child. Workers
import this module at start, so it imports nothing heavy at the top: in particular a
worker pays for ``multiprocessing`` only if a task uses it.

What a child inherits is named by number: descriptors on POSIX, which the child gets
under the same numbers; on Windows inheritable handles, which it gets under the same
values (the core lists them at the start, and the child inherits no other).
"""

import os
import sys

# The directory holding this package, so a child imports the same loky as its parent.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_code(statement):
    """`python -c` code that makes this loky importable, then runs `statement`."""
    return f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); {statement}"


# Start methods whose processes import the parent's __main__ as __mp_main__, like
# multiprocessing's "spawn" does.
IMPORTS_MAIN = frozenset({"loky_init_main", "spawn"})

# In a child: the inherited write end of the parent's resource tracker pipe, or None.
# Read by loky.backend.resource_tracker when it is imported.
TRACKER_FD = None

# This process's connection to loky's resource tracker, which
# loky.backend.resource_tracker hands over when it is imported (`share_tracker`); None
# until then, so that a bare executor does not start a tracker it has no use for.
_tracker = None


def share_tracker(tracker):
    """Called by loky.backend.resource_tracker at import, with its `ResourceTracker`:
    the processes started from here on share it."""
    global _tracker
    _tracker = tracker


# -- parent side ----------------------------------------------------------------------


def _tracker_fd():
    """The tracker pipe to hand down (the tracker starts if needed); None unless this
    process uses the tracker (it imported `loky.backend.resource_tracker`, as joblib
    does). On Windows, the pipe's handle, made inheritable."""
    if _tracker is None:
        return None
    fd = _tracker.getfd()
    if sys.platform == "win32":
        import msvcrt

        os.set_inheritable(fd, True)  # the handle under the descriptor
        return msvcrt.get_osfhandle(fd)
    return fd


def _mp_tracker_fd():
    """multiprocessing's own tracker pipe, if this process uses that tracker (shared
    memory, semaphores): children then report to the same tracker, so that a segment
    created here and unlinked in a child is not reported as leaked. (None on Windows,
    where multiprocessing runs no tracker.)"""
    if "multiprocessing.resource_tracker" not in sys.modules or sys.platform == "win32":
        return None
    from ._cpython import mp_tracker_fd

    return mp_tracker_fd()


def _joblib_switched():
    from . import _joblib

    return _joblib.installed()


def _main_module_info():
    """How a child can import this process's ``__main__``: a dict for `import_main`,
    empty when there is nothing to import (interactive session, ``python -c``)."""
    from ._cpython import main_module_info

    return main_module_info("loky")


def _mp_log_level():
    from ._cpython import mp_logger

    logger = mp_logger()
    return None if logger is None else logger.getEffectiveLevel()


def _viztracer_settings():
    """The settings of the viztracer profiler running here, if one is: new processes
    then profile themselves too, as with loky."""
    viztracer = sys.modules.get("viztracer")
    tracer = None if viztracer is None else viztracer.get_tracer()
    if tracer is None or not tracer.enable:
        return None
    return tracer.init_kwargs


def child_settings(start_method="loky", process_name=None):
    """The settings a new interpreter applies at start, and the descriptors it must
    inherit for them. `process_name`: the prefix of the multiprocessing process name
    the child takes (for executor workers, which multiprocessing did not start)."""
    from multiprocessing import process

    fd = _tracker_fd()
    mp_fd = _mp_tracker_fd()
    settings = {
        "tracker_fd": fd,
        "mp_tracker_fd": mp_fd,
        "joblib": _joblib_switched(),
        "authkey": bytes(process.current_process().authkey),
        "process_name": process_name,
        "mp_log_level": _mp_log_level(),
        "main": _main_module_info() if start_method in IMPORTS_MAIN else None,
        "viztracer": _viztracer_settings(),
    }
    return settings, [f for f in (fd, mp_fd) if f is not None]


class _SpawningScope:
    """Stands for the processes being started while their start data is pickled, as
    multiprocessing's Popen objects do: locks, semaphores, events, conditions, queues
    and connections made from a multiprocessing context refuse to be pickled at any
    other time. Each descriptor they name is duplicated here, above the worker's
    channel (fd 3), and the children inherit the duplicate under its number (on
    Windows: each handle, as an inheritable duplicate the children inherit under its
    value); whoever started the pickling owns the duplicates and closes them
    (`close_passed`) once no more processes will be started from that data."""

    def __init__(self):
        self.duplicates = {}  # the caller's descriptor (handle) -> our duplicate

    def duplicate_for_child(self, fd):
        if fd not in self.duplicates:
            self.duplicates[fd] = inheritable_duplicate(fd)
        return self.duplicates[fd]

    class DupFd:
        def __init__(self, fd):
            self.fd = fd

        def detach(self):
            return self.fd


def dumps_at_start(dumps):
    """``dumps()`` run as if processes were being started; returns its result and the
    descriptors the new processes must inherit (duplicates the caller must close)."""
    from ._cpython import get_spawning_popen, set_spawning_popen

    scope = _SpawningScope()
    outer = get_spawning_popen()
    set_spawning_popen(scope)
    try:
        return dumps(), list(scope.duplicates.values())
    except BaseException:
        close_passed(scope.duplicates.values())
        raise
    finally:
        set_spawning_popen(outer)


def inheritable_duplicate(fd):
    """A duplicate of `fd` that children can inherit under its number: above the
    worker's channel (fd 3) and close-on-exec (the core passes it on explicitly); on
    Windows, of the handle `fd`, inheritable."""
    if sys.platform == "win32":
        import _winapi

        me = _winapi.GetCurrentProcess()
        return _winapi.DuplicateHandle(me, fd, me, 0, True, _winapi.DUPLICATE_SAME_ACCESS)
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 4)


def close_passed(passed):
    """Close the duplicates `dumps_at_start` made (descriptors; handles on Windows)."""
    if sys.platform == "win32":
        import _winapi

        close = _winapi.CloseHandle
    else:
        close = os.close
    for fd in passed:
        try:
            close(fd)
        except OSError:
            pass


def multiprocessing_reducers():
    """The reducers multiprocessing registered for its own pickler (connections,
    sockets, ...), which its objects need to travel at process start. On Windows a
    pipe connection travels as a handle every worker inherits (multiprocessing's own
    reducer lets one process take it: a single child's), see `_reduce_pipe_connection`."""
    if "multiprocessing.reduction" not in sys.modules:
        return {}
    from ._cpython import mp_reducers

    reducers = mp_reducers()
    connection = sys.modules.get("multiprocessing.connection")
    if sys.platform == "win32" and hasattr(connection, "PipeConnection"):
        reducers[connection.PipeConnection] = _reduce_pipe_connection
    return reducers


def _reduce_pipe_connection(conn):
    """A pipe connection of this process, for every worker of a pool (Windows): its
    handle, duplicated for the workers to inherit under one value."""
    from ._cpython import get_spawning_popen

    handle = get_spawning_popen().duplicate_for_child(conn.fileno())
    return _rebuild_pipe_connection, (handle, conn.readable, conn.writable)


def _rebuild_pipe_connection(handle, readable, writable):
    from multiprocessing.connection import PipeConnection

    return PipeConnection(handle, readable, writable)


# -- child side -----------------------------------------------------------------------


def apply(settings):
    """In a new interpreter, before it unpickles anything from its parent."""
    global TRACKER_FD
    TRACKER_FD = settings.get("tracker_fd")
    if TRACKER_FD is not None and sys.platform == "win32":
        import msvcrt

        # An inherited handle: the descriptor over it, not passed on any further.
        TRACKER_FD = msvcrt.open_osfhandle(TRACKER_FD, os.O_WRONLY)
        os.set_inheritable(TRACKER_FD, False)
    if _tracker is not None and TRACKER_FD is not None:
        # Imported before this point (a tracker imported later reads TRACKER_FD).
        _tracker.use_inherited_pipe(TRACKER_FD)
    if settings.get("mp_tracker_fd") is not None:
        from ._cpython import set_mp_tracker_fd

        set_mp_tracker_fd(settings["mp_tracker_fd"])
    if settings.get("joblib"):
        # Before anything that names joblib.externals.loky is unpickled.
        from ._joblib import install

        install()
    if settings.get("viztracer") is not None:
        from viztracer import VizTracer

        tracer = VizTracer(**settings["viztracer"])
        tracer.register_exit()  # its report is saved when the process exits
        tracer.start()
    if settings.get("mp_log_level") is not None:
        from multiprocessing import util

        util.log_to_stderr(settings["mp_log_level"])
    identity = _MultiprocessingIdentity(settings.get("authkey"), process_name(settings))
    mp_process = sys.modules.get("multiprocessing.process")
    if mp_process is not None:
        identity.give_to(mp_process)
    elif identity.authkey is not None or identity.name is not None:
        # Set when (if ever) a task imports multiprocessing: a bare worker does not
        # pay for importing it.
        sys.meta_path.insert(0, identity)


def process_name(settings):
    """This process's multiprocessing name (``LokyProcess-<pid>``), or None."""
    prefix = settings.get("process_name")
    return None if prefix is None else f"{prefix}-{os.getpid()}"


def import_main(info):
    """Import the parent's ``__main__`` module as ``__mp_main__`` (it also becomes this
    process's ``__main__``), with multiprocessing's own machinery."""
    if info:
        from ._cpython import import_main as prepare

        prepare(info)


class _MultiprocessingIdentity:
    """The authentication key and process name this process takes in multiprocessing.

    Also a one-shot meta path finder: when ``multiprocessing.process`` is first
    imported, it loads it normally, then sets them."""

    def __init__(self, authkey, name):
        self.authkey = authkey
        self.name = name

    def give_to(self, mp_process):
        current = mp_process.current_process()
        if self.authkey is not None:
            current.authkey = self.authkey
        if self.name is not None:
            current.name = self.name

    def find_spec(self, name, path=None, target=None):
        if name != "multiprocessing.process":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec is not None else None
            if spec is not None:
                spec.loader = _ThenSetIdentity(spec.loader, self)
                return spec
        return None


class _ThenSetIdentity:
    """Wraps the real loader of ``multiprocessing.process``."""

    def __init__(self, loader, identity):
        self._loader = loader
        self._identity = identity

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        self._identity.give_to(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)
