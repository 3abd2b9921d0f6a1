"""Start a `LokyProcess`: a fresh interpreter, started by this package's spawner
(posix_spawn).

    parent                                             child (python -c "...; main(fd)")
    pickle (settings, process object) ── pipe ──────►  apply settings, unpickle,
    descriptors the pickle refers to ── inherited ──►  run process_obj._bootstrap()
    sentinel: its pidfd (else a pipe the child holds until it exits); waitpid: exit status

The process object is pickled with the loky pickler (cloudpickle: the target may be a
lambda or a closure) plus multiprocessing's reducers, so that queues, pipes and locks
travel as they do with the "spawn" start method. The parent keeps its end of the pipe
open while the child runs: the child sees it close if the parent dies
(`multiprocessing.parent_process()`).
"""

import os
import signal
import sys
import threading
import weakref
from multiprocessing.connection import wait

from .. import _core, _inherit
from . import _child

__all__ = ["Popen"]


class _DupFd:
    """A descriptor handed to the child: it keeps its number there."""

    def __init__(self, fd):
        self.fd = fd

    def detach(self):
        return self.fd


def _close_fds(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Popen:
    """The `_popen` of a `LokyProcess`; the sentinel becomes readable once the child
    exited: its pidfd, or where there are none, the read end of a pipe whose write end
    only the child holds (as with multiprocessing)."""

    method = "loky"
    DupFd = _DupFd

    def __init__(self, process_obj):
        self.returncode = None
        self.pid = None
        self.sentinel = None
        self._poll_lock = threading.Lock()
        self._fds = []
        self._finalizer = None
        self._launch(process_obj)

    def duplicate_for_child(self, fd):
        self._fds.append(fd)
        return fd

    def _launch(self, process_obj):
        imports_main = getattr(process_obj, "init_main_module", False)
        settings, pass_fds = _inherit.child_settings(
            "loky_init_main" if imports_main else "loky"
        )
        self._fds.extend(pass_fds)
        settings["name"] = process_obj.name
        settings["sys_path"] = list(sys.path)
        message = _child.start_message(self, settings, process_obj)

        child_r, parent_w = os.pipe()
        code = _inherit.python_code(
            f"from loky.backend.popen_loky_posix import main; main({child_r})"
        )
        env = getattr(process_obj, "env", None) or {}
        try:
            self.pid, self.sentinel = _core.spawn_process(
                sys.executable,
                ["-c", code],
                [(str(k), str(v)) for k, v in env.items()],
                sorted(set(self._fds + [child_r])),
            )
        except BaseException:
            os.close(parent_w)
            raise
        finally:
            os.close(child_r)
        self._finalizer = weakref.finalize(self, _close_fds, parent_w, self.sentinel)
        with open(parent_w, "wb", closefd=False) as pipe:
            pipe.write(message)

    def poll(self, flag=os.WNOHANG):
        # One thread at a time: another thread polling (multiprocessing's start() polls
        # every child) must not find the child reaped and its exit code not yet stored.
        with self._poll_lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, flag)
                except ChildProcessError:
                    # It exited and was reaped already: by the system, if this process
                    # ignores SIGCHLD, or by other code. Its status is lost: 255, as
                    # multiprocessing's forkserver reports a status it cannot know.
                    self.returncode = 255
                    return self.returncode
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            if not wait([self.sentinel], timeout):
                return None
            # A pipe sentinel closes a moment before the process is reapable: block then.
            return self.poll(os.WNOHANG if timeout == 0.0 else 0)
        return self.returncode

    def _send_signal(self, sig):
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)  # not reaped yet: the pid is still this child's
            except ProcessLookupError:
                pass

    def terminate(self):
        self._send_signal(signal.SIGTERM)

    def kill(self):
        self._send_signal(signal.SIGKILL)

    def close(self):
        if self._finalizer is not None:
            self._finalizer()


def main(fd):
    """Body of the child: `fd` is the read end of the parent's pipe."""
    _core.close_descriptors_beyond_limit()
    _child.run(lambda: (fd, os.dup(fd)))
