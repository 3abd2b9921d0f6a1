"""joblib's own tests, run on this package (issue 5).

joblib 1.6 ships its test suite inside the wheel. This module runs the parts that
exercise its process pool (``joblib.test.test_parallel``, ``test_memmapping``,
``test_module``, ``test_cloudpickle_wrapper``, ``test_config``) in a subprocess in which
``joblib.externals.loky`` is this package (``LOKY_JOBLIB=1``: the parent, joblib's
workers, nested workers and the Python subprocesses some tests start all switch), and
compares the outcome of every test with ``joblib_baseline.txt``: the tests expected
not to pass on this machine, with the reason for each. Every other test must pass.

A test that fails, errors or is skipped while it is expected to pass fails this test;
so does a test that disappears, and a run in which no test finishes for three minutes
(stopped, with every thread's stack in the output). A test that passes while the
baseline expects it not to is reported (the baseline is then out of date) but is not a
failure. The run takes about 100 s on two cores: ``-k "not joblib_suite"`` skips it.

Run by hand, with counts::

    python tests/test_joblib_suite.py             # on this package
    python tests/test_joblib_suite.py --vendored  # on joblib's own copy of loky
    ... --save outcomes.json                      # keep every test's outcome
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

JOBLIB_VERSION = "1.6.0"
MODULES = [
    "joblib.test.test_parallel",
    "joblib.test.test_memmapping",
    "joblib.test.test_module",
    "joblib.test.test_cloudpickle_wrapper",
    "joblib.test.test_config",
]
BASELINE = Path(__file__).with_name("joblib_baseline.txt")
# Longest a single joblib test may take (the slowest takes a few seconds).
PER_TEST_TIMEOUT = 60
# A run in which no test finishes for this long is stopped, as is a run longer than
# SUITE_TIMEOUT (it takes about 100 s on two cores).
STALL_TIMEOUT = 3 * PER_TEST_TIMEOUT
SUITE_TIMEOUT = 900
REPORT_ENV = "LOKY_JOBLIB_SUITE_REPORT"
PASSING = {"passed", "xpassed"}
NOT_RUN = {"skipped", "xfailed"}


# -- in the subprocess: a pytest plugin (``-p test_joblib_suite``) ---------------------
#
# It checks that joblib really runs on this package, and appends a line of JSON to the
# report file as each test starts and ends, so that a run that hangs or dies still says
# what ran and what was running.

_report = None
_outcomes = {}


def pytest_configure(config):
    global _report
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    _report = open(path, "a", buffering=1)
    if os.environ.get("LOKY_JOBLIB") != "1":
        return  # vendored run: nothing to check
    import joblib.externals.loky as joblib_loky

    import loky

    if joblib_loky is not loky:
        raise pytest.UsageError(
            f"LOKY_JOBLIB=1 did not switch joblib to this package: "
            f"joblib.externals.loky is {joblib_loky!r}"
        )


def _record(**entry):
    _report.write(json.dumps(entry) + "\n")


def _test_id(nodeid, location):
    """``test_parallel.py::test_y[a]``: the name of the file run and the test's name.
    (joblib's files are outside the run's root directory: their node ids have no path,
    and the file is the one where the test is defined.)"""
    path, name = nodeid.split("::", 1) if "::" in nodeid else ("", nodeid)
    if not path.endswith(".py"):
        path = location[0]
    return f"{os.path.basename(path)}::{name}"


DESELECT_ENV = "LOKY_SUITE_DESELECT"


def pytest_collection_modifyitems(config, items):
    """Leave out the tests named (exactly, one id per line) in the file DESELECT_ENV
    points to. (pytest's --deselect also drops every test whose id extends a given one.)"""
    path = os.environ.get(DESELECT_ENV)
    if not path:
        return
    names = set(Path(path).read_text().split("\n")) - {""}
    kept, dropped = [], []
    for item in items:
        (dropped if _test_id(item.nodeid, item.location) in names else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_collection_finish(session):
    if _report is not None:
        _record(collected=len(session.items))


def pytest_runtest_logstart(nodeid, location):
    if _report is not None:
        _record(start=_test_id(nodeid, location))


def _outcome_of(report, previous):
    if report.failed:
        return "failed" if report.when == "call" else "error"
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    if report.when == "call":
        return "xpassed" if hasattr(report, "wasxfail") else "passed"
    return previous


def pytest_runtest_logreport(report):
    if _report is None:
        return
    test_id = _test_id(report.nodeid, report.location)
    previous = _outcomes.get(test_id)
    if previous not in ("failed", "error"):  # a teardown error does not hide a failure
        _outcomes[test_id] = _outcome_of(report, previous) or "passed"
    reason = None
    if report.skipped:
        reason = getattr(report, "wasxfail", None)
        if not reason and isinstance(report.longrepr, tuple):
            reason = report.longrepr[-1]
    if report.when == "teardown" or reason is not None:
        _record(id=test_id, outcome=_outcomes[test_id], reason=reason)


# -- in this process: run the suite and compare ----------------------------------------


class Baseline:
    """The outcomes expected on this machine for the tests that do not pass.

    Each line: ``<test id or pattern> <outcome>  # reason``, where a pattern's ``*``
    stands for any text (and nothing else is special). Unlisted tests must pass.
    """

    def __init__(self, path=BASELINE):
        self.exact, self.patterns = {}, []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            test_id, outcome = line.rsplit(None, 1)
            if outcome not in NOT_RUN | {"failed", "error", "xpassed", "flaky"}:
                raise ValueError(f"{path}:{number}: unknown outcome {outcome!r}")
            if "*" in test_id:
                regex = ".*".join(re.escape(part) for part in test_id.split("*"))
                self.patterns.append((re.compile(regex + r"\Z"), outcome))
            else:
                self.exact[test_id] = outcome

    def expected(self, test_id):
        if test_id in self.exact:
            return self.exact[test_id]
        for regex, outcome in self.patterns:
            if regex.match(test_id):
                return outcome
        return "passed"


def _switch_env(workdir):
    """Environment in which every Python process runs joblib on this package."""
    env = dict(os.environ, LOKY_JOBLIB="1")
    probe = "import sys, loky._joblib as s; sys.exit(0 if s.installed() else 1)"
    if subprocess.run([sys.executable, "-c", probe], env=env).returncode == 0:
        return env, "loky_joblib.pth"
    # The start-up hook the wheel installs (loky_joblib.pth) is missing, e.g. in an
    # editable install: do its work from a sitecustomize module on PYTHONPATH.
    import importlib.util

    if importlib.util.find_spec("sitecustomize") is not None:
        pytest.fail("LOKY_JOBLIB=1 has no effect: loky_joblib.pth is not installed")
    startup = Path(workdir) / "startup"
    startup.mkdir(exist_ok=True)
    (startup / "sitecustomize.py").write_text(
        "import loky._joblib\nloky._joblib.install_from_env()\n"
    )
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(startup), env.get("PYTHONPATH")) if p
    )
    return env, "sitecustomize shim (loky_joblib.pth not installed)"


@dataclass
class SuiteRun:
    outcomes: dict  # test id -> passed, failed, error, skipped, xfailed or xpassed
    skip_reasons: dict  # test id -> reason, for skipped and xfailed tests
    collected: int  # number of tests pytest collected
    stalled: str  # what the run was doing when it was stopped, or ""
    how: str  # how joblib was switched to this package
    seconds: float
    output: str  # pytest's output


def _read_report(path):
    outcomes, reasons, collected, running = {}, {}, 0, None
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if "collected" in entry:
            collected = entry["collected"]
        elif "start" in entry:
            running = entry["start"]
        else:
            outcomes[entry["id"]] = entry["outcome"]
            if entry["reason"] is not None:
                reasons[entry["id"]] = entry["reason"]
            running = None
    return outcomes, reasons, collected, running


def run_suite(workdir, vendored=False, only=()):
    """Run joblib's tests in a subprocess: all of them, or the test ids in `only`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if vendored:
        env, how = dict(os.environ), "joblib's vendored loky"
        env.pop("LOKY_JOBLIB", None)
    else:
        env, how = _switch_env(workdir)
    report = workdir / "outcomes.jsonl"
    report.write_text("")
    env[REPORT_ENV] = str(report)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (env.get("PYTHONPATH"), os.path.dirname(__file__)) if p
    )
    command = [
        sys.executable, "-m", "pytest",
        "-p", "no:cacheprovider",
        "-p", "test_joblib_suite",
        f"--timeout={PER_TEST_TIMEOUT}",
        "-q", "-rfE", "--no-header",
    ]  # fmt: skip
    if only:
        import joblib

        tests_dir = Path(joblib.__file__).parent / "test"
        command += [str(tests_dir / test_id) for test_id in only]
    else:
        command += ["--pyargs", *MODULES]
    log = workdir / "joblib-tests.log"
    started = time.monotonic()
    stalled = ""
    # cwd: a directory with no pytest configuration, so that this project's does not
    # apply to joblib's tests. The output goes to a file: `tail -f` it to follow a run.
    # The run has its own session, so that whatever it leaves can be killed as a group.
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        size, progress = 0, started
        while process.poll() is None:
            time.sleep(0.5)
            now = time.monotonic()
            if report.stat().st_size != size:
                size, progress = report.stat().st_size, now
            if now - progress > STALL_TIMEOUT or now - started > SUITE_TIMEOUT:
                running = _read_report(report)[3]
                stalled = (
                    f"no test finished for {now - progress:.0f} s (pytest-timeout cannot "
                    f"interrupt a call that blocks in native code); running: {running}"
                )
                # faulthandler (on in pytest) prints every thread's stack on SIGABRT.
                process.send_signal(signal.SIGABRT)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
    seconds = time.monotonic() - started
    outcomes, reasons, collected, _ = _read_report(report)
    return SuiteRun(
        outcomes=outcomes,
        skip_reasons=reasons,
        collected=collected,
        stalled=stalled,
        how=how,
        seconds=seconds,
        output=log.read_text(),
    )


def compare(outcomes, baseline):
    """(regressions, improvements): lists of "test: expected X, got Y" lines."""
    regressions, improvements = [], []
    for test_id in sorted(set(outcomes) | set(baseline.exact)):
        want = baseline.expected(test_id)
        got = outcomes.get(test_id, "missing")
        if got == want or {got, want} <= PASSING or {got, want} == {"xfailed", "xpassed"}:
            continue
        line = f"{test_id}: expected {want}, got {got}"
        if got in PASSING:
            improvements.append(line)
        else:
            regressions.append(line)
    return regressions, improvements


def summary(outcomes):
    counts = Counter(outcomes.values())
    return ", ".join(f"{counts[k]} {k}" for k in sorted(counts))


def problems(run, baseline):
    """What makes the run a failure, one line each; and the improvements."""
    regressions, improvements = compare(run.outcomes, baseline)
    found = []
    if run.stalled:
        found.append(f"the run was stopped: {run.stalled}")
    if run.collected < 700:
        found.append(f"only {run.collected} joblib tests were collected")
    missing = run.collected - len(run.outcomes)
    if missing > 0:
        found.append(f"{missing} collected test(s) did not run to the end")
    found.extend(regressions)
    return found, improvements


@pytest.mark.timeout(SUITE_TIMEOUT + 60)
def test_joblib_suite_runs_on_this_package(tmp_path):
    pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    if joblib.__version__ != JOBLIB_VERSION:
        pytest.skip(f"the baseline is for joblib {JOBLIB_VERSION}, not {joblib.__version__}")
    baseline = Baseline()
    run = run_suite(tmp_path)
    # A test that fails once is run again, alone: CPython 3.11 itself fails now and
    # then in joblib's threading tests ("AST constructor recursion depth mismatch").
    failed = [t for t, outcome in run.outcomes.items()
              if outcome in ("failed", "error") and baseline.expected(t) in PASSING]  # fmt: skip
    if failed and not run.stalled and len(failed) <= 5:
        rerun = run_suite(tmp_path / "rerun", only=failed)
        for test_id in failed:
            if rerun.outcomes.get(test_id) in PASSING:
                print(f"flaky: {test_id} failed, then passed when run again")
                run.outcomes[test_id] = rerun.outcomes[test_id]
    found, improvements = problems(run, baseline)
    print(f"joblib {JOBLIB_VERSION} tests on this package ({run.how}): "
          f"{summary(run.outcomes)} in {run.seconds:.0f} s")
    for line in improvements:
        print(f"passes now, update {BASELINE.name}: {line}")
    assert not found, (
        f"joblib's tests on this package: {len(found)} problem(s):\n  "
        + "\n  ".join(found) + "\n\nLast lines of the run:\n" + run.output[-8000:]
    )


def main(argv):
    vendored = "--vendored" in argv
    with tempfile.TemporaryDirectory() as workdir:
        run = run_suite(workdir, vendored=vendored)
    print(run.output[-3000:])
    if "--save" in argv:
        with open(argv[argv.index("--save") + 1], "w") as f:
            json.dump({"outcomes": run.outcomes, "reasons": run.skip_reasons}, f,
                      indent=0, sort_keys=True)
    print(f"== joblib {JOBLIB_VERSION} tests on {run.how}: {summary(run.outcomes)} "
          f"in {run.seconds:.0f} s")
    found, improvements = problems(run, Baseline())
    for title, lines in (("problem(s)", found), ("test(s) passing", improvements)):
        if lines:
            print(f"== {len(lines)} {title}:\n  " + "\n  ".join(lines))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
