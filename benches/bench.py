"""Side-by-side benchmark: this package vs loky 3.6.0 vs joblib's vendored loky vs the
standard library's ProcessPoolExecutor, all with 2 workers.

    .venv/bin/python benches/bench.py            # full run (a few minutes)
    .venv/bin/python benches/bench.py --quick    # smoke run, smaller sizes, 1 repetition

How it works:

- loky 3.6.0 and joblib 1.6.0 are installed in their own virtualenvs, made here on
  first use (benches/.venv-loky360, benches/.venv-joblib160): loky 3.6.0 has the same
  module name as this package, so the two cannot share an interpreter. This package
  and the standard library run with the interpreter that runs this script.
- This package is copied to a temporary directory at the start and run from there
  (PYTHONPATH), so that edits to the working tree during a run cannot mix versions.
- Every measurement is one fresh process (bench_measure.py IMPL METRIC), so cold
  starts are cold and no measurement inherits another's state. Repetitions interleave
  the implementations (A B C D, then B C D A, ...), so that a slow minute of the machine
  hits all of them alike.
- Every measurement has a timeout; a hang or an error is recorded and shown in the
  table, and the run goes on.
- This process makes itself a "child subreaper": a worker orphaned by a measurement
  process is re-parented to us instead of init, so we can see it, report it and end it.

Results (raw values, machine, versions) go to benches/results/bench-<time>.json and
.md; the markdown table is also printed.
"""

import argparse
import compileall
import ctypes
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MEASURE = os.path.join(HERE, "bench_measure.py")
RESULTS = os.path.join(HERE, "results")

IMPLS = ["this", "loky360", "joblib", "stdlib"]
IMPL_TITLES = {
    "this": "this package",
    "loky360": "loky 3.6.0",
    "joblib": "joblib 1.6.0 (vendored loky)",
    "stdlib": "stdlib ProcessPoolExecutor",
}
# Virtualenvs made by this script: directory, packages, and the version to check.
VENVS = {
    "loky360": (".venv-loky360", ["loky==3.6.0", "numpy", "psutil"], ("loky", "3.6.0")),
    "joblib": (".venv-joblib160", ["joblib==1.6.0", "numpy", "psutil"], ("joblib", "1.6.0")),
}

FULL = {
    "repeat": 5,
    "n_tasks": 20_000,  # submit() and map(chunksize=1)
    "n_tasks_chunked": 100_000,  # map(chunksize=100): 1,000 chunks
    "n_latency": 2_000,
    "array_sizes": [1, 16, 256],  # MiB
    "joblib_array_mib": 64,  # 16 arrays of this size, each way
}
QUICK = {
    "repeat": 1,
    "n_tasks": 2_000,
    "n_tasks_chunked": 10_000,
    "n_latency": 300,
    "array_sizes": [1, 16],
    "joblib_array_mib": 8,
}

# Table rows: (label, metric, key in values, unit, target for this/loky 3.6.0).
# A function "of __main__" is defined in the measuring script, as a user's script's are.
ROWS = [
    ("import (informational)", "cold_start", "import_s", "ms", ""),
    ("cold: create → first result", "cold_start", "first_result_s", "ms", "≤ 0.15×"),
    ("cold: create → first result, function of __main__", "cold_start_main",
     "first_result_s", "ms", "≤ 0.15×"),
    ("cold: create → both workers answered", "cold_start", "all_workers_s", "ms", "≤ 0.2×"),
    ("cold: create → both workers answered, function of __main__", "cold_start_main",
     "all_workers_s", "ms", "≤ 0.2×"),
    ("{n_tasks} × submit() then wait", "submit", "tasks_per_s", "tasks/s", "≥ 15×"),
    ("{n_tasks} × submit() then wait, function of __main__", "submit_main", "tasks_per_s",
     "tasks/s", "≥ 15×"),
    ("map, chunksize=1 ({n_tasks} items)", "map1", "tasks_per_s", "tasks/s", "≥ 15×"),
    ("map, chunksize=1, function of __main__", "map1_main", "tasks_per_s", "tasks/s", "≥ 15×"),
    ("map, chunksize=100 ({n_tasks_chunked} items)", "map100", "tasks_per_s", "tasks/s", ""),
    ("round trip, median ({n_latency} calls)", "latency", "median_s", "µs", "≤ 0.12×"),
    ("round trip, median, function of __main__", "latency_main", "median_s", "µs", "≤ 0.12×"),
    ("round trip, p99", "latency", "p99_s", "µs", ""),
]
for _size in (1, 16, 256):
    ROWS += [
        (f"{_size} MiB array, first round trip in a process (informational)",
         f"array_{_size}", "first_roundtrip_gbps", "GB/s", ""),
        (f"{_size} MiB array, round trip", f"array_{_size}", "roundtrip_gbps", "GB/s", ""),
        (f"{_size} MiB array, send only", f"array_{_size}", "send_gbps", "GB/s",
         "≥ 15×" if _size == 256 else ""),
        (f"{_size} MiB array, receive only", f"array_{_size}", "receive_gbps", "GB/s",
         "≥ 15×" if _size == 256 else ""),
    ]
ROWS += [
    ("worker crash → failing future raises", "crash", "crash_to_raise_s", "ms", ""),
    ("worker crash → next result", "crash", "crash_to_next_result_s", "ms", "≤ 0.2×"),
    ("shutdown(wait=True), warm idle pool", "shutdown", "shutdown_s", "ms", "≤ 0.2×"),
    ("idle worker USS", "memory", "worker_uss_bytes", "MiB", "≤ 0.5×"),
    ("parent USS", "memory", "parent_uss_bytes", "MiB", ""),
    ("helper processes' USS (e.g. resource tracker)", "memory", "helper_uss_bytes", "MiB", ""),
]

# The joblib table: Parallel(n_jobs=2) on this package (loky.use_with_joblib()) and on
# joblib's vendored loky; functions of __main__ for the small tasks; targets for the
# ratio this / vendored of each value, as in the table above (times: ≤, rates: ≥).
JOBLIB_IMPLS = ["this", "joblib"]
JOBLIB_ROWS = [
    ("first Parallel call, executor start included", "joblib_first", "first_call_s", "ms",
     "≤ 1.0×"),
    ("{n_tasks} tiny tasks, automatic batching", "joblib_tiny_auto", "tasks_per_s",
     "tasks/s", "≥ 1.0×"),
    ("{n_tasks_b1} tiny tasks, batch_size=1", "joblib_tiny_b1", "tasks_per_s", "tasks/s",
     "≥ 1.0×"),
    ("16 × {joblib_array_mib} MiB array arguments, max_nbytes=None", "joblib_arrays_in",
     "gbps", "GB/s", "≥ 2.0×"),
    ("16 × {joblib_array_mib} MiB array results, max_nbytes=None", "joblib_arrays_out",
     "gbps", "GB/s", "≥ 2.0×"),
]


# -- processes -----------------------------------------------------------------------


def become_subreaper():
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("warning: could not become a child subreaper; orphans go unnoticed",
              file=sys.stderr)


def my_children():
    """(pid, state, cmdline) of this process's children, read from /proc."""
    me = os.getpid()
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # The command name is in parentheses and may contain spaces.
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.append((int(entry), state, cmdline))
    return children


def reap_orphans(grace):
    """After a measurement process is gone, any child left is one of its descendants
    re-parented to us. Give them `grace` seconds to exit on their own (loky's resource
    tracker, for example, exits when it sees its parent gone), then kill them by pid.
    Returns a list of {pid, cmdline, killed}."""
    found = {}
    deadline = time.monotonic() + grace
    while True:
        alive = []
        for pid, state, cmdline in my_children():
            # State "Z": it has exited already, we only reap it.
            found.setdefault(pid, {"pid": pid, "cmdline": cmdline[:200], "state": state,
                                   "killed": False})
            if state == "Z":
                os.waitpid(pid, 0)
            else:
                alive.append(pid)
        if not alive:
            return list(found.values())
        if time.monotonic() > deadline:
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                    found[pid]["killed"] = True
                except ProcessLookupError:
                    pass
            for pid in alive:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            return list(found.values())
        time.sleep(0.05)


def run_measurement(python, env, impl, metric, params, timeout):
    """Run bench_measure.py once; return a record, whatever happened."""
    params = dict(params, timeout=max(5, timeout - 5))  # its watchdog fires first
    record = {"impl": impl, "metric": metric}
    # Output goes to files, not pipes: a worker that outlives the measurement process
    # would keep a pipe open and make us wait for it.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [python, MEASURE, impl, metric, json.dumps(params)],
            stdout=out, stderr=err, env=env, cwd=HERE, text=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            record["timed_out"] = True
        record["wall_s"] = time.monotonic() - t0
        record["returncode"] = proc.returncode
        record["leftovers"] = reap_orphans(grace=2.0)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for line in stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            record.update(json.loads(line[len("BENCH_RESULT "):]))
        elif line.startswith("BENCH_CLEANUP "):
            record["cleanup"] = json.loads(line[len("BENCH_CLEANUP "):])
    if "ok" not in record:
        record["ok"] = False
        record["error"] = (f"timed out after {timeout:.0f} s" if record.get("timed_out")
                           else f"exited with status {proc.returncode} without a result")
    if not record["ok"] or proc.returncode != 0 or "cleanup" not in record:
        record["stderr_tail"] = stderr[-4000:]
    return record


# -- environments --------------------------------------------------------------------


def ensure_venv(impl, log):
    """Return the python of the impl's virtualenv, making it if needed, or raise."""
    dirname, packages, (dist, version) = VENVS[impl]
    venv = os.path.join(HERE, dirname)
    python = os.path.join(venv, "bin", "python")
    check = f"import importlib.metadata as m; assert m.version({dist!r}) == {version!r}"
    if os.path.exists(python) and subprocess.run(
        [python, "-c", check + "; import numpy, psutil"], capture_output=True, timeout=120
    ).returncode == 0:
        return python
    log(f"making {dirname}: pip install {' '.join(packages)}")
    shutil.rmtree(venv, ignore_errors=True)
    # The same base interpreter as ours, so that every implementation runs on the same
    # Python build.
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", venv], check=True, timeout=300)
    subprocess.run([python, "-m", "pip", "install", "-q", *packages], check=True, timeout=900)
    subprocess.run([python, "-c", check], check=True, timeout=60)
    return python


def snapshot_this_package():
    """Copy python/loky to a temporary directory; return (directory, fingerprint)."""
    source = os.path.join(REPO, "python", "loky")
    directory = tempfile.mkdtemp(prefix="loky-bench-snapshot-")
    shutil.copytree(source, os.path.join(directory, "loky"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    # Byte-compiled, as pip leaves an installed package (and the loky 3.6.0 virtualenv),
    # even when PYTHONDONTWRITEBYTECODE keeps the interpreter from doing it.
    compileall.compile_dir(os.path.join(directory, "loky"), quiet=1)
    return directory, fingerprint(os.path.join(directory, "loky"))


def fingerprint(package_dir):
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, package_dir).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def git(*args):
    try:
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info():
    info = {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "harness_python": sys.version.split()[0],
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(
                (l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


# -- report --------------------------------------------------------------------------


UNITS = {"ms": 1e3, "µs": 1e6, "tasks/s": 1, "GB/s": 1, "MiB": 1 / 2**20}


def fmt(value, unit):
    value *= UNITS[unit]
    if unit == "tasks/s":
        return f"{value / 1000:,.1f}k" if value >= 1000 else f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def build_table(records, impls, params, rows=ROWS, baseline="loky360"):
    """Markdown: median (min–max) per implementation, this/baseline ratio, target; then
    footnotes for failures and anything odd seen in the raw records."""
    notes = []

    def note(text):
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    header = ["metric"] + [IMPL_TITLES[i] for i in impls]
    with_ratio = "this" in impls and baseline in impls
    if with_ratio:
        header += [f"this / {IMPL_TITLES[baseline]}", "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    records = [r for r in records if r["impl"] in impls]
    for label, metric, key, unit, target in rows:
        runs = {i: [r for r in records if r["impl"] == i and r["metric"] == metric]
                for i in impls}
        if not any(runs.values()):
            continue  # metric not run (e.g. --quick skips 256 MiB)
        cells, medians = [], {}
        for impl in impls:
            values = [r["values"][key] for r in runs[impl]
                      if r.get("ok") and key in r.get("values", {})]
            failed = [r for r in runs[impl] if not r.get("ok")]
            cell = ""
            if values:
                medians[impl] = statistics.median(values)
                cell = fmt(medians[impl], unit)
                if len(values) > 1:
                    cell += f" ({fmt(min(values), unit)}–{fmt(max(values), unit)})"
            if failed:
                errors = "; ".join(sorted({r["error"] for r in failed}))
                mark = note(f"{IMPL_TITLES[impl]}, {metric}: {len(failed)} of "
                            f"{len(runs[impl])} runs failed: {errors}")
                cell = (cell + " " if cell else "FAILED ") + mark
            cells.append(cell or "–")
        counts = {k: f"{v:,}" for k, v in params.items() if isinstance(v, int)}
        counts["n_tasks_b1"] = f"{params['n_tasks'] // 5:,}"
        row = [f"{label.format(**counts)}, {unit}"] + cells
        if with_ratio:
            ratio = ""
            if medians.get(baseline) and "this" in medians:
                ratio = f"{medians['this'] / medians[baseline]:.2f}×"
            row += [ratio, target]
        lines.append("| " + " | ".join(row) + " |")

    # Oddities worth a look, from the raw records.
    for r in records:
        where = f"{IMPL_TITLES[r['impl']]}, {r['metric']}, repetition {r['rep'] + 1}"
        values = r.get("values", {})
        if values.get("barrier_rounds", 1) > 1:
            note(f"{where}: the two barrier tasks ran one after the other on one worker "
                 f"({values['barrier_rounds']} rounds), so 'both workers answered' took "
                 f"{values['all_workers_s']:.2f} s")
        if values.get("workers_alive_after") or values.get("workers_zombie_after"):
            note(f"{where}: after shutdown(wait=True) returned, workers still alive "
                 f"{values['workers_alive_after']}, unreaped {values['workers_zombie_after']}")
        killed = [o for o in r.get("leftovers", []) if o["killed"]]
        if killed:
            note(f"{where}: processes left running after the measurement exited, killed: "
                 + "; ".join(f"{o['pid']} {o['cmdline'][:80]}" for o in killed))
        if r.get("ok") and r.get("returncode") != 0:
            note(f"{where}: measured, but the process then exited with status "
                 f"{r['returncode']} (cleanup: {r.get('cleanup', 'did not finish')})")
        if r.get("cleanup") and not r["cleanup"]["ok"]:
            note(f"{where}: shutting the executors down failed: {r['cleanup']['error']}")
    for i, text in enumerate(notes, 1):
        lines.append(f"\n[{i}] {text}")
    return "\n".join(lines)


def report(results):
    """The text printed at the end of a run (and by --report): machine, versions, table."""
    machine, params, versions = results["machine"], results["params"], results["versions"]
    text = "\n".join([
        f"Machine: {machine.get('cpu_model', '?')}, {machine['cpus_usable']} cores, "
        f"{machine.get('mem_total_gib', '?')} GiB, Linux {machine['kernel']}; "
        f"load average {machine['loadavg_start'][0]:.2f} at start, "
        f"{machine['loadavg_end'][0]:.2f} at end.",
        "Versions: " + "; ".join(f"{IMPL_TITLES[i]}: {v}" for i, v in versions.items()) + ".",
        f"2 workers; median (min–max) of {params['repeat']} runs, each a fresh process; "
        f"run took {results['elapsed_s'] / 60:.1f} min.",
        "",
        build_table(results["records"], results["impls"], params),
    ])
    joblib_impls = [i for i in JOBLIB_IMPLS if i in results["impls"]]
    if any(r["metric"].startswith("joblib_") for r in results["records"]):
        text += "\n\njoblib, Parallel(n_jobs=2):\n\n" + build_table(
            [r for r in results["records"] if r["metric"].startswith("joblib_")],
            joblib_impls, params, JOBLIB_ROWS, baseline="joblib")
    if results["setup_errors"]:
        text += "\n\nNot run: " + "; ".join(
            f"{IMPL_TITLES[i]} ({e.splitlines()[0]})" for i, e in results["setup_errors"].items())
    if results.get("changed_during_run"):
        text += (f"\n\nNote: python/loky changed during the run; the results are for the "
                 f"copy taken at the start (fingerprint {results['fingerprint']}).")
    return text


# -- main ----------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repetition, smaller workloads, no 256 MiB array")
    parser.add_argument("--repeat", type=int, help="repetitions of every measurement")
    parser.add_argument("--impls", default=",".join(IMPLS),
                        help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument("--metrics", help="comma-separated subset of the metrics")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds before one measurement process is killed")
    parser.add_argument("--wait", type=float, default=60,
                        help="seconds a measurement waits for any one result")
    parser.add_argument("--this-python", default=sys.executable,
                        help="interpreter for this package and the stdlib (needs "
                             "cloudpickle, numpy, psutil); default: this one")
    parser.add_argument("--report", metavar="JSON",
                        help="print the table of an earlier run's results file and exit")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as f:
            print(report(json.load(f)))
        return

    params = dict(QUICK if args.quick else FULL)
    if args.repeat:
        params["repeat"] = args.repeat
    params["wait"] = args.wait
    metrics = ["cold_start", "cold_start_main", "submit", "submit_main", "map1", "map1_main",
               "map100", "latency", "latency_main"]
    metrics += [f"array_{size}" for size in params["array_sizes"]]
    metrics += ["crash", "shutdown", "memory"]
    metrics += [row[1] for row in JOBLIB_ROWS]
    if args.metrics:
        metrics = [m for m in args.metrics.split(",") if m]
    impls = [i for i in IMPLS if i in args.impls.split(",")]

    def log(text):
        print(text, file=sys.stderr, flush=True)

    become_subreaper()
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_base = os.path.join(RESULTS, f"bench-{stamp}{'-quick' if args.quick else ''}")
    started = time.monotonic()
    machine = machine_info()

    snapshot, this_fingerprint = snapshot_this_package()
    # The task module byte-compiled, as a user's module is after its first run, even
    # where PYTHONDONTWRITEBYTECODE keeps the interpreters from writing it.
    compileall.compile_file(os.path.join(HERE, "bench_tasks.py"), quiet=1)
    pythons, envs, setup_errors = {}, {}, {}
    for impl in impls:
        env = dict(os.environ, PYTHONPATH=HERE)
        env.pop("PYTHONHOME", None)
        try:
            if impl in VENVS:
                pythons[impl] = ensure_venv(impl, log)
            else:
                pythons[impl] = args.this_python
            if impl == "this":
                env["PYTHONPATH"] = snapshot + os.pathsep + HERE
        except (subprocess.SubprocessError, OSError) as exc:
            setup_errors[impl] = f"{type(exc).__name__}: {exc}"
            log(f"{impl}: setup failed, skipped: {setup_errors[impl]}")
            continue
        envs[impl] = env

    # Versions, and a check that each environment imports what it should.
    versions = {}
    for impl in list(envs):
        record = run_measurement(pythons[impl], envs[impl], impl, "info", params, 60)
        if record.get("ok"):
            versions[impl] = record["info"]["version"]
            if impl == "stdlib":
                versions[impl] += f" ({record['info']['start_method']})"
        else:
            setup_errors[impl] = record["error"] + "\n" + record.get("stderr_tail", "")
            log(f"{impl}: does not import, skipped: {setup_errors[impl]}")
            del envs[impl]
    if "this" in versions:
        versions["this"] = (f"git {git('rev-parse', '--short', 'HEAD')}"
                            f"{' + uncommitted changes' if git('status', '--porcelain', '--', 'python', 'src') else ''}"
                            f", package fingerprint {this_fingerprint}")
    run_impls = [i for i in impls if i in envs]

    records = []
    results = {
        "machine": machine, "params": params, "metrics": metrics, "impls": run_impls,
        "versions": versions, "setup_errors": setup_errors, "fingerprint": this_fingerprint,
        "records": records,
    }

    def save():
        with open(out_base + ".json", "w") as f:
            json.dump(results, f, indent=1)

    try:
        for rep in range(params["repeat"]):
            for metric in metrics:
                # Rotate the order each repetition: A B C D, B C D A, ...
                order = run_impls[rep % len(run_impls):] + run_impls[:rep % len(run_impls)]
                for impl in order:
                    if metric.startswith("joblib_") and impl not in JOBLIB_IMPLS:
                        continue
                    record = run_measurement(pythons[impl], envs[impl], impl, metric,
                                             params, args.timeout)
                    record["rep"] = rep
                    records.append(record)
                    status = "ok" if record["ok"] else f"FAILED: {record['error']}"
                    log(f"[{rep + 1}/{params['repeat']}] {metric:<10} {impl:<8} "
                        f"{record['wall_s']:6.1f} s  {status}")
            save()
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
        leftovers = reap_orphans(grace=2.0)
        if leftovers:
            log(f"leftover processes at the end: {leftovers}")

    machine["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.monotonic() - started
    live = fingerprint(os.path.join(REPO, "python", "loky"))
    results["changed_during_run"] = "this" in run_impls and live != this_fingerprint
    text = report(results)
    results["table"] = text
    save()
    with open(out_base + ".md", "w") as f:
        f.write(text + "\n")
    print(text)
    log(f"\nraw results: {os.path.relpath(out_base, REPO)}.json")


if __name__ == "__main__":
    main()
