"""One workload on one pool, in a fresh interpreter; workloads.py runs this script once
per (pool, workload, repetition), with the interpreter of the right virtualenv.

    python workloads_measure.py POOL WORKLOAD PARAMS_JSON

POOL is one of: this (the package of this repository), loky370 (loky 3.7.0 from PyPI),
joblib (joblib.Parallel on its vendored loky), stdlib (concurrent.futures'
ProcessPoolExecutor), mp_pool (multiprocessing.Pool), mpire (mpire.WorkerPool),
pebble (pebble.ProcessPool). Each is used as its documentation shows: the map of each
API with its default chunking, per-worker state through the pool's initializer (mpire:
``worker_init`` with ``use_worker_state``), and its own way to recycle and to stop.

Prints ``BENCH_RESULT {json}``. Times are perf_counter seconds, except the
``*_monotonic`` stamps (CLOCK_MONOTONIC, comparable with the harness's clock).
"""

import faulthandler
import json
import os
import sys
import time
import traceback
from time import perf_counter

N_WORKERS = 2
POOLS = ["this", "loky370", "joblib", "stdlib", "mp_pool", "mpire", "pebble"]


def versions(pool):
    import importlib.metadata as metadata
    import importlib.util

    if pool in ("this", "loky370"):
        import loky

        has_core = importlib.util.find_spec("loky._core") is not None
        if (pool == "this") != has_core:
            raise RuntimeError(f"{pool}: wrong loky imported from {loky.__file__}")
        return f"loky {loky.__version__}" + (" (this package)" if pool == "this" else "")
    if pool == "joblib":
        import joblib
        from joblib.externals import loky

        return f"joblib {joblib.__version__}, vendored loky {loky.__version__}"
    if pool in ("stdlib", "mp_pool"):
        import multiprocessing

        return f"Python {sys.version.split()[0]} ({multiprocessing.get_start_method()})"
    return f"{pool} {metadata.version({'mpire': 'mpire', 'pebble': 'Pebble'}[pool])}"


class Timer:
    """Stamps the moments a workload passes; `values()` gives them relative to start."""

    def __init__(self):
        self.t0 = perf_counter()
        self.stamps = {}

    def mark(self, name):
        self.stamps[name] = perf_counter() - self.t0


# -- one map, each pool its own way ----------------------------------------------------


def run_map(pool, fn, items, *, init=None, initargs=(), mpire=None, max_tasks=None,
            chunksize=None, again=True):
    """Make a pool of 2 workers, map `fn` over `items` (with `again`, a second time on
    the same pool), shut the pool down.

    `mpire`: (fn, worker_init, use_worker_state, shared_objects) in mpire's calling
    convention. `max_tasks`: recycle a worker after that many tasks (None: never).
    `chunksize`: None leaves each API's default. Returns (results, Timer) with stamps
    "results" (all results of the first map in hand), "again_s" (how long the second
    map took) and "exit" (pool shut down, workers joined)."""
    timer = Timer()

    def mapped(map_once):
        """The first map's results; stamps "results", and "again_s" for the second."""
        results = map_once()
        timer.mark("results")
        if again:
            t0 = perf_counter()
            if len(map_once()) != len(results):
                raise AssertionError("the second map gave other results")
            timer.stamps["again_s"] = perf_counter() - t0
        return results

    if pool in ("this", "loky370"):
        import loky

        if max_tasks is not None and pool == "loky370":
            raise NotSupported("loky 3.7 cannot recycle workers by task count")
        extra = {} if max_tasks is None else {"max_tasks_per_child": max_tasks}
        executor = loky.get_reusable_executor(
            max_workers=N_WORKERS, initializer=init, initargs=initargs, **extra)
        results = mapped(lambda: list(executor.map(fn, items, chunksize=chunksize or 1)))
        executor.shutdown(wait=True)
    elif pool == "joblib":
        from joblib import Parallel, delayed
        from joblib.externals.loky import get_reusable_executor

        if max_tasks is not None:
            raise NotSupported("joblib's loky backend cannot recycle workers by task count")
        extra = {} if init is None else {"initializer": init, "initargs": initargs}
        batch = {} if chunksize is None else {"batch_size": chunksize}
        results = mapped(lambda: Parallel(n_jobs=N_WORKERS, **batch, **extra)(
            delayed(fn)(x) for x in items))
        get_reusable_executor().shutdown(wait=True)
    elif pool == "stdlib":
        from concurrent.futures import ProcessPoolExecutor

        if max_tasks is not None and sys.version_info < (3, 13):
            # CPython gh-115634, fixed in 3.13 and later patch releases only.
            raise NotSupported("ProcessPoolExecutor(max_tasks_per_child=...) deadlocks "
                               "once a worker is replaced while tasks are queued on "
                               "Python < 3.13 (CPython issue gh-115634)")
        extra = {} if max_tasks is None else {"max_tasks_per_child": max_tasks}
        with ProcessPoolExecutor(N_WORKERS, initializer=init, initargs=initargs,
                                 **extra) as executor:
            results = mapped(lambda: list(executor.map(fn, items, chunksize=chunksize or 1)))
    elif pool == "mp_pool":
        import multiprocessing

        with multiprocessing.Pool(N_WORKERS, initializer=init, initargs=initargs,
                                  maxtasksperchild=max_tasks) as mp_pool:
            results = mapped(lambda: mp_pool.map(fn, items, chunksize=chunksize))
            mp_pool.close()
            mp_pool.join()
    elif pool == "mpire":
        from mpire import WorkerPool

        fn, worker_init, use_state, shared = mpire or (fn, None, False, None)
        # keep_alive: the second map reuses the workers (and their state), as mpire's
        # documentation shows for consecutive maps.
        with WorkerPool(n_jobs=N_WORKERS, use_worker_state=use_state,
                        shared_objects=shared, keep_alive=again) as mpire_pool:
            results = mapped(lambda: mpire_pool.map(
                fn, items, worker_init=worker_init, worker_lifespan=max_tasks,
                chunk_size=chunksize, concatenate_numpy_output=False))
    elif pool == "pebble":
        from pebble import ProcessPool

        with ProcessPool(max_workers=N_WORKERS, max_tasks=max_tasks or 0, initializer=init,
                         initargs=initargs) as pebble_pool:
            results = mapped(lambda: list(
                pebble_pool.map(fn, items, chunksize=chunksize or 1).result()))
    else:
        raise ValueError(f"unknown pool {pool!r}")
    timer.mark("exit")
    return results, timer


class NotSupported(Exception):
    """The pool has no way to do what the workload asks."""


# -- workloads -------------------------------------------------------------------------


def w_numerical(pool, params):
    import numpy as np

    from workload_tasks import numerical

    tiles = numerical.make_tiles(params["tiles"], params["tile_size"])
    results, timer = run_map(
        pool, numerical.convolve, tiles, mpire=(numerical.convolve, None, False, None))
    for i in (0, len(tiles) - 1):
        if not np.allclose(results[i], numerical.convolve(tiles[i])):
            raise AssertionError(f"tile {i} convolved wrong")
    return timer


def w_stateful(pool, params):
    from workload_tasks import stateful

    documents = stateful.make_documents(params["documents"], params["words"])
    results, timer = run_map(
        pool, stateful.count_prefixes, documents, init=stateful.init_worker,
        mpire=(stateful.mpire_count_prefixes, stateful.mpire_init, True, None))
    index = stateful.build_index()
    for i in range(0, len(documents), len(documents) // 10):
        if results[i] != stateful.count_prefixes_with(index, documents[i]):
            raise AssertionError(f"document {i} counted wrong")
    return timer


def _check_lookups(results, keys):
    from workload_tasks import init_table

    if len(results) != len(keys):
        raise AssertionError(f"{len(results)} results for {len(keys)} keys")
    sample = range(0, len(keys), len(keys) // 8)
    expected = init_table.expected([keys[i] for i in sample])
    if [results[i] for i in sample] != expected:
        raise AssertionError("lookups answered wrong")


def w_init_table(pool, params):
    from workload_tasks import init_table

    keys = list(range(params["lookups"]))
    results, timer = run_map(
        pool, init_table.lookup, keys, init=init_table.init_worker,
        mpire=(init_table.mpire_lookup, init_table.mpire_init, True, None))
    _check_lookups(results, keys)
    return timer


def w_init_shared(pool, params):
    """The same lookups, the table built once in the parent and handed to the workers
    through the initializer's arguments (mpire: shared_objects); timed from the start
    of the build."""
    from workload_tasks import init_table

    keys = list(range(params["lookups"]))
    t0 = perf_counter()
    table = init_table.build_table()
    built_s = perf_counter() - t0
    results, timer = run_map(
        pool, init_table.lookup, keys, init=init_table.set_table, initargs=(table,),
        mpire=(init_table.mpire_lookup_shared, None, False, table))
    for moment in ("results", "exit"):
        timer.stamps[moment] += built_s
    timer.stamps["built"] = built_s
    _check_lookups(results, keys)
    return timer


def w_recycle(pool, params):
    from workload_tasks import small

    n, per_child = params["recycle_tasks"], params["max_tasks"]
    results, timer = run_map(pool, small.square_pid, range(n), max_tasks=per_child,
                             chunksize=1, again=False)
    if [r[0] for r in results] != [i * i for i in range(n)]:
        raise AssertionError("recycled pool answered wrong")
    timer.stamps["workers_used"] = len({r[1] for r in results})
    if timer.stamps["workers_used"] < n // per_child:
        raise AssertionError(f"only {timer.stamps['workers_used']} workers for {n} tasks "
                             f"at {per_child} per worker: no recycling")
    return timer


def w_shutdown(pool, params):
    """One task stuck in time.sleep(60) and more queued behind it; then each pool's way
    of stopping now. The stamp "stopped" is when that returned; the harness adds the
    moment the process exited (see shutdown_start_monotonic)."""
    from workload_tasks import small

    n_queued = params["queued"]
    timer = Timer()
    if pool in ("this", "loky370", "joblib"):
        if pool == "joblib":
            from joblib.externals.loky import get_reusable_executor
        else:
            from loky import get_reusable_executor
        executor = get_reusable_executor(max_workers=N_WORKERS)
        up = _start_stuck(executor.submit, small, n_queued)
        timer = Timer()
        executor.shutdown(wait=True, kill_workers=True)
    elif pool == "stdlib":
        from concurrent.futures import ProcessPoolExecutor

        executor = ProcessPoolExecutor(N_WORKERS)
        up = _start_stuck(executor.submit, small, n_queued)
        # Before Python 3.14 (terminate_workers), ending the workers takes the
        # private _processes, which shutdown() clears: read it first.
        processes = list(executor._processes.values())
        timer = Timer()
        executor.shutdown(wait=False, cancel_futures=True)
        if hasattr(executor, "terminate_workers"):
            executor.terminate_workers()
        else:
            for process in processes:
                process.terminate()
    elif pool == "mp_pool":
        import multiprocessing

        mp_pool = multiprocessing.Pool(N_WORKERS)
        up = _start_stuck(lambda fn, *a: _MpFuture(mp_pool.apply_async(fn, a)), small,
                          n_queued)
        timer = Timer()
        mp_pool.terminate()
        mp_pool.join()
    elif pool == "mpire":
        from mpire import WorkerPool

        mpire_pool = WorkerPool(n_jobs=N_WORKERS)
        up = _start_stuck(lambda fn, *a: _MpFuture(mpire_pool.apply_async(fn, a)), small,
                          n_queued)
        timer = Timer()
        mpire_pool.terminate()
    elif pool == "pebble":
        from pebble import ProcessPool

        pebble_pool = ProcessPool(max_workers=N_WORKERS)
        up = _start_stuck(lambda fn, *a: pebble_pool.schedule(fn, args=a), small, n_queued)
        timer = Timer()
        pebble_pool.stop()
        pebble_pool.join()
    else:
        raise ValueError(f"unknown pool {pool!r}")
    timer.mark("stopped")
    _wait_ended(up, deadline=time.monotonic() + 10)
    timer.mark("workers_ended")
    timer.stamps["shutdown_start_monotonic"] = (time.monotonic()
                                                - (perf_counter() - timer.t0))
    timer.stamps["workers_before"] = up
    return timer


def _wait_ended(pids, deadline):
    """Wait until none of `pids` runs any more (exited, reaped or not)."""
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.0002)


class _MpFuture:
    """An AsyncResult (multiprocessing, mpire) seen as a future."""

    def __init__(self, async_result):
        self._async_result = async_result

    def result(self, timeout=None):
        return self._async_result.get(timeout)


def _start_stuck(submit, small, n_queued):
    """Both workers up (a getpid each, until two pids answered), then one stuck task
    running and `n_queued` more queued. Returns the workers' pids."""
    pids = set()
    deadline = time.monotonic() + 60
    while len(pids) < N_WORKERS and time.monotonic() < deadline:
        futures = [submit(small.stuck, 0.05) for _ in range(N_WORKERS)]
        pids.update(f.result(timeout=60) for f in futures)
    for _ in range(1 + n_queued):
        submit(small.stuck, 60)
    time.sleep(0.2)  # the first one is running by now
    return sorted(pids)


def w_gridsearch(pool, params):
    """scikit-learn's GridSearchCV(n_jobs=2) on the digits dataset through joblib: on
    joblib's vendored loky, or on this package (loky.use_with_joblib())."""
    if pool == "this":
        import loky

        loky.use_with_joblib()
    elif pool != "joblib":
        raise NotSupported("joblib runs on its own loky or on this package only")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    grid = {"C": [1, 10, 100], "gamma": [1e-4, 1e-3, 1e-2]}
    timer = Timer()
    search = GridSearchCV(SVC(), grid, cv=5, n_jobs=N_WORKERS).fit(X, y)
    timer.mark("results")
    t1 = perf_counter()
    GridSearchCV(SVC(), grid, cv=5, n_jobs=N_WORKERS).fit(X, y)
    timer.stamps["second_fit"] = perf_counter() - t1
    if not 0.9 < search.best_score_ <= 1.0:
        raise AssertionError(f"best score {search.best_score_}")
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
    timer.mark("exit")
    return timer


WORKLOADS = {name[2:]: fn for name, fn in globals().items() if name.startswith("w_")}


def main():
    pool, workload, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    faulthandler.dump_traceback_later(params["timeout"], exit=True)
    record = {"pool": pool, "workload": workload}
    try:
        record["version"] = versions(pool)
        if workload != "info":
            record["values"] = WORKLOADS[workload](pool, params).stamps
        record["ok"] = True
    except NotSupported as exc:
        record.update(ok=False, unsupported=True, error=str(exc))
    except BaseException as exc:
        traceback.print_exc()
        record.update(ok=False, error=f"{type(exc).__name__}: {exc}".strip())
    print("BENCH_RESULT " + json.dumps(record), flush=True)
    faulthandler.dump_traceback_later(params.get("cleanup_timeout", 20), exit=True)


if __name__ == "__main__":
    main()
