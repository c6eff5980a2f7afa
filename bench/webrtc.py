#!/usr/bin/env python3
"""WebRTC benchmark on 127.0.0.1: WHIP -> WHEP latency, time to first frame, viewer capacity.

The gateway runs as its own process pinned to CPU 0 (``gateway serve``); publishers and viewers
are aiortc peers in this process (and in worker processes for the capacity run) on CPU 1.

1. **glass-to-glass**: a WHIP publisher draws a 16-bit frame counter as a barcode into each
   picture and notes the capture time; aiortc encodes it (libx264, zerolatency). A WHEP viewer
   takes the encoded frames (``gateway.protocols.webrtc.seam``: marker-based assembly, as browsers do),
   decodes them with PyAV and reads the barcode: latency = display-ready time - capture time.
2. **first frame**: a fresh WHEP viewer's time from its POST to its first decoded picture.
3. **capacity**: a pre-encoded 720p30 2 Mbit/s H.264 stream (bench/out clip) plus Opus is
   published over WHIP (pure pass-through), and N WHEP viewers (worker processes, no decode)
   are measured per level: a level is sustained when the median viewer gets >= 95% and the
   worst >= 90% of the frames. Viewers share one core; see the printed CPU figures.

    python bench/webrtc.py [--latency-seconds 10] [--trials 10] [--levels 5,10,20,30]

Targets: glass-to-glass p50 < 80 ms; first frame < 300 ms after POST.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aiortc import VideoStreamTrack
from aiortc.mediastreams import MediaStreamTrack

from gateway.codecs import h264
from gateway.protocols.webrtc import seam
from gateway.testing import WhepClient, WhipClient

from _common import (
    OUT_DIR,
    REPO_ROOT,
    ProcessGroup,
    descendants,
    ensure_clip,
    free_port,
    pinned,
    proc_cpu_seconds,
    wait_port,
)

BITS = 16
CELL = 24  # barcode cell size in pixels
VIDEO_TB = fractions.Fraction(1, 90000)
AUDIO_TB = fractions.Fraction(1, 48000)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


# -------------------------------------------------------------------------------- publishers


class StampTrack(VideoStreamTrack):
    """640x360 at 30 fps with the frame number drawn as a barcode; remembers capture times."""

    def __init__(self) -> None:
        super().__init__()
        self.captured: dict[int, float] = {}
        self.n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        n = self.n
        self.n += 1
        y = np.full((360, 640), 60, np.uint8)
        for b in range(BITS):
            if (n >> b) & 1:
                y[8:8 + CELL, 8 + b * CELL: 8 + (b + 1) * CELL] = 235
        y[200:216, (n * 8) % 640:(n * 8) % 640 + 16] = 200  # motion
        yuv = np.concatenate([y.reshape(-1), np.full(640 * 180, 128, np.uint8)]).reshape(540, 640)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        self.captured[n % (1 << BITS)] = time.monotonic()
        return frame


def read_stamp(gray: np.ndarray) -> int:
    n = 0
    for b in range(BITS):
        cell = gray[8 + CELL // 4: 8 + 3 * CELL // 4, 8 + b * CELL + CELL // 4: 8 + b * CELL + 3 * CELL // 4]
        if cell.mean() > 148:
            n |= 1 << b
    return n


class LoopTrack(MediaStreamTrack):
    """Pre-encoded packets in real time, looped with continuing timestamps."""

    def __init__(self, kind: str, packets: list[bytes], interval: float) -> None:
        super().__init__()
        self.kind = kind
        self.packets = packets
        self.interval = interval
        self.step, self.tb = (3000, VIDEO_TB) if kind == "video" else (960, AUDIO_TB)
        self.i = 0
        self.t0 = 0.0

    async def recv(self) -> av.Packet:
        if not self.t0:
            self.t0 = time.monotonic()
        delay = self.t0 + self.i * self.interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        p = av.Packet(self.packets[self.i % len(self.packets)])
        p.pts, p.time_base = self.i * self.step, self.tb
        self.i += 1
        return p


def clip_packets(path: str) -> tuple[list[bytes], float]:
    """The bench clip's H.264 as Annex B access units (parameter sets before each IDR)."""
    with av.open(path) as c:
        vs = c.streams.video[0]
        cfg = h264.parse_avc_config(bytes(vs.codec_context.extradata))
        fps = float(vs.average_rate or 30)
        out = [h264.avcc_to_annexb(bytes(p), cfg) for p in c.demux(vs) if p.size]
    return out, fps


def opus_packets(seconds: float = 1.0) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.time_base = 48000, "stereo", "s16", AUDIO_TB
    enc.bit_rate = 64000
    t = np.arange(int(seconds * 48000)) / 48000
    pcm = (8000 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
    out: list[bytes] = []
    for i in range(len(pcm) // 960):
        f = av.AudioFrame.from_ndarray(np.repeat(pcm[i * 960:(i + 1) * 960], 2).reshape(1, -1),
                                       format="s16", layout="stereo")
        f.sample_rate, f.pts = 48000, i * 960
        out += [bytes(p) for p in enc.encode(f)]
    return out


# -------------------------------------------------------------------------------- viewers


class DecodingViewer:
    """WHEP viewer that decodes tapped frames itself and reads the stamps."""

    def __init__(self, url: str, on_picture) -> None:  # type: ignore[no-untyped-def]
        self.client = WhepClient(url, audio=False)
        self.decoder = av.CodecContext.create("h264", "r")
        self.on_picture = on_picture

    def _frame(self, f: seam.EncodedFrame) -> None:
        try:
            pictures = self.decoder.decode(av.Packet(f.data))
        except av.FFmpegError:
            return
        for pic in pictures:
            self.on_picture(pic)

    async def start(self) -> None:
        await self.client.start(lambda r, k: seam.tap_receiver(r, k, self._frame))

    async def close(self) -> None:
        await self.client.close()


async def glass_to_glass(base: str, seconds: float) -> dict[str, Any]:
    track = StampTrack()
    pub = WhipClient(f"{base}/bench/g2g/whip", [track])
    await pub.start()
    await asyncio.sleep(1.0)
    lat: list[float] = []
    stamps: list[int] = []

    def picture(pic: av.VideoFrame) -> None:
        now = time.monotonic()
        n = read_stamp(pic.to_ndarray(format="gray"))
        stamps.append(n)
        t = track.captured.get(n)
        if t is not None and 0 <= now - t < 5:
            lat.append((now - t) * 1000)

    viewer = DecodingViewer(f"{base}/bench/g2g/whep", picture)
    await viewer.start()
    await asyncio.sleep(1.0)
    lat.clear()  # the GOP burst at join is not steady state
    stamps.clear()
    await asyncio.sleep(seconds)
    await viewer.close()
    await pub.close()
    in_order = sum(1 for x, y in zip(stamps, stamps[1:], strict=False) if (y - x) % (1 << BITS) == 1)
    return {"samples": len(lat), "consecutive_stamps": f"{in_order}/{max(0, len(stamps) - 1)}",
            "p50_ms": round(pct(lat, 50), 1), "p95_ms": round(pct(lat, 95), 1),
            "max_ms": round(max(lat) if lat else float("nan"), 1)}


async def first_frame(base: str, trials: int) -> dict[str, Any]:
    pub = WhipClient(f"{base}/bench/ff/whip", [StampTrack()])
    await pub.start()
    await asyncio.sleep(2.0)
    times: list[float] = []
    for _ in range(trials):
        got = asyncio.get_running_loop().create_future()
        viewer = DecodingViewer(f"{base}/bench/ff/whep",
                                lambda pic, got=got: got.done() or got.set_result(time.monotonic()))
        t0 = time.monotonic()
        await viewer.start()
        try:
            times.append((await asyncio.wait_for(got, 5) - t0) * 1000)
        except TimeoutError:
            times.append(float("inf"))
        await viewer.close()
        await asyncio.sleep(0.3)
    await pub.close()
    return {"trials": trials, "p50_ms": round(pct(times, 50), 1), "p95_ms": round(pct(times, 95), 1),
            "max_ms": round(max(times), 1)}


# -------------------------------------------------------------------------------- capacity


async def worker(url: str, count: int, measure_at: float, measure_for: float) -> None:
    """Run ``count`` tapping viewers; print per-viewer frames/bytes of the measured window."""
    stats = [{"frames": 0, "bytes": 0} for _ in range(count)]
    window = [False]

    def counter(i: int):  # type: ignore[no-untyped-def]
        def on(f: seam.EncodedFrame) -> None:
            if window[0]:
                stats[i]["frames"] += 1
                stats[i]["bytes"] += len(f.data)
        return on

    clients = []
    ok = 0
    for i in range(count):
        c = WhepClient(url)
        try:
            await c.start(lambda r, k, i=i: seam.tap_receiver(r, k, counter(i)) if k == "video"
                          else seam.tap_receiver(r, k, lambda f: None))
            ok += 1
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            print(f"viewer {i}: {e}", file=sys.stderr)
        clients.append(c)
    await asyncio.sleep(max(0.0, measure_at - time.time()))
    window[0] = True
    await asyncio.sleep(measure_for)
    window[0] = False
    print(json.dumps({"connected": ok, "stats": stats}), flush=True)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def capacity(base: str, gateway_pid: int, levels: list[int], per_proc: int,
                   measure: float, settle: float) -> list[dict[str, Any]]:
    info = ensure_clip()
    video, fps = clip_packets(info.path)
    pub = WhipClient(f"{base}/bench/cap/whip",
                     [LoopTrack("video", video, 1 / fps), LoopTrack("audio", opus_packets(), 0.02)])
    await pub.start()
    await asyncio.sleep(2.0)
    results = []
    for n in levels:
        procs = []
        measure_at = time.time() + settle + n * 0.05
        left = n
        while left > 0:
            k = min(per_proc, left)
            left -= k
            cmd = pinned([sys.executable, __file__, "--worker", f"{base}/bench/cap/whep", str(k),
                          str(measure_at), str(measure)], 1)
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          cwd=REPO_ROOT))
        await asyncio.sleep(max(0.0, measure_at - time.time()))
        pids = descendants(gateway_pid)
        load = [pid for p in procs for pid in descendants(p.pid)] + [os.getpid()]
        c0, l0, t0 = proc_cpu_seconds(pids), proc_cpu_seconds(load), time.monotonic()
        await asyncio.sleep(measure)
        elapsed = time.monotonic() - t0
        cpu = (proc_cpu_seconds(pids) - c0) / elapsed * 100
        load_cpu = (proc_cpu_seconds(load) - l0) / elapsed * 100
        per_viewer: list[dict[str, int]] = []
        connected = 0
        for p in procs:
            out, _ = await asyncio.to_thread(p.communicate, None, 60 + measure)
            for line in out.decode().splitlines():
                if line.startswith("{"):
                    data = json.loads(line)
                    connected += data["connected"]
                    per_viewer += data["stats"]
        rates = [v["frames"] / measure / fps for v in per_viewer] or [0.0]
        mbps = [v["bytes"] * 8 / measure / 1e6 for v in per_viewer] or [0.0]
        ok = connected == n and statistics.median(rates) >= 0.95 and min(rates) >= 0.90
        row = {"viewers": n, "connected": connected, "median_frames_pct": round(statistics.median(rates) * 100, 1),
               "min_frames_pct": round(min(rates) * 100, 1),
               "median_video_mbps": round(statistics.median(mbps), 2),
               "gateway_cpu_pct": round(cpu, 1), "loadgen_cpu_pct": round(load_cpu, 1),
               "sustained": ok}
        print(f"  {n:4d} viewers: connected {connected}, frames median {row['median_frames_pct']}% "
              f"min {row['min_frames_pct']}%, video {row['median_video_mbps']} Mbit/s each, "
              f"gateway CPU {row['gateway_cpu_pct']}%, viewers' CPU {row['loadgen_cpu_pct']}% "
              f"-> {'OK' if ok else 'NOT sustained'}", flush=True)
        results.append(row)
        await asyncio.sleep(2.0)
        if not ok:
            break
    await pub.close()
    return results


# -------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--levels", default="5,10,20,30")
    ap.add_argument("--per-proc", type=int, default=10, help="viewers per worker process")
    ap.add_argument("--measure", type=float, default=6.0)
    ap.add_argument("--settle", type=float, default=4.0)
    ap.add_argument("--skip", default="", help="comma list of: latency,first,capacity")
    ap.add_argument("--worker", nargs=4, metavar=("URL", "COUNT", "AT", "FOR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        url, count, at, dur = args.worker
        asyncio.run(worker(url, int(count), float(at), float(dur)))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    try:
        os.sched_setaffinity(0, {1})
    except (AttributeError, OSError):
        pass
    port = free_port()
    group = ProcessGroup()
    log = open(OUT_DIR / "webrtc-gateway.log", "wb") if OUT_DIR.exists() else subprocess.DEVNULL
    gw = group.start(pinned([sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1",
                             "--http-port", str(port), "--rtmp-port", str(free_port()),
                             "--log-level", "warning"], 0), cwd=REPO_ROOT, stderr=log)
    if not wait_port("127.0.0.1", port, 20, gw):
        print("gateway did not start", file=sys.stderr)
        group.stop_all()
        return 1
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    try:
        if "latency" not in skip:
            print("glass-to-glass (WHIP -> gateway -> WHEP, 640x360 30 fps, aiortc encode + PyAV decode):")
            result["glass_to_glass"] = asyncio.run(glass_to_glass(base, args.latency_seconds))
            print(f"  {result['glass_to_glass']}  (target p50 < 80 ms)", flush=True)
        if "first" not in skip:
            print("first frame (POST -> first decoded picture):")
            result["first_frame"] = asyncio.run(first_frame(base, args.trials))
            print(f"  {result['first_frame']}  (target < 300 ms)", flush=True)
        if "capacity" not in skip:
            print("pass-through WHEP viewers of one 720p30 2 Mbit/s WHIP stream (viewers on CPU 1):")
            levels = [int(x) for x in args.levels.split(",") if x]
            rows = asyncio.run(capacity(base, gw.pid, levels, args.per_proc, args.measure, args.settle))
            result["capacity"] = rows
            best = max((r["viewers"] for r in rows if r["sustained"]), default=0)
            print(f"  sustained: {best} viewers")
    finally:
        group.stop_all()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"webrtc-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
