"""`wrap_non_picklable_objects`: make an object travel by value with cloudpickle even
when the executor's pickler is the standard one."""

from __future__ import annotations

import inspect
from pickle import loads

from .backend.reduction import cloudpickle_dumps

TYPE_CHECKING = False
if TYPE_CHECKING:  # workers unpickling a wrapper need not import typing
    from typing import TypeVar

    _T = TypeVar("_T")


class CloudpickledObjectWrapper:
    """Pickles the wrapped object with cloudpickle; attribute access goes through."""

    def __init__(self, obj, keep_wrapper=False):
        self._obj = obj
        self._keep_wrapper = keep_wrapper

    def __reduce__(self):
        payload = cloudpickle_dumps(self._obj)
        if self._keep_wrapper:
            return _unpickle_wrapped, (payload,)
        return loads, (payload,)

    def __getattr__(self, name):
        # Only reached for names not found on the wrapper itself.
        if name in ("_obj", "_keep_wrapper"):
            raise AttributeError(name)
        return getattr(self._obj, name)


class CallableObjectWrapper(CloudpickledObjectWrapper):
    def __call__(self, *args, **kwargs):
        return self._obj(*args, **kwargs)


def _wrap(obj, keep_wrapper):
    cls = CallableObjectWrapper if callable(obj) else CloudpickledObjectWrapper
    return cls(obj, keep_wrapper=keep_wrapper)


def _unpickle_wrapped(payload):
    return _wrap(loads(payload), keep_wrapper=True)


def wrap_non_picklable_objects(obj: _T, keep_wrapper: bool = True) -> _T:
    """Wrap `obj` so that it is pickled with cloudpickle (lambdas, closures, objects
    defined in ``__main__``...). A class is wrapped so that its instances are.

    With `keep_wrapper`, the object is still wrapped once unpickled, so it can travel
    again. cloudpickle is slower than pickle: prefer making objects importable.
    """
    if inspect.isclass(obj):

        class CloudpickledClassWrapper(CloudpickledObjectWrapper):
            def __init__(self, *args, **kwargs):
                super().__init__(obj(*args, **kwargs), keep_wrapper=keep_wrapper)

        CloudpickledClassWrapper.__name__ = obj.__name__
        CloudpickledClassWrapper.__qualname__ = obj.__qualname__
        return CloudpickledClassWrapper
    return _wrap(obj, keep_wrapper)
