"""The number of CPUs this process can use (`cpu_count`), composed from small helpers
that each read one source: the affinity mask, the cgroup quota, the environment, the
CPU topology.

Code written for loky imports these from ``loky.backend.context`` and replaces them
there one by one (tests patch ``_cpu_count_cgroup``, say): that module hands such a
replacement on to this one, and `cpu_count` looks its helpers up here at each call.
Every source is read again at each call, except the physical core count, kept per
affinity mask in `physical_cores_cache`.
"""

import math
import os
import sys
import warnings

# The names code written for loky reaches through ``loky.backend.context``.
__all__ = [
    "cpu_count",
    "physical_cores_cache",
    "_cpu_count_env",
    "_cpu_count_affinity_set",
    "_cpu_count_cgroup",
    "_cpu_count_win32",
    "_quota_cpus",
    "_read",
    "_PROC_CPUINFO",
    "_SYS_CPU",
    "_count_physical_cores",
    "_count_physical_cores_linux",
    "_physical_cores_from_sysfs",
    "_count_physical_cores_sysctl",
    "_count_physical_cores_win32",
    "_count_physical_cores_win32_ctypes",
    "_count_physical_cores_win32_powershell",
]


def cpu_count(only_physical_cores: bool = False) -> int:
    """Number of CPUs this process can use.

    The minimum of the machine's CPUs, the CPU affinity mask, the CPU quota of this
    process's own cgroup and its ancestors (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``,
    rounded up) and the ``LOKY_MAX_CPU_COUNT`` environment variable; never below 1.
    On Windows, the affinity mask and the CPU rate cap of the process's job (rounded
    up) take the place of the affinity set and the cgroup quota.
    With `only_physical_cores`, hyper-threads of one core count once: on Linux among
    the CPUs of the affinity mask, elsewhere over the whole machine. If the physical
    cores cannot be counted, a warning says so (once) and logical CPUs are counted.
    """
    os_cpu_count = os.cpu_count() or 1
    cpu_set = _cpu_count_affinity_set()
    limits = [
        os_cpu_count,
        _cpu_count_cgroup(os_cpu_count),
        _cpu_count_env(os_cpu_count),
    ]
    if sys.platform == "win32":
        limits.append(_cpu_count_win32())
    if cpu_set is not None:
        limits.append(len(cpu_set))
    if only_physical_cores:
        # Only Linux tells which core each CPU of the mask belongs to.
        physical, error = _count_physical_cores(
            cpu_set if sys.platform == "linux" else None
        )
        if error is not None:
            warnings.warn(
                f"Could not find the number of physical cores ({error!r}); counting "
                "logical CPUs instead. Set LOKY_MAX_CPU_COUNT to choose the number "
                "of CPUs to use and silence this warning.",
                UserWarning,
                stacklevel=2,
            )
        if physical is not None:
            limits.append(physical)
    return max(1, min(limits))


def _cpu_count_env(os_cpu_count):
    """``LOKY_MAX_CPU_COUNT``, or `os_cpu_count` when it is not set."""
    limit = os.environ.get("LOKY_MAX_CPU_COUNT")
    if limit is None:
        return os_cpu_count
    try:
        return int(limit)
    except ValueError:
        raise ValueError(
            f"LOKY_MAX_CPU_COUNT must be an integer, got {limit!r}"
        ) from None


def _cpu_count_affinity_set():
    """The CPUs the scheduler lets this process run on, or None where unknown."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, NotImplementedError, OSError):
        return None


def _cpu_count_win32():
    """The processors this process may use on Windows: the active ones, less what its
    affinity leaves out, less what its job's CPU rate cap allows (the core asks)."""
    from .. import _core

    return _core.cpu_count()


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _quota_cpus(quota, period):
    """`quota` / `period` CPUs rounded up, or None when unlimited or unparsable."""
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None  # "max", or not a number
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _cpu_count_cgroup(os_cpu_count, root="/"):
    """The tightest CPU quota of this process's cgroup and its ancestors, or
    `os_cpu_count` when none is set. `root` points the lookups at another tree."""
    membership = _read(os.path.join(root, "proc/self/cgroup")) or ""
    limits = []
    for line in membership.splitlines():
        # "hierarchy-id:controllers:path"; cgroup v2 lists no controllers.
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers and "cpu" not in controllers.split(","):
            continue
        directory = path.strip().strip("/")
        while True:  # from the process's own cgroup up to the hierarchy's root
            if not controllers:
                fields = (
                    _read(os.path.join(root, "sys/fs/cgroup", directory, "cpu.max"))
                    or ""
                ).split()
                if len(fields) == 2:
                    limits.append(_quota_cpus(*fields))
            else:
                # Mounted under its controllers' names as listed ("cpuacct,cpu" on some
                # systems), or under the usual ones.
                for mount in dict.fromkeys((controllers, "cpu,cpuacct", "cpu")):
                    base = os.path.join(root, "sys/fs/cgroup", mount, directory)
                    quota = _read(os.path.join(base, "cpu.cfs_quota_us"))
                    if quota is None:
                        continue  # not this mount point (no file opened in vain)
                    period = _read(os.path.join(base, "cpu.cfs_period_us"))
                    if period is not None:
                        limits.append(_quota_cpus(quota, period))
                        break
            if not directory:
                break
            directory = os.path.dirname(directory)
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else os_cpu_count


# Physical core counts found so far: affinity mask (a frozenset; None for the whole
# machine) -> count, or None when it could not be found (the warning is given once).
physical_cores_cache = {}

# Where Linux describes its CPUs (module attributes so tests can point them elsewhere).
_PROC_CPUINFO = "/proc/cpuinfo"
_SYS_CPU = "/sys/devices/system/cpu"


def _count_physical_cores(cpu_set=None):
    """(number of physical cores among `cpu_set`, None), or (None, the error)."""
    key = None if cpu_set is None else frozenset(cpu_set)
    if key in physical_cores_cache:
        return physical_cores_cache[key], None
    error = None
    try:
        if sys.platform == "linux":
            count = _count_physical_cores_linux(cpu_set)
        elif sys.platform == "win32":
            count = _count_physical_cores_win32()
        elif cpu_set is not None:
            raise NotImplementedError("only Linux tells which core each CPU is on")
        elif sys.platform == "darwin" or sys.platform.startswith("freebsd"):
            count = _count_physical_cores_sysctl()
        else:
            raise NotImplementedError(f"unsupported platform {sys.platform!r}")
        if count < 1:
            raise ValueError(f"found {count} physical cores")
    except Exception as exc:
        count, error = None, exc
    physical_cores_cache[key] = count
    return count, error


def _count_physical_cores_linux(cpu_set=None):
    """Distinct (physical id, core id) pairs among the CPUs of `cpu_set` (all if None):
    a core id is unique only within its socket. From /proc/cpuinfo, or from sysfs's
    topology files where /proc/cpuinfo names no core (arm64, for one)."""
    with open(_PROC_CPUINFO) as f:
        text = f.read()
    cores = set()
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "core id" not in fields:
            continue
        if cpu_set is not None and int(fields.get("processor", -1)) not in cpu_set:
            continue
        cores.add((fields.get("physical id"), fields["core id"]))
    if not cores:
        cores = _physical_cores_from_sysfs(cpu_set)
    if not cores:
        raise ValueError(f"{_PROC_CPUINFO} and {_SYS_CPU} name no physical core")
    return len(cores)


def _physical_cores_from_sysfs(cpu_set):
    cores = set()
    for name in os.listdir(_SYS_CPU):
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if cpu_set is not None and int(name[3:]) not in cpu_set:
            continue
        topology = os.path.join(_SYS_CPU, name, "topology")
        package = _read(os.path.join(topology, "physical_package_id"))
        core = _read(os.path.join(topology, "core_id"))
        if package is not None and core is not None:
            cores.add((package.strip(), core.strip()))
    return cores


def _count_physical_cores_sysctl():
    import subprocess

    name = "hw.physicalcpu" if sys.platform == "darwin" else "kern.smp.cores"
    done = subprocess.run(
        ["sysctl", "-n", name], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def _count_physical_cores_win32():
    """The machine's physical cores (Windows only; the core asks the system, with
    GetLogicalProcessorInformationEx)."""
    if sys.platform != "win32":
        raise NotImplementedError("this counts the cores of a Windows machine only")
    from .. import _core

    count = _core.physical_cores()
    if count is None:
        raise OSError("Windows did not list the processor cores")
    return count


# loky's names for its Windows counters.
_count_physical_cores_win32_ctypes = _count_physical_cores_win32


def _count_physical_cores_win32_powershell():
    """Sum of the cores of every processor (socket) CIM reports (Windows only)."""
    import subprocess

    done = subprocess.run(
        [
            "powershell.exe",
            "-NoProfile",
            "-Command",
            "(Get-CimInstance -ClassName Win32_Processor).NumberOfCores",
        ],
        capture_output=True,
        text=True,
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
    )
    return sum(int(line) for line in done.stdout.split())
