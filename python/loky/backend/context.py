"""Start methods and the number of usable CPUs."""

import os

from .. import _core


def cpu_count(only_physical_cores=False):
    """Number of CPUs this process can use.

    The minimum of the machine's online CPUs, the CPU affinity mask, the CPU quota of
    this process's own cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``, rounded up)
    and the ``LOKY_MAX_CPU_COUNT`` environment variable; never below 1. With
    `only_physical_cores`, hyper-threads of one core count once (where the kernel
    reports the topology).
    """
    limit = os.environ.get("LOKY_MAX_CPU_COUNT")
    if limit is not None:
        try:
            limit = int(limit)
        except ValueError:
            raise ValueError(
                f"LOKY_MAX_CPU_COUNT must be an integer, got {limit!r}"
            ) from None
    return _core.cpu_count(bool(only_physical_cores), limit)
