"""What a user sees of the installed distribution: its version, its modules, its
typing information."""

import importlib.metadata
import subprocess
import sys

import pytest

import loky

import helpers

pytestmark = pytest.mark.timeout(60)


def test_one_version_everywhere_and_it_satisfies_loky_requirements():
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    assert importlib.metadata.version("loky") == loky.__version__
    # A package that requires the loky API this package provides must not replace it.
    version = Version(loky.__version__)
    for requirement in [">=3", ">=3.7", "~=3.7", ">=3.6,<4"]:
        assert version in SpecifierSet(requirement), requirement


def test_import_loky_gives_its_submodules():
    code = (
        "import loky\n"
        "for name in ['process_executor', 'reusable_executor', 'backend',\n"
        "             'cloudpickle_wrapper', '_base']:\n"
        "    print(getattr(loky, name).__name__)\n"
        "print(loky.backend.context.cpu_count() >= 1)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "loky.process_executor",
        "loky.reusable_executor",
        "loky.backend",
        "loky.cloudpickle_wrapper",
        "loky._base",
        "True",
    ]


@pytest.mark.parametrize(
    "module",
    ["loky.process_executor", "loky.reusable_executor", "cloudpickle", "logging", "asyncio"],
)
def test_workers_still_import_only_what_they_need(executor_factory, module):
    executor = executor_factory(max_workers=1)
    assert executor.submit(helpers.module_loaded, module).result(timeout=30) is False
