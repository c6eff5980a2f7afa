#!/usr/bin/env python3
"""Lean RTMP load publisher: one FLV file as N independent live streams, in real time, looping.

Why: N ``ffmpeg -re -stream_loop -1 -c copy`` publishers cost ~1% of a core each, plus their
wake-ups, on the machine that runs the server under test. This is one process, one event
loop, one timer for all streams (a heap of next-due times, woken at most every ``--tick``
ms), tags parsed once at start and shared by all streams, one ``transport.write`` per
stream per wake-up, and the project's own sans-I/O RTMP client (``ClientConnection``). What is left to pay is mostly
kernel: timer wake-ups (~65 us each on a small VM) and send() calls (one per stream per
wake-up with something due), so ``--tick`` (default 10 ms, FFmpeg 5.1's ``-re`` sleep
too) is the CPU/precision knob: 14 streams cost ~3.4% of a core at 10 ms.

What the server sees, per stream, mimics ``ffmpeg -re -stream_loop -1 -i clip.flv -c copy``:
``@setDataFrame onMetaData`` (duration and filesize zeroed, as for a live stream), the
AVC and AAC sequence headers at timestamp 0, then the media tags in file order, each sent once
wall time reaches its timestamp. Each loop adds the clip duration (per type: last timestamp +
one frame interval, the max over types, as ``-stream_loop`` does) so timestamps keep
increasing; sequence headers are not resent and the trailing AVC end-of-sequence tag is
dropped. The N streams' phases are spread over one video frame interval (``--stagger``) so
their frames do not all reach the server at the same instant.

    python bench/rtmppub.py --clip bench/out/transcode-720p30-2M-bf2-44k.flv \
        --url rtmp://127.0.0.1:1935/live --prefix n10s --count 10 --report 5

Prints one JSON line per ``--report`` interval on stdout (per stream: media seconds, bytes,
reconnects, skipped tags; the process's own CPU), and a final one with ``"final": true``.
Logs go to stderr. In-process: ``await run(clip, url, names, ...)`` or ``Publisher``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so ``python bench/rtmppub.py`` can import the gateway
    sys.path.insert(0, str(REPO_ROOT))

from gateway.wire import flv
from gateway.wire.rtmp import amf0
from gateway.wire.rtmp import connection as rc
from gateway.wire.rtmp.messages import RtmpError

try:  # uvloop is what production uses; fall back so the tool still runs without it
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

__all__ = ["Clip", "Publisher", "main", "run"]

AUDIO, VIDEO, SCRIPT = flv.TAG_AUDIO, flv.TAG_VIDEO, flv.TAG_SCRIPT
EPS = 0.0006  # s; libuv timers have 1 ms resolution: a tag due within this is sent now
CONNECT_TIMEOUT = 10.0  # s from TCP connect to NetStream.Publish.Start, else reconnect

now = time.monotonic  # the same clock libuv/asyncio timers use


def log(msg: str) -> None:
    """Progress and errors to stderr; stdout carries only JSON report lines."""
    print(f"[rtmppub {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# =========================================================================== the clip


@dataclass(slots=True)
class Clip:
    """An FLV file parsed once; every stream shares these lists (index ``i`` = one tag).

    ``dues`` are the tags' timestamps in seconds (pacing offsets within one loop); ``keys``
    marks video key frames (where a stream resumes after skipping under backpressure).
    """

    path: str
    metadata: list[Any]  # values after "@setDataFrame": ["onMetaData", ECMAArray]
    headers: list[tuple[int, bytes]]  # (type id, body): AVC then AAC sequence header
    types: list[int]
    stamps: list[int]  # ms
    payloads: list[bytes]
    dues: list[float]  # s
    keys: list[bool]
    loop_ms: int  # timestamp offset added per loop
    frame_ms: float  # video frame interval (the default stagger window)
    size: int  # file bytes

    @property
    def loop_s(self) -> float:
        return self.loop_ms / 1000.0

    @classmethod
    def load(cls, path: str | Path) -> Clip:
        """Read and split the whole file; raises ``flv.FlvError``/``ValueError`` on bad input."""
        data = Path(path).read_bytes()
        reader = flv.FlvReader()
        tags = reader.receive_data(data)
        reader.close()
        metadata: list[Any] = []
        avc_hdr: bytes | None = None
        aac_hdr: bytes | None = None
        types: list[int] = []
        stamps: list[int] = []
        payloads: list[bytes] = []
        keys: list[bool] = []
        for tag in tags:
            body = tag.body
            if tag.tag_type == SCRIPT:
                if not metadata:
                    try:
                        name, values = flv.parse_script_body(body)
                    except flv.FlvError as exc:
                        log(f"ignoring unreadable script tag: {exc}")
                        continue
                    if name == "onMetaData" and values and isinstance(values[0], dict):
                        meta = amf0.ECMAArray(values[0])
                        for k in ("duration", "filesize"):  # a live stream has neither
                            if k in meta:
                                meta[k] = 0.0
                        values = [meta, *values[1:]]
                    metadata = [name, *values]
                continue
            if not body:
                continue
            if tag.tag_type == VIDEO:
                v = flv.parse_video_body(body)
                if v.is_avc_sequence_header and avc_hdr is None:
                    avc_hdr = body
                    continue
                if v.avc_packet_type == flv.AVC_END_OF_SEQUENCE:
                    continue  # the muxer's trailer; mid-loop it would end the decoder's stream
                keys.append(v.keyframe)
            elif tag.tag_type == AUDIO:
                if flv.parse_audio_body(body).is_aac_sequence_header and aac_hdr is None:
                    aac_hdr = body
                    continue
                keys.append(False)
            else:
                continue
            types.append(tag.tag_type)
            stamps.append(tag.timestamp)
            payloads.append(body)
        if not types:
            raise ValueError(f"{path}: no audio/video tags")
        # Pacing walks the tags in file order, so a timestamp lower than its predecessor's
        # (interleaving jitter) is sent with it; keep dues monotonic to make that explicit.
        dues: list[float] = []
        hi = stamps[0]
        for ts in stamps:
            hi = max(hi, ts)
            dues.append(hi / 1000.0)
        loop_ms = 0
        frame_ms = 1000.0 / 30
        for t in (VIDEO, AUDIO):
            ts_t = [s for s, ty in zip(stamps, types, strict=False) if ty == t]
            if not ts_t:
                continue
            step = (ts_t[-1] - ts_t[0]) / (len(ts_t) - 1) if len(ts_t) > 1 else 1000.0 / 30
            loop_ms = max(loop_ms, math.ceil(ts_t[-1] + step))
            if t == VIDEO and step > 0:
                frame_ms = step
        loop_ms = max(loop_ms, max(stamps) + 1)  # strictly increasing across the loop point
        headers = [(VIDEO, h) for h in (avc_hdr,) if h] + [(AUDIO, h) for h in (aac_hdr,) if h]
        return cls(str(path), metadata, headers, types, stamps, payloads, dues, keys,
                   loop_ms, frame_ms, len(data))  # fmt: skip


# =========================================================================== one stream


class _Stream:
    """One published name: its current connection, pacing position and counters.

    Survives reconnects; each connection is a new ``session`` (stale heap entries of an old
    session are dropped when popped).
    """

    __slots__ = (
        "base", "bytes", "conn", "idx", "index", "live", "loop_k", "media_prev", "name",
        "need_key", "phase", "port", "reconnects", "rejects", "session", "skipped", "transport",
        "writes",
    )  # fmt: skip

    def __init__(self, index: int, name: str, phase: float, port: int) -> None:
        self.index = index
        self.name = name
        self.port = port
        self.phase = phase  # s after the publisher's epoch, modulo one frame interval
        self.conn: rc.ClientConnection | None = None
        self.transport: asyncio.Transport | None = None
        self.session = 0
        self.live = False
        self.idx = 0  # next tag to send
        self.loop_k = 0
        self.base = 0.0  # monotonic time of this loop's timestamp 0
        self.need_key = False
        self.bytes = 0
        self.writes = 0
        self.media_prev = 0.0  # media seconds sent in earlier sessions
        self.reconnects = 0
        self.rejects = 0
        self.skipped = 0

    def media_s(self, clip: Clip) -> float:
        """Media seconds sent so far over all sessions (up to the last sent tag's timestamp)."""
        if not self.live:
            return self.media_prev
        if self.idx:
            return self.media_prev + self.loop_k * clip.loop_s + clip.dues[self.idx - 1]
        if self.loop_k:
            return self.media_prev + (self.loop_k - 1) * clip.loop_s + clip.dues[-1]
        return self.media_prev


class _Conn(asyncio.Protocol):
    """Socket glue for one connection: feeds the sans-I/O client, reacts to its events."""

    def __init__(self, pub: Publisher, st: _Stream) -> None:
        self.pub = pub
        self.st = st
        self.transport: asyncio.Transport | None = None
        self.conn = rc.ClientConnection(chunk_size_out=pub.chunk_size)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reason = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but alike
        self.transport = transport
        st = self.st
        st.session += 1
        st.conn, st.transport, st.live = self.conn, transport, False
        self.conn.connect(self.pub.app, self.pub.tc_url)
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except RtmpError as exc:
            self.fail(f"protocol error from server: {exc}")
            return
        for ev in events:
            if isinstance(ev, rc.ConnectResult):
                if not ev.success:
                    self.fail(f"connect rejected: {ev.code} {ev.description}")
                    return
                name = self.st.name
                conn.release_stream(name)
                conn.fc_publish(name)
                conn.create_stream()
            elif isinstance(ev, rc.StreamCreated):
                conn.publish(self.st.name)
            elif isinstance(ev, rc.Status):
                if ev.code == "NetStream.Publish.Start":
                    self.pub._go_live(self.st, conn)
                elif ev.level == "error" or "Unpublish" in ev.code or "BadName" in ev.code:
                    self.st.rejects += 1
                    self.fail(f"publish refused: {ev.code} {ev.description}")
                    return
            elif isinstance(ev, rc.CommandResult) and not ev.success and ev.method == "createStream":
                self.fail(f"createStream failed: {ev.values}")
                return
        out = conn.data_to_send()  # acks, pong, next commands, or metadata + sequence headers
        if out and self.transport is not None:
            self.transport.write(out)
            self.st.bytes += len(out)

    def fail(self, reason: str) -> None:
        """Log, close; ``connection_lost`` then schedules the reconnect."""
        self.reason = reason
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        st = self.st
        if st.conn is self.conn:
            if st.live:
                st.media_prev = st.media_s(self.pub.clip)
            st.conn, st.transport, st.live = None, None, False
        if not self.reason:
            self.reason = f"connection lost ({exc})" if exc else "closed by server"
        if not self.closed.done():
            self.closed.set_result(None)


# =========================================================================== the publisher


class Publisher:
    """N live RTMP publishes of one clip from one event loop (see the module docstring).

    ``stagger_ms``: window the streams' phases are spread over (None: one video frame
    interval, 0: all in phase). ``tick_ms``: minimum time between timer wake-ups, the
    trade between pacing precision and CPU. ``max_buffer``: per-stream write-buffer bytes
    above which due tags are skipped (counted) instead of queued; video then resumes at
    the next key frame.
    """

    def __init__(
        self,
        clip: Clip | str | Path,
        url: str,
        names: Sequence[str],
        *,
        stagger_ms: float | None = None,
        tick_ms: float = 10.0,
        chunk_size: int = 4096,
        max_buffer: int = 4 << 20,
        retry_s: float = 1.0,
        ports: Sequence[int] | None = None,
    ) -> None:
        self.clip = clip if isinstance(clip, Clip) else Clip.load(clip)
        parts = urlsplit(url)
        if parts.scheme != "rtmp" or not parts.hostname:
            raise ValueError(f"not an rtmp:// URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or 1935
        self.app = parts.path.strip("/")
        if not self.app or "/" in self.app:
            raise ValueError(f"URL must name just the app, e.g. rtmp://host:port/live: {url}")
        self.tc_url = url.rstrip("/")
        if len(set(names)) != len(names) or not names:
            raise ValueError("need one or more distinct stream names")
        if ports is not None and len(ports) != len(names):
            raise ValueError("need one port per stream name")
        window = self.clip.frame_ms if stagger_ms is None else stagger_ms
        self.streams = [_Stream(i, n, window / 1000.0 * i / len(names), ports[i] if ports else self.port)
                        for i, n in enumerate(names)]
        self.tick = tick_ms / 1000.0
        self.chunk_size = chunk_size
        self.max_buffer = max_buffer
        self.retry_s = retry_s
        self.wakeups = 0
        self._epoch = now()
        self._heap: list[tuple[float, int, int, _Stream]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._stop: asyncio.Event | None = None
        self._conns: set[_Conn] = set()

    # ---------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Ask ``run`` to finish (safe from a signal handler on the loop)."""
        if self._stop is not None:
            self._stop.set()

    async def run(self, duration: float = 0.0, report: float = 0.0,
                  on_report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Publish until ``stop()`` or ``duration`` s (0: forever); returns the final stats.

        Every ``report`` s (0: never) ``on_report`` gets a stats dict (default: print as JSON).
        """
        self._stop = asyncio.Event()
        self._epoch = now()
        emit = on_report or _print_json
        tasks = [asyncio.create_task(self._keep_publishing(st)) for st in self.streams]
        t0, c0 = now(), time.process_time()
        last = (t0, c0)
        end = t0 + duration if duration > 0 else math.inf
        next_report = t0 + report if report > 0 else math.inf
        final: dict[str, Any] = {}
        try:
            while not self._stop.is_set():
                t = now()
                if t >= end:
                    break
                if t >= next_report:
                    snap = self.stats(last)
                    last = (snap["_t"], snap["cpu_s"])
                    emit(_public(snap))
                    next_report += report
                    continue
                wait = min(end, next_report) - t
                try:
                    await asyncio.wait_for(self._stop.wait(), None if wait == math.inf else wait)
                except TimeoutError:
                    pass
            final = self.stats((t0, c0))  # before shutdown: "live" says who was still publishing
        finally:
            await self._shutdown(tasks)
        final = _public(final)
        final["final"] = True
        if report > 0 or on_report is not None:
            emit(final)
        return final

    async def _keep_publishing(self, st: _Stream) -> None:
        """Connect, publish, and on any failure wait ``retry_s`` and start over."""
        assert self._stop is not None
        loop = asyncio.get_running_loop()
        first = True
        while not self._stop.is_set():
            if not first:
                st.reconnects += 1
            first = False
            reason = ""
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: _Conn(self, st), self.host, st.port), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                reason = f"connect failed: {exc or 'timeout'}"
            else:
                self._conns.add(proto)
                watchdog = loop.call_later(CONNECT_TIMEOUT, self._check_started, proto)
                try:
                    await proto.closed
                finally:
                    watchdog.cancel()
                    self._conns.discard(proto)
                reason = proto.reason
            if self._stop.is_set():
                break
            log(f"{st.name}: {reason}; reconnecting in {self.retry_s:g} s")
            try:
                await asyncio.wait_for(self._stop.wait(), self.retry_s)
            except TimeoutError:
                pass

    def _check_started(self, proto: _Conn) -> None:
        if proto.st.conn is proto.conn and not proto.st.live:
            proto.fail(f"no NetStream.Publish.Start within {CONNECT_TIMEOUT:g} s")

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Unpublish politely and close every socket (buffered bytes are flushed first)."""
        self.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for proto in list(self._conns):
            st, tr = proto.st, proto.transport
            if tr is None or tr.is_closing():
                continue
            if st.live and st.conn is proto.conn:
                try:
                    proto.conn.fc_unpublish(st.name)
                    proto.conn.delete_stream()
                    tr.write(proto.conn.data_to_send())
                except RtmpError:
                    pass
            proto.reason = "stopped"
            tr.close()
        try:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 3.0)
        except TimeoutError:
            for proto in list(self._conns):
                if proto.transport is not None:
                    proto.transport.abort()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---------------------------------------------------------------- pacing

    def _go_live(self, st: _Stream, conn: rc.ClientConnection) -> None:
        """Publish accepted: metadata + sequence headers now, media from the stream's next phase slot."""
        if st.live:  # a repeated Publish.Start must not schedule the stream twice
            return
        clip = self.clip
        if clip.metadata:
            conn.send_data("@setDataFrame", *clip.metadata)
        for type_id, body in clip.headers:
            conn.send_media(type_id, 0, body)
        t = now()
        frame = clip.frame_ms / 1000.0
        anchor = self._epoch + st.phase
        st.base = anchor + max(0, math.ceil((t - anchor) / frame)) * frame
        st.idx = st.loop_k = 0
        st.need_key = False
        st.live = True
        heapq.heappush(self._heap, (st.base + clip.dues[0], st.index, st.session, st))
        self._arm(t, first=True)

    def _arm(self, t: float, first: bool = False) -> None:
        """(Re)schedule the single timer for the earliest due stream, at most every ``tick``."""
        if not self._heap:
            return
        at = self._heap[0][0]
        if not first:
            at = max(at, t + self.tick)
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - t), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self.wakeups += 1
        t = now()
        heap = self._heap
        limit = t + EPS
        while heap and heap[0][0] <= limit:
            _, index, session, st = heapq.heappop(heap)
            if st.session != session or not st.live or st.transport is None or st.transport.is_closing():
                continue  # stale: that connection is gone or going
            heapq.heappush(heap, (self._pump(st, limit), index, session, st))
        self._arm(t)

    def _pump(self, st: _Stream, limit: float) -> float:
        """Send every tag of ``st`` due by ``limit`` in one write; return the next due time."""
        clip = self.clip
        conn, tr = st.conn, st.transport
        assert conn is not None and tr is not None
        dues, types, keys = clip.dues, clip.types, clip.keys
        stamps, payloads, send = clip.stamps, clip.payloads, conn.send_media
        n = len(dues)
        i, base = st.idx, st.base
        offset = st.loop_k * clip.loop_ms
        skip = tr.get_write_buffer_size() > self.max_buffer
        need_key = st.need_key or skip
        while base + dues[i] <= limit:
            type_id = types[i]
            if skip or (need_key and type_id == VIDEO and not keys[i]):
                st.skipped += 1
            else:
                if type_id == VIDEO:
                    need_key = False
                send(type_id, stamps[i] + offset, payloads[i])
            i += 1
            if i == n:
                i = 0
                st.loop_k += 1
                offset += clip.loop_ms
                base = st.base = base + clip.loop_s
        st.idx = i
        st.need_key = need_key
        data = conn.data_to_send()
        if data:
            tr.write(data)
            st.bytes += len(data)
            st.writes += 1
        return base + dues[i]

    # ---------------------------------------------------------------- stats

    def stats(self, since: tuple[float, float] | None = None) -> dict[str, Any]:
        """Counters now; ``since`` = (monotonic, process_time) for the interval's CPU share."""
        t, cpu = now(), time.process_time()
        clip = self.clip
        streams = {st.name: {"media_s": round(st.media_s(clip), 3), "bytes": st.bytes,
                             "reconnects": st.reconnects, "rejects": st.rejects,
                             "skipped": st.skipped, "live": st.live} for st in self.streams}  # fmt: skip
        out: dict[str, Any] = {
            "t": round(time.time(), 3),
            "elapsed_s": round(t - self._epoch, 3),
            "cpu_s": round(cpu, 4),
            "live": sum(st.live for st in self.streams),
            "wakeups": self.wakeups,
            "writes": sum(st.writes for st in self.streams),
            "bytes": sum(st.bytes for st in self.streams),
            "streams": streams,
            "_t": t,
        }
        if since is not None and t > since[0]:
            out["interval_s"] = round(t - since[0], 3)
            out["cpu_pct"] = round(100.0 * (cpu - since[1]) / (t - since[0]), 3)
        return out


def _public(snap: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snap.items() if not k.startswith("_")}


def _print_json(snap: dict[str, Any]) -> None:
    print(json.dumps(snap), flush=True)


async def run(
    clip: Clip | str | Path,
    url: str,
    names: Sequence[str],
    *,
    duration: float = 0.0,
    report: float = 0.0,
    on_report: Callable[[dict[str, Any]], None] | None = None,
    handle_signals: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Publish ``clip`` as ``url``/name for each name; returns the final stats.

    ``options`` go to :class:`Publisher` (stagger_ms, tick_ms, chunk_size, max_buffer,
    retry_s). ``handle_signals``: stop cleanly on SIGTERM/SIGINT (main thread only).
    """
    pub = Publisher(clip, url, names, **options)
    loop = asyncio.get_running_loop()
    sigs = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for sig in sigs:
        loop.add_signal_handler(sig, pub.stop)
    try:
        return await pub.run(duration, report, on_report)
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)


# =========================================================================== CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--clip", required=True, help="FLV file (H.264/AAC) to publish")
    p.add_argument("--url", required=True, help="rtmp://host:port/app (stream names are appended)")
    p.add_argument("--names", help="comma-separated stream names")
    p.add_argument("--prefix", help="names PREFIX0..PREFIX{count-1} (with --count)")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--stagger", type=float, default=None,
                   help="ms window the streams' phases are spread over (default: one video frame interval)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds, 0 = until SIGTERM/SIGINT")
    p.add_argument("--report", type=float, default=0.0, help="print a JSON stats line every S seconds")
    p.add_argument("--tick", type=float, default=10.0,
                   help="min ms between timer wake-ups (FFmpeg 5.1's -re also sleeps 10 ms); "
                        "tags are up to this late, and CPU falls with it")
    p.add_argument("--chunk-size", type=int, default=4096, help="outgoing RTMP chunk size")
    p.add_argument("--max-buffer", type=int, default=4 << 20,
                   help="per-stream write-buffer bytes above which due tags are skipped")
    p.add_argument("--ports", default=None,
                   help="comma-separated port per stream, overriding the URL's (one server per stream, "
                        "e.g. `ffmpeg -listen 1 -i rtmp://...` transcoders)")
    p.add_argument("--no-uvloop", action="store_true", help="plain asyncio (for comparison)")
    args = p.parse_args(argv)
    if args.names:
        args.name_list = [n for n in args.names.split(",") if n]
    elif args.prefix is not None and args.count > 0:
        args.name_list = [f"{args.prefix}{i}" for i in range(args.count)]
    else:
        p.error("give --names or --prefix with --count")
    if args.chunk_size < 128:
        p.error("--chunk-size must be >= 128")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clip = Clip.load(args.clip)
    log(f"{Path(clip.path).name}: {len(clip.types)} tags, loop {clip.loop_ms} ms, frame "
        f"{clip.frame_ms:.2f} ms; {len(args.name_list)} streams to {args.url}")
    opts = {"stagger_ms": args.stagger, "tick_ms": args.tick, "chunk_size": args.chunk_size,
            "max_buffer": args.max_buffer,
            "ports": [int(x) for x in args.ports.split(",")] if args.ports else None}  # fmt: skip
    coro = run(clip, args.url, args.name_list, duration=args.duration, report=args.report,
               handle_signals=True, **opts)  # fmt: skip
    if uvloop is not None and not args.no_uvloop:
        final = uvloop.run(coro) if hasattr(uvloop, "run") else _run_uvloop(coro)
    else:
        final = asyncio.run(coro)
    streams = final["streams"].values()
    log(f"done: {final['live']}/{len(streams)} live at the end, "
        f"{min((s['media_s'] for s in streams), default=0):.1f} s media sent per stream (min), "
        f"{sum(s['reconnects'] for s in streams)} reconnects, {sum(s['skipped'] for s in streams)} tags "
        f"skipped, cpu {final.get('cpu_pct', 0):.2f}% of a core")
    return 0


def _run_uvloop(coro: Any) -> Any:  # uvloop < 0.18 has no uvloop.run
    uvloop.install()
    return asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
