"""One measurement in a fresh interpreter; bench.py runs this script once per
(implementation, metric, repetition), with the interpreter of the right virtualenv.

    python bench_measure.py IMPL METRIC PARAMS_JSON

IMPL is one of: this (the package of this repository), loky360 (loky 3.6.0 from PyPI),
joblib (joblib.externals.loky from joblib 1.6.0), stdlib (concurrent.futures).
It prints one line ``BENCH_RESULT {json}`` with the measured values (or the error),
then shuts its executors down and prints ``BENCH_CLEANUP {json}``.

Only the standard library, psutil and numpy (for the array metrics) are imported here,
so that the same script runs in every virtualenv. Task functions live in
bench_tasks.py, which the workers import by name.
"""

import faulthandler
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from time import perf_counter, perf_counter_ns

import bench_tasks

N_WORKERS = 2
MiB = 1 << 20
# A barrier task waits at most this long for the other worker (see bench_tasks.barrier).
# Generous, so that it only expires when an implementation makes two tasks wait for
# each other on one worker; that shows up as a "barrier_rounds" above 1.
BARRIER_TIMEOUT = 2.0


class Impl:
    """One implementation: how to import it, make an executor, and what a user does to
    get a working executor again after a worker crash."""

    def __init__(self, name):
        self.name = name
        self.executors = []  # every executor made here, shut down at the end
        t0 = perf_counter()
        if name == "stdlib":
            import concurrent.futures

            self._make = lambda: concurrent.futures.ProcessPoolExecutor(max_workers=N_WORKERS)
            self.reusable = False
        else:
            if name == "joblib":
                from joblib.externals import loky
            else:
                import loky
            get_reusable_executor = loky.get_reusable_executor  # lazy in this package
            self._make = lambda: get_reusable_executor(max_workers=N_WORKERS)
            self.reusable = True
            self.loky = loky
        self.import_s = perf_counter() - t0
        from concurrent.futures.process import BrokenProcessPool

        self.BrokenProcessPool = BrokenProcessPool  # loky's is a subclass of it

    def info(self):
        import importlib.util

        info = {"python": sys.version.split()[0], "executable": sys.executable}
        if self.name == "stdlib":
            import multiprocessing

            info["version"] = "Python " + info["python"]
            info["start_method"] = multiprocessing.get_start_method()
        else:
            info["version"] = self.loky.__version__
            info["module"] = os.path.dirname(self.loky.__file__)
            has_core = importlib.util.find_spec(self.loky.__name__ + "._core") is not None
            info["rust_core"] = has_core
            if self.name == "joblib":
                import joblib

                info["version"] = f"joblib {joblib.__version__}, loky {self.loky.__version__}"
            # Catch a mix-up of the two packages named `loky` early.
            if (self.name == "this") != has_core:
                raise RuntimeError(f"{self.name}: wrong loky imported from {info['module']}")
        return info

    def make(self):
        executor = self._make()
        if not any(e is executor for e in self.executors):
            self.executors.append(executor)
        return executor

    def submit_as_a_user_would(self, executor, fn, *args):
        """Submit after a crash, the way the docs tell users to: loky users call
        get_reusable_executor() again (it replaces a broken executor; ours returns the
        same, still working one); stdlib users catch BrokenProcessPool and make a new
        executor. Returns (executor, future)."""
        if self.reusable:
            executor = self.make()
        try:
            return executor, executor.submit(fn, *args)
        except self.BrokenProcessPool:
            executor = self.make()
            return executor, executor.submit(fn, *args)

    def shutdown_all(self):
        for executor in self.executors:
            executor.shutdown(wait=True)


# -- tasks defined in __main__ --------------------------------------------------------
# This script runs as __main__: these are functions of a script, as most users' are.
# loky pickles them by value (cloudpickle); the standard library by reference (its
# workers are forked, or import this script).


def main_noop():
    return None


def main_identity(x):
    return x


def main_getpid(_=None):
    return os.getpid()


def task(params, name):
    """The task function `name` (noop, identity, getpid): from bench_tasks, or defined in
    __main__ when params["main"] is set."""
    if params.get("main"):
        return globals()["main_" + name]
    return getattr(bench_tasks, name)


# -- helpers -------------------------------------------------------------------------


def reach_all_workers(executor, wait, nbytes=0):
    """Run barrier tasks until every worker has answered; return (pids, rounds).

    Each round submits one barrier task per worker; they all return as soon as that
    many distinct workers run one at the same time. With nbytes, each worker also
    allocates the array that array_out returns.
    """
    directory = tempfile.mkdtemp(prefix="bench-barrier-")
    try:
        seen = set()
        rounds = 0
        while len(seen) < N_WORKERS:
            rounds += 1
            if rounds > 5:
                raise RuntimeError(f"only workers {sorted(seen)} answered after 5 rounds")
            if nbytes:
                args = (bench_tasks.barrier_with_array, directory, N_WORKERS, BARRIER_TIMEOUT, nbytes)
            else:
                args = (bench_tasks.barrier, directory, N_WORKERS, BARRIER_TIMEOUT)
            futures = [executor.submit(*args) for _ in range(N_WORKERS)]
            seen.update(f.result(timeout=wait) for f in futures)
        return sorted(seen), rounds
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def warm_pool(impl, params, nbytes=0):
    """An executor whose workers are all up and have already run tasks."""
    executor = impl.make()
    pids, rounds = reach_all_workers(executor, params["wait"], nbytes)
    for _ in range(50):
        executor.submit(bench_tasks.noop).result(timeout=params["wait"])
    return executor, pids, rounds


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list."""
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(rank, 1)) - 1]


# -- metrics: each returns a dict of values ------------------------------------------


def m_info(impl, params):
    return {}


def m_cold_start(impl, params):
    # Timed from just before the executor is created: the import is reported apart.
    t0 = perf_counter()
    executor = impl.make()
    t_made = perf_counter()
    # A function of the task module (or of __main__), as a user's: the worker imports
    # that module for it (a builtin such as os.getpid would spare it the import).
    executor.submit(task(params, "getpid")).result(timeout=params["wait"])
    t_first = perf_counter()
    pids, rounds = reach_all_workers(executor, params["wait"])
    t_all = perf_counter()
    return {
        "import_s": impl.import_s,
        "make_executor_s": t_made - t0,
        "first_result_s": t_first - t0,
        "all_workers_s": t_all - t0,
        "barrier_rounds": rounds,
    }


def m_submit(impl, params):
    executor, _, _ = warm_pool(impl, params)
    n = params["n_tasks"]
    t0 = perf_counter()
    noop = task(params, "noop")
    futures = [executor.submit(noop) for _ in range(n)]
    t_submitted = perf_counter()
    for future in futures:
        future.result(timeout=params["wait"])
    t_done = perf_counter()
    return {
        "tasks_per_s": n / (t_done - t0),
        "submit_loop_s": t_submitted - t0,
        "total_s": t_done - t0,
        "n_tasks": n,
    }


def _map(impl, params, n, chunksize):
    executor, _, _ = warm_pool(impl, params)
    # Warm the map path too: a chunked map may make the workers import something the
    # first time (the helper that runs a chunk), a one-time cost left out here.
    identity = task(params, "identity")
    list(executor.map(identity, range(4 * chunksize), chunksize=chunksize))
    t0 = perf_counter()
    results = list(executor.map(identity, range(n), chunksize=chunksize, timeout=params["wait"]))
    elapsed = perf_counter() - t0
    if results != list(range(n)):
        raise AssertionError("map returned wrong results")
    return {"tasks_per_s": n / elapsed, "total_s": elapsed, "n_tasks": n, "chunksize": chunksize}


def m_map1(impl, params):
    return _map(impl, params, params["n_tasks"], 1)


def m_map100(impl, params):
    return _map(impl, params, params["n_tasks_chunked"], 100)


def m_latency(impl, params):
    executor, _, _ = warm_pool(impl, params)
    samples = []
    noop = task(params, "noop")
    for _ in range(params["n_latency"]):
        t0 = perf_counter_ns()
        executor.submit(noop).result(timeout=params["wait"])
        samples.append(perf_counter_ns() - t0)
    samples.sort()
    return {
        "median_s": percentile(samples, 50) / 1e9,
        "p99_s": percentile(samples, 99) / 1e9,
        "min_s": samples[0] / 1e9,
        "max_s": samples[-1] / 1e9,
        "mean_s": statistics.fmean(samples) / 1e9,
        "n_calls": len(samples),
    }


def _arrays(impl, params, size_mib):
    """Three timings, each from submit() to result(), bytes counted once:
    - roundtrip: identity(array): the array goes to a worker and comes back;
    - send: array_in(array): the array goes, an int comes back;
    - receive: array_out(nbytes): an int goes, an array the worker already holds
      comes back.
    Each includes the task's fixed cost (about one round-trip latency)."""
    import numpy as np

    nbytes = size_mib * MiB
    wait = params["wait"]
    executor, _, _ = warm_pool(impl, params, nbytes=nbytes)
    array = np.full(nbytes, 7, dtype=np.uint8)

    # Check that each direction delivers the data, and warm its code path. Only the
    # first round trip is timed, apart (informational): the first transfer of a size in
    # a process may pay for things the later ones reuse (this package's shared memory).
    t0 = perf_counter()
    back = executor.submit(bench_tasks.identity, array).result(timeout=wait)
    first_roundtrip_s = perf_counter() - t0
    if not np.array_equal(back, array):
        raise AssertionError("round trip changed the array")
    if executor.submit(bench_tasks.array_in, array).result(timeout=wait) != nbytes:
        raise AssertionError("send: the worker saw a different size")
    back = executor.submit(bench_tasks.array_out, nbytes).result(timeout=wait)
    if back.nbytes != nbytes or back[0] != 7 or back[-1] != 7:
        raise AssertionError("receive: wrong array")
    del back

    def timed(fn, arg):
        t0 = perf_counter()
        result = executor.submit(fn, arg).result(timeout=wait)
        elapsed = perf_counter() - t0
        del result  # free a returned array before the next call
        return elapsed

    times = {"roundtrip": [], "send": [], "receive": []}
    # Fewer repetitions for big arrays: one 256 MiB round trip is a second with loky.
    reps = max(3, min(20, 256 // size_mib))
    for _ in range(reps):
        times["roundtrip"].append(timed(bench_tasks.identity, array))
        times["send"].append(timed(bench_tasks.array_in, array))
        times["receive"].append(timed(bench_tasks.array_out, nbytes))
    values = {
        "size_mib": size_mib,
        "inner_reps": reps,
        "first_roundtrip_s": first_roundtrip_s,
        "first_roundtrip_gbps": nbytes / first_roundtrip_s / 1e9,
    }
    for direction, samples in times.items():
        median = statistics.median(samples)
        values[f"{direction}_s"] = median
        values[f"{direction}_gbps"] = nbytes / median / 1e9
    return values


def m_array_1(impl, params):
    return _arrays(impl, params, 1)


def m_array_16(impl, params):
    return _arrays(impl, params, 16)


def m_array_256(impl, params):
    return _arrays(impl, params, 256)


def m_crash(impl, params):
    """A worker dies (os._exit(1) inside a task). Both times start at the moment of
    death, which the dying task writes down (CLOCK_MONOTONIC is system-wide), so the
    dispatch of the crashing task is not counted."""
    wait = params["wait"]
    executor, pids, _ = warm_pool(impl, params)
    fd, stamp_path = tempfile.mkstemp(prefix="bench-crash-")
    os.close(fd)
    try:
        future = executor.submit(bench_tasks.crash, stamp_path)
        error = future.exception(timeout=wait)
        t_raised = time.monotonic()
        new_executor, future = impl.submit_as_a_user_would(executor, bench_tasks.getpid)
        pid = future.result(timeout=wait)
        t_next = time.monotonic()
        with open(stamp_path) as f:
            t_crash = float(f.read())
    finally:
        os.unlink(stamp_path)
    return {
        "crash_to_raise_s": t_raised - t_crash,
        "crash_to_next_result_s": t_next - t_crash,
        "error": type(error).__name__ if error is not None else None,
        "new_executor": new_executor is not executor,
        "next_task_on_old_worker": pid in pids,
    }


def m_shutdown(impl, params):
    import psutil

    executor, pids, _ = warm_pool(impl, params)
    time.sleep(0.1)  # idle
    t0 = perf_counter()
    executor.shutdown(wait=True)
    elapsed = perf_counter() - t0
    # shutdown(wait=True) should return once the workers are gone and reaped.
    alive, zombies = [], []
    for pid in pids:
        try:
            status = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            continue
        (zombies if status == psutil.STATUS_ZOMBIE else alive).append(pid)
    return {"shutdown_s": elapsed, "workers_alive_after": alive, "workers_zombie_after": zombies}


def m_memory(impl, params):
    """Unique set size (memory freed if the process exited) of the parent and of each
    idle worker, after both workers have run a few trivial tasks."""
    import psutil

    executor, pids, _ = warm_pool(impl, params)
    time.sleep(0.5)  # let the pool settle into idleness
    parent = psutil.Process()
    worker_uss = [psutil.Process(pid).memory_full_info().uss for pid in pids]
    # Other processes the implementation keeps (loky's resource tracker, for example).
    helpers = [p for p in parent.children(recursive=True) if p.pid not in pids]
    helper_uss = []
    for p in helpers:
        try:
            helper_uss.append(p.memory_full_info().uss)
        except psutil.NoSuchProcess:
            pass
    return {
        "worker_uss_bytes": statistics.median(worker_uss),
        "parent_uss_bytes": parent.memory_full_info().uss,
        "helper_processes": len(helper_uss),
        "helper_uss_bytes": sum(helper_uss),
    }


def _with_main(measure):
    return lambda impl, params: measure(impl, dict(params, main=True))


m_cold_start_main = _with_main(m_cold_start)
m_submit_main = _with_main(m_submit)
m_map1_main = _with_main(m_map1)
m_latency_main = _with_main(m_latency)


# -- joblib: Parallel(n_jobs=2) on this package (its import switch) or on joblib's own
# vendored loky ("joblib").


def _joblib(impl):
    if impl.name == "this":
        impl.loky.use_with_joblib()
    elif impl.name != "joblib":
        raise RuntimeError("joblib metrics run on 'this' and 'joblib' only")
    import joblib

    return joblib


def _joblib_shutdown():
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def m_joblib_first(impl, params):
    joblib = _joblib(impl)
    t0 = perf_counter()
    joblib.Parallel(n_jobs=N_WORKERS)(joblib.delayed(main_identity)(i) for i in range(N_WORKERS))
    elapsed = perf_counter() - t0
    _joblib_shutdown()
    return {"first_call_s": elapsed}


def _joblib_tiny(impl, params, n, batch_size):
    joblib = _joblib(impl)
    with joblib.Parallel(n_jobs=N_WORKERS, batch_size=batch_size) as parallel:
        parallel(joblib.delayed(main_identity)(i) for i in range(200))  # warm
        t0 = perf_counter()
        results = parallel(joblib.delayed(main_identity)(i) for i in range(n))
        elapsed = perf_counter() - t0
    if results != list(range(n)):
        raise AssertionError("joblib returned wrong results")
    _joblib_shutdown()
    return {"tasks_per_s": n / elapsed, "total_s": elapsed, "n_tasks": n}


def m_joblib_tiny_auto(impl, params):
    return _joblib_tiny(impl, params, params["n_tasks"], "auto")


def m_joblib_tiny_b1(impl, params):
    return _joblib_tiny(impl, params, params["n_tasks"] // 5, 1)


def _joblib_arrays(impl, params, to_workers):
    import numpy as np

    joblib = _joblib(impl)
    n, size = 16, params["joblib_array_mib"] * MiB
    arrays = [np.full(size, i, dtype=np.uint8) for i in range(n)] if to_workers else None
    with joblib.Parallel(n_jobs=N_WORKERS, max_nbytes=None) as parallel:
        parallel(joblib.delayed(bench_tasks.noop)() for _ in range(4))  # workers up
        times = []
        for _ in range(3):
            t0 = perf_counter()
            if to_workers:
                out = parallel(joblib.delayed(bench_tasks.array_in)(a) for a in arrays)
                ok = out == [size] * n
            else:
                out = parallel(joblib.delayed(bench_tasks.array_out)(size) for _ in range(n))
                ok = all(a.nbytes == size and a[-1] == 7 for a in out)
            times.append(perf_counter() - t0)
            if not ok:
                raise AssertionError("joblib moved the arrays wrong")
            del out
    _joblib_shutdown()
    elapsed = statistics.median(times)
    return {"gbps": n * size / elapsed / 1e9, "total_s": elapsed}


def m_joblib_arrays_in(impl, params):
    return _joblib_arrays(impl, params, True)


def m_joblib_arrays_out(impl, params):
    return _joblib_arrays(impl, params, False)


METRICS = {name[2:]: fn for name, fn in globals().items() if name.startswith("m_")}


def main():
    impl_name, metric, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    # Watchdog: a hang dumps every thread's stack to stderr (bench.py keeps it) and
    # exits, a little before bench.py's own timeout would kill us without a word.
    faulthandler.dump_traceback_later(params["timeout"], exit=True)
    record = {"impl": impl_name, "metric": metric}
    impl = None
    try:
        impl = Impl(impl_name)
        record["info"] = impl.info()
        record["values"] = METRICS[metric](impl, params)
        record["ok"] = True
    except BaseException as exc:
        traceback.print_exc()
        record["ok"] = False
        record["error"] = f"{type(exc).__name__}: {exc}".strip()
    print("BENCH_RESULT " + json.dumps(record), flush=True)

    # Shutting down is part of what is tested: report it on its own line, so that a
    # hang here still leaves the measurement above, and give it a watchdog of its own,
    # shorter than the measurement's.
    faulthandler.dump_traceback_later(params.get("cleanup_timeout", 20), exit=True)
    cleanup = {"ok": True}
    t0 = perf_counter()
    try:
        if impl is not None:
            impl.shutdown_all()
    except BaseException as exc:
        cleanup = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    cleanup["s"] = perf_counter() - t0
    print("BENCH_CLEANUP " + json.dumps(cleanup), flush=True)


if __name__ == "__main__":
    main()
