"""End to end with real peers: FFmpeg publishes over RTMP; FFmpeg, PyAV and WebSocket clients play."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import av
import pytest

from conftest import FFMPEG, FFPROBE, Publisher, RunningGateway
from flvcheck import assert_good, capture, probe
from gateway.protocols import flv

SECONDS = 3.0


@pytest.mark.parametrize("kind", ["plain", "bframes"])
def test_rtmp_play_back(gateway: RunningGateway, publish, clips, tmp_path: Path, kind: str) -> None:
    publish(clips[kind], "live/cam")
    out = tmp_path / "rtmp.flv"
    r = capture(gateway.rtmp_url("live/cam"), out, SECONDS)
    assert r.returncode == 0, r.stderr
    assert_good(probe(out), seconds=SECONDS, bframes=kind == "bframes")


@pytest.mark.parametrize("kind", ["plain", "bframes"])
def test_http_flv_play_back(gateway: RunningGateway, publish, clips, tmp_path: Path, kind: str) -> None:
    publish(clips[kind], "live/cam")
    url = gateway.http_url("live/cam.flv")
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"] == "video/x-flv"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers.get("Content-Length") is None
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    out = tmp_path / "http.flv"
    r = capture(url, out, SECONDS)
    assert r.returncode == 0, r.stderr
    assert_good(probe(out), seconds=SECONDS, bframes=kind == "bframes")


async def _ws_collect(url: str, seconds: float) -> bytes:
    buf = bytearray()
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            buf += msg.data
    return bytes(buf)


def test_ws_flv_play_back(gateway: RunningGateway, publish, clips, tmp_path: Path) -> None:
    publish(clips["bframes"], "live/cam")
    data = asyncio.run(_ws_collect(gateway.ws_url("live/cam.flv"), SECONDS + 1))
    assert data[:3] == b"FLV"
    out = tmp_path / "ws.flv"
    out.write_bytes(data)
    assert_good(probe(out), seconds=SECONDS, bframes=True)


def _first_video_frame_time(url: str) -> tuple[float, bool]:
    """Seconds from GET to the first *decoded* video frame (PyAV decoder), and keyframe flag."""
    reader = flv.FlvReader()
    decoder = av.CodecContext.create("h264", "r")
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=5) as resp:
        while True:
            chunk = resp.read1(65536)
            assert chunk, "stream ended before a video frame"
            for tag in reader.receive_data(chunk):
                if tag.tag_type != 9:
                    continue
                vt = flv.parse_video_body(tag.body)
                if vt.avc_packet_type == 0:
                    decoder.extradata = vt.payload
                    continue
                frames = decoder.decode(av.Packet(vt.payload))
                if frames:
                    return time.monotonic() - t0, vt.keyframe
                assert vt.keyframe, "first video frame was not a keyframe"


def test_gop_cache_gives_first_frame_at_once(gateway: RunningGateway, publish, clips) -> None:
    # The clips have a 1 s GOP; without the cache a viewer would wait up to a second.
    publish(clips["plain"], "live/cam")
    time.sleep(0.6)  # be mid-GOP
    elapsed, key = _first_video_frame_time(gateway.http_url("live/cam.flv"))
    print(f"HTTP-FLV play request -> first decoded video frame: {elapsed * 1000:.1f} ms")
    assert key
    assert elapsed < 0.5


def test_second_publisher_refused(gateway: RunningGateway, publish, clips) -> None:
    publish(clips["plain"], "live/cam")
    second = Publisher(clips["plain"], gateway.rtmp_url("live/cam"), loops=0)
    try:
        second.proc.wait(20)
    finally:
        err = second.stderr()
    assert second.proc.returncode != 0
    assert gateway.gw.hub.streams["live/cam"].publisher.startswith("rtmp")
    # the first publisher's stream is untouched
    gateway.wait_stream("live/cam")


def test_unknown_stream_not_found(gateway: RunningGateway) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(gateway.http_url("live/nope.flv"), timeout=5)
    assert e.value.code == 404
    r = subprocess.run([FFPROBE, "-v", "error", "-rw_timeout", "5000000",
                        gateway.rtmp_url("live/nope")], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "StreamNotFound" in r.stderr or "not found" in r.stderr.lower(), r.stderr


def test_publisher_leaves_viewers_end(gateway: RunningGateway, publish, clips, tmp_path: Path) -> None:
    pub = publish(clips["plain"], "live/cam", loops=0)  # plays the 6 s clip once, then leaves
    http = subprocess.Popen([FFMPEG, "-v", "error", "-y", "-i", gateway.http_url("live/cam.flv"),
                             "-c", "copy", "-f", "flv", str(tmp_path / "h.flv")],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rtmp = subprocess.Popen([FFMPEG, "-v", "error", "-y", "-i", gateway.rtmp_url("live/cam"),
                             "-c", "copy", "-f", "flv", str(tmp_path / "r.flv")],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pub.proc.wait(30)
    for p in (http, rtmp):
        p.wait(15)  # ends by itself once the publisher is gone
        assert p.returncode == 0, p.stderr.read() if p.stderr else ""
    assert "live/cam" not in gateway.gw.hub.streams


def test_garbage_and_truncated_handshake_touch_nothing_else(
        gateway: RunningGateway, publish, clips, tmp_path: Path) -> None:
    publish(clips["plain"], "live/cam")
    bad = [b"\x03" + b"\x00" * 100,  # truncated handshake, then the client stops
           b"GET / HTTP/1.1\r\n\r\n" * 200,  # not RTMP at all (bad version byte)
           b"\x03" + bytes(1536) + bytes(1536) + b"\xff" * 5000]  # handshake then garbage chunks
    socks = []
    for payload in bad:
        s = socket.create_connection(("127.0.0.1", gateway.rtmp_port))
        s.sendall(payload)
        socks.append(s)
    time.sleep(0.5)
    for s in socks[1:]:
        s.settimeout(5)
        try:
            while s.recv(65536):  # the gateway closes these connections
                pass
        except (ConnectionResetError, socket.timeout) as e:
            assert not isinstance(e, socket.timeout), "gateway kept a garbage connection open"
    socks[0].close()
    out = tmp_path / "after.flv"
    r = capture(gateway.rtmp_url("live/cam"), out, 2.0)
    assert r.returncode == 0, r.stderr
    assert_good(probe(out), seconds=2.0, bframes=False)
