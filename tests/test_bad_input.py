"""Issue 3: bad arguments are refused at the call, before anything is started."""

import psutil
import pytest

from loky import ProcessPoolExecutor, get_reusable_executor

import helpers

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def nothing_started():
    """Check that the code under test starts no process and no thread."""
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    threads_before = me.num_threads()
    yield
    assert {p.pid for p in me.children(recursive=True)} <= children_before
    assert me.num_threads() <= threads_before


@pytest.mark.parametrize("max_workers", [0, -1, -100])
def test_max_workers_not_positive(nothing_started, max_workers):
    with pytest.raises(ValueError) as info:
        ProcessPoolExecutor(max_workers=max_workers)
    assert str(info.value) == "max_workers must be greater than 0"


@pytest.mark.parametrize("max_workers", [0, -3])
def test_reusable_executor_max_workers_not_positive(nothing_started, max_workers):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        get_reusable_executor(max_workers=max_workers)


@pytest.mark.parametrize(
    "max_workers, shown", [("4", "'4' (str)"), (1.5, "1.5 (float)"), (True, "True (bool)")]
)
@pytest.mark.parametrize("make", [ProcessPoolExecutor, get_reusable_executor])
def test_max_workers_wrong_type(nothing_started, make, max_workers, shown):
    with pytest.raises(TypeError) as info:
        make(max_workers=max_workers)
    assert str(info.value) == f"max_workers must be an int or None, got {shown}"


@pytest.mark.parametrize("make", [ProcessPoolExecutor, get_reusable_executor])
def test_timeout_wrong_type_or_value(nothing_started, make):
    with pytest.raises(TypeError) as info:
        make(max_workers=1, timeout="x")
    assert str(info.value) == "timeout must be a number of seconds or None, got 'x' (str)"
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        make(max_workers=1, timeout=-1)


def test_integral_types_from_numpy_are_accepted():
    np = pytest.importorskip("numpy")
    executor = ProcessPoolExecutor(max_workers=np.int64(1), timeout=np.float64(5))
    try:
        assert executor.submit(helpers.square, 3).result(timeout=30) == 9
    finally:
        executor.shutdown()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"max_tasks_per_child": "3"}, TypeError, "max_tasks_per_child must be an int"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child must be greater than 0"),
        ({"job_reducers": [1]}, TypeError, "job_reducers must be a dict"),
        ({"result_reducers": "x"}, TypeError, "result_reducers must be a dict"),
        ({"initargs": 5}, TypeError, r"initargs must be a tuple of arguments, got 5 \(int\)"),
        ({"initargs": "ab"}, TypeError, "initargs must be a tuple"),
        ({"context": 3}, TypeError, "context must be None"),
        ({"context": "nope"}, ValueError, "Unknown start method 'nope'"),
        (
            {"inner_max_num_threads": "2"},
            TypeError,
            r"^inner_max_num_threads must be an int or None, got '2' \(str\)$",
        ),
        (
            {"inner_max_num_threads": 1.0},
            TypeError,
            r"^inner_max_num_threads must be an int or None, got 1.0 \(float\)$",
        ),
        ({"inner_max_num_threads": 0}, ValueError, "^inner_max_num_threads must be greater than 0$"),
        ({"inner_max_num_threads": -2}, ValueError, "^inner_max_num_threads must be greater"),
        (
            {"forward_logging": 2.5},
            TypeError,
            r"^forward_logging must be a logging level .* got 2.5 \(float\)$",
        ),
        ({"forward_logging": True}, TypeError, r"^forward_logging must be .* got True \(bool\)"),
        ({"forward_logging": -10}, ValueError, "^forward_logging must be a logging level >= 0"),
        ({"forward_logging": "LOUD"}, ValueError, "^forward_logging .* 'LOUD' is not a level name"),
    ],
)
@pytest.mark.parametrize("make", [ProcessPoolExecutor, get_reusable_executor])
def test_other_arguments_checked(nothing_started, make, kwargs, error, message):
    with pytest.raises(error, match=message):
        make(max_workers=1, **kwargs)


def test_map_arguments_checked(nothing_started):
    executor = ProcessPoolExecutor(max_workers=1)
    with pytest.raises(TypeError, match="chunksize must be an int, got '2' .str."):
        executor.map(helpers.square, range(3), chunksize="2")
    with pytest.raises(TypeError, match="timeout must be a number of seconds or None"):
        executor.map(helpers.square, range(3), timeout="1")
    executor.shutdown()


def test_map_unknown_keyword_arguments_are_ignored_with_a_warning(executor_factory):
    # loky ignores them silently; code written for it keeps running, and is told.
    executor = executor_factory(max_workers=1)
    with pytest.warns(UserWarning, match="ignores the keyword arguments .*'chunk_size'"):
        results = executor.map(helpers.square, range(3), chunk_size=2)
    assert list(results) == [0, 1, 4]


@pytest.mark.parametrize("chunksize", [0, -1])
def test_chunksize_below_one(nothing_started, chunksize):
    executor = ProcessPoolExecutor(max_workers=1)
    # Raised by the call itself, not when the results are consumed.
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(helpers.square, range(10), chunksize=chunksize)
    assert executor._worker_pids() == []
    executor.shutdown()


def test_chunksize_below_one_on_a_running_executor(executor_factory):
    executor = executor_factory(max_workers=1)
    assert executor.submit(helpers.square, 2).result(timeout=30) == 4
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(helpers.square, range(10), chunksize=0)
    # Nothing was submitted, and the executor still works.
    assert list(executor.map(helpers.square, range(3), chunksize=2)) == [0, 1, 4]


@pytest.mark.parametrize("initializer", [42, "helpers.set_initialized", [helpers.set_initialized]])
def test_initializer_not_callable(nothing_started, initializer):
    with pytest.raises(TypeError, match="initializer"):
        ProcessPoolExecutor(max_workers=1, initializer=initializer)


def test_reusable_executor_initializer_not_callable(nothing_started):
    with pytest.raises(TypeError, match="initializer"):
        get_reusable_executor(max_workers=1, initializer=3)


@pytest.mark.parametrize(
    "env",
    [
        {"LOKY_TEST": 1},
        {"LOKY_TEST": None},
        {"LOKY_TEST": b"bytes"},
        {1: "one"},
        {b"LOKY_TEST": "x"},
    ],
    ids=["int-value", "none-value", "bytes-value", "int-key", "bytes-key"],
)
def test_env_entry_not_str(nothing_started, env):
    with pytest.raises(TypeError) as info:
        ProcessPoolExecutor(max_workers=1, env=env)
    assert "env" in str(info.value)


def test_env_not_a_mapping(nothing_started):
    with pytest.raises(TypeError, match="env"):
        ProcessPoolExecutor(max_workers=1, env=["LOKY_TEST=1"])


def test_reusable_executor_bad_env_then_good_call():
    with pytest.raises(TypeError, match="env"):
        get_reusable_executor(max_workers=1, env={"LOKY_TEST": 1})
    executor = get_reusable_executor(max_workers=1, env={"LOKY_TEST": "1"})
    assert executor.submit(helpers.getenv, "LOKY_TEST").result(timeout=30) == "1"
    executor.shutdown()


def test_negative_idle_timeout(nothing_started):
    with pytest.raises(ValueError, match="timeout"):
        ProcessPoolExecutor(max_workers=1, timeout=-1)


def test_reuse_value(nothing_started):
    with pytest.raises(ValueError, match="reuse"):
        get_reusable_executor(max_workers=1, reuse="sometimes")


def test_submitting_a_non_callable_fails_that_future_only(executor_factory):
    executor = executor_factory(max_workers=1)
    future = executor.submit(None)
    exc = future.exception(timeout=30)
    assert isinstance(exc, TypeError) and "not callable" in str(exc)
    assert executor.submit(helpers.square, 3).result(timeout=30) == 9


def test_bad_input_after_a_good_executor_leaves_it_alone(executor_factory):
    executor = executor_factory(max_workers=1)
    pid = executor.submit(helpers.get_pid).result(timeout=30)
    for kwargs in ({"max_workers": 0}, {"initializer": 1}, {"env": {"A": 1}}):
        with pytest.raises((ValueError, TypeError)):
            ProcessPoolExecutor(**kwargs)
    assert executor.submit(helpers.get_pid).result(timeout=30) == pid


def test_the_constructors_take_lokys_arguments_in_lokys_order():
    import inspect

    def parameters(function):
        return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]

    # loky 3.7's, then what this package adds (max_tasks_per_child and after).
    assert parameters(ProcessPoolExecutor) == [
        ("max_workers", None),
        ("job_reducers", None),
        ("result_reducers", None),
        ("timeout", None),
        ("context", None),
        ("initializer", None),
        ("initargs", ()),
        ("env", None),
        ("max_tasks_per_child", None),
        ("max_worker_memory", None),
        ("forward_logging", None),
        ("inner_max_num_threads", None),
    ]
    assert parameters(get_reusable_executor) == [
        ("max_workers", None),
        ("context", None),
        ("timeout", 10),
        ("kill_workers", False),
        ("reuse", "auto"),
        ("job_reducers", None),
        ("result_reducers", None),
        ("initializer", None),
        ("initargs", ()),
        ("env", None),
        ("max_tasks_per_child", None),
        ("max_worker_memory", None),
        ("forward_logging", None),
        ("inner_max_num_threads", None),
    ]


@pytest.mark.parametrize("make", [ProcessPoolExecutor, get_reusable_executor])
def test_of_several_wrong_arguments_the_first_is_named(nothing_started, make):
    with pytest.raises(TypeError, match="^max_workers must be"):
        make(max_workers="2", timeout="3", env=[1])
    with pytest.raises(TypeError, match="^timeout must be"):
        make(timeout="3", env=[1], initializer=3)
