"""Control of running work: per-task timeouts, ending a running task, pool-wide ends,
bounded map, progress, worker statistics."""

import concurrent.futures
import itertools
import os
import time

import pytest

from loky import ProcessPoolExecutor
from loky.process_executor import ShutdownExecutorError

import helpers

pytestmark = pytest.mark.timeout(120)


def test_a_timed_out_task_fails_alone_among_a_thousand(executor_factory):
    executor = executor_factory(max_workers=2)
    slow = executor.schedule(helpers.sleep_and_return, (60, "never"), timeout=1.0)
    quick = [executor.schedule(helpers.square, (i,)) for i in range(999)]
    assert [f.result(timeout=60) for f in quick] == [i * i for i in range(999)]
    with pytest.raises(TimeoutError) as info:
        slow.result(timeout=60)
    message = str(info.value)
    assert "timeout of 1.0 s" in message and "worker" in message
    # The pool healed: both workers answer.
    assert len(helpers.pids_of_all_workers(executor, 2)) == 2


def test_a_timeout_fires_on_a_pool_that_was_asleep(executor_factory):
    # Nothing else happens in the pool: only the task's deadline can wake the manager.
    executor = executor_factory(max_workers=1)
    for _ in range(5):
        assert executor.submit(helpers.square, 3).result(timeout=60) == 9
        executor.worker_stats()  # the manager answers, then sleeps with its worker idle
        slow = executor.schedule(helpers.sleep_and_return, (60, "never"), timeout=0.2)
        # (result()'s own timeout raises TimeoutError too, without that message)
        with pytest.raises(TimeoutError, match="timeout of 0.2 s"):
            slow.result(timeout=30)


def test_the_timeout_counts_from_the_start_of_the_task(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    blocker = executor.submit(helpers.wait_for_path, gate, "first", 60)
    # Queued behind the blocker for longer than its own limit: still runs in full.
    queued = executor.schedule(helpers.sleep_and_return, (0.1, "second"), timeout=2)
    time.sleep(3)
    gate.touch()
    assert blocker.result(timeout=60) == "first"
    assert queued.result(timeout=60) == "second"


def test_a_timed_out_tasks_processes_end_with_it(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    pid_file = tmp_path / "pids"
    future = executor.schedule(helpers.start_grandchild_and_sleep, (str(pid_file),), timeout=2)
    worker, grandchild = map(int, helpers.wait_for_lines(pid_file, 1)[0].split())
    with pytest.raises(TimeoutError, match="timeout of"):
        future.result(timeout=60)
    assert helpers.wait_pids_gone([worker, grandchild], timeout=10) == []


def test_terminate_a_queued_task_takes_it_back(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    blocker = executor.submit(helpers.wait_for_path, gate, "blocked", 60)
    queued = executor.submit(helpers.append_line, tmp_path / "ran", "x")
    assert queued.terminate() is True
    assert queued.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(timeout=5)
    gate.touch()
    assert blocker.result(timeout=60) == "blocked"
    assert executor.submit(helpers.square, 3).result(timeout=60) == 9
    assert not (tmp_path / "ran").exists(), "a terminated queued task never runs"


def test_terminate_a_running_task_ends_its_worker_only(executor_factory, tmp_path):
    executor = executor_factory(max_workers=2)
    pid_file = tmp_path / "running"
    running = executor.submit(helpers.pid_then_sleep, pid_file, 60)
    worker = helpers.wait_for_pid(pid_file)
    other = executor.submit(helpers.sleep_and_return, 1, "other")
    assert running.terminate() is True
    assert running.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        running.result(timeout=5)
    assert helpers.wait_pids_gone([worker], timeout=10) == []
    assert other.result(timeout=60) == "other"
    pids = helpers.pids_of_all_workers(executor, 2)
    assert len(pids) == 2 and worker not in pids, "a replacement started"


def test_terminate_a_finished_task_returns_false(executor_factory):
    executor = executor_factory(max_workers=1)
    future = executor.submit(helpers.square, 4)
    assert future.result(timeout=60) == 16
    assert future.terminate() is False
    assert future.result() == 16


def test_cancel_keeps_its_standard_meaning(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    running = executor.submit(helpers.check_in_then_wait_for_path, tmp_path / "in", gate, "ran")
    helpers.wait_for_lines(tmp_path / "in", 1)
    assert running.cancel() is False  # never stops a running task
    gate.touch()
    assert running.result(timeout=60) == "ran"


def test_running_is_true_exactly_while_the_task_runs(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    first = executor.submit(helpers.check_in_then_wait_for_path, tmp_path / "in", gate, 1)
    second = executor.submit(helpers.square, 3)
    helpers.wait_for_lines(tmp_path / "in", 1)
    # The first runs (no cancel() was tried to learn it); the second waits its turn.
    assert first.running() and not first.done()
    assert not second.running()
    assert first.cancel() is False and first.running()
    gate.touch()
    assert first.result(timeout=60) == 1 and second.result(timeout=60) == 9
    assert not first.running() and not second.running()


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_pool_wide_ends_cancel_pending_futures(how, tmp_path):
    executor = ProcessPoolExecutor(max_workers=2)
    pid_file = tmp_path / "running"
    running = [executor.submit(helpers.pid_then_sleep, f"{pid_file}{i}", 60) for i in range(2)]
    workers = [helpers.wait_for_pid(f"{pid_file}{i}") for i in range(2)]
    queued = [executor.submit(helpers.square, i) for i in range(5)]
    started = time.monotonic()
    getattr(executor, how)()
    assert time.monotonic() - started < 10
    assert all(f.cancelled() for f in running + queued)
    assert helpers.wait_pids_gone(workers, timeout=10) == []
    with pytest.raises(ShutdownExecutorError):
        executor.submit(helpers.square, 1)


def test_shutdown_cancel_futures_cancels_what_did_not_start(executor_factory, tmp_path):
    executor = executor_factory(max_workers=1)
    gate = tmp_path / "gate"
    blocker = executor.submit(helpers.check_in_then_wait_for_path, tmp_path / "in", gate, "ran")
    queued = [executor.submit(helpers.square, i) for i in range(20)]
    helpers.wait_for_lines(tmp_path / "in", 1)
    executor.shutdown(wait=False, cancel_futures=True)
    gate.touch()
    executor.shutdown(wait=True)
    assert blocker.result() == "ran"
    assert all(f.cancelled() for f in queued)


def test_map_with_buffersize_streams_an_endless_input(executor_factory):
    executor = executor_factory(max_workers=2)
    results = executor.map(helpers.square, itertools.count(), buffersize=4)
    taken = []
    for value in results:
        taken.append(value)
        # Never more than `buffersize` tasks ahead of what was taken.
        assert len(executor._state.futures) <= 4
        if len(taken) == 100:
            break
    results.close()
    assert taken == [i * i for i in range(100)]


def test_map_with_buffersize_and_chunks(executor_factory):
    executor = executor_factory(max_workers=2)
    results = executor.map(helpers.add, range(1000), range(1000), chunksize=7, buffersize=3)
    assert list(results) == [2 * i for i in range(1000)]


def test_map_reports_progress_to_a_callable(executor_factory):
    executor = executor_factory(max_workers=2)
    seen = []
    out = list(executor.map(helpers.square, range(10), progress=lambda d, t: seen.append((d, t))))
    assert out == [i * i for i in range(10)]
    assert seen == [(i, 10) for i in range(1, 11)]
    seen.clear()
    list(executor.map(helpers.square, iter(range(3)), chunksize=2, progress=lambda *a: seen.append(a)))
    assert seen == [(2, None), (3, None)]


def test_map_progress_bar_with_tqdm(executor_factory, capsys):
    pytest.importorskip("tqdm")
    executor = executor_factory(max_workers=2)
    assert list(executor.map(helpers.square, range(25), progress=True)) == [
        i * i for i in range(25)
    ]
    err = capsys.readouterr().err
    assert "25/25" in err and "100%" in err


@pytest.mark.posix_only("multiprocessing's 'forkserver' start method")
def test_a_progress_bar_leaves_no_process_behind(tmp_path):
    # Under "forkserver" (multiprocessing's default from CPython 3.14 on Linux) tqdm's
    # usual lock starts multiprocessing's resource tracker, which outlives the pool.
    pytest.importorskip("tqdm")
    result = helpers.run_script(
        tmp_path,
        """
        import multiprocessing
        import time

        import psutil
        import tqdm.auto

        from loky import ProcessPoolExecutor

        if __name__ == "__main__":
            multiprocessing.set_start_method("forkserver")
            with ProcessPoolExecutor(max_workers=2) as executor:
                squares = executor.map(pow, range(25), [2] * 25, progress=True)
                assert list(squares) == [i * i for i in range(25)]
            deadline = time.monotonic() + 10
            while (left := psutil.Process().children()) and time.monotonic() < deadline:
                time.sleep(0.01)
            print("left:", [" ".join(p.cmdline()) for p in left])
            # The process's own bars still get tqdm's usual lock.
            print("tqdm's lock made:", hasattr(tqdm.auto.tqdm, "_lock"))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "25/25" in result.stderr
    assert result.stdout.splitlines() == ["left: []", "tqdm's lock made: False"]


def test_map_progress_bad_value(executor_factory):
    executor = executor_factory(max_workers=1)
    with pytest.raises(TypeError, match="progress must be True, False or a callable"):
        executor.map(helpers.square, range(3), progress="yes")


def test_worker_stats_show_what_each_worker_does(executor_factory, tmp_path):
    executor = executor_factory(max_workers=2)
    helpers.pids_of_all_workers(executor, 2)
    pid_file = tmp_path / "running"
    running = executor.submit(helpers.pid_then_sleep, pid_file, 60)
    busy_pid = helpers.wait_for_pid(pid_file)
    stats = {s.pid: s for s in executor.worker_stats()}
    assert set(stats) == set(executor._worker_pids())
    busy = stats[busy_pid]
    assert busy.state == "busy" and busy.task == "pid_then_sleep"
    assert busy.running_for >= 0 and busy.rss > 1 << 20
    idle = [s for s in stats.values() if s.pid != busy_pid]
    assert [s.state for s in idle] == ["idle"] and idle[0].task is None
    assert sum(s.tasks_done for s in stats.values()) >= 2
    running.terminate()


def test_schedule_checks_its_arguments(executor_factory):
    executor = executor_factory(max_workers=1)
    with pytest.raises(TypeError, match="timeout must be a number of seconds"):
        executor.schedule(helpers.square, (1,), timeout="soon")
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        executor.schedule(helpers.square, (1,), kwargs=[1])
    assert executor.schedule(helpers.add, (1,), {"b": 2}).result(timeout=60) == 3


def test_submit_keeps_its_standard_signature(executor_factory):
    executor = executor_factory(max_workers=1)
    # A keyword named `timeout` goes to the function, as with any executor.
    assert executor.submit(helpers.sleep_and_return, seconds=0, value="v").result(60) == "v"
    assert os.getpid() != executor.submit(os.getpid).result(timeout=60)


def test_the_standard_executor_api_of_this_python_is_all_here():
    # CPython 3.14 added map(buffersize=...) and terminate_workers()/kill_workers().
    import concurrent.futures
    import inspect

    standard = inspect.signature(concurrent.futures.Executor.map).parameters
    ours = inspect.signature(ProcessPoolExecutor.map).parameters
    for name, parameter in standard.items():
        assert name in ours, name
        assert (ours[name].kind, ours[name].default) == (parameter.kind, parameter.default)
    methods = [
        name
        for name in dir(concurrent.futures.ProcessPoolExecutor)
        if not name.startswith("_") and not hasattr(ProcessPoolExecutor, name)
    ]
    assert methods == []
