"""Callables pickled once.

A function that cloudpickle sends by value (defined in ``__main__``, a lambda, a
closure) costs a cloudpickle pass per task in the parent, and an unpickling that
rebuilds it per task in the worker. When nothing the function's pickle depends on can
change unnoticed, both are done once:

- Parent (`kept_pickle`): the function's pickle is kept, by the function's identity, with
  a snapshot of every object that pickle depends on: its code, defaults, closure cells'
  contents, the globals its code names, its attributes. Each submit takes the snapshot
  again and compares identities; any redefinition or rebinding (of the function, of a
  global it uses, of a closure variable) gives another object, hence a new pickle.
  The task carries the pickled function in its place: as a ``bytes`` object where it is
  the task's callable, reduced to ``load(pickled)`` where it is found inside the task
  (an argument, a ``functools.partial``, joblib's batches).
- What may be captured: objects immutable all the way down (None, numbers, strings,
  bytes, code, and tuples and frozensets of those); modules, functions and classes
  that pickle by reference and are still found under their name; and functions that
  qualify themselves. Anything else (a list, a dict, an instance, a class defined in
  ``__main__``) can change in place, so such a function is pickled at every submit.
- A function whose code assigns a global or a closure variable is pickled at every
  submit too: in a worker, the rebuilt function would carry the assignment over.
- Worker (`load`): the rebuilt function is kept by its pickled bytes, so a cache hit
  runs exactly what a fresh unpickling would build. What still differs from unpickling
  at each task: attributes a task sets on its own function object stay, in that worker,
  for the next task, as they do for a module-level function.

- A function whose pickle exceeds 1 MiB (it captures a large string) is not kept.
- Memory: at most 256 kept pickles in the parent (all dropped when full; an entry goes
  with its function), and 256 rebuilt functions per worker (oldest dropped first).

Used only where the loky pickler is cloudpickle, no module is registered with
cloudpickle to travel by value, and no reducer applies to functions, code, modules or
classes: those change how functions are pickled.
"""

import sys
from _operator import is_
from _pickle import loads as _loads


# The types of `types`, without importing it: a worker imports this module on the way
# to its first result.
def _function_and_cell_types():
    cell = None

    def inner():
        return cell

    return type(inner), type(inner.__closure__[0])


_FunctionType, _CellType = _function_and_cell_types()
_CodeType = type(_function_and_cell_types.__code__)
_ModuleType = type(sys)
_BuiltinFunctionType = type(len)

# Parent: id(fn) -> (weak reference to fn, snapshot, pickled fn or None if too large).
_kept = {}
_KEPT_MAX = 256
# A function whose pickle is larger (it captures a large string or bytes) is not kept:
# 256 of them, kept here and in each worker, would be too much memory.
_BLOB_MAX = 1 << 20
# Objects whose identity tells their whole content.
_ATOMS = frozenset(
    {type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis), _CodeType}
)
# Tuples larger than this are not walked at each submit: the function is not kept.
_TUPLE_MAX = 64
_ABSENT = object()  # a global the code names that does not exist (yet)
_EMPTY_CELL = object()
_TYPE_PARAMS = sys.version_info >= (3, 12)  # functions have __type_params__
_SEEN = object()  # followed by the rank of a function met earlier in the same snapshot
# (code object) -> (names its code and nested code use, whether it assigns a global or
# a closure variable).
_code_facts = {}

# Counted in the parent, for benchmarks: lookups that reused a kept pickle, that made
# one, and that could not keep one (a function inside a task pickled by cloudpickle
# may be looked up twice).
stats = {"hits": 0, "misses": 0, "not_kept": 0}


class _Unstable(Exception):
    """The function captures something that may change without a new identity."""


def kept_pickle(fn):
    """The pickle to send in place of `fn`, made once while nothing it captures changes;
    None when `fn` pickles by reference or cannot be kept."""
    if type(fn) is not _FunctionType or _by_reference(fn):
        return None
    try:
        snapshot = _snapshot(fn)
    except Exception:  # _Unstable, or an object too odd to look at: cloudpickle's
        stats["not_kept"] += 1
        return None
    key = id(fn)
    entry = _kept.get(key)
    if entry is not None and entry[0]() is fn:
        kept_snapshot, blob = entry[1], entry[2]
        # Identity, not equality: 1 == 1.0 == True and 0.0 == -0.0 pickle differently.
        if len(kept_snapshot) == len(snapshot) and all(map(is_, kept_snapshot, snapshot)):
            stats["hits" if blob is not None else "not_kept"] += 1
            return blob
    try:
        blob = _dumps(fn)
    except Exception:
        blob = None  # cloudpickle will manage, or say what is wrong
    if blob is not None and len(blob) > _BLOB_MAX:
        blob = None
    # A refusal is remembered too, so that the function is not pickled again at each
    # submit only to be refused again.
    stats["misses" if blob is not None else "not_kept"] += 1
    if len(_kept) >= _KEPT_MAX:
        _kept.clear()
    import weakref  # here: workers import this module too, and never need it

    _kept[key] = (weakref.ref(fn, lambda _, key=key: _forget(key)), snapshot, blob)
    return blob


def _forget(key):
    entry = _kept.get(key)
    if entry is not None and entry[0]() is None:
        del _kept[key]


def _snapshot(fn):
    """Every object `fn`'s pickle depends on, in a fixed order; raises _Unstable.
    `fn` itself is left out, so that the cache does not keep it alive."""
    out = []
    _capture_function(fn, out, {})
    return out


def _capture_function(fn, out, seen):
    order = seen.get(id(fn))
    if order is not None:  # recursion, direct or mutual: which function, by its rank
        out += (_SEEN, order)
        return
    seen[id(fn)] = order = len(seen)
    if order:
        out.append(fn)
    code = fn.__code__
    names, writes = _facts(code)
    if writes or (_TYPE_PARAMS and fn.__type_params__):  # generic functions: rare
        raise _Unstable
    defaults, cells = fn.__defaults__, fn.__closure__
    out += (code, fn.__name__, fn.__qualname__, fn.__module__, fn.__doc__, defaults)
    if defaults:
        _capture_items(defaults, out, seen)
    for mapping in (fn.__kwdefaults__, fn.__dict__, fn.__annotations__):
        if mapping:
            _capture_mapping(mapping, out, seen)
        else:
            out.append(None)  # None and {} pickle alike here
    if cells:
        for cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:
                value = _EMPTY_CELL
            _capture(value, out, seen)
    if names:
        found = fn.__globals__
        for name in names:
            _capture(found.get(name, _ABSENT), out, seen)


def _capture_mapping(mapping, out, seen):
    out.append(len(mapping))
    for key, value in mapping.items():
        _capture(key, out, seen)
        _capture(value, out, seen)


def _capture(obj, out, seen):
    kind = type(obj)
    if kind is _FunctionType and not _by_reference(obj):
        _capture_function(obj, out, seen)
        return
    out.append(obj)
    if kind in _ATOMS or obj is _ABSENT or obj is _EMPTY_CELL:
        return
    if kind is tuple or kind is frozenset:
        _capture_items(obj, out, seen)
        return
    if kind is _ModuleType:
        if obj.__name__ != "__main__" and sys.modules.get(obj.__name__) is obj:
            return
        raise _Unstable
    if (kind is _FunctionType or kind is _BuiltinFunctionType or isinstance(obj, type)) and _by_reference(obj):
        return
    raise _Unstable


def _capture_items(items, out, seen):
    if len(items) > _TUPLE_MAX:
        raise _Unstable
    for item in items:
        _capture(item, out, seen)


def _by_reference(obj):
    """Whether `obj` pickles by reference: its module (not ``__main__``) is imported
    and its qualified name there leads to this very object."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if type(module_name) is not str or type(qualname) is not str or module_name == "__main__":
        return False
    target = sys.modules.get(module_name)
    if target is None:
        return False
    for part in qualname.split("."):
        if part == "<locals>":
            return False
        target = target.__dict__.get(part, _ABSENT) if hasattr(target, "__dict__") else _ABSENT
        if target is _ABSENT:
            return False
    return target is obj


def _facts(code):
    facts = _code_facts.get(code)
    if facts is None:
        if len(_code_facts) > 1024:
            _code_facts.clear()
        facts = _code_facts[code] = _study(code)
    return facts


def _study(code):
    """(names used, writes) for `code` and the code nested in it. Conservative where it
    is cheap to be: any cell assignment in a function that has closure variables counts
    as assigning one of them (``dis`` would tell which, but takes milliseconds to
    import, on the way to a first result)."""
    from opcode import opmap

    global_writes = {opmap["STORE_GLOBAL"], opmap["DELETE_GLOBAL"]}
    cell_writes = {opmap["STORE_DEREF"], opmap["DELETE_DEREF"]}
    if code.co_freevars:
        global_writes |= cell_writes
    names = set()
    writes = False
    pending = [code]
    while pending:
        current = pending.pop()
        names.update(current.co_names)
        # Wordcode: every instruction (and inline cache entry, zeroed in co_code) is
        # two bytes, the opcode first.
        writes = writes or not global_writes.isdisjoint(current.co_code[::2])
        pending += (c for c in current.co_consts if type(c) is _CodeType)
    return tuple(sorted(names)), writes


# -- the pickle of a kept function -------------------------------------------------------
#
# A kept function captures only objects the standard pickler handles by itself (atoms,
# tuples, functions and classes by reference), modules, and other kept functions. So its
# pickle is made by the standard pickler, plus reductions for those last three; the
# worker loads it with the standard unpickler and this module, without cloudpickle
# (whose import is the largest part of a worker's first task otherwise). It rebuilds
# what cloudpickle would: the function with a globals dict holding the names its code
# uses (one dict shared by the functions of one module) and the module's ``__name__``,
# ``__package__``, ``__file__`` and ``__path__``, and its defaults, closure and attributes.


def _dumps(fn):
    import io
    import pickle

    file = io.BytesIO()
    _FunctionPickler(file).dump(fn)
    return file.getvalue()


def _new_function_pickler():
    import marshal
    import pickle

    class FunctionPickler(pickle.Pickler):
        def __init__(self, file):
            super().__init__(file, protocol=5)
            self._bases = {}  # id(original globals) -> the base globals sent

        def reducer_override(self, obj):
            kind = type(obj)
            if kind is _FunctionType and not _by_reference(obj):
                return self._reduce_function(obj)
            if kind is _CodeType:
                # marshal keeps the file name and line numbers, for the worker's tracebacks.
                return marshal.loads, (marshal.dumps(obj),)
            if kind is _ModuleType:
                return _import_module, (obj.__name__,)
            return NotImplemented

        def _reduce_function(self, fn):
            found = fn.__globals__
            base = self._bases.get(id(found))
            if base is None:
                base = self._bases[id(found)] = {
                    k: found[k] for k in _MODULE_NAMES if k in found
                }
            names, _ = _facts(fn.__code__)
            cells = fn.__closure__ or ()
            state = (
                {name: found[name] for name in names if name in found},
                fn.__defaults__,
                fn.__kwdefaults__,
                fn.__dict__,
                fn.__qualname__,
                fn.__module__,
                fn.__doc__,
                fn.__annotations__,
                tuple(_cell_state(cell) for cell in cells),
            )
            args = (fn.__code__, base, fn.__name__, len(cells))
            return _new_function, args, state, None, None, _fill_function

    return FunctionPickler


_MODULE_NAMES = ("__package__", "__name__", "__path__", "__file__")


def _cell_state(cell):
    try:
        return (cell.cell_contents,)
    except ValueError:
        return ()  # an empty cell


class _LazyPickler:
    """`_FunctionPickler(file)`; the class is made at the first use (parent only)."""

    cls = None

    def __call__(self, file):
        if self.cls is None:
            self.cls = _new_function_pickler()
        return self.cls(file)


_FunctionPickler = _LazyPickler()


def _import_module(name):
    """The module `name` (absolute), imported if need be: `importlib.import_module`
    without importing importlib, which would cost a worker a millisecond on the way to
    its first result."""
    __import__(name)
    return sys.modules[name]


def _new_function(code, base, name, n_cells):
    base.setdefault("__builtins__", __builtins__)
    cells = tuple(_CellType() for _ in range(n_cells)) or None
    return _FunctionType(code, base, name, None, cells)


def _fill_function(fn, state):
    found, defaults, kwdefaults, attrs, qualname, module, doc, annotations, cells = state
    fn.__globals__.update(found)
    fn.__defaults__ = defaults
    fn.__kwdefaults__ = kwdefaults
    fn.__dict__.update(attrs)
    fn.__qualname__ = qualname
    fn.__module__ = module
    fn.__doc__ = doc
    fn.__annotations__ = annotations
    for cell, contents in zip(fn.__closure__ or (), cells):
        if contents:
            cell.cell_contents = contents[0]


# -- worker side ------------------------------------------------------------------------

# Worker: pickled function -> the function it rebuilt from those bytes.
_loaded = {}
_LOADED_MAX = 256


def load(blob):
    """The function pickled in `blob`, rebuilt at its first use in this process."""
    fn = _loaded.get(blob)
    if fn is None:
        fn = _loads(blob)
        if len(_loaded) >= _LOADED_MAX:
            del _loaded[next(iter(_loaded))]
        _loaded[blob] = fn
    return fn
