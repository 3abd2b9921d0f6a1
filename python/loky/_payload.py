"""Large buffers travel through shared memory.

A task or result is pickled with protocol 5. Buffers of at least `SHARED_MIN` bytes
(numpy arrays, bytearrays, anything exposing a PickleBuffer) are written, with one copy,
into a memfd that travels with the frame; the receiver maps it and unpickles views of
it, without copying. The frame body is then the buffer layout followed by the pickle:

    u32 count | count x (u64 offset, u64 length) | pickle
"""

import os
from struct import Struct

import _pickle as pickle  # lighter to import than `pickle`

SHARED_MIN = 1 << 17
_COUNT = Struct("<I")
_SPAN = Struct("<QQ")
# Buffers start on cache-line boundaries in the shared file.
_ALIGN = 64
# One read or write call moves at most this much (Linux caps a call below 2 GiB).
IO_CHUNK = 1 << 30


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
    fd = os.memfd_create("loky-buffers", os.MFD_CLOEXEC)
    try:
        layout = [_COUNT.pack(len(large))]
        offset = 0
        for raw in large:
            offset = -(-offset // _ALIGN) * _ALIGN
            layout.append(_SPAN.pack(offset, raw.nbytes))
            _pwrite_all(fd, raw, offset)
            offset += raw.nbytes
        layout.append(data)
        return b"".join(layout), fd
    except BaseException:
        os.close(fd)
        raise


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


def _pwrite_all(fd, raw, offset):
    done = 0
    while done < raw.nbytes:
        done += os.pwrite(fd, raw[done : done + IO_CHUNK], offset + done)


def unpack(body, fd):
    """Unpickle a body produced by `pack`; takes ownership of `fd` (None or -1: none)."""
    if fd is None or fd < 0:
        return pickle.loads(body)
    import mmap

    try:
        (count,) = _COUNT.unpack_from(body)
        spans = [_SPAN.unpack_from(body, _COUNT.size + i * _SPAN.size) for i in range(count)]
        size = max(offset + length for offset, length in spans)
        # The sender wrote the file and let it go, so the receiver owns it: a shared
        # mapping needs no copy (a private writable one would copy every page as it is
        # populated). Pages are mapped up front rather than faulted one by one.
        shared = mmap.mmap(
            fd,
            size,
            flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
    finally:
        os.close(fd)
    view = memoryview(shared)
    buffers = [view[offset : offset + length] for offset, length in spans]
    start = _COUNT.size + count * _SPAN.size
    return pickle.loads(memoryview(body)[start:], buffers=buffers)
