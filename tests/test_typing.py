"""The package is typed: mypy --strict checks a user's program against it, and
reports the mistakes a user makes with it."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(300)

GOOD = """
import asyncio
import logging
from concurrent.futures import as_completed

import loky
from loky import Future, ProcessPoolExecutor, cpu_count, get_reusable_executor
from loky import set_loky_pickler, use_with_joblib, wrap_non_picklable_objects


def square(x: int) -> int:
    return x * x


def main() -> None:
    executor = get_reusable_executor(max_workers=2, timeout=5)
    future: Future[int] = executor.submit(square, 3)
    value: int = future.result(timeout=10)
    squares: list[int] = list(executor.map(square, range(4), chunksize=2))
    with ProcessPoolExecutor(max_workers=cpu_count(), initializer=print) as pool:
        for done in as_completed([pool.submit(square, 2)]):
            print(done.result() + value + len(squares))
    set_loky_pickler("cloudpickle")
    wrapped = wrap_non_picklable_objects(square)
    print(wrapped(2) + 1, loky.__version__)
    use_with_joblib


async def awaiting() -> int:
    executor = get_reusable_executor(
        max_workers=1, forward_logging=logging.INFO, inner_max_num_threads=1
    )
    result: int = await executor.submit(square, 2)
    return result


main()
asyncio.run(awaiting())
"""

BAD = """
from loky import get_reusable_executor


def square(x: int) -> int:
    return x * x


executor = get_reusable_executor(max_workers="4")
bad: str = executor.submit(square, 3).result()
wrong_args = executor.submit(square, "three")
"""


def mypy(tmp_path, source):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=280,
    )


def test_a_correct_program_type_checks(tmp_path):
    pytest.importorskip("mypy")
    result = mypy(tmp_path, GOOD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_mistakes_are_reported(tmp_path):
    pytest.importorskip("mypy")
    result = mypy(tmp_path, BAD)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert 'Argument "max_workers" to "get_reusable_executor" has incompatible type "str"' in out
    assert "Incompatible types in assignment" in out and 'variable has type "str"' in out
    # (mypy names the class that defines `submit`: the base executor's.)
    assert 'Argument 2 to "submit" of "ProcessPoolExecutor" has incompatible type "str"' in out
    assert "untyped" not in out and "missing library stubs" not in out
