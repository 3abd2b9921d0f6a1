"""Pickling of tasks and results with the loky pickler.

The loky pickler is cloudpickle's by default (so lambdas, closures and functions from
``__main__`` travel by value); ``LOKY_PICKLER`` or `set_loky_pickler` choose another
module that provides a ``Pickler`` class (``"pickle"`` for the standard one). Reducers
registered here apply to every pickle; an executor's ``job_reducers`` and
``result_reducers`` add to them for its own tasks and results.
"""

import copyreg
import functools
import io
import marshal
import os
import pickle
import sys
import types
from collections.abc import Mapping
from pickle import HIGHEST_PROTOCOL, loads

from .. import _callables
from .._payload import SHARED_MIN

__all__ = [
    "dump",
    "dumps",
    "loads",
    "register",
    "set_loky_pickler",
    "get_loky_pickler",
    "get_loky_pickler_name",
]

# type -> reduce function, applied by every loky pickler; and how many times it was
# changed, so that picklers made before a registration are not used after it.
_registered_reducers = {}
_registrations = 0

_LokyPickler = None
_loky_pickler_name = None

# The slot the C pickler reads its dispatch table from.
_C_DISPATCH_TABLE = pickle.Pickler.__dict__["dispatch_table"]


def register(type_, reduce_function):
    """Make every loky pickler reduce instances of `type_` with `reduce_function`."""
    global _registrations
    _registered_reducers[type_] = reduce_function
    _registrations += 1


def _tables_state():
    """Changes whenever a reducer is registered here or with copyreg (a new type, or a
    type's reducer replaced: copyreg's entries themselves, a few, are compared)."""
    return _registrations, len(_registered_reducers), tuple(copyreg.dispatch_table.items())


# (pickler class, id of the per-call reducers, state of the tables merged)
# -> (reducers, merged table).
# Building a dispatch table costs more than pickling a small task, so it is done once
# per set of reducers and state of the registries.
_merged_tables = {}


def _dispatch_table(base, reducers):
    key = (base, id(reducers), _tables_state())
    cached = _merged_tables.get(key)
    if cached is not None and cached[0] is reducers:
        return cached[1]
    # cloudpickle's Pickler has a class-level table; the standard one only the slot.
    own = getattr(base, "dispatch_table", None)
    table = dict(own if isinstance(own, Mapping) else copyreg.dispatch_table)
    if types.CodeType in table:
        table[types.CodeType] = _reduce_code
    for added in (_registered_reducers, reducers or {}):
        table.update((type_, _large_pickles_apart(reduce)) for type_, reduce in added.items())
    if len(_merged_tables) > 16:
        _merged_tables.clear()
    _merged_tables[key] = (reducers, table)
    return table


def _large_pickles_apart(reduce):
    """`reduce`, except that a large pickle it hands to ``pickle.loads`` (joblib's
    reducers do so for arrays they do not memory-map) is marked as an out-of-band
    buffer: it travels through shared memory (loky._payload) instead of being copied
    into the stream and through the socket. The receiver's ``pickle.loads`` reads it
    from the shared segment; what it builds is the same."""

    def reduce_apart(obj):
        reduced = reduce(obj)
        if (
            type(reduced) is tuple
            and len(reduced) == 2
            and reduced[0] is loads
            and type(reduced[1]) is tuple
            and len(reduced[1]) == 1
            and type(reduced[1][0]) is bytes
            and len(reduced[1][0]) >= SHARED_MIN
        ):
            return loads, (pickle.PickleBuffer(reduced[1][0]),)
        return reduced

    return reduce_apart


def _reduce_code(code):
    """Code objects travel as marshal data, which keeps their file name and line
    numbers: a worker's traceback (or faulthandler report) for a function pickled by
    value names the user's file. cloudpickle replaces the file name with a placeholder.
    marshal's format depends on the Python version, and a worker always runs the same
    interpreter as its parent."""
    return marshal.loads, (marshal.dumps(code),)


def _pickler_base(name):
    if name == "cloudpickle":
        from cloudpickle import CloudPickler

        return CloudPickler
    import importlib

    try:
        return importlib.import_module(name).Pickler
    except (ImportError, AttributeError) as exc:
        raise type(exc)(
            f"Could not set loky_pickler to {name!r} (by LOKY_PICKLER or "
            f"set_loky_pickler): it must name an importable module with a "
            f"Pickler class. {exc}"
        ) from exc


def set_loky_pickler(loky_pickler: str | None = None) -> None:
    """Choose the pickler for tasks: "cloudpickle" (default), "pickle", or the name of
    a module with a ``Pickler`` class. None means ``LOKY_PICKLER`` or the default."""
    global _LokyPickler, _loky_pickler_name
    if loky_pickler is None:
        loky_pickler = os.environ.get("LOKY_PICKLER")
    if not loky_pickler:
        loky_pickler = "cloudpickle"
    if loky_pickler == _loky_pickler_name:
        return
    # cloudpickle takes tens of milliseconds to import: the default is made at its first
    # use (a task that pickles by reference never needs it). Others are made now, so
    # that a wrong name fails here.
    _LokyPickler = None if loky_pickler == "cloudpickle" else _loky_pickler_class(loky_pickler)
    _loky_pickler_name = loky_pickler


def _pickler_class():
    """The loky pickler class in use."""
    global _LokyPickler
    if _LokyPickler is None:
        _LokyPickler = _loky_pickler_class(_loky_pickler_name)
    return _LokyPickler


@functools.cache
def _loky_pickler_class(name):
    """The loky pickler class built on the pickler module `name`."""
    base = _pickler_base(name)

    class LokyPickler(base):
        """`base` with the registered reducers and per-call ones in its dispatch table."""

        def __init__(self, file, reducers=None, protocol=HIGHEST_PROTOCOL, buffer_callback=None):
            # The C pickler reads its dispatch table when it is initialized.
            self.dispatch_table = _dispatch_table(base, reducers)
            if buffer_callback is None:
                base.__init__(self, file, protocol=protocol)
            else:
                base.__init__(self, file, protocol=protocol, buffer_callback=buffer_callback)

        def register(self, type_, reduce_function):
            """Reduce `type_` with `reduce_function` in this pickler only."""
            table = dict(self.dispatch_table)  # the shared table stays as it is
            table[type_] = reduce_function
            self.dispatch_table = table
            if isinstance(self, pickle.Pickler):
                _C_DISPATCH_TABLE.__set__(self, table)

    if name == "cloudpickle":
        LokyPickler.keep_functions = False
        LokyPickler.reducer_override = _keeping_functions(base.reducer_override)
    LokyPickler.__qualname__ = LokyPickler.__name__ = f"LokyPickler[{name}]"
    return LokyPickler


# Reducers for these types could change how a kept function's pickle is made.
_FUNCTION_PARTS = frozenset({types.FunctionType, types.CodeType, types.ModuleType, type})


def _keeping_functions(reducer_override):
    """cloudpickle's `reducer_override`, except that in a pickler whose `keep_functions`
    is set (the executors' task pickler), a function sent by value that loky._callables
    can keep travels as its kept pickle, rebuilt once per worker."""

    def keep_or_reduce(self, obj):
        if (
            type(obj) is types.FunctionType
            and self.keep_functions
            and _cloudpickle_sends_all_by_reference()
        ):
            kept = _callables.kept_pickle(obj)
            if kept is not None:
                return _callables.load, (kept,)
        return reducer_override(self, obj)

    return keep_or_reduce


def get_loky_pickler():
    return _pickler_class()


def get_loky_pickler_name():
    return _loky_pickler_name


def dump(obj, file, reducers=None, protocol=None):
    """Pickle `obj` into `file` with the loky pickler."""
    if protocol is None:
        protocol = HIGHEST_PROTOCOL
    _pickler_class()(file, reducers=reducers, protocol=protocol).dump(obj)


def dumps(obj, reducers=None, protocol=None):
    """Pickle `obj` with the loky pickler; returns a bytes-like object."""
    buffer = io.BytesIO()
    dump(obj, buffer, reducers=reducers, protocol=protocol)
    return buffer.getbuffer()


def dumps_bytes(obj, reducers=None, buffer_callback=None):
    """Like `dumps`, as a bytes object (no copy); protocol 5, so large buffers may be
    handed to `buffer_callback` (see `pickle.Pickler`)."""
    buffer = io.BytesIO()
    _pickler_class()(buffer, reducers=reducers, buffer_callback=buffer_callback).dump(obj)
    return buffer.getvalue()


# cloudpickle's registry of modules sent by value (a set it changes in place).
_by_value_modules = None


def _cloudpickle_sends_all_by_reference():
    """False once some module was registered with cloudpickle to travel by value."""
    global _by_value_modules
    if _by_value_modules is None:
        cp = sys.modules.get("cloudpickle.cloudpickle")
        if cp is None:
            return True  # not imported: nothing was registered with it yet
        # Unknown cloudpickle internals: assume some module is sent by value.
        _by_value_modules = getattr(cp, "_PICKLE_BY_VALUE_MODULES", {"unknown"})
    return not _by_value_modules


def _plain_unless_main(obj, buffer_callback, kept_mentions=0):
    """The standard C pickler, which is several times faster than cloudpickle's, for an
    object cloudpickle would pickle the same way, or None.

    The two differ only for functions and classes that cannot be named by reference:
    those of ``__main__`` (plain pickle names them, and the stream then holds the
    string "__main__") and those plain pickle cannot find (it raises). Any other
    object reduces the same through ``__reduce_ex__`` and copyreg in both.
    `kept_mentions`: how many times "__main__" appears in a function pickled beforehand
    that `obj` holds as bytes (see loky._callables); those mentions are expected.
    """
    data = pickle.dumps(obj, HIGHEST_PROTOCOL, buffer_callback=buffer_callback)
    return None if data.count(b"__main__") != kept_mentions else data


class Serializer:
    """Pickles objects one at a time with a single loky pickler: cheaper than creating
    one per object. Not thread-safe; the executor pickles one task at a time anyway."""

    def __init__(self, reducers=None):
        self._reducers = reducers
        self._pickler = None
        self._buffer_callback = None
        # The last kept function pickle sent, and how many times it says "__main__"
        # (counted once: a function is usually sent many times in a row).
        self._kept = None
        self._kept_mentions = 0
        # The dump functions for `loky._payload.pack`, made once.
        self._plain_first = (_plain_unless_main, self.dumps)
        self._loky_only = (self.dumps,)
        # A function of __main__ never pickles plainly as itself: its kept pickle
        # first. Any other function is tried plainly first (the C pickler checks that
        # its name leads back to it), then as its kept pickle (local functions, lambdas,
        # functions rebound away from their name).
        self._main_function_first = (self._plain_with_kept, self.dumps)
        self._function_first = (_plain_unless_main, self._plain_with_kept, self.dumps)

    def dumps_in_order(self):
        """The dump functions to try, in order, for `loky._payload.pack`: the plain
        pickler first when the loky pickler is cloudpickle, no reducer is registered
        and no module is to be sent by value."""
        if (
            _loky_pickler_name == "cloudpickle"
            and not self._reducers
            and not _registered_reducers
            and _cloudpickle_sends_all_by_reference()
        ):
            return self._plain_first
        return self._loky_only

    def task(self, fn, args, kwargs):
        """(dump functions for `loky._payload.pack`, task to pickle) for a call of
        `fn`. Where the plain pickler may be used, a function cloudpickle sends by value
        travels as its pickle made once (loky._callables)."""
        dumps = self.dumps_in_order()
        if dumps is self._plain_first and type(fn) is types.FunctionType:
            if fn.__module__ == "__main__":
                dumps = self._main_function_first
            else:
                dumps = self._function_first
        return dumps, (fn, args, kwargs)

    def _plain_with_kept(self, task, buffer_callback):
        """The plain pickler on `task` with its function as its kept pickle, or None
        when the function cannot be kept (it pickles by reference, or is too odd)."""
        fn, args, kwargs = task
        kept = _callables.kept_pickle(fn)
        if kept is None:
            return None
        if kept is not self._kept:
            self._kept, self._kept_mentions = kept, kept.count(b"__main__")
        return _plain_unless_main((kept, args, kwargs), buffer_callback, self._kept_mentions)

    def _new_pickler(self):
        self._file = io.BytesIO()
        self._pickler_class = _pickler_class()
        self._tables_state = _tables_state()
        self._pickler = self._pickler_class(
            self._file, reducers=self._reducers, buffer_callback=self._on_buffer
        )
        reduced_types = {*(self._reducers or ()), *_registered_reducers}
        self._pickler.keep_functions = _FUNCTION_PARTS.isdisjoint(reduced_types)

    def _on_buffer(self, buffer):
        return self._buffer_callback(buffer)

    def dumps(self, obj, buffer_callback=None):
        """Pickle `obj` (protocol 5) into bytes; large buffers go to `buffer_callback`
        as with `pickle.Pickler`."""
        if (
            self._pickler is None
            or self._pickler_class is not _pickler_class()
            or self._tables_state != _tables_state()
        ):
            self._new_pickler()  # first use, or set_loky_pickler() or register() since
        pickler, file = self._pickler, self._file
        file.seek(0)
        file.truncate()
        pickler.clear_memo()
        if hasattr(pickler, "globals_ref"):
            pickler.globals_ref = {}  # cloudpickle's per-pickle state
        self._buffer_callback = buffer_callback or _keep_in_band
        try:
            pickler.dump(obj)
        except BaseException:
            self._pickler = None  # do not reuse a pickler left mid-way
            raise
        finally:
            self._buffer_callback = None
        return file.getvalue()


def cloudpickle_dumps(obj):
    """Pickle `obj` with cloudpickle (by value where needed), whatever the loky pickler,
    keeping the file names of code objects (see `_reduce_code`)."""
    buffer = io.BytesIO()
    _loky_pickler_class("cloudpickle")(buffer).dump(obj)
    return buffer.getvalue()


def _keep_in_band(buffer):
    return True


set_loky_pickler()

# `pickle` itself is re-exported for callers that expect it here.
PicklingError = pickle.PicklingError
