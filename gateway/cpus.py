"""How many CPUs this process may really use.

``os.cpu_count()`` is the host's count. In a container the limit is often a CPU *quota*
(``docker run --cpus 2``, Kubernetes ``limits.cpu``): the process still sees, and may be
scheduled on, every host CPU, but gets only that much CPU time. Sizing the transcode pool (one
process per CPU) or the transcode capacity from the host's count would start dozens of
processes and admit far more transcodes than the quota can carry, so both use ``usable_cpus``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs of the affinity mask (``taskset``, cpusets), capped by a cgroup CPU quota
    (rounded up: 1.5 CPUs of quota can keep 2 single-threaded processes busy part-time)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return n


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The smallest CPU quota, in CPUs, on this process's cgroup and its ancestors (cgroup v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None when there is none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:  # v2 (unified): "0::/path"
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
            for d in _dirs(base, path):
                quotas += _v2_quota(d / "cpu.max")
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            for d in _dirs(root / controllers, path):
                quotas += _v1_quota(d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us")
    return min(quotas) if quotas else None


def _dirs(base: Path, path: str) -> list[Path]:
    """The cgroup's directory and its ancestors up to ``base`` (those that exist: inside a
    container's cgroup namespace the path is "/" and the files sit in ``base``)."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    out = [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in out if d.is_dir()]


def _v2_quota(f: Path) -> list[float]:
    try:
        quota, period = f.read_text().split()[:2]
        return [] if quota == "max" else [int(quota) / int(period)]
    except (OSError, ValueError, ZeroDivisionError):
        return []


def _v1_quota(quota_file: Path, period_file: Path) -> list[float]:
    try:
        quota = int(quota_file.read_text())
        period = int(period_file.read_text())
        return [quota / period] if quota > 0 and period > 0 else []
    except (OSError, ValueError):
        return []
