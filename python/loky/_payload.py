"""Large buffers travel through shared memory.

A task or result is pickled with protocol 5. Buffers of at least `SHARED_MIN` bytes
(numpy arrays, bytearrays, anything exposing a PickleBuffer) are copied into a shared
segment (a memfd) that travels with the frame; the receiver maps it and unpickles views
of it, without copying. The frame body is then the buffer layout followed by the pickle:

    u32 count | count x (u64 offset, u64 length) | pickle

A segment starts with a header whose first word the receiver sets to FREE once every
view of it is gone (src/shm.rs). The sender keeps its segments mapped and copies the
next buffers into a free one that fits: its pages already exist, so the copy runs at
memory speed instead of paying for fresh pages. A process keeps at most
``LOKY_SHARED_MEMORY_CACHE`` bytes of segments (default 1 GiB; 0 keeps none), and lets
go of one that was not reused for `IDLE_SECONDS`.
"""

import _thread
import os
from struct import Struct
from time import monotonic

import _pickle as pickle  # lighter to import than `pickle`

from ._core import SEGMENT_FREE, SEGMENT_HEADER_LEN, SEGMENT_LENT, SharedSegment

SHARED_MIN = 1 << 17
_COUNT = Struct("<I")
_SPAN = Struct("<QQ")
_STATE = Struct("<Q")
# Buffers start on cache-line boundaries in the segment.
_ALIGN = 64
# One read or write call moves at most this much (Linux caps a call below 2 GiB).
IO_CHUNK = 1 << 30
# Segment sizes are rounded up to this, so that payloads of similar sizes share them.
_GRANULE = 1 << 20
IDLE_SECONDS = 30.0


class _Segment:
    """A segment this process writes buffers into."""

    __slots__ = ("fd", "mapping", "capacity", "last_lent")

    def __init__(self, capacity):
        import mmap

        self.fd = os.memfd_create("loky-buffers", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, capacity)
            self.mapping = mmap.mmap(self.fd, capacity)  # shared, writable
        except BaseException:
            os.close(self.fd)
            raise
        self.capacity = capacity
        self.last_lent = 0.0

    def is_free(self):
        return _STATE.unpack_from(self.mapping)[0] == SEGMENT_FREE

    def close(self):
        self.mapping.close()
        os.close(self.fd)


class _SegmentCache:
    """The segments this process has written, kept to be written again."""

    def __init__(self, limit):
        self.limit = limit
        self.segments = []  # least recently lent first
        self.lock = _thread.allocate_lock()

    def take(self, size):
        """A segment of at least `size` bytes, marked lent, out of the cache until
        `put_back`."""
        now = monotonic()
        with self.lock:
            idle = [s for s in self.segments if now - s.last_lent > IDLE_SECONDS]
            fitting = [
                s for s in self.segments if s.capacity >= size and s not in idle and s.is_free()
            ]
            segment = min(fitting, key=lambda s: s.capacity) if fitting else None
            self.segments = [s for s in self.segments if s is not segment and s not in idle]
        for stale in idle:
            stale.close()
        if segment is None:
            segment = _Segment(-(-size // _GRANULE) * _GRANULE)
        _STATE.pack_into(segment.mapping, 0, SEGMENT_LENT)
        segment.last_lent = now
        return segment

    def put_back(self, segment):
        """Keep `segment` for later, within the size limit (oldest dropped first)."""
        with self.lock:
            self.segments.append(segment)
            total = sum(s.capacity for s in self.segments)
            dropped = []
            while self.segments and total > self.limit:
                dropped.append(self.segments.pop(0))
                total -= dropped[-1].capacity
        for stale in dropped:
            stale.close()

    def clear(self):
        with self.lock:
            segments, self.segments = self.segments, []
        for segment in segments:
            segment.close()

    def forget_after_fork(self):
        """In a forked child: the segments are the parent's to reuse, not ours (the
        lock may also have been held by a thread that does not exist here)."""
        self.lock = _thread.allocate_lock()
        self.clear()


_segments = _SegmentCache(int(float(os.environ.get("LOKY_SHARED_MEMORY_CACHE", 1 << 30))))
os.register_at_fork(after_in_child=_segments.forget_after_fork)


def release_cached_segments():
    """Let go of every kept segment (their receivers keep what they still use)."""
    _segments.clear()


def pack(dumps, obj):
    """Pickle `obj` with the first of `dumps` that takes it. Each is called as
    ``dump(obj, buffer_callback) -> bytes``; all but the last may decline by returning
    None or raising. Returns (body, fd): fd is a memfd holding the large buffers (the
    caller closes it), or None."""
    *optional, last = dumps
    for dump in optional:
        try:
            data, large = _dump_apart(dump, obj)
        except Exception:
            continue
        if data is not None:
            break
    else:
        data, large = _dump_apart(last, obj)
    if not large:
        return data, None
    layout = [_COUNT.pack(len(large))]
    spans = []
    end = SEGMENT_HEADER_LEN
    for raw in large:
        offset = -(-end // _ALIGN) * _ALIGN
        spans.append((offset, raw))
        layout.append(_SPAN.pack(offset, raw.nbytes))
        end = offset + raw.nbytes
    layout.append(data)
    segment = _segments.take(end)
    try:
        for offset, raw in spans:
            segment.mapping[offset : offset + raw.nbytes] = raw
        fd = os.dup(segment.fd)
    except BaseException:
        segment.close()
        raise
    _segments.put_back(segment)
    return b"".join(layout), fd


def _dump_apart(dump, obj):
    """(pickle, large buffers kept out of it)."""
    large = []

    def keep_large_apart(buffer):
        raw = buffer.raw()
        if raw.nbytes < SHARED_MIN:
            return True  # small: stays inside the pickle
        large.append(raw)
        return False

    return dump(obj, keep_large_apart), large


def unpack(body, fd):
    """Unpickle a body produced by `pack`; takes ownership of `fd` (None or -1: none)."""
    if fd is None or fd < 0:
        return pickle.loads(body)
    try:
        (count,) = _COUNT.unpack_from(body)
        spans = [_SPAN.unpack_from(body, _COUNT.size + i * _SPAN.size) for i in range(count)]
        size = max(offset + length for offset, length in spans)
        segment = SharedSegment(fd, size)
    finally:
        os.close(fd)
    view = memoryview(segment)
    buffers = [view[offset : offset + length] for offset, length in spans]
    start = _COUNT.size + count * _SPAN.size
    return pickle.loads(memoryview(body)[start:], buffers=buffers)
