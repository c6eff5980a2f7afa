"""The ``h5`` protocol end to end: jsmpeg egress (MPEG-TS over WebSocket) and MPEG-TS ingest."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import av
import pytest

from gateway.config import Config
from gateway.hub import stream as stream_mod
from gateway.transcode import variant as variant_mod
from gateway.wire import flv
from gateway.wire.mpegts import TsDemuxer

from conftest import (
    FFMPEG,
    FFPROBE,
    Publisher,
    RunningGateway,
    _start_gateway,
    kill_while_coding,
)
from flvcheck import assert_cut_off, capture, probe, ws_collect

T = TypeVar("T")


def _codecs(data: bytes) -> dict[str, str]:
    """Codec names as ffprobe sees the TS (it tells MP2 from MP3 by probing the frames)."""
    r = subprocess.run([FFPROBE, "-v", "error", "-show_entries", "stream=codec_type,codec_name",
                        "-of", "csv=p=0", "-f", "mpegts", "-"], input=data, capture_output=True,
                       timeout=30, check=True)
    return {t: n for n, t in (line.split(",") for line in r.stdout.decode().split())}


def _decode_ts(data: bytes) -> dict[str, list]:
    """Decode with PyAV (libavformat's TS demuxer); returns frames per kind."""
    out: dict[str, list] = {"video": [], "audio": []}
    with av.open(io.BytesIO(data), format="mpegts") as c:
        kinds = {s.index: s.type for s in c.streams}
        codecs = _codecs(data)
        for packet in c.demux():
            for frame in packet.decode():
                out[kinds[packet.stream_index]].append(frame)
    out["codecs"] = [codecs]  # type: ignore[list-item]
    return out


def test_rtmp_to_jsmpeg_websocket(gateway: RunningGateway, publish, clips) -> None:
    publish(clips["bframes"], "live/cam")
    sizes: list[int] = []
    data = asyncio.run(ws_collect(gateway.ws_url("live/cam.jsmpeg"), 3.0, sizes))
    assert sizes and all(n % 188 == 0 for n in sizes), "a WS message split a TS packet"
    assert data[0] == 0x47
    # the first video payload starts with an MPEG-1 sequence header (00 00 01 B3) and an I-frame
    seq, pic = data.find(b"\x00\x00\x01\xb3"), data.find(b"\x00\x00\x01\x00")
    assert 0 <= seq < pic < 188 * 6, (seq, pic)
    frames = _decode_ts(data)
    assert frames["codecs"][0] == {"video": "mpeg1video", "audio": "mp2"}
    assert len(frames["video"]) >= 45, len(frames["video"])
    first = frames["video"][0]
    assert first.key_frame and int(first.pict_type) == 1  # AV_PICTURE_TYPE_I
    assert (first.width, first.height) == (640, 360)
    assert len(frames["audio"]) >= 50
    # A/V stay together: the ranges of timestamps overlap within 100 ms at both ends
    v0, a0 = frames["video"][0].time, frames["audio"][0].time
    v1, a1 = frames["video"][-1].time, frames["audio"][-1].time
    assert abs(v0 - a0) < 0.1 + 0.05, (v0, a0)  # + one audio frame of jitter at the start
    assert abs(v1 - a1) < 0.15, (v1, a1)


def test_a_corrupted_h264_source_is_named_in_its_errors_and_spares_the_others(
        gateway: RunningGateway, publish, clips, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A publisher whose H.264 arrives damaged (FFmpeg's noise bitstream filter: about one byte in
    300 changed) next to a clean one, both watched with jsmpeg: the damaged variant keeps
    coding, its decode errors are logged rate-limited and name its stream, the clean one
    decodes without an error. ``/api/streams`` counts the errors per variant."""
    caplog.set_level(logging.INFO)
    bad = tmp_path / "bad.flv"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(clips["plain"]), "-c", "copy",
                    "-bsf:v", "noise=amount=300", "-f", "flv", str(bad)], check=True, timeout=60)
    publish(clips["plain"], "live/clean")
    publish(bad, "live/damaged")

    async def both() -> tuple[list[bytes], dict[str, int]]:
        views = await asyncio.gather(ws_collect(gateway.ws_url("live/clean.jsmpeg"), 6.0),
                                     ws_collect(gateway.ws_url("live/damaged.jsmpeg"), 6.0),
                                     api_errors())
        return list(views[:2]), views[2]

    async def api_errors() -> dict[str, int]:  # while the variants run: the operator's view
        await asyncio.sleep(5.0)
        async with aiohttp.ClientSession() as s, s.get(gateway.http_url("api/streams")) as r:
            streams = (await r.json())["streams"]
        return {s["key"]: sum(v["stats"]["video"]["errors"] for k, v in s["outputs"].items()
                              if k.startswith("variant")) for s in streams}

    (clean, damaged), errors = asyncio.run(both())
    assert errors["live/clean"] == 0 and errors["live/damaged"] > 0, errors
    assert _decode_errors(clean) == 0
    assert len(_decode_ts(clean)["video"]) >= 150
    assert len(_decode_ts(damaged)["video"]) >= 100  # MPEG-1 from what could be decoded
    lines = [r.getMessage() for r in caplog.records if "h264 decode error" in r.getMessage()
             or "malformed h264" in r.getMessage()]
    assert lines, "the damage was never noticed"
    assert all(m.startswith("live/damaged~h5 h264->mpeg1video: ") for m in lines), lines
    assert all("errors so far; frame skipped" in m for m in lines), lines


def _decode_errors(data: bytes) -> int:
    errors = 0
    with av.open(io.BytesIO(data), format="mpegts") as c:
        for packet in c.demux(video=0):
            try:
                packet.decode()
            except av.error.FFmpegError:
                errors += 1
    return errors


@pytest.fixture(scope="module")
def long_gop_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s of 640x360 H.264 (B-frames) + AAC with one keyframe every 8 s, like OBS's default."""
    clip = tmp_path_factory.mktemp("longgop") / "longgop.flv"
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
         "-f", "lavfi", "-i", "sine", "-t", "10", "-c:v", "libx264", "-preset", "veryfast",
         "-bf", "2", "-g", "240", "-keyint_min", "240", "-sc_threshold", "0", "-c:a", "aac",
         "-f", "flv", str(clip)], check=True, timeout=60)
    return clip


def test_a_viewer_joining_late_in_a_long_gop_starts_at_the_live_picture(
        gateway: RunningGateway, publish, long_gop_clip: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """OBS's default keyframe interval is ~8 s. A jsmpeg viewer that comes 6 s into such a GOP
    starts the variant on a 6 s GOP cache: it gets the live picture at once and then real time,
    not 6 s of old pictures in a burst, a freeze where they overflowed the queue, and a
    'cannot keep up' warning."""
    caplog.set_level(logging.INFO)
    publish(long_gop_clip, "live/longgop")
    time.sleep(6.0)
    data = asyncio.run(ws_collect(gateway.ws_url("live/longgop.jsmpeg"), 3.0))
    video = _decode_ts(data)["video"]
    span = video[-1].time - video[0].time
    # ~78 here (the first picture after ~0.4 s: a codec process starts, the GOP is decoded);
    # a slow host takes longer to start the process
    assert len(video) >= 45, len(video)
    assert span < 3.3, span  # real time, not a burst of the GOP's old pictures first
    assert "cannot keep up" not in caplog.text and "behind" not in caplog.text, caplog.text


def test_jsmpeg_viewers_share_one_transcoder_and_it_stops(gateway: RunningGateway, publish,
                                                           clips) -> None:
    publish(clips["plain"], "live/cam")
    stream = gateway.gw.hub.streams["live/cam"]
    before = gateway.gw.ctx.transcoder.counters.snapshot()

    async def two_viewers() -> None:
        await asyncio.gather(ws_collect(gateway.ws_url("live/cam.jsmpeg"), 2.0),
                             ws_collect(gateway.ws_url("live/cam.jsmpeg"), 2.5))

    async def watch() -> int:
        task = asyncio.ensure_future(two_viewers())
        await asyncio.sleep(1.5)
        variants = [k for k in stream.sinks if isinstance(k, tuple) and k[0] == "variant"]
        await task
        return len(variants)

    assert asyncio.run(watch()) == 1  # one variant for both viewers
    after = gateway.gw.ctx.transcoder.counters.snapshot()
    assert after["encoders_opened"] - before["encoders_opened"] == 2  # MPEG-1 + MP2, once
    deadline = time.monotonic() + 5
    while any(isinstance(k, tuple) for k in stream.sinks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(isinstance(k, tuple) for k in stream.sinks), "variant kept after last viewer"


def test_passthrough_decodes_nothing(gateway: RunningGateway, publish, clips, tmp_path: Path) -> None:
    publish(clips["plain"], "live/cam")
    before = gateway.gw.ctx.transcoder.counters.snapshot()
    r = capture(gateway.rtmp_url("live/cam"), tmp_path / "a.flv", 2.0)
    assert r.returncode == 0, r.stderr
    r = capture(gateway.http_url("live/cam.flv"), tmp_path / "b.flv", 2.0)
    assert r.returncode == 0, r.stderr
    assert gateway.gw.ctx.transcoder.counters.snapshot() == before


def _h5_publisher(url: str, seconds: int = 30, codecs: str = "mpeg1",
                  method: str = "POST") -> subprocess.Popen:
    if codecs == "mpeg1":
        c = ["-c:v", "mpeg1video", "-b:v", "1M", "-bf", "0", "-g", "15", "-c:a", "mp2", "-b:a", "128k"]
    else:
        c = ["-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-bf", "0", "-c:a", "aac"]
    return subprocess.Popen(
        [FFMPEG, "-hide_banner", "-v", "error", "-re", "-f", "lavfi", "-i",
         "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
         "-t", str(seconds), *c, "-method", method, "-f", "mpegts", url],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("codecs", ["mpeg1", "h264"])
def test_h5_publish_to_rtmp_and_http_flv(gateway: RunningGateway, tmp_path: Path, codecs: str) -> None:
    pub = _h5_publisher(gateway.http_url("live/h5.ts"), codecs=codecs)
    try:
        gateway.wait_stream("live/h5", timeout=10)
        s = gateway.gw.hub.streams["live/h5"]
        assert s.info.protocol == "h5"
        want = {"video": "mpeg1video", "audio": "mp2"} if codecs == "mpeg1" else {"video": "h264", "audio": "aac"}
        assert {k: t.codec for k, t in s.tracks.items()} == want
        for url in (gateway.rtmp_url("live/h5"), gateway.http_url("live/h5.flv")):
            out = tmp_path / "h5.flv"
            r = capture(url, out, 2.0)
            assert r.returncode == 0, r.stderr
            p = probe(out)
            assert p.codecs == {"video": "h264", "audio": "aac"}
            assert not p.decode_errors, p.decode_errors
            assert len(p.video_dts) >= 40 and len(p.audio_dts) >= 50
            assert all(b > a for a, b in zip(p.video_dts, p.video_dts[1:], strict=False))
    finally:
        pub.terminate()
        pub.wait(5)


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_h5_publish_to_jsmpeg_passes_through(gateway: RunningGateway, method: str) -> None:
    pub = _h5_publisher(gateway.http_url("live/h5.ts"), method=method)
    try:
        gateway.wait_stream("live/h5", timeout=10)
        before = gateway.gw.ctx.transcoder.counters.snapshot()
        data = asyncio.run(ws_collect(gateway.ws_url("live/h5.jsmpeg"), 2.0))
        # MPEG-1/MP2 in, MPEG-1/MP2 out: nothing decoded
        assert gateway.gw.ctx.transcoder.counters.snapshot() == before
        frames = _decode_ts(data)
        assert frames["codecs"][0] == {"video": "mpeg1video", "audio": "mp2"}
        assert frames["video"][0].key_frame and len(frames["video"]) >= 30
    finally:
        pub.terminate()
        pub.wait(5)


def test_h5_publish_over_websocket_and_second_publisher_refused(gateway: RunningGateway) -> None:
    src = subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi",
         "-i", "sine", "-t", "3", "-c:v", "mpeg1video", "-bf", "0", "-g", "15", "-c:a", "mp2",
         "-f", "mpegts", "-"], capture_output=True, check=True, timeout=60).stdout

    async def run() -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(gateway.ws_url("live/wsin.ts")) as ws:
            for i in range(0, len(src) // 3, 188 * 20):
                await ws.send_bytes(src[i:i + 188 * 20])
            deadline = time.monotonic() + 5
            while "live/wsin" not in gateway.gw.hub.streams and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stream = gateway.gw.hub.streams["live/wsin"]
            async with s.post(gateway.http_url("live/wsin.ts"), data=b"\x47" + bytes(187)) as r:
                assert r.status == 409  # one publisher per key
            for i in range(len(src) // 3, len(src), 188 * 20):
                await ws.send_bytes(src[i:i + 188 * 20])
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.3)
            assert stream.frames_in > 60
            assert {t.codec for t in stream.tracks.values()} == {"mpeg1video", "mp2"}

    asyncio.run(run())
    time.sleep(0.3)
    assert "live/wsin" not in gateway.gw.hub.streams  # ended with the WebSocket


@pytest.mark.parametrize("how", ["websocket", "post"])
def test_a_publisher_sending_each_ts_packet_alone(gateway: RunningGateway, how: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A client may send every 188-byte packet as its own message or chunk (1,330 a second at
    2 Mbit/s): they are demuxed together, a few at a time (one trip to the demuxing thread each
    cost ~11% of a core at 2 Mbit/s), and every frame still arrives, the last ones too."""
    src = subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi",
         "-i", "sine", "-t", "2", "-c:v", "mpeg1video", "-bf", "0", "-g", "15", "-c:a", "mp2",
         "-f", "mpegts", "-"], capture_output=True, check=True, timeout=60).stdout
    offline = TsDemuxer()
    expected = len(offline.receive_data(src)) + len(offline.flush())
    calls = 0
    receive = TsDemuxer.receive_data

    def counted(self: TsDemuxer, data: bytes) -> list:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        return receive(self, data)

    monkeypatch.setattr(TsDemuxer, "receive_data", counted)
    packets = [src[i:i + 188] for i in range(0, len(src), 188)]

    async def run() -> int:
        key = f"live/packets-{how}"
        async with aiohttp.ClientSession() as s:
            if how == "websocket":
                async with s.ws_connect(gateway.ws_url(f"{key}.ts")) as ws:
                    stream = await trickle(ws.send_bytes, key)
            else:  # a chunked POST, one packet a chunk
                sock = socket.create_connection(("127.0.0.1", gateway.http_port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(f"POST /{key}.ts HTTP/1.1\r\nHost: x\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n".encode())

                async def send(p: bytes) -> None:
                    sock.sendall(b"%x\r\n%b\r\n" % (len(p), p))

                stream = await trickle(send, key)
                sock.sendall(b"0\r\n\r\n")
                sock.settimeout(10)
                assert sock.recv(1024).startswith(b"HTTP/1.1 200")
                sock.close()
        await asyncio.sleep(0.3)  # the close is handled
        return stream.frames_in

    async def trickle(send: Callable[[bytes], Awaitable[None]], key: str) -> object:
        for i, p in enumerate(packets):
            await send(p)
            await asyncio.sleep(0.0005)  # one at a time, about as a live 2 Mbit/s client trickles
            if i == 24:
                while key not in gateway.gw.hub.streams:
                    await asyncio.sleep(0.01)
                stream = gateway.gw.hub.streams[key]
        return stream

    frames_in = asyncio.run(run())
    assert frames_in == expected  # the tail gathered before the close is demuxed too
    assert calls <= len(packets) // 10, (calls, len(packets))


@pytest.mark.parametrize("how", ["post-real-time", "post-as-fast-as-it-can", "websocket"])
def test_a_publish_its_publisher_ends_keeps_its_end_and_finishes_cleanly(
        gateway: RunningGateway, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    """The FFmpeg CLI sends its last chunk and closes at once, without reading the reply; a
    WebSocket client closes its connection right after the close handshake. aiohttp then
    cancels the session (and makes the body's reads raise "Connection lost"). The publish is
    complete all the same: every frame is taken (a POST faster than real time lost its last
    ~2 s: what aiohttp still held), it ends as "publisher finished", not "disconnected", and
    no "Task exception was never retrieved" lands in the log."""
    caplog.set_level(logging.INFO)
    seconds = "2" if how == "post-real-time" else "8"
    src = tmp_path / "src.mkv"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
                    "-f", "lavfi", "-i", "sine", "-t", seconds, "-c:v", "mpeg1video", "-b:v", "6M",
                    "-bf", "0", "-g", "15", "-c:a", "mp2", str(src)], check=True, timeout=60)
    remux = ["-c", "copy", "-f", "mpegts"]
    ts = subprocess.run([FFMPEG, "-v", "error", "-i", str(src), *remux, "-"], capture_output=True,
                        check=True, timeout=60).stdout
    offline = TsDemuxer()
    expected = len(offline.receive_data(ts)) + len(offline.flush())
    ended: list[tuple[int, str]] = []
    gateway.call(gateway.gw.hub.subscribe, lambda event, stream: ended.append(
        (stream.frames_in, stream.end_reason)) if event == "unpublish" else None)
    key = f"live/tail-{how}"
    if how == "websocket":
        async def send() -> None:
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect(gateway.ws_url(f"{key}.ts")) as ws:
                    for i in range(0, len(ts), 13160):
                        await ws.send_bytes(ts[i:i + 13160])
        asyncio.run(send())
    else:
        subprocess.run([FFMPEG, "-v", "error", *(["-re"] if how == "post-real-time" else []),
                        "-i", str(src), *remux, gateway.http_url(f"{key}.ts")], check=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended == [(expected, "publisher finished")], (ended, expected, len(ts))
    assert "never retrieved" not in caplog.text, caplog.text


def test_ts_ingest_answers_a_cors_preflight(gateway: RunningGateway) -> None:
    """A web page publishing with fetch() is preflighted: OPTIONS must be a 2xx naming the method."""
    req = urllib.request.Request(gateway.http_url("live/page.ts"), method="OPTIONS", headers={
        "Origin": "http://example.com", "Access-Control-Request-Method": "PUT"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204
        assert "PUT" in r.headers["Access-Control-Allow-Methods"].split(", ")
        assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_garbage_ts_post_gets_clear_error(gateway: RunningGateway) -> None:

    req = urllib.request.Request(gateway.http_url("live/junk.ts"), data=b"hello" * 50000, method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400
    assert "MPEG-TS" in e.value.read().decode()


def test_garbage_over_a_websocket_closes_it_with_the_reason(gateway: RunningGateway) -> None:
    async def run() -> tuple[object, int | None, object]:
        async with aiohttp.ClientSession() as s, s.ws_connect(gateway.ws_url("live/wsjunk.ts")) as ws:
            for _ in range(8):  # past the demuxer's 64 KiB garbage limit
                await ws.send_bytes(b"hello" * 2000)
            msg = await ws.receive(timeout=10)
            return msg.type, ws.close_code, msg.extra

    kind, code, reason = asyncio.run(run())
    # a clean close frame, not an HTTP 400 written into the WebSocket (a protocol error, 1002)
    assert kind == aiohttp.WSMsgType.CLOSE and code == 1003, (kind, code, reason)
    assert str(reason).startswith("bad MPEG-TS: no MPEG-TS sync")
    deadline = time.monotonic() + 5
    while "live/wsjunk" in gateway.gw.hub.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "live/wsjunk" not in gateway.gw.hub.streams


def test_text_messages_to_the_ts_ingest_close_it_with_the_reason(gateway: RunningGateway) -> None:
    """A browser script sending its TS as text (a string) would hold the stream key with no
    media for ever: each text message came within the idle timeout and was ignored."""
    async def run() -> tuple[object, int | None, object]:
        async with aiohttp.ClientSession() as s, s.ws_connect(gateway.ws_url("live/wstext.ts")) as ws:
            await ws.send_str("G" * 188)
            msg = await ws.receive(timeout=10)
            return msg.type, ws.close_code, msg.extra

    kind, code, reason = asyncio.run(run())
    assert kind == aiohttp.WSMsgType.CLOSE and code == 1003, (kind, code, reason)
    assert str(reason).startswith("bad MPEG-TS: a text message: send the MPEG-TS as binary"), reason
    deadline = time.monotonic() + 5
    while "live/wstext" in gateway.gw.hub.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "live/wstext" not in gateway.gw.hub.streams


def test_flv_sent_to_the_ts_ingest_is_named_in_the_refusal(gateway: RunningGateway,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The FFmpeg CLI with ``-f flv`` (say, a copied RTMP command) aimed at the TS ingest."""
    caplog.set_level(logging.INFO)
    subprocess.run(
        [FFMPEG, "-hide_banner", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
         "-f", "lavfi", "-i", "anoisesrc=amplitude=0.3", "-t", "4", "-c:v", "libx264", "-c:a", "aac",
         "-f", "flv", gateway.http_url("live/flvts.ts")],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60)  # its exit code says nothing
    assert ("live/flvts: bad MPEG-TS: no MPEG-TS sync in" in caplog.text
            and "bytes; the data looks like FLV: send MPEG-TS (FFmpeg: -f mpegts)" in caplog.text), caplog.text
    assert "live/flvts" not in gateway.gw.hub.streams


def test_an_unsupported_codec_in_the_ts_is_named_in_the_log(gateway: RunningGateway,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    hevc = ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error"]
    caplog.set_level(logging.INFO)
    for name, audio in (("hevcmp2", ["-c:a", "mp2"]), ("hevc", ["-an"])):
        # FFmpeg's HTTP output does not read the response: its exit code says nothing
        subprocess.run(
            [FFMPEG, "-hide_banner", "-v", "error", "-re", "-f", "lavfi", "-i",
             "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine", "-t", "2", *hevc, *audio,
             "-f", "mpegts", gateway.http_url(f"live/{name}.ts")],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    text = caplog.text
    # HEVC + MP2: the video is named and skipped, the audio published
    assert ("live/hevcmp2: MPEG-TS PID 256 (stream type 0x24) carries HEVC video, which the gateway "
            "does not take; ignored (it takes MPEG-1 video, H.264, MP2 and AAC (ADTS))") in text
    assert "live/hevcmp2: published" in text and "live/hevcmp2: unpublished: publisher" in text
    # HEVC alone: the publish ends at once with the reason
    assert ("live/hevc: bad MPEG-TS: no stream the gateway can take: the TS carries HEVC video (PID 256)"
            in text), text


def _post_paced(gateway: RunningGateway, key: str, body: bytes, seconds: float, *,
                chunk: int = 188 * 50, hold: float = 0.0,
                head: tuple[int, float] | None = None) -> threading.Thread:
    """A live h5 publisher: ``body`` as one chunked POST to ``/{key}.ts`` over ``seconds`` (real
    time), the stream kept up ``hold`` s more; sent from a thread, which is returned started.
    ``head``: (bytes, seconds) of the body's start paced on their own (an audio-only start is
    far fewer bytes a second than the rest)."""
    def send() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=30)
        conn.putrequest("POST", f"/{key}.ts")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        cut, first = head or (0, 0.0)
        for part_body, secs in ((body[:cut], first), (body[cut:], seconds - first)):
            pace = secs / max(1.0, len(part_body) / chunk)
            for i in range(0, len(part_body), chunk):
                part = part_body[i:i + chunk]
                conn.send(b"%x\r\n%b\r\n" % (len(part), part))
                time.sleep(pace)
        time.sleep(hold)
        conn.send(b"0\r\n\r\n")
        conn.getresponse().read()

    publisher = threading.Thread(target=send, daemon=True)
    publisher.start()
    return publisher


def test_a_publisher_whose_clock_jumps_back_plays_on_without_a_jump(gateway: RunningGateway,
                                                                    tmp_path: Path) -> None:
    """Two TS files sent one after the other in one POST (``cat a.ts b.ts | curl ...``, or an
    encoder restarted under a running upload): the second's timestamps start again at 1.4 s."""
    seg = subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi",
         "-i", "sine=sample_rate=44100", "-t", "3", "-c:v", "mpeg1video", "-bf", "0", "-g", "15",
         "-c:a", "mp2", "-f", "mpegts", "-"], capture_output=True, check=True, timeout=60).stdout
    # 6 s of media in 6 s; the stream stays up 3 s more for the API check below
    publisher = _post_paced(gateway, "live/jump", seg + seg, 6.0, hold=3.0)
    gateway.wait_stream("live/jump", timeout=10)
    out = tmp_path / "jump.flv"
    box: list[bytes] = []
    viewer = threading.Thread(target=lambda: box.append(
        asyncio.run(ws_collect(gateway.ws_url("live/jump.jsmpeg"), 5.0))), daemon=True)
    viewer.start()
    r = capture(gateway.http_url("live/jump.flv"), out, 5.0)  # transcoded to H.264 + AAC
    viewer.join(15)
    assert r.returncode == 0, r.stderr
    with urllib.request.urlopen(gateway.http_url("api/streams"), timeout=5) as resp:
        api = {s["key"]: s for s in json.load(resp)["streams"]}
    assert api["live/jump"]["timestamp_jumps"] == 1
    publisher.join(15)
    p = probe(out)
    assert not p.decode_errors, p.decode_errors
    jsmpeg = _decode_ts(box[0])  # MPEG-1 + MP2 passed through
    for name, video, audio in (
            ("flv", p.video_dts, p.audio_dts),
            ("jsmpeg", [f.time for f in jsmpeg["video"]], [f.time for f in jsmpeg["audio"]])):
        for kind, ts in (("video", video), ("audio", audio)):
            steps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
            assert min(steps) > 0 and max(steps) < 0.2, (name, kind, min(steps), max(steps))
        assert video[-1] - video[0] > 4.0, (name, video[0], video[-1])  # across the splice
        assert abs(video[-1] - audio[-1]) < 0.15, (name, video[-1], audio[-1])  # still in sync


def test_a_publisher_switching_codec_ends_its_viewers_with_the_reason(gateway: RunningGateway) -> None:
    """An MPEG-1/MP2 TS and then an H.264/AAC one in one POST (``cat a.ts b.ts``, an encoder
    restarted with other settings under a running upload). The jsmpeg viewer's plan (MPEG-1
    passed through) no longer holds: it is closed with the reason, not left on a frozen
    picture, and playing again gets the H.264 transcoded to MPEG-1."""
    def seg(codecs: list[str]) -> bytes:
        return subprocess.run(
            [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f",
             "lavfi", "-i", "sine=sample_rate=44100", "-t", "3", *codecs, "-f", "mpegts", "-"],
            capture_output=True, check=True, timeout=60).stdout
    body = (seg(["-c:v", "mpeg1video", "-bf", "0", "-g", "15", "-c:a", "mp2"])
            + seg(["-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-bf", "0", "-c:a", "aac"]) * 2)
    publisher = _post_paced(gateway, "live/switch", body, 9.0)
    gateway.wait_stream("live/switch", timeout=10)

    async def first_viewer() -> tuple[bytes, aiohttp.WSMessage]:
        buf = bytearray()
        async with aiohttp.ClientSession() as s, s.ws_connect(gateway.ws_url("live/switch.jsmpeg")) as ws:
            while True:
                msg = await ws.receive(timeout=6)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    return bytes(buf), msg
                buf += msg.data

    data, closing = asyncio.run(first_viewer())
    assert closing.type == aiohttp.WSMsgType.CLOSE, closing
    assert closing.extra in ("the publisher switched its video from mpeg1video to h264; play again",
                             "the publisher switched its audio from mp2 to aac; play again")
    assert len(_decode_ts(data)["video"]) >= 30  # the MPEG-1 part played
    tracks = gateway.gw.hub.streams["live/switch"].tracks
    deadline = time.monotonic() + 5  # the audio and the video switch ~0.1 s apart
    while {t.codec for t in tracks.values()} != {"h264", "aac"} and time.monotonic() < deadline:
        time.sleep(0.05)
    again = _decode_ts(asyncio.run(ws_collect(gateway.ws_url("live/switch.jsmpeg"), 2.5)))
    assert again["codecs"][0] == {"video": "mpeg1video", "audio": "mp2"}
    assert len(again["video"]) >= 45 and again["video"][0].key_frame  # transcoded from H.264
    publisher.join(15)


def _late_video_ts(seconds: int = 7, video: str = "mpeg1video") -> bytes:
    """An ``video``/MP2 TS whose first GOP's video is lost, as a publisher that starts mid-GOP
    (``ffmpeg -c:v copy`` from a camera, or lost packets) sends it: audio from 0 s, video from
    its next keyframe at 2 s."""
    ts = subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi",
         "-i", "sine=sample_rate=44100", "-t", str(seconds), "-c:v", video, "-bf", "0",
         "-g", "60", "-c:a", "mp2", "-f", "mpegts", "-"], capture_output=True, check=True,
        timeout=60).stdout
    video_pid = 0x100  # FFmpeg's first PID
    keys, body = 0, bytearray()
    for i in range(0, len(ts), 188):
        p = ts[i:i + 188]
        if ((p[1] & 0x1F) << 8 | p[2]) == video_pid:
            # a keyframe's first packet: FFmpeg sets the random access indicator on it
            if p[1] & 0x40 and p[3] & 0x20 and p[4] and p[5] & 0x40:
                keys += 1
            if keys < 2:
                continue
        body += p
    return bytes(body)


@pytest.fixture
def settle_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """Viewers settle for the first track 0.5 s after it, though the TS announces the other:
    the path of a track later than ``SETTLE_ANNOUNCED`` (a GOP longer than that)."""
    monkeypatch.setattr(stream_mod, "SETTLE_ANNOUNCED", 0.5)


def _publish_late_video(gateway: RunningGateway, key: str, body: bytes, seconds: float) -> threading.Thread:
    """``_post_paced``, returning once the audio is live and the video is not yet; the audio
    alone before the video (2 s of it, see ``_late_video_ts``) takes 2 s."""
    first_video = next(i for i in range(0, len(body), 188)
                       if ((body[i + 1] & 0x1F) << 8 | body[i + 2]) == 0x100)
    publisher = _post_paced(gateway, key, body, seconds, chunk=188 * 20, head=(first_video, 2.0))
    gateway.wait_stream(key, timeout=10, video=False, tracks=1)
    time.sleep(0.2)
    assert "video" not in gateway.gw.hub.streams[key].tracks  # the viewer comes first
    return publisher


@pytest.mark.usefixtures("settle_early")
def test_video_that_starts_after_the_viewers_joins_their_variant(gateway: RunningGateway,
                                                                 tmp_path: Path) -> None:
    """An HTTP-FLV viewer that joined between the audio and the video settled for the audio
    (after 1 s), and its variant (MP2 -> AAC) used to stay audio-only for good. Now the
    video joins it (MPEG-1 -> H.264)."""
    publisher = _publish_late_video(gateway, "live/late", _late_video_ts(), 7.0)
    out = tmp_path / "late.flv"
    r = capture(gateway.http_url("live/late.flv"), out, 4.5)
    assert r.returncode == 0, r.stderr
    p = probe(out)
    assert p.codecs == {"video": "h264", "audio": "aac"}, p.codecs
    assert len(p.video_dts) >= 60, len(p.video_dts)  # from 2 s on, at 30 fps
    assert not p.decode_errors, p.decode_errors
    publisher.join(15)


@pytest.mark.usefixtures("settle_early")
def test_late_h264_reaches_a_jsmpeg_viewer_that_joined_on_the_audio(gateway: RunningGateway) -> None:
    """An IP camera relayed by ``ffmpeg -i rtsp://... -c:v copy -f mpegts URL``: H.264 copied
    (from mid-GOP: video only from its first keyframe) and MP2 audio (FFmpeg's default for TS).
    A jsmpeg viewer that came before the video was planned on the MP2 alone, which passes
    through, so it was attached to the source itself, and the H.264 that followed was skipped
    for it (jsmpeg cannot carry it): 0 pictures for the viewer's whole life. A source with one
    track so far now gets a relaying variant, which takes the video in (H.264 -> MPEG-1)."""
    publisher = _publish_late_video(gateway, "live/camjs", _late_video_ts(video="libx264"), 7.0)
    data = asyncio.run(ws_collect(gateway.ws_url("live/camjs.jsmpeg"), 4.5))
    decoded = _decode_ts(data)
    assert decoded["codecs"][0] == {"video": "mpeg1video", "audio": "mp2"}, decoded["codecs"]
    assert len(decoded["video"]) >= 45, len(decoded["video"])  # from ~2.5 s on, at 30 fps
    assert len(decoded["audio"]) >= 100, len(decoded["audio"])
    publisher.join(15)


def test_a_browser_flv_viewer_that_comes_before_a_ts_publishers_video_gets_the_video(
        gateway: RunningGateway) -> None:
    """A TS publisher's PMT announces its video before the video's first keyframe comes (a
    camera relayed with ``-c:v copy`` starts mid-GOP): a viewer now waits for it. A browser's
    HTTP-FLV player (mpegts.js on Media Source Extensions) planned on the audio alone got the
    video after its audio had started and failed (``MediaError MediaMSEError``). And the FLV
    header names the AAC still being coded from the MP2: without it the player failed the
    same way when the audio came after the video."""
    from gateway.static import find_asset

    from browser import Chromium, require_chromium

    exe = require_chromium()
    if find_asset("mpegts.js") is None:
        pytest.skip("mpegts.js is not installed (npm ci; see gateway/static/README.md)")
    body = _late_video_ts(video="libx264")  # H.264 from 2 s on, MP2 (-> AAC) from 0 s

    async def main() -> None:
        async with Chromium(exe) as b:  # started first: the page opens before the video comes
            publisher = await asyncio.to_thread(_publish_late_video, gateway, "live/flvlate", body,
                                                7.0)
            await b.open(gateway.http_url("live/flvlate.html?player=flv"))
            await b.wait_for("video.videoWidth > 0 || window.player.state === 'error'", timeout=15)
            assert await b.evaluate("window.player.error") == ""
            assert await b.evaluate("video.videoWidth") == 320
            t0 = await b.evaluate("video.currentTime")
            await asyncio.sleep(1.0)
            assert await b.evaluate("video.currentTime") > t0 + 0.5
            assert await b.evaluate("window.player.error") == ""
            assert await b.evaluate("video.webkitAudioDecodedByteCount") > 0  # sound too
            await asyncio.to_thread(publisher.join, 15)

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.usefixtures("settle_early")
def test_late_video_is_not_transcoded_for_a_webrtc_viewer_with_no_video_sender(
        gateway: RunningGateway) -> None:
    """A WHEP viewer answered while the source had audio only has no video sender: the video
    that comes later must not start an MPEG-1 -> H.264 transcode (libx264, ~2 of the transcode
    capacity's units) that nobody receives."""
    from gateway.testing import WhepClient

    publisher = _publish_late_video(gateway, "live/latewhep", _late_video_ts(5), 5.0)

    async def watch() -> dict:
        viewer = WhepClient(gateway.http_url("live/latewhep/whep"))
        await viewer.start()
        try:
            deadline = time.monotonic() + 8
            while "video" not in gateway.gw.hub.streams["live/latewhep"].tracks:
                assert time.monotonic() < deadline, "the video never came"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            with urllib.request.urlopen(gateway.http_url("api/streams"), timeout=5) as resp:
                return json.load(resp)
        finally:
            await viewer.close()

    api = asyncio.run(asyncio.wait_for(watch(), 30))
    outputs = {k: v for s in api["streams"] if s["key"] == "live/latewhep"
               for k, v in s["outputs"].items()}
    assert any("mp2 -> opus" in k for k in outputs), outputs
    assert not any("mpeg1video -> h264" in k for k in outputs), outputs
    assert api["transcode"]["used"] < 0.5, api["transcode"]  # the audio step alone: 0.08
    publisher.join(15)


def test_a_head_request_starts_no_transcode(gateway: RunningGateway, publish, clips,  # type: ignore[no-untyped-def]
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Players and health checks probe with HEAD: headers only, no variant, no viewer."""
    publish(clips["plain"], "live/head")
    caplog.set_level(logging.INFO)
    for path, kind in (("live/head.jsmpeg", "video/mp2t"), ("live/head.flv", "video/x-flv")):
        req = urllib.request.Request(gateway.http_url(path), method="HEAD")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and r.headers["Content-Type"] == kind
            assert r.read() == b""
    req = urllib.request.Request(gateway.http_url("live/none.jsmpeg"), method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 404
    time.sleep(0.3)
    started = [r.getMessage() for r in caplog.records if "variant started" in r.getMessage()
               or ": playing live/head" in r.getMessage()]
    assert not started, started


def test_publisher_restart_ends_jsmpeg_viewers_and_frees_the_transcoder(
        gateway: RunningGateway, publish, clips) -> None:
    """The publisher leaves: its jsmpeg viewers are closed with a reason (jsmpeg's player then
    reconnects), the variant's codec steps stop, and a new publisher on the same key is
    watched through a fresh variant."""
    first = publish(clips["plain"], "live/again")
    stream = gateway.gw.hub.streams["live/again"]

    async def watch_until_closed() -> tuple[int, aiohttp.WSMessage, float]:
        got = 0
        async with aiohttp.ClientSession() as s, s.ws_connect(gateway.ws_url("live/again.jsmpeg")) as ws:
            while got < 100_000:  # the variant runs and sends pictures
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                got += len(msg.data)
            variant = next(v for k, v in stream.sinks.items() if isinstance(k, tuple))
            workers = list(variant.workers.values())
            first.stop()
            left = time.monotonic()
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
            closed_after = time.monotonic() - left
            await asyncio.sleep(0.5)
            # stopped, and the codec process confirmed closing each step (codecs freed)
            assert variant.closed and all(w._stopped for w in workers), workers
            assert not [w for w in workers if w.step_id in w._child.steps]
            return got, msg, closed_after

    got, msg, closed_after = asyncio.run(watch_until_closed())
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000, msg
    assert "publisher" in (msg.extra or ""), msg  # the reason, for the player's console
    assert closed_after < 5, closed_after
    assert "live/again" not in gateway.gw.hub.streams

    publish(clips["plain"], "live/again")  # the same key again
    data = asyncio.run(ws_collect(gateway.ws_url("live/again.jsmpeg"), 2.0))
    frames = _decode_ts(data)
    assert frames["video"] and frames["audio"]


def test_viewer_churn_leaves_no_transcoder_behind(gateway: RunningGateway, publish, clips) -> None:
    """Viewers that come and go (some at once, some after pictures) start and stop the
    variant each time; afterwards no codec step is left in the processes, which stay up."""
    publish(clips["plain"], "live/churn")
    stream = gateway.gw.hub.streams["live/churn"]

    async def churn() -> None:
        async with aiohttp.ClientSession() as s:
            for i in range(12):
                async with s.ws_connect(gateway.ws_url("live/churn.jsmpeg")) as ws:
                    got = 0
                    while got < (20_000 if i % 2 else 1):
                        msg = await ws.receive(timeout=10)
                        assert msg.type == aiohttp.WSMsgType.BINARY, msg
                        got += len(msg.data)

    asyncio.run(churn())
    pool = gateway.gw.ctx.transcoder.running_pool
    assert pool is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
            any(isinstance(k, tuple) for k in stream.sinks)
            or any(c.steps for c in pool._children if c is not None)):
        time.sleep(0.1)
    assert not any(isinstance(k, tuple) for k in stream.sinks), "variant kept"
    children = [c for c in pool._children if c is not None]
    assert children and all(c.alive and not c.steps for c in children)
    assert all(abs(c.load) < 1e-6 for c in children)  # "least loaded" sees them idle again


def test_stalled_jsmpeg_viewer_is_cut_off_and_its_connection_closed(gateway: RunningGateway, publish,
                                                                     clips) -> None:
    """A jsmpeg tab that stops reading (frozen, backgrounded on a bad link) must not hold memory
    or a connection: it is cut off from the shared variant and its socket is closed, while
    another viewer of the same variant keeps decoding."""
    limits = gateway.gw.config.limits
    limits.soft_limit, limits.hard_limit, limits.max_behind = 32 << 10, 128 << 10, 2.0
    limits.socket_send_buffer = 16 << 10  # so the kernel does not absorb the backlog
    publish(clips["plain"], "live/stall")
    stream = gateway.gw.hub.streams["live/stall"]
    s = socket.create_connection(("127.0.0.1", gateway.http_port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /live/stall.jsmpeg HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")  # then never reads

    def viewers() -> int:
        return sum(len(f.viewers) for k, v in stream.sinks.items() if isinstance(k, tuple)
                   for out in v.sinks.values() for f in out.fanouts.values())

    deadline = time.monotonic() + 10
    while not viewers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert viewers() == 1, "the stalled viewer never joined"
    data = asyncio.run(ws_collect(gateway.ws_url("live/stall.jsmpeg"), 4.0))  # alongside, unharmed
    frames = _decode_ts(data)
    assert len(frames["video"]) >= 60 and frames["audio"], len(frames["video"])
    assert_cut_off(viewers, s, 15)  # detached, and the server closes the connection
    assert not stream.ended  # the publisher was never stalled


def _kill_codec_processes(gateway: RunningGateway) -> list[int]:
    """SIGKILL every transcode process of the gateway, as a crash in a codec or the OOM killer would."""
    pool = gateway.gw.ctx.transcoder.running_pool
    assert pool is not None
    pids = [c.process.pid for c in pool._children if c is not None and c.alive]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def test_viewers_keep_playing_when_a_transcode_process_dies(gateway: RunningGateway, publish,
                                                            clips) -> None:
    """A codec process hosts the variants of many streams: when it dies, each variant restarts
    its steps in a live process and its jsmpeg viewers keep their connection and get decodable
    pictures again (from the next keyframe); nobody has to reconnect."""
    publish(clips["plain"], "live/crash1")
    publish(clips["plain"], "live/crash2")
    streams = [gateway.gw.hub.streams[f"live/crash{i}"] for i in (1, 2)]

    async def watch(url: str, killed: asyncio.Event, after: bytearray) -> int:
        before, end = 0, float("inf")
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            while time.monotonic() < end:
                if killed.is_set() and end == float("inf"):
                    end = time.monotonic() + 4.0  # what the viewer gets in the 4 s after the kill
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.BINARY, msg  # never closed
                if killed.is_set():
                    after += msg.data
                else:
                    before += len(msg.data)
        return before

    async def run() -> tuple[list[int], list[bytearray], list[int]]:
        killed = asyncio.Event()
        after = [bytearray(), bytearray()]
        tasks = [asyncio.ensure_future(watch(gateway.ws_url(f"live/crash{i}.jsmpeg"), killed, after[i - 1]))
                 for i in (1, 2)]
        await asyncio.sleep(2.5)  # both variants run
        variants.extend(v for st in streams for k, v in st.sinks.items() if isinstance(k, tuple))
        pids = _kill_codec_processes(gateway)
        killed.set()
        before = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return before, after, pids

    variants: list[variant_mod.Variant] = []
    before, after, pids = asyncio.run(run())
    assert pids and all(b > 50_000 for b in before), before
    for data in after:
        frames = _decode_ts(bytes(data))
        # up to 120 (4 s at 30 fps); a slow host may need ~2 s to start the new process
        assert len(frames["video"]) >= 15 and frames["audio"], len(frames["video"])
    assert len(variants) == 2
    for variant in variants:  # restarted in place, not ended and started again
        assert variant.restarts == {"video": 1, "audio": 1}, variant.restarts
        assert variant.stats()["video"]["restarts"] == 1  # what /api/streams shows
    assert not any(stream.ended for stream in streams)
    pool = gateway.gw.ctx.transcoder.running_pool
    assert pool is not None
    assert not {c.process.pid for c in pool._children if c is not None} & set(pids)


def test_after_a_transcode_process_dies_pictures_come_back_at_once(
        gateway: RunningGateway, publish, long_gop_clip: Path) -> None:
    """The restarted step catches up on the source's GOP instead of waiting for its next
    keyframe: with an 8 s GOP, that wait was up to 8 s of a frozen picture."""
    publish(long_gop_clip, "live/phoenix")

    async def run() -> bytes:
        async with aiohttp.ClientSession() as s, s.ws_connect(gateway.ws_url("live/phoenix.jsmpeg")) as ws:
            end = time.monotonic() + 2.0
            while time.monotonic() < end:  # the variant runs
                await ws.receive(timeout=10)
            await asyncio.to_thread(_kill_codec_processes, gateway)
            after = bytearray()
            end = time.monotonic() + 4.0
            while time.monotonic() < end:
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                after += msg.data
            return bytes(after)

    video = _decode_ts(asyncio.run(run()))["video"]
    # ~110 of 120 on this machine (the new process starts in ~0.3 s); a slow host needs ~2 s
    assert len(video) >= 45, len(video)
    assert video[0].key_frame


def test_a_transcode_that_keeps_dying_ends_its_variant_with_a_reason(
        gateway: RunningGateway, publish, clips, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A step the process keeps dying on (say a bitstream that crashes the decoder) is not
    restarted for ever: past the budget its variant ends and its viewers are told why."""
    monkeypatch.setattr(variant_mod, "RESTARTS", 1)
    monkeypatch.setattr(variant_mod, "COOL_DOWN", 3.0)
    publish(clips["plain"], "live/crashloop")
    stream = gateway.gw.hub.streams["live/crashloop"]

    async def run() -> tuple[aiohttp.WSMessage, int]:
        deaths = 0
        async with aiohttp.ClientSession() as s, s.ws_connect(gateway.ws_url("live/crashloop.jsmpeg")) as ws:
            while True:
                got = 0
                while got < 20_000:  # pictures (again)
                    msg = await ws.receive(timeout=10)
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        return msg, deaths
                    got += len(msg.data)
                variant = next((v for k, v in stream.sinks.items() if isinstance(k, tuple)), None)
                if variant is None:  # ended; what was sent before the close frame is still coming
                    continue
                # read on the gateway's loop: a restart swaps the step there (never half-done)
                step = await asyncio.to_thread(gateway.call, variant.workers.get, "video")
                if step is None or step.failed:  # being restarted: the next pictures tell
                    continue
                deaths += await asyncio.to_thread(kill_while_coding, step._child, step.step_id)
                assert deaths <= 3, "never ended"

    msg, deaths = asyncio.run(run())
    assert deaths == 2  # the first death on the step is survived, the second is one too many
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    assert "video transcoder failed 2 times" in (msg.extra or ""), msg
    assert not any(isinstance(k, tuple) for k in stream.sinks)
    ended = time.monotonic()
    # for a while, a new viewer is refused with the reason (each new variant would crash a
    # process again, and the other streams' variants in it); other outputs are unaffected
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        asyncio.run(ws_collect(gateway.ws_url("live/crashloop.jsmpeg"), 1.0))
    assert e.value.status == 503
    with pytest.raises(urllib.error.HTTPError) as h:  # the same TS for tools, by plain GET
        urllib.request.urlopen(gateway.http_url("live/crashloop.jsmpeg"), timeout=5)
    assert h.value.code == 503 and int(h.value.headers["Retry-After"]) >= 1
    assert "crashed repeatedly" in h.value.read().decode()
    r = capture(gateway.rtmp_url("live/crashloop"), tmp_path / "rtmp.flv", 1.0)  # pass-through
    assert r.returncode == 0, r.stderr
    time.sleep(max(0.0, ended + 3.2 - time.monotonic()))
    data = asyncio.run(ws_collect(gateway.ws_url("live/crashloop.jsmpeg"), 2.0))  # then a fresh variant
    assert _decode_ts(data)["video"]


def test_a_crash_counts_against_the_step_it_happened_in_only(clips, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two streams' variants in one process, which dies while coding the first one's video:
    only that step's budget is charged; the other variant restarts for free, so a poisoned
    stream cannot use up the budget of the streams that happen to share its process."""
    monkeypatch.setattr(variant_mod, "RESTARTS", 0)  # a death on a step ends its variant at once
    gen = _start_gateway(Config(host="127.0.0.1", rtmp_port=0, http_port=0, transcode_processes=1))
    gateway = next(gen)
    pubs = [Publisher(clips["plain"], gateway.rtmp_url(f"live/share{i}")) for i in (1, 2)]
    try:
        for i in (1, 2):
            gateway.wait_stream(f"live/share{i}")
        streams = [gateway.gw.hub.streams[f"live/share{i}"] for i in (1, 2)]

        async def run() -> tuple[list[aiohttp.WSMessage], list[variant_mod.Variant], bool]:
            async with aiohttp.ClientSession() as s:
                wss = [await s.ws_connect(gateway.ws_url(f"live/share{i}.jsmpeg")) for i in (1, 2)]
                for ws in wss:
                    assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.BINARY
                variants = [next(v for k, v in st.sinks.items() if isinstance(k, tuple)) for st in streams]
                step = variants[0].workers["video"]
                assert step._child is variants[1].workers["video"]._child  # one process
                on_it = await asyncio.to_thread(kill_while_coding, step._child, step.step_id)
                last = []
                # the first is closed with the reason (after what was sent before the crash,
                # however much that was on a busy machine); the second plays on
                for ws, enough in zip(wss, (2_000_000, 50_000), strict=False):  # (~10 s of pictures)
                    got = 0
                    while True:
                        msg = await ws.receive(timeout=10)
                        if msg.type != aiohttp.WSMsgType.BINARY or got > enough:
                            break
                        got += len(msg.data)
                    last.append(msg)
                    await ws.close()
                return last, variants, on_it

        last, variants, on_it = asyncio.run(run())
        assert on_it
        assert last[0].type == aiohttp.WSMsgType.CLOSE and "video transcoder failed" in (last[0].extra or "")
        assert last[1].type == aiohttp.WSMsgType.BINARY, last[1]  # still pictures after the crash
        assert variants[1].restarts == {"video": 1, "audio": 1}
    finally:
        for p in pubs:
            p.stop()
        next(gen, None)


def _spliced_flv(path: Path, parts: list[tuple[str, int]]) -> Path:
    """FFmpeg-made H.264/AAC FLV segments (size, audio rate) joined into one FLV as an encoder
    whose settings change mid-stream writes it: each segment's own sequence headers, one
    timeline whose video steps are all one frame."""
    out = bytearray(flv.FLV_HEADER()) + b"\0\0\0\0"
    next_video = 0
    for i, (size, rate) in enumerate(parts):
        seg = subprocess.run(
            [FFMPEG, "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-f", "lavfi",
             "-i", f"sine=frequency=440:sample_rate={rate}", "-t", "3", "-c:v", "libx264", "-preset",
             "veryfast", "-g", "30", "-bf", "0", "-c:a", "aac", "-f", "flv", "-"],
            capture_output=True, check=True, timeout=60).stdout
        reader = flv.FlvReader()
        tags = [t for t in reader.receive_data(seg) if t.tag_type in (8, 9) and t.body]
        video = [t.timestamp for t in tags if t.tag_type == 9
                 and flv.parse_video_body(t.body).avc_packet_type == flv.AVC_NALU]
        shift = next_video - video[0] if i else 0
        for t in tags:
            if t.tag_type == 9 and flv.parse_video_body(t.body).avc_packet_type == flv.AVC_END_OF_SEQUENCE:
                continue
            out += flv.encode_tag(t.tag_type, t.timestamp + shift, t.body)
        next_video = video[-1] + shift + 33
    path.write_bytes(bytes(out))
    return path


def test_a_publisher_changing_size_and_sample_rate_keeps_every_frame(gateway: RunningGateway,
                                                                     tmp_path: Path) -> None:
    """OBS or a phone app changing its output settings sends new sequence headers mid-stream.
    The running transcode reopens its decoder and goes on: no frame lost at the switch (a new
    step used to drop the ones in flight), the output's size and MP2 rate unchanged."""
    clip = _spliced_flv(tmp_path / "spliced.flv", [("640x360", 44100), ("320x240", 48000),
                                                     ("640x360", 44100)])
    pub = Publisher(clip, gateway.rtmp_url("live/resize"), loops=0)
    try:
        gateway.wait_stream("live/resize")
        data = asyncio.run(ws_collect(gateway.ws_url("live/resize.jsmpeg"), 7.0))
    finally:
        err = pub.stderr()
    frames = _decode_ts(data)
    video, audio = frames["video"], frames["audio"]
    assert {(f.width, f.height) for f in video} == {(640, 360)}, err
    assert {f.sample_rate for f in audio} == {44100}
    assert video[-1].time - video[0].time > 6.0  # both switches (at 3 s and 6 s) are in
    for kind, ts in (("video", [f.time for f in video]), ("audio", [f.time for f in audio])):
        steps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
        assert min(steps) > 0 and max(steps) < 0.05, (kind, min(steps), max(steps))


@pytest.mark.parametrize("only", ["audio", "video"])
def test_single_track_rtmp_source_plays_as_jsmpeg(gateway: RunningGateway, only: str) -> None:
    """A radio-style (AAC only) or silent (H.264 only) publisher: the jsmpeg variant carries
    just that track, MP2 or MPEG-1, and starts at once."""
    src = (["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-c:a", "aac"] if only == "audio"
           else ["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-c:v", "libx264", "-preset",
                 "veryfast", "-g", "30", "-bf", "0"])
    key = f"live/{only}only"
    p = subprocess.Popen([FFMPEG, "-hide_banner", "-v", "error", "-re", *src[:4], "-t", "20", *src[4:],
                          "-f", "flv", gateway.rtmp_url(key)],
                         stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        gateway.wait_stream(key, video=only == "video", tracks=1)
        data = asyncio.run(ws_collect(gateway.ws_url(f"{key}.jsmpeg"), 2.5))
    finally:
        p.terminate()
        p.wait(5)
    frames = _decode_ts(data)
    assert frames["codecs"][0] == ({"audio": "mp2"} if only == "audio" else {"video": "mpeg1video"})
    other = "video" if only == "audio" else "audio"
    assert not frames[other]
    assert len(frames[only]) >= (80 if only == "audio" else 60), len(frames[only])  # 2.5 s: ~96 / ~75


def test_later_jsmpeg_viewer_starts_at_once_from_the_variants_gop_cache(gateway: RunningGateway, publish,
                                                                         clips) -> None:
    """A viewer joining a running variant gets its cached GOP at once: the first bytes are a
    sequence header and an I-frame, and the first picture arrives without waiting for the
    next keyframe (nor for a transcoder to start)."""
    publish(clips["plain"], "live/later")

    async def run() -> tuple[bytes, float]:
        first = asyncio.ensure_future(ws_collect(gateway.ws_url("live/later.jsmpeg"), 4.0))
        await asyncio.sleep(1.7)  # the variant runs; 0.7 s into its 1 s GOP (30 frames)
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s, s.ws_connect(gateway.ws_url("live/later.jsmpeg")) as ws:
            buf = bytearray()
            while buf.find(b"\x00\x00\x01\x00") < 0:  # a picture start code
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                buf += msg.data
            waited = time.monotonic() - t0
            for _ in range(20):
                buf += (await ws.receive(timeout=10)).data
        await first
        return bytes(buf), waited

    data, waited = asyncio.run(run())
    seq, pic = data.find(b"\x00\x00\x01\xb3"), data.find(b"\x00\x00\x01\x00")
    assert 0 <= seq < pic < 188 * 6, (seq, pic)
    frames = _decode_ts(data)
    assert frames["video"] and frames["video"][0].key_frame
    assert waited < 0.15, waited  # waiting for the next I-frame would take ~0.3 s here


def test_refused_transcode_gets_play_failed_over_rtmp_and_503_over_http_flv(
        gateway: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An h5 (MPEG-1) stream's H.264 re-encode for RTMP/FLV crashes its process: the RTMP
    viewer's play ends, and new RTMP and HTTP-FLV viewers are refused with the reason while
    the transcode cools down; jsmpeg viewers (pass-through) still play."""
    monkeypatch.setattr(variant_mod, "RESTARTS", 0)  # the first death on the step ends it
    pub = _h5_publisher(gateway.http_url("live/h5crash.ts"))
    try:
        gateway.wait_stream("live/h5crash", timeout=10)
        stream = gateway.gw.hub.streams["live/h5crash"]
        player = subprocess.Popen([FFMPEG, "-hide_banner", "-v", "error", "-i", gateway.rtmp_url("live/h5crash"),
                                   "-t", "20", "-c", "copy", "-f", "flv", str(tmp_path / "a.flv")],
                                  stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        variant = None
        while variant is None or "video" not in variant.workers:
            assert time.monotonic() < deadline, "no variant for the RTMP player"
            variant = next((v for k, v in stream.sinks.items() if isinstance(k, tuple)), None)
            time.sleep(0.05)
        step = variant.workers["video"]
        assert kill_while_coding(step._child, step.step_id)
        player.wait(15)  # the play ended with the variant, long before its 20 s
        r = subprocess.run([FFPROBE, "-v", "error", "-rw_timeout", "5000000", gateway.rtmp_url("live/h5crash")],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "crashed repeatedly" in r.stderr, r.stderr  # the status's text
        with pytest.raises(urllib.error.HTTPError) as h:
            urllib.request.urlopen(gateway.http_url("live/h5crash.flv"), timeout=5)
        assert h.value.code == 503 and "crashed repeatedly" in h.value.read().decode()
        data = asyncio.run(ws_collect(gateway.ws_url("live/h5crash.jsmpeg"), 1.5))
        assert _decode_ts(data)["video"]
    finally:
        pub.terminate()
        pub.wait(5)


def test_past_the_transcode_capacity_new_variants_are_refused_and_running_ones_spared(
        clips, tmp_path: Path) -> None:
    """A viewer whose variant would take the transcoding past ``transcode_capacity`` is refused
    with the reason (503 + Retry-After); the running variant keeps its viewers and takes new
    ones at no cost, pass-through viewers of any stream play, and freed capacity is reused."""
    # the clips are 640x360 at 30 fps: H.264 -> MPEG-1 costs 0.25, AAC -> MP2 0.02
    gen = _start_gateway(Config(host="127.0.0.1", rtmp_port=0, http_port=0,
                                transcode_capacity=0.4))
    gateway = next(gen)
    pubs = [Publisher(clips["plain"], gateway.rtmp_url(k)) for k in ("live/capa", "live/capb")]
    try:
        for k in ("live/capa", "live/capb"):
            gateway.wait_stream(k)

        def api() -> dict:
            with urllib.request.urlopen(gateway.http_url("api/streams"), timeout=5) as r:
                return json.loads(r.read())

        def refused_get() -> urllib.error.HTTPError:
            with pytest.raises(urllib.error.HTTPError) as h:
                urllib.request.urlopen(gateway.http_url("live/capb.jsmpeg"), timeout=5)
            return h.value

        async def run() -> tuple[int, int, int, dict, urllib.error.HTTPError]:
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect(gateway.ws_url("live/capa.jsmpeg")) as a1:
                    first = len((await a1.receive(timeout=10)).data)
                    async with s.ws_connect(gateway.ws_url("live/capa.jsmpeg")) as a2:  # joins
                        second = len((await a2.receive(timeout=10)).data)
                        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                            await s.ws_connect(gateway.ws_url("live/capb.jsmpeg"))
                        assert e.value.status == 503
                        get = await asyncio.to_thread(refused_get)
                        load = await asyncio.to_thread(api)
                        later = 0
                        while later < 50_000:  # the running variant plays on
                            msg = await a1.receive(timeout=10)
                            assert msg.type == aiohttp.WSMsgType.BINARY, msg
                            later += len(msg.data)
            return first, second, later, load, get

        first, second, later, load, get = asyncio.run(run())
        assert first and second and later
        assert get.code == 503 and int(get.headers["Retry-After"]) >= 1
        text = get.read().decode()
        assert "transcode capacity" in text and "0.27" in text, text  # what it needs
        assert load["transcode"] == {"used": 0.27, "capacity": 0.4}, load["transcode"]
        r = capture(gateway.rtmp_url("live/capb"), tmp_path / "b.flv", 1.0)  # pass-through
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10  # the last viewer left: the variant stops, frees 0.27
        while api()["transcode"]["used"]:
            assert time.monotonic() < deadline, api()["transcode"]
            time.sleep(0.05)
        data = asyncio.run(ws_collect(gateway.ws_url("live/capb.jsmpeg"), 2.0))
        assert _decode_ts(data)["video"]
    finally:
        for p in pubs:
            p.stop()
        next(gen, None)


def test_past_the_transcode_capacity_rtmp_play_fails_with_the_reason(tmp_path: Path) -> None:
    """RTMP players get the refusal as ``NetStream.Play.Failed`` with its text; the h5 stream's
    own (pass-through) viewers are not limited."""
    # an h5 (MPEG-1 + MP2) stream needs MPEG-1 -> H.264 (2.1 x 0.25) + MP2 -> AAC (0.15) for RTMP
    gen = _start_gateway(Config(host="127.0.0.1", rtmp_port=0, http_port=0,
                                transcode_capacity=0.5))
    gateway = next(gen)
    pub = _h5_publisher(gateway.http_url("live/capfull.ts"))
    try:
        gateway.wait_stream("live/capfull", timeout=10)
        r = subprocess.run([FFPROBE, "-v", "error", "-rw_timeout", "5000000", gateway.rtmp_url("live/capfull")],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, r.stderr
        assert "transcode capacity is in use (0.0 of 0.5" in r.stderr and "needs 0.68" in r.stderr, r.stderr
        data = asyncio.run(ws_collect(gateway.ws_url("live/capfull.jsmpeg"), 1.5))
        assert _decode_ts(data)["video"]
    finally:
        pub.terminate()
        pub.wait(5)
        next(gen, None)


def _play_before_the_tracks(gateway: RunningGateway, caplog: pytest.LogCaptureFixture, name: str,
                            publish: Callable[[str], Callable[[], object]],
                            play: Callable[[str], T]) -> T:
    """Publish on a fresh key, ``play`` it the moment the key exists, until the gateway logs
    that the player came before the publisher's tracks were known (it usually does at once)."""
    for attempt in range(15):
        key = f"live/{name}{attempt}"
        stop = publish(key)
        try:
            deadline = time.monotonic() + 10
            while key not in gateway.gw.hub.streams:
                assert time.monotonic() < deadline, "never published"
                time.sleep(0.002)
            got = play(key)
        finally:
            stop()
        if any("waiting for the publisher's tracks" in r.getMessage() and key in r.getMessage()
               for r in caplog.records):
            return got
    pytest.fail("the player never came before the tracks were known")


def test_a_viewer_that_comes_with_the_publisher_gets_every_track(gateway: RunningGateway, clips,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A player that connects the moment a stream is published (an auto-retrying page, a CDN
    pull) used to be planned from the tracks known then: none, or only one, for good. It now
    waits until the publisher's tracks are known and gets a variant with both."""
    caplog.set_level(logging.INFO, logger="gateway.hub.sessions")
    data = _play_before_the_tracks(
        gateway, caplog, "early", lambda key: Publisher(clips["plain"], gateway.rtmp_url(key)).stop,
        lambda key: asyncio.run(ws_collect(gateway.ws_url(f"{key}.jsmpeg"), 2.0)))
    got = _decode_ts(data)
    assert got["video"] and got["audio"], {k: len(v) for k, v in got.items()}


def test_an_rtmp_player_that_comes_with_an_h5_publisher_gets_h264_and_aac(
        gateway: RunningGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same over RTMP: a play that arrives before an h5 (MPEG-1/MP2) stream's tracks are
    known waits for them, then gets the H.264 + AAC variant (it used to get nothing)."""
    caplog.set_level(logging.INFO, logger="gateway.hub.sessions")

    def publish(key: str) -> Callable[[], object]:
        pub = _h5_publisher(gateway.http_url(f"{key}.ts"), seconds=8)
        return lambda: (pub.terminate(), pub.wait(5))

    r = _play_before_the_tracks(
        gateway, caplog, "earlyh5", publish,
        lambda key: capture(gateway.rtmp_url(key), tmp_path / "early.flv", 1.5))
    assert r.returncode == 0, r.stderr
    assert probe(tmp_path / "early.flv").codecs == {"video": "h264", "audio": "aac"}


def test_an_ip_camera_like_source_plays_as_jsmpeg(gateway: RunningGateway, publish, tmp_path: Path) -> None:
    """What a cheap camera sends: an odd size, 12.5 fps and 8 kHz mono AAC. jsmpeg gets an even
    size, a rate MPEG-1 can declare (its frames are not duplicated: they keep their times),
    MP2 at a rate jsmpeg decodes (32 kHz), and sound and pictures together."""
    clip = tmp_path / "cam.flv"
    subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=641x361:rate=12.5",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000", "-t", "6",
                    "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-bf", "0",
                    "-c:a", "aac", "-ac", "1", "-b:a", "24k", "-f", "flv", str(clip)],
                   check=True, timeout=120)
    publish(clip, "live/ipcam")
    data = asyncio.run(ws_collect(gateway.ws_url("live/ipcam.jsmpeg"), 4.0))
    got = _decode_ts(data)
    assert got["codecs"][0] == {"video": "mpeg1video", "audio": "mp2"}
    video, audio = got["video"], got["audio"]
    assert (video[0].width, video[0].height) == (640, 360)
    assert (audio[0].sample_rate, audio[0].layout.nb_channels) == (32000, 1)
    span = video[-1].time - video[0].time
    assert 11 <= (len(video) - 1) / span <= 14, (len(video), span)  # still 12.5 pictures a second
    with av.open(io.BytesIO(data), format="mpegts") as c:
        rate = c.streams.video[0].codec_context.framerate
    assert float(rate) == pytest.approx(24000 / 1001), rate  # declared: a standard MPEG-1 rate
    assert abs(video[0].time - audio[0].time) < 0.15, (video[0].time, audio[0].time)
    assert abs(video[-1].time - audio[-1].time) < 0.2, (video[-1].time, audio[-1].time)
