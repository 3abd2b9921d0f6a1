"""Process utilities."""

import os
import signal

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is optional
    psutil = None

__all__ = ["kill_process_tree"]


def _children_from_proc():
    """Map pid -> list of child pids, read from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # The command name (2nd field) may contain spaces: split after its ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(pid, use_psutil):
    """Descendants of `pid`, parents before their children."""
    if use_psutil and psutil is not None:
        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
    children = _children_from_proc()
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def kill_process_tree(process, use_psutil=True):
    """Kill `process` (anything with a ``pid``; a `multiprocessing` process is then
    joined, a `subprocess.Popen` waited for) and all its descendants with SIGKILL, deepest first."""
    pids = _descendants(process.pid, use_psutil)
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if hasattr(process, "kill"):
        process.kill()
    else:
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if hasattr(process, "join"):
        process.join()
    elif hasattr(process, "wait"):
        process.wait()
