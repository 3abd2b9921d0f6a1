"""Issue 4: `cpu_count(only_physical_cores=False)` — affinity, the cgroup quota of this
process's own cgroup (v2 and v1), LOKY_MAX_CPU_COUNT, and physical cores.

`loky.backend.context` offers the count composed from one helper per source, as loky
does (they live in `loky.backend._cpu_count`; one replaced on `loky.backend.context`
is the one used).
The cgroup and topology files are faked (`_cpu_count_cgroup` takes a root directory;
`_PROC_CPUINFO` and `_SYS_CPU` name the topology sources), and the composition is
checked with the helpers replaced, so these tests do not depend on the machine."""

import os
import sys
import warnings

import psutil
import pytest

import loky
from loky.backend import context

import helpers
import lifecycle_tasks as tasks

pytestmark = pytest.mark.timeout(30)

# What `_cpu_count_cgroup` returns when no quota applies: the count it is given.
NO_QUOTA = 1000


def _machine():
    """What the machine allows without any cgroup or env limit."""
    return min(os.cpu_count(), len(psutil.Process().cpu_affinity()))


def _tree(root, files):
    for path, text in files.items():
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    return str(root)


def _cgroup(root):
    return context._cpu_count_cgroup(NO_QUOTA, root=str(root))


@pytest.fixture(autouse=True)
def no_cpu_env(monkeypatch):
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    monkeypatch.setattr(context, "physical_cores_cache", {})


# -- the public function --------------------------------------------------------------


def test_public_names():
    assert loky.cpu_count is context.cpu_count
    assert loky.backend.context.cpu_count is context.cpu_count


def test_a_helper_replaced_on_the_context_module_is_the_one_used():
    from unittest import mock

    original = context._cpu_count_cgroup
    # mock.patch and monkeypatch (the fixtures below) restore in different ways.
    with mock.patch("loky.backend.context._cpu_count_cgroup", return_value=1) as cgroup:
        assert loky.cpu_count() == 1
    cgroup.assert_called_once()
    assert context._cpu_count_cgroup is original
    assert 1 <= loky.cpu_count() <= _machine()
    assert cgroup.call_count == 1  # the real helper ran this time


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
        import psutil
        import loky
        this = psutil.Process()
        this.cpu_affinity(sorted(this.cpu_affinity())[:1])
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


# -- the composition: the minimum of every source ---------------------------------------


@pytest.fixture
def sources(monkeypatch):
    """Replace each source of the count; returns a dict to set them."""
    values = {"os": 8, "affinity": None, "cgroup": 8, "windows": 8, "physical": (4, None)}
    monkeypatch.setattr(os, "cpu_count", lambda: values["os"])
    monkeypatch.setattr(context, "_cpu_count_affinity_set", lambda: values["affinity"])
    monkeypatch.setattr(context, "_cpu_count_cgroup", lambda n: values["cgroup"])
    # (Windows' own count: its processors, affinity and job; asked there only.)
    monkeypatch.setattr(context, "_cpu_count_win32", lambda: values["windows"])
    monkeypatch.setattr(
        context, "_count_physical_cores", lambda cpu_set=None: values["physical"]
    )
    return values


def test_the_count_is_the_tightest_source(sources, monkeypatch):
    assert context.cpu_count() == 8
    sources["affinity"] = {0, 1, 2, 3, 4, 5}
    assert context.cpu_count() == 6
    sources["cgroup"] = 3
    assert context.cpu_count() == 3
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "2")
    assert context.cpu_count() == 2
    assert context.cpu_count(only_physical_cores=True) == 2
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT")
    sources["cgroup"] = 8
    assert context.cpu_count(only_physical_cores=True) == 4
    if sys.platform == "win32":
        sources["windows"] = 1
        assert context.cpu_count() == 1


def test_unknown_machine_count_counts_one(sources):
    sources["os"] = None
    sources["cgroup"] = 1
    assert context.cpu_count() == 1


def test_physical_cores_unknown_warns_once_and_counts_logical(monkeypatch, tmp_path):
    if sys.platform == "win32":
        monkeypatch.setattr(loky._core, "physical_cores", lambda: None)
    else:
        monkeypatch.setattr(context, "_PROC_CPUINFO", str(tmp_path / "missing"))
    expected = loky.cpu_count()
    with pytest.warns(UserWarning, match="Could not find the number of physical cores"):
        assert loky.cpu_count(only_physical_cores=True) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loky.cpu_count(only_physical_cores=True) == expected


# -- fake trees: the cgroup quota ----------------------------------------------------


def test_empty_root_has_no_quota(tmp_path):
    assert _cgroup(tmp_path) == NO_QUOTA


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
    assert _cgroup(root) == 2


def test_cgroup_v2_quota_is_rounded_up_and_never_zero(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/job\n",
            "sys/fs/cgroup/job/cpu.max": "10000 100000\n",
        },
    )
    assert _cgroup(root) == 1


def test_cgroup_v2_unlimited(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/job\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
            "sys/fs/cgroup/job/cpu.max": "max 100000\n",
        },
    )
    assert _cgroup(root) == NO_QUOTA


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
    assert _cgroup(root) == 1


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
    assert _cgroup(root) == 1


def test_cgroup_v2_namespaced_root(tmp_path):
    # Inside a container the process sees its cgroup as "/" and the limit at the root.
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "sys/fs/cgroup/cpu.max": "100000 100000\n",
        },
    )
    assert _cgroup(root) == 1


def test_cgroup_v1_quota(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "150000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _cgroup(root) == 2


def test_cgroup_v1_quota_one_cpu(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:cpu,cpuacct:/docker/abc\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _cgroup(root) == 1


def test_cgroup_v1_separate_cpu_hierarchy(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "2:cpuacct:/\n1:cpu:/job\n",
            "sys/fs/cgroup/cpu/job/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu/job/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _cgroup(root) == 1


def test_cgroup_v1_hierarchy_mounted_under_its_listed_name(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "3:cpuacct,cpu:/job\n",
            "sys/fs/cgroup/cpuacct,cpu/job/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpuacct,cpu/job/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _cgroup(root) == 1


def test_cgroup_v1_unlimited(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:cpu,cpuacct:/docker/abc\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _cgroup(root) == NO_QUOTA


def test_cgroup_v1_namespaced_root(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:cpu,cpuacct:/docker/abc\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _cgroup(root) == 1


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
    assert _cgroup(root) == NO_QUOTA


@pytest.mark.parametrize(
    "cpu_max", ["", "garbage\n", "150000\n", "-1 100000\n", "150000 0\n", "max\n"]
)
def test_malformed_cgroup_files_are_ignored(tmp_path, cpu_max):
    root = _tree(
        tmp_path,
        {"proc/self/cgroup": "0::/job\n", "sys/fs/cgroup/job/cpu.max": cpu_max},
    )
    assert _cgroup(root) == NO_QUOTA


def test_cgroup_quota_of_eight_cpus(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/job\n",
            "sys/fs/cgroup/job/cpu.max": "800000 100000\n",
        },
    )
    assert _cgroup(root) == 8


# -- fake trees: physical cores -------------------------------------------------------


def _cpuinfo(monkeypatch, tmp_path, cpus):
    """A /proc/cpuinfo listing cpus: [(processor, physical id, core id)]."""
    text = "".join(
        f"processor\t: {cpu}\nmodel name\t: fake\nphysical id\t: {package}\n"
        f"core id\t\t: {core}\n\n"
        for cpu, package, core in cpus
    )
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    monkeypatch.setattr(context, "_PROC_CPUINFO", str(path))


def test_hyperthreads_count_once(monkeypatch, tmp_path):
    _cpuinfo(monkeypatch, tmp_path, [(0, 0, 0), (1, 0, 0)])
    assert context._count_physical_cores_linux() == 1


def test_four_threads_on_two_cores(monkeypatch, tmp_path):
    _cpuinfo(monkeypatch, tmp_path, [(0, 0, 0), (1, 0, 1), (2, 0, 0), (3, 0, 1)])
    assert context._count_physical_cores_linux() == 2


def test_same_core_id_on_two_packages_counts_twice(monkeypatch, tmp_path):
    _cpuinfo(monkeypatch, tmp_path, [(0, 0, 0), (1, 1, 0), (2, 0, 0), (3, 1, 0)])
    assert context._count_physical_cores_linux() == 2


# The count from the CPUs of an affinity mask reads Linux's topology files (elsewhere
# the machine's cores are counted).
LINUX_TOPOLOGY = pytest.mark.skipif(
    sys.platform != "linux", reason="counts cores from Linux's /proc/cpuinfo and sysfs"
)


@LINUX_TOPOLOGY
def test_only_the_cpus_of_the_affinity_mask_count(monkeypatch, tmp_path):
    # cpu0/cpu1 and cpu2/cpu3 are hyper-threads of two cores.
    _cpuinfo(monkeypatch, tmp_path, [(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 0, 1)])
    assert context._count_physical_cores_linux({0, 1}) == 1
    assert context._count_physical_cores_linux({0, 2}) == 2
    assert context._count_physical_cores({0, 1}) == (1, None)
    assert context._count_physical_cores({0, 1, 2, 3}) == (2, None)


@LINUX_TOPOLOGY
def test_physical_cores_are_kept_per_affinity_mask(monkeypatch, tmp_path):
    _cpuinfo(monkeypatch, tmp_path, [(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 0, 1)])
    assert context._count_physical_cores({0, 1}) == (1, None)
    _cpuinfo(monkeypatch, tmp_path, [(0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 0, 3)])
    assert context._count_physical_cores({0, 1}) == (1, None)  # kept
    assert context._count_physical_cores({0, 1, 2}) == (3, None)  # another mask


def _sysfs(root, cpus):
    """sysfs topology files for cpus: [(cpu, package, core)]."""
    files = {}
    for cpu, package, core in cpus:
        base = f"cpu{cpu}/topology"
        files[f"{base}/physical_package_id"] = f"{package}\n"
        files[f"{base}/core_id"] = f"{core}\n"
    files["cpufreq/policy0"] = ""  # not a CPU
    return _tree(root, files)


def test_without_core_ids_in_cpuinfo_sysfs_is_read(monkeypatch, tmp_path):
    # As on arm64, whose /proc/cpuinfo names no core.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n\nprocessor\t: 1\n\n")
    monkeypatch.setattr(context, "_PROC_CPUINFO", str(cpuinfo))
    sys_cpu = _sysfs(tmp_path / "cpu", [(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 0, 1)])
    monkeypatch.setattr(context, "_SYS_CPU", sys_cpu)
    assert context._count_physical_cores_linux() == 2
    assert context._count_physical_cores_linux({0, 1}) == 1


@LINUX_TOPOLOGY
def test_no_topology_anywhere_is_an_error(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n\n")
    monkeypatch.setattr(context, "_PROC_CPUINFO", str(cpuinfo))
    (tmp_path / "cpu").mkdir()
    monkeypatch.setattr(context, "_SYS_CPU", str(tmp_path / "cpu"))
    count, error = context._count_physical_cores()
    assert count is None
    assert "name no physical core" in str(error)


def test_real_machine_physical_cores_not_above_logical():
    assert 1 <= loky.cpu_count(only_physical_cores=True) <= loky.cpu_count()


def test_windows_helpers_count_windows_cores_only():
    if sys.platform != "win32":
        with pytest.raises(NotImplementedError, match="Windows"):
            context._count_physical_cores_win32()
        return
    cores = context._count_physical_cores_win32()
    assert 1 <= cores <= os.cpu_count()
    assert context._count_physical_cores_win32_ctypes() == cores
    assert 1 <= context._cpu_count_win32() <= os.cpu_count()


def test_cpu_count_in_a_worker_sees_its_env(executor_factory):
    executor = executor_factory(max_workers=1, env={"LOKY_MAX_CPU_COUNT": "1"})
    assert executor.submit(tasks.worker_cpu_count).result(timeout=30) == 1
