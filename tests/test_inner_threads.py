"""`inner_max_num_threads`: the workers' BLAS and OpenMP runtimes start with that many
threads, unless the user's environment says otherwise."""

import os

import pytest

from loky import ProcessPoolExecutor, get_reusable_executor
from loky._options import INNER_THREAD_VARIABLES

pytestmark = pytest.mark.timeout(120)

VARIABLES = (*INNER_THREAD_VARIABLES, "ENABLE_IPC")


@pytest.fixture(autouse=True)
def no_thread_variables_here(monkeypatch):
    """This process sets none of the variables (a CI runner may)."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def worker_environment():
    return {name: os.environ.get(name) for name in VARIABLES}


def blas_threads():
    """The number of threads numpy's BLAS uses in this process, as threadpoolctl sees
    it."""
    import numpy  # noqa: F401  (loads the BLAS library)
    from threadpoolctl import threadpool_info

    counts = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    assert len(counts) == 1, threadpool_info()
    return counts.pop()


def test_the_joblib_variables_are_set_to_the_limit(executor_factory):
    executor = executor_factory(max_workers=1, inner_max_num_threads=3)
    env = executor.submit(worker_environment).result(timeout=60)
    assert env == {**dict.fromkeys(INNER_THREAD_VARIABLES, "3"), "ENABLE_IPC": "1"}
    assert {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"} <= set(env)


def test_numpy_blas_runs_that_many_threads_in_a_task(executor_factory):
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    default = executor_factory(max_workers=1).submit(blas_threads).result(timeout=60)
    if default < 2:
        pytest.skip("numpy's BLAS uses one thread here anyway (one core)")
    limited = executor_factory(max_workers=1, inner_max_num_threads=1)
    assert limited.submit(blas_threads).result(timeout=60) == 1


def test_the_users_environment_wins(executor_factory, monkeypatch):
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    executor = executor_factory(
        max_workers=1, inner_max_num_threads=1, env={"OMP_NUM_THREADS": "7"}
    )
    env = executor.submit(worker_environment).result(timeout=60)
    assert env["OPENBLAS_NUM_THREADS"] == "2"  # this process's environment
    assert env["OMP_NUM_THREADS"] == "7"  # the executor's `env`
    assert env["MKL_NUM_THREADS"] == "1"
    if os.cpu_count() >= 2:
        assert executor.submit(blas_threads).result(timeout=60) == 2


def test_none_sets_nothing(executor_factory):
    executor = executor_factory(max_workers=1)
    assert executor.submit(worker_environment).result(timeout=60) == dict.fromkeys(VARIABLES)


def test_a_reusable_executor_with_another_limit_is_a_new_one():
    first = get_reusable_executor(max_workers=1, inner_max_num_threads=1)
    assert first.submit(worker_environment).result(timeout=60)["OMP_NUM_THREADS"] == "1"
    assert get_reusable_executor(max_workers=1, inner_max_num_threads=1) is first
    second = get_reusable_executor(max_workers=1, inner_max_num_threads=2)
    assert second is not first
    assert second.submit(worker_environment).result(timeout=60)["OMP_NUM_THREADS"] == "2"
    second.shutdown()
