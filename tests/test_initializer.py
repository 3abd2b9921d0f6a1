"""Issue 2 and 3: the initializer runs once per worker; when it fails, the futures get
a clear error and the pool does not respawn workers forever."""

import os
import time

import pytest

import loky
from loky import get_reusable_executor
from loky.process_executor import BrokenProcessPool

import helpers

pytestmark = pytest.mark.timeout(60)


def chain_text(exc):
    parts = []
    while exc is not None and len(parts) < 10:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__
    return "\n".join(parts)


def submit_or_error(executor, fn, *args):
    """The error a task meets on a broken executor: raised by submit, or on its future."""
    try:
        future = executor.submit(fn, *args)
    except BrokenProcessPool as exc:
        return exc
    return future.exception(timeout=30)


def distinct_pids(path):
    return set(helpers.read_lines(path))


def test_initializer_runs_once_per_worker(executor_factory, tmp_path):
    path = tmp_path / "inits"
    executor = executor_factory(
        max_workers=2, initializer=helpers.append_line, initargs=(str(path), "init")
    )
    futures = [executor.submit(helpers.sleep_and_pid, 0.05) for _ in range(10)]
    pids = {f.result(timeout=30) for f in futures} | helpers.pids_of_all_workers(executor, 2)
    assert len(helpers.read_lines(path)) == len(pids) == 2


def test_initializer_runs_again_in_replacement_workers(executor_factory):
    executor = executor_factory(
        max_workers=1, initializer=helpers.set_initialized, initargs=("again",)
    )
    value, pid = executor.submit(helpers.get_initialized).result(timeout=30)
    assert value == "again"
    executor.submit(helpers.exit_with, 1).exception(timeout=30)
    value, new_pid = executor.submit(helpers.get_initialized).result(timeout=30)
    assert value == "again" and new_pid != pid


def test_failing_initializer_fails_futures_clearly(executor_factory):
    executor = executor_factory(
        max_workers=2,
        initializer=helpers.failing_initializer,
        initargs=("database unreachable",),
    )
    futures = [executor.submit(helpers.square, i) for i in range(5)]
    for future in futures:
        exc = future.exception(timeout=30)
        assert isinstance(exc, BrokenProcessPool), repr(exc)
        assert "initializer" in str(exc), str(exc)
        text = chain_text(exc)
        # The user's error and where it happened are in the chain.
        assert "database unreachable" in text, text
        assert "failing_initializer" in text, text
    # Later submissions meet the same clear error, at once.
    exc = submit_or_error(executor, helpers.square, 1)
    assert isinstance(exc, BrokenProcessPool) and "initializer" in str(exc)


@pytest.mark.parametrize(
    "initializer",
    [
        pytest.param(helpers.record_pid_then_fail, id="raises"),
        pytest.param(helpers.record_pid_then_sys_exit, id="sys-exit"),
        pytest.param(helpers.record_pid_then_segfault, id="segfaults"),
        pytest.param(helpers.record_pid_then_os_exit, id="os-exit"),
    ],
)
def test_failing_initializer_does_not_respawn_forever(executor_factory, tmp_path, initializer):
    path = tmp_path / "init-pids"
    executor = executor_factory(max_workers=2, initializer=initializer, initargs=(str(path),))
    futures = [executor.submit(helpers.square, i) for i in range(20)]
    for future in futures:
        exc = future.exception(timeout=30)
        assert isinstance(exc, BrokenProcessPool), repr(exc)
    # Workers that were already starting may still run the initializer; then the
    # broken pool stops them all.
    assert helpers.wait_until(lambda: executor._worker_pids() == [], timeout=10)
    first = distinct_pids(path)
    assert first
    # Let a respawn loop, if any, show itself.
    time.sleep(1.0)
    later = distinct_pids(path)
    assert later == first
    assert 1 <= len(later) <= 4, f"{len(later)} workers were started"
    exc = submit_or_error(executor, helpers.square, 1)
    assert isinstance(exc, BrokenProcessPool)
    assert distinct_pids(path) == later


def test_starting_worker_killed_from_outside_is_replaced_once(executor_factory, tmp_path):
    import signal

    path = tmp_path / "init-pids"
    executor = executor_factory(
        max_workers=2,
        initializer=helpers.record_pid_then_wait_unless_first,
        initargs=(str(path),),
    )
    assert executor.submit(helpers.square, 3).result(timeout=30) == 9
    # The second worker is held in its initializer: kill it before it is ready. A
    # worker of this pool started fine, so the death is not a start failure: replaced.
    assert helpers.wait_until(lambda: len(distinct_pids(path)) == 2, timeout=30)
    os.kill(int(helpers.read_lines(path)[1]), helpers.KILL_SIGNAL)
    assert helpers.wait_until(lambda: len(distinct_pids(path)) == 3, timeout=30)
    assert executor.submit(helpers.square, 4).result(timeout=30) == 16
    assert executor._flags.broken is None
    # Its replacement killed too, with no worker ready in between: the pool can no
    # longer start workers, and says so instead of respawning forever.
    os.kill(int(helpers.read_lines(path)[2]), helpers.KILL_SIGNAL)
    assert helpers.wait_until(lambda: executor._flags.broken is not None, timeout=30)
    exc = submit_or_error(executor, helpers.square, 1)
    assert isinstance(exc, BrokenProcessPool) and "before it was ready" in str(exc)
    assert len(distinct_pids(path)) == 3


@pytest.mark.parametrize(
    "initializer, status",
    [
        pytest.param(helpers.record_pid_then_fail, None, id="raises"),
        pytest.param(helpers.record_pid_then_sys_exit, None, id="sys-exit"),
        pytest.param(
            helpers.record_pid_then_segfault,
            helpers.SEGFAULT_STATUS,
            id="segfaults",
        ),
        pytest.param(
            helpers.record_pid_then_os_exit,
            "{EXIT(9)}",
            id="os-exit",
        ),
    ],
)
def test_initializer_failure_message_names_the_initializer(
    executor_factory, tmp_path, initializer, status
):
    executor = executor_factory(
        max_workers=1, initializer=initializer, initargs=(str(tmp_path / "p"),)
    )
    exc = executor.submit(helpers.square, 2).exception(timeout=30)
    assert isinstance(exc, BrokenProcessPool), repr(exc)
    if status is not None:
        assert status in str(exc)
    assert "initializer" in str(exc), str(exc)


def test_failing_initializer_error_names_the_initializer(executor_factory):
    executor = executor_factory(
        max_workers=1,
        initializer=helpers.failing_initializer,
        initargs=("bad config",),
    )
    exc = executor.submit(helpers.square, 2).exception(timeout=30)
    message = str(exc)
    assert "initializer" in message
    assert "RuntimeError" in message or "bad config" in message, message


def test_reusable_executor_recovers_from_failing_initializer():
    executor = get_reusable_executor(
        max_workers=2, initializer=helpers.failing_initializer, initargs=("nope",)
    )
    exc = executor.submit(helpers.square, 3).exception(timeout=30)
    assert isinstance(exc, BrokenProcessPool)
    # A new call with a working configuration gives a working executor.
    executor = get_reusable_executor(max_workers=2)
    assert executor.submit(helpers.square, 3).result(timeout=30) == 9
    executor.shutdown(wait=True)


@pytest.mark.timeout(90)
def test_interpreter_exit_with_a_broken_executor_does_not_hang(tmp_path):
    result = helpers.run_script(
        tmp_path,
        """
        from loky import ProcessPoolExecutor
        import helpers

        executor = ProcessPoolExecutor(max_workers=2, initializer=helpers.failing_initializer,
                                       initargs=("broken",))
        futures = [executor.submit(helpers.square, i) for i in range(10)]
        print(type(futures[0].exception(timeout=30)).__name__, flush=True)
        # No shutdown: the interpreter exits with the broken executor around.
        """,
        env={"PYTHONPATH": os.path.dirname(helpers.__file__)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "BrokenProcessPool"


def test_context_manager_with_failing_initializer_does_not_hang():
    start = time.monotonic()
    with loky.ProcessPoolExecutor(
        max_workers=2, initializer=helpers.failing_initializer, initargs=("x",)
    ) as executor:
        future = executor.submit(helpers.square, 1)
    assert isinstance(future.exception(timeout=1), BrokenProcessPool)
    # Generous bound: it must not hang, not be fast.
    assert time.monotonic() - start < 30


def _big_array():
    np = pytest.importorskip("numpy")
    return np.arange(1 << 18, dtype=np.int64)  # 2 MiB: above the shared-memory threshold


def test_large_initializer_arguments_are_shared_and_copy_on_write(executor_factory):
    """A large array handed to the initializer reaches each worker through shared
    memory; a worker's writes stay its own, as with forked workers."""
    array = _big_array()
    total = int(array.sum())
    executor = executor_factory(
        max_workers=1, initializer=helpers.set_initialized, initargs=(array,)
    )
    seen, owner, pid = executor.submit(helpers.write_in_initialized, 0, 1000).result(timeout=30)
    assert owner == "SharedSegment"
    assert seen == total + 1000
    # The same worker sees its own write; the parent's array is untouched.
    seen, _, same_pid = executor.submit(helpers.write_in_initialized, 1, 1001).result(
        timeout=30
    )
    assert same_pid == pid and seen == total + 1000 + 1001 - 1
    assert int(array.sum()) == total and array[0] == 0


def test_replacement_workers_map_the_initializer_arguments_afresh(executor_factory):
    """Replacements (forked by the template, or started again after a crash) get the
    arguments as they were, not a dead worker's writes."""
    array = _big_array()
    total = int(array.sum())
    executor = executor_factory(
        max_workers=1,
        max_tasks_per_child=1,
        initializer=helpers.set_initialized,
        initargs=(array,),
    )
    pids = set()
    for value in (5, 6, 7):
        seen, owner, pid = executor.submit(helpers.write_in_initialized, 0, value).result(
            timeout=30
        )
        assert (seen, owner) == (total + value, "SharedSegment")
        pids.add(pid)
    assert len(pids) == 3
    executor.submit(helpers.exit_with, 1).exception(timeout=30)
    seen, owner, _ = executor.submit(helpers.write_in_initialized, 0, 8).result(timeout=30)
    assert (seen, owner) == (total + 8, "SharedSegment")


def test_large_initializer_arguments_travel_in_band_without_shared_memory(
    executor_factory, monkeypatch
):
    """No segment to be had (out of descriptors or memory): the arguments travel inside
    the start message instead, and nothing fails."""
    from loky import _core

    def refuse(buffers):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_core, "write_lasting_segment", refuse)
    array = _big_array()
    executor = executor_factory(
        max_workers=1, initializer=helpers.set_initialized, initargs=(array,)
    )
    seen, owner, _ = executor.submit(helpers.write_in_initialized, 0, 3).result(timeout=30)
    assert seen == int(array.sum()) + 3 and owner != "SharedSegment"


@pytest.mark.posix_only("counts the descriptors in /proc/self/fd")
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_the_initializer_arguments_segment_is_closed_with_the_pool(executor_factory):
    before = set(os.listdir("/proc/self/fd"))
    executor = executor_factory(
        max_workers=1, initializer=helpers.set_initialized, initargs=(_big_array(),)
    )
    executor.submit(helpers.get_initialized).result(timeout=30)
    links = [os.readlink(f"/proc/self/fd/{fd}") for fd in set(os.listdir("/proc/self/fd")) - before
             if os.path.exists(f"/proc/self/fd/{fd}")]
    # Segment files (a memfd, or an unlinked file on the portable path): the
    # arguments', and the workers' task ledger.
    def segment_files(links):
        return [link for link in links if "loky-buffers" in link or "loky-segment" in link]

    assert segment_files(links), links
    executor.shutdown(wait=True)
    after = set(os.listdir("/proc/self/fd"))
    left = [os.readlink(f"/proc/self/fd/{fd}") for fd in after - before
            if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not segment_files(left), left
