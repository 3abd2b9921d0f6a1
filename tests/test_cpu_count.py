"""Issue 4: `cpu_count(only_physical_cores=False)` — affinity, the cgroup quota of this
process's own cgroup (v2 and v1), LOKY_MAX_CPU_COUNT, and physical cores.

The cgroup and topology files are faked: `loky._core.cpu_count(only_physical_cores,
limit, root)` reads /proc and /sys below `root`, so these tests do not depend on the
machine they run on (only on its online CPU count and affinity mask, which are the
other terms of the minimum)."""

import os

import pytest

import loky
from loky import _core
from loky.backend import context

import helpers
import lifecycle_tasks as tasks

pytestmark = pytest.mark.timeout(30)


def _machine():
    """What the machine allows without any cgroup or env limit."""
    return min(os.cpu_count(), len(os.sched_getaffinity(0)))


def _tree(root, files):
    for path, text in files.items():
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    return str(root)


def _count(root, only_physical_cores=False, limit=None):
    return _core.cpu_count(only_physical_cores, limit, str(root))


@pytest.fixture(autouse=True)
def no_cpu_env(monkeypatch):
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)


# -- the public function --------------------------------------------------------------


def test_public_names():
    assert loky.cpu_count is context.cpu_count
    assert loky.backend.context.cpu_count is context.cpu_count


def test_cpu_count_is_bounded_by_the_machine():
    n = loky.cpu_count()
    assert isinstance(n, int)
    assert 1 <= n <= _machine()
    physical = loky.cpu_count(only_physical_cores=True)
    assert isinstance(physical, int)
    assert 1 <= physical <= n
    assert loky.cpu_count(True) == physical


def test_loky_max_cpu_count_one(monkeypatch):
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    assert loky.cpu_count() == 1
    assert loky.cpu_count(only_physical_cores=True) == 1
    assert context.cpu_count() == 1


def test_loky_max_cpu_count_above_the_machine_changes_nothing(monkeypatch):
    without = loky.cpu_count()
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", str(without + 100))
    assert loky.cpu_count() == without


@pytest.mark.parametrize("value", ["0", "-3"])
def test_loky_max_cpu_count_never_below_one(monkeypatch, value):
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", value)
    assert loky.cpu_count() == 1


@pytest.mark.parametrize("value", ["abc", "1.5", "", "two"])
def test_invalid_loky_max_cpu_count_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", value)
    with pytest.raises(ValueError, match="LOKY_MAX_CPU_COUNT") as info:
        loky.cpu_count()
    assert repr(value) in str(info.value)


def test_affinity_mask_limits_the_count(tmp_path):
    # In a subprocess, so that this process keeps its own mask.
    result = helpers.run_script(
        tmp_path,
        """
        import os
        import loky
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        print(loky.cpu_count(), loky.cpu_count(only_physical_cores=True))
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]


def test_max_workers_default_uses_the_environment_limit(monkeypatch):
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    executor = loky.ProcessPoolExecutor()
    assert executor._max_workers == 1
    executor.shutdown()


# -- fake trees: the core function ---------------------------------------------------


def test_empty_root_gives_the_machine_count(tmp_path):
    assert _count(tmp_path) == _machine()
    assert _count(tmp_path, only_physical_cores=True) == _machine()


def test_limit_argument(tmp_path):
    assert _count(tmp_path, limit=1) == 1
    assert _count(tmp_path, limit=0) == 1
    assert _count(tmp_path, limit=-5) == 1
    assert _count(tmp_path, limit=10_000) == _machine()


def test_cgroup_v2_quota_150000_over_100000_gives_2(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/user.slice/job.scope\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
            "sys/fs/cgroup/user.slice/cpu.max": "max 100000\n",
            "sys/fs/cgroup/user.slice/job.scope/cpu.max": "150000 100000\n",
        },
    )
    assert _count(root) == min(2, _machine())


def test_cgroup_v2_quota_is_rounded_up_and_never_zero(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/job\n",
            "sys/fs/cgroup/job/cpu.max": "10000 100000\n",
        },
    )
    assert _count(root) == 1


def test_cgroup_v2_unlimited(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/job\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
            "sys/fs/cgroup/job/cpu.max": "max 100000\n",
        },
    )
    assert _count(root) == _machine()


def test_cgroup_v2_own_cgroup_not_only_the_root(tmp_path):
    # The root is unlimited; only this process's own cgroup has a quota.
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/a/b/c\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
            "sys/fs/cgroup/a/b/c/cpu.max": "100000 100000\n",
        },
    )
    assert _count(root) == 1


def test_cgroup_v2_ancestor_quota_applies(tmp_path):
    # A limit on an ancestor cgroup bounds the process too; the tightest wins.
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/parent/child\n",
            "sys/fs/cgroup/parent/cpu.max": "50000 100000\n",
            "sys/fs/cgroup/parent/child/cpu.max": "400000 100000\n",
        },
    )
    assert _count(root) == 1


def test_cgroup_v2_namespaced_root(tmp_path):
    # Inside a container the process sees its cgroup as "/" and the limit at the root.
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "sys/fs/cgroup/cpu.max": "100000 100000\n",
        },
    )
    assert _count(root) == 1


def test_cgroup_v1_quota(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "150000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _count(root) == min(2, _machine())


def test_cgroup_v1_quota_one_cpu(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:cpu,cpuacct:/docker/abc\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _count(root) == 1


def test_cgroup_v1_separate_cpu_hierarchy(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "2:cpuacct:/\n1:cpu:/job\n",
            "sys/fs/cgroup/cpu/job/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu/job/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _count(root) == 1


def test_cgroup_v1_unlimited(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:cpu,cpuacct:/docker/abc\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _count(root) == _machine()


def test_cgroup_v1_namespaced_root(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:cpu,cpuacct:/docker/abc\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _count(root) == 1


def test_cgroup_v1_other_controllers_are_ignored(tmp_path):
    # A quota-looking file under a hierarchy without the cpu controller is not read.
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/job\n",
            "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _count(root) == _machine()


@pytest.mark.parametrize(
    "cpu_max", ["", "garbage\n", "150000\n", "-1 100000\n", "150000 0\n", "max\n"]
)
def test_malformed_cgroup_files_are_ignored(tmp_path, cpu_max):
    root = _tree(
        tmp_path,
        {"proc/self/cgroup": "0::/job\n", "sys/fs/cgroup/job/cpu.max": cpu_max},
    )
    assert _count(root) == _machine()


def test_cgroup_quota_and_limit_argument_combine(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/job\n",
            "sys/fs/cgroup/job/cpu.max": "800000 100000\n",
        },
    )
    assert _count(root, limit=1) == 1
    assert _count(root) == min(8, _machine())


# -- fake trees: physical cores -------------------------------------------------------


def _topology(root, cpus):
    """cpus: list of (package, core) for cpu0, cpu1, ..., all online."""
    files = {"sys/devices/system/cpu/online": f"0-{len(cpus) - 1}\n"}
    for i, (package, core) in enumerate(cpus):
        base = f"sys/devices/system/cpu/cpu{i}/topology"
        files[f"{base}/physical_package_id"] = f"{package}\n"
        files[f"{base}/core_id"] = f"{core}\n"
    return _tree(root, files)


def test_hyperthreads_count_once(tmp_path):
    # Two logical CPUs, hyper-threads of one core.
    root = _topology(tmp_path, [(0, 0), (0, 0)])
    assert _count(root, only_physical_cores=True) == 1
    assert _count(root, only_physical_cores=False) == _machine()


def test_four_threads_on_two_cores(tmp_path):
    root = _topology(tmp_path, [(0, 0), (0, 1), (0, 0), (0, 1)])
    assert _count(root, only_physical_cores=True) == min(2, _machine())


def test_same_core_id_on_two_packages_counts_twice(tmp_path):
    root = _topology(tmp_path, [(0, 0), (1, 0), (0, 0), (1, 0)])
    assert _count(root, only_physical_cores=True) == min(2, _machine())


def test_online_list_with_ranges_and_gaps(tmp_path):
    # Only CPUs 0 and 2 online, on one core each side of a gap.
    files = {"sys/devices/system/cpu/online": "0,2\n"}
    for cpu, core in [(0, 0), (1, 5), (2, 0)]:
        base = f"sys/devices/system/cpu/cpu{cpu}/topology"
        files[f"{base}/physical_package_id"] = "0\n"
        files[f"{base}/core_id"] = f"{core}\n"
    root = _tree(tmp_path, files)
    # cpu1 (the only one on core 5) is offline: one physical core.
    assert _count(root, only_physical_cores=True) == 1


def test_physical_cores_and_cgroup_quota_combine(tmp_path):
    _topology(tmp_path, [(0, 0), (0, 1), (0, 2), (0, 3)])
    root = _tree(
        tmp_path,
        {"proc/self/cgroup": "0::/job\n", "sys/fs/cgroup/job/cpu.max": "100000 100000\n"},
    )
    assert _count(root, only_physical_cores=True) == 1


def test_missing_topology_falls_back_to_logical(tmp_path):
    root = _tree(tmp_path, {"sys/devices/system/cpu/online": "0-1\n"})
    assert _count(root, only_physical_cores=True) == _machine()


def test_real_machine_physical_cores_not_above_logical():
    assert _core.cpu_count(True, None, "/") <= _core.cpu_count(False, None, "/")
    assert _core.cpu_count(False, None, "/") == loky.cpu_count()


def test_cpu_count_in_a_worker_sees_its_env(executor_factory):
    executor = executor_factory(max_workers=1, env={"LOKY_MAX_CPU_COUNT": "1"})
    assert executor.submit(tasks.worker_cpu_count).result(timeout=30) == 1

