"""The first result as a user's script sees it, against an interpreter's bare start.

    .venv/bin/python benches/first_result.py [--repeat 15] [--python PATH]

Writes a few scripts the way users write them into a fresh temporary directory: each
imports what scripts commonly import first (nothing, argparse and json, or numpy too),
then `from loky import get_reusable_executor`, and times, from just before the
executor is made, `get_reusable_executor(max_workers=2).submit(inc, 1).result()`, with
`inc` defined in the script itself or in a module beside it. Each script runs as
``python script.py`` from its directory, a fresh process each time, interleaved with
``python -c pass`` (timed from here, start to exit: the bare start). Nothing of
benches/ is on the path: the scripts see the interpreter's own site-packages only.

Prints the median (min–max) of each in ms, and the gap to the bare start's median.
`--importtime` runs each script once more with PYTHONPROFILEIMPORTTIME=1 (which the
workers inherit) and prints what the parent imported after the clock started and what
each worker imported, with the time each took.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

IMPORTS = {
    "nothing": "",
    "argparse, json": "import argparse\nimport json\n",
    "numpy, argparse, json": "import argparse\nimport json\n\nimport numpy as np\n",
}

SCRIPT = '''{imports}from time import perf_counter, process_time

from loky import get_reusable_executor
{task_import}

{task_def}
if __name__ == "__main__":
    t0 = perf_counter()
    cpu0 = process_time()
    print("CLOCK_STARTS", flush=True)
    executor = get_reusable_executor(max_workers=2)
    worker_cpu = executor.submit(inc, 1).result()
    elapsed = perf_counter() - t0
    parent_cpu = process_time() - cpu0
    print("CLOCK_STOPS", flush=True)
    print(f"FIRST_RESULT_MS {{elapsed * 1e3:.3f}} {{worker_cpu * 1e3:.3f}} "
          f"{{parent_cpu * 1e3:.3f}}")
'''

# The task returns the CPU time its worker has used so far (all its threads): the
# worker's start, counted in a way the machine's load does not inflate.
TASK_MODULE = '''import time


def inc(x):
    return time.process_time()
'''


def write_scripts(directory):
    """{(imports, where): path} of the scripts, plus the module beside them."""
    with open(os.path.join(directory, "tasks.py"), "w") as f:
        f.write(TASK_MODULE)
    scripts = {}
    for i, (label, imports) in enumerate(IMPORTS.items()):
        for where in ("script", "module beside it"):
            in_script = where == "script"
            text = SCRIPT.format(
                imports=imports + ("\n" if imports else ""),
                task_import="" if in_script else "from tasks import inc\n",
                task_def=TASK_MODULE + "\n" if in_script else "",
            )
            path = os.path.join(directory, f"script_{i}_{'main' if in_script else 'module'}.py")
            with open(path, "w") as f:
                f.write(text)
            scripts[(label, where)] = path
    return scripts


def run_script(python, path, env=None):
    out = subprocess.run([python, path], cwd=os.path.dirname(path), capture_output=True,
                         text=True, timeout=120, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("FIRST_RESULT_MS "):
            return [float(v) / 1e3 for v in line.split()[1:]], out
    raise RuntimeError(f"{path} failed:\n{out.stderr[-3000:]}")


def bare_start(python):
    t0 = time.perf_counter()
    subprocess.run([python, "-c", "pass"], check=True, timeout=60)
    return time.perf_counter() - t0


def bare_cpu(python):
    """CPU time an interpreter has used once it has started (site included)."""
    out = subprocess.run([python, "-c", "import time; print(time.process_time())"],
                         check=True, timeout=60, capture_output=True, text=True)
    return float(out.stdout)


def importtime_report(python, path):
    """What was imported after the clock started: in the parent (its stderr lines
    between the two marks) and in the workers (their stderr lines, told apart by
    pid through a wrapper would be costly: a worker's imports all follow its own
    start, and the parent's stop at CLOCK_STOPS)."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1", PYTHONUNBUFFERED="1")
    merged = subprocess.run([python, path], cwd=os.path.dirname(path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=120).stdout
    lines = merged.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("CLOCK_STARTS"))
    after = [line for line in lines[start + 1:] if line.startswith("import time:")]
    return "\n".join(after)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter whose loky is measured (default: this one)")
    parser.add_argument("--importtime", action="store_true",
                        help="also show what is imported after the clock starts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loky-first-result-") as directory:
        scripts = write_scripts(directory)
        # tasks.py byte-compiled, as a user's module is after its first run (even where
        # PYTHONDONTWRITEBYTECODE keeps the interpreter from writing it).
        subprocess.run([args.python, "-m", "py_compile", os.path.join(directory, "tasks.py")],
                       check=True, timeout=60)
        for path in scripts.values():  # warm the page cache
            run_script(args.python, path)
        bare, firsts = [], {key: [] for key in scripts}
        cpus = {key: [] for key in scripts}
        bare_cpus = []
        loads = []
        for rep in range(args.repeat):
            loads.append(os.getloadavg()[0])
            order = list(scripts)
            order = order[rep % len(order):] + order[:rep % len(order)]
            bare.append(bare_start(args.python))
            bare_cpus.append(bare_cpu(args.python))
            for key in order:
                (first, worker_cpu, parent_cpu), _ = run_script(args.python, scripts[key])
                firsts[key].append(first)
                cpus[key].append((worker_cpu, parent_cpu))
            bare.append(bare_start(args.python))
        bare_median = statistics.median(bare)
        print(f"python: {args.python}; {args.repeat} runs each; load average "
              f"{min(loads):.2f}–{max(loads):.2f}")
        print(f"bare start (python -c pass): {bare_median * 1e3:.1f} ms "
              f"({min(bare) * 1e3:.1f}–{max(bare) * 1e3:.1f})")
        # On a busy machine the minimum is the steadier figure: a run can only be
        # slowed down by the load, never sped up.
        print("| script imports | task defined in | create → first result, ms | "
              "median − bare median, ms | min − bare min, ms |")
        print("|---|---|---|---|---|")
        for (label, where), values in firsts.items():
            median = statistics.median(values)
            print(f"| {label} | {where} | {median * 1e3:.1f} ({min(values) * 1e3:.1f}–"
                  f"{max(values) * 1e3:.1f}) | {(median - bare_median) * 1e3:+.1f} | "
                  f"{(min(values) - min(bare)) * 1e3:+.1f} |")
        print(f"\nCPU time, median: a bare interpreter once started "
              f"{statistics.median(bare_cpus) * 1e3:.1f} ms")
        print("| script imports | task defined in | worker CPU at its first task, ms | "
              "parent CPU, create → first result, ms |")
        print("|---|---|---|---|")
        for (label, where), values in cpus.items():
            worker = statistics.median(v[0] for v in values)
            parent = statistics.median(v[1] for v in values)
            print(f"| {label} | {where} | {worker * 1e3:.1f} | {parent * 1e3:.1f} |")
        if args.importtime:
            for key, path in scripts.items():
                print(f"\n== imports after the clock started: {key}")
                print(importtime_report(args.python, path))


if __name__ == "__main__":
    main()
