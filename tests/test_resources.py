"""What runs out first, and what the user then sees: descriptors and memory.

Live results hold no file descriptor; the sending cache is bounded in descriptors as
well as bytes; a process out of descriptors sends large buffers in-band instead of
failing; a descriptor the kernel drops on receipt fails that one task with the true
cause and keeps the worker; a task costs at most one copy of its payload beyond the
pickle."""

import os

import pytest

import helpers

pytestmark = pytest.mark.timeout(180)


MANY_LIVE_RESULTS = """
import resource
import numpy as np
from loky import ProcessPoolExecutor

resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

def chunk(i):
    return np.full(200 * 1024 // 8, i, dtype=np.float64)  # 200 KiB: a shared segment

with ProcessPoolExecutor(max_workers=2) as executor:
    futures = [executor.submit(chunk, i) for i in range(2000)]
    kept, failures = [], 0
    for f in futures:
        try:
            kept.append(f.result(timeout=120))
        except Exception as exc:
            failures += 1
            error = exc
    assert all(int(a[0]) == i for i, a in enumerate(kept))
    print("failures", failures, "kept", len(kept))
"""


@pytest.mark.posix_only("lowers RLIMIT_NOFILE; Windows handles have no such limit")
def test_thousands_of_live_large_results_fit_in_a_small_descriptor_limit(tmp_path):
    result = helpers.run_script(tmp_path, MANY_LIVE_RESULTS, timeout=170)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["failures", "0", "kept", "2000"]


OUT_OF_DESCRIPTORS = """
import errno, os, resource
import numpy as np
from loky import ProcessPoolExecutor

def big(n):
    return np.ones(n)

def total(a):
    return float(a.sum()), os.getpid()

N = 1 << 17  # 1 MiB of float64: travels through a shared segment
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
executor = ProcessPoolExecutor(max_workers=1)
_, worker = executor.submit(total, np.ones(N)).result(timeout=60)

hoard = []
try:
    while True:
        hoard.append(os.dup(0))
except OSError as exc:
    assert exc.errno == errno.EMFILE

# Sending: no segment can be made here, the array goes in-band.
print("sent", executor.submit(total, np.ones(N)).result(timeout=60) == (float(N), worker))

# Receiving: the kernel drops the segment's descriptor; that task fails, saying so.
try:
    executor.submit(big, N).result(timeout=60)
    print("received: no error")
except OSError as exc:
    print("received", exc.errno == errno.EMFILE, "no file descriptor left" in str(exc))

for fd in hoard:
    os.close(fd)
# The worker was kept, and large results flow again.
print("after", float(executor.submit(big, N).result(timeout=60).sum()) == float(N),
      executor.submit(os.getpid).result(timeout=60) == worker)
executor.shutdown()
"""


@pytest.mark.posix_only("lowers RLIMIT_NOFILE; Windows handles have no such limit")
def test_running_out_of_descriptors_falls_back_or_fails_one_task_with_the_cause(tmp_path):
    result = helpers.run_script(tmp_path, OUT_OF_DESCRIPTORS, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "sent True",
        "received True True",
        "after True True",
    ]


ONE_COPY = """
import resource
from loky import ProcessPoolExecutor

SIZE = 512 << 20

def length(data):
    return len(data)

executor = ProcessPoolExecutor(max_workers=1)
executor.submit(length, b"warm").result(timeout=60)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
data = b"x" * SIZE
assert executor.submit(length, data).result(timeout=120) == SIZE
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(round((peak - base) / SIZE, 2))
executor.shutdown()
"""


@pytest.mark.posix_only("measures the peak memory with resource.getrusage")
def test_an_in_band_payload_costs_one_copy_beyond_the_pickle(tmp_path):
    # The argument itself, plus its pickle: 2x. A copy more (3x) is a defect.
    result = helpers.run_script(tmp_path, ONE_COPY, timeout=150)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 2.5, result.stdout


CACHE_SHARE_OF_DESCRIPTORS = """
import resource

# Before loky is imported: the cache takes its share of the limit then.
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))

import numpy as np
import transport_tasks as tasks
from loky import ProcessPoolExecutor, _core
from loky._payload import SHARED_MIN

N = SHARED_MIN // 8 * 4  # float64: travels through a shared segment
most = 0
with ProcessPoolExecutor(max_workers=1) as executor:
    for value in range(8):
        executor.submit(tasks.keep, np.full(N, value, dtype=np.float64)).result()
        most = max(most, _core.segment_cache_usage()[0])
    assert executor.submit(tasks.kept_sums).result() == [float(v * N) for v in range(8)]
print(most)
"""


@pytest.mark.posix_only("lowers RLIMIT_NOFILE; Windows handles have no such limit")
def test_the_cache_keeps_no_more_segments_than_a_share_of_the_descriptor_limit(tmp_path):
    # 128 descriptors: 4 segments at most (a 32nd). The worker keeps every array it
    # gets, so none of their segments is free to be written again.
    result = helpers.run_script(
        tmp_path,
        CACHE_SHARE_OF_DESCRIPTORS,
        env={"PYTHONPATH": os.path.dirname(helpers.__file__)},
    )
    assert result.returncode == 0, result.stderr
    assert 1 <= int(result.stdout) <= 4


STRAY_BEYOND_THE_LIMIT = """
import os, resource, sys
from loky import ProcessPoolExecutor
from loky.backend import get_context

def has_descriptor(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False

def exit_with_descriptor_state(fd):
    sys.exit(3 if has_descriptor(fd) else 0)

if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1024), hard))
    read, write = os.pipe()
    os.dup2(write, 300)  # inheritable, as a descriptor handed down by a job server
    os.close(write)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    with ProcessPoolExecutor(max_workers=1) as executor:
        print(executor.submit(has_descriptor, 300).result(timeout=60))
    process = get_context("loky").Process(target=exit_with_descriptor_state, args=(300,))
    process.start()
    process.join(60)
    print(process.exitcode, has_descriptor(300))
"""


@pytest.mark.posix_only("lowers RLIMIT_NOFILE; Windows handles have no such limit")
def test_an_inherited_descriptor_beyond_the_limit_neither_stops_workers_nor_reaches_them(
    tmp_path,
):
    # posix_spawn cannot be asked to close a descriptor numbered past the soft limit:
    # the pool could not start any worker. The children close it themselves.
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] <= 300:
        pytest.skip("the hard descriptor limit leaves no room for descriptor 300")
    result = helpers.run_script(tmp_path, STRAY_BEYOND_THE_LIMIT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "0", "True"]
