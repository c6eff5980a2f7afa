#!/usr/bin/env python3
"""How long jsmpeg viewers see no new picture when they start together, and when the
gateway's transcode processes die under them.

N streams are published with the FFmpeg CLI (720p30 H.264 + AAC, GOP 2 s), one jsmpeg
WebSocket viewer per stream joins at the same moment (each starts a variant; the first also
starts the transcode processes), and after ``--kill-after`` seconds every transcode process is
killed with SIGKILL, as a crash in a codec or the OOM killer would. Every video packet a viewer
receives is stamped with the arrival time of the WebSocket message that carried it (from the
TS packet's byte offset), so the figures are what a viewer sees:

* ``first``: connect -> first video packet;
* ``start freeze``: the longest wait for a next video packet before the kill;
* ``kill outage``: the wait that spans the kill (until pictures from the restarted step);
* ``closed``: whether the gateway closed the viewer (it should not).

    python bench/recovery.py --streams 4 --kill-after 5 --watch 14
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from _common import OUT_DIR, ProcessGroup, descendants, ensure_clip, free_port, wait_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def codec_processes(gateway_pid: int) -> list[int]:
    """The gateway's transcode workers (multiprocessing ``spawn`` children, not its tracker)."""
    out = []
    for pid in descendants(gateway_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(pid)
    return out


async def wait_streams(port: int, names: list[str], timeout: float = 20) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            async with s.get(f"http://127.0.0.1:{port}/api/streams") as r:
                live = {x["key"]: x for x in (await r.json()).get("streams", [])}
            if all({"video", "audio"} <= set(live.get(f"live/{n}", {}).get("tracks", {})) for n in names):
                return
            await asyncio.sleep(0.1)
    raise TimeoutError("streams did not come up")


async def view(url: str, until: float) -> dict[str, Any]:
    """Messages (arrival time, end offset) and the bytes of one jsmpeg viewer."""
    import aiohttp

    t0 = time.monotonic()
    data, marks, closed = bytearray(), [], None
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        while time.monotonic() < until:
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.BINARY:
                closed = f"{msg.type.name} {msg.data} {msg.extra or ''}".strip()
                break
            data += msg.data
            marks.append((time.monotonic(), len(data)))
    return {"t0": t0, "data": bytes(data), "marks": marks, "closed": closed}


def video_arrivals(v: dict[str, Any]) -> list[float]:
    """Arrival time of every video packet, from its byte offset in the received TS."""
    import av

    ends = [end for _, end in v["marks"]]
    times = []
    with av.open(io.BytesIO(v["data"]), format="mpegts") as c:
        for p in c.demux(video=0):
            if p.pts is None or p.pos is None or p.pos < 0:
                continue
            i = min(bisect.bisect_right(ends, p.pos), len(ends) - 1)
            times.append(v["marks"][i][0])
    return sorted(times)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    clip = ensure_clip().path
    rtmp, http = free_port(), free_port()
    procs = ProcessGroup()
    try:
        gw = procs.start([sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--rtmp-port",
                          str(rtmp), "--http-port", str(http), "--log-level", "warning"], cwd=str(REPO_ROOT))
        if not wait_port("127.0.0.1", http, 20, gw):
            raise RuntimeError("gateway did not start")
        names = [f"r{i}" for i in range(args.streams)]
        for n in names:
            procs.start(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
                         "-i", clip, "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{rtmp}/live/{n}"])
        await wait_streams(http, names)
        await asyncio.sleep(args.settle)
        until = time.monotonic() + args.watch
        tasks = [asyncio.ensure_future(view(f"ws://127.0.0.1:{http}/live/{n}.jsmpeg", until)) for n in names]
        await asyncio.sleep(args.kill_after)
        killed = codec_processes(gw.pid)
        t_kill = time.monotonic()
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        viewers = await asyncio.gather(*tasks)
    finally:
        procs.stop_all()
    rows = []
    for n, v in zip(names, viewers, strict=False):
        t = video_arrivals(v)
        gaps = list(zip(t, t[1:], strict=False))
        before = [b - a for a, b in gaps if b < t_kill]
        across = [b - a for a, b in gaps if a <= t_kill < b] or [b - a for a, b in gaps if a >= t_kill][:1]
        rows.append({"stream": n, "video_packets": len(t), "first_s": round(t[0] - v["t0"], 3) if t else None,
                     "start_freeze_s": round(max(before), 3) if before else None,
                     "kill_outage_s": round(max(across), 3) if across else None,
                     "after_kill_packets": sum(x > t_kill for x in t), "closed": v["closed"]})
    return {"args": vars(args), "killed": killed, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--settle", type=float, default=1.6,
                   help="s after the streams are live, before viewers join; 1.6 puts the join near the end of "
                        "the clip's 2 s GOP, so each variant starts by replaying an almost full GOP cache")
    p.add_argument("--kill-after", type=float, default=5.0, help="s after the viewers joined")
    p.add_argument("--watch", type=float, default=14.0, help="s each viewer watches")
    args = p.parse_args(argv)
    res = asyncio.run(run(args))
    print(f"killed transcode processes: {res['killed']}")
    print(f"{'stream':>6}  {'first s':>7}  {'start freeze s':>14}  {'kill outage s':>13}  {'pkts after':>10}  closed")
    for r in res["rows"]:
        print(f"{r['stream']:>6}  {r['first_s']!s:>7}  {r['start_freeze_s']!s:>14}  {r['kill_outage_s']!s:>13}  "
              f"{r['after_kill_packets']:>10}  {r['closed'] or '-'}")
    out = OUT_DIR / f"recovery-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"results: {out}")
    ok = all(r["closed"] is None and r["after_kill_packets"] for r in res["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
