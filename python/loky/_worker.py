"""The worker process: a fresh interpreter that runs tasks read from its channel.

It is started by the Rust core as ``python -c "from loky._worker import main;
main(<parent pid>)"`` with its channel on file descriptor 3, and imports as little as it
can: the executor machinery, cloudpickle and traceback are loaded only when a task needs
them. The conversation on the channel is the core's (`_core.WorkerEndpoint`, see
``src/endpoint.rs``); this module only runs tasks and pickles their outcomes:

    recv_init()     settings and the pickled initializer (None: told to leave)
    ready()         or start_failed(report), then exit
    recv_task()     the next task (None: told to leave, or the parent is gone: exit)
    send_result()   its outcome (see `_tasks`), before the next task runs
    retiring()      then exit (its memory grew too much, or passed the pool's cap)

A pool that replaces workers routinely forks them from a template process instead
(`serve_template`): the core's loop runs there and returns in each forked child, which
then runs `main` as a worker of the template.
"""

import os
import sys
from time import monotonic

import _signal  # `signal` would import enum at every worker start


def _import_pickle_quickly():
    """Import the C pickle module (`pickle` would import much more), without functools.

    `_pickle` imports functools only to hold `functools.partial`, which is
    `_functools.partial`; functools brings collections, operator and more along: 3 ms of
    a worker's ~18 ms start. `_pickle` is given a stand-in module that holds that
    object alone, for the time of its import; a later `import functools` gets the real
    module, with the same `partial`. Only a worker or the template gets here with
    neither module imported, before it has any other thread to see the stand-in. Should
    `_pickle` ever want more of functools, it is imported again the plain way."""
    if "_pickle" in sys.modules or "functools" in sys.modules:
        return
    import _functools

    stand_in = type(sys)("functools")
    stand_in.partial = _functools.partial
    sys.modules["functools"] = stand_in
    try:
        import _pickle  # noqa: F401
    except Exception:
        pass  # imported again below, with the real functools
    finally:
        if sys.modules.get("functools") is stand_in:
            del sys.modules["functools"]


_import_pickle_quickly()
import _pickle as pickle  # noqa: E402

from ._core import WorkerEndpoint, close_descriptors_beyond_limit, watch_parent
from ._callables import load as load_kept
from ._payload import pack, unpack
from ._tasks import (
    INITIALIZER,
    MAIN_MODULE,
    OK,
    RAISED,
    SETUP,
    TASK_NOT_RECEIVED,
    TASK_UNPICKLE_FAILED,
)

# Nesting depth of this process; read by loky.process_executor.
DEPTH = 0

# True while a task runs: Ctrl-C reaches the task (the parent passes SIGINT on to busy
# workers), never the worker's own loop.
_task_running = False


def _interrupt_the_task(signum, frame):
    if _task_running:
        raise KeyboardInterrupt


def _plain_dump(obj, buffer_callback):
    return pickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)


def _traceback_text(exc):
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class Runner:
    """Runs tasks and turns their outcome into bytes for the parent."""

    def __init__(self, pickler_name):
        self.pid = os.getpid()
        self.pickler_name = pickler_name
        if pickler_name not in (None, "cloudpickle"):
            # Tasks that ask loky which pickler is in use must hear the parent's.
            self._loky_reduction()
        self.result_reducers = None
        # Plain pickle is enough for most results; the loky pickler (cloudpickle by
        # default) handles the rest and applies result reducers.
        self._plain_first = (_plain_dump, self._loky_dump)
        self._loky_only = (self._loky_dump,)
        self.finished_call = None  # (fn, args, kwargs) of the task whose outcome is sent

    def dumps(self, outcome):
        """(body, segment or None) for the parent."""
        return pack(self._plain_first if self.result_reducers is None else self._loky_only, outcome)

    def _loky_dump(self, obj, buffer_callback):
        reduction = self._loky_reduction()
        return reduction.dumps_bytes(
            obj, reducers=self.result_reducers, buffer_callback=buffer_callback
        )

    def _loky_reduction(self):
        from .backend import reduction

        if self.pickler_name and reduction.get_loky_pickler_name() != self.pickler_name:
            reduction.set_loky_pickler(self.pickler_name)
        return reduction

    def run(self, message):
        """(body, segment or None) of the outcome of the task in `message` (a
        `_core.TaskMessage`)."""
        if message.descriptor_dropped or message.map_error is not None:
            return self.dumps((TASK_NOT_RECEIVED, _lost_segment_text(message)))
        try:
            fn, args, kwargs = unpack(message.body, message.segment)
            if type(fn) is bytes:  # a function pickled once by the parent
                fn = load_kept(fn)
        except BaseException as exc:
            return self.dumps((TASK_UNPICKLE_FAILED, _traceback_text(exc)))
        global _task_running
        try:
            _task_running = True
            outcome = (OK, fn(*args, **kwargs))
        except BaseException as exc:
            outcome = (RAISED, exc, _traceback_text(exc))
        finally:
            _task_running = False
        if os.getpid() != self.pid:
            _end_forked_copy(outcome)
        # The arguments are released once the outcome is sent (main loop): collecting
        # them may run code that ends the process (a __del__), which must not cost the
        # result. Except those that live in a received segment: released now, so that
        # the parent finds the segment free again for its next large task.
        if message.segment is None:
            self.finished_call = (fn, args, kwargs)
        del fn, args, kwargs
        try:
            return self.dumps(outcome)
        except BaseException as exc:
            # The result (or the exception) cannot be pickled: report that instead.
            text = _traceback_text(exc)
            if outcome[0] == RAISED:
                text = f"{text}\nwhile sending the task's own error:\n{outcome[2]}"
            return self.dumps_error(exc, text)

    def dumps_error(self, exc, text):
        try:
            return self.dumps((RAISED, exc, text))
        except BaseException:
            return self.dumps((RAISED, pickle.PicklingError(repr(exc)), text))


def _end_forked_copy(outcome):
    """In a process the task forked (os.fork() without exec), once the task has
    returned there too: exit, as a forked child of multiprocessing does. The worker's
    channel is the worker's own; its copy here must never speak on it."""
    code = 0
    if outcome[0] == RAISED:
        exc = outcome[1]
        code = 1
        if isinstance(exc, SystemExit) and (exc.code is None or isinstance(exc.code, int)):
            code = exc.code or 0
    _flush_and_exit(code)


def _flush_and_exit(code):
    """Exit at once with `code`, the output flushed first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)


class MemoryGuard:
    """Between tasks, at most once a second: collect garbage and, on Linux, compare the
    resident size with the one measured after the first task. A worker that grew more
    than LOKY_MAX_MEMORY_LEAK_SIZE bytes (default 300 MB) asks to be replaced.

    With the executor's `max_worker_memory` (`cap`), the resident size is also looked
    at after every task: a worker past it asks to be replaced before its next task."""

    CHECK_INTERVAL = 1.0

    def __init__(self, cap=None):
        self.limit = int(float(os.environ.get("LOKY_MAX_MEMORY_LEAK_SIZE", 3e8)))
        self.cap = cap
        self.reference = None
        self.last_check = monotonic()

    def over_cap(self):
        """Called after each task; True if this worker holds more than `cap`."""
        if self.cap is None:
            return False
        size = self.resident_bytes()
        return size is not None and size > self.cap

    @staticmethod
    def resident_bytes():
        if sys.platform == "win32":
            from ._core import resident_bytes

            return resident_bytes(os.getpid())
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def leaking(self):
        """Called after each task; True if this worker should be replaced."""
        now = monotonic()
        # A task may change the interval through loky.process_executor, as with loky.
        executor_module = sys.modules.get("loky.process_executor")
        interval = getattr(executor_module, "_MEMORY_LEAK_CHECK_DELAY", self.CHECK_INTERVAL)
        if self.reference is not None and now - self.last_check < interval:
            return False
        if self.reference is None:
            # Without a collection first: in a worker forked by the template, a
            # collection would copy every page holding the template's objects, which
            # costs more than the short lives of recycled workers. Its later checks,
            # collected, are measured against this reference, which errs large.
            self.reference = self.resident_bytes()
            self.last_check = monotonic()
            return False
        import gc

        gc.collect()
        self.last_check = monotonic()
        size = self.resident_bytes()
        if size is None:
            return False
        return size - self.reference > self.limit


def _setup(settings):
    global DEPTH
    DEPTH = settings["depth"]
    sys.path[:] = settings["sys_path"]
    # Resource tracker pipe, joblib switch, multiprocessing authkey.
    from ._inherit import apply

    apply(settings)
    if "PYTHONFAULTHANDLER" not in os.environ:
        import faulthandler

        try:
            faulthandler.enable()
        except (RuntimeError, ValueError, OSError):
            pass  # no usable stderr: the worker runs without the crash report


def _lost_segment_text(message):
    pid = os.getpid()
    if message.descriptor_dropped:
        return (
            f"Worker {pid} could not receive the shared memory holding this task's "
            "large arguments: it had no file descriptor left (see `ulimit -n`)."
        )
    return (
        f"Worker {pid} could not map the shared memory holding this task's large "
        f"arguments: {message.map_error}."
    )


def main(parent_pid):
    close_descriptors_beyond_limit()
    endpoint = WorkerEndpoint()
    stage = SETUP
    try:
        # From here on, the worker and everything its tasks start end with the parent.
        watch_parent(parent_pid)
        init = endpoint.recv_init()
        if init is None:
            return
        settings, initializer_blob = pickle.loads(init)
        del init
        _setup(settings)
        shared = settings.get("initializer_segment")
        if shared is not None:
            from ._core import map_inherited_segment

            shared = map_inherited_segment(shared)
        if settings.get("forward_logging") is not None:
            from ._inherit import process_name
            from ._worker_logs import forward_to_parent

            forward_to_parent(endpoint, settings["forward_logging"], process_name(settings))
        _signal.signal(_signal.SIGINT, _interrupt_the_task)
        runner = Runner(settings.get("pickler"))
        if settings.get("main"):
            # "spawn" / "loky_init_main": the parent's __main__, as __mp_main__.
            stage = MAIN_MODULE
            from ._inherit import import_main

            import_main(settings["main"])
        stage = INITIALIZER
        initializer, initargs, runner.result_reducers = unpack(initializer_blob, shared)
        del initializer_blob, shared
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:
        _report_start_failure(endpoint, exc, stage)
        sys.exit(1)
    endpoint.ready()
    memory = MemoryGuard(settings.get("max_worker_memory"))
    try:
        while (task := endpoint.recv_task()) is not None:
            task_id = task.task_id
            body, segment = runner.run(task)
            del task
            # Each result leaves before the next task starts: if that task crashes the
            # worker, only it is lost.
            endpoint.send_result(task_id, body, segment)
            del body, segment
            runner.finished_call = None
            # Tasks already sent here go to other workers.
            if memory.over_cap():
                endpoint.retiring(over_limit=True)
                break
            if memory.leaking():
                endpoint.retiring()
                break
    except OSError:
        pass  # the parent is gone
    _exit_now()


def _report_start_failure(endpoint, exc, stage):
    """Tell the parent why this worker cannot get ready (it exits next)."""
    text = _traceback_text(exc)
    try:
        report = pickle.dumps((exc, text, stage))
    except BaseException:
        report = pickle.dumps((None, text, stage))
    try:
        endpoint.start_failed(report)
    except OSError:
        pass  # the parent is gone


def _exit_now():
    """Exit without tearing the interpreter down module by module (which takes longer
    than the rest of a shutdown), but after what a normal exit owes the user: their
    threads joined, their atexit functions run, their output flushed."""
    from ._cpython import exit_quickly

    exit_quickly()


def serve_template(parent_pid):
    """Run as the pool's template: the core's loop (``src/template/server.rs``) forks
    a worker each time the manager asks, reaps the workers and reports their exit
    statuses; it never returns in the template, which never runs user code. It
    returns in each forked child, set up as a worker on descriptor 3: that child runs
    as a worker of the template and never comes back here."""
    from ._core import serve_template as serve

    # What each worker's start imports (its setup, its exit), imported once here for
    # every worker forked from this process: none of it starts a thread or runs user
    # code.
    import atexit  # noqa: F401
    import faulthandler  # noqa: F401
    import gc

    from . import _cpython, _inherit  # noqa: F401

    # The template's objects, out of the collector's sight: a collection in a forked
    # worker then does not touch (and copy) the pages that hold them.
    gc.freeze()
    template_pid = serve(parent_pid)
    code = 0
    try:
        main(template_pid)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        _flush_and_exit(code)  # never back into the template's caller
