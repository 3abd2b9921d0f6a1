"""Issue 6: the batched and out-of-band paths keep results right. Large buffers travel
through shared memory (see loky/_payload.py); many small tasks travel in batches."""

import numpy as np
import pytest

import transport_tasks as tasks
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
