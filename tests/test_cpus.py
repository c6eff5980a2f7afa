"""CPUs the gateway sizes itself by: the affinity mask capped by a container's CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cpus import cgroup_cpu_quota, usable_cpus
from gateway.transcode import pool


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_v2_quota_of_the_cgroup_or_an_ancestor(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu memory\n")
    _write(proc, "0::/app/gw\n")
    _write(root / "app" / "gw" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root, proc) is None  # "max": no quota
    _write(root / "app" / "cpu.max", "150000 100000\n")  # `docker --cpus 1.5` on the parent
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert usable_cpus(root, proc) == min(_affinity(), 2)  # rounded up
    _write(root / "app" / "gw" / "cpu.max", "50000 100000\n")  # the smallest one counts
    assert cgroup_cpu_quota(root, proc) == 0.5 and usable_cpus(root, proc) == 1


def test_v2_inside_a_container_namespace_and_hybrid_layout(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu\n")
    _write(root / "cpu.max", "100000 100000\n")
    _write(proc, "0::/\n")
    assert cgroup_cpu_quota(root, proc) == 1.0
    hybrid = tmp_path / "hy"  # v1 controllers plus the unified tree under "unified"
    _write(hybrid / "unified" / "svc" / "cpu.max", "200000 100000\n")
    _write(proc, "1:name=systemd:/svc\n0::/svc\n")
    assert cgroup_cpu_quota(hybrid, proc) == 2.0


def test_v1_cfs_quota(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "cgroup"
    _write(proc, "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    d = root / "cpu,cpuacct" / "docker" / "abc"
    _write(d / "cpu.cfs_quota_us", "-1\n")
    _write(d / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root, proc) is None  # -1: no quota
    _write(d / "cpu.cfs_quota_us", "300000\n")
    assert cgroup_cpu_quota(root, proc) == 3.0


@pytest.mark.parametrize("junk", ["", "garbage\n", "0::/x\n", "2:cpu:/x\n"])
def test_nothing_readable_means_no_quota(tmp_path: Path, junk: str) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text(junk)
    assert cgroup_cpu_quota(tmp_path / "none", proc) is None
    assert cgroup_cpu_quota(tmp_path, tmp_path / "missing") is None
    assert usable_cpus(tmp_path / "none", proc) == _affinity()


def test_pool_and_capacity_are_sized_by_it() -> None:
    from gateway.config import CAPACITY_PER_CPU, Config

    assert pool.default_processes() == usable_cpus()
    assert Config().effective_transcode_capacity() == CAPACITY_PER_CPU * usable_cpus()
    assert Config(transcode_capacity=3).effective_transcode_capacity() == 3


def test_a_real_cgroup_quota_caps_the_pool(tmp_path: Path) -> None:
    """In a real cgroup with a 1-CPU quota (what `docker run --cpus 1` sets up), a fresh
    process sizes its transcode pool and capacity for 1 CPU. Needs root and a writable cgroup
    v1 cpu hierarchy (or v2 with the cpu controller delegated); skipped otherwise."""
    import subprocess
    import sys
    import uuid

    name = f"gateway-test-{uuid.uuid4().hex[:8]}"
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    delegated = v2 / "cgroup.subtree_control"
    if (v1 / "cpu.cfs_quota_us").exists():
        group, quota_file, quota = v1 / name, "cpu.cfs_quota_us", "100000"
    elif delegated.exists() and "cpu" in delegated.read_text().split():
        group, quota_file, quota = v2 / name, "cpu.max", "100000 100000"
    else:
        pytest.skip("no cgroup cpu controller to use here")
    try:
        group.mkdir()
    except OSError as e:
        pytest.skip(f"cannot create a cgroup here: {e}")
    try:
        (group / quota_file).write_text(quota)
        code = ("from gateway.config import Config; from gateway.transcode import pool;"
                "print(pool.default_processes(), Config().effective_transcode_capacity())")
        # the child moves itself in before it measures (sh: write its pid, then exec python)
        r = subprocess.run(["sh", "-c", f'echo $$ > {group / "cgroup.procs"} && exec "$0" -c "$1"',
                            sys.executable, code], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["1", "7.0"], r.stdout
    finally:
        try:
            group.rmdir()
        except OSError:
            pass
