"""The resource tracker: deletes the temporary files, folders and semaphores that a tree
of processes shares, once nobody uses them, even if the processes die.

    parent ─┐ register / maybe_unlink / unregister, one line each
    worker ─┼──────────────────────── pipe ───────────────────► tracker process
    worker ─┘ (every process holds the write end)               counts per resource

- The tracker is a separate interpreter (``python -c "from
  loky.backend.resource_tracker import main; ..."``) started on first use:
  `ensure_running`, `register`, or an executor starting its workers while this module
  is imported. Importing the module starts nothing.
- The executors' workers inherit the write end of the pipe (and the processes of the
  ``loky`` context too), so a whole tree of processes shares one tracker.
- Counting: ``register`` adds one use, ``maybe_unlink`` removes one and deletes the
  resource when none is left, ``unregister`` forgets the resource without deleting it.
- When every process holding the write end has exited, the tracker reads end-of-file.
  Whatever is still registered then was leaked by a process that died: the tracker
  deletes it (files first, folders last, since folders may contain tracked files),
  says so on stderr, and exits. In normal operation it prints nothing.
- On Windows the pipe's ends are handles: the tracker gets the read end's value on its
  command line (inherited, the only handle it inherits besides its standard ones), and
  the workers the write end's (see `loky._inherit`).
"""

import base64
import json
import os
import shutil
import signal
import sys
import threading
import warnings

from .. import _inherit

__all__ = ["ensure_running", "register", "unregister", "maybe_unlink", "getfd"]

# Log every command on the tracker's stderr. Read when the tracker is started.
VERBOSE = False

# Longest message, so that a write to the pipe is atomic (PIPE_BUF on Linux).
_MAX_MESSAGE = 4096


def _never_registered(name):
    raise RuntimeError(
        f"{name!r} was registered as a 'noop' resource, a type only used to probe the "
        "tracker: there is nothing to delete"
    )


def _unlink_semaphore(name):
    import _multiprocessing

    _multiprocessing.sem_unlink(name)


# Resource type -> how the tracker deletes one; each raises OSError if it is gone (code
# written for loky calls them directly and relies on that). joblib replaces "file" in
# its own process; the tracker process uses the functions set here.
_CLEANUP_FUNCS = {
    "noop": _never_registered,
    "file": os.unlink,
    "folder": shutil.rmtree,
    "semlock": _unlink_semaphore,
}

# Windows' process API, as loky names it (the tracker's process is a
# `subprocess.Popen` here: `ResourceTracker._process`).
_winapi = None


def _encode_message(cmd, name, rtype):
    # The format of CPython's and loky's trackers (since 3.14 / 3.7); base64 lets a name
    # hold any character, newlines included.
    encoded = base64.urlsafe_b64encode(os.fsencode(name)).decode("ascii")
    return (json.dumps({"cmd": cmd, "rtype": rtype, "base64_name": encoded}) + "\n").encode()


def _decode_message(line):
    """(cmd, rtype, name) of one message: the JSON form, or the "cmd:name:rtype" of
    older CPython trackers."""
    if line.lstrip().startswith(b"{"):
        fields = json.loads(line)
        name = base64.urlsafe_b64decode(fields["base64_name"])
        return fields["cmd"], fields["rtype"], os.fsdecode(name)
    cmd, rest = line.strip().decode("ascii").split(":", 1)
    name, rtype = rest.rsplit(":", 1)
    return cmd, rtype, name


class ResourceTracker:
    """This process's connection to the tracker; started on first use."""

    def __init__(self):
        self._lock = threading.RLock()
        # Write end of the pipe to the tracker: the one this process got from its
        # parent, if loky started it.
        self._fd = _inherit.TRACKER_FD
        # Set only in the process that started the tracker.
        self._pid = None
        # The exit status of the last tracker seen dead.
        self._exitcode = None
        # loky's Windows handle of the tracker process: None here, where the tracker
        # started on Windows is `_process` (a subprocess.Popen; None elsewhere).
        self._proc_handle = None
        self._process = None

    def _after_fork_in_child(self):
        # A forked child keeps using the tracker (it has the pipe) but is not the
        # tracker's parent, and may have been forked while another thread held the lock.
        self._lock = threading.RLock()
        self._pid = None

    def use_inherited_pipe(self, fd):
        """Report to the parent's tracker through `fd`, the write end of its pipe that
        this process inherited."""
        with self._lock:
            self._fd = fd

    def getfd(self):
        """The write end of the pipe to the tracker, starting the tracker if needed."""
        self.ensure_running()
        return self._fd

    def ensure_running(self):
        """Start the tracker unless this process is already connected to a live one."""
        with self._lock:
            if self._fd is not None:
                if self._pid is None or not self._tracker_exited():
                    return
                self._teardown_dead_process()
            self._launch()

    def _tracker_exited(self):
        if self._process is not None:
            self._exitcode = self._process.poll()
            return self._exitcode is not None
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            # Reaped by someone else (it exited), or SIGCHLD is ignored: ask the kernel.
            try:
                os.kill(self._pid, 0)
            except ProcessLookupError:
                return True
            return False
        if pid == 0:
            return False
        self._exitcode = os.waitstatus_to_exitcode(status)
        return True

    def _teardown_dead_process(self):
        """Forget a tracker that died, with a warning: what it counted is lost."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        if self._proc_handle is not None:
            _winapi.CloseHandle(self._proc_handle)
        status = self._exitcode
        self._fd = self._pid = self._exitcode = self._proc_handle = self._process = None
        what = "" if status is None else f" (exit status {status})"
        warnings.warn(
            f"loky resource_tracker: process died unexpectedly{what}, relaunching it. "
            "Temporary files and semaphores registered with the old one will not be "
            "deleted automatically.",
            UserWarning,
            stacklevel=4,
        )

    def _launch(self):
        """Start the tracker with the read end of a new pipe; keep the write end."""
        read_end, write_end = os.pipe()
        try:
            if sys.platform == "win32":
                self._process = _start_windows(read_end)
                self._pid = self._process.pid
            else:
                self._pid = _start_posix(read_end)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._fd = write_end

    def _send(self, cmd, name, rtype):
        if rtype not in _CLEANUP_FUNCS:
            raise ValueError(
                f"Cannot track {name!r}: unknown resource type {rtype!r}. Known types: "
                f"{sorted(_CLEANUP_FUNCS)}."
            )
        message = _encode_message(cmd, name, rtype)
        if len(message) > _MAX_MESSAGE:
            raise ValueError(f"resource name too long for the resource tracker: {name!r}")
        with self._lock:
            self.ensure_running()
            try:
                written = os.write(self._fd, message)
            except BrokenPipeError:
                # The tracker is gone (killed): start a new one for this process.
                self._teardown_dead_process()
                self._launch()
                written = os.write(self._fd, message)
            assert written == len(message), "short write to the resource tracker"

    def register(self, name, rtype):
        """Count one more use of `name`; it is deleted if still counted at the end."""
        self._send("REGISTER", name, rtype)

    def unregister(self, name, rtype):
        """Forget `name` without deleting it (the caller deleted it or keeps it)."""
        self._send("UNREGISTER", name, rtype)

    def maybe_unlink(self, name, rtype):
        """Count one use less of `name`, and delete it once no use is left."""
        self._send("MAYBE_UNLINK", name, rtype)


def _tracker_code(pipe):
    return _inherit.python_code(
        f"from loky.backend.resource_tracker import main; main({pipe}, {bool(VERBOSE)})"
    )


def _start_posix(read_end):
    """The tracker's pid, started on `read_end`.

    The tracker must survive the parent, and ^C at the terminal (which reaches the
    whole process group) must not kill it: it ignores SIGINT and SIGTERM, and it is
    started with them blocked so that none lands before it ignores them. posix_spawn
    keeps the signal mask across exec; stdin and stdout go to /dev/null, stderr stays,
    for the warnings about leaked resources."""
    os.set_inheritable(read_end, True)
    return os.posix_spawn(
        sys.executable,
        [sys.executable, "-c", _tracker_code(read_end)],
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        ],
        setsigmask={signal.SIGINT, signal.SIGTERM},
    )


def _start_windows(read_end):
    """The tracker's process (a `subprocess.Popen`), started on the handle of `read_end`,
    which it alone inherits (with its standard handles), in a process group of its own
    so that the console's Ctrl-C does not reach it; stdin and stdout go to NUL, stderr
    stays."""
    import msvcrt
    import subprocess

    handle = msvcrt.get_osfhandle(read_end)
    os.set_inheritable(read_end, True)
    info = subprocess.STARTUPINFO(lpAttributeList={"handle_list": [handle]})
    return subprocess.Popen(
        [sys.executable, "-c", _tracker_code(handle)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        startupinfo=info,
        creationflags=subprocess.CREATE_NEW_PROCESS_GROUP,
    )


_resource_tracker = ResourceTracker()
ensure_running = _resource_tracker.ensure_running
register = _resource_tracker.register
unregister = _resource_tracker.unregister
maybe_unlink = _resource_tracker.maybe_unlink
getfd = _resource_tracker.getfd
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_resource_tracker._after_fork_in_child)
# The processes this one starts (executors' workers, the loky context's) share it.
_inherit.share_tracker(_resource_tracker)


# -- the tracker process --------------------------------------------------------------


def _say(text):
    try:
        sys.stderr.write(f"loky resource_tracker: {text}\n")
        sys.stderr.flush()
    except Exception:
        pass


def main(fd, verbose=False):
    """Body of the tracker process: count uses until every writer has gone, then
    delete the leftovers. Exit status: 0, or 1 if some were left, 2 if one of those
    could not be deleted, 3 if a message could not be understood."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform == "win32":
        import msvcrt

        fd = msvcrt.open_osfhandle(fd, os.O_RDONLY)  # `fd` named the pipe's handle
    else:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    counts = {rtype: {} for rtype in _CLEANUP_FUNCS}
    exit_code = 0
    if verbose:
        _say(f"running (pid {os.getpid()})")
    with open(fd, "rb") as pipe:
        for line in pipe:
            try:
                cmd, rtype, name = _decode_message(line)
                registered = counts[rtype]
            except Exception:
                _say(f"ignoring a malformed message: {line!r}")
                exit_code = 3
                continue
            if cmd == "REGISTER":
                registered[name] = registered.get(name, 0) + 1
                if verbose:
                    _say(f"incremented refcount of {rtype} {name} (now {registered[name]})")
            elif cmd == "UNREGISTER":
                registered.pop(name, None)
                if verbose:
                    _say(f"unregistered {rtype} {name}")
            elif cmd == "MAYBE_UNLINK":
                left = registered.get(name)
                if left is None:
                    # Forgotten already (unregistered after a forced cleanup).
                    if verbose:
                        _say(f"maybe_unlink of {rtype} {name}, which is not registered")
                    continue
                registered[name] = left - 1
                if verbose:
                    _say(f"decremented refcount of {rtype} {name} (now {left - 1})")
                if left == 1:
                    del registered[name]
                    try:
                        _CLEANUP_FUNCS[rtype](name)
                    except FileNotFoundError:
                        pass  # deleted by its user already: what was asked for
                    except Exception as exc:
                        _say(f"{name}: {exc!r}")
                    else:
                        if verbose:
                            _say(f"deleted {rtype} {name}")
            elif cmd != "PROBE":
                _say(f"ignoring an unknown command: {line!r}")
                exit_code = 3

    # Every process that could use the resources has exited. Folders go last: they
    # may hold tracked files.
    order = [rtype for rtype in counts if rtype != "folder"] + ["folder"]
    for rtype in order:
        leaked = counts[rtype]
        if not leaked:
            continue
        exit_code = max(exit_code, 1)
        _say(
            f"There appear to be {len(leaked)} leaked {rtype}(s): still registered when "
            f"every process using them had exited. Deleting them: {sorted(leaked)}"
        )
        for name in leaked:
            try:
                _CLEANUP_FUNCS[rtype](name)
            except Exception as exc:
                # Gone already (deleted while still counted), or undeletable.
                _say(f"{name}: {exc!r}")
                exit_code = max(exit_code, 2)
            else:
                if verbose:
                    _say(f"deleted {rtype} {name}")
    if verbose:
        _say("exiting")
    sys.exit(exit_code)
