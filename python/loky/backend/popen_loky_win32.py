"""Start a `LokyProcess` on Windows: a fresh interpreter, as with the POSIX
`popen_loky_posix`, through the system's CreateProcess.

    parent                                              child (python -c "...; main(h, pid)")
    CreateProcess, inheriting only the read end of a pipe (h) and the standard handles
    pickle (settings, process object) ── pipe ──────►  apply settings, unpickle,
    handles the pickle refers to: duplicated into       run process_obj._bootstrap()
        the child as they are pickled
    sentinel: the process handle; its exit code once it is signalled

The process exists before its data is pickled, so that multiprocessing's objects
(locks, queues, pipes) find their handles a home in the child as they are pickled
(`duplicate_for_child`), as with multiprocessing's own "spawn" start method. The data
is pickled with the loky pickler (cloudpickle: the target may be a lambda or a closure)
plus multiprocessing's reducers.
"""

import msvcrt
import os
import signal
import subprocess
import sys
import threading
import weakref

import _winapi
from multiprocessing import reduction as mp_reduction

from .. import _inherit
from . import _child

__all__ = ["Popen"]

# The exit code `terminate()` gives, reported as -SIGTERM (as multiprocessing does).
_TERMINATED = 0x10000


def _close_handles(*handles):
    for handle in handles:
        try:
            _winapi.CloseHandle(handle)
        except OSError:
            pass


class Popen:
    """The `_popen` of a `LokyProcess` on Windows; its sentinel is the process handle."""

    method = "loky"

    def __init__(self, process_obj):
        self.returncode = None
        self._lock = threading.Lock()
        imports_main = getattr(process_obj, "init_main_module", False)
        settings, passed = _inherit.child_settings("loky_init_main" if imports_main else "loky")
        settings["name"] = process_obj.name
        settings["sys_path"] = list(sys.path)
        read_end, write_end = os.pipe()
        handle = msvcrt.get_osfhandle(read_end)
        os.set_inheritable(read_end, True)
        code = _inherit.python_code(
            f"from loky.backend.popen_loky_win32 import main; main({handle}, {os.getpid()})"
        )
        env = os.environ.copy()
        env.update({str(k): str(v) for k, v in (getattr(process_obj, "env", None) or {}).items()})
        info = subprocess.STARTUPINFO(lpAttributeList={"handle_list": [handle, *passed]})
        try:
            with open(write_end, "wb", closefd=False) as pipe:
                child = subprocess.Popen(
                    [sys.executable, "-c", code], env=env, startupinfo=info, close_fds=True
                )
                os.close(read_end)
                read_end = None
                me = _winapi.GetCurrentProcess()
                # The process handle outlives the Popen object, which would close it.
                self._handle = _winapi.DuplicateHandle(
                    me, int(child._handle), me, 0, False, _winapi.DUPLICATE_SAME_ACCESS
                )
                self.pid = child.pid
                self.sentinel = self._handle
                child.returncode = 0  # waited for here, through `_handle`
                self._finalizer = weakref.finalize(self, _close_handles, self._handle)
                pipe.write(_child.start_message(self, settings, process_obj))
        finally:
            os.close(write_end)
            if read_end is not None:
                os.close(read_end)

    def duplicate_for_child(self, handle):
        """`handle`'s duplicate in the child (multiprocessing's objects ask, as they
        are pickled)."""
        return mp_reduction.duplicate(handle, self._handle)

    def poll(self, flag=None):
        return self.wait(0)

    def wait(self, timeout=None):
        with self._lock:
            if self.returncode is None:
                ms = _winapi.INFINITE if timeout is None else max(0, int(timeout * 1000 + 0.5))
                if _winapi.WaitForSingleObject(self._handle, ms) != _winapi.WAIT_OBJECT_0:
                    return None
                code = _winapi.GetExitCodeProcess(self._handle)
                self.returncode = -signal.SIGTERM if code == _TERMINATED else code
            return self.returncode

    def terminate(self):
        if self.returncode is None:
            try:
                _winapi.TerminateProcess(self._handle, _TERMINATED)
            except PermissionError:
                # It exited meanwhile: its code is there to read.
                if self.wait(1.0) is None:
                    raise

    kill = terminate

    def close(self):
        self._finalizer()


def main(handle, parent_pid):
    """Body of the child: `handle` is the read end of the parent's pipe."""

    def open_pipe():
        parent_sentinel = _winapi.OpenProcess(_winapi.SYNCHRONIZE, False, parent_pid)
        return msvcrt.open_osfhandle(handle, os.O_RDONLY), parent_sentinel

    _child.run(open_pipe)
