"""Functions sent by value are pickled once (loky._callables), and the cache never runs
an old body or old state: every change to what the function's pickle depends on is
seen at the next submit, as if it were pickled afresh each time."""

import sys
import types

import pytest

import helpers
import loky
from loky import _callables

pytestmark = pytest.mark.timeout(120)


def main_namespace(source):
    """The namespace of a module named ``__main__`` (its functions travel by value, as a
    script's do), holding what `source` defines."""
    namespace = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace


@pytest.fixture
def executor(executor_factory):
    return executor_factory(max_workers=1)


def run(executor, fn, *args):
    return executor.submit(fn, *args).result(timeout=30)


def counts():
    return dict(_callables.stats)


def delta(before):
    return {key: value - before[key] for key, value in _callables.stats.items()}


def worker_keeps(executor):
    return run(executor, helpers.loaded_callables)


def test_a_main_function_is_pickled_once_and_rebuilt_once_per_worker(executor):
    ns = main_namespace("def f(x):\n    return x + 1\n")
    before = counts()
    assert [run(executor, ns["f"], i) for i in range(5)] == [1, 2, 3, 4, 5]
    assert delta(before) == {"hits": 4, "misses": 1, "not_kept": 0}
    assert worker_keeps(executor) == 1


def test_redefinition_in_main_runs_the_new_body(executor):
    ns = main_namespace("def f(x):\n    return x + 1\n")
    old = ns["f"]
    assert run(executor, ns["f"], 1) == 2
    exec("def f(x):\n    return x + 100\n", ns)
    assert run(executor, ns["f"], 1) == 101
    # The old function object is still the old function.
    assert run(executor, old, 1) == 2


def test_redefining_a_global_the_function_calls_is_seen(executor):
    ns = main_namespace(
        "def helper(x):\n    return x * 2\n" "def f(x):\n    return helper(x)\n"
    )
    assert run(executor, ns["f"], 5) == 10
    exec("def helper(x):\n    return x * 3\n", ns)
    before = counts()
    assert run(executor, ns["f"], 5) == 15
    assert delta(before)["misses"] == 1
    # A global that did not exist when the function was first sent, then does.
    ns2 = main_namespace("def g():\n    return OFFSET if 'OFFSET' in globals() else -1\n")
    assert run(executor, ns2["g"]) == -1
    ns2["OFFSET"] = 7
    assert run(executor, ns2["g"]) == 7


def test_rebinding_a_module_attribute_is_seen(executor, monkeypatch):
    # A lambda of a module travels by value, with the module globals it reads.
    assert run(executor, helpers.scale_by_factor, 2) == 2 * helpers.FACTOR
    monkeypatch.setattr(helpers, "FACTOR", 5)
    assert run(executor, helpers.scale_by_factor, 2) == 10
    # A global bound to a module function, then to another one.
    ns = main_namespace("import helpers\nop = helpers.square\ndef f(x):\n    return op(x)\n")
    assert run(executor, ns["f"], 3) == 9
    ns["op"] = helpers.identity
    assert run(executor, ns["f"], 3) == 3


def test_a_module_function_rebound_under_its_name_is_not_kept_by_reference(
    executor, monkeypatch
):
    ns = main_namespace("import helpers\nfrom helpers import square\ndef f(x):\n    return square(x)\n")
    assert run(executor, ns["f"], 4) == 16
    # `square` is no longer found under its name: it would now travel by value.
    monkeypatch.setattr(helpers, "square", helpers.identity)
    before = counts()
    assert run(executor, ns["f"], 4) == 16
    assert delta(before)["hits"] == 0


def test_a_closure_over_changed_state_sees_the_new_state(executor):
    ns = main_namespace(
        "def make(n):\n"
        "    def f():\n        return n\n"
        "    def set_n(value):\n        nonlocal n\n        n = value\n"
        "    return f, set_n\n"
    )
    f, set_n = ns["make"](1)
    assert run(executor, f) == 1
    set_n(5)
    assert run(executor, f) == 5
    # State that changes in place (a list) is never kept: pickled at each submit.
    data = [1]
    total = eval("lambda: sum(data)", {"__name__": "__main__", "data": data})
    before = counts()
    assert run(executor, total) == 1
    data.append(2)
    assert run(executor, total) == 3
    changes = delta(before)
    assert changes["hits"] == changes["misses"] == 0 and changes["not_kept"] > 0


def test_defaults_and_attributes_are_part_of_the_function(executor):
    ns = main_namespace("def f(x, k=1):\n    return x * k + getattr(f, 'extra', 0)\n")
    f = ns["f"]
    assert run(executor, f, 2) == 2
    f.__defaults__ = (10,)
    assert run(executor, f, 2) == 20
    f.extra = 1
    assert run(executor, f, 2) == 21


def test_a_class_defined_in_main_is_seen_as_it_is_now(executor):
    ns = main_namespace(
        "class Op:\n    def apply(self, x):\n        return x + 1\n"
        "def f(x):\n    return Op().apply(x)\n"
    )
    before = counts()
    assert run(executor, ns["f"], 1) == 2
    ns["Op"].apply = lambda self, x: x + 50  # the same class, changed in place
    assert run(executor, ns["f"], 1) == 51
    exec("class Op:\n    def apply(self, x):\n        return x + 100\n", ns)
    assert run(executor, ns["f"], 1) == 101
    # A function that uses a class of __main__ is never kept.
    assert delta(before)["hits"] == 0


def test_a_function_assigning_globals_starts_fresh_at_each_task(executor):
    ns = main_namespace(
        "count = 0\n"
        "def bump():\n    global count\n    count += 1\n    return count\n"
    )
    assert [run(executor, ns["bump"]) for _ in range(3)] == [1, 1, 1]


def test_a_closure_assigning_its_variable_starts_fresh_at_each_task(executor):
    ns = main_namespace(
        "def make():\n    n = 0\n"
        "    def bump():\n        nonlocal n\n        n += 1\n        return n\n"
        "    return bump\n"
    )
    bump = ns["make"]()
    assert [run(executor, bump) for _ in range(3)] == [1, 1, 1]


def test_script_redefining_its_function_between_submits(tmp_path):
    result = helpers.run_script(
        tmp_path,
        """
        from loky import get_reusable_executor

        def work(x):
            return ("first", x)

        if __name__ == "__main__":
            executor = get_reusable_executor(max_workers=2)
            print(executor.submit(work, 1).result())

            def work(x):
                return ("second", x)

            print(executor.submit(work, 2).result())
            print(list(executor.map(work, [3, 4])))
            executor.shutdown()
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "('first', 1)",
        "('second', 2)",
        "[('second', 3), ('second', 4)]",
    ]


def test_a_main_function_needs_no_cloudpickle_on_either_side(tmp_path):
    # cloudpickle's import is most of a cold start's cost: a function of the script
    # that can be kept is pickled without it and rebuilt without it.
    result = helpers.run_script(
        tmp_path,
        """
        import sys
        from loky import get_reusable_executor

        def work(x):
            import sys
            return x + 1, "cloudpickle" in sys.modules

        if __name__ == "__main__":
            executor = get_reusable_executor(max_workers=1)
            print(executor.submit(work, 1).result(), "cloudpickle" in sys.modules)
            executor.shutdown()
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(2,", "False)", "False"]


def test_a_function_with_a_large_pickle_is_not_kept(executor):
    ns = main_namespace("def f():\n    return len(BLOB)\n")
    ns["BLOB"] = b"x" * (2 << 20)
    before = counts()
    assert run(executor, ns["f"]) == 2 << 20
    assert run(executor, ns["f"]) == 2 << 20
    changes = delta(before)
    assert changes["hits"] == changes["misses"] == 0 and changes["not_kept"] > 0
    assert worker_keeps(executor) == 0


def test_the_cache_does_not_keep_functions_alive():
    import gc
    import weakref

    ns = main_namespace("def f(x):\n    return x\n")
    f = ns.pop("f")
    _callables.kept_pickle(f)
    assert id(f) in _callables._kept
    ref = weakref.ref(f)
    key = id(f)
    del f, ns
    gc.collect()
    assert ref() is None
    assert key not in _callables._kept


def test_module_functions_and_builtins_are_not_kept():
    for fn in (helpers.square, len, [].append, loky.ProcessPoolExecutor):
        assert _callables.kept_pickle(fn) is None


def test_kept_with_reducers_unless_they_reduce_functions(executor_factory):
    ns = main_namespace("def f(x):\n    return x + 1\n")
    executor = executor_factory(
        max_workers=1, job_reducers={bytearray: lambda b: (bytearray, (bytes(b),))}
    )
    before = counts()
    assert [run(executor, ns["f"], i) for i in range(3)] == [1, 2, 3]
    assert delta(before) == {"hits": 2, "misses": 1, "not_kept": 0}
    for kind in (types.FunctionType, types.ModuleType, type):
        serializer = executor_factory(max_workers=1, job_reducers={kind: None})._serializer
        serializer._new_pickler()
        assert serializer._pickler.keep_functions is False


def test_functions_inside_a_task_are_kept_too(executor):
    import functools

    ns = main_namespace("def f(x):\n    return x * 10\n")
    before = counts()
    # As an argument, inside a partial, in map's chunks (a partial of a chunk runner).
    assert run(executor, helpers.apply, ns["f"], 1) == 10
    assert run(executor, helpers.apply, ns["f"], 2) == 20
    assert run(executor, functools.partial(ns["f"], 3)) == 30
    assert list(executor.map(ns["f"], range(6), chunksize=3)) == [0, 10, 20, 30, 40, 50]
    changes = delta(before)
    assert changes["misses"] == 1 and changes["hits"] >= 4, changes
    assert worker_keeps(executor) == 1
    # A redefinition is seen there as well.
    exec("def f(x):\n    return x * 100\n", ns)
    assert run(executor, helpers.apply, ns["f"], 1) == 100
    assert list(executor.map(ns["f"], range(4), chunksize=2)) == [0, 100, 200, 300]
