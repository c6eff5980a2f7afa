"""Serialize once, fan out to many: shared byte batches, a byte GOP cache, bounded viewers.

An output format (RTMP chunks, FLV tags over HTTP or WebSocket) turns each frame into bytes
*once*; this module groups those bytes into batches and hands the very same ``bytes`` object to
every viewer's transport. The per-viewer hot path is one ``get_write_buffer_size()`` check and
one ``transport.write()``: no coroutine, no queue object, no copy.

Bounding: the viewer's queue *is* its transport write buffer. Above ``soft_limit`` bytes the
viewer skips batches until the next keyframe batch (it drops to the next keyframe); if it stays
behind longer than ``max_behind`` seconds or its buffer passes ``hard_limit`` it is disconnected
with a logged reason. Neither case touches the publisher or other viewers.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...


@dataclass(slots=True)
class Limits:
    """Per-viewer bounds; defaults suit a few Mbit/s live stream."""

    soft_limit: int = 1 << 20  # bytes buffered before the viewer drops to the next keyframe
    hard_limit: int = 8 << 20  # bytes buffered before the viewer is disconnected
    max_behind: float = 10.0  # seconds a viewer may keep dropping before it is disconnected
    max_gop_bytes: int = 16 << 20  # byte GOP cache bound; past it the cache waits for a keyframe
    batch_interval: float = 0.02  # seconds of media a batch may hold before it is flushed
    socket_send_buffer: int = 0  # SO_SNDBUF of viewer sockets; 0 = the kernel's auto-tuning


class Viewer:
    """One connection receiving one fan-out. ``on_end`` is called exactly once."""

    __slots__ = ("transport", "label", "on_end", "waiting_key", "behind_since", "ended", "drops",
                 "fresh", "base", "skipped")

    def __init__(self, transport: Transport, label: str, on_end: Callable[[str], None]) -> None:
        self.transport = transport
        self.label = label
        self.on_end = on_end
        self.waiting_key = False
        self.behind_since = 0.0
        self.ended = False
        self.drops = 0
        self.fresh = False  # joined before any keyframe: gets the header with its first batch
        # bytes written = fan-out's ``produced`` - ``base`` - ``skipped``: counted off the hot path
        self.base = 0
        self.skipped = 0

    def end(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.on_end(reason)

    def stats(self, fanout: Fanout) -> dict[str, int]:
        """Bytes written to this viewer, batches it dropped to catch up, its queue (bytes)."""
        t = self.transport
        return {"bytes_out": fanout.produced - self.base - self.skipped, "drops": self.drops,
                "queue_bytes": 0 if t.is_closing() else t.get_write_buffer_size()}


#: how one batch is put on a transport (HTTP chunk, WebSocket frame: see ``web.framing``), done
#: once per batch for all viewers of the fan-out
Framing = Callable[[bytes], bytes]


def identity(data: bytes) -> bytes:
    return data


class Fanout:
    """Batches of serialized output shared by every viewer of one stream, format and framing."""

    def __init__(self, name: str, framing: Framing = identity, limits: Limits | None = None) -> None:
        self.name = name
        self.framing = framing
        self.framing_name = ""  # the owner's key for this fan-out (e.g. "http", "ws")
        self.limits = limits or Limits()
        self.viewers: list[Viewer] = []
        self.header = b""  # framed: what every viewer needs first (format header, metadata, configs)
        self._pending: list[bytes] = []
        self._pending_key = False
        self._pending_since = 0.0
        self._gop: list[bytes] = []  # framed batches since the latest keyframe batch
        self._gop_bytes = 0
        self._gop_valid = False
        self.batches = 0
        self.bytes_out = 0
        self.produced = 0  # bytes of every batch so far (what a viewer that got all got)

    # -- producer side -------------------------------------------------------------------

    def set_header(self, data: bytes) -> None:
        self.header = self.framing(data) if data else b""

    def push(self, data: bytes, keyframe: bool = False, flush: bool = False) -> None:
        """Queue one serialized message; a keyframe starts a new batch (and a new GOP)."""
        if keyframe and self._pending:
            self.flush()
        if not self._pending:
            self._pending_key = keyframe
            self._pending_since = time.monotonic()
        self._pending.append(data)
        if flush or time.monotonic() - self._pending_since >= self.limits.batch_interval:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        raw = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        data = self.framing(raw)
        key = self._pending_key
        self._remember(data, key)
        self._send(data, key)

    def _remember(self, data: bytes, key: bool) -> None:
        if key:
            self._gop = [data]
            self._gop_bytes = len(data)
            self._gop_valid = True
        elif self._gop_valid:
            self._gop_bytes += len(data)
            if self._gop_bytes > self.limits.max_gop_bytes:
                log.warning("%s: GOP larger than %d bytes, cache disabled until next keyframe",
                            self.name, self.limits.max_gop_bytes)
                self._gop, self._gop_bytes, self._gop_valid = [], 0, False
            else:
                self._gop.append(data)

    def _send(self, data: bytes, key: bool) -> None:
        self.batches += 1
        self.produced += len(data)
        lim = self.limits
        gone: list[tuple[Viewer, str]] | None = None
        now = 0.0
        sent = 0
        for v in self.viewers:
            t = v.transport
            if v.waiting_key and not key:
                v.skipped += len(data)
                if now == 0.0:
                    now = time.monotonic()
                if now - v.behind_since > lim.max_behind:
                    gone = gone or []
                    gone.append((v, f"behind for more than {lim.max_behind:.0f}s, disconnected"))
                continue
            size = t.get_write_buffer_size()
            if size > lim.soft_limit:
                if t.is_closing():
                    gone = gone or []
                    gone.append((v, "connection closed"))
                    continue
                if size > lim.hard_limit:
                    gone = gone or []
                    gone.append((v, f"write buffer above {lim.hard_limit} bytes, disconnected"))
                    continue
                v.skipped += len(data)
                if not v.waiting_key:
                    if now == 0.0:
                        now = time.monotonic()
                    v.behind_since = now
                    v.waiting_key = True
                    v.drops += 1
                    log.info("%s: viewer %s is behind (%d bytes buffered), dropping to next keyframe",
                             self.name, v.label, size)
                continue
            if v.waiting_key:
                if t.is_closing():
                    gone = gone or []
                    gone.append((v, "connection closed"))
                    continue
                v.waiting_key = False
                if v.fresh:
                    v.fresh = False
                    v.base -= len(self.header)
                    t.write(self.header)  # as of now: configs that arrived while it waited
            try:
                t.write(data)
            except Exception as e:  # e.g. uvloop raises on a transport closed under us
                gone = gone or []
                gone.append((v, f"connection closed ({e.__class__.__name__})"))
                continue
            sent += 1
        self.bytes_out += sent * len(data)
        if gone:
            for v, reason in gone:
                self.remove(v, reason)

    # -- viewer side ---------------------------------------------------------------------

    def initial(self) -> bytes:
        """What a joining viewer gets at once: header, then the cached GOP (framed)."""
        if self._gop_valid:
            return self.header + b"".join(self._gop)
        return self.header

    def add(self, viewer: Viewer, send_initial: bool = True) -> None:
        """Attach a viewer; it receives the header and GOP cache now, live batches from then on."""
        if self.limits.socket_send_buffer:
            sock = getattr(viewer.transport, "get_extra_info", lambda _n: None)("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.socket_send_buffer)
        viewer.base = self.produced
        if not self._gop_valid:
            viewer.waiting_key = True  # never start mid-GOP
            viewer.fresh = send_initial
            viewer.behind_since = time.monotonic()
        elif send_initial:
            initial = self.initial()
            viewer.base -= len(initial)
            viewer.transport.write(initial)
        self.viewers.append(viewer)

    def remove(self, viewer: Viewer, reason: str = "left") -> None:
        try:
            self.viewers.remove(viewer)
        except ValueError:
            return
        if reason != "left" and not reason.startswith("connection closed"):
            log.warning("%s: viewer %s ended: %s", self.name, viewer.label, reason)
        viewer.end(reason)

    def end(self, reason: str, tail: bytes = b"") -> None:
        """The source ended: flush, write ``tail`` (framed) to each viewer and end them."""
        self.flush()
        framed = self.framing(tail) if tail else b""
        viewers, self.viewers = self.viewers, []
        for v in viewers:
            if framed and not v.transport.is_closing():
                v.transport.write(framed)
            v.end(reason)
