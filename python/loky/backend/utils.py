"""Process utilities."""

import os
import signal

from .. import _core

__all__ = ["kill_process_tree"]


def kill_process_tree(process, use_psutil=True):
    """Kill `process` (anything with a ``pid``; a `multiprocessing` process is then
    joined, a `subprocess.Popen` waited for) and all its descendants with SIGKILL,
    deepest first. `use_psutil` is accepted for loky compatibility; the process tree
    is read by the core either way. (On Windows, which has no SIGKILL, `os.kill` ends
    a process whatever the signal.)"""
    kill = getattr(signal, "SIGKILL", signal.SIGTERM)
    pids = _core.descendants(process.pid)  # the tree walk is the core's
    for pid in reversed(pids):
        try:
            os.kill(pid, kill)
        except OSError:
            pass  # gone meanwhile (Windows: no such process, or access denied)
    if hasattr(process, "kill"):
        process.kill()
    else:
        try:
            os.kill(process.pid, kill)
        except OSError:
            pass
    if hasattr(process, "join"):
        process.join()
    elif hasattr(process, "wait"):
        process.wait()
