"""The README's code runs as written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import helpers

README = Path(__file__).resolve().parent.parent / "README.md"


def _section_code(heading):
    """The first python code block under the README section `heading`."""
    text = README.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.timeout(180)
def test_beyond_one_machine_snippet_runs_on_a_local_cluster(tmp_path):
    pytest.importorskip("distributed")
    script = tmp_path / "cluster.py"
    script.write_text(_section_code("Beyond one machine"))
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        str([i * i for i in range(10)]),
        str([i * i for i in range(5)]),
        str([i * i for i in range(5)]),
    ]


@pytest.mark.timeout(120)
def test_asyncio_script_awaits_100_tasks_and_ends_the_one_past_its_timeout(tmp_path):
    out = helpers.run_script(tmp_path, _section_code("asyncio"), timeout=100)
    assert out.returncode == 0, out.stderr
    expected_sum = sum(i * i for i in range(100) if i != 42)
    assert out.stdout.splitlines() == [
        f"99 results, sum {expected_sum}",
        "ended by the timeout: [42]",
    ]


@pytest.mark.timeout(120)
def test_logging_snippet_shows_the_workers_records(tmp_path):
    out = helpers.run_script(tmp_path, _section_code("Logging"), timeout=100)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert sorted(line.split(" ", 1)[1] for line in lines) == [
        f"myapp: working on {i}" for i in range(4)
    ]
    assert all(re.fullmatch(r"LokyProcess-\d+", line.split(" ", 1)[0]) for line in lines)
