"""Task functions for test_transport.py (importable by the workers)."""

import numpy as np


def describe(array):
    """What the worker received: contents' checksum and layout flags."""
    return (
        float(array.sum()),
        array.shape,
        array.dtype.str,
        bool(array.flags.c_contiguous),
        bool(array.flags.f_contiguous),
    )


def double_in_place(array):
    # The worker's copy is writable even when the sender's was not.
    array *= 2
    return array


def double(array):
    return array * 2


def is_writeable(array):
    return bool(array.flags.writeable)


def make_arrays(n, size):
    return [np.full(size, i, dtype=np.int64) for i in range(n)]


def fail_on_seven(i):
    if i == 7:
        raise ValueError(f"task {i} fails")
    return i


# Arrays a worker keeps after its task returned (test_transport: segment reuse).
_kept = []


def keep(array):
    _kept.append(array)
    return float(array.sum())


def kept_sums():
    return [float(a.sum()) for a in _kept]


def filled(size, value):
    return np.full(size, value, dtype=np.float64)


def segment_count():
    from loky import _core

    return _core.segment_cache_usage()[0]


def reduce_as_pickle(array):
    """A reducer that replaces an array with a pickle of it, as joblib's do for the
    arrays they do not memory-map."""
    import pickle

    return pickle.loads, (pickle.dumps(array, protocol=5),)


class Tagged:
    """Reduced by `reduce_tagged`, which keeps its array as it is."""

    def __init__(self, array):
        self.array = array


def reduce_tagged(obj):
    return Tagged, (obj.array,)


def tagged_sum(obj):
    return float(obj.array.sum())


def place_in_page(array):
    """Where `array`'s data starts within a 4 KiB page."""
    return array.ctypes.data % 4096


def odd_slice_and_its_place(n):
    """A view starting at an odd address, and where it starts within a page."""
    import numpy as np

    view = np.arange(n + 3, dtype=np.uint8)[3:]
    return view.ctypes.data % 4096, view
