"""What code written for loky and the standard library reads from an executor: the
workers in `_processes`, the condition in `_flags`; and multiprocessing's locks,
events and queues handed to the workers through `initargs`."""

import gc
import multiprocessing
import os
import signal
import weakref

import pytest

import loky
from loky.backend import get_context

import helpers
import lifecycle_tasks as tasks

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(
    "context",
    [
        "loky",
        "spawn",
        pytest.param(
            "forkserver", marks=pytest.mark.posix_only("multiprocessing's 'forkserver' context")
        ),
    ],
)
def test_events_queues_and_locks_reach_the_workers_through_initargs(executor_factory, context):
    ctx = get_context(context) if context == "loky" else multiprocessing.get_context(context)
    event, queue, lock = ctx.Event(), ctx.Queue(), ctx.Lock()
    executor = executor_factory(
        max_workers=2, initializer=_keep_shared_positional, initargs=(event, queue, lock)
    )
    waiting = [executor.submit(tasks.put_pid_then_wait_event) for _ in range(2)]
    pids = {queue.get(timeout=30), queue.get(timeout=30)}
    # Both workers wait on the parent's event: the same object, not a copy.
    assert not any(f.done() for f in waiting)
    event.set()
    assert [f.result(timeout=30) for f in waiting] == [True, True]
    assert pids == set(executor._processes)
    with lock:  # held here: the workers' lock is this lock
        blocked = executor.submit(tasks.under_shared_lock)
        with pytest.raises(TimeoutError):
            blocked.result(timeout=0.5)
    assert blocked.result(timeout=30) in pids


@pytest.mark.posix_only("POSIX named semaphores, listed in /dev/shm")
def test_loky_context_semaphores_are_named_after_the_process_that_made_them():
    # As loky names them (/dev/shm/sem.loky-<pid>-...): a semaphore left behind tells
    # who made it. Conditions, events and barriers are made of such semaphores.
    ctx = get_context("loky")
    prefix = f"/loky-{os.getpid()}-"
    made = [ctx.Lock(), ctx.RLock(), ctx.Semaphore(2), ctx.BoundedSemaphore(2)]
    assert all(m._semlock.name.startswith(prefix) for m in made), made
    event = ctx.Event()
    assert event._cond._lock._semlock.name.startswith(prefix)
    assert event._flag._semlock.name.startswith(prefix)
    names = [m._semlock.name for m in made]
    assert all(os.path.exists(f"/dev/shm/sem.{n[1:]}") for n in names)
    del made, event
    gc.collect()  # the names are unlinked with their last object
    assert not any(os.path.exists(f"/dev/shm/sem.{n[1:]}") for n in names)


def _keep_shared_positional(event, queue, lock):
    tasks.keep_shared(event=event, queue=queue, lock=lock)


def _descriptors_open_on(fd):
    """How many descriptors of this process refer to what `fd` refers to."""
    target = os.readlink(f"/proc/self/fd/{fd}")
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == target
        except OSError:
            pass
    return count


@pytest.mark.posix_only("identifies descriptors through /proc/self/fd")
def test_the_descriptors_handed_down_are_closed_with_the_pool(executor_factory):
    queue = multiprocessing.get_context("spawn").Queue()
    # Both ends of the queue's pipe name the same pipe: two descriptors.
    pipe = queue._reader.fileno()
    assert _descriptors_open_on(pipe) == 2
    executor = executor_factory(
        max_workers=1, initializer=_keep_shared_positional, initargs=(None, queue, None)
    )
    assert executor.submit(tasks.square, 3).result(timeout=30) == 9
    # The pool holds a duplicate of each end for the workers it may still start...
    assert _descriptors_open_on(pipe) == 4
    executor.shutdown(wait=True)
    # ...and closes them with the pool.
    assert _descriptors_open_on(pipe) == 2


def test_processes_lists_the_live_workers_and_follows_their_exits(executor_factory):
    executor = executor_factory(max_workers=2)
    assert executor._processes == {}
    pids = {pid for _, pid in executor.map(tasks.square_and_pid, range(20))}
    processes = executor._processes
    assert set(processes) >= pids and len(processes) == 2
    # A worker that answered (the other one may still be starting).
    victim = processes[min(pids)]
    assert victim.pid == min(pids) and victim.is_alive() and victim.exitcode is None
    victim.terminate()
    victim.join(timeout=30)
    assert victim.exitcode == -signal.SIGTERM and not victim.is_alive()
    # A replacement starts; the survivor keeps its object.
    helpers.wait_until(lambda: len(executor._processes) == 2, timeout=30)
    now = executor._processes
    assert victim.pid not in now
    (survivor,) = set(processes) - {victim.pid}
    assert now[survivor] is processes[survivor]
    executor.shutdown(wait=True)
    assert executor._processes == {}
    processes[survivor].join(timeout=30)
    assert processes[survivor].exitcode == 0


def test_flags_follow_the_executor(executor_factory):
    executor = executor_factory(max_workers=1)
    flags = executor._flags
    assert (flags.shutdown, flags.broken, flags.kill_workers) == (False, None, False)
    executor.submit(tasks.square, 2).result(timeout=30)
    # A worker's death does not break the pool here.
    os.kill(next(iter(executor._processes)), helpers.KILL_SIGNAL)
    assert executor.submit(tasks.square, 3).result(timeout=30) == 9
    assert flags.broken is None
    executor.shutdown(wait=True, kill_workers=True)
    assert flags.shutdown and flags.kill_workers and flags.broken is None


def test_flags_see_an_unreferenced_executor_shut_down():
    executor = loky.ProcessPoolExecutor(max_workers=1)
    assert executor.submit(tasks.square, 2).result(timeout=30) == 4
    flags, processes = executor._flags, executor._processes
    gone = weakref.ref(executor)
    del executor
    gc.collect()
    assert gone() is None
    assert flags.shutdown
    for process in processes.values():
        process.join(timeout=30)
        assert process.exitcode == 0


def test_flags_report_a_broken_pool(executor_factory):
    executor = executor_factory(max_workers=1, initializer=tasks.raise_in_initializer)
    with pytest.raises(loky.BrokenProcessPool):
        executor.submit(tasks.square, 2).result(timeout=30)
    assert "initializer" in executor._flags.broken


def test_workers_profile_themselves_while_viztracer_runs_here(executor_factory, tmp_path):
    viztracer = pytest.importorskip("viztracer")
    with executor_factory(max_workers=1) as executor:
        assert executor.submit(tasks.viztracer_active).result(timeout=30) is False
    tracer = viztracer.VizTracer(output_file=str(tmp_path / "trace.json"), verbose=0)
    tracer.start()
    try:
        with executor_factory(max_workers=1) as executor:
            assert executor.submit(tasks.viztracer_active).result(timeout=30) is True
    finally:
        tracer.stop()
    with executor_factory(max_workers=1) as executor:
        assert executor.submit(tasks.viztracer_active).result(timeout=30) is False


def test_workers_share_multiprocessing_resource_tracker(tmp_path):
    # A shared memory segment made here and unlinked by a worker is not reported as
    # leaked at exit: the workers report to this process's multiprocessing tracker.
    result = helpers.run_script(
        tmp_path,
        """
        from multiprocessing.shared_memory import SharedMemory
        from loky import ProcessPoolExecutor

        if __name__ == "__main__":
            with ProcessPoolExecutor(max_workers=1) as executor:
                segment = SharedMemory(create=True, size=16)
                executor.submit(segment.unlink).result(timeout=30)
                segment.close()
            print("done")
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["done"]
    assert result.stderr == ""
