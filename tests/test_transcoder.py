"""Two gateways in one process share no transcode state: each has its own ``Transcoder``.

Both run on one event loop, the case where a process-wide pool per loop (what there was before
the ``Transcoder``) would have been shared by both, and closing one would have stopped the
other's codec processes. Publishers are the FFmpeg CLI; viewers are jsmpeg WebSockets, whose
H.264 -> MPEG-1 variant is a real transcode in a real codec process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from gateway import app as app_mod
from gateway.config import Config
from gateway.transcode.variant import Variant

from conftest import Publisher, RunningGateway

T = TypeVar("T")


class _Loop:
    """One event loop in a thread, for both gateways: ``run`` a coroutine on it and wait."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateways", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def shared_loop() -> Iterator[_Loop]:
    loop = _Loop()
    yield loop
    loop.stop()


def _until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def _view(url: str, got: bytearray) -> None:
    """A jsmpeg player: every binary message into ``got`` until cancelled or closed."""
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                got += msg.data


def _variants(gw: app_mod.Gateway, key: str) -> list[Variant]:
    stream = gw.hub.streams.get(key)
    return [] if stream is None else [s for s in stream.sinks.values() if isinstance(s, Variant)]


def test_two_gateways_in_one_process_share_no_transcode_state(
        shared_loop: _Loop, clips: dict[str, Path]) -> None:
    def config(capacity: float) -> Config:
        return Config(host="127.0.0.1", rtmp_port=0, http_port=0, transcode_processes=1,
                      transcode_capacity=capacity)

    running: list[app_mod.Gateway] = []
    publishers: list[Publisher] = []
    viewers: list[Any] = []  # concurrent futures of the viewers on the gateways' loop
    try:
        for capacity in (3.0, 5.0):
            running.append(shared_loop.run(app_mod.start(config(capacity))))
        a, b = (RunningGateway(shared_loop.loop, gw) for gw in running)
        ta, tb = a.gw.ctx.transcoder, b.gw.ctx.transcoder
        publishers += [Publisher(clips["plain"], a.rtmp_url("live/a")),
                       Publisher(clips["plain"], b.rtmp_url("live/b"))]
        # distinct objects, each with the capacity of its own configuration, no pool yet
        assert ta is not tb and ta.counters is not tb.counters
        assert ta.load() == {"used": 0.0, "capacity": 3.0}
        assert tb.load() == {"used": 0.0, "capacity": 5.0}
        assert ta.running_pool is None and tb.running_pool is None
        a.wait_stream("live/a")
        b.wait_stream("live/b")

        # a variant on A: it counts in A's load and starts A's pool only
        got_a = bytearray()
        viewers.append(asyncio.run_coroutine_threadsafe(
            _view(a.ws_url("live/a.jsmpeg"), got_a), shared_loop.loop))
        _until(lambda: len(got_a) > 50_000, "the jsmpeg viewer of A")
        (var_a,) = _variants(a.gw, "live/a")
        assert var_a.transcoder is ta and var_a.cost > 0
        assert ta.load()["used"] == round(var_a.cost, 2)
        assert tb.load() == {"used": 0.0, "capacity": 5.0}  # not counted in B's
        assert ta.running_pool is not None and tb.running_pool is None
        assert ta.counters.frames_encoded > 0 and tb.counters.snapshot() == {
            "decoders_opened": 0, "encoders_opened": 0, "frames_decoded": 0, "frames_encoded": 0}

        # one on B: its own pool, its own processes
        got_b = bytearray()
        viewers.append(asyncio.run_coroutine_threadsafe(
            _view(b.ws_url("live/b.jsmpeg"), got_b), shared_loop.loop))
        _until(lambda: len(got_b) > 50_000, "the jsmpeg viewer of B")
        (var_b,) = _variants(b.gw, "live/b")
        assert var_b.transcoder is tb
        pool_a, pool_b = ta.running_pool, tb.running_pool
        assert pool_a is not None and pool_b is not None and pool_a is not pool_b
        procs_a, procs_b = pool_a.processes, pool_b.processes
        assert len(procs_a) == len(procs_b) == 1 and procs_a[0].pid != procs_b[0].pid
        assert ta.load()["used"] == round(var_a.cost, 2)  # B's variant not counted in A's
        assert tb.load()["used"] == round(var_b.cost, 2)

        # closing A stops A's codec process only: B goes on transcoding for its viewer
        running.remove(a.gw)
        shared_loop.run(a.gw.close())
        assert pool_a.closed and not procs_a[0].is_alive()
        assert not pool_b.closed and procs_b[0].is_alive() and tb.running_pool is pool_b
        encoded, received = tb.counters.frames_encoded, len(got_b)
        _until(lambda: tb.counters.frames_encoded > encoded + 30 and len(got_b) > received + 50_000,
               "B's variant to go on after A closed")
        assert not var_b.closed and var_b.workers["video"].failed is None
    finally:
        for v in viewers:
            v.cancel()
        for p in publishers:
            p.stop()
        for gw in running:
            shared_loop.run(gw.close())
