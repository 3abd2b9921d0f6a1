"""Queues for processes of loky's contexts, as loky has them: multiprocessing's
`Queue` and `SimpleQueue`, whose items are pickled with loky's pickler (cloudpickle by
default, see `reduction`) and the queue's own `reducers`, so that functions defined in
``__main__`` and lambdas can travel through them.

Items are pickled in the thread that puts them (multiprocessing pickles a `Queue`'s
items later, in its feeder thread): an item that cannot be pickled raises at `put`.

As multiprocessing's queues, they are made by a context (``get_context().Queue()``),
which hands itself over as `ctx`; this module knows no context of its own.
"""

import pickle
from multiprocessing.queues import Full
from multiprocessing.queues import Queue as _Queue
from multiprocessing.queues import SimpleQueue as _SimpleQueue

from .. import _inherit
from . import reduction

__all__ = ["Queue", "SimpleQueue", "Full"]


def _context(ctx, kind):
    if ctx is None:
        raise TypeError(
            f"{kind}() needs ctx, the multiprocessing context its processes come from: "
            f"use loky.backend.get_context().{kind}(), or pass ctx="
        )
    return ctx


class _Pickled:
    """An item pickled already: multiprocessing's pickler passes it on as it is, and the
    receiving side's plain ``pickle.loads`` gives back the item itself."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        return pickle.loads, (self.data,)


def _dumps(obj, reducers):
    # multiprocessing's own reducers too: connections and sockets travel as with it.
    reducers = {**_inherit.multiprocessing_reducers(), **(reducers or {})}
    return reduction.dumps_bytes(obj, reducers=reducers)


class _CarriesReducers:
    """A queue's `reducers` travel with it to the processes it is handed to."""

    def __getstate__(self):
        return super().__getstate__() + (self._reducers,)

    def __setstate__(self, state):
        super().__setstate__(state[:-1])
        self._reducers = state[-1]


class Queue(_CarriesReducers, _Queue):
    def __init__(self, maxsize=0, reducers=None, ctx=None):
        super().__init__(maxsize=maxsize, ctx=_context(ctx, "Queue"))
        self._reducers = reducers

    def put(self, obj, block=True, timeout=None):
        data = _dumps(obj, self._reducers)
        super().put(_Pickled(data), block, timeout)


class SimpleQueue(_CarriesReducers, _SimpleQueue):
    def __init__(self, reducers=None, ctx=None):
        super().__init__(ctx=_context(ctx, "SimpleQueue"))
        self._reducers = reducers

    def put(self, obj):
        data = _dumps(obj, self._reducers)
        if self._wlock is None:
            self._writer.send_bytes(data)
        else:
            with self._wlock:
                self._writer.send_bytes(data)
