#!/usr/bin/env python3
"""What an h5 (MPEG-TS) publisher costs the gateway, by how it cuts its stream.

A client may send each 188-byte TS packet alone, as a WebSocket message or as an HTTP chunk;
the gateway gathers small pieces before demuxing them (``gateway/protocols/h5/routes.py``, ``_pump``). For
each transport and piece size, one publisher sends an FFmpeg-made MPEG-1/MP2 TS at ``--rate``
for ``--seconds``, and the gateway process's CPU (utime + stime from /proc) over that time is
printed as % of one core. A fresh gateway per run.

    python bench/ts_ingest.py                       # ~1 min: 188, 1316, 18800 bytes, both transports
    python bench/ts_ingest.py --sizes 188 --transports ws --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from _common import OUT_DIR, ProcessGroup, free_port, proc_cpu_seconds, wait_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def source(out_dir: Path = OUT_DIR) -> bytes:
    """10 s of 640x360 MPEG-1 (1 Mbit/s) + MP2, made once."""
    path = out_dir / "ts-ingest-640x360-mpeg1.ts"
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
                        "-f", "lavfi", "-i", "sine", "-t", "10", "-c:v", "mpeg1video", "-b:v", "1M", "-bf", "0",
                        "-c:a", "mp2", "-f", "mpegts", str(path)], check=True, timeout=120)  # fmt: skip
    return path.read_bytes()


def pieces(data: bytes, size: int, rate: float, seconds: float):  # type: ignore[no-untyped-def]
    """(due time, piece) at ``rate`` bytes a second, whole 188-byte packets, looping."""
    size -= size % 188
    t0, sent = time.monotonic(), 0
    while (now := time.monotonic()) - t0 < seconds:
        while sent < (now - t0) * rate:
            off = sent % len(data)
            off -= off % 188
            yield data[off:off + size]
            sent += size
        yield None  # caught up: the caller sleeps a little, as a live client would


async def send_ws(url: str, data: bytes, size: int, rate: float, seconds: float) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        for piece in pieces(data, size, rate, seconds):
            if piece is None:
                await asyncio.sleep(0.005)
            else:
                await ws.send_bytes(piece)


def send_post(port: int, path: str, data: bytes, size: int, rate: float, seconds: float) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for piece in pieces(data, size, rate, seconds):
            if piece is None:
                time.sleep(0.005)
            else:
                sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        sock.settimeout(10)
        sock.recv(1024)


def one(procs: ProcessGroup, data: bytes, transport: str, size: int, args: argparse.Namespace) -> float:
    """% of a core the gateway process used while one publisher sent."""
    http = free_port()
    gw = procs.start([sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--rtmp-port",
                      str(free_port()), "--http-port", str(http), "--log-level", "warning"], cwd=REPO_ROOT)
    try:
        if not wait_port("127.0.0.1", http, 20, gw):
            raise RuntimeError("the gateway did not start")
        c0, t0 = proc_cpu_seconds([gw.pid]), time.monotonic()
        if transport == "ws":
            asyncio.run(send_ws(f"ws://127.0.0.1:{http}/live/bench.ts", data, size, args.rate, args.seconds))
        else:
            send_post(http, "/live/bench.ts", data, size, args.rate, args.seconds)
        return 100 * (proc_cpu_seconds([gw.pid]) - c0) / (time.monotonic() - t0)
    finally:
        procs.stop(gw)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="188,1316,18800", help="bytes per message / chunk, comma separated")
    p.add_argument("--transports", default="ws,post", help="ws, post")
    p.add_argument("--rate", type=float, default=250_000, help="bytes a second (250000 = 2 Mbit/s)")
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    data = source()
    procs = ProcessGroup()
    try:
        for transport in args.transports.split(","):
            for size in (int(x) for x in args.sizes.split(",")):
                pct = one(procs, data, transport, size, args)
                print(f"{transport:4} {size:6d}-byte pieces at {args.rate * 8 / 1e6:g} Mbit/s: "
                      f"gateway {pct:.1f}% of a core", flush=True)
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
