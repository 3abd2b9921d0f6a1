"""What joblib needs from this package beyond the executors (issue 5): the switch that
makes ``joblib.externals.loky`` this package, the resource tracker, the multiprocessing
contexts, the start methods the executors accept, and the backend utilities.

Anything that starts a resource tracker runs in a subprocess: the tracker lives as long
as the process that started it, and this test process must not keep one.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import loky
from loky.backend import context as loky_context

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(os.path.dirname(loky.__file__))


def run_python(code, env=None, timeout=60, cwd=None, check=True):
    """Run `code` in a fresh interpreter; return (stdout, stderr)."""
    full_env = dict(os.environ)
    full_env.pop("LOKY_JOBLIB", None)
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (PACKAGE_ROOT, HERE, full_env.get("PYTHONPATH")) if p
    )
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert done.returncode == 0, f"exit status {done.returncode}\n{done.stderr}"
    return done.stdout, done.stderr


needs_joblib = pytest.mark.skipif(
    __import__("importlib").util.find_spec("joblib") is None, reason="joblib not installed"
)


# -- the joblib switch -----------------------------------------------------------------


@needs_joblib
def test_use_with_joblib_aliases_every_module_to_the_same_object():
    out, err = run_python(
        """
        import sys, loky
        loky.use_with_joblib()
        import joblib
        import joblib.externals.loky as jl
        import joblib.externals.loky.backend.resource_tracker as jrt
        from joblib.externals.loky import process_executor as jpe
        import loky.backend.resource_tracker as rt
        import loky.process_executor as pe
        assert jl is loky and jrt is rt and jpe is pe
        assert sys.modules["joblib.externals.loky.process_executor"] is pe
        # The modules keep their own identity.
        assert rt.__name__ == rt.__spec__.name == "loky.backend.resource_tracker"
        # What joblib writes into a module is seen by this package.
        import joblib._memmapping_reducer as mr
        assert rt._CLEANUP_FUNCS["file"] is mr.unlink_file
        assert joblib.parallel.loky is loky
        print("ok")
        """
    )
    assert out.strip() == "ok" and err == ""


@needs_joblib
def test_use_with_joblib_after_joblib_is_imported_is_refused():
    out, err = run_python(
        """
        import joblib, loky
        try:
            loky.use_with_joblib()
        except RuntimeError as exc:
            print(exc)
        """
    )
    assert "already imported" in out and "before the first 'import joblib'" in out


@needs_joblib
def test_a_module_joblib_vendors_but_this_package_lacks_fails_clearly():
    out, _ = run_python(
        """
        import loky
        loky.use_with_joblib()
        try:
            import joblib.externals.loky.backend.no_such_module
        except ModuleNotFoundError as exc:
            print(exc)
        """
    )
    assert "redirected" in out and "loky.backend.no_such_module" in out


@pytest.mark.parametrize(
    "value, switched", [("1", True), ("yes", True), ("0", False), ("", False)]
)
def test_install_from_env_follows_the_variable(value, switched):
    out, _ = run_python(
        """
        import loky._joblib as s
        s.install_from_env()
        print(s.installed())
        """,
        env={"LOKY_JOBLIB": value},
    )
    assert out.strip() == str(switched)


@needs_joblib
def test_workers_and_nested_workers_follow_the_switch():
    out, err = run_python(
        """
        import loky
        loky.use_with_joblib()
        from joblib import Parallel, delayed

        def switched():
            import sys
            return sys.modules["joblib.externals.loky"] is sys.modules["loky"]

        def nested():
            from joblib import Parallel, delayed
            from loky import process_executor
            inner = Parallel(n_jobs=2)(delayed(switched)() for _ in range(2))
            return switched(), inner, process_executor._CURRENT_DEPTH

        print(Parallel(n_jobs=2)(delayed(nested)() for _ in range(2)))
        """,
        timeout=120,
    )
    assert out.strip() == str([(True, [True, True], 1)] * 2)
    assert err == ""


@needs_joblib
def test_environment_variable_switches_python_subprocesses(tmp_path):
    # What the loky_joblib.pth start-up hook does; emulated by a sitecustomize module
    # when the package is installed in editable mode (no .pth then).
    startup = tmp_path / "startup"
    startup.mkdir()
    (startup / "sitecustomize.py").write_text(
        "import loky._joblib\nloky._joblib.install_from_env()\n"
    )
    out, _ = run_python(
        """
        import subprocess, sys
        import joblib.externals.loky as jl, loky
        code = "import joblib.externals.loky as jl, loky; print(jl is loky)"
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        print(jl is loky, child.stdout.strip())
        """,
        env={"LOKY_JOBLIB": "1", "PYTHONPATH": f"{startup}{os.pathsep}{PACKAGE_ROOT}"},
    )
    assert out.strip() == "True True"


@needs_joblib
def test_the_start_up_hook_line_switches_joblib(tmp_path):
    from loky._joblib import PTH_LINE

    (tmp_path / "loky_joblib.pth").write_text(PTH_LINE)
    code = f"""
        import site, sys
        site.addsitedir({str(tmp_path)!r})   # what the interpreter does at start
        import joblib.externals.loky as jl, loky
        print(jl is loky)
        """
    assert run_python(code, env={"LOKY_JOBLIB": "1"})[0].strip() == "True"
    out, err = run_python(code)
    assert out.strip() == "False" and err == ""


def test_the_wheel_installs_the_start_up_hook():
    import sysconfig

    site_packages = sysconfig.get_paths()["purelib"]
    if not os.path.abspath(loky.__file__).startswith(os.path.abspath(site_packages)):
        pytest.skip("editable install: start-up hooks (.pth) are not installed then")
    from loky._joblib import PTH_LINE

    hook = os.path.join(site_packages, "loky_joblib.pth")
    assert os.path.exists(hook), (
        "the wheel did not install loky_joblib.pth: LOKY_JOBLIB=1 cannot take effect "
        "at interpreter start"
    )
    with open(hook) as f:
        assert f.read() == PTH_LINE


# -- the resource tracker --------------------------------------------------------------


def test_importing_the_tracker_starts_nothing():
    out, _ = run_python(
        """
        import sys, loky
        ex = loky.ProcessPoolExecutor(1)
        ex.submit(int, "3").result()
        # An executor alone does not need a tracker...
        print("loky.backend.resource_tracker" in sys.modules)
        # ...and importing the tracker module does not start it.
        import loky.backend.resource_tracker as rt
        print(rt._resource_tracker._fd)
        ex.shutdown()
        """
    )
    assert out.split() == ["False", "None"]


def test_tracker_counts_uses_and_deletes_at_zero(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"x")
    out, err = run_python(
        f"""
        import os, time, psutil
        from loky.backend import resource_tracker as rt
        path = {str(path)!r}

        def gone_within(seconds):
            deadline = time.monotonic() + seconds
            while os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            return not os.path.exists(path)

        rt.register(path, "file")
        rt.register(path, "file")
        rt.maybe_unlink(path, "file")
        # Still counted once: it must stay (a short look; a wrong deletion shows here
        # most of the time, and never makes the test fail wrongly).
        first = not gone_within(0.3)
        rt.maybe_unlink(path, "file")
        second = not gone_within(30)
        tracker = psutil.Process(rt._resource_tracker._pid)
        print(first, second, "resource_tracker" in " ".join(tracker.cmdline()))
        """
    )
    assert out.split() == ["True", "False", "True"]
    assert err == ""


def test_tracker_deletes_leftovers_at_the_end_files_before_folders(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    inside = folder / "array.mmap"
    inside.write_bytes(b"x")
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"x")
    _, err = run_python(
        f"""
        from loky.backend import resource_tracker as rt
        rt.VERBOSE = True
        rt.register({str(folder)!r}, "folder")
        rt.register({str(inside)!r}, "file")
        rt.register({str(kept)!r}, "file")
        rt.unregister({str(kept)!r}, "file")
        """
    )
    # The tracker outlives the process by a moment: wait for it.
    deadline = time.monotonic() + 10
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not folder.exists() and kept.exists()


def test_tracker_warns_about_leftovers_on_stderr(tmp_path):
    leaked = tmp_path / "leaked.bin"
    leaked.write_bytes(b"x")
    script = tmp_path / "leak.py"
    script.write_text(
        "from loky.backend import resource_tracker as rt\n"
        f"rt.register({str(leaked)!r}, 'file')\n"
    )
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    # communicate() returns once every holder of stderr exited, the tracker included.
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "resource_tracker" in done.stderr and "leaked.bin" in done.stderr
    assert not leaked.exists()


def test_tracker_orders_cleanup_files_then_folders(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    inside = folder / "a.bin"
    inside.write_bytes(b"x")
    script = tmp_path / "leak.py"
    script.write_text(
        "from loky.backend import resource_tracker as rt\n"
        "rt.VERBOSE = True\n"
        f"rt.register({str(folder)!r}, 'folder')\n"
        f"rt.register({str(inside)!r}, 'file')\n"
    )
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    deleted = [line for line in done.stderr.splitlines() if "deleted" in line]
    assert deleted == [f"loky resource_tracker: deleted file {inside}",
                       f"loky resource_tracker: deleted folder {folder}"], done.stderr


def test_workers_share_the_parents_tracker(tmp_path):
    path = tmp_path / "shared.bin"
    path.write_bytes(b"x")
    out, err = run_python(
        f"""
        import os, time, psutil, loky
        from loky.backend import resource_tracker as rt
        path = {str(path)!r}
        rt.register(path, "file")      # the parent's use
        rt.register(path, "file")      # the worker's use

        def pipe_id(fd):
            # The pipe's handle on Windows (inherited under the same value; the
            # descriptor over it is the worker's own).
            if os.name == "nt":
                import msvcrt
                return msvcrt.get_osfhandle(fd)
            return fd

        def worker_done(path):
            from loky.backend import resource_tracker as rt
            rt.maybe_unlink(path, "file")
            return pipe_id(rt._resource_tracker._fd), rt._resource_tracker._pid

        def gone_within(seconds):
            deadline = time.monotonic() + seconds
            while os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            return not os.path.exists(path)

        ex = loky.ProcessPoolExecutor(1)
        fd, pid = ex.submit(worker_done, path).result()
        # The parent's use is still counted: the file stays (a short look).
        after_worker = not gone_within(0.3)
        rt.maybe_unlink(path, "file")
        gone = gone_within(30)
        trackers = [p for p in psutil.process_iter(["cmdline"])
                    if "resource_tracker import main" in " ".join(p.info["cmdline"] or [])
                    and p.ppid() in (os.getpid(), *ex._worker_pids())]
        print(fd == pipe_id(rt._resource_tracker._fd), pid, after_worker, not gone, len(trackers))
        ex.shutdown()
        """
    )
    assert out.split() == ["True", "None", "True", "False", "1"]
    assert err == ""


def test_a_tracker_imported_before_the_settings_arrive_uses_the_inherited_pipe():
    # As in a child whose start-up code imports the tracker before loky applies the
    # parent's settings: its messages still go to the parent's tracker.
    out, err = run_python(
        """
        import os
        from loky.backend import resource_tracker as rt
        from loky import _inherit

        read_end, write_end = os.pipe()
        inherited = write_end
        if os.name == "nt":  # children are handed the pipe's handle there
            import msvcrt
            os.set_inheritable(write_end, True)
            inherited = msvcrt.get_osfhandle(write_end)
        _inherit.apply({"tracker_fd": inherited})
        rt.register("/no/such/file", "file")
        os.set_blocking(read_end, False)
        print(b"REGISTER" in os.read(read_end, 4096), rt._resource_tracker._pid)
        """
    )
    assert out.split() == ["True", "None"]  # sent there; no tracker of its own
    assert err == ""


def test_tracker_is_silent_in_normal_operation(tmp_path):
    _, err = run_python(
        f"""
        import os
        from loky.backend import resource_tracker as rt
        folder = {str(tmp_path / "d")!r}
        os.mkdir(folder)
        rt.register(folder, "folder")
        for i in range(50):
            name = os.path.join(folder, str(i))
            open(name, "w").close()
            rt.register(name, "file")
            rt.maybe_unlink(name, "file")
            rt.maybe_unlink(name, "file")   # already gone: not an error
        rt.unregister(folder, "folder")
        """
    )
    assert err == ""


def test_tracker_rejects_unknown_resource_types():
    out, _ = run_python(
        """
        from loky.backend import resource_tracker as rt
        try:
            rt.register("x", "bogus")
        except ValueError as exc:
            print(exc)
        print(rt._resource_tracker._fd)
        """
    )
    assert "unknown resource type 'bogus'" in out and out.split()[-1] == "None"
    out, _ = run_python(
        """
        from loky.backend import resource_tracker as rt
        print(sorted(rt._CLEANUP_FUNCS))
        """
    )
    assert out.strip() == str(["file", "folder", "noop", "semlock"])


def test_a_killed_tracker_is_replaced_with_a_warning(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    out, err = run_python(
        f"""
        import os, signal, time, psutil
        from loky.backend import resource_tracker as rt
        path = {str(path)!r}
        rt.ensure_running()
        first = rt._resource_tracker._pid
        if os.name == "nt":
            rt._resource_tracker._process.kill()
            rt._resource_tracker._process.wait(30)
        else:
            os.kill(first, signal.SIGKILL)
            # Wait until it is dead (a zombie: reaping it is the tracker client's
            # business).
            deadline = time.monotonic() + 30
            while psutil.Process(first).status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline, "the tracker does not die"
                time.sleep(0.01)
        rt.register(path, "file")
        rt.maybe_unlink(path, "file")
        deadline = time.monotonic() + 30
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        print(first != rt._resource_tracker._pid, os.path.exists(path))
        """
    )
    assert out.split() == ["True", "False"]
    assert "resource_tracker: process died unexpectedly" in err


# -- multiprocessing contexts ----------------------------------------------------------


def test_importing_loky_backend_does_not_set_the_start_method():
    out, _ = run_python(
        """
        import multiprocessing as mp
        import loky.backend
        print(mp.get_start_method(allow_none=True))
        mp.set_start_method("loky")
        print(mp.get_start_method(), type(mp.get_context()).__name__)
        """
    )
    assert out.split() == ["None", "loky", "LokyContext"]


@pytest.mark.posix_only("multiprocessing's 'forkserver' start method")
def test_multiprocessings_forkserver_default_leaves_lokys_start_method_alone():
    # From CPython 3.14 multiprocessing's default on Linux is "forkserver": loky's own
    # start method is still unset, its default context still "loky".
    out, _ = run_python(
        """
        import multiprocessing as mp
        mp.set_start_method("forkserver")
        from loky import ProcessPoolExecutor
        from loky.backend import context
        print(context.get_start_method(), context.get_context().get_start_method())
        with ProcessPoolExecutor(max_workers=1) as executor:
            print(executor.submit(pow, 2, 5).result(timeout=60))
        print(mp.get_start_method())
        """
    )
    assert out.split() == ["None", "loky", "32", "forkserver"]


def test_context_module_api():
    expected = ["loky", "loky_init_main", "spawn"]
    expected += [] if sys.platform == "win32" else ["forkserver"]  # a POSIX name
    assert loky_context.START_METHODS == expected
    assert loky.backend.get_context().get_start_method() == "loky"
    assert loky_context.get_context("loky_init_main").get_start_method() == "loky_init_main"
    assert loky_context.cpu_count() >= 1
    with pytest.raises(ValueError, match="Unknown context"):
        loky_context.get_context("nope")
    assert loky_context.get_start_method() is None
    try:
        loky_context.set_start_method("spawn")
        assert loky_context.get_start_method() == "spawn"
        assert loky_context.get_context().get_start_method() == "spawn"
        with pytest.raises(RuntimeError):
            loky_context.set_start_method("loky")
    finally:
        loky_context.set_start_method(None, force=True)
    with pytest.raises(ValueError):
        loky_context.set_start_method("fork")


def test_backend_queues_are_made_by_a_context():
    from loky.backend.queues import Queue, SimpleQueue

    # As with multiprocessing's queues, the context hands itself over; without one, a
    # clear error instead of multiprocessing's AttributeError on None.
    for kind in (Queue, SimpleQueue):
        with pytest.raises(TypeError, match=rf"{kind.__name__}\(\) needs ctx"):
            kind()
    # In a subprocess: a queue's lock starts multiprocessing's resource tracker.
    out, err = run_python(
        """
        from loky.backend import get_context
        from loky.backend.queues import Queue, SimpleQueue

        ctx = get_context("loky")
        for queue in (ctx.Queue(), ctx.SimpleQueue(), Queue(ctx=ctx), SimpleQueue(ctx=ctx)):
            queue.put(lambda: 42)  # loky's pickler: a lambda travels
            print(queue.get()())
        """
    )
    assert out.split() == ["42"] * 4
    assert err == ""


def test_loky_process_is_a_fresh_interpreter_with_env_queues_and_locks():
    # In a subprocess: multiprocessing's locks start its own resource tracker.
    out, err = run_python(
        """
        import os
        from loky.backend import get_context

        def put_env(queue, lock, name):
            with lock:
                queue.put((os.environ.get(name), os.getppid()))

        ctx = get_context("loky")
        queue, lock = ctx.Queue(), ctx.Lock()
        process = ctx.Process(target=put_env, args=(queue, lock, "LOKY_TEST_VAR"),
                              env={"LOKY_TEST_VAR": "set"})
        with lock:
            process.start()
        value, parent = queue.get(timeout=30)
        process.join(timeout=30)
        print(value, parent == os.getpid(), process.exitcode)
        process.close()
        """
    )
    assert out.split() == ["set", "True", "0"]
    assert err == ""


def test_multiprocessing_pool_and_manager_run_on_the_loky_context():
    out, err = run_python(
        """
        import multiprocessing as mp, multiprocessing.managers
        import loky.backend

        ctx = mp.get_context("loky")
        with ctx.Pool(2) as pool:
            print(pool.map(abs, [-1, -2, -3]))
        manager = multiprocessing.managers.SyncManager(ctx=ctx)
        manager.start()
        shared = manager.dict()
        shared["a"] = 1
        print(dict(shared))
        manager.shutdown()
        """
    )
    assert out.splitlines() == ["[1, 2, 3]", "{'a': 1}"]
    assert err == ""


def test_loky_process_runs_lambdas_and_reports_exit_codes():
    from multiprocessing.connection import wait

    ctx = loky_context.get_context("loky")
    process = ctx.Process(target=lambda: os._exit(7))
    process.start()
    assert wait([process.sentinel], timeout=30)
    process.join()
    assert process.exitcode == 7
    sleeper = ctx.Process(target=time.sleep, args=(60,))
    sleeper.start()
    assert sleeper.is_alive()
    sleeper.terminate()
    sleeper.join(timeout=30)
    assert sleeper.exitcode == -signal.SIGTERM


def _start_grandchild_and_exit(connection):
    # close_fds=False: the grandchild inherits every descriptor this process may pass.
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                  close_fds=False)
    connection.send(grandchild.pid)


def test_loky_process_sentinel_is_its_own_exit_not_its_descendants():
    # The sentinel is the child's pidfd: a grandchild that inherited the child's
    # descriptors does not keep it unreadable after the child exited. (Without pidfds
    # it is a pipe the child holds, as with multiprocessing, and the grandchild would.)
    from multiprocessing.connection import wait

    from loky import _core

    # (On Windows it is the child's process handle, which no grandchild holds.)
    import psutil

    ctx = loky_context.get_context("loky")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_start_grandchild_and_exit, args=(sender,))
    process.start()
    grandchild = receiver.recv()
    try:
        pidfd = dict(_core.facilities()).get("pidfd") == "fast"  # as the start found it
        if sys.platform != "win32" and not pidfd:
            pytest.skip("no pidfds here: the sentinel is a pipe")
        assert wait([process.sentinel], timeout=30)
        process.join(timeout=30)
        assert process.exitcode == 0
        assert psutil.pid_exists(grandchild)  # still running
    finally:
        os.kill(grandchild, getattr(signal, "SIGKILL", signal.SIGTERM))
        process.join(timeout=30)
    sender.close()
    receiver.close()


@pytest.mark.posix_only("a child's exit code is collected with waitpid")
def test_loky_process_exit_code_is_never_lost_to_a_concurrent_poll(monkeypatch):
    # multiprocessing's start() polls every child of the process: a poll in another
    # thread that comes while one thread has reaped the child but not stored its exit
    # code yet must still give the exit code, not None.
    import threading
    from multiprocessing.connection import wait

    from loky.backend import popen_loky_posix

    ctx = loky_context.get_context("loky")
    process = ctx.Process(target=os._exit, args=(3,))
    process.start()
    assert wait([process.sentinel], timeout=30)  # exited, not reaped yet
    reaped, second_called = threading.Event(), threading.Event()
    real_waitpid = os.waitpid

    def waitpid_pausing_after_the_reap(pid, flags):
        if reaped.is_set():
            second_called.set()
        result = real_waitpid(pid, flags)
        if result[0] == pid and not reaped.is_set():
            reaped.set()
            second_called.wait(timeout=1)  # let a concurrent poll in, if it can
        return result

    monkeypatch.setattr(popen_loky_posix.os, "waitpid", waitpid_pausing_after_the_reap)
    codes = []

    def poll_once_reaped():
        reaped.wait(timeout=30)
        codes.append(process._popen.poll())

    other = threading.Thread(target=poll_once_reaped)
    other.start()
    codes.append(process._popen.poll(0))
    other.join(timeout=30)
    monkeypatch.undo()
    assert codes == [3, 3]
    process.join(timeout=30)
    assert process.exitcode == 3


def _mp_main_marker():
    main = sys.modules.get("__mp_main__")
    return getattr(main, "MARKER", None)


MAIN_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
import loky
from test_compat_joblib import _mp_main_marker

MARKER = "imported as " + __name__

if __name__ == "__main__":
    {body}
"""


@pytest.mark.parametrize(
    "context, expected",
    [("loky", None),
     pytest.param("forkserver", None,
                  marks=pytest.mark.posix_only("the 'forkserver' start method")),
     ("spawn", "imported as __mp_main__"),
     ("loky_init_main", "imported as __mp_main__")],
)
def test_executor_start_methods_and_main_module(tmp_path, context, expected):
    script = tmp_path / "main_script.py"
    script.write_text(MAIN_SCRIPT.format(here=HERE, body=(
        f"ex = loky.ProcessPoolExecutor(2, context={context!r})\n"
        "    print(ex.submit(_mp_main_marker).result())\n"
        "    ex.shutdown()"
    )))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(expected)


def test_loky_init_main_process_imports_main(tmp_path):
    script = tmp_path / "main_script.py"
    script.write_text(MAIN_SCRIPT.format(here=HERE, body=(
        "from loky.backend import get_context\n"
        "    ctx = get_context('loky_init_main')\n"
        "    q = ctx.SimpleQueue()\n"
        "    p = ctx.Process(target=lambda q: q.put(_mp_main_marker()), args=(q,))\n"
        "    p.start(); print(q.get()); p.join()"
    )))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported as __mp_main__"


def test_executor_context_accepts_names_and_context_objects(executor_factory):
    import multiprocessing

    ex = executor_factory(1, context=loky_context.get_context("loky_init_main"))
    assert ex.submit(int, "5").result() == 5
    with pytest.raises(ValueError, match="Unknown start method"):
        loky.ProcessPoolExecutor(1, context="threads")
    if sys.platform == "win32":
        # No 'fork' there at all (not even in multiprocessing): refused, saying so.
        for make in (loky.ProcessPoolExecutor, loky.get_reusable_executor):
            with pytest.raises(ValueError, match="'fork' start method does not exist"):
                make(1, context="fork")
        return
    with pytest.raises(ValueError, match="'fork' start method"):
        loky.ProcessPoolExecutor(1, context=multiprocessing.get_context("fork"))
    with pytest.warns(UserWarning, match="'fork' context"):
        with pytest.raises(ValueError, match="'fork' start method"):
            loky.ProcessPoolExecutor(1, context="fork")
    with pytest.raises(ValueError, match="Unknown start method"):
        loky.ProcessPoolExecutor(1, context="threads")
    with pytest.warns(UserWarning, match="'fork' context"):
        with pytest.raises(ValueError, match="'fork' start method"):
            loky.get_reusable_executor(1, context="fork")


def _multiprocessing_identity():
    from multiprocessing import process

    current = process.current_process()
    return bytes(current.authkey), current.name, os.getpid()


def test_executor_workers_get_a_multiprocessing_identity_when_they_need_one(
    executor_factory,
):
    import multiprocessing

    # A bare worker does not import multiprocessing (in a fresh interpreter: one that
    # has used multiprocessing's resource tracker hands it down, and its workers
    # import multiprocessing to use it)...
    out, _ = run_python(
        """
        import loky
        from helpers import module_loaded

        with loky.ProcessPoolExecutor(1) as ex:
            print(ex.submit(module_loaded, "multiprocessing").result())
        """
    )
    assert out.strip() == "False"
    ex = executor_factory(1)
    # ...but once a task does, the worker has its parent's authentication key (so that
    # manager proxies work) and a name of its own.
    authkey, name, pid = ex.submit(_multiprocessing_identity).result()
    assert authkey == bytes(multiprocessing.current_process().authkey)
    assert name == f"LokyProcess-{pid}"


def test_multiprocessing_logging_reaches_the_workers():
    _, err = run_python(
        """
        import multiprocessing.util, loky
        multiprocessing.util.log_to_stderr(10)
        ex = loky.ProcessPoolExecutor(1)
        ex.submit(int, "1").result()
        ex.shutdown()
        """
    )
    assert "[INFO/LokyProcess-" in err and "process shutting down" in err


# -- utilities -------------------------------------------------------------------------


@pytest.mark.parametrize("use_psutil", [True, False])
def test_kill_process_tree(use_psutil):
    import psutil

    from loky.backend.utils import kill_process_tree

    code = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while not psutil.Process(process.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = psutil.Process(process.pid).children()[0]
    kill_process_tree(process, use_psutil=use_psutil)
    # (subprocess ends a Windows process with exit code 1.)
    assert process.returncode == (1 if sys.platform == "win32" else -signal.SIGKILL)
    child.wait(timeout=10)
    assert not child.is_running()


def test_backend_reduction_api():
    from loky.backend import reduction

    for name in ("register", "set_loky_pickler", "get_loky_pickler",
                 "get_loky_pickler_name", "dumps"):
        assert callable(getattr(reduction, name))
    assert reduction.get_loky_pickler_name() == "cloudpickle"
    from loky.cloudpickle_wrapper import wrap_non_picklable_objects

    assert wrap_non_picklable_objects(len)("abc") == 3


# -- joblib on top ---------------------------------------------------------------------


@needs_joblib
def test_joblib_memmapping_creates_shares_and_deletes_temporary_files(tmp_path):
    pytest.importorskip("numpy")
    out, err = run_python(
        f"""
        import os
        import loky
        loky.use_with_joblib()
        import numpy as np
        from joblib import Parallel, delayed

        def describe(a):
            import numpy as np
            return type(a).__name__, os.path.dirname(getattr(a, "filename", "") or "")

        data = np.arange(1_000_000, dtype=np.float64)
        temp = {str(tmp_path)!r}
        with Parallel(n_jobs=2, max_nbytes="1K", temp_folder=temp) as parallel:
            seen = parallel(delayed(describe)(data) for _ in range(4))
            folders = os.listdir(temp)
            files = [f for d in folders for f in os.listdir(os.path.join(temp, d))]
        print(sorted(set(seen)), len(folders), len(files) >= 1)
        """,
        timeout=120,
    )
    kinds, _, rest = out.partition("]")
    assert "'memmap'" in kinds and rest.split() == ["1", "True"], out
    assert err == ""
    # Deleted once the Parallel call (or, at the latest, the process) ended.
    assert os.listdir(tmp_path) == []
