"""Large buffers travel through shared memory.

A task or result is pickled with protocol 5. Buffers of at least `SHARED_MIN` bytes
(numpy arrays, bytearrays, anything exposing a PickleBuffer) are copied into a shared
segment that travels with the frame; the receiver unpickles views of its mapping,
without a copy. The frame body is then the buffer layout followed by the pickle:

    u32 count | count x (u64 offset, u64 length) | pickle

The segments' life (reuse, limits, fork) is the core's: see ``src/shm/``. This
module only lays buffers out and back. When no segment can be made (this process is
out of descriptors or memory), the buffers travel in-band, inside the pickle: slower,
never a failure.

``LOKY_SHARED_MEMORY_CACHE`` (bytes, default 1 GiB; 0 keeps none) bounds what a
process keeps of the segments it sent, to write them again once their receiver let go.
"""

import os

import _pickle as pickle  # lighter to import than `pickle`
from _struct import Struct  # so is `_struct`, than `struct`

from . import _core

SHARED_MIN = 1 << 17
_COUNT = Struct("<I")
_SPAN = Struct("<QQ")


def cache_bytes():
    """The bytes the sending cache may keep (its number of segments is the core's)."""
    return max(0, int(float(os.environ.get("LOKY_SHARED_MEMORY_CACHE", 1 << 30))))


_core.configure_segment_cache(cache_bytes())
# Received segments become private copies in a child made by os.fork() (POSIX: Windows
# has no fork()).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_core.fork_prepare,
        after_in_parent=_core.fork_parent,
        after_in_child=_core.fork_child,
    )


def release_cached_segments():
    """Let go of every kept segment (their receivers keep what they still use)."""
    _core.release_cached_segments()


def pack(dumps, obj, write_segment=_core.write_segment):
    """Pickle `obj` with the first of `dumps` that takes it. Each is called as
    ``dump(obj, buffer_callback) -> bytes``; all but the last may decline by returning
    None or raising. Returns (body, segment): segment holds the large buffers
    (an `_core.OutgoingSegment` made by `write_segment`), or None."""
    large = []

    def keep_large_apart(buffer):
        raw = buffer.raw()
        if raw.nbytes < SHARED_MIN:
            return True  # small: stays inside the pickle
        large.append(raw)
        return False

    for dump in dumps[:-1]:
        try:
            data = dump(obj, keep_large_apart)
        except Exception:
            data = None
        if data is not None:
            break
        large.clear()  # kept apart by the attempt that declined
    else:
        dump = dumps[-1]
        data = dump(obj, keep_large_apart)
    if not large:
        return data, None
    try:
        segment, offsets = write_segment(large)
    except OSError:
        # No segment to be had: the buffers travel inside the pickle.
        return dump(obj, None), None
    layout = [_COUNT.pack(len(large))]
    layout += [_SPAN.pack(offset, raw.nbytes) for offset, raw in zip(offsets, large)]
    layout.append(data)
    return b"".join(layout), segment


def unpack(body, segment):
    """Unpickle a body produced by `pack`, with the received segment (a
    `_core.SharedSegment`) or None."""
    if segment is None:
        return pickle.loads(body)
    body = memoryview(body)
    (count,) = _COUNT.unpack_from(body)
    spans = [_SPAN.unpack_from(body, _COUNT.size + i * _SPAN.size) for i in range(count)]
    view = memoryview(segment)
    buffers = [view[offset : offset + length] for offset, length in spans]
    start = _COUNT.size + count * _SPAN.size
    return pickle.loads(body[start:], buffers=buffers)
