"""Read-back helpers for end-to-end tests: capture what the gateway serves and judge it with FFmpeg."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from conftest import FFMPEG, FFPROBE


@dataclass
class Probe:
    codecs: dict[str, str]  # codec_type -> codec_name
    video_dts: list[float]
    video_pts: list[float]
    audio_dts: list[float]
    decode_errors: str
    info: dict


def probe(path: Path | str) -> Probe:
    """Codecs, packet timestamps (ffprobe) and a full decode (ffmpeg -f null) of a capture."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-show_streams", "-show_packets", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    info = json.loads(out.stdout)
    codecs = {s["codec_type"]: s["codec_name"] for s in info.get("streams", [])}
    index = {s["index"]: s["codec_type"] for s in info.get("streams", [])}
    vd, vp, ad = [], [], []
    for p in info.get("packets", []):
        kind = index.get(p["stream_index"])
        if kind == "video":
            vd.append(float(p.get("dts_time", "nan")))
            vp.append(float(p.get("pts_time", "nan")))
        elif kind == "audio":
            ad.append(float(p.get("dts_time", "nan")))
    # framemd5 decodes every frame like -f null, without null-muxer CFR timestamp complaints
    dec = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-f", "framemd5", "-"],
                         capture_output=True, text=True, timeout=120)
    return Probe(codecs, vd, vp, ad, dec.stderr.strip() + ("" if dec.returncode == 0 else " (failed)"),
                 info)


def capture(url: str, out: Path, seconds: float = 3.0, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """The FFmpeg CLI as a player: remux ``seconds`` of the served stream into ``out``."""
    return subprocess.run(
        [FFMPEG, "-hide_banner", "-v", "error", "-y", "-i", url, "-t", str(seconds), "-c", "copy",
         "-f", "flv", str(out)],
        capture_output=True, text=True, timeout=timeout,
    )


def assert_good(p: Probe, *, seconds: float, bframes: bool) -> None:
    assert p.codecs == {"video": "h264", "audio": "aac"}, p.codecs
    assert not p.decode_errors, p.decode_errors
    assert len(p.video_dts) >= seconds * 30 * 0.8, f"only {len(p.video_dts)} video frames"
    assert len(p.audio_dts) >= seconds * 43 * 0.8, f"only {len(p.audio_dts)} audio frames"
    assert all(b > a for a, b in zip(p.video_dts, p.video_dts[1:], strict=False)), "video dts not increasing"
    assert all(b >= a for a, b in zip(p.audio_dts, p.audio_dts[1:], strict=False)), "audio dts not monotonic"
    reordered = sum(1 for d, q in zip(p.video_dts, p.video_pts, strict=False) if q > d + 1e-6)
    if bframes:
        assert reordered > 0, "B-frame stream lost its composition times"
        assert all(q >= d - 1e-6 for d, q in zip(p.video_dts, p.video_pts, strict=False)), "pts before dts"
    else:
        assert reordered == 0


async def ws_collect(url: str, seconds: float, sizes: list[int] | None = None) -> bytes:
    """A WebSocket player: the binary messages of ``seconds``, joined (their sizes in ``sizes``)."""
    buf = bytearray()
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            if sizes is not None:
                sizes.append(len(msg.data))
            buf += msg.data
    return bytes(buf)


def assert_cut_off(viewers: Callable[[], int], sock: socket.socket, timeout: float) -> None:
    """A stalled viewer (``sock``, never read) is detached (``viewers()`` drops to 0 within 20 s)
    and its connection ends: what was in flight, then EOF or a reset within ``timeout``, not silence."""
    deadline = time.monotonic() + 20
    while viewers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert viewers() == 0, "stalled viewer still attached"
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    finally:
        sock.close()
