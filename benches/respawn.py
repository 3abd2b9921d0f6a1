"""Respawn after an idle timeout vs cold start.

    .venv/bin/python benches/respawn.py [--runs 10] [--workers 1] [--timeout 0.3]
    benches/.venv-loky360/bin/python benches/respawn.py      # the same for loky 3.6.0

- cold:    create an executor, submit a trivial task, wait for its result (then shut down).
- respawn: an executor whose workers exited after `timeout` idle seconds (their pids are
           gone); time from submit of a trivial task to its result.
- warm:    the same submit -> result with the worker alive, for reference.

With --workers N, N tasks are submitted at once and the time is until all N results
(so all N workers came back). Prints the median, min and max of each, in milliseconds.
The tasks are builtins (`abs`, `time.sleep`), pickled by reference, so a worker imports
nothing for them: what is measured is the pool, not the import of a task module.
"""

import argparse
import os
import statistics
import sys
import time

def worker_pids(executor):
    if hasattr(executor, "_worker_pids"):  # this package
        return list(executor._worker_pids())
    processes = getattr(executor, "_processes", None) or {}  # loky 3.6
    return list(processes)


def pid_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie nobody reaped yet counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_for(predicate, timeout, interval=0.005):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting")
        time.sleep(interval)


def run_all(executor, n):
    futures = [executor.submit(abs, -i) for i in range(n)]
    assert [f.result(timeout=60) for f in futures] == list(range(n))


def measure_cold(ProcessPoolExecutor, workers, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        executor = ProcessPoolExecutor(max_workers=workers)
        run_all(executor, workers)
        times.append(time.perf_counter() - start)
        executor.shutdown(wait=True)
    return times


def measure_respawn(ProcessPoolExecutor, workers, runs, timeout):
    executor = ProcessPoolExecutor(max_workers=workers, timeout=timeout)
    times, warm = [], []
    try:
        # Bring every worker up (sleeping tasks spread one per worker).
        [f.result(timeout=60) for f in [executor.submit(time.sleep, 0.2) for _ in range(workers)]]
        for _ in range(runs):
            start = time.perf_counter()
            run_all(executor, workers)
            warm.append(time.perf_counter() - start)
            pids = worker_pids(executor)
            # Wait for the idle timeout to retire every worker, and for them to exit.
            wait_for(lambda: not worker_pids(executor), timeout + 30)
            wait_for(lambda: all(pid_gone(p) for p in pids), 30)
            time.sleep(0.05)  # let the pool settle after the exits
            start = time.perf_counter()
            run_all(executor, workers)
            times.append(time.perf_counter() - start)
            new = set(worker_pids(executor))
            assert not new & set(pids), "workers were not replaced"
    finally:
        executor.shutdown(wait=True)
    return times, warm


def describe(name, times):
    ms = sorted(t * 1000 for t in times)
    return (
        f"{name:8s} median {statistics.median(ms):8.2f} ms   "
        f"min {ms[0]:8.2f}   max {ms[-1]:8.2f}   (n={len(ms)})"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=0.3, help="idle timeout (s)")
    args = parser.parse_args()

    import loky
    from loky import ProcessPoolExecutor

    print(f"loky {loky.__version__} from {os.path.dirname(loky.__file__)}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, workers={args.workers}")
    cold = measure_cold(ProcessPoolExecutor, args.workers, args.runs)
    respawn, warm = measure_respawn(ProcessPoolExecutor, args.workers, args.runs, args.timeout)
    print(describe("cold", cold))
    print(describe("respawn", respawn))
    print(describe("warm", warm))
    print(
        f"respawn / cold = {statistics.median(respawn) / statistics.median(cold):.2f}"
    )


if __name__ == "__main__":
    main()
