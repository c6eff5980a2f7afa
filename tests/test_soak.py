"""Soak (``pytest -m slow``): a minute of live fan-out must not grow memory or lose viewers."""

from __future__ import annotations

import resource
import time
import urllib.request

import pytest

from conftest import RunningGateway


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
def test_one_minute_of_fanout_keeps_memory_flat(gateway: RunningGateway, publish, clips) -> None:
    publish(clips["bframes"], "live/soak")
    viewers = [urllib.request.urlopen(gateway.http_url("live/soak.flv"), timeout=10) for _ in range(20)]
    got = [0] * len(viewers)
    t_end = time.monotonic() + 60
    rss = []
    while time.monotonic() < t_end:
        for i, v in enumerate(viewers):
            got[i] += len(v.read1(1 << 16))
        rss.append(_rss_mb())
    for v in viewers:
        v.close()
    assert min(got) > 0.8 * max(got), got  # nobody starved
    warm = rss[len(rss) // 4]
    assert rss[-1] - warm < 30, f"RSS grew from {warm:.0f} to {rss[-1]:.0f} MB"
