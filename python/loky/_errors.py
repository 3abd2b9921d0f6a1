"""Every error a user of the executors can get, and the text that explains it."""

import errno
import os
import sys
from concurrent.futures.process import BrokenProcessPool as _StdBrokenProcessPool
from functools import partial
from pickle import loads

from ._payload import unpack
from ._tasks import (
    INITIALIZER,
    MAIN_MODULE,
    OK,
    RAISED,
    TASK_NOT_RECEIVED,
    TASK_UNPICKLE_FAILED,
    run_chunk,
)


# The classes below are defined here and imported from loky.process_executor, where
# loky has them: they bear that module's name, so that they print (in tracebacks, in
# repr) and pickle as loky's users know them.
_PUBLIC_MODULE = "loky.process_executor"


class LokyRecursionError(RuntimeError):
    """A process tries to start executors nested deeper than LOKY_MAX_DEPTH."""

    __module__ = _PUBLIC_MODULE


class BrokenProcessPool(_StdBrokenProcessPool):
    """The executor cannot run tasks any more, or a task's payload could not travel."""

    __module__ = _PUBLIC_MODULE


class TerminatedWorkerError(BrokenProcessPool):
    """The worker running a task died (signal, os._exit, out-of-memory kill...)."""

    __module__ = _PUBLIC_MODULE


class MemoryLimitError(MemoryError):
    """The worker running a task held more memory than the executor's
    `max_worker_memory` allows (by half again) and was ended."""

    __module__ = _PUBLIC_MODULE


class ShutdownExecutorError(RuntimeError):
    """The executor was shut down while a task was pending or running."""

    __module__ = _PUBLIC_MODULE


class _RemoteTraceback(Exception):
    """Carries the worker-side traceback text as the cause of a task's exception."""

    __module__ = _PUBLIC_MODULE

    def __init__(self, tb=None):
        self.tb = f'\n"""\n{tb}"""'

    def __str__(self):
        return self.tb


def _rebuild_exc(exc, tb):
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


class _ExceptionWithTraceback:
    """Pickles `exc` so that it unpickles with its traceback text as the cause."""

    __module__ = _PUBLIC_MODULE

    def __init__(self, exc):
        import traceback

        tb = exc.__traceback__ or sys.exc_info()[2]
        self.exc = exc
        self.tb = "".join(traceback.format_exception(type(exc), exc, tb))

    def __reduce__(self):
        return _rebuild_exc, (self.exc, self.tb)


# Windows: the exception codes a crashed process exits with (its exit code is the
# NTSTATUS of the exception nobody handled).
_WINDOWS_CRASHES = {
    0x80000003: "BREAKPOINT",
    0xC0000005: "ACCESS_VIOLATION",
    0xC000001D: "ILLEGAL_INSTRUCTION",
    0xC0000094: "INTEGER_DIVIDE_BY_ZERO",
    0xC00000FD: "STACK_OVERFLOW",
    0xC000013A: "CONTROL_C_EXIT",
    0xC0000374: "HEAP_CORRUPTION",
    0xC0000409: "STACK_BUFFER_OVERRUN",
}


def _signal_name(exitcode):
    if exitcode is None:
        return "UNKNOWN"
    if exitcode in _WINDOWS_CRASHES:
        return _WINDOWS_CRASHES[exitcode]
    if exitcode < 0:
        import signal

        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return "UNKNOWN"
    return "EXIT" if exitcode != 255 else "UNKNOWN"


def _format_exitcode(exitcode):
    if exitcode is None:
        return "UNKNOWN"
    if exitcode >= 0x80000000:  # a Windows exception code: read in hex
        return f"{_signal_name(exitcode)}({exitcode:#010X})".replace("0X", "0x")
    return f"{_signal_name(exitcode)}({exitcode})"


def _format_exitcodes(exitcodes):
    codes = ", ".join(_format_exitcode(e) for e in exitcodes)
    note = _unknown_status_note() if None in exitcodes else ""
    return "{" + codes + "}" + note


def _unknown_status_note():
    from . import _core

    if _core.children_reaped_by_kernel():
        why = "this process ignores SIGCHLD, so the system discards the exit status of its children"
    else:
        why = "other code in this process reaped the worker (os.wait() or waitpid(-1))"
    return f" (exit status unknown: {why})"


def _refusal_hint(err_no):
    """What a refusal of the system means for the user, for the errors that come from
    a limit; empty for the others."""
    try:
        import resource
    except ImportError:  # not POSIX
        resource = None
    if err_no in (errno.EMFILE, errno.ENFILE):
        limit = "" if resource is None else (
            f" (`ulimit -n`: {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
        )
        return (
            f": this process has no file descriptor left{limit}; each worker needs 3. "
            "Raise the limit (`ulimit -n`, resource.setrlimit) or close descriptors"
        )
    if err_no == errno.EAGAIN:
        limit = "" if resource is None else (
            f" (`ulimit -u`: {resource.getrlimit(resource.RLIMIT_NPROC)[0]})"
        )
        return (
            ": the system refused a new process or thread; the limit on the processes "
            f"and threads of this user{limit} or of the system is reached"
        )
    if err_no == errno.ENOMEM:
        return ": the system is out of memory"
    return ""


def _refused_error(exc):
    """`exc` (an OSError the system raised while starting the pool) with what it means
    for the user added to its text."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return exc
    error = OSError(exc.errno, f"{exc.strerror}{_refusal_hint(exc.errno)}")
    error.__cause__ = exc.__cause__
    return error


def _thread_start_error(what, exc):
    """A RuntimeError for a thread of the executor that could not start."""
    return RuntimeError(
        f"The executor could not start its {what} ({exc}){_refusal_hint(errno.EAGAIN)}."
    )


def _terminated_worker_error(pid, exitcode, reason):
    if reason:
        return TerminatedWorkerError(
            f"The executor killed worker {pid} because its channel carried something "
            f"that is not a message of this package ({reason}). Did the task write to "
            "or read from file descriptor 3? That descriptor belongs to the worker. "
            f"The exit codes of the workers are {_format_exitcodes([exitcode])}."
        )
    return TerminatedWorkerError(
        "A worker process managed by the executor was unexpectedly terminated. "
        "This could be caused by a segmentation fault while calling the function "
        "or by an excessive memory usage causing the Operating System to kill the "
        f"worker.\n\nThe exit codes of the workers are {_format_exitcodes([exitcode])}"
        f" (worker pid {pid}).\nDetailed tracebacks of the workers should have been "
        "printed to stderr in the executor process if faulthandler was not disabled."
    )


def _with_cause(error, cause):
    error.__cause__ = cause
    return error


def _lost_result_error(event):
    if event.descriptor_dropped:
        return OSError(
            errno.EMFILE,
            "The result of this task carried its large buffers in shared memory, and "
            "this process could not receive them: it had no file descriptor left (see "
            "`ulimit -n`; results kept alive hold none, so they are held elsewhere in "
            f"the program). Worker {event.pid} is fine and keeps running tasks.",
        )
    return OSError(
        "The result of this task carried its large buffers in shared memory, and this "
        f"process could not map them: {event.map_error}. Worker {event.pid} is fine and "
        "keeps running tasks.",
    )


def _decode_result(event):
    """Turn a TaskResult event into (ok, value_or_exception)."""
    if event.descriptor_dropped or event.map_error is not None:
        return False, _lost_result_error(event)
    try:
        outcome = unpack(event.body, event.segment)
    except BaseException as exc:
        import traceback

        return False, _with_cause(
            BrokenProcessPool(
                "A result has failed to un-serialize. Please ensure that the objects "
                "returned by the function are always picklable."
            ),
            _RemoteTraceback("".join(traceback.format_exception(exc))),
        )
    tag = outcome[0]
    if tag == OK:
        return True, outcome[1]
    if tag == RAISED:
        return False, _with_cause(outcome[1], _RemoteTraceback(outcome[2]))
    if tag == TASK_NOT_RECEIVED:
        return False, OSError(outcome[1])
    assert tag == TASK_UNPICKLE_FAILED, tag
    return False, _with_cause(
        BrokenProcessPool(
            "A task has failed to un-serialize. Please ensure that the arguments of "
            "the function are all picklable."
        ),
        _RemoteTraceback(outcome[1]),
    )


def task_name(fn):
    """What a user calls a task's function (map's chunks: the function mapped)."""
    while isinstance(fn, partial):
        fn = fn.args[0] if fn.func is run_chunk and fn.args else fn.func
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _memory_limit_error(limit, peak, pid, fn):
    return MemoryLimitError(
        f"Worker {pid} held {_size(peak)} of memory while it ran {task_name(fn)}, past "
        f"the executor's max_worker_memory of {_size(limit)} by more than half: it was "
        "ended with every process it started, and a replacement started. Give the "
        "task less to hold, or raise max_worker_memory."
    )


def _size(nbytes):
    if nbytes is None:
        return "an unknown amount"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def _with_attempts(error, attempts):
    """`error` with the runs of its task that ended with their worker, when there was
    more than one (the task was retried), added to its message."""
    if len(attempts) < 2:
        return error
    runs = ", ".join(_describe_attempt(a) for a in attempts)
    error.args = (f"{error.args[0] if error.args else error}\n\nThe task ran "
                  f"{len(attempts)} times; each run ended with its worker: {runs}.",)
    return error


def _describe_attempt(attempt):
    if attempt.cause is not None:
        how = f"ended: {attempt.cause}"
    else:
        how = _format_exitcodes([attempt.exitcode])
        if attempt.reason:
            how += f", killed: {attempt.reason}"
    return f"worker {attempt.pid} ({how})"


def _timeout_error(timeout, pid):
    return TimeoutError(
        f"The task ran past its timeout of {timeout} s on worker {pid}: the worker and "
        "every process it started were ended, and a replacement started."
    )


def _shut_down_error():
    return ShutdownExecutorError("The executor was shut down.")


def _inherited_error(owner_pid, what):
    return RuntimeError(
        f"{what} belongs to an executor whose workers were started by process "
        f"{owner_pid}; this process ({os.getpid()}) was forked from it and cannot use "
        "them. Create a new executor in this process (get_reusable_executor() makes "
        "one by itself)."
    )


def _worker_start_error(body):
    """The error of a worker that could not get ready: `body` pickles (exception or
    None, traceback text, stage)."""
    exc, tb, stage = loads(body)
    if stage == INITIALIZER:
        text = (
            "A worker failed to run the executor's initializer, so the executor cannot "
            f"run tasks: {exc!r}. Fix the initializer (its traceback is the cause of "
            "this error) and create a new executor."
        )
    elif stage == MAIN_MODULE:
        text = (
            "A worker failed to import this program's main module, which the "
            f"executor's start method asks of it: {exc!r} (its traceback is the cause "
            "of this error)."
        )
    else:
        hint = _refusal_hint(exc.errno) if isinstance(exc, OSError) else ""
        text = f"A worker could not set itself up, so the executor cannot run tasks: {exc!r}{hint}."
    error = BrokenProcessPool(text)
    error.__cause__ = _RemoteTraceback(tb)
    if exc is not None:
        error.__cause__.__cause__ = exc
    return error


def _start_error(pid, exitcode, err_no, message, has_initializer):
    if not pid:
        # The system refused to start the process.
        cause = os.strerror(err_no) if err_no else message
        return BrokenProcessPool(
            f"The executor could not start its workers ({sys.executable!r}): {cause}"
            f"{_refusal_hint(err_no)}."
        )
    status = _format_exitcodes([exitcode])
    if has_initializer:
        return BrokenProcessPool(
            f"Worker process {pid} died with status {status} before it was ready, "
            "most likely in the executor's initializer (a crash or os._exit there). "
            "Fix the initializer and create a new executor; the worker's stderr may "
            "say more."
        )
    if exitcode is not None and exitcode < 0:
        return BrokenProcessPool(
            f"The executor could not start its workers: worker process {pid} was "
            f"killed with status {status} before it was ready, by the system or "
            "another process (an out-of-memory kill, a sandbox, a signal)."
        )
    return BrokenProcessPool(
        f"The executor could not start its workers: worker process {pid} exited "
        f"with status {status} before its Python code ran. Check that "
        f"{sys.executable!r} starts and can import loky (its stderr says why)."
    )
