"""Shared helpers for the bench scripts: the cached source clip, process groups, /proc sampling.

Kept free of gateway imports so a benchmark never depends on the code it measures.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"  # gitignored

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- source clip


@dataclass(slots=True)
class ClipInfo:
    """What the loadgen needs to know about the source: its real byte rate, not the nominal 2M."""

    path: str
    duration_s: float
    size_bytes: int
    bytes_per_s: float  # whole FLV file (tags + headers) / duration: what a viewer should get
    video_bps: float
    audio_bps: float


CLIP_ARGS: tuple[str, ...] = (
    "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
    "-t", "30",
    "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-pix_fmt", "yuv420p",
    "-bf", "0", "-g", "60", "-keyint_min", "60", "-sc_threshold", "0",
    "-b:v", "2M", "-maxrate", "2M", "-bufsize", "2M",
    "-c:a", "aac", "-b:a", "128k", "-ac", "2",
    "-f", "flv",
)  # fmt: skip


def ensure_clip(out_dir: Path = OUT_DIR, cpu: int | None = None) -> ClipInfo:
    """Generate the 30 s 720p30 H264+AAC FLV once; later runs reuse it (and its measured rate)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = out_dir / "source-720p30-2M.flv"
    meta = out_dir / "source-720p30-2M.json"
    if clip.exists() and meta.exists():
        try:
            info = ClipInfo(**json.loads(meta.read_text()))
            if info.size_bytes == clip.stat().st_size:
                return info
        except (TypeError, ValueError):
            pass
    tmp = clip.with_suffix(".tmp.flv")
    cmd = pinned(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *CLIP_ARGS, str(tmp)], cpu)
    subprocess.run(cmd, check=True, timeout=300)
    tmp.replace(clip)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type,bit_rate",
         "-of", "json", str(clip)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    data = json.loads(probe.stdout)
    duration = float(data["format"]["duration"])
    rates = {s.get("codec_type"): float(s.get("bit_rate") or 0) for s in data.get("streams", [])}
    size = clip.stat().st_size
    info = ClipInfo(
        path=str(clip),
        duration_s=duration,
        size_bytes=size,
        bytes_per_s=size / duration,
        video_bps=rates.get("video", 0.0),
        audio_bps=rates.get("audio", 0.0),
    )
    meta.write_text(json.dumps(asdict(info), indent=1))
    return info


# --------------------------------------------------------------------------- processes


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    """Prefix with taskset when a CPU is given, so the pinned program inherits the affinity."""
    if cpu is None or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", str(cpu), *cmd]


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A currently unused TCP port on loopback, for a program the bench starts to listen on.

    Outside the kernel's ephemeral range: a port from inside it (what ``bind(0)`` gives) can be
    taken by any outgoing connection before the program binds it. Seen with 14 ``ffmpeg -listen``
    servers while the publisher connected to the others ("Address already in use").
    """
    lo, hi = _ephemeral_range()
    first, last = (10_000, lo - 1) if lo > 11_000 else (hi + 1, 65_535)
    for _ in range(200 if first < last else 0):
        port = random.randint(first, last)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # crowded: any port will do
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll until something accepts on host:port; False on timeout or when ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class ProcessGroup:
    """Every child started through here gets its own session and is killed as a group on exit.

    Why: servers fork workers (nginx) and taskset/ffmpeg wrappers; killing only the top PID
    would leak them, and a Ctrl-C must not leave a server pinned to CPU 0 behind.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def start(
        self,
        cmd: Sequence[str],
        *,
        stdout: int | IO[bytes] | None = subprocess.DEVNULL,
        stderr: int | IO[bytes] | None = subprocess.DEVNULL,
        cwd: Path | str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Popen in a new session (process group id == pid) and remember it for cleanup."""
        proc = subprocess.Popen(
            list(cmd), stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
            cwd=cwd, env=env, start_new_session=True,
        )  # fmt: skip
        with self._lock:
            self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        """SIGTERM the group, then SIGKILL after ``grace`` seconds."""
        kill_group(proc, grace)
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def stop_all(self) -> None:
        """Stop every remembered group, newest first (viewers before publisher before server)."""
        with self._lock:
            procs = list(reversed(self._procs))
            self._procs.clear()
        for p in procs:
            kill_group(p, 2.0)


def kill_group(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """Terminate a child started with start_new_session=True together with its descendants."""
    pgid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure no grandchild of the group survives
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    if proc.poll() is None:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


# --------------------------------------------------------------------------- /proc sampling


def descendants(pid: int) -> list[int]:
    """``pid`` and all its live descendants (nginx master + worker, gateway + any workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(rest[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def proc_cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime of the given processes (threads included), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(rest[11]) + int(rest[12])  # fields 14, 15
    return total / CLK_TCK


def proc_rss_bytes(pids: Sequence[int]) -> int:
    """Sum of VmRSS (shared pages of forked workers count twice: an upper bound)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def kernel_threads(prefix: str) -> list[int]:
    """PIDs of kernel threads whose name starts with ``prefix`` (e.g. ksoftirqd/0)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith(prefix):
                        out.append(int(entry))
            except OSError:
                continue
    return out


def system_task_seconds() -> float:
    """user+nice+system+irq+softirq of all CPUs in seconds.

    irq/softirq are included because tick accounting also charges a softirq tick to the
    interrupted task's stime (the server's, for loopback sends), so leaving them out would
    make "foreign" load negative.
    """
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK


def cpu_times(cpu: int) -> tuple[float, float]:
    """(busy, total) jiffies of one CPU from /proc/stat; busy includes irq/softirq work."""
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"cpu%d " % cpu):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                total = sum(v[:8])
                return float(total - idle), float(total)
    return 0.0, 0.0


class TreeSampler:
    """Background sampler of a process tree's CPU and RSS plus per-CPU busy time.

    A thread, not the orchestrator's main loop, so RSS peaks are seen while we block on the
    load generator's output.
    """

    def __init__(self, pid: int, cpus: Sequence[int], period: float = 0.5) -> None:
        self.pid = pid
        self.extra_pids: list[int] = []  # our own helpers (publisher), to tell foreign load apart
        self.softirq_pids = kernel_threads("ksoftirqd/")  # loopback network work, not foreign load
        self.cpus = list(cpus)
        self.period = period
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._peak_rss = 0
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            rss = proc_rss_bytes(descendants(self.pid))
            with self._lock:
                self._peak_rss = max(self._peak_rss, rss)

    def mark(self) -> dict[str, float]:
        """A point in time: tree CPU seconds, CPU jiffies, current RSS; resets the RSS peak."""
        pids = descendants(self.pid)
        snap: dict[str, float] = {
            "t": time.monotonic(),
            "cpu_s": proc_cpu_seconds(pids),
            "rss": float(proc_rss_bytes(pids)),
            "own_s": proc_cpu_seconds([os.getpid(), *self.extra_pids, *self.softirq_pids]),
            "all_s": system_task_seconds(),
        }
        for c in self.cpus:
            busy, total = cpu_times(c)
            snap[f"cpu{c}_busy"], snap[f"cpu{c}_total"] = busy, total
        with self._lock:
            self._peak_rss = int(snap["rss"])
        return snap

    def peak_rss(self) -> int:
        """Largest tree RSS seen since the last mark()."""
        with self._lock:
            return self._peak_rss

    def between(self, a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        """CPU% (of one core) of the tree and busy% of each sampled CPU between two marks."""
        dt = max(b["t"] - a["t"], 1e-6)
        out = {
            "cpu_pct": 100.0 * (b["cpu_s"] - a["cpu_s"]) / dt,
            "own_pct": 100.0 * (b["own_s"] - a["own_s"]) / dt,  # orchestrator, extra_pids, ksoftirqd
            "all_pct": 100.0 * (b["all_s"] - a["all_s"]) / dt,  # every task on every CPU
        }
        for c in self.cpus:
            tot = b[f"cpu{c}_total"] - a[f"cpu{c}_total"]
            out[f"cpu{c}_busy_pct"] = 100.0 * (b[f"cpu{c}_busy"] - a[f"cpu{c}_busy"]) / tot if tot else 0.0
        return out

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(timeout=2)
