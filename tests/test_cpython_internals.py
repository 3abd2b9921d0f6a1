"""The undocumented parts of CPython the package uses (`loky._cpython`): none is missing
on the versions they were checked on, and the package imports and works with each of
them taken away (in the parent and in every process it starts)."""

import os
import sys
import textwrap

import pytest

from loky import _cpython

import helpers

pytestmark = pytest.mark.timeout(120)


def test_none_is_missing_on_the_versions_checked(tmp_path):
    version = "%d.%d" % sys.version_info[:2]
    if version not in _cpython.CHECKED_ON:
        pytest.skip(f"CPython {version} is not among those checked")
    # In a fresh interpreter: looking imports multiprocessing.resource_tracker, after
    # which executors made here would start (and keep) multiprocessing's tracker.
    result = helpers.run_script(
        tmp_path, "from loky import _cpython\nprint(_cpython.missing())\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


# Run first in every process of the script (as sitecustomize): what the standard library
# itself needs is imported first, then the internal is taken away.
PRELUDE = """
import importlib, sys, types
import concurrent.futures.process, concurrent.futures.thread
import multiprocessing.connection, multiprocessing.managers, multiprocessing.queues
import multiprocessing.shared_memory, multiprocessing.synchronize
if sys.platform == "win32":
    import multiprocessing.popen_spawn_win32
else:
    import multiprocessing.popen_spawn_posix

def without(module_name, *names, **replaced):
    # A copy of the module without `names` (and with `replaced`) stands for it from now
    # on; the standard library's own functions keep the real one.
    real = importlib.import_module(module_name)
    copy = types.ModuleType(module_name, real.__doc__)
    copy.__dict__.update((k, v) for k, v in vars(real).items() if k not in names)
    copy.__dict__.update(replaced)
    sys.modules[module_name] = copy
    parent, _, child = module_name.rpartition(".")
    setattr(sys.modules[parent], child, copy)
"""

# Locks whose objects have no _at_fork_reinit (the method of a built-in type cannot be
# deleted): they stand for threading.Lock and threading.RLock.
NO_REINIT_LOCKS = """
import threading

class _Lock:
    def __init__(self, lock):
        self._lock = lock

    def __getattr__(self, name):
        if name == "_at_fork_reinit":
            raise AttributeError(name)
        return getattr(self._lock, name)

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

_real_lock, _real_rlock = threading.Lock, threading.RLock
threading.Lock = lambda: _Lock(_real_lock())
threading.RLock = lambda: _Lock(_real_rlock())
"""

TAKE_AWAY = {
    "concurrent.futures._base": (
        'without("concurrent.futures._base", "PENDING", "RUNNING", "CANCELLED", '
        '"CANCELLED_AND_NOTIFIED", "FINISHED", "LOGGER")',
        [
            f"concurrent.futures._base.{name}"
            for name in (
                "PENDING", "RUNNING", "CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED",
                "LOGGER",
            )
        ],
    ),
    "threading._register_atexit": (
        "import threading; del threading._register_atexit",
        ["threading._register_atexit"],
    ),
    # multiprocessing's own processes call it as they end: the script starts none.
    "threading._shutdown": (
        "import threading; del threading._shutdown",
        ["threading._shutdown"],
        "no multiprocessing process",
    ),
    "atexit._run_exitfuncs": (
        "import atexit; del atexit._run_exitfuncs",
        ["atexit._run_exitfuncs"],
    ),
    # (POSIX only: no fork() to reinitialize locks after, and no multiprocessing
    # tracker to share on Windows; see POSIX_ONLY below.)
    "_at_fork_reinit": (
        NO_REINIT_LOCKS,
        ["threading.Lock._at_fork_reinit", "threading.RLock._at_fork_reinit"],
    ),
    "resource tracker _fd": (
        'without("multiprocessing.resource_tracker", _resource_tracker=types.SimpleNamespace())',
        ["multiprocessing.resource_tracker._resource_tracker._fd"],
    ),
    "multiprocessing.util logging": (
        'without("multiprocessing.util", "_log_to_stderr", "_logger")',
        ["multiprocessing.util._log_to_stderr", "multiprocessing.util._logger"],
    ),
    "multiprocessing.context._concrete_contexts": (
        'without("multiprocessing.context", "_concrete_contexts")',
        ["multiprocessing.context._concrete_contexts"],
    ),
    # multiprocessing pickles a process's authentication key with their help.
    "multiprocessing.context spawning popen": (
        'without("multiprocessing.context", "get_spawning_popen", "set_spawning_popen")',
        [
            "multiprocessing.context.get_spawning_popen",
            "multiprocessing.context.set_spawning_popen",
        ],
        "no multiprocessing process",
    ),
    "ForkingPickler._extra_reducers": (
        'without("multiprocessing.reduction", ForkingPickler=type("ForkingPickler", (), {}))',
        ["multiprocessing.reduction.ForkingPickler._extra_reducers"],
    ),
    "multiprocessing.spawn": (
        'without("multiprocessing.spawn", "get_preparation_data", "prepare")',
        ["multiprocessing.spawn.get_preparation_data", "multiprocessing.spawn.prepare"],
    ),
}

# Every path that reaches an internal: executors (the loky start method with an
# initializer, and one that imports __main__ in workers), the reusable executor, a loky Process, a fork, the
# multiprocessing resource tracker and multiprocessing's logging in use, worker exits
# and interpreter exit.
SCRIPT = """
import logging
import multiprocessing
import os
import sys

import loky
from loky import ProcessPoolExecutor, get_reusable_executor
from loky.backend import get_context

import helpers

if __name__ == "__main__":
    multiprocessing.log_to_stderr(logging.ERROR)
    print("missing:", loky._cpython.missing())
    with ProcessPoolExecutor(2, initializer=helpers.square, initargs=(1,)) as executor:
        print(executor.submit(helpers.square, 3).result(timeout=60))
        print(list(executor.map(helpers.square, range(4))))
    with ProcessPoolExecutor(max_workers=1, context="loky_init_main") as executor:
        print(executor.submit(helpers.square, 4).result(timeout=60))
    executor = get_reusable_executor(max_workers=1)
    print(executor.submit(helpers.square, 5).result(timeout=60))
    if sys.argv[1:] != ["no multiprocessing process"]:
        process = get_context("loky").Process(target=helpers.square, args=(6,))
        process.start()
        process.join(60)
        print("process:", process.exitcode)
    if hasattr(os, "fork"):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        print("fork:", os.waitpid(pid, 0)[1])
    print(executor.submit(helpers.square, 7).result(timeout=60))
    executor.shutdown()
"""


POSIX_ONLY = {
    "_at_fork_reinit": "locks are reinitialized after fork(), which Windows does not have",
    "resource tracker _fd": "multiprocessing's tracker is shared on POSIX only",
}


@pytest.mark.parametrize(
    "internal",
    [
        pytest.param(name, marks=pytest.mark.posix_only(POSIX_ONLY[name]))
        if name in POSIX_ONLY
        else name
        for name in TAKE_AWAY
    ],
)
def test_the_package_works_with_each_internal_taken_away(tmp_path, internal):
    code, expected_missing, *options = TAKE_AWAY[internal]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PRELUDE + textwrap.dedent(code) + "\n")
    tests = os.path.dirname(helpers.__file__)
    result = helpers.run_script(
        tmp_path,
        SCRIPT,
        env={"PYTHONPATH": os.pathsep.join([str(site), tests])},
        args=options,
    )
    assert result.returncode == 0, result.stderr
    expected = [f"missing: {expected_missing}", "9", "[0, 1, 4, 9]", "16", "25"]
    expected += [] if options else ["process: 0"]
    expected += ["fork: 0"] if hasattr(os, "fork") else []
    assert result.stdout.splitlines() == [*expected, "49"], result.stderr
    # No error from the package's own code, in any process (the standard library may
    # complain of what was taken from it).
    assert f"{os.sep}loky{os.sep}" not in result.stderr, result.stderr
