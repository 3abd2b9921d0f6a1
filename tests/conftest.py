"""Shared fixtures: every test leaves no process behind.

Every process started while the tests run inherits ``LOKY_TESTS_MARKER`` in its
environment, so after each test we can find not only the children of the test process
but also anything that escaped the tree (a worker's child re-parented to init, the
workers of a killed subprocess). A test fails if such a process is still alive after a
grace period; the leftovers are then killed, by pid, so the next test starts clean.
"""

import os
import signal
import sys
import time

import psutil
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import loky  # noqa: E402
from loky import process_executor, reusable_executor  # noqa: E402

MARKER_NAME = "LOKY_TESTS_MARKER"
MARKER = f"{os.getpid()}-{time.time_ns()}"
os.environ[MARKER_NAME] = MARKER
# The tests check that workers enable faulthandler themselves.
os.environ.pop("PYTHONFAULTHANDLER", None)

# How long exiting workers may take to go away after a test (generous: this is a
# "does not leak" check, not a speed check).
GRACE_PERIOD = 10.0


def _our_processes():
    """Processes this test session started: descendants of this process, and any
    process carrying our marker (children re-parented after their parent died)."""
    me = psutil.Process()
    found = {}
    trackers = _tracker_pids()
    for child in me.children(recursive=True):
        if child.pid not in trackers and not _is_wine_service(child):
            found[child.pid] = child
    for proc in psutil.process_iter():
        if proc.pid == me.pid or proc.pid in found or proc.pid in trackers:
            continue
        if _is_wine_service(proc):
            continue
        try:
            if proc.environ().get(MARKER_NAME) == MARKER:
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    return found


def _running_under_wine():
    if sys.platform != "win32":
        return False
    import ctypes

    return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")


RUNNING_UNDER_WINE = _running_under_wine()


def _is_wine_service(proc):
    """Wine starts its own programs (``explorer.exe /desktop``, ``services.exe``, ...)
    from whichever process first needs them, with that process's environment; they
    live as long as the Wine session and are not any test's leftovers. The tests start
    nothing from the system folder themselves."""
    if not RUNNING_UNDER_WINE:
        return False
    try:
        exe = proc.exe()
    except (psutil.Error, OSError):
        return False
    system = os.path.join(os.environ.get("SystemRoot", r"C:\windows"), "system32")
    return os.path.normcase(os.path.dirname(exe)) == os.path.normcase(system)


def _tracker_pids():
    """The resource trackers this process started (multiprocessing's, when a test made
    a lock or queue from one of its contexts; loky's): they live as long as the
    process, by design, and are not any test's leftovers."""
    pids = set()
    for name in ("multiprocessing.resource_tracker", "loky.backend.resource_tracker"):
        module = sys.modules.get(name)
        pid = getattr(getattr(module, "_resource_tracker", None), "_pid", None)
        if pid is not None:
            pids.add(pid)
    return pids


def _describe(proc):
    try:
        return f"pid {proc.pid} ({proc.status()}): {' '.join(proc.cmdline())[:160]}"
    except psutil.Error:
        return f"pid {proc.pid} (gone)"


def _alive(procs):
    alive = {}
    for pid, proc in procs.items():
        try:
            if proc.is_running():
                alive[pid] = proc
        except psutil.Error:
            pass
    return alive


def _reap_zombie_children():
    """Collect our own children that exited and that nobody reaped."""
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError, OSError):
            pass


def shutdown_leftover_executors():
    # Every executor of this process, as the package keeps them (weakly: garbage
    # collection of executors is itself tested).
    for executor in list(process_executor._executors):
        try:
            executor.shutdown(wait=True, kill_workers=True)
        except Exception:  # a broken executor may complain; we only clean up
            pass
    current = reusable_executor._current_executor()
    if current is not None:
        current.shutdown(wait=True, kill_workers=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``posix_only(reason)`` say why (a marker without a reason is an
    error); on Windows they are skipped with it (CI deselects them there with
    ``-m "not posix_only"``, and counts them)."""
    for item in items:
        marker = item.get_closest_marker("posix_only")
        if marker is None:
            continue
        if not marker.args or not str(marker.args[0]).strip():
            raise pytest.UsageError(f"{item.nodeid}: posix_only needs its reason")
        if sys.platform == "win32":
            item.add_marker(pytest.mark.skip(reason=f"POSIX only: {marker.args[0]}"))


@pytest.fixture(autouse=True)
def no_process_left_behind(request):
    yield
    shutdown_leftover_executors()
    deadline = time.monotonic() + GRACE_PERIOD
    leftovers = _our_processes()
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.02)
        leftovers = _alive(leftovers)
        # Zombies that still are our children after the grace period are real leaks
        # (nobody reaped them); zombies elsewhere are init's to collect.
        leftovers = {
            pid: p
            for pid, p in leftovers.items()
            if not _is_foreign_zombie(p)
        }
    leftovers = {pid: p for pid, p in _alive(leftovers).items() if not _is_foreign_zombie(p)}
    if not leftovers:
        return
    descriptions = [_describe(p) for p in leftovers.values()]
    for pid in leftovers:
        try:
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
        except OSError:
            pass
    psutil.wait_procs(list(leftovers.values()), timeout=5)
    _reap_zombie_children()
    pytest.fail(
        f"{len(descriptions)} process(es) left behind {GRACE_PERIOD:.0f}s after the "
        "test:\n  " + "\n  ".join(descriptions),
        pytrace=False,
    )


def _is_foreign_zombie(proc):
    try:
        return proc.status() == psutil.STATUS_ZOMBIE and proc.ppid() != os.getpid()
    except psutil.Error:
        return True


@pytest.fixture
def executor_factory():
    """Create executors that are shut down (killing their workers) after the test."""
    created = []

    def make(*args, **kwargs):
        executor = loky.ProcessPoolExecutor(*args, **kwargs)
        created.append(executor)
        return executor

    yield make
    for executor in created:
        executor.shutdown(wait=True, kill_workers=True)
