#!/usr/bin/env python3
"""RTP play viewers of one 720p30 2 Mbit/s stream on one core, beside HTTP-FLV in the same run.

The gateway runs pinned to CPU 0 (``gateway serve``); the FFmpeg CLI publishes the bench clip
over RTMP from CPU 1, and this process (CPU 1) holds N RTP receivers (one UDP socket per track,
set up with ``POST /{app}/{stream}/rtp/play``, AAC offered so nothing is transcoded), then N
HTTP-FLV readers. Per level it prints the gateway's CPU and the median / worst receiver's rate
against the source's (kept in real time: median >= 95%, worst >= 90%).

    python bench/rtp.py [--levels 50,100,200] [--measure 8] [--settle 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    OUT_DIR,
    REPO_ROOT,
    ProcessGroup,
    ensure_clip,
    free_port,
    pinned,
    proc_cpu_seconds,
    wait_port,
)

OFFER = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
         "m=video {v} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n"
         "m=audio {a} RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\n"
         "a=fmtp:97 streamtype=5;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3\r\n")


class Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.bytes = 0
        self.packets = 0

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.bytes += len(data)
        self.packets += 1


async def rtp_viewers(base: str, n: int) -> tuple[list[list[Counter]], list[str], list[Any]]:
    loop = asyncio.get_running_loop()
    viewers, locations, transports = [], [], []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            counters, ports = [], []
            for _kind in ("video", "audio"):
                c = Counter()
                t, _ = await loop.create_datagram_endpoint(lambda c=c: c,
                                                           local_addr=("127.0.0.1", 0))
                sock = t.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                ports.append(t.get_extra_info("sockname")[1])
                counters.append(c)
                transports.append(t)
            async with http.post(f"{base}/bench/src/rtp/play",
                                 data=OFFER.format(v=ports[0], a=ports[1]),
                                 headers={"Content-Type": "application/sdp"}) as r:
                if r.status != 201:
                    raise RuntimeError(f"play refused: {r.status} {await r.text()}")
                locations.append(r.headers["Location"])
            viewers.append(counters)
    return viewers, locations, transports


async def flv_viewers(base: str, n: int) -> tuple[list[list[int]], list[asyncio.Task[None]],
                                                   aiohttp.ClientSession]:
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    counts: list[list[int]] = []
    tasks = []

    async def read(box: list[int]) -> None:
        async with http.get(f"{base}/bench/src.flv") as r:
            async for chunk in r.content.iter_any():
                box[0] += len(chunk)

    for _ in range(n):
        box = [0]
        counts.append(box)
        tasks.append(asyncio.ensure_future(read(box)))
    return counts, tasks, http


async def level(base: str, pid: int, n: int, measure: float, settle: float, rate: float
                ) -> list[dict[str, Any]]:
    rows = []
    viewers, locations, transports = await rtp_viewers(base, n)
    await asyncio.sleep(settle)
    before = [sum(c.bytes for c in v) for v in viewers]
    cpu0, t0 = proc_cpu_seconds([pid]), time.monotonic()
    await asyncio.sleep(measure)
    cpu, dt = proc_cpu_seconds([pid]) - cpu0, time.monotonic() - t0
    rates = sorted((sum(c.bytes for c in v) - b) / dt / rate for v, b in zip(viewers, before,
                                                                              strict=True))
    rows.append({"protocol": "rtp", "viewers": n, "gateway_cpu_pct": round(cpu / dt * 100, 1),
                 "median_rate": round(statistics.median(rates), 3),
                 "worst_rate": round(rates[0], 3)})
    async with aiohttp.ClientSession() as http:
        for loc in locations:
            async with http.delete(base + loc) as r:
                await r.read()
    for t in transports:
        t.close()
    await asyncio.sleep(1.0)
    counts, tasks, http = await flv_viewers(base, n)
    await asyncio.sleep(settle)
    before = [c[0] for c in counts]
    cpu0, t0 = proc_cpu_seconds([pid]), time.monotonic()
    await asyncio.sleep(measure)
    cpu, dt = proc_cpu_seconds([pid]) - cpu0, time.monotonic() - t0
    rates = sorted((c[0] - b) / dt / rate for c, b in zip(counts, before, strict=True))
    rows.append({"protocol": "http-flv", "viewers": n,
                 "gateway_cpu_pct": round(cpu / dt * 100, 1),
                 "median_rate": round(statistics.median(rates), 3),
                 "worst_rate": round(rates[0], 3)})
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await http.close()
    await asyncio.sleep(1.0)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="50,100,200")
    ap.add_argument("--measure", type=float, default=8.0)
    ap.add_argument("--settle", type=float, default=3.0)
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {1})
    except (AttributeError, OSError):
        pass
    clip = ensure_clip(cpu=1)
    http_port, rtmp_port = free_port(), free_port()
    conf = Path(tempfile.mkdtemp()) / "gateway.toml"
    conf.write_text("[gateway]\nrtp_port_min = 40000\nrtp_port_max = 49999\n"
                    "rtp_max_sessions = 5000\nlog_level = \"warning\"\n")
    group = ProcessGroup()
    gw = group.start(pinned([sys.executable, "-m", "gateway", "serve", "--config", str(conf),
                             "--host", "127.0.0.1", "--http-port", str(http_port),
                             "--rtmp-port", str(rtmp_port)], 0), cwd=REPO_ROOT)
    try:
        if not wait_port("127.0.0.1", http_port, 20, gw):
            print("gateway did not start", file=sys.stderr)
            return 1
        group.start(pinned(["ffmpeg", "-hide_banner", "-v", "error", "-re", "-stream_loop", "-1",
                            "-i", clip.path, "-c", "copy", "-f", "flv",
                            f"rtmp://127.0.0.1:{rtmp_port}/bench/src"], 1))
        base = f"http://127.0.0.1:{http_port}"
        time.sleep(3.0)
        # RTP carries payload bytes (no FLV tags), so rates are against the media bit rate;
        # HTTP-FLV against the FLV byte rate
        media_rate = (clip.video_bps + clip.audio_bps) / 8
        results = []
        print(f"source: {clip.path}, media {media_rate * 8 / 1e6:.2f} Mbit/s, "
              f"FLV {clip.bytes_per_s * 8 / 1e6:.2f} Mbit/s; gateway on CPU 0, viewers on CPU 1")
        for n in (int(x) for x in args.levels.split(",") if x):
            rows = asyncio.run(level(base, gw.pid, n, args.measure, args.settle, media_rate))
            rows[1]["median_rate"] = round(rows[1]["median_rate"] * media_rate / clip.bytes_per_s, 3)
            rows[1]["worst_rate"] = round(rows[1]["worst_rate"] * media_rate / clip.bytes_per_s, 3)
            for r in rows:
                ok = r["median_rate"] >= 0.95 and r["worst_rate"] >= 0.90
                r["kept_up"] = ok
                print(f"  {r['protocol']:8} {r['viewers']:5} viewers: gateway CPU "
                      f"{r['gateway_cpu_pct']:5.1f}%, rate median {r['median_rate']:.1%} "
                      f"worst {r['worst_rate']:.1%} -> {'OK' if ok else 'BEHIND'}", flush=True)
            results += rows
    finally:
        group.stop_all()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"rtp-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
