"""Issue 4: pickling options — `set_loky_pickler`, LOKY_PICKLER, `job_reducers` /
`result_reducers`, and `wrap_non_picklable_objects`."""

import json
import os
import textwrap

import pytest

import loky
from loky import set_loky_pickler, wrap_non_picklable_objects
from loky.backend import reduction

import helpers
import lifecycle_tasks as tasks

pytestmark = pytest.mark.timeout(60)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# Tests of the "pickle" pickler run in a fresh interpreter, so that their outcome does
# not depend on what earlier tests pickled (dispatch tables are cached per pickler).


def run_fresh(tmp_path, body, env=None):
    """Run `body` in a fresh interpreter (tests dir importable); it fills the dict
    `out`, returned here (decoded from JSON)."""
    source = (
        "import json, pickle, sys\n"
        f"sys.path.insert(0, {TESTS_DIR!r})\n"
        "out = {}\n"
        "try:\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\nfinally:\n"
        "    print('OUT' + json.dumps(out))\n"
    )
    result = helpers.run_script(tmp_path, source, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    line = [l for l in result.stdout.splitlines() if l.startswith("OUT")][-1]
    return json.loads(line[3:])


@pytest.fixture(autouse=True)
def restore_pickler(monkeypatch):
    monkeypatch.delenv("LOKY_PICKLER", raising=False)
    previous = reduction.get_loky_pickler_name()
    yield
    set_loky_pickler(previous)


# -- set_loky_pickler -----------------------------------------------------------------


def test_default_pickler_is_cloudpickle():
    assert reduction.get_loky_pickler_name() == "cloudpickle"
    assert loky.set_loky_pickler is reduction.set_loky_pickler


def test_pickle_pickler_refuses_lambdas_with_a_clear_error(tmp_path):
    out = run_fresh(
        tmp_path,
        """
        import helpers, lifecycle_tasks
        from loky import ProcessPoolExecutor, set_loky_pickler
        from loky.backend import reduction

        set_loky_pickler("pickle")
        out["name"] = reduction.get_loky_pickler_name()
        with ProcessPoolExecutor(max_workers=1) as executor:
            future = executor.submit(lambda x: x + 1, 1)
            try:
                future.result(timeout=30)
            except pickle.PicklingError as exc:
                out["error"] = str(exc)
                out["cause"] = repr(exc.__cause__)
            # Functions importable by name still work, on the same executor.
            out["square"] = executor.submit(helpers.square, 4).result(timeout=30)
        """,
    )
    assert out["name"] == "pickle"
    assert out["error"] == "Could not pickle the task to send it to the workers."
    assert "lambda" in out["cause"]
    assert out["square"] == 16


def test_pickle_pickler_dumps_plain_objects(tmp_path):
    out = run_fresh(
        tmp_path,
        """
        from loky.backend import reduction

        reduction.set_loky_pickler("pickle")
        data = {"a": [1, 2.5, "x"], "b": [None, True]}
        out["same"] = pickle.loads(reduction.dumps(data)) == data
        """,
    )
    assert out["same"] is True


def test_set_loky_pickler_without_argument_restores_cloudpickle(tmp_path):
    out = run_fresh(
        tmp_path,
        """
        from loky import ProcessPoolExecutor, set_loky_pickler
        from loky.backend import reduction

        set_loky_pickler("pickle")
        with ProcessPoolExecutor(max_workers=1) as executor:
            try:
                executor.submit(lambda: 1).result(timeout=30)
            except pickle.PicklingError:
                out["refused"] = True
            set_loky_pickler()
            out["name"] = reduction.get_loky_pickler_name()
            out["lambda"] = executor.submit(lambda x: x * 3, 5).result(timeout=30)
        """,
    )
    assert out == {"refused": True, "name": "cloudpickle", "lambda": 15}


def test_switching_back_to_cloudpickle_keeps_its_abilities(tmp_path):
    # After using another pickler first, cloudpickle still pickles what only it can
    # (a mappingproxy goes through cloudpickle's own dispatch table).
    out = run_fresh(
        tmp_path,
        """
        import types
        from loky.backend import reduction

        reduction.set_loky_pickler("pickle")
        try:
            reduction.dumps([1, 2])
        except Exception as exc:
            out["pickle_error"] = type(exc).__name__
        reduction.set_loky_pickler("cloudpickle")
        proxy = types.MappingProxyType({"a": 1})
        out["proxy"] = dict(pickle.loads(reduction.dumps(proxy)))
        out["lambda"] = pickle.loads(reduction.dumps(lambda: 7))()
        """,
    )
    assert out["proxy"] == {"a": 1}
    assert out["lambda"] == 7


def test_set_loky_pickler_without_argument_restores_cloudpickle_in_new_executors(
    executor_factory,
):
    # The same round trip, without depending on the "pickle" pickler working.
    set_loky_pickler("lifecycle_tasks")
    assert reduction.get_loky_pickler_name() == "lifecycle_tasks"
    set_loky_pickler()
    assert reduction.get_loky_pickler_name() == "cloudpickle"
    executor = executor_factory(max_workers=1)
    assert executor.submit(lambda x: x * 3, 5).result(timeout=30) == 15
    assert executor.submit(tasks.loky_pickler_name_in_worker).result(timeout=30) == "cloudpickle"


def test_set_loky_pickler_none_reads_the_environment(monkeypatch):
    monkeypatch.setenv("LOKY_PICKLER", "lifecycle_tasks")
    set_loky_pickler()
    assert reduction.get_loky_pickler_name() == "lifecycle_tasks"
    monkeypatch.delenv("LOKY_PICKLER")
    set_loky_pickler(None)
    assert reduction.get_loky_pickler_name() == "cloudpickle"


def test_loky_pickler_pickle_from_the_environment(tmp_path):
    result = helpers.run_script(
        tmp_path,
        """
        import pickle
        from loky import ProcessPoolExecutor
        from loky.backend import reduction
        import operator

        print(reduction.get_loky_pickler_name())
        with ProcessPoolExecutor(max_workers=1) as executor:
            print(executor.submit(operator.neg, 3).result(timeout=30))
            try:
                executor.submit(lambda: 1).result(timeout=30)
            except pickle.PicklingError as exc:
                print("PicklingError", exc)
        """,
        env={"LOKY_PICKLER": "pickle"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "pickle"
    assert lines[1] == "-3"
    assert lines[2].startswith("PicklingError Could not pickle the task")


def test_loky_pickler_cloudpickle_from_the_environment(tmp_path):
    result = helpers.run_script(
        tmp_path,
        """
        from loky import ProcessPoolExecutor
        from loky.backend import reduction

        print(reduction.get_loky_pickler_name())
        with ProcessPoolExecutor(max_workers=1) as executor:
            print(executor.submit(lambda x: x + 1, 41).result(timeout=30))
        """,
        env={"LOKY_PICKLER": "cloudpickle"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cloudpickle", "42"]


def test_invalid_loky_pickler_in_the_environment_names_it(tmp_path):
    result = helpers.run_script(
        tmp_path,
        """
        import loky
        loky.get_reusable_executor
        """,
        env={"LOKY_PICKLER": "no_such_pickler_module"},
        timeout=60,
    )
    assert result.returncode != 0
    assert "no_such_pickler_module" in result.stderr
    assert "LOKY_PICKLER" in result.stderr


@pytest.mark.parametrize(
    "name, error",
    [("no_such_pickler_module", ImportError), ("json", AttributeError)],
)
def test_invalid_pickler_name_is_a_clear_error(name, error, executor_factory):
    with pytest.raises(error, match=name):
        set_loky_pickler(name)
    # The previous pickler stays in force.
    assert reduction.get_loky_pickler_name() == "cloudpickle"
    executor = executor_factory(max_workers=1)
    assert executor.submit(lambda: "still cloudpickle").result(timeout=30) == "still cloudpickle"


def test_a_module_with_a_pickler_class(tmp_path):
    # "lifecycle_tasks" defines `Pickler` (a pickle.Pickler that records each dump).
    out = run_fresh(
        tmp_path,
        """
        import helpers, lifecycle_tasks
        from loky import ProcessPoolExecutor, set_loky_pickler
        from loky.backend import reduction

        set_loky_pickler("lifecycle_tasks")
        out["name"] = reduction.get_loky_pickler_name()
        with ProcessPoolExecutor(max_workers=1) as executor:
            out["square"] = executor.submit(helpers.square, 6).result(timeout=30)
            out["used"] = "tuple" in lifecycle_tasks.DUMPS
            try:
                executor.submit(lambda: 1).result(timeout=30)
            except pickle.PicklingError as exc:
                out["lambda"] = str(exc)
        """,
    )
    assert out == {
        "name": "lifecycle_tasks",
        "square": 36,
        "used": True,
        "lambda": "Could not pickle the task to send it to the workers.",
    }


def test_a_module_with_a_pickler_class_is_accepted():
    # Choosing it works and is reported (pickling with it: see the test above).
    set_loky_pickler("lifecycle_tasks")
    assert reduction.get_loky_pickler_name() == "lifecycle_tasks"
    assert issubclass(reduction.get_loky_pickler(), tasks.Pickler)


# -- job_reducers / result_reducers --------------------------------------------------

REDUCERS = dict(
    job_reducers={tasks.Tagged: tasks.reduce_tagged_for_job},
    result_reducers={tasks.Tagged: tasks.reduce_tagged_for_result},
)


def test_job_reducers_apply_to_nested_objects_in_tasks(executor_factory):
    executor = executor_factory(max_workers=1, **REDUCERS)
    arg = {"a": [tasks.Tagged(1), (tasks.Tagged(2), 3)], "b": tasks.Tagged("x")}
    assert executor.submit(tasks.describe, arg).result(timeout=30) == {
        "a": ["job-reduced-1", ("job-reduced-2", 3)],
        "b": "job-reduced-x",
    }
    # Keyword arguments too.
    assert executor.submit(tasks.describe, obj=[tasks.Tagged(5)]).result(timeout=30) == [
        "job-reduced-5"
    ]


def test_result_reducers_apply_to_results_in_workers(executor_factory):
    executor = executor_factory(max_workers=1, **REDUCERS)
    assert executor.submit(tasks.make_tagged, [1, 2]).result(timeout=30) == {
        "items": ["result-reduced-1", "result-reduced-2"],
        "plain": 1,
    }


def test_without_reducers_objects_travel_as_themselves(executor_factory):
    executor = executor_factory(max_workers=1)
    assert executor.submit(tasks.describe, [tasks.Tagged(1)]).result(timeout=30) == [
        ("Tagged", 1)
    ]
    assert executor.submit(tasks.make_tagged, [3]).result(timeout=30) == {
        "items": [tasks.Tagged(3)],
        "plain": 1,
    }


def test_job_reducers_only_also_reduce_results(executor_factory):
    # As in loky 3.6: without result_reducers, the job reducers are used for results.
    executor = executor_factory(
        max_workers=1, job_reducers={tasks.Tagged: tasks.reduce_tagged_for_job}
    )
    assert executor.submit(tasks.make_tagged, [1]).result(timeout=30) == {
        "items": ["job-reduced-1"],
        "plain": 1,
    }


def test_result_reducers_only(executor_factory):
    executor = executor_factory(
        max_workers=1, result_reducers={tasks.Tagged: tasks.reduce_tagged_for_result}
    )
    assert executor.submit(tasks.describe, [tasks.Tagged(1)]).result(timeout=30) == [
        ("Tagged", 1)
    ]
    assert executor.submit(tasks.make_tagged, [2]).result(timeout=30)["items"] == [
        "result-reduced-2"
    ]


def test_reducers_can_be_lambdas(executor_factory):
    executor = executor_factory(
        max_workers=1,
        job_reducers={tasks.Tagged: lambda obj: (int, (obj.value * 10,))},
        result_reducers={tasks.Tagged: lambda obj: (str, (f"<{obj.value}>",))},
    )
    assert executor.submit(tasks.describe, [tasks.Tagged(4)]).result(timeout=30) == [40]
    assert executor.submit(tasks.make_tagged, [7]).result(timeout=30)["items"] == ["<7>"]


def test_reducers_do_not_leak_to_other_executors(executor_factory):
    with_reducers = executor_factory(max_workers=1, **REDUCERS)
    plain = executor_factory(max_workers=1)
    assert with_reducers.submit(tasks.describe, tasks.Tagged(1)).result(timeout=30) == (
        "job-reduced-1"
    )
    assert plain.submit(tasks.describe, tasks.Tagged(1)).result(timeout=30) == ("Tagged", 1)


def test_reusable_executor_with_reducers():
    executor = loky.get_reusable_executor(max_workers=1, **REDUCERS)
    assert executor.submit(tasks.describe, [tasks.Tagged(1)]).result(timeout=30) == [
        "job-reduced-1"
    ]
    assert executor.submit(tasks.make_tagged, [2]).result(timeout=30)["items"] == [
        "result-reduced-2"
    ]
    executor.shutdown(wait=True, kill_workers=True)


# -- wrap_non_picklable_objects -------------------------------------------------------


def test_wrapped_lambda_travels_with_the_pickle_pickler(tmp_path):
    out = run_fresh(
        tmp_path,
        """
        import lifecycle_tasks
        from loky import ProcessPoolExecutor, set_loky_pickler, wrap_non_picklable_objects

        set_loky_pickler("pickle")
        wrapped = wrap_non_picklable_objects(lambda x: x + 1, keep_wrapper=True)
        with ProcessPoolExecutor(max_workers=1) as executor:
            try:
                executor.submit(lambda x: x + 1, 41).result(timeout=30)
            except pickle.PicklingError:
                out["bare"] = "refused"
            out["wrapped"] = executor.submit(wrapped, 41).result(timeout=30)
            # As an argument, and still wrapped in the worker (keep_wrapper=True).
            out["as_arg"] = executor.submit(lifecycle_tasks.call, wrapped, 1).result(
                timeout=30
            )
            out["type"] = executor.submit(lifecycle_tasks.type_name, wrapped).result(
                timeout=30
            )
        """,
    )
    assert out == {"bare": "refused", "wrapped": 42, "as_arg": 2, "type": "CallableObjectWrapper"}


def test_wrapped_class_instances_travel_with_the_pickle_pickler(tmp_path):
    out = run_fresh(
        tmp_path,
        """
        import lifecycle_tasks
        from loky import ProcessPoolExecutor, set_loky_pickler, wrap_non_picklable_objects

        set_loky_pickler("pickle")

        def make():
            class Local:
                def __init__(self, value):
                    self.value = value

                def triple(self):
                    return self.value * 3

            return Local

        Wrapped = wrap_non_picklable_objects(make())
        with ProcessPoolExecutor(max_workers=1) as executor:
            out["triple"] = executor.submit(
                lifecycle_tasks.call_method, Wrapped(5), "triple"
            ).result(timeout=30)
        """,
    )
    assert out == {"triple": 15}


def test_keep_wrapper(executor_factory):
    executor = executor_factory(max_workers=1)
    kept = wrap_non_picklable_objects(lambda x: x, keep_wrapper=True)
    dropped = wrap_non_picklable_objects(lambda x: x, keep_wrapper=False)
    assert executor.submit(tasks.type_name, kept).result(timeout=30) == "CallableObjectWrapper"
    assert executor.submit(tasks.type_name, dropped).result(timeout=30) == "function"
    # The wrapper is callable and passes calls through in this process too.
    assert kept(5) == 5


def test_default_keeps_the_wrapper(executor_factory):
    executor = executor_factory(max_workers=1)
    wrapped = wrap_non_picklable_objects(lambda: None)
    assert executor.submit(tasks.type_name, wrapped).result(timeout=30) == "CallableObjectWrapper"


def test_wrapped_object_attributes_pass_through(executor_factory):
    class Local:
        def __init__(self):
            self.value = 12

        def double(self):
            return self.value * 2

    executor = executor_factory(max_workers=1)
    wrapped = wrap_non_picklable_objects(Local())
    assert wrapped.value == 12
    assert executor.submit(tasks.call_method, wrapped, "double").result(timeout=30) == 24


def test_wrapped_class_instances_travel(executor_factory):
    class Local:
        def __init__(self, value):
            self.value = value

        def triple(self):
            return self.value * 3

    Wrapped = wrap_non_picklable_objects(Local)
    assert Wrapped.__name__ == "Local"
    obj = Wrapped(5)
    executor = executor_factory(max_workers=1)
    assert executor.submit(tasks.call_method, obj, "triple").result(timeout=30) == 15
