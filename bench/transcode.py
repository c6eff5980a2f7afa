#!/usr/bin/env python3
"""Transcode benchmark: concurrent real-time 720p30 H264->MPEG1 (+AAC->MP2) variants per machine.

Gateway side: N RTMP publishers (one ``bench/rtmppub.py`` process for all of them, or
``--publisher ffmpeg``: one ``ffmpeg -re -c copy`` each) and one jsmpeg WebSocket viewer per
stream, so the gateway runs N shared h5 variants (``gateway/transcode/variant.py``). Per level it
reads each variant's ``stats`` from ``/api/streams`` (out-rate, drops, arrival -> ready latency)
and samples the gateway's CPU/RSS from /proc. FFmpeg side, same run: N concurrent
``ffmpeg -re -threads 1 ... -c:v mpeg1video -b:v 2M -c:a mp2`` from the same clip, judged by their
``-progress`` speed. Also, in-process: Opus->AAC, AAC->Opus and AAC->MP2 throughput of the gateway's audio
steps (x real time per core) next to the FFmpeg CLI's, and the video step's uncontended per-frame
cost and decoder reorder delay.

    python bench/transcode.py                       # everything, ~6-10 min on 2 cores
    python bench/transcode.py --levels 2,4 --duration 8 --warmup 3   # quick check, ~2 min

See bench/README.md ("transcode.py") for what is printed and the caveats.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    OUT_DIR,
    REPO_ROOT,
    ProcessGroup,
    descendants,
    free_port,
    kernel_threads,
    proc_cpu_seconds,
    proc_rss_bytes,
    system_task_seconds,
    wait_port,
)

sys.path.insert(0, str(REPO_ROOT))
from gateway.transcode.step import histogram_percentile

FPS = 30.0  # the clip's video rate
AUDIO_RATE = 44_100  # the clip's AAC rate; the h5 plan keeps it for MP2
MP2_FPS = AUDIO_RATE / 1152  # MP2 packets per second the variant should emit
PASS_RATIO = 0.97  # out-rate (or FFmpeg speed) needed, relative to real time
# The same ladder judged strictly: a transcode at 0.98 of real time (FFmpeg with -re, speed 0.982)
# is 1.1 s late after a minute and keeps growing, while the gateway, being live, drops instead
# and fails. Both sides' noise at low load is under 0.5% (speed 0.996-0.998, 29.95 fps).
STRICT_RATIO = 0.99
MAX_P99_MS = 1000.0  # a variant whose p99 exceeds this is not "real time" even without drops
TARGET_RATIO = 0.9  # gateway max N / FFmpeg max N
TARGET_VIDEO_P99_MS = 1000.0 / FPS  # one frame interval
TARGET_AUDIO_P99_MS = 30.0
#: FFmpeg CLI sides -> their ``FfLevel.io``; every side, in the order a level runs them.
FF_SIDES = {"ffmpeg": "file", "ffmpeg-net": "net", "ffmpeg-lit": "lit"}
SIDES = ("gateway", *FF_SIDES)

# 720p30 H.264 high with B-frames (as OBS-like encoders send), AAC 44.1 kHz stereo: testsrc2 is
# cheaper to decode than camera video, so absolute figures are optimistic for both sides.
CLIP_NAME = "transcode-720p30-2M-bf2-44k.flv"
CLIP_ARGS: tuple[str, ...] = (
    "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={FPS:g}",
    "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={AUDIO_RATE}",
    "-t", "30",
    "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-pix_fmt", "yuv420p",
    "-bf", "2", "-g", "60", "-keyint_min", "60", "-sc_threshold", "0",
    "-b:v", "2M", "-maxrate", "2M", "-bufsize", "2M",
    "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-ar", str(AUDIO_RATE),
    "-f", "flv",
)  # fmt: skip
# 60 s of two sines plus a little noise (pure tones are unrealistically easy for AAC/Opus).
AUDIO_SRC = ("aevalsrc=0.3*sin(2*PI*440*t)+0.05*(random(0)-0.5)|0.3*sin(2*PI*660*t)+0.05*(random(1)-0.5)"
             ":s={rate}:d=60")  # fmt: skip
AUDIO_FILES: dict[str, tuple[str, list[str]]] = {
    # name: (file, codec args)
    "opus": ("transcode-audio-60s-opus.webm", ["-ar", "48000", "-c:a", "libopus", "-b:a", "64k"]),
    "aac": ("transcode-audio-60s-aac.m4a", ["-ar", str(AUDIO_RATE), "-c:a", "aac", "-b:a", "128k"]),
}


def say(msg: str = "") -> None:
    """Progress to stderr, so stdout carries only the results."""
    print(msg, file=sys.stderr, flush=True)


def fmt(v: Any, spec: str = "", none: str = "-") -> str:
    if v is None:
        return none
    return format(v, spec) if spec else str(v)


# =========================================================================== inputs


def run_ffmpeg(args: list[str], timeout: float = 300) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
                   check=True, timeout=timeout)  # fmt: skip


def ensure_inputs(out_dir: Path = OUT_DIR) -> dict[str, Path]:
    """Generate the video clip and the two audio files once (cached in bench/out/, gitignored)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"clip": out_dir / CLIP_NAME}
    if not paths["clip"].exists():
        say(f"generating {paths['clip'].name} (30 s 720p30 x264, ~30-60 s) ...")
        tmp = paths["clip"].with_suffix(".tmp.flv")
        run_ffmpeg([*CLIP_ARGS, str(tmp)])
        tmp.replace(paths["clip"])
    for name, (fname, codec) in AUDIO_FILES.items():
        p = paths[name] = out_dir / fname
        if not p.exists():
            rate = 48000 if name == "opus" else AUDIO_RATE
            tmp = p.with_name(p.stem + ".tmp" + p.suffix)
            run_ffmpeg(["-f", "lavfi", "-i", AUDIO_SRC.format(rate=rate), *codec, str(tmp)])
            tmp.replace(p)
    return paths


def write_gateway_config(scratch: Path, video_bitrate: int, extra: str = "") -> tuple[Path, Path]:
    """Copy the shipped matrix with the MPEG-1 bitrate set to the FFmpeg reference's (2 Mbit/s).

    The repo's matrix stays untouched; the gateway reads the copy through ``--config``.
    """
    matrix = scratch / "matrix"
    shutil.copytree(REPO_ROOT / "matrix", matrix)
    tf = matrix / "transcodes.toml"
    text = tf.read_text()
    blocks = text.split("[[transcode]]")
    hits = 0
    for i, block in enumerate(blocks):
        if re.search(r'^\s*to\s*=\s*"mpeg1video"', block, re.MULTILINE):
            blocks[i], n = re.subn(r"bitrate\s*=\s*[0-9_]+", f"bitrate = {video_bitrate}", block, count=1)
            hits += n
    if hits != 1:
        raise RuntimeError(f"could not set the mpeg1video bitrate in {tf}")
    tf.write_text("[[transcode]]".join(blocks))
    cfg = scratch / "gateway.toml"
    if not re.search(r"^\s*transcode_capacity\s*=", extra, re.MULTILINE):
        extra = "transcode_capacity = 0\n" + extra  # no admission limit: the ladder finds the limit
    cfg.write_text(f'matrix_dir = "{matrix}"\n{extra}')
    return cfg, matrix


# =========================================================================== CPU accounting


@dataclass
class Mark:
    """A point in time: CPU seconds of the measured processes, of our helpers, of the machine."""

    t: float
    cpu_s: float
    helper_s: float
    all_s: float
    per_pid: dict[int, float] = field(default_factory=dict)


def mark(measured: list[int], helpers: list[int], per_pid: bool = False) -> Mark:
    """Sample CPU; ``measured`` are process-tree roots, ``helpers`` our own load (publishers...)."""
    pids = [p for root in measured for p in descendants(root)]
    out = Mark(time.monotonic(), proc_cpu_seconds(pids), proc_cpu_seconds(helpers), system_task_seconds())
    if per_pid:
        out.per_pid = {root: proc_cpu_seconds(descendants(root)) for root in measured}
    return out


def pct(a: Mark, b: Mark) -> tuple[float, float, float]:
    """(measured CPU%, helpers CPU%, everything else CPU%) of one core between two marks."""
    dt = max(b.t - a.t, 1e-6)
    m = 100 * (b.cpu_s - a.cpu_s) / dt
    h = 100 * (b.helper_s - a.helper_s) / dt
    return m, h, 100 * (b.all_s - a.all_s) / dt - m - h


# =========================================================================== level results


@dataclass
class GwLevel:
    n: int
    verdict: str = "ERROR"
    v_fps_min: float | None = None
    a_fps_min: float | None = None
    src_fps_min: float | None = None
    new_drops: int | None = None
    shed: int | None = None  # non-reference frames the gateway shed while behind (not coded)
    v_p50: float | None = None  # median over variants of their p50
    v_p99: float | None = None  # worst variant's p99
    a_p50: float | None = None
    a_p99: float | None = None
    v_p99_pooled: float | None = None  # p99 of all variants' frames in the window together
    a_p99_pooled: float | None = None
    v_wait_p99: float | None = None  # worst variant: waiting in the worker for its turn
    v_coding_p99: float | None = None  # worst variant: coding one frame
    v_p99_since_start: float | None = None  # worst variant, counting from its start
    a_p99_since_start: float | None = None
    cpu_pct: float | None = None
    cpu_per_variant: float | None = None
    rss_mb: float | None = None
    pubs_pct: float | None = None
    other_pct: float | None = None
    viewer_kbps_min: float | None = None
    rate: float | None = None  # slowest variant's output rate, relative to real time
    hard_fail: bool = False  # failed for a reason other than its rate (drops, stats, viewers)
    notes: list[str] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FfLevel:
    n: int
    #: "file": -re clip -> /dev/null; "net": RTMP in from rtmppub, TS out over TCP; "lit": as
    #: "file", with ``-threads 1`` written once, before ``-i`` (the encoder at FFmpeg's default)
    io: str = "file"
    verdict: str = "ERROR"
    speed_min: float | None = None
    speed_med: float | None = None
    cpu_pct: float | None = None
    cpu_per_transcode: float | None = None
    rss_mb: float | None = None
    pubs_pct: float | None = None  # this process (sinks) + publisher + softirq, as on the gateway side
    other_pct: float | None = None
    rate: float | None = None  # slowest transcode's speed
    hard_fail: bool = False  # failed for a reason other than its speed
    notes: list[str] = field(default_factory=list)


def passes(row: GwLevel | FfLevel, ratio: float) -> bool:
    """The row's verdict had the pass ratio been ``ratio``."""
    return not row.hard_fail and row.rate is not None and row.rate >= ratio


# =========================================================================== gateway side


class Gateway:
    """The gateway under test, started once for the whole ladder (as in production)."""

    def __init__(self, procs: ProcessGroup, scratch: Path, config: Path, cpus: str | None) -> None:
        self.procs, self.scratch, self.config, self.cpus = procs, scratch, config, cpus
        self.rtmp_port = self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = scratch / "gateway.log"

    def start(self) -> None:
        self.rtmp_port, self.http_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--rtmp-port",
               str(self.rtmp_port), "--http-port", str(self.http_port), "--config", str(self.config)]  # fmt: skip
        if self.cpus:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = self.procs.start(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     cwd=REPO_ROOT, env=env)  # fmt: skip
        for port in (self.rtmp_port, self.http_port):
            if not wait_port("127.0.0.1", port, 30.0, self.proc):
                tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"gateway did not listen on {port}: {' / '.join(tail)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, name: str, kind: str) -> str:
        if kind == "rtmp":
            return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{name}"
        return f"ws://127.0.0.1:{self.http_port}/live/{name}.jsmpeg"


class Viewer:
    """A jsmpeg WebSocket viewer that only counts bytes (what one browser tab would pull).

    After the HTTP upgrade it reads raw bytes and does not parse WebSocket frames, like the
    ``Sinks`` that read the FFmpeg CLI's TS: the harness's own cost, which shares the
    machine with the side under test, stays the same small one on both sides.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.bytes = 0
        self.closed: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        u = urlsplit(self.url)
        key = base64.b64encode(os.urandom(16)).decode()
        done = asyncio.get_running_loop().create_future()
        viewer = self

        class Counting(asyncio.Protocol):
            head = b""

            def data_received(self, data: bytes) -> None:
                if self.head is not None:
                    self.head += data
                    end = self.head.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    if not self.head.startswith(b"HTTP/1.1 101"):
                        viewer.closed = self.head.split(b"\r\n", 1)[0].decode(errors="replace")
                        transport.close()
                        return
                    data, self.head = self.head[end + 4:], None
                viewer.bytes += len(data)

            def connection_lost(self, exc: Exception | None) -> None:
                if not done.done():
                    done.set_result(exc)

        try:
            transport, _ = await asyncio.get_running_loop().create_connection(
                Counting, u.hostname, u.port)
            transport.write((f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            try:
                exc = await done
            finally:
                transport.close()
            self.closed = self.closed or f"closed by server ({exc or 'EOF'})"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure just marks this viewer dead
            self.closed = f"{type(e).__name__}: {e}"


async def api_streams(session: Any, gw: Gateway) -> dict[str, dict[str, Any]]:
    """``/api/streams`` keyed by stream name (``live/x`` -> ``x``)."""
    async with session.get(f"http://127.0.0.1:{gw.http_port}/api/streams") as r:
        data = await r.json()
    return {s["key"].split("/", 1)[-1]: s for s in data.get("streams", [])}


def variant_of(stream: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The (plan text, stats) of the stream's h5 variant, if it runs."""
    for key, v in (stream.get("outputs") or {}).items():
        if key.startswith("variant ") and isinstance(v, dict):
            return key, v.get("stats") or {}
    return None


def rtmppub_cmd(clip: Path, url: str, names: list[str], args: argparse.Namespace,
                ports: list[int] | None = None) -> list[str]:
    """``bench/rtmppub.py`` publishing ``clip`` as url/name for each name (``ports``: one per name)."""
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "rtmppub.py"), "--clip", str(clip),
           "--url", url, "--names", ",".join(names), "--tick", str(args.pub_tick)]  # fmt: skip
    if args.stagger is not None:
        cmd += ["--stagger", str(args.stagger)]
    return cmd + ["--ports", ",".join(map(str, ports))] if ports else cmd


async def gateway_level(gw: Gateway, procs: ProcessGroup, clip: Path, n: int,
                        args: argparse.Namespace) -> GwLevel:
    """N publishers + N jsmpeg viewers for warmup + duration s; the gateway's figures in the window."""
    import aiohttp

    row = GwLevel(n)
    names = [f"n{n}s{i}" for i in range(n)]
    pubs: list[subprocess.Popen[bytes]] = []
    viewers: dict[str, Viewer] = {}
    publog = open(gw.scratch / f"publishers-{n}.log", "ab")
    softirq = kernel_threads("ksoftirqd/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as session:
        try:
            if args.publisher == "ffmpeg":
                for name in names:
                    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop",
                           "-1", "-i", str(clip), "-c", "copy", "-f", "flv", gw.url(name, "rtmp")]  # fmt: skip
                    pubs.append(procs.start(cmd, stderr=publog))
            else:  # one lean process for all N streams (bench/rtmppub.py)
                cmd = rtmppub_cmd(clip, gw.url(names[0], "rtmp").rsplit("/", 1)[0], names, args)
                pubs.append(procs.start(cmd, stderr=publog, stdout=subprocess.DEVNULL))
            # a viewer joins as soon as its stream has both tracks: the variant then starts with an
            # almost empty GOP cache, so its latency window is not dominated by a start-up burst
            deadline = time.monotonic() + 20
            while len(viewers) < n and time.monotonic() < deadline:
                if not gw.alive():
                    row.notes.append("gateway exited")
                    return row
                streams = await api_streams(session, gw)
                for name in names:
                    s = streams.get(name)
                    if name not in viewers and s and {"video", "audio"} <= set(s.get("tracks", {})):
                        v = viewers[name] = Viewer(gw.url(name, "ws"))
                        v.task = asyncio.create_task(v.run())
                await asyncio.sleep(0.05)
            if len(viewers) < n:
                row.notes.append(f"only {len(viewers)}/{n} streams came up")
                return row
            await asyncio.sleep(args.warmup)
            helpers = [os.getpid(), *(p.pid for p in pubs), *softirq]
            assert gw.proc is not None
            s0, m0, b0 = await api_streams(session, gw), mark([gw.proc.pid], helpers), {
                k: v.bytes for k, v in viewers.items()}
            peak = 0
            end = time.monotonic() + args.duration
            while (left := end - time.monotonic()) > 0:
                await asyncio.sleep(min(1.0, left))
                peak = max(peak, proc_rss_bytes(descendants(gw.proc.pid)))
            s1, m1 = await api_streams(session, gw), mark([gw.proc.pid], helpers)
            b1 = {k: v.bytes for k, v in viewers.items()}
            judge_gateway(row, names, s0, s1, m0, m1, b0, b1, viewers, peak)
            dead = [p for p in pubs if p.poll() is not None]
            if dead:
                row.notes.append(f"{len(dead)} publisher(s) exited")
                row.verdict, row.hard_fail = "FAIL", True
            return row
        finally:
            for v in viewers.values():
                if v.task is not None:
                    v.task.cancel()
            await asyncio.gather(*(v.task for v in viewers.values() if v.task), return_exceptions=True)
            for p in pubs:
                procs.stop(p, grace=2.0)
            publog.close()
            # let the variants stop and the streams end before the next level
            deadline = time.monotonic() + 10
            while gw.alive() and time.monotonic() < deadline:
                try:
                    if not set(await api_streams(session, gw)) & set(names):
                        break
                except aiohttp.ClientError:
                    break
                await asyncio.sleep(0.2)


def judge_gateway(row: GwLevel, names: list[str], s0: dict[str, Any], s1: dict[str, Any], m0: Mark, m1: Mark,
                  b0: dict[str, int], b1: dict[str, int], viewers: dict[str, Viewer], peak: int) -> None:
    """Per-variant rates from two /api/streams snapshots; PASS when every variant keeps real time."""
    dt = m1.t - m0.t
    reasons: list[str] = []
    v_fps, a_fps, src_fps, v50, v99, a50, a99 = [], [], [], [], [], [], []
    pooled: dict[str, Counter[str]] = {"video": Counter(), "audio": Counter()}
    since_start: dict[str, list[float]] = {"video": [], "audio": []}
    split: dict[str, dict[str, list[float]]] = {k: {"wait": [], "coding": []} for k in ("video", "audio")}
    drops = skipped = shed = 0
    for name in names:
        a, b = variant_of(s0.get(name, {})), variant_of(s1.get(name, {}))
        if not a or not b:
            reasons.append(f"{name}: no variant")
            continue
        plan, st0 = a
        _, st1 = b
        if "bitrate=2000000" not in plan.split("audio:")[0] and not row.notes:
            row.notes.append(f"video bitrate is not 2 Mbit/s in the plan: {plan}")
        rec: dict[str, Any] = {"stream": name}
        for kind in ("video", "audio"):
            x0, x1 = st0.get(kind), st1.get(kind)
            if not x0 or not x1:
                reasons.append(f"{name}: no {kind} stats")
                continue
            out = (x1["out"] - x0["out"]) / dt
            s_ = x1.get("shed", 0) - x0.get("shed", 0)
            lost = x1["dropped"] + x1.get("skipped", 0) - x0["dropped"] - x0.get("skipped", 0)
            src = (x1["in"] - x0["in"] + lost + s_) / dt
            d = x1["dropped"] - x0["dropped"]
            skipped += lost - d
            shed += s_
            drops += d
            # latency of exactly the frames coded in the window: difference of the cumulative
            # histograms (the variant's start-up, e.g. a process starting, is before it)
            h0, h1 = Counter(x0.get("latency_hist_ms") or {}), Counter(x1.get("latency_hist_ms") or {})
            win = h1 - h0
            pooled[kind].update(win)
            w50, w99 = histogram_percentile(win, 0.5), histogram_percentile(win, 0.99)
            start99 = histogram_percentile(h1, 0.99)
            parts = {}
            for part in ("wait", "coding"):
                ph = Counter(x1.get(f"{part}_hist_ms") or {}) - Counter(x0.get(f"{part}_hist_ms") or {})
                parts[part] = histogram_percentile(ph, 0.99)
                if parts[part] is not None:
                    split[kind][part].append(parts[part])
            rec[kind] = {"out_fps": round(out, 2), "src_fps": round(src, 2), "new_dropped": d,
                         "p50": w50, "p99": w99, "p99_since_start": start99,
                         "wait_p99": parts["wait"], "coding_p99": parts["coding"],
                         "recent_p50": x1["latency_ms_p50"], "recent_p99": x1["latency_ms_p99"],
                         "dropped_total": x1["dropped"]}  # fmt: skip
            (v_fps if kind == "video" else a_fps).append(out)
            if kind == "video":
                src_fps.append(src)
            if start99 is not None:
                since_start[kind].append(start99)
            for q, lst in ((w50, v50 if kind == "video" else a50), (w99, v99 if kind == "video" else a99)):
                if q is not None:
                    lst.append(float(q))
        rec["viewer_kbps"] = round((b1.get(name, 0) - b0.get(name, 0)) * 8 / dt / 1000, 1)
        if viewers[name].closed:
            reasons.append(f"{name}: viewer {viewers[name].closed}")
        row.variants.append(rec)
    row.v_fps_min = round(min(v_fps), 2) if v_fps else None
    row.a_fps_min = round(min(a_fps), 2) if a_fps else None
    row.src_fps_min = round(min(src_fps), 2) if src_fps else None
    row.new_drops = drops
    row.shed = shed
    row.v_p50 = round(statistics.median(v50), 1) if v50 else None
    row.v_p99 = round(max(v99), 1) if v99 else None
    row.a_p50 = round(statistics.median(a50), 1) if a50 else None
    row.a_p99 = round(max(a99), 1) if a99 else None
    row.v_p99_pooled = histogram_percentile(pooled["video"], 0.99)
    row.a_p99_pooled = histogram_percentile(pooled["audio"], 0.99)
    row.v_wait_p99 = max(split["video"]["wait"], default=None)
    row.v_coding_p99 = max(split["video"]["coding"], default=None)
    row.v_p99_since_start = max(since_start["video"], default=None)
    row.a_p99_since_start = max(since_start["audio"], default=None)
    kbps = [r["viewer_kbps"] for r in row.variants]
    row.viewer_kbps_min = min(kbps) if kbps else None
    cpu, helpers, other = pct(m0, m1)
    row.cpu_pct, row.cpu_per_variant = round(cpu, 1), round(cpu / row.n, 1)
    row.pubs_pct, row.other_pct = round(helpers, 1), round(other, 1)
    row.rss_mb = round(peak / 2**20, 1)
    if len(v_fps) < row.n or len(a_fps) < row.n:
        reasons.append(f"stats for {len(v_fps)} video / {len(a_fps)} audio of {row.n} variants")
    if v_fps and a_fps:
        row.rate = min(min(v_fps) / FPS, min(a_fps) / MP2_FPS)  # unrounded: verdicts compare it
    if drops:
        reasons.append(f"{drops} input frames dropped in the window"
                       + (f", {skipped} more skipped to the next keyframe" if skipped else ""))
    worst = max(v99 + a99, default=0.0)
    if worst >= MAX_P99_MS:
        reasons.append(f"latency p99 {worst:.0f} ms >= {MAX_P99_MS:.0f}")
    if row.viewer_kbps_min is not None and row.viewer_kbps_min <= 0:
        reasons.append("a viewer received nothing in the window")
    if shed:
        row.notes.append(f"{shed} non-reference frames shed while behind")
    if src_fps and min(src_fps) < PASS_RATIO * FPS:
        row.notes.append(f"source (publisher) rate fell to {min(src_fps):.1f} fps: machine saturated")
    if row.other_pct is not None and row.other_pct > 15:
        row.notes.append(f"machine not quiet: other processes used {row.other_pct:.0f}% CPU")
    row.hard_fail = bool(reasons)
    if v_fps and min(v_fps) < PASS_RATIO * FPS:
        reasons.append(f"video out {min(v_fps):.1f} fps < {PASS_RATIO * FPS:.1f}")
    if a_fps and min(a_fps) < PASS_RATIO * MP2_FPS:
        reasons.append(f"audio out {min(a_fps):.1f} pkt/s < {PASS_RATIO * MP2_FPS:.1f}")
    row.notes += reasons
    row.verdict = "FAIL" if reasons else "PASS"


def say_gateway(row: GwLevel) -> None:
    say(f"    -> {row.verdict}  video {fmt(row.v_fps_min)} fps min, CPU {fmt(row.cpu_pct)}% "
        f"({fmt(row.cpu_per_variant)}%/variant), lat v p99 {fmt(row.v_p99)} ms, a p99 {fmt(row.a_p99)} ms"
        + (f"  [{'; '.join(row.notes)}]" if row.notes else ""))  # fmt: skip


# =========================================================================== FFmpeg CLI side


def ffmpeg_cmd(clip: Path, args: argparse.Namespace, rtmp_port: int = 0, sink_port: int = 0,
               name: str = "s", literal: bool = False) -> list[str]:
    """The reference transcode; ``-threads 1`` for the decoder and (like the gateway) the encoder.

    ``io="file"`` (no ports): ``-re`` from the clip, TS to /dev/null. ``io="net"`` (ports given): the
    same I/O as the gateway gets, i.e. an RTMP server for the publisher (``-listen 1``) and TS
    over a TCP connection to a reader in this process. ``literal``: the issue's "FFmpeg CLI
    (``-threads 1``)" as FFmpeg reads that command written the usual way, ``ffmpeg -threads 1 -i
    ...``: an option before ``-i`` is the input's, so the encoder runs at FFmpeg's default (slice
    threads, one per CPU + 1), which costs more CPU in total.
    """
    src = (["-listen", "1", "-i", f"rtmp://127.0.0.1:{rtmp_port}/live/{name}"] if rtmp_port
           else ["-re", "-stream_loop", "-1", "-i", str(clip)])
    dst = f"tcp://127.0.0.1:{sink_port}" if sink_port else "/dev/null"
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1", *src,
            "-c:v", "mpeg1video", "-b:v", str(args.video_bitrate), "-bf", "0", "-g", "30",
            *([] if literal else ["-threads", str(args.ffmpeg_enc_threads)]),
            "-c:a", "mp2", "-b:a", "128k", "-f", "mpegts",
            "-progress", "pipe:1", "-stats_period", "0.5", "-y", dst]  # fmt: skip


class Sinks:
    """TCP readers that discard what FFmpeg sends (``io="net"``): the gateway's viewers' twin."""

    def __init__(self, n: int) -> None:
        self.listeners: list[socket.socket] = []
        for _ in range(n):
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.bind(("127.0.0.1", 0))
            ls.listen(1)
            self.listeners.append(ls)
        self.ports = [int(ls.getsockname()[1]) for ls in self.listeners]
        for i in range(n):
            threading.Thread(target=self._read, args=(i,), daemon=True).start()

    def _read(self, i: int) -> None:
        try:
            conn, _ = self.listeners[i].accept()
        except OSError:
            return
        with conn:
            while conn.recv(1 << 16):
                pass

    def close(self) -> None:
        for ls in self.listeners:
            try:
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()


def ffmpeg_level(procs: ProcessGroup, clip: Path, n: int, args: argparse.Namespace, scratch: Path,
                 io: str = "file") -> FfLevel:
    """N concurrent FFmpeg CLI transcodes; PASS when each one's windowed speed >= 0.97."""
    row = FfLevel(n, io)
    progress: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    ps: list[subprocess.Popen[bytes]] = []
    pubs: list[subprocess.Popen[bytes]] = []
    errlog = open(scratch / f"ffmpeg-{io}-{n}.log", "ab")
    sinks = Sinks(n) if io == "net" else None

    def reader(i: int, p: subprocess.Popen[bytes]) -> None:
        assert p.stdout is not None
        for raw in p.stdout:
            if raw.startswith(b"out_time_us="):
                try:
                    progress[i].append((time.monotonic(), int(raw.split(b"=")[1]) / 1e6))
                except ValueError:
                    pass

    softirq = kernel_threads("ksoftirqd/")
    try:
        names = [f"f{n}s{i}" for i in range(n)]
        ports = [free_port() for _ in range(n)] if sinks else [0] * n
        for i in range(n):
            cmd = ffmpeg_cmd(clip, args, ports[i], sinks.ports[i] if sinks else 0, names[i], io == "lit")
            p = procs.start(cmd, stdout=subprocess.PIPE, stderr=errlog)
            ps.append(p)
            threading.Thread(target=reader, args=(i, p), daemon=True).start()
            if not sinks and args.stagger and i < n - 1:  # `-re` paces from each start
                time.sleep(args.stagger / 1000 / n)
        if sinks:  # the gateway side's publisher, one RTMP server (an ffmpeg) per stream
            time.sleep(0.3)  # no probe connect: `-listen 1` takes the first one and exits; rtmppub retries
            cmd = rtmppub_cmd(clip, f"rtmp://127.0.0.1:{ports[0]}/live", names, args, ports)
            pubs.append(procs.start(cmd, stderr=errlog, stdout=subprocess.DEVNULL))
            deadline = time.monotonic() + 20  # FFmpeg probes the input before it writes anything
            while time.monotonic() < deadline and not all(progress):
                time.sleep(0.1)
        time.sleep(args.warmup)
        helpers = [os.getpid(), *(p.pid for p in pubs), *softirq]
        m0 = mark([p.pid for p in ps], helpers)
        peak = 0
        end = time.monotonic() + args.duration
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            peak = max(peak, proc_rss_bytes([p.pid for p in ps]))
        m1 = mark([p.pid for p in ps], helpers)
        speeds = []
        for pr in progress:
            pts = [x for x in pr if m0.t - 0.5 <= x[0] <= m1.t + 0.5]
            if len(pts) >= 2 and pts[-1][0] - pts[0][0] > 1:
                speeds.append((pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]))
        cpu, helpers_pct, other = pct(m0, m1)
        row.cpu_pct, row.cpu_per_transcode = round(cpu, 1), round(cpu / n, 1)
        row.pubs_pct = round(helpers_pct, 1)
        row.other_pct, row.rss_mb = round(other, 1), round(peak / 2**20, 1)
        if speeds:
            row.speed_min, row.speed_med = round(min(speeds), 3), round(statistics.median(speeds), 3)
        reasons = []
        if len(speeds) < n:
            reasons.append(f"progress from {len(speeds)}/{n} transcodes")
        if dead := [p for p in ps if p.poll() is not None]:
            reasons.append(f"{len(dead)} ffmpeg exited")
        if dead_pubs := [p for p in pubs if p.poll() is not None]:
            reasons.append(f"{len(dead_pubs)} publisher(s) exited")
        row.rate, row.hard_fail = min(speeds, default=None), bool(reasons)
        if speeds and min(speeds) < PASS_RATIO:
            reasons.append(f"speed {min(speeds):.3f} < {PASS_RATIO}")
        if row.other_pct > 15:
            row.notes.append(f"machine not quiet: other processes used {row.other_pct:.0f}% CPU")
        row.notes += reasons
        row.verdict = "FAIL" if reasons else "PASS"
        return row
    finally:
        for p in pubs:
            procs.stop(p, grace=2.0)
        for p in ps:
            procs.stop(p, grace=2.0)
        if sinks:
            sinks.close()
        errlog.close()


def say_ffmpeg(row: FfLevel) -> None:
    say(f"    -> {row.verdict}  speed min {fmt(row.speed_min)}, CPU {fmt(row.cpu_pct)}% "
        f"({fmt(row.cpu_per_transcode)}%/transcode)" + (f"  [{'; '.join(row.notes)}]" if row.notes else ""))


# =========================================================================== the ladder


def run_ladder(procs: ProcessGroup, scratch: Path, clip: Path, args: argparse.Namespace,
               gw_rows: list[GwLevel], ff_rows: list[FfLevel]) -> None:
    """Every side at one level, then the next level: sides measured minutes apart on a shared
    (cloud) host can see CPUs 10-20% apart in speed, which would decide the ratio by itself.
    The side that goes first rotates from level to level. A side stops at its first FAIL
    unless ``--keep-going``. One gateway process serves all its levels (as in production)."""
    sides = [s for s in SIDES if s in args.sides]
    gw: Gateway | None = None
    if "gateway" in sides:
        extra = "".join(f"{line}\n" for line in args.gateway_set)
        cfg, _ = write_gateway_config(scratch, args.video_bitrate, extra)
        gw = Gateway(procs, scratch, cfg, args.gateway_cpus)
        gw.start()
        say(f"== gateway pid {gw.proc.pid if gw.proc else '?'}"
            f"{' on CPUs ' + args.gateway_cpus if args.gateway_cpus else ' (all CPUs)'}; log {gw.log}")
    for side, io in FF_SIDES.items():
        if side in sides:
            example = ffmpeg_cmd(clip, args, *((1935, 9000) if io == "net" else ()), literal=io == "lit")
            say(f"== FFmpeg CLI ({io}): {' '.join(example)}" + ("  (ports per transcode)" if io == "net" else ""))
    try:
        import uvloop  # the bench's viewers are cheap either way; uvloop only trims noise

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    stopped: set[str] = set()
    try:
        for i, n in enumerate(args.levels):
            order = sides[i % len(sides):] + sides[:i % len(sides)] if sides else []
            for side in order:
                if side in stopped:
                    continue
                say(f"  {side} N={n} ...")
                verdict = "ERROR"
                if side == "gateway":
                    assert gw is not None
                    if not gw.alive():
                        gw_rows.append(GwLevel(n, notes=["gateway exited"]))
                        stopped.add(side)
                        continue
                    timeout = args.warmup + args.duration + 60
                    grow = runner(asyncio.wait_for(gateway_level(gw, procs, clip, n, args), timeout))
                    gw_rows.append(grow)
                    say_gateway(grow)
                    verdict = grow.verdict
                else:
                    frow = ffmpeg_level(procs, clip, n, args, scratch, FF_SIDES[side])
                    ff_rows.append(frow)
                    say_ffmpeg(frow)
                    verdict = frow.verdict
                if verdict != "PASS" and not args.keep_going:
                    stopped.add(side)
                time.sleep(args.pause)
            if stopped >= set(sides):
                break
    finally:
        if gw is not None and gw.proc is not None:
            procs.stop(gw.proc, grace=5.0)


# =========================================================================== in-process steps


def demux(path: Path, kind: str, limit: int | None = None) -> tuple[Any, list[Any], float]:
    """(Track, Frames, media seconds) of the file's first ``kind`` stream, as an ingest would make them."""
    import av

    from gateway.media import Frame, Track

    with av.open(str(path)) as c:
        st = next(s for s in c.streams if s.type == kind)
        cc = st.codec_context
        extradata = bytes(cc.extradata or b"")
        if kind == "audio":
            track = Track(kind="audio", codec=cc.name, config=extradata, sample_rate=cc.sample_rate,
                          channels=cc.channels)  # fmt: skip
        else:
            track = Track(kind="video", codec=cc.name, config=extradata, width=cc.width, height=cc.height,
                          frame_rate=float(st.average_rate or FPS), profile=(cc.profile or "").lower(),
                          has_b_frames=True)  # fmt: skip
        frames = []
        first = last = None
        for pkt in c.demux(st):
            if pkt.size == 0 or pkt.pts is None:
                continue
            tb = Fraction(pkt.time_base)
            frames.append(Frame(track=track, data=bytes(pkt), pts=pkt.pts, dts=pkt.dts if pkt.dts is not None
                                else pkt.pts, time_base=tb, keyframe=bool(pkt.is_keyframe)))  # fmt: skip
            t = pkt.pts * tb
            first = t if first is None else min(first, t)
            end = t + (pkt.duration or 0) * tb
            last = end if last is None else max(last, end)
            if limit and len(frames) >= limit:
                break
    return track, frames, float((last or 0) - (first or 0))


def audio_throughput(paths: dict[str, Path], reps: int) -> list[dict[str, Any]]:
    """x real time per core of the gateway's audio steps (single thread) and of the FFmpeg CLI."""
    from gateway import planner
    from gateway.transcode.factory import make_step

    matrix = planner.load_matrix()
    out = []
    for src, target, ff_codec in (("opus", "rtmp", ["-c:a", "aac", "-b:a", "128k"]),
                                  ("aac", "webrtc", ["-c:a", "libopus", "-b:a", "64k"]),
                                  ("aac", "h5", ["-c:a", "mp2", "-b:a", "128k"])):  # fmt: skip
        track, frames, media_s = demux(paths[src], "audio")
        t = planner.plan(matrix, {"audio": track}, target).tracks["audio"]
        assert isinstance(t, planner.Transcode), t
        gw_x = []
        produced = 0
        for _ in range(reps):
            step = make_step(t, track)
            c0 = time.process_time()
            produced = 0
            for f in frames:
                produced += len(step.process(f))
            produced += len(step.flush())
            gw_x.append(media_s / max(time.process_time() - c0, 1e-9))
            step.close()
        p = t.params
        ff_x = []
        for _ in range(reps):
            cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1", "-i",
                   str(paths[src]), "-threads", "1", *ff_codec, "-ar", str(p.get("sample_rate", 48000)),
                   "-ac", str(p.get("channels", 2)), "-f", "null", "-"]  # fmt: skip
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode == 0:
                ff_x.append(media_s / max(ru.ru_utime + ru.ru_stime, 1e-9))
        out.append({"step": f"{t.from_codec}->{t.to_codec}", "params": dict(p), "media_s": round(media_s, 1),
                    "gateway_x": round(statistics.median(gw_x), 1), "gateway_runs": [round(x, 1) for x in gw_x],
                    "ffmpeg_x": round(statistics.median(ff_x), 1) if ff_x else None,
                    "frames_in": len(frames), "frames_out": produced})  # fmt: skip
    return out


def video_step_probe(clip: Path, frames_n: int, bitrate: int) -> dict[str, Any]:
    """Uncontended cost of the gateway's H264->MPEG1 step per frame, and its decoder reorder delay.

    The variant's latency stat is per *input* frame (queue wait + ``process()``); a source with
    B-frames also waits in the H.264 decoder's reorder buffer, which that stat does not see.
    """
    from gateway import planner
    from gateway.transcode.factory import make_step

    matrix = planner.load_matrix()
    track, frames, media_s = demux(clip, "video", limit=frames_n)
    audio = demux(clip, "audio", limit=1)[0]
    t = planner.plan(matrix, {"video": track, "audio": audio}, "h5").tracks["video"]
    assert isinstance(t, planner.Transcode), t
    t = planner.Transcode(t.kind, t.from_codec, t.to_codec, {**t.params, "bitrate": bitrate})
    step = make_step(t, track)
    by_pts = {}
    costs = []
    delays = []
    c_all = time.process_time()
    for i, f in enumerate(frames):
        by_pts[round(f.pts * f.time_base * 1000)] = i
        c0 = time.process_time()
        out = step.process(f)
        costs.append((time.process_time() - c0) * 1000)
        for o in out:
            j = by_pts.get(round(o.pts * o.time_base * 1000))
            if j is not None:
                delays.append(i - j)
    total = time.process_time() - c_all
    step.close()
    costs.sort()
    return {"frames": len(frames), "media_s": round(media_s, 2), "cpu_ms_per_frame_mean": round(total * 1000 / len(frames), 2),
            "cpu_ms_p50": round(costs[len(costs) // 2], 2), "cpu_ms_p99": round(costs[int(0.99 * (len(costs) - 1))], 2),
            "x_realtime": round(media_s / total, 1), "reorder_delay_frames_max": max(delays) if delays else None,
            "reorder_delay_frames_p90": sorted(delays)[int(0.9 * (len(delays) - 1))] if delays else None,
            "reorder_delay_frames_median": statistics.median(delays) if delays else None}  # fmt: skip


# =========================================================================== output


def print_results(gw_rows: list[GwLevel], ff_rows: list[FfLevel], audio: list[dict[str, Any]] | None,
                  probe: dict[str, Any] | None, args: argparse.Namespace, cpu_model: str) -> dict[str, Any]:
    """The side-by-side table and the summary against the issue's targets."""
    print(f"\ntranscode: 720p30 H264(high, B-frames) 2M + AAC 44.1k -> MPEG1 {args.video_bitrate / 1e6:g}M + MP2 128k; "
          f"{os.cpu_count()} CPUs ({cpu_model}); warm-up {args.warmup:g}s, window {args.duration:g}s; "
          f"gateway {'on CPUs ' + args.gateway_cpus if args.gateway_cpus else 'on all CPUs'}")  # fmt: skip
    hdr = ("N", "gateway", "v fps min", "a pkt/s min", "drops", "lat v p50/p99 ms", "lat a p50/p99 ms",
           "v wait/coding p99", "p99 from start v/a", "gw CPU%", "CPU/variant%", "RSS MB", "pubs CPU%", "other%",
           "|", "ffmpeg", "speed min", "ff CPU%", "CPU/transcode%", "other%",
           "|", "ffmpeg-net", "speed min", "ff CPU%", "CPU/transcode%", "pubs CPU%", "other%",
           "|", "ffmpeg-lit", "speed min", "CPU/transcode%")  # fmt: skip
    g = {r.n: r for r in gw_rows}
    f = {r.n: r for r in ff_rows if r.io == "file"}
    fn = {r.n: r for r in ff_rows if r.io == "net"}
    fl = {r.n: r for r in ff_rows if r.io == "lit"}
    table = [hdr]
    for n in sorted(set(g) | set(f) | set(fn) | set(fl)):
        a, b, c, d = g.get(n), f.get(n), fn.get(n), fl.get(n)
        table.append((
            str(n),
            a.verdict if a else "-", fmt(a and a.v_fps_min, ".1f"), fmt(a and a.a_fps_min, ".1f"),
            fmt(a and a.new_drops),
            f"{fmt(a and a.v_p50, '.1f')}/{fmt(a and a.v_p99, '.1f')}" if a else "-",
            f"{fmt(a and a.a_p50, '.1f')}/{fmt(a and a.a_p99, '.1f')}" if a else "-",
            f"{fmt(a and a.v_wait_p99, '.0f')}/{fmt(a and a.v_coding_p99, '.0f')}" if a else "-",
            f"{fmt(a and a.v_p99_since_start, '.0f')}/{fmt(a and a.a_p99_since_start, '.0f')}" if a else "-",
            fmt(a and a.cpu_pct, ".0f"), fmt(a and a.cpu_per_variant, ".1f"), fmt(a and a.rss_mb, ".0f"),
            fmt(a and a.pubs_pct, ".0f"), fmt(a and a.other_pct, ".0f"), "|",
            b.verdict if b else "-", fmt(b and b.speed_min, ".3f"), fmt(b and b.cpu_pct, ".0f"),
            fmt(b and b.cpu_per_transcode, ".1f"), fmt(b and b.other_pct, ".0f"), "|",
            c.verdict if c else "-", fmt(c and c.speed_min, ".3f"), fmt(c and c.cpu_pct, ".0f"),
            fmt(c and c.cpu_per_transcode, ".1f"), fmt(c and c.pubs_pct, ".0f"), fmt(c and c.other_pct, ".0f"),
            "|", d.verdict if d else "-", fmt(d and d.speed_min, ".3f"), fmt(d and d.cpu_per_transcode, ".1f"),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(len(hdr))]
    for i, r in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=False)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("latency: arrival -> transcoded frame ready, of the frames coded in the window (cumulative\n"
          "histograms diffed; 1 ms buckets, upper bound reported): p50 = median over variants,\n"
          "p99 = worst variant; 'v wait/coding': of the video latency, p99 of the time a frame waited\n"
          "in its worker process for its turn, and of coding it (the rest is sockets + event loop);\n"
          "'p99 from start' counts from each variant's start (incl. the transcode\n"
          "processes starting for the first variant). FFmpeg CLI added latency: n/a (not observable\n"
          "from outside the process)")
    notes = [f"  gateway N={r.n}: " + " | ".join(r.notes) for r in gw_rows if r.notes]
    notes += [f"  ffmpeg-{r.io} N={r.n}: " + " | ".join(r.notes) for r in ff_rows if r.notes]
    if notes:
        print("notes:\n" + "\n".join(notes))

    def top(rows: list[Any], ratio: float = PASS_RATIO) -> int | None:
        ok = [r.n for r in rows if passes(r, ratio)]
        return max(ok) if ok else None

    gm = top(gw_rows)
    summary: dict[str, Any] = {"gateway_max_n": gm}
    print("\nsummary:")
    refs = [(io, label, [r for r in ff_rows if r.io == io]) for io, label in (
        ("file", "FFmpeg CLI, file -> /dev/null, -threads 1 for both codecs (the strictest)"),
        ("net", "FFmpeg CLI, RTMP in -> TS over TCP (the gateway's I/O)"),
        ("lit", "FFmpeg CLI as the issue writes it, `ffmpeg -threads 1 -i` (the encoder at FFmpeg's "
                "default threads; gives the issue's 16-17)"))]
    refs = [x for x in refs if x[2]]
    print(f"  max concurrent real-time variants: gateway {fmt(gm)}"
          + "".join(f"; {label} {fmt(top(rows))}" for _, label, rows in refs))
    for name, rows in (("gateway", gw_rows), *((f"ffmpeg-{io}", rows) for io, _, rows in refs)):
        m = top(rows)
        if m is not None and m == max(args.levels) and rows[-1].verdict == "PASS":
            print(f"  ({name} reached the ladder top: its true max may be higher)")
    for io, label, rows in refs:
        fm = top(rows)
        summary[f"ffmpeg_{io}_max_n"] = fm
        if gm is not None and fm:
            ratio = gm / fm
            summary[f"ratio_{io}"] = round(ratio, 2)
            print(f"  ratio vs {label}: {ratio:.2f} (target >= {TARGET_RATIO}): "
                  f"{'MET' if ratio >= TARGET_RATIO else 'NOT MET'}")
        else:
            print(f"  ratio vs {label}: n/a")

    gs = top(gw_rows, STRICT_RATIO)
    line = [f"gateway {fmt(gs)}"]
    summary["strict"] = {"ratio": STRICT_RATIO, "gateway_max_n": gs}
    for io, _, rows in refs:
        fs = top(rows, STRICT_RATIO)
        summary["strict"][f"ffmpeg_{io}_max_n"] = fs
        rs = round(gs / fs, 2) if gs is not None and fs else None
        summary["strict"][f"ratio_{io}"] = rs
        line.append(f"FFmpeg {io} {fmt(fs)} (ratio {fmt(rs)})")
    print(f"  judged at >= {STRICT_RATIO} of real time instead of {PASS_RATIO} (a transcode that loses"
          f" {(1 - PASS_RATIO) * 60:.1f} s a minute does not keep up live): " + "; ".join(line))
    if gm is not None:
        r = g[gm]
        fr, frn = f.get(gm), fn.get(gm)
        print(f"  CPU per variant at N={gm}: gateway {fmt(r.cpu_per_variant)}% of a core"
              + (f" vs FFmpeg CLI {fmt(fr.cpu_per_transcode)}% per transcode (file)" if fr else "")
              + (f", {fmt(frn.cpu_per_transcode)}% (net)" if frn else ""))
        v_ok = r.v_p99 is not None and r.v_p99 < TARGET_VIDEO_P99_MS
        a_ok = r.a_p99 is not None and r.a_p99 < TARGET_AUDIO_P99_MS
        print(f"  added latency at N={gm}: video p50 {fmt(r.v_p50)} / p99 {fmt(r.v_p99)} ms "
              f"(target p99 < {TARGET_VIDEO_P99_MS:.1f}): {'MET' if v_ok else 'NOT MET'}; "
              f"audio p50 {fmt(r.a_p50)} / p99 {fmt(r.a_p99)} ms (target < {TARGET_AUDIO_P99_MS:g}): "
              f"{'MET' if a_ok else 'NOT MET'}; all variants' frames pooled: video p99 {fmt(r.v_p99_pooled)}, "
              f"audio p99 {fmt(r.a_p99_pooled)} ms")  # fmt: skip
        lat_ok = [x.n for x in gw_rows if x.verdict == "PASS" and x.v_p99 is not None and x.a_p99 is not None
                  and x.v_p99 < TARGET_VIDEO_P99_MS and x.a_p99 < TARGET_AUDIO_P99_MS]  # fmt: skip
        print(f"  highest passing N that also meets both latency targets: {fmt(max(lat_ok) if lat_ok else None)}")
        summary.update(video_p99=r.v_p99, audio_p99=r.a_p99, latency_target_met=v_ok and a_ok)
    if probe:
        print(f"  video step alone (in-process, 1 thread, {probe['frames']} frames): "
              f"{probe['cpu_ms_per_frame_mean']} ms CPU/frame (p50 {probe['cpu_ms_p50']}, p99 {probe['cpu_ms_p99']}), "
              f"{probe['x_realtime']}x real time; H.264 B-frame reorder delay {probe['reorder_delay_frames_median']} "
              f"frames median / {probe['reorder_delay_frames_p90']} p90 / {probe['reorder_delay_frames_max']} max "
              f"(median = +{fmt(probe['reorder_delay_frames_median'] and probe['reorder_delay_frames_median'] * 1000 / FPS, '.0f')}"
              f" ms per picture, inherent to the source, not counted in the variant's latency stat)")  # fmt: skip
    if audio:
        refs = {"opus->aac": 37, "aac->opus": 100}
        for a in audio:
            print(f"  audio {a['step']} ({', '.join(f'{k}={v}' for k, v in a['params'].items())}): gateway step "
                  f"{a['gateway_x']}x real time per core, FFmpeg CLI {fmt(a['ffmpeg_x'])}x"
                  + (f" (issue's reference ~{refs[a['step']]}x)" if a["step"] in refs else ""))  # fmt: skip
    return summary


# =========================================================================== main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", default="2,4,6,8,10,12,14,16,18,20", help="concurrent transcodes, comma separated")
    p.add_argument("--warmup", type=float, default=5.0, help="s after the last viewer joined")
    p.add_argument("--duration", type=float, default=15.0, help="measurement window per level, s")
    p.add_argument("--pause", type=float, default=1.0, help="s between levels")
    p.add_argument("--stagger", type=float, default=None,
                   help="ms the N streams' phases are spread over (default: one video frame)")
    p.add_argument("--pub-tick", type=float, default=10.0,
                   help="rtmppub's pacing tick in ms (ffmpeg -re sleeps 10 ms); frames are at most this late")
    p.add_argument("--gateway-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra line for the gateway's TOML config, e.g. 'transcode_processes = 4' (repeatable)")
    p.add_argument("--publisher", choices=("rtmppub", "ffmpeg"), default="rtmppub",
                   help="gateway side's RTMP publishers: one bench/rtmppub.py process for all streams, "
                        "or one `ffmpeg -re -c copy` per stream (~1%% of a core each)")
    p.add_argument("--sides", default=",".join(SIDES),
                   help="gateway, ffmpeg (file in, /dev/null out), ffmpeg-net (RTMP in from the same publisher, "
                        "TS out over TCP), ffmpeg-lit (as ffmpeg, `-threads 1` only before -i), comma separated")
    p.add_argument("--no-audio", action="store_true", help="skip the in-process audio/video step figures")
    p.add_argument("--gateway-cpus", default=None, help="taskset CPU list for the gateway, e.g. 0 or 0,1")
    p.add_argument("--video-bitrate", type=int, default=2_000_000, help="MPEG-1 bitrate for both sides")
    p.add_argument("--ffmpeg-enc-threads", type=int, default=1, help="FFmpeg CLI encoder -threads")
    p.add_argument("--audio-reps", type=int, default=3, help="repetitions of each audio throughput run")
    p.add_argument("--probe-frames", type=int, default=300, help="frames for the in-process video step probe")
    p.add_argument("--keep-going", action="store_true", help="run higher levels after a FAIL")
    p.add_argument("--json", type=Path, default=None, help="results file (default bench/out/transcode-<time>.json)")
    a = p.parse_args(argv)
    a.levels = sorted({int(x) for x in a.levels.split(",") if x.strip()})
    a.sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    return a


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM takes the same clean-up path as Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    per_level = args.warmup + args.duration + 5 + args.pause
    n_sides = sum(s in args.sides for s in SIDES)
    extra = 0 if args.no_audio else 25
    say(f"plan: levels {args.levels}, sides {args.sides}, ~{per_level:.0f}s per level; expected "
        f"~{(n_sides * per_level * min(len(args.levels), 9) + extra) / 60:.1f} min, at most "
        f"~{(n_sides * per_level * len(args.levels) + extra + 60) / 60:.1f} min (a side stops at its first FAIL)")
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    procs = ProcessGroup()
    scratch = Path(tempfile.mkdtemp(prefix="transcode-", dir="/tmp"))
    gw_rows: list[GwLevel] = []
    ff_rows: list[FfLevel] = []
    audio: list[dict[str, Any]] | None = None
    probe: dict[str, Any] | None = None
    ok = False
    try:
        paths = ensure_inputs()
        if not args.no_audio:
            say("in-process steps (audio throughput, video step probe) ...")
            audio = audio_throughput(paths, args.audio_reps)
            probe = video_step_probe(paths["clip"], args.probe_frames, args.video_bitrate)
        run_ladder(procs, scratch, paths["clip"], args, gw_rows, ff_rows)
        ok = True
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
    except Exception as exc:  # report what we have, then fail
        say(f"error: {type(exc).__name__}: {exc}")
    finally:
        procs.stop_all()
    summary = print_results(gw_rows, ff_rows, audio, probe, args, cpu_model)
    out = args.json or OUT_DIR / f"transcode-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "cpu": cpu_model, "cpus": os.cpu_count(), "gateway": [asdict(r) for r in gw_rows],
                               "ffmpeg": [asdict(r) for r in ff_rows], "audio": audio, "video_probe": probe,
                               "summary": summary}, indent=1, default=str))  # fmt: skip
    print(f"\nfull results: {out}  (logs: {scratch})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
