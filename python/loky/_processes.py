"""The objects an executor's `_processes` hands out: one `WorkerProcess` per worker, with
the part of `multiprocessing.Process`'s interface that code written for loky's and the
standard library's executors uses (tools read `_processes` to find the workers).

    Pool.stats() ─► WorkerProcesses.alive() ─► {pid: WorkerProcess}   (executor._processes)
    WorkerExited / StartFailed ─► WorkerProcesses.record_exit(pid, exitcode)
                                       ─► that object's exitcode, join() returns
    result thread ends ─► WorkerProcesses.finish_all(): every object left is finished
"""

import os
import signal
import sys
import threading
import weakref

from . import _core


# The exit code a Windows process ended by `terminate()` gets, which the core (as
# multiprocessing) reports as -SIGTERM; the access right that allows it.
_TERMINATED = 0x10000
_PROCESS_TERMINATE = 0x0001


def _terminate_windows(pid):
    import _winapi

    handle = _winapi.OpenProcess(_PROCESS_TERMINATE, False, pid)
    try:
        _winapi.TerminateProcess(handle, _TERMINATED)
    finally:
        _winapi.CloseHandle(handle)


class WorkerProcesses:
    """The `WorkerProcess` objects of one pool, by pid, until their worker's exit is
    known; then that exit code, for a while (see `alive`)."""

    _KEPT_EXITS = 4096

    def __init__(self, pool):
        self._pool = pool
        self._objects = {}
        self._exitcodes = {}

    def alive(self):
        """pid -> WorkerProcess for the workers that serve the pool now: alive, and not
        on their way out (a worker the pool asked to leave, after a resize for
        instance, is left out, as loky's resize waits for it). The core publishes a
        worker as gone a moment after its exit event may have been recorded here: a
        pid whose exit is known is left out, so that no object waits for an exit
        already seen."""
        objects, exitcodes = self._objects, self._exitcodes
        alive = {}
        # A snapshot from the manager (one round trip): it includes the workers it
        # starts for the tasks submitted before this call.
        serving = (w.pid for w in self._pool.stats() if w.state is not _core.WorkerState.EXITING)
        for pid in serving:
            if pid in exitcodes:
                continue
            process = objects.setdefault(pid, WorkerProcess(pid, self._pool))
            if pid in exitcodes:  # its exit was recorded meanwhile
                objects.pop(pid, None)
                process._finish(exitcodes[pid])
                continue
            alive[pid] = process
        return alive

    def record_exit(self, pid, exitcode):
        if len(self._exitcodes) >= self._KEPT_EXITS:
            self._exitcodes.pop(next(iter(self._exitcodes)))
        self._exitcodes[pid] = exitcode  # before the look at the objects: see alive()
        process = self._objects.pop(pid, None)
        if process is not None:
            process._finish(exitcode)

    def finish_all(self):
        """Once the pool has closed, every worker has exited; an exit not recorded (none
        is expected) is unknown."""
        for process in list(self._objects.values()):
            process._finish(None)


class WorkerProcess:
    """A worker of an executor, with the part of `multiprocessing.Process`'s interface
    that code written for loky's and the standard library's `_processes` uses."""

    def __init__(self, pid, pool):
        self.pid = pid
        self.name = f"LokyProcess-{pid}"
        self._pool = pool
        self._exitcode = None
        self._exited = threading.Event()
        self._sentinel = None

    def _finish(self, exitcode):
        self._exitcode = exitcode
        self._exited.set()

    def __repr__(self):
        status = "alive" if self.exitcode is None else f"exitcode={self.exitcode}"
        return f"<WorkerProcess pid={self.pid} {status}>"

    @property
    def exitcode(self):
        """None while the worker runs; then its exit code (-N: killed by signal N)."""
        return self._exitcode

    def is_alive(self):
        return not self._exited.is_set()

    def join(self, timeout=None):
        """Wait until the worker has exited and its exit code is known."""
        self._exited.wait(timeout)

    def terminate(self):
        self._signal(signal.SIGTERM)

    def kill(self):
        # (Windows has no SIGKILL: the process is ended as by terminate().)
        self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))

    def _signal(self, signum):
        # The core reaps its workers: while it lists this pid, the pid is this worker.
        if self.is_alive() and self.pid in self._pool.pids():
            try:
                if sys.platform == "win32":
                    _terminate_windows(self.pid)
                    return
                os.kill(self.pid, signum)
            except OSError:
                pass  # gone meanwhile (Windows: no such process, or access denied)

    @property
    def sentinel(self):
        """A descriptor that becomes readable when the worker ends (a pidfd; Linux), or
        on Windows a handle to the process (signalled once it ended), which
        `multiprocessing.connection.wait` takes as well."""
        if self._sentinel is None and sys.platform == "win32":
            import _winapi

            self._sentinel = _winapi.OpenProcess(_winapi.SYNCHRONIZE, False, self.pid)
            weakref.finalize(self, _winapi.CloseHandle, self._sentinel)
        if self._sentinel is None:
            if not hasattr(os, "pidfd_open"):
                raise NotImplementedError("a worker's sentinel needs pidfds (Linux)")
            self._sentinel = os.pidfd_open(self.pid)
            weakref.finalize(self, os.close, self._sentinel)
        return self._sentinel
