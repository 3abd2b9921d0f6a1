"""Task functions and small utilities shared by the tests.

Workers import this module (functions travel by reference), so it imports nothing
heavy at module level: a worker that runs `square` loads only this file.
"""

import os
import signal
import sys
import threading
import time

# -- tasks that succeed ----------------------------------------------------------------


def square(x):
    return x * x


def add(a, b):
    return a + b


def identity(x):
    return x


def get_pid(_=None):
    return os.getpid()


def sleep_and_return(seconds, value=None):
    time.sleep(seconds)
    return value


def wait_for_path(path, value, timeout=30):
    """Block until `path` exists (a gate the test opens), then return `value`."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


def slow_first_run(record, seconds):
    """Sleeps `seconds` the first time (`record` holds no line yet), returns at once
    the next ones; appends this pid to `record` each time."""
    first = not read_lines(record)
    append_line(record, str(os.getpid()))
    if first:
        time.sleep(seconds)
    return "fast"


def check_in_then_wait_for_path(record, path, value, timeout=30):
    """Append this worker's pid to `record` (the test sees the task run), then block
    until `path` exists (a gate the test opens); return `value`."""
    append_line(record, str(os.getpid()))
    return wait_for_path(path, value, timeout)


def pid_after_gate(path, timeout=30):
    """Block until `path` exists (a gate the test opens), then return this pid."""
    wait_for_path(path, None, timeout)
    return os.getpid()


def sleep_and_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def rendezvous(path, n, timeout):
    """Check in at `path`, then wait (up to `timeout` s) until `n` distinct workers
    have: tasks that need `n` workers running at the same time. Returns this pid."""
    append_line(path, str(os.getpid()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(set(read_lines(path))) >= n:
            break
        time.sleep(0.005)
    return os.getpid()


def getenv(name):
    return os.environ.get(name)


def dont_write_bytecode_flag():
    return sys.flags.dont_write_bytecode


def module_loaded(name):
    return name in sys.modules


def import_then_check(name):
    __import__(name)
    return name in sys.modules


def main_module_info():
    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None), getattr(main, "RAN_AS_MAIN", False)


def payload_summary(data, probes):
    """Length of a bytes-like payload and the bytes found at `probes`."""
    view = memoryview(data)
    return len(view), bytes(view[p] for p in probes)


def make_payload(size, probes):
    """A zero-filled bytearray of `size` with a marker byte at each probe."""
    data = bytearray(size)
    for i, p in enumerate(probes):
        data[p] = marker(i)
    return data


def marker(i):
    return (i * 37 + 11) % 251 + 1


def pid_then_sleep(path, seconds):
    """Write this worker's pid to `path` (so the test knows the task runs), then sleep."""
    append_line(path, str(os.getpid()))
    time.sleep(seconds)
    return "finished"


def retry_sharing(call, *args):
    """`call(*args)`, again for up to 10 s while Windows refuses it for sharing: there a
    file cannot be opened while one of its names is being deleted, nor a name deleted
    while the file is open without delete sharing (Python's own opens), which the
    writers and readers below do to each other."""
    if sys.platform != "win32":
        return call(*args)
    deadline = time.monotonic() + 10
    while True:
        try:
            return call(*args)
        except PermissionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def append_line(path, text):
    """Append the line `text` to `path`, so that a reader never sees a line half
    written, nor the file without its first line: the first writer links a finished
    file into place (atomic, and refused if the file exists meanwhile); later writers
    append the line with a single write(). Readers take only the complete lines
    (`read_lines`), as another writer may be appending at that very moment."""
    path = os.fspath(path)
    data = (text + "\n").encode()
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            retry_sharing(os.link, tmp, path)
            return
        except FileExistsError:
            pass  # another writer came first: append below
        finally:
            retry_sharing(os.unlink, tmp)
    fd = retry_sharing(os.open, path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_lines(path):
    """The complete lines of `path` (without a line still being written); [] while
    the file does not exist."""
    try:
        with retry_sharing(open, path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return text.split("\n")[:-1]


# -- tasks that raise ------------------------------------------------------------------


class CustomError(Exception):
    def __init__(self, message, code):
        super().__init__(message, code)
        self.code = code


class CustomBaseException(BaseException):
    pass


def raise_value_error(message):
    raise ValueError(message)


def raise_custom_error(message, code):
    raise CustomError(message, code)


def raise_error(error_class, message):
    raise error_class(message)


def fail_on_odd(x):
    if x % 2:
        raise ValueError(f"odd input {x}")
    return x


def call_sys_exit(code):
    sys.exit(code)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt("interrupted in the task")


def raise_custom_base_exception(message):
    raise CustomBaseException(message)


# -- tasks that kill their worker ------------------------------------------------------


# How a worker that read address 0 is reported: a signal on POSIX, the exception code
# on Windows.
SEGFAULT_STATUS = "{ACCESS_VIOLATION(0xC0000005)}" if sys.platform == "win32" else "{SIGSEGV(-11)}"


def segfault(record_to=None):
    """Read address 0: the process dies (on Windows ctypes would catch that fault
    and raise OSError; faulthandler's reader does not)."""
    if record_to is not None:
        append_line(record_to, str(os.getpid()))
    if sys.platform == "win32":
        import faulthandler

        faulthandler._read_null()
    import ctypes

    ctypes.string_at(0)


def exit_with(code, record_to=None):
    if record_to is not None:
        append_line(record_to, str(os.getpid()))
    os._exit(code)


# What ends a process at once with os.kill: SIGKILL, or on Windows (where os.kill
# ends a process whatever the signal, and SIGKILL does not exist) SIGTERM.
KILL_SIGNAL = getattr(signal, "SIGKILL", signal.SIGTERM)


def kill_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(30)


def when_forked(parent_pid, fn, *args):
    """`fn(*args)` in a worker forked by the template (whose parent is not
    `parent_pid`, the pool's process); None in any other worker."""
    if os.getppid() != parent_pid:
        return fn(*args)
    return None


# -- a worker's channel, written raw ---------------------------------------------------

# A worker's channel is its descriptor 3 (on Windows, the pipe handle its command line
# names: --loky-channel=<value>). Each message on it starts with a 24-byte header: body
# length (u64), task id (u64), kind (u32), flags (u32), little-endian; kind 9 is a
# task's result (src/wire/mod.rs).
WORKER_CHANNEL_FD = 3
RESULT_KIND = 9


def _worker_channel_handle():
    prefix = "--loky-channel="
    return next(int(a[len(prefix):]) for a in sys.argv if a.startswith(prefix))


def write_to_worker_channel(data):
    """In a worker: write `data` on its channel, as stray native code would."""
    if sys.platform != "win32":
        os.write(WORKER_CHANNEL_FD, data)
        return
    import _winapi

    # The pipe end is opened for overlapped I/O: an overlapped write, waited for.
    overlapped, _ = _winapi.WriteFile(_worker_channel_handle(), data, overlapped=True)
    overlapped.GetOverlappedResult(True)


def close_worker_channel():
    """In a worker: close its channel under the worker's feet."""
    if sys.platform != "win32":
        os.close(WORKER_CHANNEL_FD)
        return
    import _winapi

    _winapi.CloseHandle(_worker_channel_handle())


def raw_result_header(body_length, task_id=0):
    """The header of a result message announcing `body_length` bytes of body."""
    from _struct import pack

    return pack("<QQII", body_length, task_id, RESULT_KIND, 0)


# A command that sleeps 100 s (Windows has no `sleep`).
SLEEPER = (
    [sys.executable, "-c", "import time; time.sleep(100)"]
    if sys.platform == "win32"
    else ["sleep", "100"]
)


def start_grandchild_and_sleep(pid_file, new_session=False):
    """Start a process that sleeps 100 s as a child of this worker (in a session of
    its own if `new_session`: POSIX), publish its pid, then block."""
    import subprocess

    child = subprocess.Popen(SLEEPER, start_new_session=new_session)
    tmp = f"{pid_file}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    os.replace(tmp, pid_file)
    time.sleep(100)


# -- pickling faults -------------------------------------------------------------------


class UnpicklableError(Exception):
    pass


class Unpicklable:
    """Refuses to be pickled."""

    def __reduce__(self):
        raise UnpicklableError("this object refuses to be pickled")


def _fail_on_load(message):
    raise ValueError(message)


class FailsOnLoad:
    """Pickles fine; unpickling it raises ValueError(message)."""

    def __init__(self, message="this object refuses to be unpickled"):
        self.message = message

    def __reduce__(self):
        return _fail_on_load, (self.message,)


def return_unpicklable():
    return threading.Lock()


def return_fails_on_load(message):
    return FailsOnLoad(message)


def raise_unpicklable_exception():
    raise ValueError("original task error", threading.Lock())


def takes_anything(obj):
    return type(obj).__name__


# -- initializers ----------------------------------------------------------------------

_initialized = None


def set_initialized(value):
    global _initialized
    _initialized = value


def get_initialized(_=None):
    return _initialized, os.getpid()


def write_in_initialized(index, value):
    """Write into the initializer's array; return what this worker sees then, where its
    memory comes from (the type of the object under the array's buffer), and its pid."""
    array = _initialized
    array[index] = value
    base = array
    while getattr(base, "base", None) is not None and not isinstance(base, memoryview):
        base = base.base
    owner = type(base.obj).__name__ if isinstance(base, memoryview) else type(base).__name__
    return int(array.sum()), owner, os.getpid()


def failing_initializer(message):
    raise RuntimeError(message)


def record_pid_then_fail(path):
    append_line(path, str(os.getpid()))
    raise RuntimeError("initializer refuses to start")


def record_pid_then_segfault(path):
    append_line(path, str(os.getpid()))
    segfault()


def record_pid_then_os_exit(path):
    append_line(path, str(os.getpid()))
    os._exit(9)


def record_pid_then_wait_unless_first(path):
    """An initializer that lets the first worker start and keeps the others starting
    (for at most a minute), so that a test can kill a worker before it is ready."""
    append_line(path, str(os.getpid()))
    if read_lines(path)[0] != str(os.getpid()):
        time.sleep(60)


def record_pid_then_sys_exit(path):
    append_line(path, str(os.getpid()))
    sys.exit(4)


FACTOR = 3
# A lambda travels by value (cloudpickle), with the module globals it reads.
scale_by_factor = lambda x: x * FACTOR  # noqa: E731


def apply(fn, *args):
    return fn(*args)


def loaded_callables():
    """How many functions pickled by the parent this worker keeps rebuilt."""
    from loky import _callables

    return len(_callables._loaded)


# -- utilities for the tests (parent side) ---------------------------------------------


def pid_gone(pid):
    """True once `pid` has exited (a zombie counts as exited)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout, interval=0.01):
    """Poll `predicate` until it is true or `timeout` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_pids_gone(pids, timeout):
    """Wait until every pid has exited; the ones still alive after `timeout`."""
    alive = set(pids)

    def check():
        alive.difference_update([p for p in list(alive) if pid_gone(p)])
        return not alive

    wait_until(check, timeout)
    return sorted(alive)


def wait_for_lines(path, n=1, timeout=30):
    """Wait until `path` holds at least `n` complete lines (written by `append_line`
    or atomically); return them. Raises TimeoutError after `timeout` seconds."""
    def enough():
        lines = read_lines(path)
        return lines if len(lines) >= n else None

    lines = wait_until(enough, timeout)
    if lines is None:
        raise TimeoutError(f"{path}: fewer than {n} lines after {timeout} s")
    return lines


def wait_for_pid(path, timeout=30):
    """Wait until a task wrote its worker's pid to `path` (as `pid_then_sleep` does);
    return it."""
    return int(wait_for_lines(path, 1, timeout)[0].split()[0])


def pids_of_all_workers(executor, n, timeout=30):
    """Run `n` tasks that wait for each other, so that each lands on its own worker;
    return their pids (fewer than `n` if the pool could not run them together within
    `timeout` seconds).

    Should two of them be handed to one worker (the pool may send several short tasks
    to a worker at once), the round cannot complete: it ends after its own, shorter,
    timeout and another round is run, with longer ones each time."""
    import tempfile

    deadline = time.monotonic() + timeout
    round_timeout = 5.0
    while True:
        wait = max(0.1, min(round_timeout, deadline - time.monotonic()))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "rendezvous")
            futures = [executor.submit(rendezvous, path, n, wait) for _ in range(n)]
            pids = {f.result(timeout=wait * n + 30) for f in futures}
        if len(pids) >= n or time.monotonic() >= deadline:
            return pids
        round_timeout *= 2


def run_script(
    tmp_path, source, timeout=60, env=None, name="script.py", args=(), shell_prefix=None
):
    """Run `source` as a script (given `args`) in a fresh interpreter; return the
    CompletedProcess. `shell_prefix`: a shell command line that runs the interpreter,
    given as "$@" (to close a descriptor or enter a namespace first)."""
    import subprocess
    import textwrap

    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    full_env = dict(os.environ)
    full_env.pop("PYTHONFAULTHANDLER", None)
    if env:
        full_env.update(env)
    command = [sys.executable, str(script), *args]
    if shell_prefix is not None:
        command = ["sh", "-c", shell_prefix, "sh", *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(tmp_path),
        env=full_env,
    )


def readline_within(stream, timeout):
    """The next line of `stream` (a child's stdout), or None if none came within
    `timeout` seconds. (A thread reads it: select() takes no pipes on Windows.)"""
    import queue

    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return None


def signal_name(signum):
    return signal.Signals(signum).name


_kept_memory = []


def keep_memory(nbytes):
    """Grow this worker by `nbytes` that stay allocated (touched, so they count)."""
    _kept_memory.append(bytearray(b"\x01" * nbytes))
    return len(_kept_memory)
