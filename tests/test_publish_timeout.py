"""A publisher that stops sending (a hung encoder whose connection stays open) is disconnected
after ``publish_timeout`` and its stream ends, so the key is free again; a live one is not."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.config import Config

from conftest import FFMPEG, Publisher, RunningGateway, _start_gateway

TIMEOUT = 1.0


@pytest.fixture
def quick() -> Iterator[RunningGateway]:
    yield from _start_gateway(Config(host="127.0.0.1", rtmp_port=0, http_port=0,
                                     publish_timeout=TIMEOUT))


class Stalling:
    """The FFmpeg CLI publishing what it reads from a pipe: the first ``share`` of the clip,
    then nothing, with the pipe (and so its connection) left open, like a hung encoder."""

    def __init__(self, clip: Path, out: list[str], share: float = 0.4) -> None:
        self.proc = subprocess.Popen(
            [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-f", "flv", "-i", "pipe:0",
             "-c", "copy", *out], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        data = clip.read_bytes()
        self._feeder = threading.Thread(target=self._feed, args=(data[:int(len(data) * share)],),
                                        daemon=True)
        self._feeder.start()

    def _feed(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)  # blocks while -re paces the reading
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def _gone_within(gateway: RunningGateway, key: str, seconds: float) -> float:
    """Seconds until ``key`` is no longer published (fails after ``seconds``)."""
    t0 = time.monotonic()
    while key in gateway.gw.hub.streams:
        assert time.monotonic() - t0 < seconds, f"{key} still published after {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.mark.parametrize("ingest", ["rtmp", "ts-post"])
def test_stalled_publisher_is_disconnected_and_the_key_freed(
        quick: RunningGateway, clips: dict[str, Path], ingest: str, caplog) -> None:
    key = f"live/stall-{ingest}"
    out = (["-f", "flv", quick.rtmp_url(key)] if ingest == "rtmp"
           else ["-f", "mpegts", quick.http_url(f"{key}.ts")])
    pub = Stalling(clips["plain"], out)
    try:
        quick.wait_stream(key)
        # the clip's first 40% (~2.4 s of media) at real time, then the timeout
        _gone_within(quick, key, 2.4 + TIMEOUT + 4)
        assert "no data from the publisher" in caplog.text
        again = Publisher(clips["plain"], quick.rtmp_url(key))  # the key is free again
        try:
            quick.wait_stream(key)
        finally:
            again.stop()
    finally:
        pub.stop()


def test_stalled_websocket_ts_publisher_is_closed(quick: RunningGateway, clips: dict[str, Path],
                                                  tmp_path: Path) -> None:
    ts = tmp_path / "clip.ts"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(clips["plain"]),
                    "-c", "copy", "-f", "mpegts", str(ts)], check=True, timeout=60)
    data = ts.read_bytes()

    async def publish_then_stall() -> tuple[aiohttp.WSMessage, float]:
        async with aiohttp.ClientSession() as s, s.ws_connect(quick.ws_url("live/wsstall.ts")) as ws:
            for i in range(0, len(data) // 2, 188 * 100):
                await ws.send_bytes(data[i:i + 188 * 100])
                await asyncio.sleep(0.01)
            stalled = time.monotonic()
            msg = await ws.receive(timeout=TIMEOUT + 5)
            return msg, time.monotonic() - stalled

    msg, after = asyncio.run(publish_then_stall())
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
    assert "no data from the publisher" in (msg.extra or ""), msg
    assert TIMEOUT * 0.9 <= after < TIMEOUT + 3, after
    _gone_within(quick, "live/wsstall", 2)


def test_live_publisher_outlasts_the_timeout(quick: RunningGateway, clips: dict[str, Path]) -> None:
    pub = Publisher(clips["plain"], quick.rtmp_url("live/alive"))
    try:
        quick.wait_stream("live/alive")
        time.sleep(TIMEOUT * 3)
        assert "live/alive" in quick.gw.hub.streams
    finally:
        pub.stop()


def test_rtmp_connection_that_never_publishes_or_plays_is_closed(quick: RunningGateway,
                                                                 clips: dict[str, Path]) -> None:
    """A TCP connection that sends nothing (or only part of a handshake) is closed after the
    timeout; a player is not (it sends little once it plays)."""
    player = Publisher(clips["plain"], quick.rtmp_url("live/watched"))
    try:
        quick.wait_stream("live/watched")
        reader = subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-i",
                                   quick.rtmp_url("live/watched"), "-c", "copy", "-f", "null", "-"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        idle = [socket.create_connection(("127.0.0.1", quick.rtmp_port), timeout=TIMEOUT + 3)
                for _ in range(2)]
        idle[1].sendall(b"\x03" + bytes(100))  # the start of a handshake (C0 + part of C1)
        t0 = time.monotonic()
        for s in idle:
            try:
                while s.recv(4096):  # the server's S0/S1/S2 for the second one, then EOF
                    pass
            except ConnectionResetError:
                pass  # closed with an abort (RST)
            s.close()
        assert TIMEOUT * 0.8 <= time.monotonic() - t0 < TIMEOUT + 2
        time.sleep(TIMEOUT * 2)
        assert reader.poll() is None, "the player was disconnected"
        reader.kill()
        reader.wait(5)
    finally:
        player.stop()
