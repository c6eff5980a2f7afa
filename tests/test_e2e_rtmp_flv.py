"""End to end with real peers: FFmpeg publishes over RTMP; FFmpeg, PyAV and WebSocket clients play."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import pytest

from gateway.wire import flv
from gateway.wire.rtmp import connection as rc

from conftest import FFMPEG, FFPROBE, Publisher, RunningGateway
from flvcheck import assert_cut_off, assert_good, capture, probe, ws_collect

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


def test_ws_flv_play_back(gateway: RunningGateway, publish, clips, tmp_path: Path) -> None:
    publish(clips["bframes"], "live/cam")
    data = asyncio.run(ws_collect(gateway.ws_url("live/cam.flv"), SECONDS + 1))
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
        second.stderr()
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
        except (TimeoutError, ConnectionResetError) as e:
            assert not isinstance(e, socket.timeout), "gateway kept a garbage connection open"
    socks[0].close()
    out = tmp_path / "after.flv"
    r = capture(gateway.rtmp_url("live/cam"), out, 2.0)
    assert r.returncode == 0, r.stderr
    assert_good(probe(out), seconds=2.0, bframes=False)


def _http_flv_tags(url: str, seconds: float) -> list:
    reader = flv.FlvReader()
    tags: list = []
    deadline = time.monotonic() + seconds
    with urllib.request.urlopen(url, timeout=5) as resp:
        while time.monotonic() < deadline:
            chunk = resp.read1(65536)
            if not chunk:
                break
            tags += reader.receive_data(chunk)
    return tags


@pytest.mark.parametrize("how", ["app", "query"])
def test_miniprogram_publish_and_play_with_complete_metadata(
        gateway: RunningGateway, clips, tmp_path: Path, how: str) -> None:
    # classified by the configured app name, or by ?client=miniprogram on the URL
    key = "miniprogram/room1" if how == "app" else "live/room1"
    url = gateway.rtmp_url(key) + ("?client=miniprogram" if how == "query" else "")
    pub = Publisher(clips["plain"], url)
    try:
        gateway.wait_stream(key)
        assert gateway.gw.hub.streams[key].info.protocol == "miniprogram"
        out = tmp_path / "mp.flv"
        r = capture(gateway.rtmp_url(key), out, 2.0)
        assert r.returncode == 0, r.stderr
        assert_good(probe(out), seconds=2.0, bframes=False)
        tags = _http_flv_tags(gateway.http_url(f"{key}.flv"), 1.0)
        name, values = flv.parse_script_body(tags[0].body)
        meta = values[0]
        assert tags[0].tag_type == 18 and name == "onMetaData"
        for k in ("width", "height", "framerate", "videocodecid", "audiosamplerate",
                  "audiochannels", "audiodatarate", "videodatarate", "stereo"):
            assert k in meta, k
        assert (meta["width"], meta["height"], meta["audiosamplerate"]) == (640, 360, 44100)
        assert meta["framerate"] == pytest.approx(30, abs=0.1)
        assert meta["videodatarate"] > 0 and meta["audiodatarate"] > 0
    finally:
        pub.stop()


def test_high10_source_is_re_encoded_for_miniprogram_players_only(gateway: RunningGateway, publish,
                                                                  high10_clip: Path,
                                                                  tmp_path: Path) -> None:
    """A phone's H.264 decoder takes 8-bit 4:2:0 only: a mini-program player gets 8 bits, an
    RTMP player the source as it is."""
    publish(high10_clip, "live/ten")
    got = {}
    for client, url in (("miniprogram", gateway.rtmp_url("live/ten") + "?client=miniprogram"),
                        ("rtmp", gateway.rtmp_url("live/ten"))):
        out = tmp_path / f"{client}.flv"
        r = capture(url, out, 2.0)
        assert r.returncode == 0, r.stderr
        p = probe(out)
        assert not p.decode_errors, p.decode_errors
        got[client] = next(st["pix_fmt"] for st in p.info["streams"] if st["codec_type"] == "video")
    assert got == {"miniprogram": "yuv420p", "rtmp": "yuv420p10le"}


_ENHANCED_RTMP_PUBLISHER = """
import sys, av, numpy as np
out = av.open(sys.argv[1], "w", format="flv")  # PyAV's FFmpeg 8 writes HEVC as Enhanced RTMP
s = out.add_stream("libx265", rate=25)
s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
s.options = {"x265-params": "log-level=error"}
try:
    for i in range(50):
        f = av.VideoFrame.from_ndarray(np.full((240, 320, 3), i * 5, np.uint8), format="rgb24")
        f.pts = i
        for p in s.encode(f):
            out.mux(p)
    out.close()
except OSError as e:
    print(type(e).__name__)
"""


def test_an_enhanced_rtmp_hevc_publisher_is_told_why(gateway: RunningGateway,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    r = subprocess.run([sys.executable, "-c", _ENHANCED_RTMP_PUBLISHER, gateway.rtmp_url("live/hevc")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr  # (whether its writes saw the close depends on timing)
    assert any("bad video tag: Enhanced RTMP video (hvc1) is not supported; publish H.264"
               in rec.getMessage() for rec in caplog.records), caplog.text
    assert "live/hevc" not in gateway.gw.hub.streams


def test_codecs_rtmp_cannot_carry_here_are_named_and_skipped(gateway: RunningGateway,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for key, codecs in (("live/mp3", ["-c:v", "libx264", "-c:a", "libmp3lame"]),
                        ("live/h263", ["-c:v", "flv1", "-c:a", "aac"])):
        pub = subprocess.Popen(
            [FFMPEG, "-hide_banner", "-v", "error", "-re", "-f", "lavfi", "-i",
             "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=sample_rate=44100", "-t", "5",
             *codecs, "-f", "flv", gateway.rtmp_url(key)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            gateway.wait_stream(key, video=key == "live/mp3", tracks=1)
            time.sleep(0.5)
            kinds = set(gateway.gw.hub.streams[key].tracks)
        finally:
            pub.terminate()
            pub.wait(5)
        assert kinds == ({"video"} if key == "live/mp3" else {"audio"}), (key, kinds)
    text = caplog.text
    assert "live/mp3: audio MP3 is not supported over RTMP/FLV (only AAC); ignored" in text, text
    assert "live/h263: video Sorenson H.263 is not supported over RTMP/FLV (only H.264); ignored" in text


def test_a_publisher_whose_media_is_refused_gets_an_error_status_before_the_close(
        gateway: RunningGateway) -> None:
    """What FFmpeg shows as "Server error: ...": a NetStream.Publish.Failed status with the
    reason, sent before an orderly close (a reset would discard it unread)."""
    conn = rc.ClientConnection()
    sock = socket.create_connection(("127.0.0.1", gateway.rtmp_port), timeout=10)
    statuses: list[rc.Status] = []
    with sock:
        conn.connect("live", gateway.rtmp_url(""))
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                break  # closed by the gateway
            for ev in conn.receive_data(data):
                if isinstance(ev, rc.ConnectResult):
                    conn.create_stream()
                elif isinstance(ev, rc.StreamCreated):
                    conn.publish("refused")
                elif isinstance(ev, rc.Status):
                    statuses.append(ev)
                    if ev.code == "NetStream.Publish.Start":  # an Enhanced RTMP (HEVC) keyframe
                        conn.send_media(9, 0, b"\x90hvc1" + bytes(40))
            sock.sendall(conn.data_to_send())
    failed = [st for st in statuses if st.code == "NetStream.Publish.Failed"]
    assert failed and failed[0].level == "error", statuses
    assert "Enhanced RTMP video (hvc1) is not supported; publish H.264" in failed[0].description


def test_timestamps_past_2_pow_24_ms(gateway: RunningGateway, clips, tmp_path: Path) -> None:
    # 17,000 s offset: every RTMP timestamp needs the extended field (>= 0xFFFFFF ms)
    p = subprocess.Popen([FFMPEG, "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clips["bframes"]),
                          "-c", "copy", "-output_ts_offset", "17000", "-f", "flv",
                          gateway.rtmp_url("live/late")], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        gateway.wait_stream("live/late")
        assert gateway.gw.hub.streams["live/late"].gop[0].dts_ms() > 0xFFFFFF
        for url in (gateway.rtmp_url("live/late"), gateway.http_url("live/late.flv")):
            out = tmp_path / "late.flv"
            r = capture(url, out, 2.0)
            assert r.returncode == 0, r.stderr
            assert_good(probe(out), seconds=2.0, bframes=True)
    finally:
        p.terminate()
        p.wait(5)


def test_slow_viewer_is_cut_off_others_keep_playing(gateway: RunningGateway, publish, clips,
                                                     tmp_path: Path) -> None:
    limits = gateway.gw.config.limits
    limits.soft_limit, limits.hard_limit, limits.max_behind = 32 << 10, 128 << 10, 2.0
    limits.socket_send_buffer = 16 << 10  # so the kernel does not absorb the backlog
    publish(clips["plain"], "live/cam")
    # a viewer that requests the stream and never reads: its queue fills up
    s = socket.create_connection(("127.0.0.1", gateway.http_port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /live/cam.flv HTTP/1.1\r\nHost: x\r\n\r\n")
    out = tmp_path / "ok.flv"
    r = capture(gateway.http_url("live/cam.flv"), out, 4.0)  # plays alongside, unharmed
    assert r.returncode == 0, r.stderr
    assert_good(probe(out), seconds=4.0, bframes=False)
    stream = gateway.gw.hub.streams["live/cam"]

    def viewers() -> int:
        sink = stream.sinks.get("flv")
        return 0 if sink is None else sum(len(f.viewers) for f in sink.fanouts.values())

    assert_cut_off(viewers, s, 10)  # stalled one is cut off with a reason
    assert not stream.ended  # the publisher was never stalled


def test_rtmp_first_frame_from_gop_cache(gateway: RunningGateway, publish, clips) -> None:
    """Our sans-I/O client measures play request -> first video message, decoded by PyAV."""
    from gateway.wire.rtmp import connection as rc

    publish(clips["plain"], "live/cam")
    time.sleep(0.6)
    s = socket.create_connection(("127.0.0.1", gateway.rtmp_port))
    c = rc.ClientConnection()
    c.connect("live", gateway.rtmp_url("live"))
    s.sendall(c.data_to_send())
    decoder = av.CodecContext.create("h264", "r")
    t0 = 0.0
    played = False
    while True:
        data = s.recv(65536)
        assert data
        for ev in c.receive_data(data):
            if isinstance(ev, rc.ConnectResult):
                c.create_stream()
            elif isinstance(ev, rc.StreamCreated):
                t0 = time.monotonic()
                c.play("cam", ev.stream_id)
                played = True
            elif isinstance(ev, rc.MediaReceived) and ev.type_id == 9 and played:
                vt = flv.parse_video_body(bytes(ev.payload))
                if vt.avc_packet_type == 0:
                    decoder.extradata = vt.payload
                elif decoder.decode(av.Packet(vt.payload)):
                    elapsed = time.monotonic() - t0
                    print(f"RTMP play request -> first decoded video frame: {elapsed * 1000:.1f} ms")
                    assert vt.keyframe and elapsed < 0.5
                    s.close()
                    return
        out = c.data_to_send()
        if out:
            s.sendall(out)
