"""Shared fixtures: a real gateway on free 127.0.0.1 ports, FFmpeg-made sample clips, publishers."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway import app as app_mod
from gateway.config import Config

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"


@dataclass
class RunningGateway:
    loop: asyncio.AbstractEventLoop
    gw: app_mod.Gateway

    @property
    def rtmp_port(self) -> int:
        return self.gw.rtmp_port

    @property
    def http_port(self) -> int:
        return self.gw.http_port

    def rtmp_url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{key}"

    def http_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/{path}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.http_port}/{path}"

    def call(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run ``fn`` on the gateway's loop thread and return its result."""
        done = threading.Event()
        box: list[object] = []

        def run() -> None:
            try:
                box.append(fn(*args))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                box.append(e)
            done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(10)
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[0] if box else None

    def wait_stream(self, key: str, timeout: float = 15.0, video: bool = True,
                    tracks: int = 2) -> None:
        """Block until the stream is live with ``tracks`` tracks (and a keyframe if ``video``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.gw.hub.streams.get(key)
            if s is not None and len(s.tracks) >= tracks and (not video or s.gop):
                return
            time.sleep(0.05)
        raise TimeoutError(f"stream {key} did not go live within {timeout}s")


def _start_gateway(config: Config, **hooks: Any) -> Iterator[RunningGateway]:
    """A gateway on its own loop thread; ``hooks``: the session service's (``app.start``)."""
    try:  # the loop production uses (gateway serve runs on uvloop when installed)
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    started = threading.Event()
    box: list[object] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            box.append(loop.run_until_complete(app_mod.start(config, **hooks)))
        except BaseException as e:  # noqa: BLE001
            box.append(e)
        started.set()
        if box and not isinstance(box[0], BaseException):
            loop.run_forever()

    t = threading.Thread(target=run, name="gateway-loop", daemon=True)
    t.start()
    started.wait(20)
    if not box or isinstance(box[0], BaseException):
        raise RuntimeError(f"gateway failed to start: {box}")
    gw = box[0]
    assert isinstance(gw, app_mod.Gateway)
    yield RunningGateway(loop, gw)
    fut = asyncio.run_coroutine_threadsafe(gw.close(), loop)
    try:
        fut.result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


@pytest.fixture
def gateway() -> Iterator[RunningGateway]:
    """A fresh gateway per test on free ports of 127.0.0.1."""
    yield from _start_gateway(Config(host="127.0.0.1", rtmp_port=0, http_port=0))


def _make_clip(path: Path, *, bframes: bool, seconds: int = 6, size: str = "640x360",
               ten_bit: bool = False) -> Path:
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp.flv")
    vopts = ["-profile:v", "high", "-bf", "2"] if bframes else ["-profile:v", "baseline", "-bf", "0"]
    pix_fmt = "yuv420p"
    if ten_bit:
        vopts, pix_fmt = ["-profile:v", "high10", "-bf", "2" if bframes else "0"], "yuv420p10le"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", *vopts,
         "-g", "30", "-pix_fmt", pix_fmt, "-c:a", "aac", "-b:a", "64k", "-ac", "2",
         "-f", "flv", str(tmp)],
        check=True, timeout=120,
    )
    tmp.rename(path)
    return path


@pytest.fixture(scope="session")
def high10_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """H.264 High 10 (10-bit 4:2:0, no B-frames) + AAC: what browsers and phones cannot decode."""
    return _make_clip(tmp_path_factory.mktemp("clips") / "high10.flv", bframes=False, seconds=4,
                      ten_bit=True)


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """H264/AAC FLV clips made by the FFmpeg CLI: ``plain`` (no B-frames) and ``bframes``."""
    d = tmp_path_factory.mktemp("clips")
    return {
        "plain": _make_clip(d / "plain.flv", bframes=False),
        "bframes": _make_clip(d / "bframes.flv", bframes=True),
    }


class Publisher:
    """The FFmpeg CLI publishing a clip in a loop (``-re``) until stopped."""

    def __init__(self, clip: Path, url: str, loops: int = -1, fmt: str = "flv") -> None:
        self.proc = subprocess.Popen(
            [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", str(loops),
             "-i", str(clip), "-c", "copy", "-f", fmt, url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stderr(self) -> str:
        self.stop()
        return self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""


@pytest.fixture
def publish(gateway: RunningGateway) -> Iterator:  # type: ignore[type-arg]
    """``publish(clip, key)`` starts an FFmpeg RTMP publisher and waits until the stream is live."""
    started: list[Publisher] = []

    def start(clip: Path, key: str = "live/test", wait: bool = True, loops: int = -1) -> Publisher:
        p = Publisher(clip, gateway.rtmp_url(key), loops)
        started.append(p)
        if wait:
            try:
                gateway.wait_stream(key)
            except TimeoutError:
                raise AssertionError(f"publisher never went live: {p.stderr()}") from None
        return p

    yield start
    for p in started:
        p.stop()


def kill_while_coding(child, step_id: int, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    """SIGKILL a transcode process (``pool._Child``) the moment it codes a frame of ``step_id``
    (a crash in that step's codec, as a poisoned bitstream would cause); whether the gateway
    saw it die on that step."""
    deadline = time.monotonic() + timeout
    while step_id not in child.coding[:]:
        assert time.monotonic() < deadline, "the step never coded"
    os.kill(child.process.pid, signal.SIGKILL)
    while child.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    return step_id in child.coding[:]
