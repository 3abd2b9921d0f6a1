"""Real workloads, 2 workers each: this package vs loky 3.7.0, joblib (its vendored
loky), the standard library's ProcessPoolExecutor and multiprocessing.Pool, mpire and
pebble.

    .venv/bin/python benches/workloads.py            # full: 5 repetitions
    .venv/bin/python benches/workloads.py --quick    # smoke: 1 repetition, small sizes

Workloads (task functions in benches/workload_tasks/, one module per workload):

- numerical: scipy.signal.convolve2d of image tiles, results returned;
- stateful: prefix counts over generated documents, each worker's prefix index built
  once by the pool's initializer (mpire: worker_init with worker state);
- init_table: each worker's initializer builds a 200 MB table, then many small lookups;
- init_shared: the same lookups, the table built once in the parent and handed to the
  workers through the initializer's arguments (mpire: shared_objects);
- recycle: 2,000 tiny tasks, chunksize 1, a worker replaced after 25 tasks;
- shutdown: one task stuck in time.sleep(60), more queued; each pool's way to stop
  now; timed until the process has exited;
- gridsearch: scikit-learn's GridSearchCV(n_jobs=2) through joblib, on joblib's own
  loky or on this package (loky.use_with_joblib()).

How it runs is bench.py's way (its helpers are reused): the peers live in one
virtualenv made here on first use (benches/.venv-workloads); this package runs from a
copy of python/loky taken at the start, under the interpreter that runs this script
(which needs numpy, scipy, scikit-learn, joblib and psutil); every measurement is a
fresh process; repetitions interleave the pools; a hang or an error is recorded, and
processes left behind are reported and killed.
"""

import argparse
import compileall
import datetime
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import bench

HERE = bench.HERE
MEASURE = os.path.join(HERE, "workloads_measure.py")

POOLS = ["this", "loky370", "joblib", "stdlib", "mp_pool", "mpire", "pebble"]
TITLES = {
    "this": "this package",
    "loky370": "loky 3.7.0",
    "joblib": "joblib (vendored loky)",
    "stdlib": "ProcessPoolExecutor",
    "mp_pool": "multiprocessing.Pool",
    "mpire": "mpire",
    "pebble": "pebble",
}
# The peers' virtualenv: what `pip install` gets, and the versions the issue names.
PEERS_VENV = ".venv-workloads"
PEERS = ["loky==3.7.0", "mpire==2.10.2", "pebble", "joblib", "numpy", "scipy",
         "scikit-learn", "psutil"]
PEERS_CHECK = ("import importlib.metadata as m; assert m.version('loky') == '3.7.0'; "
               "assert m.version('mpire') == '2.10.2'; "
               "import pebble, joblib, numpy, scipy, sklearn, psutil")

FULL = {
    "repeat": 5,
    "tiles": 200, "tile_size": 256,  # 512 KiB each way per tile
    "documents": 4_000, "words": 300,
    "lookups": 4_000,
    "recycle_tasks": 2_000, "max_tasks": 25,
    "queued": 20,
}
QUICK = {
    "repeat": 1,
    "tiles": 40, "tile_size": 256,
    "documents": 800, "words": 300,
    "lookups": 800,
    "recycle_tasks": 400, "max_tasks": 25,
    "queued": 20,
}

# (workload, label, value key, target for this / best other). Times in seconds.
ROWS = [
    ("numerical", "numerical: convolve2d of {tiles} tiles of {tile_size}², results back",
     "results", "≤ 1.0"),
    ("stateful", "stateful: prefix counts of {documents} documents, per-worker index",
     "results", "≤ 1.0"),
    ("init_table", "expensive init: 200 MB table built by each worker, {lookups} lookups",
     "results", "≤ 1.0"),
    ("init_shared", "expensive init: table built by the parent, handed over, {lookups} "
     "lookups", "results", ""),
    ("numerical", "numerical, second map on the same pool", "again_s", ""),
    ("stateful", "stateful, second map on the same pool", "again_s", ""),
    ("init_table", "expensive init, second map on the same pool", "again_s", ""),
    ("recycle", "recycling: {recycle_tasks} tasks, new worker every {max_tasks}",
     "results", "≤ 0.5"),
    ("shutdown", "shutdown, 1 task stuck + {queued} queued → workers ended",
     "workers_ended", "≤ 0.5"),
    ("shutdown", "the same → process exited (interpreter exit included)", "exited", ""),
    ("gridsearch", "GridSearchCV(n_jobs=2) through joblib, first fit", "results", "≤ 1.0"),
    ("gridsearch", "GridSearchCV(n_jobs=2) through joblib, second fit", "second_fit", ""),
]
WORKLOAD_POOLS = {"gridsearch": ["this", "joblib"]}


def run_measurement(python, env, pool, workload, params, timeout):
    """Run workloads_measure.py once; return a record, whatever happened. The moment
    the process exits is taken from its pidfd (CLOCK_MONOTONIC), for the shutdown
    workload."""
    params = dict(params, timeout=max(5, timeout - 5))
    record = {"pool": pool, "workload": workload, "loadavg": os.getloadavg()[0]}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([python, MEASURE, pool, workload, json.dumps(params)],
                                stdout=out, stderr=err, env=env, cwd=HERE, text=True)
        pidfd = os.pidfd_open(proc.pid)
        try:
            exited = bool(select.select([pidfd], [], [], timeout)[0])
        finally:
            os.close(pidfd)
        exit_monotonic = time.monotonic()
        if not exited:
            proc.kill()
            record["timed_out"] = True
        proc.wait()
        record["wall_s"] = exit_monotonic - t0
        record["returncode"] = proc.returncode
        record["leftovers"] = bench.reap_orphans(grace=2.0)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for line in stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            record.update(json.loads(line[len("BENCH_RESULT "):]))
    values = record.get("values", {})
    if "shutdown_start_monotonic" in values and exited:
        values["exited"] = exit_monotonic - values["shutdown_start_monotonic"]
    if "ok" not in record:
        record["ok"] = False
        record["error"] = (f"timed out after {timeout:.0f} s" if record.get("timed_out")
                           else f"exited with status {proc.returncode} without a result")
    if not record["ok"] or proc.returncode != 0:
        record["stderr_tail"] = stderr[-4000:]
    return record


def ensure_peers(log):
    venv = os.path.join(HERE, PEERS_VENV)
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python) and subprocess.run(
            [python, "-c", PEERS_CHECK], capture_output=True, timeout=120).returncode == 0:
        return python
    log(f"making {PEERS_VENV}: pip install {' '.join(PEERS)}")
    shutil.rmtree(venv, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", venv], check=True, timeout=300)
    subprocess.run([python, "-m", "pip", "install", "-q", *PEERS], check=True, timeout=1800)
    subprocess.run([python, "-c", PEERS_CHECK], check=True, timeout=120)
    return python


# -- report ----------------------------------------------------------------------------


def fmt_s(value):
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    if value < 0.01:
        return f"{value * 1000:.1f} ms"
    return f"{value * 1000:.0f} ms" if value < 0.1 else f"{value:.3f}"


def build_table(records, pools, params):
    notes = []

    def note(text):
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    header = ["workload (s)"] + [TITLES[p] for p in pools] + ["this / best other", "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for workload, label, key, target in ROWS:
        runs = {p: [r for r in records if r["pool"] == p and r["workload"] == workload]
                for p in pools}
        if not any(runs.values()):
            continue
        cells, medians = [], {}
        for pool in pools:
            values = [r["values"][key] for r in runs[pool]
                      if r.get("ok") and key in r.get("values", {})]
            unsupported = [r for r in runs[pool] if r.get("unsupported")]
            failed = [r for r in runs[pool] if not r.get("ok") and not r.get("unsupported")]
            cell = ""
            if values:
                medians[pool] = statistics.median(values)
                cell = fmt_s(medians[pool])
                if len(values) > 1:
                    cell += f" ({fmt_s(min(values))}–{fmt_s(max(values))})"
            if unsupported:
                cell = "n/a " + note(f"{TITLES[pool]}, {workload}: {unsupported[0]['error']}")
            elif failed:
                errors = "; ".join(sorted({r["error"] for r in failed}))
                mark = note(f"{TITLES[pool]}, {workload}: {len(failed)} of "
                            f"{len(runs[pool])} runs failed: {errors}")
                cell = (cell + " " if cell else "FAILED ") + mark
            cells.append(cell or "–")
        others = {p: v for p, v in medians.items() if p != "this"}
        ratio = ""
        if "this" in medians and others:
            best = min(others, key=others.get)
            ratio = f"{medians['this'] / others[best]:.2f}× ({TITLES[best]})"
        row = [label.format(**params)] + cells + [ratio, target]
        lines.append("| " + " | ".join(row) + " |")
    for r in records:
        where = f"{TITLES[r['pool']]}, {r['workload']}, repetition {r['rep'] + 1}"
        killed = [o for o in r.get("leftovers", []) if o["killed"]]
        if killed:
            note(f"{where}: processes left running after the measurement exited, killed: "
                 + "; ".join(f"{o['pid']} {o['cmdline'][:60]}" for o in killed))
        if r.get("ok") and r.get("returncode") != 0:
            note(f"{where}: measured, but the process then exited with status "
                 f"{r['returncode']}")
    for i, text in enumerate(notes, 1):
        lines.append(f"\n[{i}] {text}")
    return "\n".join(lines)


def report(results):
    machine, params = results["machine"], results["params"]
    loads = [r["loadavg"] for r in results["records"]]
    text = "\n".join([
        f"Machine: {machine.get('cpu_model', '?')}, {machine['cpus_usable']} cores, "
        f"{machine.get('mem_total_gib', '?')} GiB, Linux {machine['kernel']}; 1-minute "
        f"load average {min(loads):.2f}–{max(loads):.2f} across the measurements "
        f"(median {statistics.median(loads):.2f}).",
        "Versions: " + "; ".join(f"{TITLES[p]}: {v}" for p, v in results["versions"].items())
        + ".",
        f"2 workers; seconds, median (min–max) of {params['repeat']} runs, each a fresh "
        f"process; timed from the pool's creation to the last result (second map: "
        f"that map alone; shutdown: from the call that stops the pool until its "
        f"workers have ended, and until the process has exited); run took "
        f"{results['elapsed_s'] / 60:.1f} min.",
        "",
        build_table(results["records"], results["pools"], params),
    ])
    if results["setup_errors"]:
        text += "\n\nNot run: " + "; ".join(
            f"{TITLES[p]} ({e.splitlines()[0]})" for p, e in results["setup_errors"].items())
    if results.get("changed_during_run"):
        text += ("\n\nNote: python/loky changed during the run; the results are for the "
                 f"copy taken at the start (fingerprint {results['fingerprint']}).")
    return text


# -- main ------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repetition, small sizes")
    parser.add_argument("--repeat", type=int, help="repetitions of every measurement")
    parser.add_argument("--pools", default=",".join(POOLS),
                        help=f"comma-separated subset of {','.join(POOLS)}")
    parser.add_argument("--workloads", help="comma-separated subset of the workloads")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds before one measurement process is killed")
    parser.add_argument("--this-python", default=sys.executable,
                        help="interpreter for this package (needs numpy, scipy, "
                             "scikit-learn, joblib, psutil); default: this one")
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
    workloads = list(dict.fromkeys(row[0] for row in ROWS))
    if args.workloads:
        workloads = [w for w in args.workloads.split(",") if w]
    pools = [p for p in POOLS if p in args.pools.split(",")]

    def log(text):
        print(text, file=sys.stderr, flush=True)

    bench.become_subreaper()
    os.makedirs(bench.RESULTS, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_base = os.path.join(bench.RESULTS,
                            f"workloads-{stamp}{'-quick' if args.quick else ''}")
    started = time.monotonic()
    machine = bench.machine_info()
    snapshot, this_fingerprint = bench.snapshot_this_package()
    # The task modules byte-compiled, as a user's modules are after their first run,
    # even where PYTHONDONTWRITEBYTECODE keeps the interpreters from writing them.
    compileall.compile_dir(os.path.join(HERE, "workload_tasks"), quiet=1)
    pythons, envs, setup_errors = {}, {}, {}
    peers_python = None
    for pool in pools:
        env = dict(os.environ, PYTHONPATH=HERE)
        env.pop("PYTHONHOME", None)
        if pool == "this":
            pythons[pool] = args.this_python
            env["PYTHONPATH"] = snapshot + os.pathsep + HERE
        else:
            try:
                peers_python = peers_python or ensure_peers(log)
            except (subprocess.SubprocessError, OSError) as exc:
                setup_errors[pool] = f"{type(exc).__name__}: {exc}"
                continue
            pythons[pool] = peers_python
        envs[pool] = env

    versions = {}
    for pool in list(envs):
        record = run_measurement(pythons[pool], envs[pool], pool, "info", params, 120)
        if record.get("ok"):
            versions[pool] = record["version"]
        else:
            setup_errors[pool] = record["error"] + "\n" + record.get("stderr_tail", "")
            log(f"{pool}: does not import, skipped: {setup_errors[pool]}")
            del envs[pool]
    if "this" in versions:
        dirty = bench.git("status", "--porcelain", "--", "python", "src")
        versions["this"] = (f"git {bench.git('rev-parse', '--short', 'HEAD')}"
                            f"{' + uncommitted changes' if dirty else ''}, package "
                            f"fingerprint {this_fingerprint}")
    run_pools = [p for p in pools if p in envs]

    records = []
    results = {"machine": machine, "params": params, "workloads": workloads,
               "pools": run_pools, "versions": versions, "setup_errors": setup_errors,
               "fingerprint": this_fingerprint, "records": records}

    def save():
        with open(out_base + ".json", "w") as f:
            json.dump(results, f, indent=1)

    try:
        for rep in range(params["repeat"]):
            for workload in workloads:
                eligible = [p for p in run_pools if p in WORKLOAD_POOLS.get(workload, POOLS)]
                shift = rep % len(eligible)
                for pool in eligible[shift:] + eligible[:shift]:
                    record = run_measurement(pythons[pool], envs[pool], pool, workload,
                                             params, args.timeout)
                    record["rep"] = rep
                    records.append(record)
                    status = ("ok" if record["ok"] else "n/a" if record.get("unsupported")
                              else f"FAILED: {record['error']}")
                    log(f"[{rep + 1}/{params['repeat']}] {workload:<11} {pool:<8} "
                        f"{record['wall_s']:6.1f} s  load {record['loadavg']:.2f}  {status}")
            save()
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
        leftovers = bench.reap_orphans(grace=2.0)
        if leftovers:
            log(f"leftover processes at the end: {leftovers}")

    machine["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.monotonic() - started
    live = bench.fingerprint(os.path.join(bench.REPO, "python", "loky"))
    results["changed_during_run"] = "this" in run_pools and live != this_fingerprint
    text = report(results)
    results["table"] = text
    save()
    with open(out_base + ".md", "w") as f:
        f.write(text + "\n")
    print(text)
    log(f"\nraw results: {os.path.relpath(out_base, bench.REPO)}.json")


if __name__ == "__main__":
    main()
