"""Issue 6: the batched and out-of-band paths keep results right. Large buffers travel
through shared memory (see loky/_payload.py); many small tasks travel in batches."""

import os
import sys

import numpy as np
import pytest

import transport_tasks as tasks
from loky import _core, _payload
from loky._payload import SHARED_MIN

pytestmark = pytest.mark.timeout(120)

# Large enough to leave the pickle and travel through shared memory.
BIG = SHARED_MIN // 8 * 4


def expected(array):
    """What describe() reports. Like pickle, numpy sends a non-contiguous array as a
    C-contiguous copy, and keeps C or Fortran order otherwise."""
    fortran = array.flags.f_contiguous and not array.flags.c_contiguous
    return (
        float(array.sum()),
        array.shape,
        array.dtype.str,
        not fortran or array.ndim < 2,
        bool(fortran or array.ndim == 1 or array.flags.f_contiguous),
    )


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda a: a, id="contiguous"),
        pytest.param(lambda a: a[BIG // 4 : BIG // 2], id="view-with-offset"),
        pytest.param(lambda a: a[::3], id="strided-view"),
        pytest.param(lambda a: a.reshape(-1, 8)[:, ::2], id="non-contiguous-2d"),
        pytest.param(lambda a: np.asfortranarray(a.reshape(-1, 16)), id="fortran"),
        pytest.param(lambda a: a.reshape(-1, 16).T, id="transposed"),
    ],
)
def test_arrays_arrive_intact(executor_factory, make):
    executor = executor_factory(max_workers=2)
    array = make(np.arange(BIG, dtype=np.float64))
    assert executor.submit(tasks.describe, array).result() == expected(array)
    back = executor.submit(tasks.double_in_place, array).result()
    np.testing.assert_array_equal(back, array * 2)


def test_arrays_arrive_at_their_source_place_within_a_page(executor_factory):
    # Same place within a page as the source: the receiver's array is exactly as
    # aligned as the sender's, and the copy into the segment runs at full speed.
    executor = executor_factory(max_workers=1)
    for start in (0, 3, 64, 1000):
        array = np.zeros(BIG * 8 + 4096, dtype=np.uint8)[start:]
        assert executor.submit(tasks.place_in_page, array).result() == array.ctypes.data % 4096
    place, view = executor.submit(tasks.odd_slice_and_its_place, BIG * 8).result()
    assert view.ctypes.data % 4096 == place
    np.testing.assert_array_equal(view, np.arange(BIG * 8 + 3, dtype=np.uint8)[3:])


def test_read_only_array_stays_read_only_as_with_pickle(executor_factory):
    executor = executor_factory(max_workers=1)
    array = np.arange(BIG, dtype=np.float64)
    array.flags.writeable = False
    assert executor.submit(tasks.is_writeable, array).result() is False
    back = executor.submit(tasks.double, array).result()
    np.testing.assert_array_equal(back, np.arange(BIG) * 2)
    np.testing.assert_array_equal(array, np.arange(BIG))


def test_writes_in_the_worker_do_not_reach_the_sender(executor_factory):
    executor = executor_factory(max_workers=1)
    array = np.arange(BIG, dtype=np.float64)
    back = executor.submit(tasks.double_in_place, array).result()
    np.testing.assert_array_equal(back, np.arange(BIG) * 2)
    np.testing.assert_array_equal(array, np.arange(BIG))
    assert back.flags.writeable


def test_many_large_results_in_one_task(executor_factory):
    executor = executor_factory(max_workers=2)
    arrays = executor.submit(tasks.make_arrays, 5, BIG).result()
    assert [int(a[0]) for a in arrays] == list(range(5))
    assert all(a.shape == (BIG,) for a in arrays)


def test_large_and_small_tasks_interleaved_keep_their_order(executor_factory):
    executor = executor_factory(max_workers=2)
    inputs = [np.full(BIG, i, dtype=np.float64) if i % 5 == 0 else i for i in range(200)]
    futures = [executor.submit(tasks.describe, np.asarray(x, dtype=np.float64)) for x in inputs]
    for x, future in zip(inputs, futures):
        assert future.result() == expected(np.asarray(x, dtype=np.float64))


def test_batched_results_keep_their_order(executor_factory):
    # Thousands of tiny tasks: the pool sends them to workers in batches.
    executor = executor_factory(max_workers=2)
    n = 5000
    futures = [executor.submit(abs, -i) for i in range(n)]
    assert [f.result() for f in futures] == list(range(n))
    assert list(executor.map(abs, range(-n, 0))) == list(range(n, 0, -1))


def test_exception_in_the_middle_of_a_batch(executor_factory):
    executor = executor_factory(max_workers=2)
    for _ in range(3):
        futures = [executor.submit(tasks.fail_on_seven, i) for i in range(2000)]
        for i, future in enumerate(futures):
            if i == 7:
                with pytest.raises(ValueError, match="task 7 fails"):
                    future.result()
            else:
                assert future.result() == i


def test_cancelled_futures_of_a_long_queue_do_not_run(executor_factory):
    executor = executor_factory(max_workers=1)
    futures = [executor.submit(abs, -i) for i in range(3000)]
    cancelled = [f for f in futures[1500:] if f.cancel()]
    for future in futures:
        if future in cancelled:
            assert future.cancelled()
        else:
            assert future.result() >= 0


# -- shared segments written again once their receiver let go ----------------------------


def _open_fds():
    """This process's open descriptors (handles on Windows)."""
    if sys.platform == "win32":
        import psutil

        return psutil.Process().num_handles()
    return len(os.listdir("/proc/self/fd"))


def _kept_segments():
    return _core.segment_cache_usage()[0]


def test_a_released_segment_is_written_again(executor_factory):
    executor = executor_factory(max_workers=1)
    _core.release_cached_segments()
    for value in range(4):
        array = np.full(BIG, value, dtype=np.float64)
        assert executor.submit(tasks.describe, array).result() == expected(array)
        assert _kept_segments() == 1, "the worker released it: the same one is reused"
    # Results come back the same way: the worker keeps a single segment too.
    for value in range(4):
        back = executor.submit(tasks.filled, BIG, value).result()
        assert float(back.sum()) == value * BIG
        del back
    assert executor.submit(tasks.segment_count).result() == 1


def test_a_segment_is_written_again_whatever_the_next_buffer_alignment(executor_factory):
    # Each buffer goes to its source's place within a page: a segment made for a buffer
    # at one place must still take a buffer of the same size at any other.
    executor = executor_factory(max_workers=1)
    _core.release_cached_segments()
    nbytes = BIG * 8  # a whole number of pages
    base = np.zeros(nbytes + 8192, dtype=np.uint8)
    page_start = -base.ctypes.data % 4096
    for place in (0, 16, 4095, 64, 2048):
        view = base[page_start + place : page_start + place + nbytes]
        assert executor.submit(tasks.place_in_page, view).result() == place
        assert _kept_segments() == 1


@pytest.mark.parametrize("size", [BIG, 1000], ids=["large", "small"])
def test_a_reducer_handing_over_a_pickle_sends_it_through_shared_memory(
    executor_factory, size
):
    reducers = {np.ndarray: tasks.reduce_as_pickle}
    executor = executor_factory(max_workers=1, job_reducers=reducers, result_reducers=reducers)
    _core.release_cached_segments()
    array = np.arange(size, dtype=np.float64)
    assert executor.submit(tasks.describe, array).result() == expected(array)
    large = array.nbytes >= SHARED_MIN
    assert _kept_segments() == int(large)
    back = executor.submit(tasks.double, array).result()
    np.testing.assert_array_equal(back, array * 2)
    assert executor.submit(tasks.segment_count).result() == int(large)


def test_a_reducer_keeping_the_array_leaves_its_buffer_out_of_band(executor_factory):
    executor = executor_factory(
        max_workers=1, job_reducers={tasks.Tagged: tasks.reduce_tagged}
    )
    _core.release_cached_segments()
    array = np.arange(BIG, dtype=np.float64)
    assert executor.submit(tasks.tagged_sum, tasks.Tagged(array)).result() == float(array.sum())
    assert _kept_segments() == 1


def test_segments_still_in_use_are_never_overwritten(executor_factory):
    executor = executor_factory(max_workers=1)
    # The worker keeps every array it receives...
    for value in range(5):
        executor.submit(tasks.keep, np.full(BIG, value, dtype=np.float64)).result()
    assert executor.submit(tasks.kept_sums).result() == [v * BIG for v in range(5)]
    # ...and this process keeps every array it receives.
    kept = [executor.submit(tasks.filled, BIG, v).result() for v in range(5)]
    assert [float(a.sum()) for a in kept] == [v * BIG for v in range(5)]
    kept[0] += 1  # received arrays are writable, and private to this process
    assert float(executor.submit(tasks.filled, BIG, 9).result().sum()) == 9 * BIG
    assert [float(a.sum()) for a in kept[1:]] == [v * BIG for v in range(1, 5)]


def test_received_arrays_hold_no_file_descriptor(executor_factory):
    executor = executor_factory(max_workers=1)
    executor.submit(tasks.filled, BIG, 0).result()
    before = _open_fds()
    kept = [executor.submit(tasks.filled, BIG, v).result() for v in range(50)]
    assert _open_fds() - before < 10
    assert [int(a[0]) for a in kept] == list(range(50))


@pytest.fixture
def cache_limits():
    """Set this process's cache limits for one test."""
    yield _core.configure_segment_cache
    _core.configure_segment_cache(_payload.cache_bytes())


def test_the_cache_stays_within_its_limits(executor_factory, cache_limits):
    executor = executor_factory(max_workers=1)
    cache_limits(3 * BIG * 8, 2)
    for value in range(5):  # the worker keeps them all: none can be written again
        executor.submit(tasks.keep, np.full(BIG, value, dtype=np.float64)).result()
        count, size = _core.segment_cache_usage()
        assert count <= 2 and size <= 3 * BIG * 8
    assert executor.submit(tasks.kept_sums).result() == [v * BIG for v in range(5)]


def test_a_cache_of_size_zero_keeps_nothing(executor_factory, cache_limits):
    cache_limits(0, 64)
    executor = executor_factory(max_workers=1)
    array = np.arange(BIG, dtype=np.float64)
    assert executor.submit(tasks.describe, array).result() == expected(array)
    assert _core.segment_cache_usage() == (0, 0)


@pytest.mark.posix_only("os.fork(): Windows has no fork()")
def test_a_forked_child_does_not_reuse_its_parent_segments(executor_factory):
    executor = executor_factory(max_workers=1)
    executor.submit(tasks.describe, np.arange(BIG, dtype=np.float64)).result()
    assert _kept_segments()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, str(_kept_segments()).encode())
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 16) == b"0"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert _kept_segments(), "the parent keeps its own"
