"""loky's own test suite, run on this package (issue 12).

The tests of loky's latest release (its source distribution on PyPI, checked against
its sha256) run against the installed package, one file per pytest process, so that
one file's import error or crash cannot hide the others. The outcome of every test is
compared with ``loky_baseline.txt``: the tests not expected to pass here, each with its
reason (mostly: loky's private machinery that does not exist here by design, and
loky's "one crash breaks the pool", which this package replaces by a pool that heals).
Every other test must pass. Baselined tests that are expected to fail are not run
(some wait for minutes on a pool loky would have broken).

Each file runs under a small supervisor that is a child subreaper: workers orphaned by
a test that kills its own parent are adopted and reaped there, as an init process
would, so that psutil does not count them as alive.

Run by hand, with counts::

    python tests/test_loky_suite.py            # every file
    python tests/test_loky_suite.py test_futures.py test_reusable_executor.py
"""

import ctypes
import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from test_joblib_suite import DESELECT_ENV, PASSING, REPORT_ENV, Baseline, _read_report, summary

LOKY_VERSION = "3.7.0"
SDIST_SHA256 = "80928106fe18b5300c6f1b3a871d71e68a81dc9b2fe5c8ee4afe93bb9ba6424d"
BASELINE = Path(__file__).with_name("loky_baseline.txt")
# Longest first, alternating between the lanes (see run_files).
FILES = [
    "test_process_executor_loky.py",
    "test_process_executor_spawn.py",
    "test_process_executor_forkserver.py",
    "test_reusable_executor.py",
    "test_loky_backend.py",
    "test_resource_tracker.py",
    "test_cloudpickle_wrapper.py",
    "test_worker_timeout.py",
    "test_synchronize.py",
    "test_loky_module.py",
    "test_futures.py",
]
# Files run at the same time: most of these tests wait (on sleeps, timeouts, workers
# starting), so two at a time on two cores halve the run without crowding them.
LANES = 2
PER_TEST_TIMEOUT = 120  # loky's own CI setting
FILE_TIMEOUT = 600
LEFTOVER_GRACE = 5
NOT_RUN = "not run (baselined as failing)"
# Passing on loky 3.7.0 itself, measured on its own virtualenv on this machine (with
# test_cpu_count_cgroup_limit deselected: it needs docker).
LOKY_OWN_PASSES = 346


# -- the sources --------------------------------------------------------------------------


def fetch_tests(workdir):
    """loky's tests, unpacked in `workdir`/tests (no `loky` folder next to them, so that
    ``import loky`` finds the installed package)."""
    workdir = Path(workdir)
    downloads = workdir / "sdist"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
         ":all:", f"loky=={LOKY_VERSION}", "-d", str(downloads)],
        check=True,
    )  # fmt: skip
    (sdist,) = downloads.glob(f"loky-{LOKY_VERSION}.tar.gz")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{sdist.name}: sha256 {digest}, expected {SDIST_SHA256}")
    prefix = f"loky-{LOKY_VERSION}/"
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            if member.name.startswith(prefix + "tests/") and member.isfile():
                member.name = member.name[len(prefix):]
                members.append(member)
        archive.extractall(workdir, members=members, filter="data")
    # The OpenMP extension one test loads, as loky's CI builds it.
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "-i"],
        cwd=workdir / "tests" / "_openmp_test_helper",
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        raise RuntimeError(f"could not build loky's OpenMP test helper:\n{build.stderr}")
    # loky's pytest settings (its pyproject.toml), without anything else of ours.
    (workdir / "pytest.ini").write_text("[pytest]\nfaulthandler_timeout = 60\n")
    return workdir / "tests"


# -- the supervisor (``python test_loky_suite.py --supervise TIMEOUT -- cmd ...``) -------


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def supervise(timeout, command):
    """Run `command` as a child subreaper; then end and reap what it left behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans below come to us
    process = subprocess.Popen(command)
    timer = threading.Timer(timeout, _stop, (process.pid,))
    timer.daemon = True
    timer.start()
    # Every exit below us is reaped at once, in a blocking wait: a test may look for an
    # orphan the moment after it exited.
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            break
    timer.cancel()
    grace = time.monotonic() + LEFTOVER_GRACE
    while _children(os.getpid()) and time.monotonic() < grace:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        time.sleep(0.05)
    for pid in _children(os.getpid()):
        print(f"supervisor: killed leftover pid {pid}", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    return process.returncode


def _stop(pid):
    """The file ran too long: stacks first (faulthandler), then the end."""
    os.kill(pid, signal.SIGABRT)
    time.sleep(10)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- running and comparing --------------------------------------------------------------


def run_files(workdir, files, baseline, lanes=LANES):
    """Run the files, `lanes` at a time (each in its own pytest process); the outcome
    of every test, and what went wrong with a file."""
    workdir = Path(workdir)
    env = dict(os.environ)
    env.pop("LOKY_JOBLIB", None)
    # Some tests run `python` from PATH: this interpreter, as in an activated venv.
    env["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), env.get("PATH", "")))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.dirname(__file__), env.get("PYTHONPATH")) if p
    )
    outcomes, problems, started = {}, [], time.monotonic()

    def lane(names):
        for name in names:
            file_outcomes, problem = _run_file(workdir, name, baseline, dict(env))
            outcomes.update(file_outcomes)
            if problem:
                problems.append(problem)

    threads = [threading.Thread(target=lane, args=(files[i::lanes],)) for i in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, problems, time.monotonic() - started


def _run_file(workdir, name, baseline, env):
    report = workdir / f"{name}.jsonl"
    report.write_text("")
    env[REPORT_ENV] = str(report)
    not_run = [
        test_id
        for test_id, outcome in baseline.exact.items()
        if test_id.startswith(name + "::") and outcome in ("failed", "error")
    ]
    deselect = workdir / f"{name}.deselect"
    deselect.write_text("\n".join(not_run) + "\n")
    env[DESELECT_ENV] = str(deselect)
    command = [
        sys.executable, __file__, "--supervise", str(FILE_TIMEOUT), "--",
        sys.executable, "-m", "pytest", f"tests/{name}",
        "-p", "no:cacheprovider", "-p", "test_joblib_suite",
        f"--timeout={PER_TEST_TIMEOUT}", "-q", "-rfE", "--no-header",
    ]  # fmt: skip
    with open(workdir / f"{name}.log", "w") as log:
        code = subprocess.run(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        ).returncode
    file_outcomes, _, collected, running = _read_report(report)
    file_outcomes.update((test_id, NOT_RUN) for test_id in not_run)
    problem = None
    if running is not None or collected > len(file_outcomes) - len(not_run) or code not in (0, 1):
        problem = (
            f"{name}: exit code {code}, {len(file_outcomes) - len(not_run)} of {collected} "
            f"tests reported" + (f", stopped in {running}" if running else "")
            + "; see the end of its output:\n"
            + (workdir / f"{name}.log").read_text()[-3000:]
        )
    return file_outcomes, problem


def compare(outcomes, baseline, files):
    """(regressions, improvements), one line each, for the tests of `files`."""
    regressions, improvements = [], []
    listed = {t for t in baseline.exact if t.split("::", 1)[0] in files}
    for test_id in sorted(set(outcomes) | listed):
        got = outcomes.get(test_id, "missing")
        if got == NOT_RUN:
            continue
        want = baseline.expected(test_id)
        if got == want or {got, want} <= PASSING:
            continue
        if want == "flaky" and got in PASSING | {"failed"}:
            continue
        line = f"{test_id}: expected {want}, got {got}"
        (improvements if got in PASSING else regressions).append(line)
    return regressions, improvements


def score(outcomes):
    passed = sum(outcome in PASSING for outcome in outcomes.values())
    return f"{passed} passed ({passed / LOKY_OWN_PASSES:.1%} of loky's own {LOKY_OWN_PASSES})"


@pytest.mark.timeout(len(FILES) * (FILE_TIMEOUT + 60))
def test_loky_suite_runs_on_this_package(tmp_path):
    pytest.importorskip("psutil")
    baseline = Baseline(BASELINE)
    fetch_tests(tmp_path)
    outcomes, problems, seconds = run_files(tmp_path, FILES, baseline)
    regressions, improvements = compare(outcomes, baseline, FILES)
    print(f"loky {LOKY_VERSION} tests on this package: {summary(outcomes)} in {seconds:.0f} s;"
          f" {score(outcomes)}")
    for line in improvements:
        print(f"passes now, update {BASELINE.name}: {line}")
    found = problems + regressions
    assert not found, f"loky's tests on this package: {len(found)} problem(s):\n  " + (
        "\n  ".join(found)
    )


def main(argv):
    if argv[:1] == ["--supervise"]:
        return supervise(float(argv[1]), argv[3:])
    import tempfile

    files = argv or FILES
    with tempfile.TemporaryDirectory() as workdir:
        fetch_tests(workdir)
        baseline = Baseline(BASELINE)
        outcomes, problems, seconds = run_files(workdir, files, baseline)
    regressions, improvements = compare(outcomes, baseline, files)
    print(f"== loky {LOKY_VERSION} tests on this package: {summary(outcomes)} in "
          f"{seconds:.0f} s; {score(outcomes)}")
    for title, lines in (("problem(s)", problems + regressions), ("passing", improvements)):
        if lines:
            print(f"== {len(lines)} {title}:\n  " + "\n  ".join(lines))
    return 1 if problems or regressions else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
