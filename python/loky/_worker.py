"""The worker process: a fresh interpreter that runs tasks read from its channel.

It is started by the Rust core as ``python -c "from loky._worker import main; main()"``
with its channel on file descriptor 3, and imports as little as it can: the executor
machinery, cloudpickle and traceback are loaded only when a task needs them.

Conversation on the channel (frames laid out in ``src/wire.rs``):

    parent -> INIT   (settings, pickled initializer)
    worker -> READY  or INIT_FAILED (then exits)
    parent -> TASK   (pickled fn, args, kwargs)          one or many at a time
    worker -> RESULT (pickled outcome), in task order, each before the next task runs
    parent closes its end                                -> the worker exits
"""

import os
import sys
from struct import Struct
from time import monotonic

# The C pickle module: `pickle` would import much more at every worker start.
import _pickle as pickle

from ._core import (
    FLAG_HAS_FD,
    HEADER_LEN,
    KIND_EXITED,
    KIND_FORKED,
    KIND_INIT_FAILED,
    KIND_READY,
    KIND_RESULT,
    KIND_RETIRING,
    WORKER_FD,
    recv_with_fd,
    send_with_fd,
)
from ._payload import IO_CHUNK, pack, unpack

HEADER = Struct("<QQII")
assert HEADER.size == HEADER_LEN

# Outcome tags, the first item of a RESULT body.
OK = 0
RAISED = 1  # (RAISED, exception, worker traceback text)
TASK_UNPICKLE_FAILED = 2  # (TASK_UNPICKLE_FAILED, worker traceback text)

# Nesting depth of this process; read by loky.process_executor.
DEPTH = 0


class Channel:
    """Blocking framed I/O on the worker's end of its socket. A frame may carry one
    descriptor (a memfd of large buffers), received with its first byte."""

    def __init__(self, fd):
        self.fd = fd
        self.staged = bytearray()
        self.fds = []  # received, not yet claimed by their frame
        self.outgoing = []  # (header, body, fd or None)

    def _fill(self):
        data, fd = recv_with_fd(self.fd, 1 << 20)
        if not data:
            raise EOFError
        if fd >= 0:
            self.fds.append(fd)
        self.staged += data

    def read_frame(self):
        """Return (kind, task_id, body, fd or None); raise EOFError when the parent
        closed."""
        while len(self.staged) < HEADER_LEN:
            self._fill()
        length, task_id, kind, flags = HEADER.unpack_from(self.staged)
        fd = self.fds.pop(0) if flags & FLAG_HAS_FD else None
        end = HEADER_LEN + length
        if len(self.staged) >= end:
            body = bytes(self.staged[HEADER_LEN:end])
            del self.staged[:end]
            return kind, task_id, body, fd
        # A large body: read the rest straight into its final buffer (only its own
        # bytes, so no later frame's descriptor is touched).
        body = bytearray(length)
        have = len(self.staged) - HEADER_LEN
        body[:have] = self.staged[HEADER_LEN:]
        self.staged.clear()
        view = memoryview(body)
        while have < length:
            n = os.readv(self.fd, [view[have : min(length, have + IO_CHUNK)]])
            if n == 0:
                raise EOFError
            have += n
        return kind, task_id, body, fd

    def queue(self, kind, task_id, body, fd=None):
        flags = 0 if fd is None else FLAG_HAS_FD
        self.outgoing.append((HEADER.pack(len(body), task_id, kind, flags), body, fd))

    def flush(self):
        frames, self.outgoing = self.outgoing, []
        plain = []
        for header, body, fd in frames:
            if fd is None:
                plain += (header, body)
                continue
            self._write_all(plain)
            plain = []
            try:
                data = header + body
                sent = send_with_fd(self.fd, data, fd)
                self._write_all([memoryview(data)[sent:]])
            finally:
                os.close(fd)
        self._write_all(plain)

    def _write_all(self, parts):
        if not parts:
            return
        if len(parts) <= 64:
            # Usually one call takes it all (small frames, room in the socket).
            n = os.writev(self.fd, parts)
            if n == sum(map(len, parts)):
                return
            views = _after(parts, n)
        else:
            views = [memoryview(p) for p in parts if len(p)]
        while views:
            # Large parts are cut to what one call can take.
            if len(views[0]) > IO_CHUNK:
                views[0:1] = [views[0][:IO_CHUNK], views[0][IO_CHUNK:]]
            n = os.writev(self.fd, views[:64])
            while n:
                if n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][n:]
                    n = 0


def _after(parts, n):
    """Views of what follows the first `n` bytes of `parts`."""
    views = []
    for part in parts:
        size = len(part)
        if n >= size:
            n -= size
            continue
        views.append(memoryview(part)[n:])
        n = 0
    return views


def run_chunk(fn, chunk):
    """One task of ``map(..., chunksize=n)``: defined here, so a worker need not import
    the executor module to run it."""
    return [fn(*args) for args in chunk]


def _plain_dump(obj, buffer_callback):
    return pickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)


def _traceback_text(exc):
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class Runner:
    """Runs tasks and turns their outcome into bytes for the parent."""

    def __init__(self, pickler_name):
        self.pickler_name = pickler_name
        self.result_reducers = None
        # Plain pickle is enough for most results; the loky pickler (cloudpickle by
        # default) handles the rest and applies result reducers.
        self._plain_first = (_plain_dump, self._loky_dump)
        self._loky_only = (self._loky_dump,)

    def dumps(self, outcome):
        """(body, memfd or None) for the parent."""
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

    def run(self, body, fd):
        try:
            fn, args, kwargs = unpack(body, fd)
        except BaseException as exc:
            return self.dumps((TASK_UNPICKLE_FAILED, _traceback_text(exc)))
        try:
            outcome = (OK, fn(*args, **kwargs))
        except BaseException as exc:
            outcome = (RAISED, exc, _traceback_text(exc))
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


class MemoryGuard:
    """Between tasks, at most once a second: collect garbage and, on Linux, compare the
    resident size with the one measured after the first task. A worker that grew more
    than LOKY_MAX_MEMORY_LEAK_SIZE bytes (default 300 MB) asks to be replaced."""

    CHECK_INTERVAL = 1.0

    def __init__(self):
        self.limit = int(float(os.environ.get("LOKY_MAX_MEMORY_LEAK_SIZE", 3e8)))
        self.reference = None
        self.last_check = monotonic()

    @staticmethod
    def resident_bytes():
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def leaking(self):
        """Called after each task; True if this worker should be replaced."""
        now = monotonic()
        if self.reference is not None and now - self.last_check < self.CHECK_INTERVAL:
            return False
        import gc

        gc.collect()
        self.last_check = monotonic()
        size = self.resident_bytes()
        if size is None:
            return False
        if self.reference is None:
            self.reference = size
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

        faulthandler.enable()


def main():
    channel = Channel(WORKER_FD)
    try:
        _, _, body, _ = channel.read_frame()
    except EOFError:
        return
    settings, initializer_blob = pickle.loads(body)
    _setup(settings)
    runner = Runner(settings.get("pickler"))
    try:
        if settings.get("main"):
            # "spawn" / "loky_init_main": the parent's __main__, as __mp_main__.
            from ._inherit import import_main

            import_main(settings["main"])
        initializer, initargs, runner.result_reducers = pickle.loads(initializer_blob)
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:
        try:
            report = pickle.dumps((exc, _traceback_text(exc)))
        except BaseException:
            report = pickle.dumps((None, _traceback_text(exc)))
        channel.queue(KIND_INIT_FAILED, 0, report)
        channel.flush()
        sys.exit(1)
    channel.queue(KIND_READY, 0, b"")
    channel.flush()
    del body, initializer_blob
    memory = MemoryGuard()
    try:
        while True:
            _, task_id, body, fd = channel.read_frame()
            result, result_fd = runner.run(body, fd)
            channel.queue(KIND_RESULT, task_id, result, result_fd)
            del body, result
            if memory.leaking():
                # Tasks already sent here go to other workers.
                channel.queue(KIND_RETIRING, 0, b"")
                break
            # Each result leaves before the next task starts: if that task crashes the
            # worker, only it is lost.
            channel.flush()
    except EOFError:
        pass
    finally:
        try:
            channel.flush()
        except OSError:
            pass  # the parent is gone
    _exit_now()


def _exit_now():
    """Exit without tearing the interpreter down module by module (which takes longer
    than the rest of a shutdown), but after what a normal exit owes the user: their
    threads joined, their atexit functions run, their output flushed."""
    if "threading" in sys.modules:
        sys.modules["threading"]._shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(0)


def serve_template():
    """Run as the pool's template: fork a worker each time the manager asks, reap the
    workers and report their exit codes. Never runs user code, so forking is safe."""
    from ._core import detach_forked_worker, template_next

    control = Channel(WORKER_FD)
    control.queue(KIND_READY, 0, b"")
    children = {}  # pidfd -> pid
    while True:
        try:
            control.flush()
        except OSError:
            os._exit(0)  # the pool closed its end: nothing of ours to clean up
        pidfds = list(children)
        request, value = template_next(WORKER_FD, pidfds)
        if request == "fork":
            pid = os.fork()
            if pid == 0:
                _become_worker(value, pidfds, detach_forked_worker)
            os.close(value)
            children[os.pidfd_open(pid)] = pid
            control.queue(KIND_FORKED, pid, b"")
        elif request == "exited":
            pidfd = pidfds[value]
            pid = children.pop(pidfd)
            os.close(pidfd)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            control.queue(KIND_EXITED, pid, code.to_bytes(8, "little", signed=True))
        else:
            os._exit(0)  # the pool is gone


def _become_worker(channel_fd, template_fds, detach_forked_worker):
    """In a child of the template: take the worker's socket as fd 3 and run."""
    template_pid = os.getppid()
    os.dup2(channel_fd, WORKER_FD)  # replaces the template's control socket
    os.close(channel_fd)
    for fd in template_fds:
        os.close(fd)
    if not detach_forked_worker(template_pid):
        os._exit(1)
    try:
        main()
    finally:
        # Never return into the template's loop.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
